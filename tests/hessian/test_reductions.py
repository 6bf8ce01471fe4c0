"""Exact reductions: float64 accumulation at the size where torch's float32 CPU reductions fail."""

from __future__ import annotations

import pytest
import torch

from hessian_lora.hessian.reductions import dot, inner, norm, orthonormal_rows

LARGE = 20_000_000  # the README main job's whole-adapter blocks are 19.5 M parameters


@pytest.fixture(scope="module")
def large() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(LARGE, generator=generator) * 0.5, torch.randn(LARGE, generator=generator)


def test_torch_float32_norm_is_off_at_this_size_and_ours_is_not(large) -> None:
    x, _ = large
    exact = float(x.double().square().sum().sqrt())
    # Why this module exists (PyTorch #169237): one float32 accumulator. Measured 1.0e-3 here at 20 M.
    assert abs(float(x.norm()) - exact) / exact > 1e-4
    assert abs(norm(x) - exact) / exact < 1e-12
    self_dot = float(x.double() @ x.double())
    # float32 x @ x: 7.4e-4 measured on one machine, 9.1e-5 on another (2026-12-04): how far off depends on the
    # BLAS's blocking, so the test asks only for float32-sized error, a million times ours.
    assert abs(float(x @ x) - self_dot) / self_dot > 1e-6
    assert abs(dot(x, x) - self_dot) / self_dot < 1e-12


def test_dot_and_inner_match_float64_at_this_size(large) -> None:
    x, y = large
    exact = float(x.double() @ y.double())
    scale = float(x.double().norm()) * float(y.double().norm())
    assert abs(dot(x, y) - exact) <= 1e-12 * scale
    rows = torch.stack([x, y, x - y])
    coefficients = inner(rows, y)
    reference = torch.stack([x.double() @ y.double(), y.double() @ y.double(), (x - y).double() @ y.double()])
    assert coefficients.dtype == torch.float64 and coefficients.shape == (3,)
    row_scales = torch.stack([r.double().norm() for r in rows]) * float(y.double().norm())
    assert bool(((coefficients - reference).abs() <= 1e-12 * row_scales).all())  # both float64 sums
    block = inner(rows, torch.stack([x, y]))
    assert block.shape == (3, 2)
    assert float(block[1, 0]) == pytest.approx(exact, rel=1e-12)


def test_inner_of_small_shapes_and_errors() -> None:
    rows = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    vector = torch.ones(4)
    assert inner(rows, vector).tolist() == [6.0, 22.0, 38.0]
    assert inner(rows[:0], vector).shape == (0,)
    with pytest.raises(ValueError, match="rows"):
        inner(rows, torch.ones(5))
    with pytest.raises(ValueError, match="flat"):
        dot(rows, rows)


def test_orthonormal_rows_drops_dependent_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 50, generator=generator, dtype=torch.float64)
    rows = orthonormal_rows(torch.stack([a, b, a + 2 * b]), drop_below=1e-12)
    assert rows.shape == (2, 50)
    assert torch.allclose(rows @ rows.T, torch.eye(2, dtype=torch.float64), atol=1e-14)
