"""Sweep config: YAML schema, validation, LR grids, run keys, and the shipped experiment files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sweep_helpers import tiny_data

from hessian_lora.core.errors import UserError
from hessian_lora.measurement.measure import MeasureSettings
from hessian_lora.settings.sweep import config_from_dict, load_config, parse_lr_grid, run_id

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_lr_grid_forms():
    assert parse_lr_grid([1e-3, 1e-4]) == (1e-4, 1e-3)
    assert parse_lr_grid(3e-4) == (3e-4,)
    assert parse_lr_grid({"min": 1e-5, "max": 1e-2, "num": 4}) == pytest.approx((1e-5, 1e-4, 1e-3, 1e-2))
    grid = parse_lr_grid({"base": 2e-5, "per_decade": 4, "k": [-1, 10]})
    assert grid == pytest.approx(tuple(2e-5 * 10 ** (k / 4) for k in range(-1, 11)))


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [0.0],
        [-1e-3],
        {"min": 1e-2, "max": 1e-3, "num": 3},
        {"low": 1},
        {"base": 2e-5, "per_decade": 4, "k": [3, 1]},
        "fast",
        [1e-3, 1.00001e-3],
    ],
)
def test_bad_lr_grids_are_user_errors(bad):
    with pytest.raises(UserError):
        parse_lr_grid(bad)


def test_yaml_exponent_strings_are_numbers(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string.
    path = tmp_path / "c.yaml"
    path.write_text("model: tiny-llama\ntask: arith\nmethods: [lora]\nlr: [1e-3, 3e-3]\nsteps: 2\n")
    assert load_config(path).lrs == (1e-3, 3e-3)


def test_shipped_experiments_load():
    tiny = load_config(EXPERIMENTS / "tiny.yaml")
    assert len(tiny.runs()) == 6 and tiny.methods == ("lora", "pissa")
    smol = load_config(EXPERIMENTS / "smollm2_arith.yaml")
    assert set(smol.methods) == {"lora", "pissa", "milora", "initab", "dora", "olora", "loraga"}
    assert len(smol.lrs) >= 6 and math.log10(max(smol.lrs) / min(smol.lrs)) >= 2
    qwen = load_config(EXPERIMENTS / "qwen3_metamath.yaml")
    assert qwen.model == "Qwen/Qwen3-0.6B-Base" and qwen.ranks == (128,) and qwen.batch_sizes == (64,)
    assert qwen.seeds == (1, 2, 3) and qwen.epochs == 1
    assert len(qwen.lrs) == 12
    assert qwen.lrs[0] == pytest.approx(1.1247e-5, rel=1e-4) and qwen.lrs[-1] == pytest.approx(
        6.3246e-3, rel=1e-4
    )
    assert "::query,response" in qwen.task
    paper = ("lora", "pissa", "milora", "initab", "dora", "olora", "loraga", "gralora", "randlora", "loft")
    assert qwen.methods == paper and qwen.prompt_template == "alpaca" and qwen.adapter.alpha is None
    assert [spec.split(":")[0] for spec in qwen.eval_task] == ["gsm8k", "math"]
    code = load_config(EXPERIMENTS / "qwen3_code.yaml")
    assert code.methods == paper and code.prompt_template == "alpaca" and "::query,answer" in code.task
    assert [spec.split(":")[0] for spec in code.eval_task] == ["humaneval", "mbpp"] and not code.eval.accuracy


def test_run_ids_are_stable_and_unique():
    config = config_from_dict(tiny_data(seeds=[0, 1], ranks=[2, 4]))
    ids = [spec.run_id for spec in config.runs()]
    assert len(ids) == len(set(ids)) == 2 * 3 * 2 * 2
    assert run_id("lora", 1e-3, 0, 4, 8) == "lora_r4_s0_b8_lr1.0000e-03"
    assert str(config.runs()[0].init_key) == "lora_r2_s0"


def test_config_round_trips_through_plain_data():
    config = config_from_dict(tiny_data(hessian={"init": True, "tol": 1e-2}))
    assert config_from_dict(config.to_dict()) == config
    assert config.hessian.measure == MeasureSettings(tol=1e-2, max_length=config.max_length)
    assert config.to_dict()["hessian"]["options"] == {"tol": 1e-2}


def test_a_hessian_block_picks_the_dora_norm():
    config = config_from_dict(tiny_data(hessian={"init": True, "dora_norm": "differentiated"}))
    assert config.hessian.measure.dora_norm == "differentiated"
    assert config.to_dict()["hessian"]["options"] == {"dora_norm": "differentiated"}
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(UserError, match="hessian: unknown dora_norm 'exact': use detached, differentiated"):
        config_from_dict(tiny_data(hessian={"init": True, "dora_norm": "exact"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lerning_rate": 1}, "unknown setting"),
        ({"methods": ["lora", "nope"]}, "unknown method"),
        ({"epochs": 1}, "exactly one of steps or epochs"),
        ({"micro_batch_size": 3}, "multiple of micro_batch_size"),
        ({"precision": "fp8"}, "precision"),
        ({"eval": {"batch": 4}}, "unknown eval setting"),
        ({"seeds": [1, 1]}, "twice"),
        ({"ranks": [0]}, "ranks"),
        ({"betas": [0.9]}, "betas"),
    ],
)
def test_config_errors_name_the_problem(change, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(tiny_data(**change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"eval": {"batch": 4}},
            r"exp.yaml: unknown eval setting\(s\) batch: check the spelling \(known: batch_size",
        ),
        ({"eval": {"batch_size": 0}}, r"exp.yaml: eval batch_size"),
        ({"eval": [1]}, r"exp.yaml: eval must be a mapping"),
        ({"ray": {"gpus": 1}}, r"exp.yaml: unknown ray setting\(s\) gpus: .*known: num_cpus, num_gpus"),
        ({"hessian": {"tolerance": 1e-3}}, r"exp.yaml: hessian: unknown Hessian setting\(s\) tolerance"),
        ({"hessian": {"during": {"evry": 3}}}, r"exp.yaml: unknown hessian.during setting\(s\) evry"),
        ({"hessian": {"during": {"every": 0}}}, r"exp.yaml: hessian.during.every must be an integer"),
        (
            {"search": {"mode": "adaptive", "resolutoin": 4}},
            r"exp.yaml: unknown search setting\(s\) resolutoin: "
            r"check the spelling \(known: mode, ",
        ),
    ],
)
def test_every_settings_block_names_the_file_the_key_and_the_known_ones(change, message):
    """One reader (``_yaml.settings_from_mapping``) for every block: the same message shape everywhere."""
    with pytest.raises(UserError, match=message):
        config_from_dict(tiny_data(**change), source="exp.yaml")


def test_missing_settings_are_named():
    data = tiny_data()
    del data["lr"]
    with pytest.raises(UserError, match="lr"):
        config_from_dict(data)


def test_singular_axis_names_are_accepted():
    data = tiny_data()
    data.pop("methods")
    data["method"] = "lora"
    assert config_from_dict(data).methods == ("lora",)


def test_paper_model_configs_load_without_the_weights(monkeypatch):
    # Loading and validating a config never touches a model: make any attempt fail loudly.
    import transformers

    import hessian_lora.inputs.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("config loading tried to load a model")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    five = ("lora", "pissa", "milora", "initab", "dora")  # the methods the authors' gemma/llama scripts run
    gemma = load_config(EXPERIMENTS / "gemma3_1b_metamath.yaml")
    llama = load_config(EXPERIMENTS / "llama2_7b_metamath.yaml")
    assert gemma.model == "google/gemma-3-1b-pt" and gemma.batch_sizes == (16, 64, 128)
    assert llama.model == "meta-llama/Llama-2-7b-hf" and llama.batch_sizes == (16, 128)
    for config in (gemma, llama):
        assert (
            config.methods == five
            and config.ranks == (128,)
            and config.adapter.alpha is None
            and config.adapter.dropout == 0
        )
        assert config.seeds == (1, 2, 3) and config.epochs == 1 and config.n_train == 100_000
        assert (
            config.train.micro_batch_size == 4
            and config.max_length == 512
            and config.adapter.pissa_niter == 16
        )
        assert len(config.lrs) == 12
        assert config.lrs[0] == pytest.approx(1.1247e-5, rel=1e-4)
        assert config.lrs[-1] == pytest.approx(6.3246e-3, rel=1e-4)
        assert config.prompt_template == "alpaca" and "::query,response" in config.task
        assert [spec.split(":")[0] for spec in config.eval_task] == ["gsm8k", "math"]
        assert config.train.precision == "bf16" and config.base_dtype == "bf16"
        assert config.hessian.init and config.hessian.samples == 500 and config.hessian.batch_size == 5
        assert config.steps_for(16) == 6250
        assert config_from_dict(config.to_dict()) == config
    assert len(gemma.runs()) == 5 * 12 * 3 * 3 and len(llama.runs()) == 5 * 12 * 2 * 3


def test_base_dtype_and_gradient_checkpointing_settings():
    config = config_from_dict(tiny_data(base_dtype="bf16", gradient_checkpointing=True))
    assert config.base_dtype == "bf16" and config.train.gradient_checkpointing
    assert config_from_dict(config.to_dict()) == config
    default = config_from_dict(tiny_data())
    assert (
        default.base_dtype == "fp32" and not default.train.gradient_checkpointing
    )  # existing sweeps unchanged
    # The base dtype changes results (a shared setting); checkpointing gives the same gradients (not one).
    shared = config.shared_settings()
    assert shared["base_dtype"] == "bf16" and "gradient_checkpointing" not in shared
    assert shared != default.shared_settings()
    same = config_from_dict(tiny_data(base_dtype="bf16", gradient_checkpointing=False))
    assert same.shared_settings() == shared
    with pytest.raises(UserError, match=r"^my\.yaml: base_dtype must be one of fp32, bf16, got 'fp16'"):
        config_from_dict(tiny_data(base_dtype="fp16"), source="my.yaml")
    with pytest.raises(UserError, match=r"^my\.yaml: gradient_checkpointing must be true or false"):
        config_from_dict(tiny_data(gradient_checkpointing="yes"), source="my.yaml")
    with pytest.raises(UserError, match=r"^my\.yaml: hessian\.during .* base_dtype: fp32"):
        config_from_dict(tiny_data(base_dtype="bf16", hessian={"during": {"every": 2}}), source="my.yaml")
