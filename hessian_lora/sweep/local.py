"""The local backend: the sweep's runs one after another in this process."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hessian_lora.core.store import RunStore
from hessian_lora.settings.sweep import RunSpec, SweepConfig
from hessian_lora.sweep.bookkeeping import begin_run, describe, end_run
from hessian_lora.sweep.execute import RunOutcome, execute_run, failed_row


def run_local(
    config: SweepConfig,
    root: Path,
    todo: Sequence[RunSpec],
    store: RunStore,
    *,
    progress: bool,
    device: str | torch.device | None,
    on_run: Callable[[int], None] | None = None,
) -> None:
    """Run every spec of ``todo`` in order, recording each as it ends; a run that raises is recorded failed.
    ``on_run(k)`` is called after the k-th run is recorded."""
    with tqdm(
        total=len(todo),
        desc="sweep",
        unit="run",
        file=sys.stderr,
        disable=None if progress else True,
        dynamic_ncols=True,
    ) as bar:
        for done, spec in enumerate(todo, start=1):
            begin_run(store, root, spec)
            started = time.perf_counter()
            try:
                outcome = execute_run(config, spec, root, progress=progress, device=device)
            except Exception as exc:  # the sweep goes on; the row keeps the traceback
                outcome = RunOutcome(failed_row(exc, time.perf_counter() - started), {})
            end_run(store, root, spec, outcome, checkpoints=config.checkpoints)
            if progress:
                bar.write(describe(spec, outcome.row), file=sys.stderr)
            bar.update(1)
            if on_run is not None:
                on_run(done)
