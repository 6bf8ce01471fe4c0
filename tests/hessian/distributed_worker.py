"""Run by test_distributed.py under ``torchrun --nproc_per_node 2``: λ_max of a tiny LoRA Hessian, data-parallel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers (tinylora)

from tinylora import operator_for, synthetic_batches, tiny_lora, whole_block

from hessian_lora.hessian import distributed, lanczos

SHAPES = ((2, 16, 6), (3, 12, 4), (1, 20, 5), (2, 9, 2), (3, 14, 7))


def main(out: str) -> None:
    torch.set_num_threads(1)
    assert distributed.init_from_environment(), "run me under torchrun with 2 processes"
    model = tiny_lora(dtype=torch.float64)
    operator = operator_for(model, synthetic_batches(shapes=SHAPES), whole_block(model))
    result = lanczos(operator, which="both", tol=1e-10, max_iter=120)
    rank = torch.distributed.get_rank()
    record = {
        "rank": rank,
        "local_batches": len(operator.batches),
        "total_tokens": operator.total_tokens,
        "lambda_max": result.lambda_max,
        "lambda_min": result.lambda_min,
        "hvps": result.hvps,
        "converged": result.converged,
    }
    Path(f"{out}.{rank}").write_text(json.dumps(record), encoding="utf-8")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
