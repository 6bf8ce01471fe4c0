"""adapter_at_initialisation inside reuse_adapters_at_init: a second call hands a copy of the first build (the
same bits, no second SVD), independent of what the first caller does with its model; LoRA-GA is keyed by its batches."""

from __future__ import annotations

import pytest
import torch

import hessian_lora.training.adapters as adapters
from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import Example
from hessian_lora.training.adapters import AdapterConfig, adapter_at_initialisation, reuse_adapters_at_init
from hessian_lora.training.train import TrainConfig


@pytest.fixture
def builds(monkeypatch):
    monkeypatch.setattr(adapters, "REUSE_MIN_BUILD_SECONDS", 0.0)  # the tiny model builds in milliseconds
    calls = []
    original = adapters.build_adapter
    monkeypatch.setattr(
        adapters,
        "build_adapter",
        lambda model, config, **kwargs: calls.append(config.method) or original(model, config, **kwargs),
    )
    return calls


def _state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_second_build_is_a_bit_identical_independent_copy(builds):
    config = AdapterConfig(method="pissa", rank=4, targets=("q_proj", "v_proj"))
    fresh = _state(adapter_at_initialisation("tiny-llama", config).model)
    with reuse_adapters_at_init():
        first = adapter_at_initialisation("tiny-llama", config).model
        with torch.no_grad():  # what training does to the first run's model must not reach the second
            for parameter in first.parameters():
                parameter.add_(1.0)
        second = adapter_at_initialisation("tiny-llama", config).model
        other = adapter_at_initialisation(
            "tiny-llama", AdapterConfig(method="pissa", rank=4, seed=1, targets=("q_proj", "v_proj"))
        )
    assert builds == ["pissa", "pissa", "pissa"]  # fresh, first, other: the second was a copy
    assert second is not first and other.model is not second
    state = second.state_dict()
    assert state.keys() == fresh.keys() and all(torch.equal(state[name], fresh[name]) for name in fresh)
    assert [n for n, p in second.named_parameters() if p.requires_grad] == [
        n for n, p in first.named_parameters() if p.requires_grad
    ]
    adapter_at_initialisation("tiny-llama", config)  # outside the block: built again
    assert builds[-1] == "pissa" and len(builds) == 4


def test_loraga_reuses_only_for_the_same_batches(builds):
    config = AdapterConfig(method="loraga", rank=4, targets=("q_proj",))
    examples = [Example(f"{i} + {i} =", str(2 * i)) for i in range(16)]
    with reuse_adapters_at_init():
        for seed in (0, 0, 1):  # the run's seed picks its first batch
            adapter_at_initialisation(
                "tiny-llama",
                config,
                train_examples=examples,
                train_config=TrainConfig(lr=1.0, steps=1, batch_size=4, seed=seed),
            )
    assert builds == ["loraga", "loraga"]


def test_the_budget_comes_from_the_environment_or_the_machine(builds, monkeypatch):
    monkeypatch.setenv(adapters.REUSE_BUDGET_VARIABLE, "0")  # keep none: every call builds
    assert adapters.reuse_budget_bytes() == 0
    with reuse_adapters_at_init():
        for _ in range(2):
            adapter_at_initialisation("tiny-llama", AdapterConfig(method="pissa", rank=4))
    assert builds == ["pissa", "pissa"]
    monkeypatch.setenv(adapters.REUSE_BUDGET_VARIABLE, "1.5")
    assert adapters.reuse_budget_bytes() == 3 << 29
    for bad in ("-1", "lots", "inf", "nan"):
        monkeypatch.setenv(adapters.REUSE_BUDGET_VARIABLE, bad)
        with pytest.raises(UserError, match=f"HESSIAN_LORA_REUSE_GIB={bad}: give the memory"):
            adapters.reuse_budget_bytes()
    monkeypatch.delenv(adapters.REUSE_BUDGET_VARIABLE)
    monkeypatch.setattr(
        adapters.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2 << 20}[name]
    )
    assert adapters.reuse_budget_bytes() == 2 << 30  # an 8 GiB machine keeps a quarter
    monkeypatch.setattr(
        adapters.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 64 << 20}[name]
    )
    assert adapters.reuse_budget_bytes() == adapters.REUSE_BUDGET_BYTES


def test_a_full_budget_keeps_what_it_has_and_evicts_nothing(builds):
    one = adapters._bytes(
        adapter_at_initialisation("tiny-llama", AdapterConfig(method="pissa", rank=4)).model
    )
    builds.clear()
    with reuse_adapters_at_init(budget_bytes=one + one // 2):  # room for one copy
        for seed in (0, 1, 0, 1, 0):  # a sweep's order: the same methods again and again
            adapter_at_initialisation("tiny-llama", AdapterConfig(method="pissa", rank=4, seed=seed))
    assert builds == ["pissa"] * 3  # seed 0 kept (built once), seed 1 built every time
