"""The settings tree (hessian_lora/settings): one definition per concept, files written by the previous version
still load, and the copies that had drifted from their source now read it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hessian_lora.core.errors import UserError
from hessian_lora.settings import AdapterConfig, MeasureSettings, TrainConfig
from hessian_lora.settings.sweep import config_from_dict, load_config
from hessian_lora.training import adapters
from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint

FIXTURES = (
    Path(__file__).resolve().parents[1] / "fixtures" / "v1"
)  # written by the version before the settings tree (1e07194)
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TEMPLATE = "Q: {instruction}\nA: "


def test_a_config_yaml_of_the_previous_version_loads_and_is_written_back_byte_for_byte() -> None:
    text = (FIXTURES / "config.yaml").read_text()
    config = config_from_dict(yaml.safe_load(text), source="config.yaml")
    assert config.adapter == AdapterConfig("lora", rank=4, alpha=16.0, dropout=0.05, loraplus_ratio=4.0)
    assert config.train.betas == (0.8, 0.99) and config.train.max_grad_norm is None
    assert config.train.micro_batch_size == 8 and config.prompt_template == "alpaca"
    assert yaml.safe_dump(config.to_dict(), sort_keys=False) == text


def test_the_grid_points_replace_only_the_grid_axes() -> None:
    config = config_from_dict(yaml.safe_load((FIXTURES / "config.yaml").read_text()))
    adapter = config.adapter_for("pissa", 8, 3)
    assert adapter == dataclasses.replace(config.adapter, method="pissa", rank=8, seed=3)
    train = config.train_for(1e-3, 8, 3)
    assert (train.lr, train.batch_size, train.seed, train.steps) == (1e-3, 8, 3, config.steps_for(8))
    assert train.betas == config.train.betas and train.prompt_template == "alpaca"


def test_a_checkpoint_meta_of_the_previous_version_loads_and_is_written_back_as_it_was() -> None:
    data = json.loads((FIXTURES / "hessian_lora.json").read_text())
    meta = CheckpointMeta.from_dict(data)
    assert meta.adapter == AdapterConfig(
        "rslora", rank=4, alpha=4.0, dropout=0.05, targets=("q_proj", "v_proj"), seed=3, loraplus_ratio=8.0
    )
    assert json.dumps(meta.to_dict(), indent=2) == json.dumps(data, indent=2)  # same keys, same order


def test_report_settings_are_those_the_previous_version_wrote() -> None:
    for options, expected in json.loads((FIXTURES / "measure_settings.json").read_text()):
        dora = "dora_norm" in expected
        assert json.loads(json.dumps(MeasureSettings(**options).to_dict(dora=dora))) == expected, options
    # a block size is recorded only when set, so reports without one resume as before
    assert "block_size" not in MeasureSettings().to_dict()
    assert MeasureSettings(block_size=4).to_dict()["block_size"] == 4
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UserError, match="block_size must be a whole number >= 1"):
            MeasureSettings(block_size=bad)


def test_overrides_are_checked_against_the_fields() -> None:
    settings = MeasureSettings.with_overrides(MeasureSettings(samples=4), tol=1e-4, blocks="per-module")
    assert (settings.samples, settings.tol, settings.blocks) == (4, 1e-4, "per-module")
    with pytest.raises(UserError, match=r"unknown Hessian setting\(s\) tolerance: .*known: task, samples"):
        MeasureSettings.with_overrides(tolerance=1e-4)


def test_shipped_experiments_round_trip() -> None:
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        config = load_config(path)
        assert config_from_dict(config.to_dict()) == config, path


# ----------------------------------------------------------------------------------------------------------
# The drifted copies (issue 21, item 5): each test fails on the code before the settings tree.


def _randlora_checkpoint(tiny, tmp_path: Path) -> Path:
    config = AdapterConfig("randlora", rank=8, targets=("q_proj",))
    model = adapters.build_adapter(tiny.model, config)
    out = tmp_path / "randlora"
    save_checkpoint(out, model, CheckpointMeta.from_config(config, base_model="tiny-llama"))
    return out


def test_info_shows_the_scale_peft_applies_to_a_randlora_checkpoint(tiny, tmp_path: Path) -> None:
    from hessian_lora.cli.commands.info import describe

    facts = describe(_randlora_checkpoint(tiny, tmp_path))
    # RandLoRA's scale is fixed at 20 (randlora_alpha = 20·r); alpha/rank would say 1.
    assert facts["scale"] == pytest.approx(20.0)
    assert facts["scale"] == AdapterConfig("randlora", rank=8).scaling


def _demo_config():
    data = yaml.safe_load((FIXTURES / "config.yaml").read_text())
    # A template of its own: alpaca's preamble alone fills the fixture's 96 tokens, and tiny-llama's tokenizer has
    # no chat template, so chat (the default the demo fell back to) is plain.
    data.update(methods=["lora"], targets=["q_proj", "v_proj"], prompt_template=TEMPLATE)
    return config_from_dict(data)


def test_the_demo_builds_the_adapter_the_sweep_builds() -> None:
    from hessian_lora.sweep.demo import _adapter_like_the_sweep

    config = _demo_config()
    built = _adapter_like_the_sweep(config, "lora", 4, 0, "cpu")
    # dropout and loraplus_ratio are what the demo used to drop (and repr(config) is the reuse key)
    expected = AdapterConfig(
        "lora", rank=4, alpha=16.0, dropout=0.05, targets=("q_proj", "v_proj"), seed=0, loraplus_ratio=4.0
    )
    assert getattr(built.model, adapters.CONFIG_ATTRIBUTE) == expected
    assert config.adapter_for("lora", 4, 0) == expected


def test_the_demo_cuts_its_hessian_batches_with_the_sweeps_prompt_template() -> None:
    from hessian_lora.inputs.models import load_tokenizer
    from hessian_lora.sweep.demo import _hessian_batches
    from hessian_lora.sweep.recommend import probe_batches

    config = _demo_config()
    assert config.prompt_template == TEMPLATE
    tokenizer = load_tokenizer(config.model)
    batches = _hessian_batches(config, tokenizer)
    expected = probe_batches(
        tokenizer,
        config.task,
        data_seed=config.data_seed,
        n_train=config.n_train,
        n_eval=config.n_eval,
        samples=config.hessian.samples,
        batch_size=config.hessian.batch_size,
        max_length=config.max_length,
        prompt_template=TEMPLATE,
    )
    assert [b.input_ids.tolist() for b in batches] == [b.input_ids.tolist() for b in expected]


def test_train_config_is_the_one_definition() -> None:
    from hessian_lora.training import train

    assert train.TrainConfig is TrainConfig and adapters.AdapterConfig is AdapterConfig


def test_the_engines_backends_are_the_settings_vocabulary() -> None:
    # hessian/operator.py still spells its Backend out (that file is being rewritten elsewhere); until it imports
    # settings.measurement.EngineBackend, this keeps the two from drifting.
    from hessian_lora.hessian import operator
    from hessian_lora.settings.measurement import BACKENDS, ENGINE_BACKENDS

    assert operator.BACKENDS == ENGINE_BACKENDS
    assert ("auto", *ENGINE_BACKENDS) == BACKENDS
