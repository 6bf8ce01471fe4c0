"""The good data every bad-input case sits beside, made once per session, and the check that it stays untouched."""

from __future__ import annotations

import shutil

import pytest
from bad_input_cases import GOOD_RECORDS, TINY, Good, fingerprint, sweep_yaml, write

from hessian_lora.cli.main import main


@pytest.fixture(scope="session")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    """A finished one-run sweep (``run``: checkpoint with optimizer state, λ_max at init; its ``config``), the
    run's ``checkpoint``, a step-0 checkpoint from ``init`` (``init``), a data file (``data``) and a plain peft
    copy of the checkpoint (``plain``: no hessian_lora.json, no optimizer state: what a Trainer leaves); their
    fingerprints are checked after every case."""
    root = tmp_path_factory.mktemp("good")
    config = write(root / "good.yaml", sweep_yaml({}))
    run_dir = root / "run"
    assert main(["sweep", str(config), "--out", str(run_dir), "--threads", "1", "--quiet"]) == 0
    (checkpoint,) = [path for path in (run_dir / "runs").iterdir()]
    init = root / "init"
    assert (
        main(
            [
                "init",
                *TINY,
                "--method",
                "lora",
                "--rank",
                "2",
                "--targets",
                "q_proj,v_proj",
                "--out",
                str(init),
            ]
        )
        == 0
    )
    data = write(root / "data.json", GOOD_RECORDS)
    plain = root / "plain"
    shutil.copytree(checkpoint, plain, ignore=shutil.ignore_patterns("hessian_lora.json", "optimizer.pt"))
    return {
        "root": root,
        "config": config,
        "run": run_dir,
        "checkpoint": checkpoint,
        "init": init,
        "data": data,
        "plain": plain,
    }


@pytest.fixture
def untouched(good: Good):
    """Fails the test if any file of the good data changed while it ran."""
    before = fingerprint(good["root"])
    yield
    assert fingerprint(good["root"]) == before, "good data next to the bad input changed"
