"""Checkpoints: save → load reproduces the model bit for bit, for every method, with the optimizer state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from hessian_lora.core.errors import UserError
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import Example, make_batches
from hessian_lora.methods.registry import METHODS
from hessian_lora.training import adapters
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer, trainable_parameters
from hessian_lora.training.checkpoint import (
    ADAPTER_CONFIG_FILE,
    INITIAL_ADAPTER_FILE,
    META_FILE,
    OPTIMIZER_FILE,
    CheckpointMeta,
    OptimizerState,
    adam_second_moments,
    load_checkpoint,
    load_optimizer_state,
    read_meta_dict,
    save_checkpoint,
)

REWRITING = {name for name, spec in METHODS.items() if spec.rewrites_base}
LR = 5e-3


def _batches(tokenizer):
    examples = [Example(prompt=f"{i} plus {i + 3}?", response=f"It is {2 * i + 3}.") for i in range(6)]
    return make_batches(tokenizer, examples, 3)


def _train(peft_model, optimizer, batches, steps: int) -> None:
    peft_model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        (loss_sum(peft_model, batch) / batch.loss_tokens).backward()
        optimizer.step()
    peft_model.eval()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def probe_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))


def _trained(method: str, model_seed: int = 0, steps: int = 3):
    loaded = load_model("tiny-llama", device="cpu", seed=model_seed)
    batches = _batches(loaded.tokenizer)
    config = AdapterConfig(method, rank=4, alpha=8, seed=11)
    peft_model = build_adapter(loaded.model, config, batches=batches if METHODS[method].needs_data else None)
    optimizer = make_optimizer(peft_model, config, LR, weight_decay=0.01)
    _train(peft_model, optimizer, batches, steps)
    meta = CheckpointMeta.from_config(
        config,
        base_model="tiny-llama",
        task="arith",
        model_seed=model_seed,
        lr=LR,
        step=steps,
        extra={"note": "test"},
    )
    return peft_model, optimizer, meta, batches


@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_is_bit_identical_and_training_resumes_exactly(
    method: str, tmp_path: Path, probe_ids: torch.Tensor
) -> None:
    peft_model, optimizer, meta, batches = _trained(method)
    expected = _logits(peft_model, probe_ids)
    save_checkpoint(tmp_path / "ckpt", peft_model, meta, optimizer=optimizer)

    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert loaded.meta == meta
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model, probe_ids), expected)
    saved_params = trainable_parameters(peft_model)
    loaded_params = trainable_parameters(loaded.model)
    assert saved_params.keys() == loaded_params.keys()
    assert all(torch.equal(saved_params[n], loaded_params[n]) for n in saved_params)
    assert (tmp_path / "ckpt" / INITIAL_ADAPTER_FILE).is_file() == (method in REWRITING)

    # Adam's second moments come back per parameter name, with the step count and hyper-parameters
    # (LoFT keeps per-row r×r moments instead: no element-wise second moments to return).
    state = loaded.optimizer_state
    assert state is not None
    if method != "loft":
        assert state.step == 3
        assert state.betas == (0.9, 0.999) and state.eps == 1e-8
        moments = adam_second_moments(loaded)
        assert moments.keys() == saved_params.keys()
        for name, param in saved_params.items():
            assert torch.equal(moments[name], optimizer.state[param]["exp_avg_sq"])

    # One more step from the checkpoint equals one more step of the original run, bit for bit.
    config = loaded.meta.adapter
    resumed = make_optimizer(loaded.model, config, LR, weight_decay=0.01)
    load_optimizer_state(resumed, loaded.model, state)
    _train(peft_model, optimizer, batches[1:], 1)
    _train(loaded.model, resumed, batches[1:], 1)
    assert torch.equal(_logits(loaded.model, probe_ids), _logits(peft_model, probe_ids))


def test_bias_corrected_second_moments(tmp_path: Path) -> None:
    peft_model, optimizer, meta, _ = _trained("lora", steps=2)
    save_checkpoint(tmp_path / "c", peft_model, meta, optimizer=optimizer)
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    raw, corrected = (
        adam_second_moments(loaded),
        adam_second_moments(loaded.optimizer_state, bias_corrected=True),
    )
    for name in raw:
        torch.testing.assert_close(corrected[name], raw[name] / (1 - 0.999**2))


def test_checkpoint_without_optimizer_has_no_state(tmp_path: Path) -> None:
    peft_model, _, meta, _ = _trained("pissa", steps=0)
    save_checkpoint(tmp_path / "c", peft_model, meta)
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    assert loaded.optimizer_state is None and not (tmp_path / "c" / OPTIMIZER_FILE).exists()
    with pytest.raises(UserError, match="no optimizer state"):
        adam_second_moments(loaded)


@pytest.mark.parametrize("method", ["lora", "dora", "rslora"])
def test_peft_loads_the_adapter_of_base_keeping_methods(
    method: str, tmp_path: Path, probe_ids: torch.Tensor
) -> None:
    peft_model, optimizer, meta, _ = _trained(method)
    save_checkpoint(tmp_path / "c", peft_model, meta, optimizer=optimizer)
    fresh = load_model("tiny-llama", device="cpu").model
    plain = PeftModel.from_pretrained(fresh, str(tmp_path / "c"))
    assert torch.equal(_logits(plain, probe_ids), _logits(peft_model, probe_ids))


@pytest.mark.parametrize("method", ["milora", "loraga"])
def test_adapter_config_is_a_plain_lora_config_peft_loads_on_the_residual(
    method: str, tmp_path: Path, probe_ids: torch.Tensor
) -> None:
    peft_model, _, meta, _ = _trained(method, steps=1)
    save_checkpoint(tmp_path / "c", peft_model, meta)
    config = json.loads((tmp_path / "c" / ADAPTER_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["init_lora_weights"] is True
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_ga_config"] is None
    # The residual base that load_checkpoint rebuilt, stripped of its adapter, takes the adapter back via peft.
    residual_base = load_checkpoint(tmp_path / "c", device="cpu").model.unload()
    plain = PeftModel.from_pretrained(residual_base, str(tmp_path / "c"))
    assert torch.equal(_logits(plain, probe_ids), _logits(peft_model, probe_ids))


def test_a_changed_base_model_is_reported(tmp_path: Path) -> None:
    peft_model, _, meta, _ = _trained("initab", steps=1)
    save_checkpoint(tmp_path / "c", peft_model, meta)
    meta_path = tmp_path / "c" / META_FILE
    data = json.loads(meta_path.read_text())
    data["model_seed"] = 1  # another random tiny-llama: the residual cannot be the saved one
    meta_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="differs from the one"):
        load_checkpoint(tmp_path / "c", device="cpu")


def test_saving_replaces_a_checkpoint_atomically_and_leaves_no_temp_dirs(
    tmp_path: Path, probe_ids: torch.Tensor
) -> None:
    first, _, meta, _ = _trained("lora", steps=1)
    save_checkpoint(tmp_path / "c", first, meta)
    second, optimizer, meta2, _ = _trained("lora", steps=3)
    save_checkpoint(tmp_path / "c", second, meta2, optimizer=optimizer)
    assert sorted(os.listdir(tmp_path)) == ["c"]
    loaded = load_checkpoint(tmp_path / "c", device="cpu")
    assert loaded.meta.step == 3
    assert torch.equal(_logits(loaded.model, probe_ids), _logits(second, probe_ids))


def test_refuses_to_overwrite_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    peft_model, _, meta, _ = _trained("lora", steps=0)
    target = tmp_path / "results"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a hessian-lora checkpoint"):
        save_checkpoint(target, peft_model, meta)
    assert (target / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_only_models_from_build_adapter_can_be_saved(tmp_path: Path, tiny) -> None:
    from peft import LoraConfig, get_peft_model

    foreign = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj"]))
    meta = CheckpointMeta.from_config(AdapterConfig("lora", rank=2), base_model="tiny-llama")
    with pytest.raises(UserError, match="build_adapter"):
        save_checkpoint(tmp_path / "c", foreign, meta)


def test_meta_round_trips_through_json() -> None:
    config = AdapterConfig(
        "pissa", rank=16, alpha=32, dropout=0.05, targets=("q_proj", "v_proj"), seed=3, pissa_niter=4
    )
    meta = CheckpointMeta.from_config(
        config, base_model="smollm2-135m", task="arith", lr=1e-4, step=12, extra={"history": [1, 2]}
    )
    again = CheckpointMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    assert again.adapter == config


@pytest.mark.parametrize("make", ["missing", "empty", "bad_json"])
def test_bad_checkpoint_paths_are_user_errors(make: str, tmp_path: Path) -> None:
    path = tmp_path / "c"
    if make != "missing":
        path.mkdir()
    if make == "bad_json":
        (path / META_FILE).write_text("{not json")
    with pytest.raises(UserError):
        read_meta_dict(path)
    with pytest.raises(UserError):
        load_checkpoint(path, device="cpu")


def test_optimizer_state_for_other_parameters_is_refused(tmp_path: Path) -> None:
    peft_model, optimizer, _, _ = _trained("lora", steps=1)
    other = build_adapter(
        load_model("tiny-llama", device="cpu").model, AdapterConfig("lora", rank=4, targets=("q_proj",))
    )
    state = OptimizerState(optimizer.state_dict(), tuple(trainable_parameters(peft_model)))
    with pytest.raises(UserError, match="other parameters"):
        load_optimizer_state(make_optimizer(other, AdapterConfig("lora", rank=4), LR), other, state)


# Plain peft adapter directories (PeftModel.save_pretrained, no hessian_lora.json)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama (seed 0) saved as a Hugging Face directory, model and tokenizer."""
    path = tmp_path_factory.mktemp("base") / "tiny"
    loaded = load_model("tiny-llama", device="cpu")
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def _plain_adapter(base_dir: Path, **lora: object) -> PeftModel:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(
        load_model(str(base_dir), device="cpu").model,
        LoraConfig(**{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], **lora}),
    )
    return _perturb(model)


def _perturb(model: PeftModel) -> PeftModel:
    with torch.no_grad():  # B != 0: not the trivial Hessian at B = 0 (and, after PiSSA's init, "trained")
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn_like(param))
    return model.eval()


def test_eigen_on_a_plain_peft_directory_equals_the_checkpoint(
    base_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hessian_lora.cli.main import main
    from hessian_lora.measurement.measure import read_report

    peft_model = _plain_adapter(base_dir)
    peft_model.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / ADAPTER_CONFIG_FILE).read_text())[
        "base_model_name_or_path"
    ] == str(base_dir)
    config = AdapterConfig("lora", rank=2, alpha=4, targets=("q_proj", "v_proj"))
    setattr(peft_model, adapters.CONFIG_ATTRIBUTE, config)  # what build_adapter leaves
    save_checkpoint(
        tmp_path / "ckpt", peft_model, CheckpointMeta.from_config(config, base_model=str(base_dir))
    )

    values = {}
    for name in ("plain", "ckpt"):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "eigen",
                    str(tmp_path / name),
                    "--samples",
                    "4",
                    "--batch-size",
                    "2",
                    "--max-length",
                    "256",
                    "--quiet",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        values[name] = read_report(out).blocks[0].lambda_max
    capsys.readouterr()
    assert values["plain"] > 0 and values["plain"] == pytest.approx(values["ckpt"], rel=1e-6)
    assert read_report(tmp_path / "plain.json").source["format"] == "peft"


def test_plain_dora_directory_loads_with_its_method(
    base_dir: Path, tmp_path: Path, probe_ids: torch.Tensor
) -> None:
    from hessian_lora.training.peft_adapters import load_adapter

    peft_model = _plain_adapter(base_dir, use_dora=True)
    peft_model.save_pretrained(tmp_path / "dora")
    loaded = load_adapter(tmp_path / "dora", device="cpu")
    assert (
        loaded.meta.adapter.method == "dora"
        and loaded.meta.adapter.rank == 2
        and loaded.meta.adapter.alpha == 4.0
    )
    assert loaded.meta.adapter.targets == ("q_proj", "v_proj") and loaded.meta.base_model == str(base_dir)
    assert torch.equal(_logits(loaded.model, probe_ids), _logits(peft_model, probe_ids))
    assert trainable_parameters(loaded.model).keys() == trainable_parameters(peft_model).keys()
    assert any("magnitude" in name for name in trainable_parameters(loaded.model))


def _pissa_directories(base_dir: Path, tmp_path: Path, init: str) -> PeftModel:
    """A "trained" ``init`` adapter saved raw, with peft's conversion, and its residual base (a model directory)."""
    from peft import LoraConfig, get_peft_model

    pissa = get_peft_model(
        load_model(str(base_dir), device="cpu").model,
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=init),
    )
    pissa.peft_config["default"].init_lora_weights = True
    pissa.save_pretrained(tmp_path / "initial")  # peft's recipe for a later conversion
    pissa.peft_config["default"].init_lora_weights = init
    torch.manual_seed(3)
    with torch.no_grad():  # trained: B moved away from B0
        for name, param in pissa.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))
    pissa.eval()
    pissa.save_pretrained(tmp_path / "raw")
    pissa.save_pretrained(
        tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "initial")
    )
    return pissa


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_base_rewriting_plain_adapter_is_measured_on_what_it_trains(
    init: str, base_dir: Path, tmp_path: Path, probe_ids: torch.Tensor
) -> None:
    from hessian_lora.measurement.measure import eigen
    from hessian_lora.training.peft_adapters import load_adapter

    pissa = _pissa_directories(base_dir, tmp_path, init)
    expected = _logits(pissa, probe_ids)
    trained = trainable_parameters(pissa)
    pissa.unload().save_pretrained(tmp_path / "residual")
    load_model("tiny-llama", device="cpu").tokenizer.save_pretrained(tmp_path / "residual")

    # The original base where the residual is needed is refused, in one line that says what to pass.
    with pytest.raises(UserError) as error:
        load_adapter(tmp_path / "raw", model=str(base_dir), device="cpu")
    message = str(error.value)
    assert "original base" in message and f"init_lora_weights={init!r}" in message and "\n" not in message

    values = {}
    for name, model in (("raw", None), ("raw", str(tmp_path / "residual")), ("converted", None)):
        loaded = load_adapter(tmp_path / name, model=model, device="cpu")
        # the method's own parameters (rank r, not peft's rank-2r conversion), computing the trained function
        assert (loaded.meta.adapter.method, loaded.meta.adapter.rank, loaded.meta.adapter.alpha) == (
            init,
            2,
            4.0,
        ), (name, model)
        assert {k: v.shape for k, v in trainable_parameters(loaded.model).items()} == {
            k: v.shape for k, v in trained.items()
        }
        torch.testing.assert_close(_logits(loaded.model, probe_ids), expected, atol=1e-5, rtol=1e-5)
        report = eigen(
            str(tmp_path / name),
            model=model,
            samples=4,
            batch_size=2,
            max_length=256,
            smallest=False,
            progress=False,
        )
        assert report.source["residual_base"].startswith(("rebuilt", "given", "converted"))
        values[(name, model)] = report.blocks[0].lambda_max
    first = next(iter(values.values()))
    assert all(value == pytest.approx(first, rel=1e-4) for value in values.values()), values


def test_a_rewriting_init_that_cannot_be_rebuilt_says_what_it_needs(base_dir: Path, tmp_path: Path) -> None:
    from hessian_lora.training.peft_adapters import load_adapter

    _pissa_directories(base_dir, tmp_path, "pissa")
    config_path = tmp_path / "raw" / ADAPTER_CONFIG_FILE
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "init_lora_weights": "pissa_niter_4"}))  # a randomised SVD
    with pytest.raises(UserError) as error:
        load_adapter(tmp_path / "raw", device="cpu")
    message = str(error.value)
    assert str(tmp_path / "raw") in message and "init_lora_weights='pissa_niter_4'" in message
    assert "path_initial_model_for_weight_conversion" in message and "--model" in message


@pytest.mark.parametrize("rank", [2, 4])
def test_a_plain_lora_of_even_rank_is_not_taken_for_a_conversion(
    rank: int, base_dir: Path, tmp_path: Path
) -> None:
    from hessian_lora.training.peft_adapters import converted_init, load_adapter

    _plain_adapter(base_dir, r=rank).save_pretrained(tmp_path / "plain")
    assert (
        converted_init(tmp_path / "plain", json.loads((tmp_path / "plain" / ADAPTER_CONFIG_FILE).read_text()))
        is None
    )
    loaded = load_adapter(tmp_path / "plain", device="cpu")
    assert (loaded.meta.adapter.method, loaded.meta.adapter.rank) == ("lora", rank)


def test_a_checkpoint_refuses_another_base_and_a_truncated_adapter_is_named(
    base_dir: Path, tmp_path: Path
) -> None:
    from hessian_lora.training.peft_adapters import load_adapter

    peft_model, _, meta, _ = _trained("lora", steps=0)
    save_checkpoint(tmp_path / "ckpt", peft_model, meta)
    with pytest.raises(UserError, match="drop --model"):
        load_adapter(tmp_path / "ckpt", model=str(base_dir))
    _plain_adapter(base_dir).save_pretrained(tmp_path / "plain")
    weights = tmp_path / "plain" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        load_adapter(tmp_path / "plain", device="cpu")


def test_a_checkpoint_whose_metadata_names_a_base_of_another_shape_is_refused_in_one_line(
    tmp_path, capsys
) -> None:
    """peft's answer is one size-mismatch line per tensor (55 lines for SmolLM2's q/v): the toolkit's is one line
    naming the file, the layer and the fix, exit 2."""
    from hessian_lora.cli.main import main

    directory = tmp_path / "ck"
    assert main(["init", "--method", "lora", "--model", "tiny-llama", "--out", str(directory)]) == 0
    meta_path = directory / "hessian_lora.json"
    meta = json.loads(meta_path.read_text())
    meta["base_model"] = "tiny-llama:hidden_size=32"
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert (
        main(["eigen", str(directory), "--samples", "2", "--out", str(tmp_path / "r.json"), "--quiet"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved for another base" in err[0] and "set base_model in" in err[0], err
    assert not (tmp_path / "r.json").exists()
