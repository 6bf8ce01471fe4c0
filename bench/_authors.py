"""The paper authors' Hessian algorithm, re-implemented from their description (REFERENCE.md, "The authors'
Hessian code"; their code read for its settings only, not copied): products by ``torch.autograd.functional.vhp``
of the token-weighted mean loss of one block, Lanczos with full re-orthogonalisation, eigenvalues of T, and their
stop rule (the top Ritz value moves by less than an absolute tolerance after at least 5 steps; no residual check).
Shared by bench/hessian.py and bench/peers.py.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from hessian_lora.hessian import LinearOperator
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.tasks import TokenBatch

PAPER_TOL = 5e-3  # their stop: |Δλ_max| < 5e-3, absolute
PAPER_MIN_ITER = 5
PAPER_MAX_ITER = 300


class VhpOperator(LinearOperator):
    """The paper authors' HVP: ``torch.autograd.functional.vhp`` of the token-weighted mean loss of θ."""

    def __init__(self, model: Any, batches: list[TokenBatch], block: Any) -> None:
        from torch.func import functional_call

        self.model, self.batches, self.block = model, batches, block
        self.tokens = sum(b.loss_tokens for b in batches)
        self.shapes = [p.shape for p in block.parameters]
        self.numels = [p.numel() for p in block.parameters]
        self.theta = torch.cat([p.detach().reshape(-1) for p in block.parameters])
        self._call = functional_call

    @property
    def size(self) -> int:
        return int(self.theta.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def _loss(self, flat: torch.Tensor) -> torch.Tensor:
        values = {
            n: piece.view(s) for n, piece, s in zip(self.block.names, flat.split(self.numels), self.shapes)
        }
        total = sum(loss_sum(lambda **kw: self._call(self.model, values, (), kw), b) for b in self.batches)
        return total / self.tokens

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for param, _ in saved:
            param.requires_grad_(False)
        try:
            return torch.autograd.functional.vhp(self._loss, self.theta, vector)[1]
        finally:
            for param, flag in saved:
                param.requires_grad_(flag)


def paper_lanczos(
    operator: LinearOperator,
    *,
    tol: float = PAPER_TOL,
    max_iter: int = PAPER_MAX_ITER,
    min_iter: int = PAPER_MIN_ITER,
) -> dict[str, Any]:
    """Full re-orthogonalisation, no residual check: stop when the top Ritz value moves by < tol (absolute)."""
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(operator.size, generator=generator, dtype=operator.dtype)
    vector /= vector.norm()
    basis, alphas, betas, history = [vector], [], [], []
    previous = None
    for step in range(max_iter):
        product = operator.matvec(basis[-1])
        alpha = float(basis[-1] @ product)
        alphas.append(alpha)
        product = product - alpha * basis[-1] - (betas[-1] * basis[-2] if betas else 0.0)
        stacked = torch.stack(basis)
        product = product - stacked.T @ (stacked @ product)
        matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            matrix += torch.diag(off, 1) + torch.diag(off, -1)
        top = float(torch.linalg.eigvalsh(matrix)[-1])
        history.append((step + 1, top))
        if previous is not None and step + 1 >= min_iter and abs(top - previous) < tol:
            break
        previous = top
        beta = float(product.norm())
        betas.append(beta)
        basis.append(product / beta)
    return {
        "value": history[-1][1],
        "hvps": len(history),
        "seconds": time.perf_counter() - began,
        "history": history,
    }
