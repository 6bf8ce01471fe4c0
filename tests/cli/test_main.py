"""The foundation commands: ``methods``, ``init``, ``info``, and their bad-input behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hessian_lora.cli.main import main
from hessian_lora.inputs.models import load_model
from hessian_lora.methods.registry import METHODS
from hessian_lora.training.checkpoint import load_checkpoint


def test_methods_lists_every_method_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["method", "rewrites-base", "preserves-function"]
    assert [line.split()[0] for line in lines[1:]] == list(METHODS)
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows["pissa"] == ["yes", "yes"] and rows["lora"] == ["no", "yes"]
    assert lines[0].split()[3] == "params@Qwen3-0.6B,r=128"
    counts = {line.split()[0]: line.split()[3] for line in lines[1:]}
    assert counts["lora"] == "80.74M" and counts["dora"] == "81.08M" and counts["randlora"] == "68.84M"


@pytest.mark.parametrize("method", list(METHODS))
def test_init_then_info_for_every_method(
    method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / method
    code = main(
        [
            "init",
            "--model",
            "tiny-llama",
            "--method",
            method,
            "--rank",
            "4",
            "--seed",
            "2",
            "--loraga-batches",
            "2",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert str(out) in capsys.readouterr().out

    assert main(["info", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["method"] == method and facts["rank"] == 4 and facts["alpha"] == 4.0
    assert facts["step"] == 0 and facts["seed"] == 2 and facts["base_model"] == "tiny-llama"
    assert facts["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert facts["optimizer_state"] is None
    assert ("initial_adapter" in facts["residual_base"]) == METHODS[method].rewrites_base

    # The step-0 checkpoint computes the base model's function (the initial-function promise survives saving).
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    loaded = load_checkpoint(out, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids).logits,
            load_model("tiny-llama", device="cpu").model(input_ids=ids).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    assert facts["trainable_parameters"] == sum(
        p.numel() for p in loaded.model.parameters() if p.requires_grad
    )


def test_init_options_reach_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert (
        main(
            [
                "init",
                "--model",
                "tiny-llama",
                "--method",
                "rslora",
                "--rank",
                "2",
                "--alpha",
                "6",
                "--targets",
                "q_proj, v_proj",
                "--model-seed",
                "3",
                "--task",
                "arith",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rslora" in text and "q_proj,v_proj" in text and "model seed 3" in text
    assert "scale 4.24264" in text  # 6 / sqrt(2)
    assert "optimizer state   absent" in text


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["init", "--model", "tiny-llama", "--method", "vera", "--out", "{tmp}/x"], "unknown method 'vera'"),
        (["init", "--model", "llama-9000", "--method", "lora", "--out", "{tmp}/x"], "unknown model"),
        (["init", "--model", "tiny-llama", "--method", "lora", "--rank", "0", "--out", "{tmp}/x"], "rank"),
        (["init", "--model", "tiny-llama", "--method", "lora", "--rank", "-2", "--out", "{tmp}/x"], "rank"),
        (
            ["init", "--model", "tiny-llama", "--method", "lora", "--targets", "qkv", "--out", "{tmp}/x"],
            "target module",
        ),
        (["init", "--model", "./no/such/model", "--method", "lora", "--out", "{tmp}/x"], "does not exist"),
        (
            ["init", "--model", "tiny-llama", "--method", "lora", "--out", "{tmp}/occupied"],
            "not a hessian-lora",
        ),
        (["info", "{tmp}/missing"], "does not exist"),
        (["info", "{tmp}/occupied"], "not a hessian-lora checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("x")
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process: one stderr line, exit code 2."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hessian_lora",
            "init",
            "--model",
            "tiny-llama",
            "--method",
            "lora",
            "--rank",
            "0",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hessian-lora init: error: rank must be a positive integer, got 0: pass e.g. --rank 8."
    ]


def test_help_is_available_for_each_command() -> None:
    for command in ("methods", "init", "info"):
        assert main([command, "--help"]) == 0  # main returns argparse's exit code instead of raising


def test_init_on_smollm2_for_the_paper_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for method in ("lora", "pissa", "milora", "initab", "dora"):
        out = tmp_path / method
        assert (
            main(
                [
                    "init",
                    "--model",
                    "smollm2-135m",
                    "--method",
                    method,
                    "--rank",
                    "4",
                    "--targets",
                    "q_proj,v_proj",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert main(["info", str(out)]) == 0
        assert f"{method} (" in capsys.readouterr().out


def test_init_output_loads_in_plain_peft_and_info_reads_plain_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel

    from hessian_lora.training.adapters import trainable_parameters

    base_dir = tmp_path / "base"
    tiny = load_model("tiny-llama", device="cpu")
    tiny.model.save_pretrained(base_dir)
    tiny.tokenizer.save_pretrained(base_dir)
    out = tmp_path / "init"
    assert (
        main(
            [
                "init",
                "--model",
                str(base_dir),
                "--method",
                "dora",
                "--rank",
                "2",
                "--targets",
                "q_proj,v_proj",
                "--seed",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    ours = trainable_parameters(load_checkpoint(out, device="cpu").model)
    plain = PeftModel.from_pretrained(
        load_model(str(base_dir), device="cpu").model, str(out), is_trainable=True
    )
    theirs = trainable_parameters(plain)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)

    plain.save_pretrained(tmp_path / "plain")  # no hessian_lora.json
    assert main(["info", str(tmp_path / "plain"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert (
        facts["format"] == "peft"
        and facts["method"] == "dora"
        and facts["rank"] == 2
        and facts["alpha"] == 2.0
    )
    assert facts["targets"] == ["q_proj", "v_proj"] and facts["base_model"] == str(base_dir)
    assert facts["trainable_parameters"] == sum(p.numel() for p in theirs.values())
    assert main(["info", str(tmp_path / "plain")]) == 0
    text = capsys.readouterr().out
    assert "plain peft adapter directory" in text and "not needed" in text

    for directory in (tmp_path / "plain", out):  # a plain directory and a hessian-lora checkpoint alike
        weights = directory / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
        assert main(["info", str(directory)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "truncated" in err[0] and str(directory) in err[0]


def test_init_records_the_prompt_template_only_when_it_read_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hessian_lora.training.checkpoint import read_meta_dict

    common = [
        "init",
        "--model",
        "tiny-llama",
        "--rank",
        "2",
        "--targets",
        "v_proj",
        "--loraga-batches",
        "1",
        "--batch-size",
        "2",
        "--max-length",
        "256",
    ]
    assert (
        main([*common, "--method", "lora", "--prompt-template", "alpaca", "--out", str(tmp_path / "lora")])
        == 0
    )
    assert "prompt_template" not in read_meta_dict(tmp_path / "lora")["extra"]
    factors = {}
    for template in ("alpaca", "plain"):
        assert (
            main(
                [
                    *common,
                    "--method",
                    "loraga",
                    "--prompt-template",
                    template,
                    "--out",
                    str(tmp_path / template),
                ]
            )
            == 0
        )
        assert read_meta_dict(tmp_path / template)["extra"]["prompt_template"] == template
        factors[template] = load_checkpoint(tmp_path / template, device="cpu").model.state_dict()
    name = next(key for key in factors["plain"] if "lora_A" in key)
    assert not torch.equal(
        factors["alpaca"][name], factors["plain"][name]
    )  # the template shaped LoRA-GA's data
    assert (
        main([*common, "--method", "lora", "--prompt-template", "{nothing}", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "bad prompt template" in capsys.readouterr().err


def test_an_interrupt_that_comes_out_as_another_exception_is_still_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C inside an import can surface as another exception (numpy's interrupted lazy import recurses into a
    RecursionError): the CLI still ends with the interrupt's one line and exit 130."""
    import signal

    import hessian_lora.cli.main as cli

    def interrupted_import() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("SIGINT was not delivered")
        except KeyboardInterrupt:
            raise RecursionError("maximum recursion depth exceeded") from None

    monkeypatch.setattr(cli, "build_parser", interrupted_import)
    before = signal.getsignal(signal.SIGINT)  # not assumed: a runner may start the suite with SIGINT ignored
    assert main(["methods"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hessian-lora: interrupted; finished work is kept, rerun to resume."]
    assert signal.getsignal(signal.SIGINT) is before  # the handler was put back

    def other_error() -> None:
        raise RecursionError("a real bug")

    monkeypatch.setattr(cli, "build_parser", other_error)
    with pytest.raises(RecursionError):  # without a Ctrl-C, an error stays an error
        main(["methods"])
