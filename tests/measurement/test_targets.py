"""The typed targets of a measurement (hessian_lora/measurement/targets.py) and the one entry that takes them
(``hessian_lora.measurement.measure.measure``): each kind loads itself on a tiny-llama, a path resolves to its kind by
the files present, the keyword form ``eigen`` measures what the typed target does, and bad input is one line."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import hessian_lora
from hessian_lora.core.errors import UserError
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.measurement.measure import MeasureSettings, measure
from hessian_lora.measurement.targets import (
    AdaptedModule,
    AtInitialisation,
    Checkpoint,
    LoadedTarget,
    PeftAdapter,
    as_target,
)
from hessian_lora.training.adapters import AdapterConfig, build_adapter
from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint

SETTINGS = MeasureSettings(samples=4, batch_size=2, max_length=256, smallest=False, tol=1e-6)
CONFIG = AdapterConfig("lora", rank=2, targets=("q_proj", "v_proj"))


def _trained() -> tuple[torch.nn.Module, object]:
    """A trained-looking (B != 0) LoRA on tiny-llama and its tokenizer."""
    base = load_model("tiny-llama", device="cpu")
    model = build_adapter(base.model, CONFIG)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn_like(param))
    return model, base.tokenizer


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same adapter as a hessian-lora checkpoint and as a plain peft directory naming tiny-llama as its base."""
    root = tmp_path_factory.mktemp("targets")
    model, _ = _trained()
    meta = CheckpointMeta.from_config(
        CONFIG, base_model="tiny-llama", task="arith", step=3, extra={"prompt_template": "alpaca"}
    )
    save_checkpoint(root / "checkpoint", model, meta)
    model.peft_config["default"].base_model_name_or_path = "tiny-llama"
    model.save_pretrained(root / "peft", save_embedding_layers=False)
    return {"checkpoint": root / "checkpoint", "peft": root / "peft"}


def _one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_loads_with_what_it_records(directories: dict[str, Path]) -> None:
    loaded = Checkpoint(directories["checkpoint"]).load(SETTINGS, None, "cpu")
    assert isinstance(loaded, LoadedTarget) and loaded.checkpoint is not None and not loaded.plain_peft
    assert (loaded.task, loaded.template) == ("arith", "alpaca")
    assert loaded.source["checkpoint"] == str(directories["checkpoint"].resolve())
    assert (loaded.source["method"], loaded.source["rank"], loaded.source["step"]) == ("lora", 2, 3)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32} and loaded.tokenizer is not None


def test_a_plain_peft_directory_loads_on_its_named_base(directories: dict[str, Path]) -> None:
    loaded = PeftAdapter(directories["peft"]).load(SETTINGS, None, "cpu")
    assert loaded.plain_peft and loaded.task is None and loaded.template is None
    assert (loaded.source["format"], loaded.source["base_model"], loaded.source["rank"]) == (
        "peft",
        "tiny-llama",
        2,
    )
    trainable = {name for name, param in loaded.model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_an_adapter_at_initialisation_is_built_by_the_factory() -> None:
    target = AtInitialisation(CONFIG, model="tiny-llama")
    loaded = target.load(SETTINGS, None, "cpu")
    assert loaded.source == {
        "method": "lora",
        "model": "tiny-llama",
        "rank": 2,
        "alpha": 2.0,
        "targets": ["q_proj", "v_proj"],
        "adapter_seed": 0,
        "model_seed": 0,
        "at": "initialisation",
    }
    assert loaded.checkpoint is None and loaded.tokenizer is not None
    # a method name alone is that method with its defaults
    assert AtInitialisation("pissa", model="tiny-llama").config == AdapterConfig("pissa")


def test_a_module_of_the_callers_is_measured_where_it_is() -> None:
    model, tokenizer = _trained()
    loaded = AdaptedModule(model, tokenizer).load(SETTINGS, None, "cuda:7")  # device unused: it stays put
    assert loaded.model is model and loaded.source == {"model": type(model).__name__}
    with pytest.raises(UserError) as error:
        AdaptedModule(model).load(SETTINGS, None, None)
    assert "batches=... or tokenizer=..." in _one_line(error)


def test_a_path_resolves_to_its_kind_by_the_files_present(
    directories: dict[str, Path], tmp_path: Path
) -> None:
    assert as_target(directories["checkpoint"]) == Checkpoint(directories["checkpoint"])
    assert as_target(str(directories["peft"]), base="tiny-llama", model_seed=2) == PeftAdapter(
        str(directories["peft"]), base="tiny-llama", model_seed=2
    )
    assert as_target(tmp_path / "missing") == PeftAdapter(
        tmp_path / "missing"
    )  # loading it says it is missing
    target = AtInitialisation("lora", model="tiny-llama")
    assert as_target(target) is target
    for call, expected in (
        (lambda: as_target(directories["checkpoint"], base="tiny-llama"), "drop --model"),
        (lambda: as_target(str(directories["peft"]), revision="v1"), "for hub adapter ids"),
        (lambda: as_target(target, base="tiny-llama"), "target already"),
        (lambda: as_target(42), "directory or a hub adapter repo id"),  # type: ignore[arg-type]
    ):
        with pytest.raises(UserError) as error:
            call()
        assert expected in _one_line(error)


def test_a_target_of_the_wrong_kind_or_input_is_one_line(
    directories: dict[str, Path], tmp_path: Path
) -> None:
    model, _ = _trained()
    for call, expected in (
        (lambda: Checkpoint(directories["peft"]).load(SETTINGS, None, "cpu"), "PeftAdapter(path)"),
        (lambda: PeftAdapter(directories["checkpoint"]).load(SETTINGS, None, "cpu"), "Checkpoint(path)"),
        (
            lambda: PeftAdapter(directories["checkpoint"], base="tiny-llama").load(SETTINGS, None, "cpu"),
            "drop --model",
        ),
        (lambda: PeftAdapter(tmp_path / "missing").load(SETTINGS, None, "cpu"), "does not exist"),
        (lambda: PeftAdapter(directories["peft"], base=model), "AdaptedModule(module)"),  # type: ignore[arg-type]
        (lambda: Checkpoint(model), "AdaptedModule(module)"),  # type: ignore[arg-type]
        (lambda: AtInitialisation("lora", model=model), "base model spec"),  # type: ignore[arg-type]
        (lambda: AtInitialisation(8), "method name"),  # type: ignore[arg-type]
        (lambda: AtInitialisation("no-such-method"), "no-such-method"),
        (lambda: AtInitialisation(AdapterConfig("gralora", rank=5)), "multiple of"),
        (lambda: AdaptedModule(directories["peft"]), "Checkpoint(path)"),  # type: ignore[arg-type]
        (lambda: measure(directories["peft"], SETTINGS), "takes a target"),  # type: ignore[arg-type]
        (lambda: measure(AdaptedModule(model), []), "batches=..."),  # type: ignore[arg-type]
    ):
        with pytest.raises(UserError) as error:
            call()
        assert expected in _one_line(error), expected


def test_the_entry_takes_one_target_and_at_most_six_parameters() -> None:
    assert len(inspect.signature(measure).parameters) <= 6
    assert "give either" not in inspect.getsource(measure)  # no keyword resolution left in the entry


def _same(first: hessian_lora.EigenReport, second: hessian_lora.EigenReport) -> bool:
    """The same measurement: settings, source and values (the seconds differ run to run)."""
    return (first.settings, first.source) == (second.settings, second.source) and [
        (block.name, block.lambda_max, block.residual) for block in first.blocks
    ] == [(block.name, block.lambda_max, block.residual) for block in second.blocks]


def test_the_typed_target_and_the_keyword_form_measure_the_same(directories: dict[str, Path]) -> None:
    small = {
        "samples": 4,
        "batch_size": 2,
        "max_length": 256,
        "smallest": False,
        "tol": 1e-6,
        "progress": False,
    }
    typed = measure(AtInitialisation(CONFIG, model="tiny-llama"), SETTINGS, progress=False)
    keyword = hessian_lora.eigen(
        method="lora", model="tiny-llama", rank=2, targets=("q_proj", "v_proj"), **small
    )
    assert _same(typed, keyword)
    assert _same(hessian_lora.eigen(AtInitialisation(CONFIG, model="tiny-llama"), **small), typed)
    checkpoint = measure(Checkpoint(directories["checkpoint"]), SETTINGS, progress=False)
    assert _same(hessian_lora.eigen(str(directories["checkpoint"]), **small), checkpoint)
    assert checkpoint.settings["prompt_template"] == "alpaca" and checkpoint.settings["task"] == "arith"
    plain = measure(PeftAdapter(directories["peft"]), SETTINGS, progress=False)
    assert plain.source["format"] == "peft" and plain.source["data"]["default"] is True

    model, tokenizer = _trained()
    batches = make_batches(tokenizer, load_task("arith", n_train=4, n_eval=0).train, 2)
    frozen = next(name for name, param in model.named_parameters() if not param.requires_grad)
    given = measure(AdaptedModule(model), SETTINGS, batches=batches, progress=False)
    assert given.source["data"]["source"] == "batches" and given.blocks[0].lambda_max is not None
    assert not dict(model.named_parameters())[frozen].requires_grad  # the flags put back as they were
    assert _same(hessian_lora.eigen(model=model, batches=batches, **small), given)
