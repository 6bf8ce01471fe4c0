"""Every block of a per-module scan at once: one shared first-order graph, each step one pass for all blocks.

The paper's main figure is λ_max of every adapted module of every layer. Solved block after block, each block
builds its own first-order graphs and each product is one pass of its own. :func:`scan_blocks` instead runs the
solver of every block side by side on one :class:`~hessian_lora.hessian.operator.HessianOperator` over the union
of the blocks: whenever every unfinished block is waiting for products, one call of
:meth:`~hessian_lora.hessian.operator.HessianOperator.block_products` answers all of them, each batch's
first-order graph built once (or kept, under ``reuse``) and each block's directions differentiated only from
that block's gradient to that block's parameters, so block b gets exactly H_bb V_b, the product its own
operator would give.

Each block runs the unchanged solver (its certificate, its stop test, its own stop) on a :class:`BlockView`, in
a worker thread of its own; the workers only do the solver's small linear algebra, and every product runs in
the calling thread, so autograd never runs concurrently. Which blocks share a pass does not depend on timing
(every unfinished block, each time), so a scan is deterministic. A block that finishes leaves the later passes.

What it buys depends on the device: it saves every block's own first-order graphs and, where the graphs cannot
be kept (the paper's 100 batches), the forward and first backward of every product but one per pass; the
second backwards themselves are as many as block by block (bench/batched_products.py measures both). Under
``batching="vmap"`` (``"auto"`` on CUDA where the memory plan says it fits) they run batched instead: every
block's tangents, each supported on its own block, ``directions_per_pass`` to a batched backward
(:meth:`~hessian_lora.hessian.operator.HessianOperator.block_products`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.filters import ParameterBlock
from hessian_lora.hessian.operator import BaseOperator, HessianOperator, LinearOperator, check_matrix
from hessian_lora.hessian.results import EigenResult

# solve(i, view): the result of block i, solved on its view.
Solve = Callable[[int, LinearOperator], EigenResult]


class BlockView(BaseOperator):
    """H_bb of one block of a scan: a linear operator whose products are made by the scan's shared pass."""

    def __init__(self, scan: _Scan, index: int, size: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(size, dtype, device)
        self._scan, self._index = scan, index
        self.calls = 0

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The operator applied to one flat vector of ``size`` entries."""
        if vector.shape != (self._size,):
            raise ValueError(f"vector has shape {tuple(vector.shape)}, expected ({self._size},)")
        return self.matmat(vector[:, None])[:, 0]

    def matmat(self, matrix: torch.Tensor) -> torch.Tensor:
        """The operator applied to each column of a ``size × k`` matrix."""
        check_matrix(matrix, self._size)
        self.calls += int(matrix.shape[1])
        return self._scan.request(self._index, matrix)


@dataclass
class _Outcome:
    result: EigenResult | None = None
    error: BaseException | None = None
    reported: bool = False


class _Aborted(Exception):
    """Raised in a waiting worker when another block failed: the scan stops."""


class _Scan:
    """The meeting point of the workers (who ask for products) and the calling thread (who makes them)."""

    def __init__(self, operator: HessianOperator, positions: list[list[int]]) -> None:
        self.operator = operator
        self.positions = positions
        self.condition = threading.Condition()
        self.pending: dict[int, torch.Tensor] = {}
        self.answers: dict[int, torch.Tensor] = {}
        self.alive = set(range(len(positions)))
        self.aborted = False
        self.passes = 0

    def request(self, index: int, matrix: torch.Tensor) -> torch.Tensor:
        with self.condition:
            if self.aborted:
                raise _Aborted
            self.pending[index] = matrix
            self.condition.notify_all()
            while index not in self.answers and not self.aborted:
                self.condition.wait()
            if self.aborted:
                raise _Aborted
            return self.answers.pop(index)

    def finished(self, index: int) -> None:
        with self.condition:
            self.alive.discard(index)
            self.condition.notify_all()

    def abort(self) -> None:
        with self.condition:
            self.aborted = True
            self.condition.notify_all()

    def next_requests(self) -> dict[int, torch.Tensor] | None:
        """Wait until every unfinished block asks for products (or finishes); None once all have finished."""
        with self.condition:
            while self.alive and not self.aborted and len(self.pending) < len(self.alive):
                self.condition.wait(timeout=1.0)
            if not self.alive or self.aborted:
                return None
            requests, self.pending = dict(sorted(self.pending.items())), {}
            return requests

    def answer(self, requests: dict[int, torch.Tensor]) -> None:
        products = self.operator.block_products([(self.positions[i], requests[i]) for i in requests])
        self.passes += 1
        with self.condition:
            self.answers.update(zip(requests, products))
            self.condition.notify_all()


def block_positions(operator: HessianOperator, blocks: Sequence[ParameterBlock]) -> list[list[int]]:
    """Where each block's tensors sit in ``operator.params``; blocks must be disjoint and inside the operator."""
    where = {id(param): i for i, param in enumerate(operator.params)}
    positions: list[list[int]] = []
    seen: set[int] = set()
    for block in blocks:
        missing = [name for name, param in zip(block.names, block.parameters) if id(param) not in where]
        if missing:
            raise UserError(
                f"block {block.name} has parameters outside the scan's operator ({missing[0]}): "
                "build the operator over the union of the blocks."
            )
        indices = [where[id(param)] for param in block.parameters]
        if seen.intersection(indices):
            raise UserError(
                f"block {block.name} shares parameters with an earlier block: scan disjoint blocks "
                "(one per module)."
            )
        seen.update(indices)
        positions.append(indices)
    return positions


def scan_blocks(
    operator: HessianOperator,
    blocks: Sequence[ParameterBlock],
    solve: Solve,
    *,
    on_result: Callable[[int, EigenResult], None] | None = None,
) -> list[EigenResult]:
    """Run ``solve`` on H_bb of every block, all blocks advancing together (module docstring).

    ``operator`` is a double-backward :class:`HessianOperator` over (at least) the union of ``blocks``; ``solve``
    receives each block's index and :class:`BlockView` and returns its result (e.g.
    ``lambda i, view: lanczos(view, ...)``).
    ``on_result(i, result)`` is called in the calling thread as block ``i`` finishes (write reports there: a
    scan interrupted later keeps them). Results come back in block order; the first error of any block stops
    the scan and is raised here.
    """
    if operator.backend != "double_backward":
        raise UserError(
            "a multi-block scan needs the double_backward backend (one first-order graph for every "
            f"block), not {operator.backend}: use backend double_backward or auto."
        )
    positions = block_positions(operator, blocks)
    scan = _Scan(operator, positions)
    outcomes = [_Outcome() for _ in blocks]

    def work(index: int, view: BlockView) -> None:
        try:
            outcomes[index].result = solve(index, view)
        except _Aborted:
            pass
        except BaseException as exc:  # handed to the calling thread, which raises it
            outcomes[index].error = exc
            scan.abort()
        finally:
            scan.finished(index)

    threads = []
    for index, indices in enumerate(positions):
        view = BlockView(
            scan, index, sum(operator.params[i].numel() for i in indices), operator.dtype, operator.device
        )
        thread = threading.Thread(
            target=work, args=(index, view), name=f"scan-{blocks[index].name}", daemon=True
        )
        threads.append(thread)
    try:
        for thread in threads:
            thread.start()
        while True:
            _report(outcomes, on_result)
            requests = scan.next_requests()
            if requests is None:
                break
            scan.answer(requests)
    except BaseException:
        scan.abort()
        raise
    finally:
        for thread in threads:
            thread.join()
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
    _report(outcomes, on_result)
    results = [outcome.result for outcome in outcomes]
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]  # no None left: asserted just above


def _report(outcomes: list[_Outcome], on_result: Callable[[int, EigenResult], None] | None) -> None:
    for index, outcome in enumerate(outcomes):
        if outcome.result is not None and not outcome.reported:
            outcome.reported = True
            if on_result is not None:
                on_result(index, outcome.result)
