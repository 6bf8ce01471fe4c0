"""λ_max at initialisation measured once per distinct adapter: a seed whose adapter at init is bit-identical to
another seed's reuses that seed's report instead of measuring it again.

PiSSA, MiLoRA and OLoRA build their adapters from the base weights alone (an SVD or a QR, no random draw), so
every seed of a sweep starts from the same adapter, and a λ probe on 64 examples costs 5–7 minutes on SmolLM2 here
(hours at the paper's scale). Identity is decided by a digest, never by the method's name: SHA-256 over every
parameter and buffer of the adapted model (name, dtype, shape, whether it is trained, bytes), the Hessian
batches' tensors and the measurement settings. Equal digests mean the solver gets bitwise-equal inputs (its start
vector is fixed by the settings' seed), so its result is the report already written. A randomised SVD
(``pissa_niter``), LoRA-GA's gradient on the run's own first batch, every random init and a change of thread
count that moves an SVD's last bits give other digests, and those seeds are measured.

The record sits beside the report, ``hessian/<key>_init.inputs`` (:class:`~hessian_lora.core.rundir.RunLayout`):
``{"sha256": ..., "reused_from": "<key>" | null}``. It describes the inputs the report was measured on, so it is
written once and never overwritten; a report from before these records gets one the first time its key runs
again (the sweep already resumes such a report as that key's). The analysis' cost section counts a reused report
once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hessian_lora.core.atomic import write_bytes_atomic, write_json_atomic
from hessian_lora.core.rundir import InitKey, RunLayout, read_init_inputs
from hessian_lora.inputs.tasks import TokenBatch


def inputs_digest(model: nn.Module, batches: Sequence[TokenBatch], settings: Mapping[str, Any]) -> str:
    """SHA-256 of what a λ probe of ``model`` on ``batches`` with ``settings`` computes from."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        _update(digest, name, tensor)
    for index, batch in enumerate(batches):
        for field in ("input_ids", "attention_mask", "labels"):
            _update(digest, f"batch{index}.{field}", getattr(batch, field))
    return digest.hexdigest()


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach()
    digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|{tensor.requires_grad}\n".encode())
    # the bytes as stored, whatever the dtype (bf16 has no numpy type; its uint8 view does)
    digest.update(data.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().data)


def reuse_identical_report(layout: RunLayout, key: InitKey, digest: str) -> InitKey | None:
    """Record ``key``'s inputs; when ``key`` has no report yet and another key's report was measured on the same
    inputs, copy that report to ``key``'s path and return that key (None: ``key`` is measured as usual)."""
    target = layout.init_report(key)
    records = read_init_inputs(layout)
    if target.is_file():
        if key not in records:  # a report from before the records: it was measured on this key's adapter
            write_json_atomic(layout.init_inputs(key), {"sha256": digest, "reused_from": None})
        return None
    source = next(
        (
            other
            for other, record in sorted(records.items())
            if other != key and record["sha256"] == digest and layout.init_report(other).is_file()
        ),
        None,
    )
    if source is not None:
        write_bytes_atomic(target, layout.init_report(source).read_bytes())
    write_json_atomic(
        layout.init_inputs(key),
        {"sha256": digest, "reused_from": str(source) if source is not None else None},
    )
    return source
