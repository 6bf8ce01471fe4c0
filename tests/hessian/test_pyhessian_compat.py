from __future__ import annotations

import pytest
import torch
from tinylora import module_block, synthetic_batches, tiny_lora, whole_block

from hessian_lora.hessian import HessianOperator, lanczos, pyhessian_power_iteration, run_pyhessian


@pytest.mark.parametrize("batches", [1, 2], ids=["one-batch", "dataloader"])
def test_our_compatible_mode_agrees_with_the_pyhessian_package(generic_problem, batches: int) -> None:
    model = tiny_lora(dtype=torch.float32)
    data = synthetic_batches()[:batches]
    block = whole_block(model)
    theirs = run_pyhessian(model, data, block, max_iter=200, tol=1e-6, seed=11)
    ours = pyhessian_power_iteration(HessianOperator(model, data, block), max_iter=200, tol=1e-6, seed=11)
    assert ours.stop_reason == "relative_change"
    assert ours.lambda_max == pytest.approx(theirs.lambda_max, rel=1e-5)
    assert ours.hvps == theirs.hvps  # same start vector, same iterates, same stopping step
    if batches == 2:
        # PyHessian converged here: both agree with the dense spectrum's largest |λ| (token-weighted, thanks to
        # the wrapper's per-batch rescaling; PyHessian alone weights batches by sample count) ...
        exact = generic_problem.eigenvalues
        dominant = float(exact[exact.abs().argmax()])
        assert theirs.lambda_max == pytest.approx(dominant, rel=1e-4)
        assert theirs.largest_residuals[0] <= 1e-3 * abs(dominant)
        # ... which is λ_min here, far from the largest algebraic eigenvalue that Lanczos finds.
        assert dominant < 0 < lanczos(HessianOperator(model, data, block), tol=1e-6).lambda_max


def test_pyhessian_stops_on_a_wrong_value_at_initialisation_and_we_say_so(init_problem) -> None:
    model = tiny_lora(dtype=torch.float32, at_init=True, rank=1, targets=("q_proj",))
    data = synthetic_batches()
    block = module_block(model, "q_proj", 0)
    lambda_max = float(init_problem.eigenvalues[-1])
    theirs = run_pyhessian(model, data, block, max_iter=100, tol=1e-3, seed=0)
    ours = pyhessian_power_iteration(HessianOperator(model, data, block), max_iter=100, tol=1e-3, seed=0)
    assert ours.lambda_max == pytest.approx(theirs.lambda_max, rel=1e-4)
    assert abs(theirs.lambda_max - lambda_max) > 0.05 * lambda_max  # stopped by its rule, on a wrong value
    assert ours.stop_reason == "relative_change"
    assert not ours.converged and not theirs.converged  # the residual tells the truth
    assert theirs.largest_residuals[0] > 1e-3 * abs(theirs.lambda_max)


def test_run_pyhessian_leaves_the_model_as_it_found_it() -> None:
    model = tiny_lora(dtype=torch.float32, seed=5)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    block = module_block(model, "v_proj", 1)
    run_pyhessian(model, synthetic_batches(seed=5), block, max_iter=3, seed=1, verify=False)
    assert model.training
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in block.parameters)
