from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import SHAPES
from tinylora import operator_for, synthetic_batches, tiny_lora, whole_block

from hessian_lora.core.errors import UserError
from hessian_lora.hessian import distributed, lanczos

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_two_gloo_processes_give_the_single_process_lambda_max(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path / "out")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]

    model = tiny_lora(dtype=torch.float64)
    batches = synthetic_batches(shapes=SHAPES)
    single = lanczos(operator_for(model, batches, whole_block(model)), which="both", tol=1e-10, max_iter=120)
    assert [r["local_batches"] for r in ranks] == [3, 2]  # round-robin shares of 5 batches
    tokens = sum(b.loss_tokens for b in batches)
    for record in ranks:
        assert record["total_tokens"] == tokens and record["converged"]
        assert record["lambda_max"] == pytest.approx(single.lambda_max, rel=1e-10)
        assert record["lambda_min"] == pytest.approx(single.lambda_min, rel=1e-10)
    assert ranks[0]["lambda_max"] == ranks[1]["lambda_max"]  # all-reduced: the ranks run the same iteration


def test_single_process_defaults() -> None:
    assert distributed.world("auto") == (0, 1) and distributed.world(False) == (0, 1)
    assert not distributed.active() and distributed.is_main_process()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.shard(list(range(5)), 1, 2) == [1, 3]
    with pytest.raises(UserError, match="torchrun"):
        distributed.world(True)
    with pytest.raises(UserError, match="batches"):
        distributed.shard([1], 0, 2)
