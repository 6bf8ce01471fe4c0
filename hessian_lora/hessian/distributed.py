"""Data-parallel Hessian-vector products under ``torch.distributed``.

Each rank holds every world-size-th batch; a product is the sum over ranks of each rank's summed per-batch
products, divided by the global count of loss tokens, so the result is the same token-weighted mean as in one
process. The solvers are deterministic given their seed, so every rank runs the same iteration on the same
(all-reduced) vectors. Run under ``torchrun``: :func:`init_from_environment` sets up the process group (gloo on
CPU, NCCL on CUDA) from the variables torchrun exports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from hessian_lora.core.errors import UserError

_Item = TypeVar("_Item")


def active() -> bool:
    """True when a torch.distributed process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world(mode: bool | str = "auto") -> tuple[int, int]:
    """(rank, world size) to shard over: (0, 1) unless a process group is up and ``mode`` allows it."""
    if mode not in (True, False, "auto"):
        raise UserError(f"distributed must be True, False or 'auto', got {mode!r}.")
    if mode is False:
        return 0, 1
    if not active():
        if mode is True:
            raise UserError(
                "distributed=True but no torch.distributed process group is running: "
                "launch with torchrun (and call init_from_environment())."
            )
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(items: Sequence[_Item], rank: int, world_size: int) -> list[_Item]:
    """Rank ``rank``'s share: items rank, rank + world_size, ... (round-robin balances batch lengths)."""
    if world_size > len(items):
        raise UserError(
            f"{world_size} processes but only {len(items)} batches: give more samples or fewer processes."
        )
    return list(items[rank::world_size])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place, when a multi-process group is active; otherwise the tensor itself."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def init_from_environment() -> bool:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1); True when one is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_main_process() -> bool:
    """True on rank 0 (and without a process group): the process that prints and writes."""
    return not active() or dist.get_rank() == 0


def broadcast_object(value: _Item) -> _Item:
    """Rank 0's value on every rank (e.g. a decision only rank 0 can make, such as reading a resume file)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
