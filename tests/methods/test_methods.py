"""The method plug-ins against THE table of cases (tests/method_cases.py): every registered method has its row,
its spec says what the row says, a saved peft config of it is read back as its row says, the registry loads
without torch, and a plug-in that breaks the registry's rule is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
from method_cases import CASES

from hessian_lora.core.errors import UserError
from hessian_lora.methods import registry
from hessian_lora.methods.registry import DEFAULT_METHOD, METHODS, method_of_peft_config
from hessian_lora.methods.spec import MethodSpec
from hessian_lora.settings.adapter import AdapterConfig
from hessian_lora.training.adapters import _peft_config

TINY_SHAPES = [
    (64, 64),
    (32, 64),
    (32, 64),
    (64, 64),
    (128, 64),
    (128, 64),
    (64, 128),
]  # one tiny-llama layer


def test_every_registered_method_has_its_case_and_no_case_is_unregistered() -> None:
    assert list(METHODS) == list(registry.PLUGINS)
    assert set(CASES) == set(METHODS)
    assert DEFAULT_METHOD in METHODS


@pytest.mark.parametrize("method", list(CASES))
def test_the_spec_says_what_the_case_says(method: str) -> None:
    spec, case = METHODS[method], CASES[method]
    assert spec.name == method
    assert spec.rewrites_base == case.rewrites
    assert spec.needs_data == case.needs_data
    assert spec.float64 == case.float64
    assert spec.peft_native == case.peft_native
    assert spec.peft_type == case.peft_type
    assert (spec.make_optimizer is not None) == case.own_optimizer
    assert spec.components_per_rank == case.components_per_rank
    assert spec.preserves_function
    assert spec.summary and "\n" not in spec.summary and spec.label
    # a method whose init peft does not rebuild has no residual recipe peft could re-run
    assert not spec.rebuildable or (spec.rewrites_base and spec.peft_init)


def _saved(config: object) -> dict:
    """What peft's save_pretrained writes to adapter_config.json for a config (sets as lists, enums as text)."""
    return json.loads(json.dumps(config.to_dict(), default=lambda value: sorted(value)))  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", list(CASES))
def test_a_saved_peft_config_is_read_back_as_the_case_says(method: str) -> None:
    config = AdapterConfig(method, rank=4, targets=("q_proj", "k_proj"))
    saved = _saved(_peft_config(config, shapes=TINY_SHAPES[:2]))
    assert saved["peft_type"] == CASES[method].peft_type
    assert method_of_peft_config(saved) == CASES[method].saved_as


def test_a_config_two_methods_claim_or_none_reads_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="names no method"):
        method_of_peft_config({"peft_type": "VERA"})
    claims_all = MethodSpec(
        "twin",
        "Twin",
        "#000000",
        "a method that claims every config",
        rewrites_base=False,
        peft_config=METHODS[DEFAULT_METHOD].peft_config,
        recognises=lambda config: True,
    )
    monkeypatch.setitem(METHODS, "twin", claims_all)
    with pytest.raises(UserError, match="several methods"):
        method_of_peft_config({"peft_type": CASES["dora"].peft_type, "use_dora": True})


@pytest.mark.parametrize("method", list(CASES))
def test_scaling_and_parameter_count_come_from_the_spec(method: str) -> None:
    config = AdapterConfig(method, rank=4, alpha=8)
    assert config.scaling == METHODS[method].scaling(8.0, 4)
    assert registry.trainable_parameter_count(method, 4, TINY_SHAPES) == METHODS[method].parameter_count(
        4, TINY_SHAPES
    )


def test_the_registry_and_every_plug_in_load_without_torch_or_peft() -> None:
    code = (
        "import sys, hessian_lora.methods.registry as r; import hessian_lora.analysis; "
        "assert len(r.METHODS) == len(r.PLUGINS); "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'peft', 'transformers')); "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_plug_in_must_define_spec_under_its_module_name(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("hessian_lora.methods.misnamed")
    module.SPEC = METHODS[DEFAULT_METHOD]  # type: ignore[attr-defined]  # named "lora", not "misnamed"
    monkeypatch.setitem(sys.modules, "hessian_lora.methods.misnamed", module)
    with pytest.raises(TypeError, match="must define SPEC, a MethodSpec named 'misnamed'"):
        registry._load("misnamed")
    assert registry._load(DEFAULT_METHOD) is METHODS[DEFAULT_METHOD]


@pytest.mark.parametrize("method", list(CASES))
def test_every_method_trains_a_step_and_its_saved_peft_directory_reads_back(method: str, tmp_path) -> None:
    """Built on tiny-llama, one optimizer step moves its trainable parameters; peft's own save_pretrained of the
    trained adapter is read back as the case's method, and (methods that keep the base) computes what it did."""
    import torch

    from hessian_lora.inputs.tasks import load_task, make_batches
    from hessian_lora.settings.training import TrainConfig
    from hessian_lora.training.adapters import adapter_at_initialisation, make_optimizer, trainable_parameters
    from hessian_lora.training.peft_adapters import load_peft_directory, peft_meta, read_peft_config
    from hessian_lora.training.train import train

    config = AdapterConfig(method, rank=4, seed=1)
    task = load_task("arith", n_train=4, n_eval=0)
    built = adapter_at_initialisation(
        "tiny-llama",
        config,
        device="cpu",
        init_batches=lambda tokenizer: make_batches(tokenizer, task.train, 4, max_length=96),
    )
    model = built.model
    optimizer = make_optimizer(model, config, 1e-2, max_grad_norm=1.0)
    before = {name: p.detach().clone() for name, p in trainable_parameters(model).items()}
    result = train(
        model,
        built.tokenizer,
        task.train,
        TrainConfig(lr=1e-2, steps=1, batch_size=2, warmup_ratio=0.0),
        optimizer=optimizer,
        progress=False,
    )
    assert result.steps == 1
    assert any(not torch.equal(p, before[name]) for name, p in trainable_parameters(model).items())

    model.save_pretrained(str(tmp_path))
    saved = read_peft_config(tmp_path)
    assert peft_meta(saved, base_model="tiny-llama").adapter.method == CASES[method].saved_as
    if CASES[method].rewrites:
        return  # its residual base is not the original one: peft_adapters' own tests cover how each is read
    loaded = load_peft_directory(tmp_path, model="tiny-llama")
    assert loaded.meta.adapter.method == CASES[method].saved_as
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
