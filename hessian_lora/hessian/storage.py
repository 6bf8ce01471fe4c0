"""Where the Krylov vectors live: a memory budget in tiers, and row stores that grow on demand inside it.

Why: a Krylov basis holds one parameter-sized vector per product, and the kept products (which make the final
check free) as many again. At the paper's scale (Qwen3-0.6B with r = 128 on all seven projections: 80.7 M
parameters, 323 MB a vector in float32) 32 vectors and their products take 21 GB; for Llama-2-7B at r = 128
about 82 GB, before the model and its activations. So the stores here

- grow a page at a time (no up-front allocation, no copy when they grow: a page is never moved),
- place each page in the first tier of a :class:`KrylovMemory` with room: the operator's device while it fits,
  else the host (pinned, when the device is CUDA, so pages cross the bus asynchronously),
- and let the caller drop the kept products when the basis needs their room (the final check then costs one
  product per returned pair; the result says so in ``details["kept_products"]``).

All reductions against the rows go through :mod:`hessian_lora.hessian.reductions` (float64 accumulation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hessian_lora.hessian.reductions import inner_many

# Rows per page: small enough that the last page wastes little of the budget, large enough that a projection
# reads a page as one matrix.
PAGE_ROWS = 4


@dataclass
class MemoryTier:
    """Room for Krylov vectors on one device: ``bytes_left`` (math.inf: no limit), pinned host memory or not."""

    device: torch.device
    bytes_left: float
    pin: bool = False
    used: int = 0


@dataclass
class KrylovMemory:
    """The tiers Krylov pages may take, in order of preference (the operator's device first)."""

    tiers: list[MemoryTier] = field(default_factory=list)

    @classmethod
    def unlimited(cls, device: torch.device) -> KrylovMemory:
        """One tier on ``device`` with no limit (the default when no budget is given)."""
        return cls([MemoryTier(torch.device(device), math.inf)])

    @classmethod
    def within(cls, device: torch.device, device_bytes: float, host_bytes: float = 0.0) -> KrylovMemory:
        """``device_bytes`` on the operator's device, then (for an accelerator) ``host_bytes`` of pinned host
        memory. On the CPU the device *is* the host: one tier."""
        device = torch.device(device)
        tiers = [MemoryTier(device, max(float(device_bytes), 0.0))]
        if device.type != "cpu" and host_bytes > 0:
            tiers.append(MemoryTier(torch.device("cpu"), float(host_bytes), pin=device.type == "cuda"))
        return cls(tiers)

    def allocate(self, rows: int, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, MemoryTier] | None:
        """A new page of ``rows × size`` in the first tier with room (and that tier), or None when none has it."""
        nbytes = rows * size * torch.empty((), dtype=dtype).element_size()
        for tier in self.tiers:
            if tier.bytes_left >= nbytes:
                page = torch.empty(
                    rows,
                    size,
                    dtype=dtype,
                    device=tier.device,
                    pin_memory=tier.pin and torch.cuda.is_available(),
                )
                tier.bytes_left -= nbytes
                tier.used += nbytes
                return page, tier
        return None

    @staticmethod
    def release(page: torch.Tensor, tier: MemoryTier) -> None:
        """Give ``page``'s bytes back to the tier it was allocated from."""
        nbytes = page.numel() * page.element_size()
        tier.bytes_left += nbytes
        tier.used -= nbytes

    def describe(self) -> str:
        """The tiers and what is left in each, for the console."""
        return ", ".join(
            f"{tier.device}{' (pinned)' if tier.pin else ''}: "
            f"{'no limit' if math.isinf(tier.bytes_left) else f'{tier.bytes_left / 2**30:.2f} GiB left'}"
            for tier in self.tiers
        )


class VectorStore:
    """Rows of ``size`` entries appended block by block, kept in pages placed by a :class:`KrylovMemory`.

    ``inner`` and ``combine`` are the two operations Krylov methods need: coefficients of vectors against every
    row (float64, on the CPU) and linear combinations of the rows (in the rows' dtype, on ``device``).
    """

    def __init__(
        self,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        memory: KrylovMemory,
        page_rows: int = PAGE_ROWS,
    ) -> None:
        self.size, self.dtype, self.device = size, dtype, torch.device(device)
        self.memory = memory
        self.page_rows = max(1, page_rows)
        self._pages: list[torch.Tensor] = []
        self._tiers: list[MemoryTier] = []  # where each page was allocated
        self._filled: list[int] = []
        self.dropped = False
        self.full = False  # set by a consumer that could not append: the memory had no room

    def __len__(self) -> int:
        return sum(self._filled)

    def append(self, rows: torch.Tensor) -> bool:
        """Append the rows of ``rows`` (k × size); False, with nothing appended, when the memory has no room."""
        rows = rows.reshape(-1, self.size)
        needed = int(rows.shape[0])
        free = sum(page.shape[0] - filled for page, filled in zip(self._pages, self._filled))
        new_pages: list[tuple[torch.Tensor, MemoryTier]] = []
        while free < needed:
            allocated = self.memory.allocate(max(self.page_rows, needed - free), self.size, self.dtype)
            if allocated is None and needed - free < self.page_rows:
                # A budget between what this block needs and a whole page (say 3.5 vectors against pages of
                # 4): a page of just what is needed still fits, and the run goes on until the budget is spent.
                allocated = self.memory.allocate(needed - free, self.size, self.dtype)
            if allocated is None:
                for page, tier in new_pages:
                    self.memory.release(page, tier)
                return False
            new_pages.append(allocated)
            free += allocated[0].shape[0]
        self._pages += [page for page, _ in new_pages]
        self._tiers += [tier for _, tier in new_pages]
        self._filled += [0] * len(new_pages)
        done = 0
        for index, page in enumerate(self._pages):
            room = page.shape[0] - self._filled[index]
            if room <= 0 or done == needed:
                continue
            take = min(room, needed - done)
            page[self._filled[index] : self._filled[index] + take].copy_(
                rows[done : done + take], non_blocking=True
            )
            self._filled[index] += take
            done += take
        return True

    def drop(self) -> None:
        """Free every page (the store is unusable afterwards: ``dropped``)."""
        for page, tier in zip(self._pages, self._tiers):
            self.memory.release(page, tier)
        self._pages, self._tiers, self._filled, self.dropped = [], [], [], True

    def pages(self) -> list[torch.Tensor]:
        """The filled part of each page, in order."""
        return [page[:filled] for page, filled in zip(self._pages, self._filled) if filled]

    def placement(self) -> dict[str, int]:
        """Rows per device, e.g. {"cuda:0": 40, "cpu": 12}."""
        where: dict[str, int] = {}
        for page, filled in zip(self._pages, self._filled):
            where[str(page.device)] = where.get(str(page.device), 0) + filled
        return where

    def inner(self, vectors: torch.Tensor) -> torch.Tensor:
        """Coefficients of ``vectors`` (size,) or (k × size) against every row: float64, (len,) or (len × k)."""
        return inner_many(self.pages(), vectors.to(self.device))

    def combine(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Σ_j c_j row_j for coefficients (len,) → (size,), or (len × k) → (k × size), on ``device``.

        Each entry sums ``len`` terms (not parameter-many), so the rows' dtype is accurate enough here.
        """
        single = coefficients.ndim == 1
        coefficients = coefficients.reshape(len(self), -1)
        out = torch.zeros(coefficients.shape[1], self.size, dtype=self.dtype, device=self.device)
        offset = 0
        for page in self.pages():
            rows = int(page.shape[0])
            weights = coefficients[offset : offset + rows].to(device=self.device, dtype=self.dtype).T
            offset += rows
            if page.device == self.device:
                out += weights @ page
            else:  # a host page: move it in column chunks
                step = 1 << 22
                for start in range(0, self.size, step):
                    out[:, start : start + step] += weights @ page[:, start : start + step].to(
                        self.device, non_blocking=True
                    )
        return out[0] if single else out

    def row(self, index: int) -> torch.Tensor:
        """Vector ``index`` of the store, on the store's device (a copy when its page lives on the host)."""
        for page in self.pages():
            if index < page.shape[0]:
                return page[index].to(self.device)
            index -= int(page.shape[0])
        raise IndexError(index)

    def stacked(self) -> torch.Tensor:
        """All rows as one tensor on ``device`` (tests and small operators: a copy of the whole store)."""
        pages = self.pages()
        if not pages:
            return torch.empty(0, self.size, dtype=self.dtype, device=self.device)
        return torch.cat([page.to(self.device) for page in pages])


def store_bytes(vectors: int, size: int, dtype: torch.dtype) -> int:
    """Bytes that ``vectors`` vectors of ``size`` entries of ``dtype`` take."""
    return vectors * size * torch.empty((), dtype=dtype).element_size()


def placements(stores: Sequence[VectorStore | None]) -> dict[str, float]:
    """Result details: how many Krylov vectors each device held (``krylov_vectors_<device>``)."""
    details: dict[str, float] = {}
    for store in stores:
        if store is None:
            continue
        for where, rows in store.placement().items():
            key = f"krylov_vectors_{where.replace(':', '')}"
            details[key] = details.get(key, 0.0) + rows
    return details
