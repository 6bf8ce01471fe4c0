"""Session-wide tiny problems with their dense float64 Hessians (built once: a few seconds each), as fixtures the
conftest of each test folder that needs them imports (tests/hessian, tests/settings)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from tinylora import dense_hessian, module_block, synthetic_batches, tiny_lora, whole_block

from hessian_lora.hessian import ParameterBlock
from hessian_lora.inputs.tasks import TokenBatch


@dataclass
class DenseProblem:
    model: torch.nn.Module
    batches: list[TokenBatch]
    block: ParameterBlock
    dense: torch.Tensor
    eigenvalues: torch.Tensor  # ascending, float64


def _problem(model: torch.nn.Module, block: ParameterBlock) -> DenseProblem:
    batches = synthetic_batches()
    dense = dense_hessian(model, batches, block)
    return DenseProblem(model, batches, block, dense, torch.linalg.eigvalsh(dense))


@pytest.fixture(scope="session")
def generic_problem() -> DenseProblem:
    """The whole adapter (q_proj, v_proj; r = 1; 224 parameters) at a generic point (B ≠ 0), float64."""
    model = tiny_lora(dtype=torch.float64)
    return _problem(model, whole_block(model))


@pytest.fixture(scope="session")
def init_problem() -> DenseProblem:
    """Layer 0's q_proj block at LoRA initialisation (B = 0; r = 1; 64 parameters), float64."""
    model = tiny_lora(dtype=torch.float64, at_init=True, rank=1, targets=("q_proj",))
    return _problem(model, module_block(model, "q_proj", 0))


@pytest.fixture(scope="session")
def init_rank4_problem() -> DenseProblem:
    """Layer 0's q_proj block at LoRA initialisation with r = 4 (256 parameters): clusters of 4 nearly equal
    eigenvalues at both ends, float64."""
    model = tiny_lora(dtype=torch.float64, at_init=True, rank=4, targets=("q_proj",))
    return _problem(model, module_block(model, "q_proj", 0))
