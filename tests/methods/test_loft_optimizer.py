"""LoFT: two steps against a hand computation, the full-rank AdamW limit, and it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hessian_lora.methods.loft import PRECONDITIONER_NOTE
from hessian_lora.methods.loft_optimizer import (
    LoFT,
    loft_optimizer,
    lora_pairs,
    preconditioner_note,
)

BETA1, BETA2, EPS, LR, WD = 0.9, 0.99, 1e-8, 0.05, 0.1


def _problem(n_in: int, n_out: int, r: int, seed: int, full_rank: bool = False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, n_in))
    y = rng.normal(size=(7, n_out))
    w0 = rng.normal(size=(n_out, n_in))
    if full_rank:
        a = np.eye(r, n_in) + 0.2 * rng.normal(size=(r, n_in))
        b = np.eye(n_out, r) + 0.2 * rng.normal(size=(n_out, r))
    else:
        a = rng.normal(size=(r, n_in)) / np.sqrt(n_in)
        b = 0.3 * rng.normal(size=(n_out, r))
    return x, y, w0, a, b


def _full_gradient(x, y, w):
    """G = ∂/∂W of 0.5‖X Wᵀ - Y‖²."""
    return (x @ w.T - y).T @ x


def _torch_loss(x, y, w0, a, b, s):
    w = torch.as_tensor(w0) + s * b @ a
    return 0.5 * ((torch.as_tensor(x) @ w.T - torch.as_tensor(y)) ** 2).sum()


def test_two_steps_match_a_hand_computation() -> None:
    n_in, n_out, r, s, delta = 5, 4, 2, 2.0, 1e-3
    x, y, w0, a0, b0 = _problem(n_in, n_out, r, seed=1)
    a = nn.Parameter(torch.tensor(a0))
    b = nn.Parameter(torch.tensor(b0))
    opt = LoFT([(a, b, s)], lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD, delta=delta)

    def torch_step():
        opt.zero_grad()
        _torch_loss(x, y, w0, a, b, s).backward()
        opt.step()

    inv = np.linalg.inv
    eye = np.eye(r)

    # ---- step 1 by hand: only B moves
    g = _full_gradient(x, y, w0 + s * b0 @ a0)
    g_b, g_a = s * g @ a0.T, s * b0.T @ g
    c = g_b @ inv(a0 @ a0.T + delta * eye) / s
    d = inv(b0.T @ b0 + delta * eye) @ g_a / s
    m_b = (1 - BETA1) * c
    s_b = np.stack([(1 - BETA2) * np.outer(c[i], c[i]) for i in range(n_out)])
    m_a = (1 - BETA1) * d
    t_a = np.stack([(1 - BETA2) * np.outer(d[:, j], d[:, j]) for j in range(n_in)])
    moment = m_b @ a0 / (1 - BETA1)
    second = np.array([[a0[:, j] @ s_b[i] @ a0[:, j] for j in range(n_in)] for i in range(n_out)]) / (
        1 - BETA2
    )
    update = moment / (np.sqrt(second) + EPS)
    b1 = b0 * (1 - LR * WD) - LR * update @ a0.T @ inv(a0 @ a0.T + delta * eye) / s
    reproject = inv(b1.T @ b1 + delta * eye) @ b1.T @ b0
    m_a = reproject @ m_a
    t_a = np.stack([reproject @ t_a[j] @ reproject.T for j in range(n_in)])

    torch_step()
    b_after_step_1 = b.detach().clone()
    np.testing.assert_allclose(a.detach().numpy(), a0, rtol=0, atol=0)
    np.testing.assert_allclose(b.detach().numpy(), b1, rtol=1e-10, atol=1e-12)
    assert not np.allclose(b1, b0)

    # ---- step 2 by hand: only A moves; A's moments were re-projected into B1's basis
    g = _full_gradient(x, y, w0 + s * b1 @ a0)
    g_b, g_a = s * g @ a0.T, s * b1.T @ g
    c = g_b @ inv(a0 @ a0.T + delta * eye) / s
    d = inv(b1.T @ b1 + delta * eye) @ g_a / s
    m_b = BETA1 * m_b + (1 - BETA1) * c
    s_b = np.stack([BETA2 * s_b[i] + (1 - BETA2) * np.outer(c[i], c[i]) for i in range(n_out)])
    m_a = BETA1 * m_a + (1 - BETA1) * d
    t_a = np.stack([BETA2 * t_a[j] + (1 - BETA2) * np.outer(d[:, j], d[:, j]) for j in range(n_in)])
    moment = b1 @ m_a / (1 - BETA1**2)
    second = np.array([[b1[i] @ t_a[j] @ b1[i] for j in range(n_in)] for i in range(n_out)]) / (1 - BETA2**2)
    update = moment / (np.sqrt(second) + EPS)
    a2 = a0 * (1 - LR * WD) - LR * inv(b1.T @ b1 + delta * eye) @ b1.T @ update / s
    reproject = a0 @ a2.T @ inv(a2 @ a2.T + delta * eye)
    m_b = m_b @ reproject

    torch_step()
    torch.testing.assert_close(b.detach(), b_after_step_1, rtol=0, atol=0)
    np.testing.assert_allclose(a.detach().numpy(), a2, rtol=1e-10, atol=1e-12)
    state = opt.state[a]
    np.testing.assert_allclose(state["m_b"].numpy(), m_b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state["m_a"].numpy(), m_a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_full_rank_limit_is_adamw_on_the_full_weight(max_grad_norm: float | None) -> None:
    """Conditions: r = in = out, invertible well-conditioned factors, δ = 0, float64; AdamW's decoupled decay acts
    on the trainable delta D = s·B·A (the base W0 is frozen in both), same global-norm clipping."""
    n, s = 4, 0.5
    x, y, w0, a0, b0 = _problem(n, n, n, seed=2, full_rank=True)
    a = nn.Parameter(torch.tensor(a0))
    b = nn.Parameter(torch.tensor(b0))
    loft = LoFT(
        [(a, b, s)],
        lr=LR,
        betas=(BETA1, BETA2),
        eps=EPS,
        weight_decay=WD,
        delta=0.0,
        max_grad_norm=max_grad_norm,
    )
    delta_w = nn.Parameter(torch.tensor(s * b0 @ a0))
    adamw = torch.optim.AdamW([delta_w], lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD)
    clipped = 0
    for step in range(8):
        loft.zero_grad()
        _torch_loss(x, y, w0, a, b, s).backward()
        loft.step()
        adamw.zero_grad()
        loss = (
            0.5 * ((torch.as_tensor(x) @ (torch.as_tensor(w0) + delta_w).T - torch.as_tensor(y)) ** 2).sum()
        )
        loss.backward()
        if max_grad_norm is not None:
            clipped += float(torch.nn.utils.clip_grad_norm_([delta_w], max_grad_norm)) > max_grad_norm
        adamw.step()
        torch.testing.assert_close(
            s * b.detach() @ a.detach(),
            delta_w.detach(),
            rtol=1e-9,
            atol=1e-10,
            msg=lambda m, step=step: f"step {step + 1}: {m}",
        )
    if max_grad_norm is not None:
        assert clipped >= 4  # the clipping was exercised


def test_low_rank_is_not_adamw() -> None:
    """Sanity check of the test above: with r < in the step is a projection, not AdamW's full step."""
    n_in, n_out, r, s = 5, 4, 2, 1.0
    x, y, w0, a0, b0 = _problem(n_in, n_out, r, seed=3)
    a, b = nn.Parameter(torch.tensor(a0)), nn.Parameter(torch.tensor(b0))
    loft = LoFT([(a, b, s)], lr=LR, betas=(BETA1, BETA2), eps=EPS)
    _torch_loss(x, y, w0, a, b, s).backward()
    loft.step()
    change = (s * b.detach() @ a.detach()).numpy() - s * b0 @ a0
    projector = a0.T @ np.linalg.inv(a0 @ a0.T) @ a0
    np.testing.assert_allclose(change @ projector, change, atol=1e-10)  # the change lies in A's row space
    assert np.linalg.norm(change) <= LR * np.sqrt(n_in * n_out)  # |U| <= 1 at step 1 and projecting contracts


def _peft_mlp():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    return get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"], lora_dropout=0.0))


def test_trains_a_tiny_peft_model() -> None:
    model = _peft_mlp()
    pairs = lora_pairs(model)
    assert len(pairs) == 2
    assert [tuple(a.shape) for a, _, _ in pairs] == [(2, 8), (2, 16)]
    assert [tuple(b.shape) for _, b, _ in pairs] == [(16, 2), (4, 2)]
    assert pairs[0][2] == pytest.approx(2.0)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(64, 8, generator=generator)
    teacher = torch.randn(8, 4, generator=generator)
    targets = torch.tanh(inputs @ teacher)
    optimizer = loft_optimizer(model, lr=1e-2, weight_decay=0.0, max_grad_norm=1.0)
    losses = []
    for _ in range(120):
        optimizer.zero_grad()
        loss = ((model(inputs) - targets) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_rejects_bad_pairs_and_dora() -> None:
    with pytest.raises(ValueError, match="r×in"):
        LoFT([(nn.Parameter(torch.zeros(2, 5)), nn.Parameter(torch.zeros(4, 3)), 1.0)])
    from peft import LoraConfig, get_peft_model

    base = nn.Sequential(nn.Linear(8, 16))
    dora = get_peft_model(base, LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        loft_optimizer(dora, lr=1e-3)


def test_preconditioner_note() -> None:
    assert preconditioner_note("LoFT") == PRECONDITIONER_NOTE
    assert "does not apply" in PRECONDITIONER_NOTE or "do not apply" in PRECONDITIONER_NOTE
    assert preconditioner_note("lora") is None


def test_loft_defaults_to_the_recipes_betas() -> None:
    from hessian_lora.methods.loft_optimizer import DEFAULT_BETAS
    from hessian_lora.settings.training import DEFAULT_BETAS as RECIPE_BETAS

    assert DEFAULT_BETAS == RECIPE_BETAS
