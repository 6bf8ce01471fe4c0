"""Running a sweep: plan the grid, skip finished runs, run the rest, record each run as it ends.

One run (:func:`execute_run`) is a pure function of the config and its grid point: fresh base model, adapter,
optional λ_max at initialisation, training, evaluation, checkpoint, optional λ_max at the end. It returns the
row's values and the JSON documents to write; the caller (local loop or Ray driver) writes the documents
atomically and then marks the row final in one transaction, so a finished row always has its files.

A run that raises is recorded ``failed`` with its traceback and the sweep goes on; a diverging run is recorded
``diverged``. A run interrupted by a crash or a kill stays ``running`` and is restarted by the next sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from hessian_lora.errors import UserError
from hessian_lora.sweep.config import GRID_AXES, RunSpec, SweepConfig, config_from_dict
from hessian_lora.sweep.store import FINAL_STATUSES, RunStore, open_store, pending

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".sweep.lock"
RUNS_DIR = "runs"
HESSIAN_DIR = "hessian"
HISTORY_FILE = "history.json"
BACKENDS = ("local", "ray")
_MAX_ERROR_CHARS = 8000


@dataclass(frozen=True)
class RunOutcome:
    """What one run produced: the row's result columns, and JSON documents (path relative to RUN_DIR → data)."""

    row: dict[str, Any]
    documents: dict[str, Any]


@dataclass(frozen=True)
class SweepSummary:
    run_dir: Path
    planned: int
    skipped: int
    ran: int
    counts: dict[str, int]  # final statuses over the planned runs
    wall_seconds: float

    def line(self) -> str:
        counts = ", ".join(f"{count} {status}" for status, count in sorted(self.counts.items()))
        return (f"{self.planned} runs planned, {self.skipped} already finished, {self.ran} run now "
                f"({counts or 'none finished'}) in {self.wall_seconds:.1f} s; results in {self.run_dir}")


# ----------------------------------------------------------------------------------------------------------
# The run directory


def prepare_run_dir(config: SweepConfig, run_dir: Path, *, extend: bool = False) -> SweepConfig:
    """Create ``run_dir`` for ``config``, or check that it belongs to the same sweep.

    A directory made for other shared settings (model, task, steps, ...) is always refused: its rows would not
    be comparable. Different grid axes are refused unless ``extend``; then the stored config becomes the union
    of both grids (what the directory now holds) and is returned.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        if run_dir.is_dir() and any(entry.name != LOCK_FILE for entry in run_dir.iterdir()):
            raise UserError(f"{run_dir} exists, is not empty and holds no {CONFIG_FILE}: it is not a sweep "
                            "directory; pass a new or empty --out directory.")
        write_yaml(path, config.to_dict())
        return config
    stored = read_stored_config(run_dir)
    before, after = stored.shared_settings(), config.shared_settings()
    if before != after:
        changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
        raise UserError(f"{run_dir} holds a sweep with other settings ({', '.join(changed)}): its results would "
                        "not be comparable; pass a new --out directory, or restore those settings.")
    if _grid(stored) == _grid(config):
        return stored
    if not extend:
        stored_grid, new_grid = _grid(stored), _grid(config)
        added = [axis for axis, old, new in zip(GRID_AXES, stored_grid, new_grid) if new - old]
        removed = [axis for axis, old, new in zip(GRID_AXES, stored_grid, new_grid) if old - new]
        detail = "; ".join(part for part in (
            f"adds {', '.join(added)}" if added else "", f"drops {', '.join(removed)}" if removed else "") if part)
        raise UserError(f"the config's grid differs from the one in {run_dir} ({detail}): pass --extend to add "
                        "the new runs to this directory, or use a new --out directory.")
    merged = dataclasses.replace(stored, **{
        axis: _union(axis, getattr(stored, axis), getattr(config, axis)) for axis in GRID_AXES
    })
    write_yaml(path, merged.to_dict())
    return merged


def read_stored_config(run_dir: Path) -> SweepConfig:
    path = run_dir / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path} ({exc}): the run directory is damaged; use a new --out.") from exc
    return config_from_dict(data, source=str(path))


def _grid(config: SweepConfig) -> tuple[frozenset[Any], ...]:
    return tuple(frozenset(_point(axis, value) for value in getattr(config, axis)) for axis in GRID_AXES)


def _point(axis: str, value: Any) -> Any:
    """A grid value as the run key sees it: LRs that print alike in run ids are one point."""
    return f"{value:.4e}" if axis == "lrs" else value


def _union(axis: str, first: Sequence[Any], second: Sequence[Any]) -> tuple[Any, ...]:
    known = {_point(axis, item) for item in first}
    merged = tuple(first) + tuple(item for item in second if _point(axis, item) not in known)
    return tuple(sorted(merged)) if axis == "lrs" else merged


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, yaml.safe_dump(dict(data), sort_keys=False))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one (temp + fsync + replace)."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def sweep_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS even on SIGKILL): one sweep per directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unguarded
        yield
        return
    with open(run_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UserError(f"another sweep is running in {run_dir}: wait for it, or use another --out.") from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def clear_run_files(run_dir: Path, run_id: str) -> None:
    """Remove what an interrupted attempt of ``run_id`` may have left (its directory, staging directories)."""
    runs = run_dir / RUNS_DIR
    shutil.rmtree(runs / run_id, ignore_errors=True)
    if runs.is_dir():
        for leftover in runs.glob(f".{run_id}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
    (run_dir / HESSIAN_DIR / f"{run_id}_final.json").unlink(missing_ok=True)


def write_documents(run_dir: Path, documents: Mapping[str, Any]) -> None:
    for relative, data in documents.items():
        write_atomic(run_dir / relative, json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------
# One run


@functools.lru_cache(maxsize=4)
def _cached_task(spec: str, seed: int, n_train: int, n_eval: int) -> Any:
    from hessian_lora.data import load_task

    return load_task(spec, seed=seed, n_train=n_train, n_eval=n_eval)


def execute_run(
    config: SweepConfig,
    spec: RunSpec,
    run_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> RunOutcome:
    """Train, evaluate and measure one grid point; write its checkpoint; return its row and documents."""
    from hessian_lora.adapters import AdapterConfig, adapter_at_initialisation, make_optimizer
    from hessian_lora.checkpoint import CheckpointMeta, save_checkpoint
    from hessian_lora.data import make_batches
    from hessian_lora.evaluate import evaluate
    from hessian_lora.train import STATUS_DONE, TrainConfig, train

    start = time.perf_counter()
    root = Path(run_dir)
    task = _cached_task(config.task, config.data_seed, config.n_train, config.n_eval)
    if not task.train:
        raise UserError(f"task {config.task!r} has no training examples: raise n_train.")
    train_config = TrainConfig(
        lr=spec.lr, steps=config.steps_for(spec.batch_size), batch_size=spec.batch_size,
        micro_batch_size=config.micro_batch_size, warmup_ratio=config.warmup_ratio, betas=config.betas,
        weight_decay=config.weight_decay, eps=config.eps, max_grad_norm=config.max_grad_norm,
        max_length=config.max_length, seed=spec.seed, precision=config.precision,
        divergence_factor=config.divergence_factor, divergence_window=config.divergence_window,
    )
    adapter_config = AdapterConfig(
        method=spec.method, rank=spec.rank, alpha=config.alpha, dropout=config.dropout, targets=config.targets,
        seed=spec.seed, loraplus_ratio=config.loraplus_ratio, pissa_niter=config.pissa_niter,
    )
    # LoRA-GA estimates its gradient on the run's own first global batch.
    peft_model, tokenizer, _ = adapter_at_initialisation(
        config.model, adapter_config, model_seed=config.model_seed, attention=config.attention, device=device,
        train_examples=task.train, train_config=train_config)

    documents: dict[str, Any] = {}
    row: dict[str, Any] = {}
    hessian_batches = None
    if config.hessian.enabled:
        hessian_batches = make_batches(tokenizer, task.train[: config.hessian.samples], config.hessian.batch_size,
                                       max_length=config.max_length)
    hessian_seconds = 0.0
    if config.hessian.init:
        clock = time.perf_counter()
        report = _eigen_report(config, peft_model, hessian_batches,
                               out=root / HESSIAN_DIR / f"{spec.init_key}_init.json", progress=progress)
        row["lambda_init"] = _headline_lambda(report)
        hessian_seconds += time.perf_counter() - clock

    optimizer = make_optimizer(peft_model, adapter_config, spec.lr, betas=config.betas,
                               weight_decay=config.weight_decay, eps=config.eps)
    result = train(peft_model, tokenizer, task.train, train_config, optimizer=optimizer, progress=progress,
                   description=spec.run_id)
    history = list(result.history)
    documents[f"{RUNS_DIR}/{spec.run_id}/{HISTORY_FILE}"] = history
    row.update(status=result.status, train_loss=result.train_loss, initial_loss=result.initial_loss,
               steps=result.steps, tokens=result.tokens, history=history,
               error=result.stop_reason, train_seconds=result.wall_seconds)
    if result.status == STATUS_DONE:
        clock = time.perf_counter()
        evaluation = evaluate(peft_model, tokenizer, task, config.eval, progress=progress)
        row.update(eval_loss=evaluation.eval_loss, accuracy=evaluation.accuracy, pass_at_1=evaluation.pass_at_1,
                   eval_examples=evaluation.n_examples, eval_seconds=time.perf_counter() - clock)
        keep = config.checkpoints == "final"
        if keep or config.hessian.final:
            checkpoint_dir = root / RUNS_DIR / spec.run_id
            meta = CheckpointMeta.from_config(
                adapter_config, base_model=config.model, task=config.task, model_seed=config.model_seed,
                dtype=next(peft_model.parameters()).dtype, lr=spec.lr, step=result.steps,
                extra={"run_id": spec.run_id, "sweep": config.name, "batch_size": spec.batch_size},
            )
            save_checkpoint(checkpoint_dir, peft_model, meta, optimizer=optimizer)
            if config.hessian.final:
                del peft_model, optimizer  # the measurement reloads the checkpoint
                clock = time.perf_counter()
                report = _eigen_report(config, None, hessian_batches, checkpoint=checkpoint_dir, lr=spec.lr,
                                       out=root / HESSIAN_DIR / f"{spec.run_id}_final.json", progress=progress)
                row["lambda_final"] = _headline_lambda(report)
                row["precond_lambda_final"] = _headline_precond(report)
                hessian_seconds += time.perf_counter() - clock
            if keep:
                row["checkpoint"] = f"{RUNS_DIR}/{spec.run_id}"
            else:
                shutil.rmtree(checkpoint_dir)  # kept only for the measurement (checkpoints: none)
    if config.hessian.enabled:
        row["hessian_seconds"] = hessian_seconds
    row["wall_seconds"] = time.perf_counter() - start
    return RunOutcome(row=row, documents=documents)


def _eigen_report(
    config: SweepConfig,
    model: Any,
    batches: Any,
    *,
    out: Path,
    progress: bool,
    checkpoint: Path | None = None,
    lr: float | None = None,
) -> Any:
    """λ_max through :func:`hessian_lora.measure.measure`; its report is written to ``out`` (and resumed from it
    if present). No progress bars: the sweep's own bar reports the run."""
    from hessian_lora.measure import measure

    settings = config.hessian.measure
    if checkpoint is not None:
        return measure(checkpoint, batches, dataclasses.replace(settings, preconditioned=True, lr=lr), out=out,
                       progress=False)
    return measure(model, batches, settings, out=out, progress=False)


def _headline_lambda(report: Any) -> float | None:
    """The row's λ_max: the whole adapter's when measured as one block, else the largest over the blocks."""
    values = [block.lambda_max for block in report.blocks if block.lambda_max is not None]
    return max(values) if values else None


def _headline_precond(report: Any) -> float | None:
    values = [block.preconditioned.sharpness for block in report.blocks if block.preconditioned is not None]
    return max(values) if values else None


def failed_row(exc: BaseException, wall_seconds: float) -> dict[str, Any]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": "failed", "error": text[-_MAX_ERROR_CHARS:], "wall_seconds": wall_seconds}


# ----------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(
    config: SweepConfig,
    run_dir: str | os.PathLike[str],
    *,
    backend: str = "local",
    address: str | None = None,
    extend: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> SweepSummary:
    """Run every grid point of ``config`` not yet finished in ``run_dir`` (see the module docstring)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}.")
    if address is not None and backend != "ray":
        raise UserError("--address names a Ray cluster: add --backend ray.")
    start = time.perf_counter()
    root = Path(run_dir)
    with sweep_lock(root):
        prepare_run_dir(config, root, extend=extend)
        specs = config.runs()
        with open_store(root) as store:
            todo = pending(specs, store.statuses(), retry_failed=retry_failed)
            if todo:
                if backend == "local":
                    _run_local(config, root, todo, store, progress=progress, device=device)
                else:
                    from hessian_lora.sweep.ray_backend import run_on_ray

                    run_on_ray(config, root, todo, store, address=address, progress=progress)
            statuses = store.statuses()
    counts: dict[str, int] = {}
    for spec in specs:
        status = statuses.get(spec.run_id)
        if status in FINAL_STATUSES:
            counts[status] = counts.get(status, 0) + 1
    return SweepSummary(root, len(specs), len(specs) - len(todo), len(todo), counts, time.perf_counter() - start)


def begin_run(store: RunStore, root: Path, spec: RunSpec) -> None:
    """Mark ``spec`` running and clear what an earlier, interrupted attempt left."""
    store.start(spec)
    clear_run_files(root, spec.run_id)


def end_run(store: RunStore, root: Path, spec: RunSpec, outcome: RunOutcome) -> None:
    """Files first, then the row: a final row always has its documents on disk."""
    write_documents(root, outcome.documents)
    store.finish(spec.run_id, outcome.row)


def describe(spec: RunSpec, row: Mapping[str, Any]) -> str:
    parts = [f"{spec.method} r={spec.rank} seed={spec.seed} batch={spec.batch_size} lr={spec.lr:.3g}: {row['status']}"]
    for key in ("train_loss", "eval_loss", "accuracy", "lambda_init", "lambda_final"):
        value = row.get(key)
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
    if row.get("wall_seconds") is not None:
        parts.append(f"({row['wall_seconds']:.1f} s)")
    if row["status"] != "done" and row.get("error"):
        parts.append("- " + str(row["error"]).strip().splitlines()[-1][:200])
    return " ".join(parts)


def _run_local(
    config: SweepConfig,
    root: Path,
    todo: Sequence[RunSpec],
    store: RunStore,
    *,
    progress: bool,
    device: str | torch.device | None,
) -> None:
    with tqdm(total=len(todo), desc="sweep", unit="run", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for spec in todo:
            begin_run(store, root, spec)
            started = time.perf_counter()
            try:
                outcome = execute_run(config, spec, root, progress=progress, device=device)
            except Exception as exc:  # the sweep goes on; the row keeps the traceback
                outcome = RunOutcome(failed_row(exc, time.perf_counter() - started), {})
            end_run(store, root, spec, outcome)
            if progress:
                bar.write(describe(spec, outcome.row), file=sys.stderr)
            bar.update(1)
