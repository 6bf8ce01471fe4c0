"""LoFT (Tastan et al., ICLR 2026, arXiv 2505.21289): an optimizer for standard LoRA pairs whose steps mimic
what AdamW would do to the full weight, restricted to the adapter's subspace.

Notation: the adapted weight is ``W = W0 + s·B·A`` with ``A`` (r×in), ``B`` (out×r), ``s`` the LoRA scaling,
``G = ∂L/∂W`` the full-weight gradient, so ``G_B = s·G·Aᵀ`` and ``G_A = s·Bᵀ·G``.

One :meth:`LoFT.step`, per pair (written from the algorithm description in the project's reference notes and the paper's
abstract, not from anyone's code):

1. Alternation: steps 1, 3, 5, ... update only ``B``; steps 2, 4, ... only ``A`` (B first: it starts at 0).
2. Gram-inverse rescaling to *coefficients* of the projected full-weight gradient:
   ``c = G_B (AAᵀ + δI)⁻¹ / s`` (out×r, so ``c·A = G·P_A`` with ``P_A`` the projector on A's row space) and
   ``d = (BᵀB + δI)⁻¹ G_A / s`` (r×in, ``B·d = P_B·G``). Dividing by ``s`` makes the step independent of
   LoRA's alpha, as the paper intends.
3. Gradient clipping on the full-weight view (``max_grad_norm``): the global norm over all pairs of the
   projected full-weight gradient of the factor being updated, ``‖c·A‖_F`` (B step) or ``‖B·d‖_F`` (A step),
   computed cheaply as ``tr(c (AAᵀ) cᵀ)``; if it exceeds ``max_grad_norm`` every coefficient is scaled by
   ``max_grad_norm / norm`` (as ``clip_grad_norm_`` would scale the full weight's gradient). Do not also clip
   the factors' gradients in the training loop.
4. Moments. Both factors' gradients exist after every backward, so both sides' moments are updated on
   every step (this is what makes the full-rank limit exactly AdamW; only one factor moves per step):
   first moments ``m_B`` (out×r, in A's basis: full ``M = m_B·A``) and ``m_A`` (r×in, ``M = B·m_A``);
   second moments as per-row r×r outer products, ``S_i = EMA(c_iᵀ c_i)`` for each output row i of B's side
   and ``T_j = EMA(d_j d_jᵀ)`` for each input column j of A's side. The full-weight second moment is
   reconstructed as ``V_ij = a_jᵀ S_i a_j`` (``a_j`` = column j of A) on a B step and ``V_ij = b_iᵀ T_j b_i``
   (``b_i`` = row i of B) on an A step: exactly the EMA of ``(G·P)²`` element-wise while the basis is fixed.
5. Update: ``U = M̂ / (√V̂ + ε)`` with Adam's bias corrections ``1 - β^t`` (t = this pair's step count), then
   projected back onto the factor being updated with the same Gram inverse:
   ``B ← (1 - lr·wd)·B - lr·U Aᵀ (AAᵀ + δI)⁻¹ / s`` (so ``s·ΔB·A = -lr·U·P_A``), mirrored for A. Weight decay
   is decoupled like AdamW's and shrinks the adapter's full-weight delta ``s·B·A`` by ``(1 - lr·wd)`` (the
   frozen base W0 is never decayed).
6. Re-projection: right after a factor moves, the other side's moments are re-expressed in the new basis so
   the full-weight moments they represent are kept (projected onto the new subspace): after a B step,
   ``R = (BᵀB + δI)⁻¹ Bᵀ B_old``, ``m_A ← R m_A``, ``T_j ← R T_j Rᵀ``; after an A step,
   ``R = A_old Aᵀ (AAᵀ + δI)⁻¹``, ``m_B ← m_B R``, ``S_i ← Rᵀ S_i R``.

Full-rank limit (tested): with ``r = in = out``, invertible factors and ``δ = 0`` the full-weight change of
every step equals AdamW's on ``W`` (decoupled decay acting on the trainable delta, same ``max_grad_norm``
clipping), up to round-off.

Memory per module: first moments ``out·r + r·in`` and second moments ``out·r² + in·r²`` floats, i.e.
O(out·r²) for B's side plus O(in·r²) for A's side, kept in float32 (or the parameters' dtype if wider).
Compute per step: reconstructing V costs O(out·in·r²) flops (one matmul of out×r² by r²×in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hessian_lora.methods.registry import METHODS

# AdamW's betas, the paper's recipe (settings.training.DEFAULT_BETAS, a layer above; a test keeps the two equal).
DEFAULT_BETAS: tuple[float, float] = (0.9, 0.999)


def preconditioner_note(method: str) -> str | None:
    """The caveat to print next to Adam-preconditioned sharpness for ``method`` (its spec's
    ``preconditioner_note``: LoFT's; None when the Adam preconditioner applies or the method is unknown)."""
    spec = METHODS.get(method.lower())
    return spec.preconditioner_note if spec is not None else None


LoraPair = tuple[nn.Parameter, nn.Parameter, float]


class LoFT(torch.optim.Optimizer):
    """LoFT-AdamW over LoRA pairs ``(A, B, scaling)`` with ``A`` r×in and ``B`` out×r (see the module docstring).

    Each pair is its own parameter group (``params = [A, B]``, ``scaling``), so LR schedulers work as usual.
    ``clips_gradients``: LoFT clips the full-weight view itself (``max_grad_norm``); a training loop that sees it
    must not clip the factor gradients as well.
    """

    clips_gradients = True

    def __init__(
        self,
        pairs: Iterable[LoraPair],
        lr: float = 1e-3,
        betas: tuple[float, float] = DEFAULT_BETAS,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 1e-8,
        max_grad_norm: float | None = None,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or delta < 0:
            raise ValueError("lr, eps, weight_decay and delta must be non-negative")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be positive or None")
        groups = []
        for a, b, scaling in pairs:
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(
                    f"a LoRA pair needs A r×in and B out×r, got {tuple(a.shape)} and {tuple(b.shape)}"
                )
            groups.append({"params": [a, b], "scaling": float(scaling)})
        if not groups:
            raise ValueError("LoFT needs at least one LoRA pair")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "delta": delta}
        super().__init__(groups, defaults)
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # Optimizer.step is overloaded on closure
        """One LoFT update of every factor pair (``closure``: re-evaluates the loss, as torch optimizers take
        it)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        squared_norm = 0.0
        for group in self.param_groups:
            a, b = group["params"]
            if a.grad is None or b.grad is None:
                continue
            state = self.state[a]
            dtype = torch.promote_types(a.dtype, torch.float32)
            if not state:
                r, n_in = a.shape
                n_out = b.shape[0]
                state.update(
                    step=0,
                    m_a=a.new_zeros((r, n_in), dtype=dtype),
                    t_a=a.new_zeros((n_in, r, r), dtype=dtype),
                    m_b=b.new_zeros((n_out, r), dtype=dtype),
                    s_b=b.new_zeros((n_out, r, r), dtype=dtype),
                )
            a_w, b_w = (
                a.to(dtype, copy=True),
                b.to(dtype, copy=True),
            )  # copies: the old factor is needed later
            eye = torch.eye(a.shape[0], dtype=dtype, device=a.device)
            gram_a = a_w @ a_w.T + group["delta"] * eye
            gram_b = b_w.T @ b_w + group["delta"] * eye
            s = group["scaling"]
            c = torch.linalg.solve(gram_a, b.grad.to(dtype).T).T / s  # G_B (AAᵀ + δI)⁻¹ / s
            d = torch.linalg.solve(gram_b, a.grad.to(dtype)) / s  # (BᵀB + δI)⁻¹ G_A / s
            update_b = state["step"] % 2 == 0
            if update_b:
                squared_norm += float(((c @ (a_w @ a_w.T)) * c).sum())  # ‖c·A‖²
            else:
                squared_norm += float(((b_w.T @ b_w @ d) * d).sum())  # ‖B·d‖²
            work.append((group, state, a, b, a_w, b_w, gram_a, gram_b, c, d, update_b))
        clip = 1.0
        if self.max_grad_norm is not None:
            norm = squared_norm**0.5
            clip = min(1.0, self.max_grad_norm / (norm + 1e-6))
        for group, state, a, b, a_w, b_w, gram_a, gram_b, c, d, update_b in work:
            self._update_pair(group, state, a, b, a_w, b_w, gram_a, gram_b, c * clip, d * clip, update_b)
        return loss

    def _update_pair(
        self,
        group: dict[str, Any],
        state: dict[str, Any],
        a: torch.Tensor,
        b: torch.Tensor,
        a_w: torch.Tensor,
        b_w: torch.Tensor,
        gram_a: torch.Tensor,
        gram_b: torch.Tensor,
        c: torch.Tensor,
        d: torch.Tensor,
        update_b: bool,
    ) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, s = group["lr"], group["eps"], group["scaling"]
        state["step"] += 1
        t = state["step"]
        m_a, t_a, m_b, s_b = state["m_a"], state["t_a"], state["m_b"], state["s_b"]
        m_b.mul_(beta1).add_(c, alpha=1 - beta1)
        s_b.mul_(beta2).add_(c[:, :, None] * c[:, None, :], alpha=1 - beta2)
        m_a.mul_(beta1).add_(d, alpha=1 - beta1)
        t_a.mul_(beta2).add_(d.T[:, :, None] * d.T[:, None, :], alpha=1 - beta2)
        r = a.shape[0]
        decay = 1 - lr * group["weight_decay"]
        if update_b:
            moment = (m_b @ a_w) / (1 - beta1**t)
            columns = (a_w[:, None, :] * a_w[None, :, :]).reshape(r * r, -1)  # vec(a_j a_jᵀ) per column j
            second = (s_b.reshape(-1, r * r) @ columns) / (1 - beta2**t)
            full = moment / (second.clamp_min(0).sqrt() + eps)
            step_b = torch.linalg.solve(gram_a, a_w @ full.T).T / s  # U Aᵀ (AAᵀ + δI)⁻¹ / s
            new_b = b_w * decay - lr * step_b
            b.copy_(new_b.to(b.dtype))
            new_b = b.to(new_b.dtype)
            gram_new = new_b.T @ new_b + group["delta"] * torch.eye(r, dtype=new_b.dtype, device=new_b.device)
            proj = torch.linalg.solve(gram_new, new_b.T @ b_w)  # R = (BᵀB + δI)⁻¹ Bᵀ B_old
            m_a.copy_(proj @ m_a)
            t_a.copy_(proj @ t_a @ proj.T)
        else:
            moment = (b_w @ m_a) / (1 - beta1**t)
            rows = (b_w[:, :, None] * b_w[:, None, :]).reshape(-1, r * r)  # vec(b_i b_iᵀ) per row i
            second = (rows @ t_a.reshape(-1, r * r).T) / (1 - beta2**t)
            full = moment / (second.clamp_min(0).sqrt() + eps)
            step_a = torch.linalg.solve(gram_b, b_w.T @ full) / s  # (BᵀB + δI)⁻¹ Bᵀ U / s
            new_a = a_w * decay - lr * step_a
            a.copy_(new_a.to(a.dtype))
            new_a = a.to(new_a.dtype)
            gram_new = new_a @ new_a.T + group["delta"] * torch.eye(r, dtype=new_a.dtype, device=new_a.device)
            proj = torch.linalg.solve(gram_new, new_a @ a_w.T).T  # R = A_old Aᵀ (AAᵀ + δI)⁻¹
            m_b.copy_(m_b @ proj)
            s_b.copy_(proj.T @ s_b @ proj)


def lora_pairs(model: nn.Module, adapter_name: str = "default") -> list[LoraPair]:
    """``(lora_A.weight, lora_B.weight, scaling)`` of every peft ``LoraLayer`` in ``model`` for ``adapter_name``."""
    pairs = []
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        lora_b = getattr(module, "lora_B", None)
        if not isinstance(lora_a, nn.ModuleDict) or adapter_name not in lora_a:
            continue
        weight_a, weight_b = lora_a[adapter_name].weight, lora_b[adapter_name].weight
        if weight_a.requires_grad and weight_b.requires_grad:
            pairs.append((weight_a, weight_b, float(module.scaling[adapter_name])))
    return pairs


def loft_optimizer(
    peft_model: nn.Module,
    lr: float,
    betas: tuple[float, float] = DEFAULT_BETAS,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 1e-8,
    max_grad_norm: float | None = None,
    adapter_name: str = "default",
) -> LoFT:
    """LoFT over every standard LoRA pair of a peft model. Refuses DoRA (its magnitude is not a LoRA pair)."""
    if any("lora_magnitude_vector" in name for name, p in peft_model.named_parameters() if p.requires_grad):
        raise ValueError(
            "LoFT supports standard LoRA pairs only, not DoRA: build the model without use_dora."
        )
    pairs = lora_pairs(peft_model, adapter_name)
    if not pairs:
        raise ValueError(f"no trainable LoRA pairs for adapter {adapter_name!r}: apply a LoraConfig first.")
    return LoFT(
        pairs,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        delta=delta,
        max_grad_norm=max_grad_norm,
    )


def trainable_outside_pairs(model: nn.Module, pairs: Sequence[LoraPair]) -> list[str]:
    """Names of trainable parameters LoFT would not update (the caller must optimise or freeze them)."""
    covered = {id(p) for a, b, _ in pairs for p in (a, b)}
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
