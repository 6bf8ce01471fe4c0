"""bench/gpu_check.sh's pipeline (bench/gpu_throughput.py) on tiny shapes on the CPU: the GPU check waits for a
session with a device, and this keeps it from breaking before then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_checks_pipeline_runs_on_tiny_shapes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(_ROOT / "bench" / "gpu_throughput.py"),
            "--tiny",
            "--threads",
            "1",
            "--scan-layers",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=_ROOT,
        timeout=600,
    )
    assert done.returncode in (0, 3), done.stderr[-3000:]
    out = done.stdout
    for expected in (
        "packed within",
        "memory plan on",
        "batching: loop",
        "packed/streamed:",
        "vmap/loop:",
        "whole adapter",
        "blocks per minute",
        "products per block",
    ):
        assert expected in out, (expected, out[-3000:])
    agree = float(out.split("products agree to ")[1].split(" ")[0])
    assert agree < 1e-5  # packed and chunked products are the streamed ones to float32 round-off


def test_the_gpu_check_script_is_valid_bash_and_runs_the_pipeline() -> None:
    script = _ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "bench/gpu_throughput.py --tiny" in text and "bench/gpu_throughput.py --minutes" in text
