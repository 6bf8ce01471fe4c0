"""PyHessian 0.1 on our models and batches, and our own PyHessian-compatible power iteration.

PyHessian's ``hessian(model, criterion, data|dataloader)`` assumes ``criterion(model(x), y)``, differentiates
every parameter with ``requires_grad``, and averages batches by their *sample* count. :func:`run_pyhessian`
adapts it without touching its code: the wrapper model passes the packed batch through, the criterion runs our
loss and rescales each batch so that PyHessian's sample-weighted average becomes the token-weighted mean
(batch b gets N/(n_b·T), N samples and T loss tokens in all), and only the block's parameters require
gradients while it runs.

:func:`pyhessian_power_iteration` re-implements PyHessian's ``eigenvalues`` loop on any of our operators —
same start vectors (``torch.randn`` per parameter tensor, in order), same ``v/(‖v‖ + 1e-6)`` normalisation,
same stop rule (relative change of the Rayleigh quotient below ``tol``, returning the value *before* the last
one, as PyHessian does) — but also reports the residual ‖Hv − θv‖, so ``converged`` is honest: PyHessian's
stop rule fires on a ± pair at LoRA initialisation with a wrong value.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from hessian_lora.hessian._numerics import converged_threshold
from hessian_lora.hessian.filters import ParameterBlock
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.hessian.operator import HessianOperator, LinearOperator, LossFunction, only_block_trainable
from hessian_lora.hessian.reductions import norm
from hessian_lora.hessian.results import EigenResult, IterationRecord
from hessian_lora.inputs.tasks import TokenBatch
from hessian_lora.settings.solvers import SolveRequest

_PYHESSIAN_NORM_EPS = 1e-6  # PyHessian's normalization() divides by (norm + 1e-6)


def pyhessian_power_iteration(
    operator: LinearOperator,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    top_n: int = 1,
    seed: int | None = None,
    shapes: Sequence[torch.Size] | None = None,
) -> EigenResult:
    """PyHessian's ``hessian.eigenvalues(maxIter, tol, top_n)`` on ``operator``.

    Start vectors are drawn from the global torch RNG like PyHessian's (seeded with ``seed`` inside a forked RNG
    when given), one ``randn`` per tensor of ``shapes`` (default: the operator's parameter shapes, or one flat
    tensor), so the same seed gives the same start as PyHessian on the same block.
    """
    if shapes is None:
        shapes = (
            [p.shape for p in operator.params]
            if isinstance(operator, HessianOperator)
            else [torch.Size([operator.size])]
        )
    began = time.perf_counter()
    eigenvalues: list[float] = []
    eigenvectors: list[torch.Tensor] = []
    residuals: list[float] = []
    history: list[IterationRecord] = []
    hvps = 0
    stop_reasons = []
    for _ in range(top_n):
        with _forked_rng(seed, operator.device):
            vector = torch.cat([torch.randn(shape).reshape(-1) for shape in shapes])
        vector = _pyhessian_normalise(vector.to(device=operator.device, dtype=operator.dtype))
        eigenvalue: float | None = None
        residual = float("inf")
        reason = "max_iter"
        for _ in range(max_iter):
            vector = _pyhessian_orthonormal(vector, eigenvectors)
            product = operator.matvec(vector)
            hvps += 1
            current = float(product @ vector)  # PyHessian's own float32 arithmetic, so the iterates match its
            residual = norm(product - current * vector)  # ours: the certificate, in float64
            history.append(
                IterationRecord(len(history) + 1, hvps, time.perf_counter() - began, (current,), (residual,))
            )
            vector = _pyhessian_normalise(product)
            if eigenvalue is None:
                eigenvalue = current
            elif abs(eigenvalue - current) / (abs(eigenvalue) + 1e-6) < tol:
                reason = "relative_change"
                break
            else:
                eigenvalue = current
        eigenvalues.append(float(eigenvalue))  # type: ignore[arg-type]  # None only before the first iteration (max_iter ≥ 1: the settings check it)
        eigenvectors.append(vector)
        residuals.append(residual)
        stop_reasons.append(reason)
    scale = max(abs(v) for v in eigenvalues)
    converged = all(
        r <= converged_threshold(v, scale, tol, operator.dtype) for v, r in zip(eigenvalues, residuals)
    )
    return EigenResult(
        solver="pyhessian_power",
        largest=tuple(eigenvalues),
        largest_residuals=tuple(residuals),
        smallest=(),
        smallest_residuals=(),
        converged=converged,
        stop_reason="relative_change" if all(r == "relative_change" for r in stop_reasons) else "max_iter",
        iterations=hvps,
        hvps=hvps,
        seconds=time.perf_counter() - began,
        tol=tol,
        max_iter=max_iter,
        size=operator.size,
        history=tuple(history),
        largest_vectors=torch.stack(eigenvectors),
    )


def solve(operator: LinearOperator, request: SolveRequest) -> EigenResult:
    """The solver table's entry (:mod:`hessian_lora.settings.solvers`): :func:`pyhessian_power_iteration` with
    ``request``'s options (PyHessian's loop reports no iterations and draws its own start).

    Args:
        operator: the symmetric operator.
        request: k (PyHessian's ``top_n``), tol, max_iter and seed.

    Returns:
        :func:`pyhessian_power_iteration`'s result.
    """
    return pyhessian_power_iteration(
        operator, max_iter=request.max_iter, tol=request.tol, top_n=request.k, seed=request.seed
    )


def run_pyhessian(
    model: nn.Module,
    batches: Sequence[TokenBatch],
    block: ParameterBlock | Sequence[nn.Parameter],
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    top_n: int = 1,
    seed: int | None = None,
    loss_fn: LossFunction = loss_sum,
    verify: bool = True,
) -> EigenResult:
    """The real ``pyhessian.hessian(...).eigenvalues`` on ``block`` (one batch: its cached-gradient mode).

    ``hvps`` counts PyHessian's own products; with ``verify`` one more (ours, double backward, not counted)
    gives the residual of each returned pair.
    """
    # importlib, not ``import pyhessian.hessian``: the package re-exports the class under the module's name.
    pyhessian_module = importlib.import_module("pyhessian.hessian")

    params = list(block.parameters) if isinstance(block, ParameterBlock) else list(block)
    device = params[0].device
    batches = [b.to(device) for b in batches]
    total_samples = sum(b.size for b in batches)
    total_tokens = sum(b.loss_tokens for b in batches)
    wrapper = _PassThrough(model)

    def criterion(batch: TokenBatch, _labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(model, batch) * (total_samples / (batch.size * total_tokens))

    counter = {"hvps": 0}
    original_product = pyhessian_module.hessian_vector_product

    def counted_product(*args: object, **kwargs: object) -> object:
        counter["hvps"] += 1
        return original_product(*args, **kwargs)

    class _CountingHessian(pyhessian_module.hessian):  # type: ignore[name-defined]  # pyhessian ships no type information
        def dataloader_hv_product(self, v: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
            counter["hvps"] += 1
            result: tuple[float, list[torch.Tensor]] = super().dataloader_hv_product(v)
            return result

    packed = [(_PackedBatch(b), b.labels) for b in batches]
    began = time.perf_counter()
    with (
        only_block_trainable(model, params, eval_mode=False),
        _patched(pyhessian_module, "hessian_vector_product", counted_product),
    ):
        if len(packed) == 1:
            engine = _CountingHessian(wrapper, criterion, data=packed[0], cuda=device.type == "cuda")
        else:
            engine = _CountingHessian(wrapper, criterion, dataloader=packed, cuda=device.type == "cuda")
        with _forked_rng(seed, device):
            values, vectors = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
        del engine
    for param in params:
        param.grad = None  # PyHessian leaves create_graph gradients behind
    seconds = time.perf_counter() - began
    flat_vectors = torch.stack(
        [torch.cat([piece.detach().reshape(-1) for piece in vector]) for vector in vectors]
    )
    residuals: list[float] = []
    if verify:
        operator = HessianOperator(
            model,
            batches,
            block if isinstance(block, ParameterBlock) else params,
            backend="double_backward",
            reuse=False,
            loss_fn=loss_fn,
            distributed_mode=False,
        )
        for value, vector in zip(values, flat_vectors):
            unit = vector / norm(vector)
            residuals.append(norm(operator.matvec(unit) - value * unit))
    scale = max(abs(v) for v in values)
    converged = bool(residuals) and all(
        r <= converged_threshold(v, scale, tol, params[0].dtype) for v, r in zip(values, residuals)
    )
    return EigenResult(
        solver="pyhessian",
        largest=tuple(float(v) for v in values),
        largest_residuals=tuple(residuals),
        smallest=(),
        smallest_residuals=(),
        converged=converged,
        stop_reason="pyhessian",
        iterations=counter["hvps"],
        hvps=counter["hvps"],
        seconds=seconds,
        tol=tol,
        max_iter=max_iter,
        size=int(flat_vectors.shape[1]),
        largest_vectors=flat_vectors,
    )


class _PackedBatch:
    """A TokenBatch that PyHessian can move (``.to``, ``.cuda``) and count (``.size(0)``)."""

    def __init__(self, batch: TokenBatch) -> None:
        self.batch = batch

    def size(self, dim: int = 0) -> int:
        return int(self.batch.input_ids.shape[dim])

    def to(self, device: torch.device | str) -> _PackedBatch:
        return _PackedBatch(self.batch.to(device))

    def cuda(self) -> _PackedBatch:
        return self.to("cuda")


class _PassThrough(nn.Module):
    """``model(x)`` for PyHessian: hands the batch to the criterion, which runs the real loss on the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, packed: _PackedBatch) -> TokenBatch:
        return packed.batch


@contextlib.contextmanager
def _patched(module: object, name: str, value: object) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def _forked_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _pyhessian_normalise(vector: torch.Tensor) -> torch.Tensor:
    # PyHessian's own float32 arithmetic (its normalization()), on purpose: this mode reproduces its iterates
    # step for step; only the residual certificates above are computed exactly.
    return vector / (float(vector.norm()) + _PYHESSIAN_NORM_EPS)


def _pyhessian_orthonormal(vector: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    for other in others:
        vector = vector - float(vector @ other) * other
    return _pyhessian_normalise(vector)
