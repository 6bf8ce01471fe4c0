"""The Ray backend: each run is one Ray task, on an existing cluster (``--address``) or a local Ray instance.

The driver (the ``hessian-lora sweep`` process) owns the store: it marks a run ``running`` when it submits it
and writes the row (and the run's JSON documents) when the task's result comes back, exactly as the local
backend does (both through :mod:`hessian_lora.sweep.bookkeeping`), so both produce the same rows. Tasks write
only the checkpoint (and Hessian reports) under RUN_DIR themselves: on a multi-node cluster RUN_DIR must be on
a filesystem every node shares, or set ``checkpoints: none``. Each worker needs hessian-lora installed in the same
version.

Requires the ``dist`` extra (``pip install 'hessian-lora[dist]'``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hessian_lora.core.errors import UserError
from hessian_lora.core.store import RunStore
from hessian_lora.settings.sweep import RunSpec, SweepConfig, config_from_dict
from hessian_lora.sweep.bookkeeping import begin_run, describe, end_run
from hessian_lora.sweep.execute import RunOutcome, execute_run, failed_row


def _import_ray() -> Any:
    """The ``ray`` module, or a :class:`UserError` that says how to install it."""
    try:
        import ray  # local: optional dependency (ray, the dist extra)
    except ImportError as exc:
        raise UserError(
            "the ray backend needs Ray: pip install 'hessian-lora[dist]' (or use --backend local)."
        ) from exc
    return ray


def ray_task(config_data: dict[str, Any], spec: RunSpec, run_dir: str, num_threads: int) -> RunOutcome:
    """Body of one Ray task: the same :func:`execute_run` as the local backend; exceptions become a failed row
    (so the traceback reaches the store, and a failing run never stops the others)."""
    torch.set_num_threads(max(1, num_threads))
    started = time.perf_counter()
    try:
        config = config_from_dict(config_data, source="ray task")
        return execute_run(config, spec, run_dir, progress=False)
    except Exception as exc:
        return RunOutcome(failed_row(exc, time.perf_counter() - started), {})


def run_on_ray(
    config: SweepConfig,
    root: Path,
    todo: Sequence[RunSpec],
    store: RunStore,
    *,
    address: str | None = None,
    progress: bool = True,
    on_run: Callable[[int], None] | None = None,
) -> None:
    """Submit every run in ``todo`` as a Ray task and record each result as it arrives (``on_run(k)`` after the
    k-th)."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=progress,
                configure_logging=False,
                ignore_reinit_error=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise UserError(
                f"could not start or reach {where} ({str(exc).splitlines()[0]}): check --address "
                "(e.g. ray://host:10001 or host:6379) and that the cluster is up."
            ) from exc
    try:
        remote = ray.remote(num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus, max_retries=0)(
            ray_task
        )
        config_data = config.to_dict()
        threads = max(1, int(config.ray.num_cpus))
        pending: dict[Any, RunSpec] = {}
        for spec in todo:
            begin_run(store, root, spec)
            pending[remote.remote(config_data, spec, str(root.resolve()), threads)] = spec
        with tqdm(
            total=len(todo),
            desc="sweep (ray)",
            unit="run",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except (
                    Exception
                ) as exc:  # the worker died (OOM kill, node loss): the run failed, the rest go on
                    outcome = RunOutcome(failed_row(exc, 0.0), {})
                end_run(store, root, spec, outcome, checkpoints=config.checkpoints)
                if progress:
                    bar.write(describe(spec, outcome.row), file=sys.stderr)
                bar.update(1)
                if on_run is not None:
                    on_run(bar.n)
    finally:
        if started_here:
            ray.shutdown()
