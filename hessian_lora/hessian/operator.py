"""Symmetric linear operators on flat vectors, and the loss Hessian over a parameter block as one of them.

The objective is the global per-token mean loss over a list of batches, L(θ) = Σ_b loss_sum_b(θ) / Σ_b T_b
(T_b the batch's loss tokens), the same number the training loop reports; θ is a block of parameters (the whole
adapter, one module's factors, any filter) and every other parameter is held fixed.

Backends for the Hessian-vector product, all summed batch by batch so memory stays at one batch's graph:

- ``double_backward``: g = ∂L/∂θ with ``create_graph=True``, then Hv = ∂(g·v)/∂θ. Exact. With ``reuse`` the
  first-order graph of each batch is kept across products, so later products cost only the second backward
  (bench/hessian.py, SmolLM2-135M + LoRA r=8, 4×128 tokens: 1.39× a gradient instead of 2.54×; peak RSS
  7.0 GB instead of 6.2 GB).
- ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad`` through ``functional_call``. Exact.
- ``finite_difference``: central differences of two gradients, (g(θ + εu) − g(θ − εu)) / 2ε · ‖v‖ with
  u = v/‖v‖ (ε is a step length in parameter space). Not exact: O(ε²) truncation plus O(u_mach/ε) round-off,
  and where they balance depends on the model far more than on the dtype. Measured relative errors in float32:
  SmolLM2-135M + LoRA r=8 (4×57 tokens): ε=1 1.1e-4, 0.3 2e-4, 0.1 5e-4, 0.03 2.5e-3, 0.01 6e-3 (round-off
  dominates down to ε≈1); the tiny Llama (hidden 32, r=1, B ~ N(0, 0.3²)): 0.1 1.3e-2, 0.03 1.2e-3,
  0.01 1.3e-4, 0.003 5e-5, 0.001 2e-4 (truncation dominates above 0.01). No fixed ε per dtype serves both, so
  ``fd_epsilon=None`` calibrates once per operator: one probe direction on the first batch at
  ε = ``FD_EPSILON[dtype]``·3^k, k = −4…4 (18 batch gradients), and the pair of neighbours whose estimates agree
  best brackets the balance point; their geometric mean is used from then on (``fd_step``). A number fixes ε.

DoRA: peft detaches the column norm ‖W + sBA‖ from the graph (DoRA paper §4.3), so autograd differentiates a
surrogate in which the norm is a constant at the current point. With ``dora_norm="detached"`` (the default) the
exact backends return that surrogate's Hessian (what DoRA trains with, and what the paper's
``autograd.functional.vhp`` and PyHessian compute); finite differences would instead difference the surrogate's
gradient field *including* the norm's change, a matrix that is neither (and not symmetric), so they are refused
for blocks whose modules use DoRA. With ``dora_norm="differentiated"`` every product runs with the norm
differentiated (:func:`~hessian_lora.hessian.dora.differentiated_dora_norm`): the Hessian of the true loss, for
every backend, finite differences included. They differ: λ_max 3.1 % apart on the tiny Llama's layer-0 q_proj
block (DoRA r=1, B and m off their initial values; ``tests/hessian/test_dora.py``).

``backend="auto"`` takes the fastest exact backend measured on the device type (``FASTEST_EXACT_BACKEND``).

Many directions per pass (:meth:`HessianOperator.matmat`, double backward): each batch's first-order graph is
built once per call (or taken from the kept ones) and the second backward runs for every direction on it, so k
products cost one forward and one first backward instead of k. How the second backwards run (``batching``):
``"loop"`` one backward per direction on the shared graph, ``"vmap"`` all directions of a chunk in one batched
backward (``torch.autograd.grad(..., is_grads_batched=True)``, chunks of ``directions_per_pass``). Measured on
the CPU (bench/batched_products.py, 2026-12-02; SmolLM2-135M, q_proj block of layer 15, LoRA r=8, 8 examples
of 412 tokens, one thread, side by side): k single products against one ``matmat`` with the loop 1.35× faster
at k = 4, 1.44× at 8, 1.42× at 16 (the shared forward and first backward); the batched backward 1.7× (k = 8)
and 2.1× (k = 16) *slower* than the loop (PyTorch has no batching rule for softmax, log-softmax and SiLU
backward, and one CPU thread is compute-bound already, so batched matmuls save nothing), so ``"auto"`` is
``"loop"`` on the CPU (``FASTEST_BATCHING``). On one H200 (bench/gpu_check.sh, 2026-12-04; a random Llama of
hidden 1024 and 24 layers, q_proj of layer 12, LoRA r=8, 2 batches of 1481 tokens, fp32) the batched backward
won: k = 8 vmap 0.39 s against the loop's 1.67 s, k = 32 0.93 s against 5.17 s (14× the k single products),
max rel. diff 2.7e-7. ``"auto"`` is therefore ``"vmap"`` on CUDA when the memory plan says a batched pass fits
(:func:`~hessian_lora.hessian.memory_plan.choose_batching`: the pass charged its directions beside the Krylov
vectors), the loop where it does not, and the loop on the CPU. The operator decides from its own batches and the
free memory when built; a measurement hands it the plan's choice (:meth:`HessianOperator.follow_plan`), which
also counts the Krylov vectors. Forward-over-reverse and finite differences take each direction in its own pass.

The loss may be :class:`~hessian_lora.hessian.loss.ChunkedHeadLoss` (the LM head over chunks of loss tokens, never all
logits at once): the same operator to round-off, with the vocabulary's memory charged per chunk.

Every product runs with the model in eval mode (dropout off), gradients enabled only for the block, and
scaled-dot-product attention restricted to the math kernel (the CPU flash kernel has no double backward).
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, cast, get_args

import psutil
import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessian_lora.hessian.distributed as distributed
from hessian_lora.core.errors import UserError
from hessian_lora.hessian.dora import (
    DoraNorm,
    check_differentiable,
    check_dora_norm,
    differentiated_dora_norm,
)
from hessian_lora.hessian.filters import ParameterBlock
from hessian_lora.hessian.loss import ChunkedHeadLoss, loss_sum
from hessian_lora.hessian.memory_plan import (
    Batching,
    MemoryPlan,
    activation_bytes,
    choose_batching,
    free_memory,
)
from hessian_lora.hessian.reductions import norm
from hessian_lora.inputs.tasks import TokenBatch

# loss(model, batch): the model is the peft model itself or a functional_call wrapper around it, hence Any.
LossFunction = Callable[[Any, TokenBatch], torch.Tensor]

Backend = Literal["double_backward", "forward_over_reverse", "finite_difference"]
BACKENDS: tuple[str, ...] = get_args(Backend)
# Measured by bench/hessian.py side by side (per-HVP time / gradient time). CPU, SmolLM2-135M + LoRA r=8 on
# 4x128 tokens: double backward 2.54x (1.39x with reuse), forward-over-reverse 3.63x, autograd vhp 2.64x
# (REFERENCE.md, another day: 2.36x and 3.27x). H200 (bench/gpu_check.sh, 2026-12-04, a random 0.47 B Llama,
# 4x512 tokens): double backward 2.35x; the other backends not measured there, so double backward elsewhere too.
FASTEST_EXACT_BACKEND: dict[str, Backend] = {"cpu": "double_backward"}
# Centres of the finite-difference step ladder (×3^±4: float32 spans 0.0012…8.1, float64 1.2e-5…0.081), chosen
# from the measurements above; float64 models in HF still compute norms and softmax in float32.
FD_EPSILON: dict[torch.dtype, float] = {torch.float32: 0.1, torch.float64: 1e-3}
_FD_LADDER = tuple(3.0**k for k in range(-4, 5))
BATCHINGS: tuple[str, ...] = get_args(Batching)
# Directions per batched backward (vmap): its intermediate tensors are this many times one backward's.
DIRECTIONS_PER_PASS = 8
# Fraction of free memory the kept first-order graphs may take under reuse="auto".
REUSE_MEMORY_FRACTION = 0.5


class LinearOperator(ABC):
    """A symmetric operator on flat vectors of ``size`` entries; ``op @ v`` is ``op.matvec(v)``.

    Every solver assumes symmetry (Lanczos, power iteration's Rayleigh quotients, the trace estimators' variance):
    an operator that is not symmetric gives meaningless certificates, not an error."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of entries of the vectors the operator acts on."""
        ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype of the vectors it acts on and returns."""
        ...

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The device of the vectors it acts on and returns."""
        ...

    @abstractmethod
    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The operator applied to one flat vector of ``size`` entries."""
        ...

    def matmat(self, matrix: torch.Tensor) -> torch.Tensor:
        """Apply to each column of a ``size × k`` matrix (one product per column unless an operator batches)."""
        check_matrix(matrix, self.size)
        if matrix.shape[1] == 0:
            return torch.zeros(self.size, 0, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(column) for column in matrix.T], dim=1)

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def to_dense(self) -> torch.Tensor:
        """The full matrix, column by column (size products: tests and tiny blocks only)."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(column) for column in eye], dim=1)


class BaseOperator(LinearOperator):
    """A :class:`LinearOperator` that holds its size, dtype and device, given once to ``__init__``: the base of
    the engine's operators, so that a subclass writes its ``matvec`` (and ``matmat`` where it batches) only.

    Args:
        size: the number of entries of the vectors it acts on.
        dtype: their dtype.
        device: their device.
    """

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self._size, self._dtype, self._device = int(size), dtype, torch.device(device)

    @property
    def size(self) -> int:
        """Number of entries of the vectors the operator acts on."""
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the vectors it acts on and returns."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """The device of the vectors it acts on and returns."""
        return self._device


class DenseOperator(BaseOperator):
    """An explicit symmetric matrix (closed-form checks, dense references).

    Args:
        matrix: the square, symmetric matrix (its dtype and device are the operator's).

    Raises:
        ValueError: a matrix that is not square.
        UserError: a matrix that is not symmetric up to round-off.

    Examples:
        >>> import torch
        >>> from hessian_lora.hessian.operator import DenseOperator
        >>> operator = DenseOperator(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
        >>> operator.size
        2
        >>> operator.matvec(torch.tensor([1.0, 0.0], dtype=torch.float64)).tolist()
        [2.0, 1.0]
        >>> operator.calls  # products made so far
        1
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
        # Every solver assumes symmetry; a matrix off by more than round-off is another problem, said at once.
        asymmetry = float((matrix - matrix.T).abs().max()) if matrix.numel() else 0.0
        scale = float(matrix.abs().max()) if matrix.numel() else 0.0
        if asymmetry > 1e3 * torch.finfo(matrix.dtype).eps * scale:
            raise UserError(
                f"the matrix is not symmetric (max |A - Aᵀ| = {asymmetry:.3g} for max |A| = {scale:.3g}): "
                "the eigen-solvers assume a symmetric operator; pass (A + Aᵀ)/2."
            )
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix
        self.calls = 0

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The operator applied to one flat vector of ``size`` entries."""
        self.calls += 1
        return self.matrix @ vector.to(self.matrix)


class DiagonalOperator(BaseOperator):
    """diag(d) for a flat vector d: a known spectrum at any size (checks of the solvers at millions of entries).

    Args:
        diagonal: d, flat (its dtype and device are the operator's).

    Raises:
        ValueError: a diagonal that is not flat.

    Examples:
        >>> import torch
        >>> from hessian_lora.hessian.operator import DiagonalOperator
        >>> operator = DiagonalOperator(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> operator.size
        5
        >>> operator.matvec(torch.ones(5, dtype=torch.float64)).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0]
    """

    def __init__(self, diagonal: torch.Tensor) -> None:
        if diagonal.ndim != 1:
            raise ValueError(f"need a flat diagonal, got shape {tuple(diagonal.shape)}")
        super().__init__(diagonal.shape[0], diagonal.dtype, diagonal.device)
        self.diagonal = diagonal
        self.calls = 0

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The operator applied to one flat vector of ``size`` entries."""
        self.calls += 1
        return self.diagonal * vector.to(self.diagonal)


class ScaledOperator(BaseOperator):
    """D H D for a diagonal D given as a flat vector (symmetric preconditioning, P^-1/2 H P^-1/2)."""

    def __init__(self, inner: LinearOperator, diagonal: torch.Tensor) -> None:
        if diagonal.shape != (inner.size,):
            raise ValueError(f"diagonal has shape {tuple(diagonal.shape)}, the operator size is {inner.size}")
        super().__init__(inner.size, inner.dtype, inner.device)
        self.inner = inner
        self.diagonal = diagonal.to(device=inner.device, dtype=inner.dtype)

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The operator applied to one flat vector of ``size`` entries."""
        return self.diagonal * self.inner.matvec(self.diagonal * vector)

    def matmat(self, matrix: torch.Tensor) -> torch.Tensor:
        """The operator applied to each column of a ``size × k`` matrix."""
        check_matrix(matrix, self.size)
        scale = self.diagonal[:, None]
        return scale * self.inner.matmat(scale * matrix.to(self.diagonal))


ParameterSpec = (
    ParameterBlock | Mapping[str, nn.Parameter] | Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]]
)


class HessianOperator(BaseOperator):
    """∇²_θ of the token-weighted mean loss over ``batches``, θ = ``params``, everything else fixed.

    ``reuse``: ``True`` keeps every batch's first-order graph between products (double backward only),
    ``False`` never, ``"auto"`` keeps graphs while their measured memory stays within half of the memory free
    when the operator was built, and recomputes the remaining batches each time. Kept graphs are dropped when
    any model parameter or buffer changes (:func:`parameter_fingerprint`, checked before every product while
    graphs may be kept: it also sees writes through ``.data`` and ``vector_to_parameters``, which version
    counters miss) or by :meth:`clear_cache`.

    Under an initialised ``torch.distributed`` process group (``distributed="auto"``) each rank takes every
    world-size-th batch and the products are summed across ranks before dividing by the global token count:
    all ranks must call :meth:`matvec` in step (the solvers do, given the same seed).

    ``dora_norm``: the Hessian of peft's DoRA surrogate (``"detached"``, the column norm a constant) or of the
    true loss (``"differentiated"``); see the module docstring. It changes nothing for a model without DoRA.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[TokenBatch],
        params: ParameterSpec,
        *,
        backend: Backend | Literal["auto"] = "auto",
        reuse: bool | Literal["auto"] = "auto",
        loss_fn: LossFunction = loss_sum,
        fd_epsilon: float | None = None,
        distributed_mode: bool | str = "auto",
        dora_norm: DoraNorm = "detached",
        batching: Batching | Literal["auto"] = "auto",
        directions_per_pass: int = DIRECTIONS_PER_PASS,
    ) -> None:
        self.model = model
        self.dora_norm = check_dora_norm(dora_norm)
        if self.dora_norm == "differentiated":
            check_differentiable(model)
        self.names, self.params = _resolve_parameters(model, params)
        if not self.params:
            raise UserError(
                "the parameter block is empty: choose modules/layers that carry adapter parameters."
            )
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise UserError(
                f"the block mixes dtypes {sorted(map(str, dtypes))}: load the model in one dtype."
            )
        dtype = self.params[0].dtype
        if dtype not in (torch.float32, torch.float64):
            raise UserError(
                f"Hessian work needs float32 or float64 parameters, got {dtype}: "
                "load the model with dtype=torch.float32 (Lanczos is unstable in low precision)."
            )
        super().__init__(sum(p.numel() for p in self.params), dtype, self.params[0].device)
        self.backend = resolve_backend(backend, self._device)
        if reuse not in (True, False, "auto"):
            raise UserError(f"reuse must be True, False or 'auto', got {reuse!r}.")
        self.reuse = reuse if self.backend == "double_backward" else False
        if (
            self.backend == "finite_difference"
            and self.dora_norm == "detached"
            and _touches_dora(model, self.names)
        ):
            raise UserError(
                "finite differences see the DoRA column norm that peft detaches from autograd, so they "
                "measure another matrix: use backend double_backward or forward_over_reverse for DoRA, "
                "or dora_norm 'differentiated' (the Hessian of the true loss)."
            )
        if batching != "auto" and batching not in BATCHINGS:
            raise UserError(f"unknown batching {batching!r}: use auto, {', '.join(BATCHINGS)}.")
        if (
            isinstance(directions_per_pass, bool)
            or not isinstance(directions_per_pass, int)
            or directions_per_pass < 1
        ):
            raise UserError(f"directions_per_pass must be a whole number >= 1, got {directions_per_pass!r}.")
        self.directions_per_pass = directions_per_pass
        self.loss_fn = loss_fn
        # tokens a chunk of the LM head, for the memory estimates (None: the plain head)
        self.head_chunk = loss_fn.chunk_tokens if isinstance(loss_fn, ChunkedHeadLoss) else None
        if fd_epsilon is not None and not fd_epsilon > 0:
            raise UserError(f"fd_epsilon must be positive, got {fd_epsilon}.")
        self.fd_step: float | None = fd_epsilon
        self.rank, self.world_size = distributed.world(distributed_mode)
        all_batches = list(batches)
        if not all_batches:
            raise UserError("no batches: give at least one batch of data.")
        self.batches = [
            b.to(self._device) for b in distributed.shard(all_batches, self.rank, self.world_size)
        ]
        local_tokens = sum(b.loss_tokens for b in self.batches)
        self.total_tokens = int(
            distributed.all_reduce_sum(
                torch.tensor([float(local_tokens)], dtype=torch.float64, device=self._device)
            ).item()
        )
        self.total_batches = len(all_batches)
        if self.total_tokens == 0:
            raise UserError("the batches hold no loss tokens: give examples with responses.")
        self._batching_asked = batching
        self.batching: Batching = "loop" if batching == "auto" else batching
        self.batching_reason = "as asked"
        if batching == "auto":
            self.batching, self.batching_reason = self._auto_batching()
        self._shapes = [p.shape for p in self.params]
        self._numels = [p.numel() for p in self.params]
        self.calls = 0
        self._graphs: dict[int, tuple[torch.Tensor, ...]] = {}
        self._uncached: set[int] = set()
        self._versions: tuple[tuple[int, ...], ...] | None = None
        self._memory_budget: float | None = None  # bytes the kept graphs may still take (reuse="auto")
        self._reuse_limit = 0.0
        # Called as on_batch(done, total, directions) after each local batch of a product or of a batched call
        # (progress of long products; ``directions`` is how many products that call makes).
        self.on_batch: Callable[[int, int, int], None] | None = None

    @property
    def cached_batches(self) -> int:
        """How many local batches keep their first-order graph (reuse)."""
        return len(self._graphs)

    def clear_cache(self) -> None:
        """Drop every kept first-order graph (they are rebuilt on the next product)."""
        self._graphs.clear()
        self._uncached.clear()
        self._versions = None
        if self._memory_budget is not None:
            self._memory_budget = self._reuse_limit  # the dropped graphs' bytes are free again

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One flat vector from per-parameter tensors, in the block's order."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat vector, in the block's order and shapes."""
        return [piece.view(shape) for piece, shape in zip(torch.split(vector, self._numels), self._shapes)]

    def parameter_vector(self) -> torch.Tensor:
        """The block's current parameter values as one flat vector (detached)."""
        return self.flatten([p.detach() for p in self.params])

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """The operator applied to one flat vector of ``size`` entries."""
        if vector.shape != (self._size,):
            raise ValueError(f"vector has shape {tuple(vector.shape)}, expected ({self._size},)")
        if self.backend == "double_backward":
            return self.matmat(vector[:, None])[:, 0]
        vector = vector.to(device=self._device, dtype=self._dtype)
        pieces = self.unflatten(vector)
        total = torch.zeros(self._size, dtype=self._dtype, device=self._device)
        with self._hvp_mode():
            if self.backend == "forward_over_reverse":
                for index, batch in enumerate(self.batches):
                    total += self.flatten(self._forward_over_reverse(batch, pieces))
                    self._batch_done(index)
            else:
                length = norm(vector)
                if length > 0:
                    if self.fd_step is None:
                        self.fd_step = self._calibrate_fd_step(pieces, length)
                    for index, batch in enumerate(self.batches):
                        total += self.flatten(self._finite_difference(batch, pieces, self.fd_step / length))
                        self._batch_done(index)
        total = distributed.all_reduce_sum(total)
        self.calls += 1
        return total / self.total_tokens

    def matmat(self, matrix: torch.Tensor) -> torch.Tensor:
        """H applied to each column of a ``size × k`` matrix; with double backward, one first-order graph per
        batch serves every column (module docstring), else one pass per column."""
        check_matrix(matrix, self._size)
        if self.backend != "double_backward":
            return super().matmat(matrix)
        directions = int(matrix.shape[1])
        matrix = matrix.to(device=self._device, dtype=self._dtype)
        columns = [self.unflatten(matrix[:, j]) for j in range(directions)]
        total = torch.zeros(directions, self._size, dtype=self._dtype, device=self._device)
        if directions:
            with self._hvp_mode():
                self._drop_stale_graphs()
                for index, batch in enumerate(self.batches):
                    for j, product in enumerate(self._second_backwards(index, batch, columns)):
                        total[j] += self.flatten(product)
                    self._batch_done(index, directions)
        total = distributed.all_reduce_sum(total)
        self.calls += directions
        return (total / self.total_tokens).T

    def block_products(self, requests: Sequence[tuple[Sequence[int], torch.Tensor]]) -> list[torch.Tensor]:
        """Diagonal-block products H_bb V_b of sub-blocks of this operator's parameters, all in one pass.

        Each request is (positions of the block's tensors in ``params``, a ``size_b × m`` matrix V_b); the answer
        is H_bb V_b for each, where H_bb is the Hessian with respect to those tensors alone (everything else
        fixed), the same matrix a :class:`HessianOperator` over the block gives. Every batch's first-order graph
        is built once (or kept, under ``reuse``) for all requests, and each direction's second backward runs
        only from that block's gradient to that block's tensors (double backward only).
        """
        if self.backend != "double_backward":
            raise UserError(
                "block products need the double_backward backend (one first-order graph shared by "
                "every block); use backend double_backward or auto."
            )
        plans = []
        for positions, matrix in requests:
            positions = list(positions)
            numels = [self._numels[i] for i in positions]
            size = sum(numels)
            check_matrix(matrix, size)
            matrix = matrix.to(device=self._device, dtype=self._dtype)
            columns = [
                [
                    piece.view(self._shapes[i])
                    for piece, i in zip(torch.split(matrix[:, j], numels), positions)
                ]
                for j in range(matrix.shape[1])
            ]
            plans.append(
                (
                    positions,
                    columns,
                    torch.zeros(matrix.shape[1], size, dtype=self._dtype, device=self._device),
                )
            )
        directions = sum(len(columns) for _, columns, _ in plans)
        if directions:
            with self._hvp_mode():
                self._drop_stale_graphs()
                for index, batch in enumerate(self.batches):
                    first, keep = self._first_order(index, batch)
                    if self.batching == "vmap" and directions > 1:
                        self._batched_block_products(first, keep, plans)
                        self._batch_done(index, directions)
                        continue
                    remaining = directions
                    for positions, columns, total in plans:
                        outputs = [first[i] for i in positions]
                        inputs = [self.params[i] for i in positions]
                        for j, column in enumerate(columns):
                            remaining -= 1
                            product = torch.autograd.grad(
                                outputs, inputs, grad_outputs=column, retain_graph=keep or remaining > 0
                            )
                            total[j] += self.flatten(product)
                    self._batch_done(index, directions)
        self.calls += directions
        return [(distributed.all_reduce_sum(total) / self.total_tokens).T for _, _, total in plans]

    def _batched_block_products(
        self,
        first: tuple[torch.Tensor, ...],
        keep: bool,
        plans: list[tuple[list[int], list[list[torch.Tensor]], torch.Tensor]],
    ) -> None:
        """Every request's directions in batched second backwards (vmap) on one first-order graph: each tangent
        is supported on its own block (zero on every other tensor of the union), so the batched backward's
        answer restricted to that block is H_bb v_b. It differentiates into every tensor of the union, which the
        loop does not, and wins where batched kernels do (a GPU)."""
        union = sorted({i for positions, _, _ in plans for i in positions})
        where = {i: n for n, i in enumerate(union)}
        directions = [
            (positions, column, total, j)
            for positions, columns, total in plans
            for j, column in enumerate(columns)
        ]
        for start in range(0, len(directions), self.directions_per_pass):
            chunk = directions[start : start + self.directions_per_pass]
            stacked = [
                torch.zeros((len(chunk), *self._shapes[i]), dtype=self._dtype, device=self._device)
                for i in union
            ]
            for d, (positions, column, _, _) in enumerate(chunk):
                for i, piece in zip(positions, column):
                    stacked[where[i]][d] = piece
            last = start + len(chunk) >= len(directions)
            batched = torch.autograd.grad(
                [first[i] for i in union],
                [self.params[i] for i in union],
                grad_outputs=stacked,
                is_grads_batched=True,
                retain_graph=keep or not last,
            )
            for d, (positions, _, total, j) in enumerate(chunk):
                total[j] += self.flatten([batched[where[i]][d] for i in positions])

    def _batch_done(self, index: int, directions: int = 1) -> None:
        if self.on_batch is not None:
            self.on_batch(index + 1, len(self.batches), directions)

    def gradient(self) -> torch.Tensor:
        """∂L/∂θ of the token-weighted mean loss (flat)."""
        total = torch.zeros(self._size, dtype=self._dtype, device=self._device)
        with self._hvp_mode():
            for batch in self.batches:
                loss = self.loss_fn(self.model, batch)
                total += self.flatten(torch.autograd.grad(loss, self.params))
        return distributed.all_reduce_sum(total) / self.total_tokens

    def loss(self) -> float:
        """The token-weighted mean loss itself."""
        total = torch.zeros(1, dtype=torch.float64, device=self._device)
        with self._hvp_mode(), torch.no_grad():
            for batch in self.batches:
                total += self.loss_fn(self.model, batch).double()
        return float(distributed.all_reduce_sum(total)) / self.total_tokens

    # --- backends -------------------------------------------------------------------------------------------

    def _first_order(self, index: int, batch: TokenBatch) -> tuple[tuple[torch.Tensor, ...], bool]:
        """The batch's gradient with its graph (kept under ``reuse``), and whether it is kept."""
        graph = self._graphs.get(index)
        if graph is not None:
            return graph, True
        keep = self._may_keep(index)
        census = _GraphCensus(self.model) if keep and self._device.type != "cuda" else None
        before = _memory_in_use(self._device) if keep and census is None else 0
        loss = self.loss_fn(self.model, batch)
        first = torch.autograd.grad(loss, self.params, create_graph=True)
        # CUDA's allocator counts exactly; elsewhere the process's resident size can grow by less than the graph
        # (glibc hands back chunks a previous product freed), so the saved tensors are counted instead
        grown = census.bytes(first) if census is not None else _memory_in_use(self._device) - before
        if keep and self._fits(grown):
            self._graphs[index] = first
            return first, True
        self._uncached.add(index)
        return first, False

    def _second_backwards(
        self, index: int, batch: TokenBatch, columns: list[list[torch.Tensor]]
    ) -> list[tuple[torch.Tensor, ...]]:
        """H_batch v for every direction in ``columns`` on one first-order graph of the batch."""
        first, keep = self._first_order(index, batch)
        products: list[tuple[torch.Tensor, ...]] = []
        if self.batching == "vmap" and len(columns) > 1:
            for start in range(0, len(columns), self.directions_per_pass):
                chunk = columns[start : start + self.directions_per_pass]
                last = start + len(chunk) >= len(columns)
                stacked = [torch.stack(pieces) for pieces in zip(*chunk)]
                batched = torch.autograd.grad(
                    first,
                    self.params,
                    grad_outputs=stacked,
                    is_grads_batched=True,
                    retain_graph=keep or not last,
                )
                products += [tuple(part[j] for part in batched) for j in range(len(chunk))]
            return products
        for j, pieces in enumerate(columns):
            products.append(
                torch.autograd.grad(
                    first, self.params, grad_outputs=pieces, retain_graph=keep or j + 1 < len(columns)
                )
            )
        return products

    def _forward_over_reverse(
        self, batch: TokenBatch, pieces: list[torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        names = self.names

        def batch_loss(values: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return self.loss_fn(_FunctionalModel(self.model, dict(zip(names, values))), batch)

        primals = tuple(p.detach() for p in self.params)
        product: tuple[torch.Tensor, ...] = jvp(grad(batch_loss), (primals,), (tuple(pieces),))[1]
        return product

    def _finite_difference(
        self, batch: TokenBatch, pieces: list[torch.Tensor], step: float
    ) -> list[torch.Tensor]:
        # Perturbed copies go through functional_call: the parameters themselves are never written, so graphs
        # kept by other operators on the same model stay valid.
        gradients = []
        for sign in (1.0, -1.0):
            shifted = {
                name: (p.detach() + sign * step * piece).requires_grad_(True)
                for name, p, piece in zip(self.names, self.params, pieces)
            }
            loss = self.loss_fn(_FunctionalModel(self.model, shifted), batch)
            gradients.append(torch.autograd.grad(loss, list(shifted.values())))
        return [(plus - minus) / (2.0 * step) for plus, minus in zip(*gradients)]

    def _calibrate_fd_step(self, pieces: list[torch.Tensor], length: float) -> float:
        """The ε of the ladder pair whose two estimates agree best (see the module docstring)."""
        candidates = [FD_EPSILON[self._dtype] * factor for factor in _FD_LADDER]
        batch = self.batches[0]
        estimates = [self.flatten(self._finite_difference(batch, pieces, eps / length)) for eps in candidates]
        disagreement = torch.tensor(
            [norm(a - b) ** 2 for a, b in itertools.pairwise(estimates)],
            dtype=torch.float64,
            device=self._device,
        )
        disagreement = distributed.all_reduce_sum(disagreement)  # every rank picks the same step
        best = int(disagreement.argmin())
        return float((candidates[best] * candidates[best + 1]) ** 0.5)

    # --- reuse bookkeeping ----------------------------------------------------------------------------------

    def _may_keep(self, index: int) -> bool:
        if self.reuse is False or index in self._uncached:
            return False
        if self.reuse is True:
            return True
        return not self._uncached  # once one batch did not fit, later ones are recomputed too

    def _auto_batching(self) -> tuple[Batching, str]:
        """``batching="auto"`` from this operator's own batches and the free memory (no Krylov vectors counted:
        :meth:`follow_plan` refines it)."""
        if self._device.type != "cuda" or self.directions_per_pass == 1:
            return choose_batching(
                self._device,
                free_bytes=0,
                loop_bytes=None,
                batched_bytes=None,
                directions=self.directions_per_pass,
            )
        shapes = {(int(b.input_ids.shape[0]), int(b.input_ids.shape[1])) for b in self.batches}
        estimates = [
            (
                activation_bytes(self.model, *shape, head_chunk=self.head_chunk),
                activation_bytes(
                    self.model, *shape, head_chunk=self.head_chunk, directions=self.directions_per_pass
                ),
            )
            for shape in shapes
        ]
        loop = max((e[0] for e in estimates if e[0] is not None), default=None)
        batched = None if any(e[1] is None for e in estimates) else max(int(e[1] or 0) for e in estimates)
        return choose_batching(
            self._device,
            free_bytes=free_memory(self._device),
            loop_bytes=loop,
            batched_bytes=batched,
            directions=self.directions_per_pass,
        )

    def follow_plan(self, plan: MemoryPlan) -> None:
        """Take a memory plan's shares: the kept graphs' budget (:meth:`limit_reuse`) and, where batching was
        ``"auto"``, the plan's choice (which counts the Krylov vectors beside a batched pass)."""
        self.limit_reuse(plan.reuse_bytes)
        if self._batching_asked == "auto":
            self.batching, self.batching_reason = plan.batching, plan.batching_reason

    def limit_reuse(self, budget_bytes: float) -> None:
        """Keep first-order graphs (``reuse="auto"``) in at most ``budget_bytes``: the share a memory plan left
        them beside the Krylov vectors (:func:`hessian_lora.hessian.memory_plan.plan_memory`'s ``reuse_bytes``).
        Without it the operator takes ``REUSE_MEMORY_FRACTION`` of the free memory at its first product."""
        spent = 0.0 if self._memory_budget is None else self._reuse_limit - self._memory_budget
        self._reuse_limit = float(budget_bytes)
        self._memory_budget = self._reuse_limit - spent

    def _fits(self, grown: int) -> bool:
        if self.reuse is True:
            return True
        if self._memory_budget is None:
            self._reuse_limit = REUSE_MEMORY_FRACTION * free_memory(self._device)
            self._memory_budget = self._reuse_limit
        self._memory_budget -= max(grown, 0)
        return self._memory_budget >= 0

    def _drop_stale_graphs(self) -> None:
        if self.reuse is False:
            return
        fingerprint = parameter_fingerprint(self.model)
        if self._versions is not None and fingerprint != self._versions:
            self.clear_cache()
        self._versions = fingerprint

    @contextlib.contextmanager
    def _hvp_mode(self) -> Iterator[None]:
        dora = (
            differentiated_dora_norm(self.model)
            if self.dora_norm == "differentiated"
            else contextlib.nullcontext()
        )
        with only_block_trainable(self.model, self.params, eval_mode=True), torch.enable_grad(), dora:
            yield


def check_matrix(matrix: torch.Tensor, size: int) -> None:
    """A ``size × k`` matrix, or a ValueError that says the shape."""
    if matrix.ndim != 2 or matrix.shape[0] != size:
        raise ValueError(f"matrix has shape {tuple(matrix.shape)}, expected ({size}, k)")


def parameter_fingerprint(model: nn.Module) -> tuple[tuple[int, ...], ...]:
    """Storage address, version counter and an exact integer checksum of the bits of every parameter and buffer.

    The checksum sums each tensor's bit patterns as integers (no rounding): any single changed element changes
    it, whatever the path of the write (in place, ``.data``, a new storage). One read of every weight: on
    SmolLM2-135M (0.54 GB of float32) about 0.05 s on one CPU thread (measured on 133 M float32
    parameters; the HVP there takes ~3 s).
    """
    tensors = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
    sums = [_bit_sum(t) for t in tensors]
    totals = torch.stack([s.cpu() for s in sums]).tolist() if sums else []
    return (tuple(t.data_ptr() for t in tensors), tuple(t._version for t in tensors), tuple(totals))


def _bit_sum(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.reshape(-1)
    if not flat.is_floating_point() or flat.numel() == 0:
        return flat.sum(dtype=torch.int64) if flat.numel() else torch.zeros((), dtype=torch.int64)
    bits = flat.view(torch.int16 if flat.element_size() == 2 else torch.int32)
    return bits.sum(dtype=torch.int64)


class _FunctionalModel:
    """Calls ``model`` with some parameters replaced (``torch.func.functional_call``), for a loss function."""

    def __init__(self, model: nn.Module, values: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.values = values

    def __call__(self, *args: object, **kwargs: object) -> object:
        return functional_call(self.model, self.values, args, kwargs, strict=False)


def resolve_backend(backend: str, device: torch.device) -> Backend:
    """The backend ``auto`` stands for on ``device``, or ``backend`` itself once checked."""
    if backend == "auto":
        return FASTEST_EXACT_BACKEND.get(device.type, "double_backward")
    if backend not in BACKENDS:
        raise UserError(f"unknown HVP backend {backend!r}: use auto, {', '.join(BACKENDS)}.")
    return backend  # type: ignore[return-value]  # checked against BACKENDS above: mypy does not narrow by membership


def _resolve_parameters(model: nn.Module, params: ParameterSpec) -> tuple[list[str], list[nn.Parameter]]:
    if isinstance(params, ParameterBlock):
        return list(params.names), list(params.parameters)
    if isinstance(params, Mapping):
        return list(params.keys()), list(params.values())
    items = list(params)
    if items and isinstance(items[0], tuple):
        return [name for name, _ in items], [param for _, param in items]
    name_of = {id(param): name for name, param in model.named_parameters()}
    missing = [i for i, param in enumerate(items) if id(param) not in name_of]
    if missing:
        raise ValueError(f"parameters at positions {missing} are not parameters of the model")
    return [name_of[id(param)] for param in items], [cast(nn.Parameter, param) for param in items]


def _touches_dora(model: nn.Module, names: Sequence[str]) -> bool:
    """True when a parameter of the block belongs to a module that carries a DoRA magnitude."""
    dora_modules = {
        name.split(".lora_magnitude_vector", 1)[0]
        for name, _ in model.named_parameters()
        if ".lora_magnitude_vector" in name
    }
    return any(name.split(".lora_", 1)[0] in dora_modules for name in names)


class _GraphCensus:
    """The bytes a kept first-order graph holds: every storage its nodes save, each counted once, the model's own
    parameters and buffers left out (they exist without the graph).

    Under ``reuse="auto"`` on the CPU the budget was charged with the growth of the resident set, which falls
    short of the graph once the heap holds freed chunks (a previous product's): a 64-example DoRA probe of the
    replication grew past its half of free memory to 24.4 GB and was killed by the kernel.

    The census walks the graph from the gradients after it is built and reads each node's saved tensors
    (``_saved_*`` of built-in nodes, ``saved_tensors`` of custom Functions). It once counted them with
    ``saved_tensors_hooks`` instead; a pack hook that returns the tensor makes a saved *output* hold its own
    ``grad_fn``, a reference cycle through C++ that Python's collector cannot see, so every kept graph (and the
    weights it reaches) outlived its operator: about 0.8 GiB a λ probe on SmolLM2 (docs/probe-memory.md).
    """

    _SAVED_NAMES: ClassVar[
        dict[type, tuple[str, ...]]
    ] = {}  # node class → its saved-tensor attributes (dir() is slow)

    def __init__(self, model: nn.Module) -> None:
        self._seen = {
            t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())
        }
        self._bytes = 0

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self._bytes += storage.nbytes()

    def _saved(self, node: Any) -> Iterator[torch.Tensor]:
        names = self._SAVED_NAMES.get(type(node))
        if names is None:
            names = tuple(name for name in dir(node) if name.startswith("_saved_"))
            self._SAVED_NAMES[type(node)] = names
        values: list[Any] = []
        for name in names:
            try:
                values.append(getattr(node, name))
            except RuntimeError:  # already freed (a graph run without retain_graph): holds nothing
                continue
        if hasattr(node, "saved_tensors"):  # a custom autograd Function's context (the chunked LM head's)
            with contextlib.suppress(RuntimeError):
                values.extend(node.saved_tensors)
        for value in values:
            items = value if isinstance(value, (tuple, list)) else (value,)
            yield from (item for item in items if isinstance(item, torch.Tensor))

    def bytes(self, gradients: Sequence[torch.Tensor]) -> int:
        """The saved storages' bytes of every node the gradients reach, with the gradients themselves."""
        for gradient in gradients:
            self._add(gradient)
        stack: list[Any] = [gradient.grad_fn for gradient in gradients if gradient.grad_fn is not None]
        visited: set[int] = set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in visited:  # every node stays alive during the walk: ids are unique
                continue
            visited.add(id(node))
            for tensor in self._saved(node):
                self._add(tensor)
            stack.extend(following for following, _ in node.next_functions)
        return self._bytes


def _memory_in_use(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))

    return int(psutil.Process().memory_info().rss)


@contextlib.contextmanager
def only_block_trainable(
    model: nn.Module, params: Sequence[nn.Parameter], *, eval_mode: bool
) -> Iterator[None]:
    """Only ``params`` require grad, SDPA runs on its math kernel (the flash kernel has no double backward or
    forward AD), and, with ``eval_mode``, dropout is off; every flag is restored afterwards."""
    block = {id(p) for p in params}
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    saved_training = [(m, m.training) for m in model.modules()]
    try:
        for param, _ in saved_flags:
            param.requires_grad_(id(param) in block)
        if eval_mode:
            model.eval()
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for param, flag in saved_flags:
            param.requires_grad_(flag)
        for module, training in saved_training:
            module.training = training
