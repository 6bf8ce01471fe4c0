"""Issue 9 through the sweep: the v2 methods train, prompt templates and evaluation sets reach the runs table."""

from __future__ import annotations

import json
from pathlib import Path

from sweep_helpers import tiny_config

from hessian_lora.core.store import open_store
from hessian_lora.methods.loft import PRECONDITIONER_NOTE
from hessian_lora.sweep.runner import run_sweep


def _rows(run_dir: Path) -> list[dict]:
    with open_store(run_dir, read_only=True) as store:
        return store.rows()


def test_v2_methods_train_in_a_sweep_and_loft_reports_its_note(tmp_path):
    hessian = {
        "init": False,
        "final": True,
        "samples": 4,
        "batch_size": 4,
        "max_iter": 20,
        "blocks": "per-module",
        "modules": "q_proj",
        "layers": "0",
    }
    config = tiny_config(
        methods=["loft", "gralora", "randlora"],
        lr=[1e-2],
        targets=["q_proj", "v_proj"],
        ranks=[4],
        steps=4,
        n_eval=4,
        hessian=hessian,
    )
    run_sweep(config, tmp_path, progress=False)
    rows = {row["method"]: row for row in _rows(tmp_path)}
    assert set(rows) == {"loft", "gralora", "randlora"}
    for row in rows.values():
        assert row["status"] == "done", row["error"]
        assert row["train_loss"] < row["initial_loss"] and row["lambda_final"] > 0
    assert rows["loft"]["precond_lambda_final"] is None  # not an Adam run: no diagonal preconditioner
    assert rows["gralora"]["precond_lambda_final"] > 0
    (report,) = (tmp_path / "hessian").glob("loft_*_final.json")
    assert json.loads(report.read_text())["source"]["preconditioner_note"] == PRECONDITIONER_NOTE


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVAL_TASK = [
    f"gsm8k:{FIXTURES / 'gsm8k.jsonl'}",
    f"math:{FIXTURES / 'math.jsonl'}",
    f"mbpp:{FIXTURES / 'mbpp.jsonl'}",
]


def test_eval_sets_are_scored_through_the_sweep_with_the_prompt_template(tmp_path, monkeypatch):
    from hessian_lora.inputs.tasks import ALPACA_TEMPLATE
    from hessian_lora.training import evaluate
    from hessian_lora.training.evalsets import load_eval_set

    sets = {spec.split(":")[0]: load_eval_set(spec) for spec in EVAL_TASK}
    # Known generations: the first problem of each set right, the others wrong; answers keyed by the prompt.
    answers = {}
    for name, eval_set in sets.items():
        for index, example in enumerate(eval_set.examples):
            if name == "mbpp":
                right, wrong = f"```python\n{example.response}\n```", "def nothing():\n    return None"
            else:
                right, wrong = f"The answer is {example.answer}", "The answer is 123456789"
            answers[example.prompt] = right if index == 0 else wrong
    seen_prompts: list[str] = []

    def fake_generate(model, tokenizer, prompts, **options):
        seen_prompts.extend(prompts)
        instructions = [
            prompt.split("### Instruction:\n", 1)[1].rsplit("\n\n### Response:", 1)[0] for prompt in prompts
        ]
        return [answers[text] for text in instructions]

    monkeypatch.setattr(evaluate, "generate_text", fake_generate)
    config = tiny_config(
        methods=["lora"],
        lr=[1e-2],
        targets=["q_proj"],
        ranks=[2],
        steps=2,
        n_eval=4,
        hessian={"init": False},
        max_length=384,
        eval={"accuracy": False, "batch_size": 4, "max_new_tokens": 4},
        prompt_template="alpaca",
        eval_task=EVAL_TASK,
    )
    run_sweep(config, tmp_path, progress=False)
    (row,) = _rows(tmp_path)
    assert row["status"] == "done", row["error"]
    assert row["gsm8k_acc"] == 1 / 4 and row["math_acc"] == 1 / 5 and row["mbpp_pass_at_1"] == 1 / 3
    assert row["humaneval_pass_at_1"] is None
    assert len(seen_prompts) == 12 and all(p.startswith(ALPACA_TEMPLATE.split("{")[0]) for p in seen_prompts)
    from hessian_lora.training.checkpoint import read_meta_dict

    (checkpoint,) = (tmp_path / "runs").iterdir()  # eigen on it formats its batches alike
    assert read_meta_dict(checkpoint)["extra"]["prompt_template"] == "alpaca"
    # MBPP ran the model's programs: the run's metadata says how they were confined.
    confinement = json.loads((checkpoint / "eval.json").read_text())["code_confinement"]
    assert confinement["level"] == "namespaces" and confinement["limits"]["RLIMIT_NPROC"] > 0


def test_eval_sets_run_on_the_tiny_model_and_record_their_metric(tmp_path):
    config = tiny_config(
        methods=["lora"],
        lr=[1e-2],
        targets=["q_proj"],
        ranks=[2],
        steps=2,
        n_eval=4,
        hessian={"init": False},
        max_length=384,
        eval={"batch_size": 8, "max_new_tokens": 4},
        eval_task=EVAL_TASK,
    )
    run_sweep(config, tmp_path, progress=False)
    (row,) = _rows(tmp_path)
    assert row["status"] == "done", row["error"]
    for column in ("gsm8k_acc", "math_acc", "mbpp_pass_at_1"):
        assert row[column] == 0.0  # a random tiny model solves nothing, but every set was scored


def test_the_prompt_template_changes_training_and_is_refused_when_bad():
    import pytest

    from hessian_lora.core.errors import UserError

    assert tiny_config().prompt_template == "chat" and tiny_config().eval_task == ()
    with pytest.raises(UserError, match="prompt template"):
        tiny_config(prompt_template="no placeholder")
    with pytest.raises(UserError, match="bad eval_task"):
        tiny_config(eval_task=["gsm8k"])
    assert tiny_config(prompt_template="Q: {instruction}\nA:").prompt_template == "Q: {instruction}\nA:"


def test_eval_set_metrics_reach_analysis(tmp_path, monkeypatch):
    from hessian_lora.analysis import analyze
    from hessian_lora.training import evaluate
    from hessian_lora.training.evalsets import load_eval_set

    golds = [f"The answer is {example.answer}" for example in load_eval_set(EVAL_TASK[0]).examples]
    calls = iter([golds[:1] + ["The answer is -1"] * 3, golds])
    monkeypatch.setattr(evaluate, "generate_text", lambda model, tok, prompts, **o: next(calls))
    config = tiny_config(
        methods=["lora"],
        lr=[1e-3, 1e-2],
        targets=["q_proj"],
        ranks=[2],
        steps=2,
        n_eval=4,
        hessian={"init": False},
        max_length=384,
        eval={"accuracy": False},
        eval_task=[EVAL_TASK[0]],
    )
    run_sweep(config, tmp_path, progress=False)
    assert sorted(row["gsm8k_acc"] for row in _rows(tmp_path)) == [0.25, 1.0]
    result = analyze(tmp_path, metric="gsm8k_acc")
    assert result.metric == "gsm8k_acc"


def test_a_sweep_that_runs_code_is_refused_before_any_run_where_nothing_confines_it(tmp_path, monkeypatch):
    import pytest

    from hessian_lora.core.errors import UserError
    from hessian_lora.training import sandbox

    unavailable = sandbox.Confinement("none", "none", reason="simulated: no user namespaces")
    monkeypatch.setattr(sandbox, "probe_confinement", lambda: unavailable)
    config = tiny_config(
        methods=["lora"],
        lr=[1e-2],
        targets=["q_proj"],
        ranks=[2],
        steps=2,
        n_eval=4,
        hessian={"init": False},
        max_length=384,
        eval_task=[EVAL_TASK[2]],
    )
    out = tmp_path / "sweep"
    with pytest.raises(UserError, match="--allow-unconfined-code") as caught:
        run_sweep(config, out, progress=False)
    assert "\n" not in str(caught.value) and not out.exists()  # refused in the preflight: nothing written
