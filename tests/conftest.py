"""Shared fixtures. Torch runs single-threaded: on this 2-core machine oversubscription costs 100x."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny():
    """A fresh tiny random Llama (seed 0) and its byte tokenizer, in eval mode on CPU."""
    from hessian_lora.inputs.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (converted once and cached); shared across the session, do not modify in place."""
    from hessian_lora.inputs.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture
def tiny_calibration(tmp_path):
    """A calibration file "measured" on tiny-llama, the arith task and rank 4 (η̂ = 0.05 / λ_max), so an adaptive
    sweep on the tiny config takes its centres from λ_max at initialisation."""
    import json
    from pathlib import Path

    import hessian_lora.measurement.measure as measure_module

    shipped = json.loads(
        (Path(measure_module.__file__).parents[1] / "sweep" / "calibrations" / "smollm2.json").read_text()
    )
    calibration = {
        **shipped,
        "fit": "inverse",
        "c": 0.05,
        "slope": None,
        "intercept": None,
        "probe": {**shipped["probe"], "model": "tiny-llama", "task": "arith", "rank": 4},
    }
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration))
    return path
