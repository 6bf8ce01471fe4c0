"""Plain peft adapters as a practitioner has them: a hub repo id (loaded offline from a hand-made Hugging Face
cache, at a revision), a Trainer checkpoint folder (its step), and the data a measurement ran on said aloud."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from hessian_lora.core.errors import UserError

ADAPTER_ID = "acme/tiny-lora"
SMALL = {"samples": 4, "batch_size": 2, "max_length": 256, "smallest": False, "progress": False}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-looking (B != 0) LoRA on tiny-llama saved by peft, its config naming tiny-llama as the base."""
    from peft import LoraConfig, get_peft_model

    from hessian_lora.inputs.models import load_model

    path = tmp_path_factory.mktemp("adapter") / "lora"
    torch.manual_seed(5)
    model = get_peft_model(
        load_model("tiny-llama", device="cpu").model,
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn_like(param))
    model.peft_config["default"].base_model_name_or_path = "tiny-llama"
    model.save_pretrained(path, save_embedding_layers=False)  # "auto" asks the hub for tiny-llama's config
    return path


def _offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter_dir: Path) -> str:
    """A hub cache holding ``ADAPTER_ID`` at one snapshot (refs main and v1), offline mode on; its commit."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    org, name = ADAPTER_ID.split("/")
    repo = cache / f"models--{org}--{name}"
    commit = hashlib.sha1(b"acme tiny lora").hexdigest()
    shutil.copytree(adapter_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    for ref in ("main", "v1"):
        (repo / "refs" / ref).write_text(commit)
    for key, value in {
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no local directory named like the id
    return commit


def test_a_hub_adapter_id_is_measured_from_the_offline_cache(
    adapter_dir, tmp_path, monkeypatch, capsys
) -> None:
    import hessian_lora
    from hessian_lora.cli.commands.info import describe
    from hessian_lora.cli.main import main
    from hessian_lora.measurement.measure import read_report

    local = hessian_lora.eigen(str(adapter_dir), **SMALL)
    commit = _offline_cache(tmp_path, monkeypatch, adapter_dir)
    for revision in (None, "v1", commit):
        report = hessian_lora.eigen(ADAPTER_ID, revision=revision, **SMALL)
        assert report.blocks[0].lambda_max == pytest.approx(local.blocks[0].lambda_max, rel=1e-6)
        assert report.source["checkpoint"] == ADAPTER_ID and report.source["revision"] == commit
    assert (
        main(
            [
                "eigen",
                ADAPTER_ID,
                "--revision",
                "v1",
                "--samples",
                "4",
                "--batch-size",
                "2",
                "--quiet",
                "--no-min",
                "--out",
                "hub.json",
            ]
        )
        == 0
    )
    assert read_report(tmp_path / "hub.json").source["revision"] == commit
    facts = describe(ADAPTER_ID)
    assert (facts["method"], facts["rank"], facts["base_model"]) == ("lora", 2, "tiny-llama")
    assert facts["checkpoint"] == f"{ADAPTER_ID} (hub, commit {commit})"
    capsys.readouterr()

    for revision in (None, "v2"):  # not in the cache, and the hub is not asked
        with pytest.raises(UserError) as error:
            hessian_lora.eigen(
                "acme/other-lora" if revision is None else ADAPTER_ID, revision=revision, **SMALL
            )
        message = str(error.value)
        assert "\n" not in message and "not in the local cache" in message
        assert ("acme/other-lora" in message) if revision is None else ("at revision v2" in message)
    with pytest.raises(UserError, match="for hub adapter ids"):
        hessian_lora.eigen(str(adapter_dir), revision="v1", **SMALL)


def test_a_trainer_checkpoint_reports_its_step(adapter_dir, tmp_path) -> None:
    import hessian_lora
    from hessian_lora.cli.commands.info import describe

    assert (
        hessian_lora.eigen(str(adapter_dir), **SMALL).source["step"] is None
    )  # nothing says: unknown, not 0
    named = tmp_path / "checkpoint-12"
    shutil.copytree(adapter_dir, named)
    assert hessian_lora.eigen(str(named), **SMALL).source["step"] == 12
    (named / "trainer_state.json").write_text(json.dumps({"global_step": 30, "log_history": []}))
    assert (
        hessian_lora.eigen(str(named), **SMALL).source["step"] == 30
    )  # the trainer's state wins over the name
    assert describe(named)["step"] == 30
    (named / "trainer_state.json").write_text("{not json")
    with pytest.raises(UserError, match=r"trainer_state\.json is not valid JSON"):
        describe(named)


def test_eigen_says_what_data_it_measured_on(adapter_dir, tmp_path, capsys) -> None:
    from hessian_lora.cli.main import main
    from hessian_lora.measurement.measure import read_report

    common = ["--samples", "4", "--batch-size", "2", "--no-min"]
    assert main(["eigen", str(adapter_dir), *common, "--out", str(tmp_path / "default.json")]) == 0
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "default task arith" in notices[0] and "--data" in notices[0]
    data = read_report(tmp_path / "default.json").source["data"]
    assert data["source"] == "arith" and data["default"] is True and data["examples"] == 4
    assert data["prompt_template"] == "chat" and data["batches"] == 2 and data["loss_tokens"] > 0
    assert (
        f"data: arith (default task), template chat, 4 examples in 2 batches, {data['loss_tokens']:,} loss tokens"
        in err
    )
    # the data line comes before the first product: before any progress bar of the solver
    assert err.index("data: ") < err.index("eigen blocks")

    pairs = tmp_path / "mine.jsonl"
    pairs.write_text(
        "".join(json.dumps({"question": f"{i} + {i} =", "answer": str(2 * i)}) + "\n" for i in range(3))
    )
    assert (
        main(
            [
                "eigen",
                str(adapter_dir),
                *common,
                "--data",
                str(pairs),
                "--prompt-template",
                "plain",
                "--out",
                str(tmp_path / "mine.json"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "notice:" not in err
    data = read_report(tmp_path / "mine.json").source["data"]
    assert (data["source"], data["default"], data["prompt_template"], data["examples"]) == (
        str(pairs),
        False,
        "plain",
        3,
    )
    assert f"data: {pairs}, template plain, 3 examples in 2 batches" in err
