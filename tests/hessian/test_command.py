"""``hessian-lora eigen`` (hessian_lora/commands/eigen.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import hessian_lora
from hessian_lora.cli import main

ARGS = ["--model", "tiny-llama", "--rank", "2", "--targets", "q_proj,v_proj", "--samples", "4", "--batch-size", "2",
        "--tol", "1e-5", "--quiet"]


def test_cli_writes_the_same_numbers_as_the_python_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.json"
    code = main(["eigen", "--method", "pissa", "--blocks", "per-module", "--layers", "1", "--out", str(out), *ARGS])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layers.1.self_attn.q_proj" in printed and "median lambda_max over 2 blocks" in printed
    written = json.loads(out.read_text())
    api = hessian_lora.eigen(method="pissa", model="tiny-llama", rank=2, targets=("q_proj", "v_proj"), samples=4,
                             batch_size=2, tol=1e-5, blocks="per-module", layers="1", progress=False)
    assert [b["lambda_max"] for b in written["blocks"]] == [b.lambda_max for b in api.blocks]
    assert [b["lambda_min"] for b in written["blocks"]] == [b.lambda_min for b in api.blocks]
    # Rerunning resumes: nothing left to do, the file is unchanged.
    assert main(["eigen", "--method", "pissa", "--blocks", "per-module", "--layers", "1", "--out", str(out),
                 *ARGS]) == 0
    assert json.loads(out.read_text()) == written


@pytest.mark.parametrize("argv, message", [
    (["eigen", "--out", "x.json"], "CHECKPOINT"),
    (["eigen", "ckpt", "--method", "lora", "--out", "x.json"], "not both"),
    (["eigen", "--method", "lora", "--data", "missing.jsonl", "--out", "x.json"], "no such file"),
    (["eigen", "--method", "lora", "--modules", "q_proj", "--out", "x.json", *ARGS], "per-module"),
    (["eigen", "does-not-exist", "--out", "x.json"], "does not exist"),
    (["eigen", "--method", "dora", "--dora-norm", "exact", "--out", "x.json"], "invalid choice: 'exact'"),
])
def test_bad_invocations_exit_2_with_a_fix(argv: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_dora_norm_reaches_the_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hessian_lora import measure
    from hessian_lora.cli import build_parser

    monkeypatch.chdir(tmp_path)
    seen = {}
    # An empty report: nothing uncertified, so the command exits 0.
    monkeypatch.setattr(measure, "eigen", lambda *args, **kwargs: seen.update(kwargs) or SimpleNamespace(blocks=()))
    monkeypatch.setattr("hessian_lora.commands.eigen._print_summary", lambda *args: None)
    for argv, expected in (([], "detached"), (["--dora-norm", "differentiated"], "differentiated")):
        args = build_parser().parse_args(["eigen", "--method", "dora", "--out", "x.json", *argv])
        assert args.handler(args) == 0 and seen["dora_norm"] == expected
