"""``hessian-lora eigen`` (hessian_lora/cli/commands/eigen.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hessian_lora
from hessian_lora.cli.main import main

ARGS = [
    "--model",
    "tiny-llama",
    "--rank",
    "2",
    "--targets",
    "q_proj,v_proj",
    "--samples",
    "4",
    "--batch-size",
    "2",
    "--tol",
    "1e-5",
    "--quiet",
]


def test_cli_writes_the_same_numbers_as_the_python_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.json"
    code = main(
        ["eigen", "--method", "pissa", "--blocks", "per-module", "--layers", "1", "--out", str(out), *ARGS]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "layers.1.self_attn.q_proj" in printed and "median lambda_max over 2 blocks" in printed
    written = json.loads(out.read_text())
    api = hessian_lora.eigen(
        method="pissa",
        model="tiny-llama",
        rank=2,
        targets=("q_proj", "v_proj"),
        samples=4,
        batch_size=2,
        tol=1e-5,
        blocks="per-module",
        layers="1",
        progress=False,
    )
    assert [b["lambda_max"] for b in written["blocks"]] == [b.lambda_max for b in api.blocks]
    assert [b["lambda_min"] for b in written["blocks"]] == [b.lambda_min for b in api.blocks]
    # Rerunning resumes: nothing left to do, the file is unchanged.
    assert (
        main(
            [
                "eigen",
                "--method",
                "pissa",
                "--blocks",
                "per-module",
                "--layers",
                "1",
                "--out",
                str(out),
                *ARGS,
            ]
        )
        == 0
    )
    assert json.loads(out.read_text()) == written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eigen", "--out", "x.json"], "CHECKPOINT"),
        (["eigen", "ckpt", "--method", "lora", "--out", "x.json"], "not both"),
        (["eigen", "--method", "lora", "--data", "missing.jsonl", "--out", "x.json"], "no such file"),
        (["eigen", "--method", "lora", "--modules", "q_proj", "--out", "x.json", *ARGS], "per-module"),
        (["eigen", "does-not-exist", "--out", "x.json"], "does not exist"),
        (["eigen", "--method", "dora", "--dora-norm", "exact", "--out", "x.json"], "invalid choice: 'exact'"),
        (
            ["eigen", "--method", "lora", "--block-size", "wide", "--out", "x.json", *ARGS],
            "block_size must be",
        ),
        (
            ["eigen", "--method", "lora", "--block-size", "2", "--solver", "power", "--out", "x.json", *ARGS],
            "solver lanczos",
        ),
    ],
)
def test_bad_invocations_exit_2_with_a_fix(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_dora_norm_reaches_the_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hessian_lora.cli.main import build_parser
    from hessian_lora.measurement import measure

    monkeypatch.chdir(tmp_path)
    seen = {}
    # An empty report: nothing uncertified, so the command exits 0.
    # The command builds the target and calls the one entry, measure(target, settings, ...).
    monkeypatch.setattr(
        measure,
        "measure",
        lambda target, settings, **kwargs: seen.update(vars(settings)) or SimpleNamespace(blocks=()),
    )
    monkeypatch.setattr("hessian_lora.cli.commands.eigen._print_summary", lambda *args: None)
    for argv, expected in (([], "detached"), (["--dora-norm", "differentiated"], "differentiated")):
        args = build_parser().parse_args(["eigen", "--method", "dora", "--out", "x.json", *argv])
        assert args.handler(args) == 0 and seen["dora_norm"] == expected


def test_an_uncertified_value_exits_3_and_says_what_helps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "short.json"
    code = main(
        [
            "eigen",
            "--method",
            "lora",
            "--out",
            str(out),
            "--max-iter",
            "2",
            "--no-min",
            *[a for a in ARGS if a != "1e-5"][:-2],
            "--tol",
            "1e-9",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 3
    assert "not certified (max_iter)" in printed and "raise --max-iter" in printed
    report = json.loads(out.read_text())  # written all the same, with the explicit residual
    assert report["blocks"][0]["converged"] is False and report["blocks"][0]["residual"] > 0


def test_an_impossible_krylov_budget_is_refused_before_any_product(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.json"
    assert main(["eigen", "--method", "lora", "--out", str(out), "--krylov-memory", "1e-9", *ARGS]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "memory plan" in error and "--krylov-memory" in error
    assert not out.exists()


def test_a_plan_whose_activations_do_not_fit_names_the_batch_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hessian_lora.core.errors import UserError
    from hessian_lora.hessian.memory_plan import activation_bytes, plan_memory
    from hessian_lora.inputs.models import load_model
    from hessian_lora.inputs.tasks import TokenBatch

    model = load_model("tiny-llama", device="cpu").model
    ids = torch.ones(8, 256, dtype=torch.long)
    batches = [TokenBatch(ids, torch.ones_like(ids), ids.clone())]
    needed = activation_bytes(model, 8, 256)
    assert needed is not None and needed > 0
    with pytest.raises(UserError, match="lower --batch-size or --max-length"):
        plan_memory(
            model,
            batches,
            block_parameters=1000,
            dtype=torch.float32,
            device=torch.device("cpu"),
            max_iter=10,
            free_bytes=needed // 2,
        )
    plan = plan_memory(
        model,
        batches,
        block_parameters=1000,
        dtype=torch.float32,
        device=torch.device("cpu"),
        max_iter=10,
        free_bytes=needed * 4,
    )
    assert plan.fits_on_device and plan.krylov_vectors == 20 and plan.activation_bytes == needed
    assert "memory plan on cpu" in plan.lines()[0]


def test_the_papers_data_size_streams_100_batches_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 500 samples in batches of 5 (the paper's Hessian data): every product runs through all 100 batches, and the
    # product bar moves batch by batch. Five products keep the test short; whether they certify does not matter.
    out = tmp_path / "paper.json"
    code = main(
        [
            "eigen",
            "--method",
            "lora",
            "--model",
            "tiny-llama:hidden_size=16,layers=1,heads=2,kv_heads=1",
            "--rank",
            "1",
            "--targets",
            "q_proj",
            "--samples",
            "500",
            "--batch-size",
            "5",
            "--max-length",
            "96",
            "--max-iter",
            "5",
            "--no-min",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code in (0, 3), captured.err
    report = json.loads(out.read_text())
    block = report["blocks"][0]
    assert report["settings"]["samples"] == 500 and block["batches"] == 100 and block["hvps"] >= 5
    assert (
        "memory plan on cpu" in captured.err and "100 batches streamed through each product" in captured.err
    )
    assert "hvps [" in captured.err  # the product bar


def test_block_size_and_one_at_a_time_reach_the_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hessian_lora.cli.main import build_parser
    from hessian_lora.measurement import measure

    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(
        measure,
        "measure",
        lambda target, settings, **kwargs: seen.update(vars(settings)) or SimpleNamespace(blocks=()),
    )
    monkeypatch.setattr("hessian_lora.cli.commands.eigen._print_summary", lambda *args: None)
    for argv, block_size, together in (
        ([], None, True),
        (["--block-size", "rank"], "rank", True),
        (["--block-size", "4", "--one-at-a-time"], 4, False),
    ):
        args = build_parser().parse_args(["eigen", "--method", "lora", "--out", "x.json", *argv])
        assert args.handler(args) == 0
        assert seen["block_size"] == block_size and seen["together"] is together
