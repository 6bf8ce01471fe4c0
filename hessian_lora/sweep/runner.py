"""Running a sweep: plan the grid, skip finished runs, hand the rest to a backend, summarise.

This module owns the plan: the run directory's config (:func:`prepare_run_dir`), the one-sweep-per-directory
lock, which runs are still to do (:func:`pending`) and the choice of backend. A run itself is
:func:`hessian_lora.sweep.execute.execute_run`; the local loop is :mod:`hessian_lora.sweep.local`, the Ray
driver :mod:`hessian_lora.sweep.ray_backend`; both record runs through :mod:`hessian_lora.sweep.bookkeeping`.

With ``search: adaptive`` (:mod:`hessian_lora.sweep.adaptive`) the runs come in rounds: each round is what the
search asks for given the rows so far, run like a grid (in parallel on Ray), until no search asks for more.

A run that raises is recorded ``failed`` with its traceback and the sweep goes on; a diverging run is recorded
``diverged``. A run interrupted by a crash or a kill stays ``running`` and is restarted by the next sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import yaml
from tqdm.auto import tqdm

from hessian_lora.core.atomic import remove_stale_temporaries, write_text_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import (
    CONFIG_FILE,
    FINAL_STATUSES,
    LOCK_FILE,
    USABLE_STATUSES,
    RunLayout,
    Status,
    lr_key,
)
from hessian_lora.core.store import open_store, read_rows, recover_unfinished_store
from hessian_lora.settings.sweep import GRID_AXES, RunSpec, SweepConfig, config_from_dict
from hessian_lora.sweep import adaptive
from hessian_lora.sweep.local import run_local
from hessian_lora.sweep.preflight import preflight
from hessian_lora.sweep.ray_backend import run_on_ray
from hessian_lora.sweep.retention import prune
from hessian_lora.training.adapters import reuse_adapters_at_init, reuse_budget_bytes

if TYPE_CHECKING:
    from hessian_lora.sweep.adaptive import AtInit

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = get_args(Backend)


@dataclass(frozen=True)
class SweepSummary:
    """What :func:`run_sweep` did: runs planned, skipped as finished, run now, and the final statuses.

    Attributes:
        run_dir: the run directory.
        planned: the runs the grid (or the search) planned.
        skipped: the runs skipped because they had finished before.
        ran: the runs run now.
        counts: the final statuses over the planned runs (status → count).
        wall_seconds: the sweep's wall time.
        errors: the failed runs' last error line → count.
        search: the adaptive search's status, one line per method and setting.
    """

    run_dir: Path
    planned: int
    skipped: int
    ran: int
    counts: dict[str, int]  # final statuses over the planned runs
    wall_seconds: float
    errors: dict[str, int] = dataclasses.field(default_factory=dict)  # failed runs: last error line → count
    search: tuple[str, ...] = field(default=())  # adaptive search: one status line per method-setting

    @property
    def failed(self) -> int:
        """Runs that failed."""
        return self.counts.get(Status.FAILED.value, 0)

    def line(self) -> str:
        """The one-line summary ``hessian-lora sweep`` prints at the end (after the search's lines, if any)."""
        counts = ", ".join(f"{count} {status}" for status, count in sorted(self.counts.items()))
        made = "asked for by the search" if self.search else "planned"
        return "\n".join(
            [
                *self.search,
                (
                    f"{self.planned} runs {made}, {self.skipped} already finished, {self.ran} run now "
                    f"({counts or 'none finished'}) in {self.wall_seconds:.1f} s; results in {self.run_dir}"
                ),
            ]
        )


# ----------------------------------------------------------------------------------------------------------
# The run directory


def prepare_run_dir(config: SweepConfig, run_dir: Path, *, extend: bool = False) -> SweepConfig:
    """Create ``run_dir`` for ``config``, or check that it belongs to the same sweep.

    A directory made for other shared settings (model, task, steps, ...) is always refused: its rows would not
    be comparable. Different grid axes are refused unless ``extend``; then the stored config becomes the union
    of both grids (what the directory now holds) and is returned. A directory that records no runs yet (a sweep
    stopped before its first run) takes the new config whatever it was made with.
    """
    effective, changed = plan_run_dir(config, run_dir, extend=extend)
    if changed:
        _write_config(RunLayout(run_dir).config, effective.to_dict())
    return effective


def plan_run_dir(config: SweepConfig, run_dir: Path, *, extend: bool = False) -> tuple[SweepConfig, bool]:
    """What :func:`prepare_run_dir` checks, without writing: (the config in effect, whether config.yaml changes)."""
    path = RunLayout(run_dir).config
    if not path.is_file() or not _recorded_statuses(run_dir):
        # The lock file is made before this check (the lock is taken first), so it does not count as content.
        if (
            not path.is_file()
            and run_dir.is_dir()
            and any(entry.name != LOCK_FILE for entry in run_dir.iterdir())
        ):
            raise UserError(
                f"{run_dir} exists, is not empty and holds no {CONFIG_FILE}: it is not a sweep "
                "directory; pass a new or empty --out directory."
            )
        return config, True
    stored = read_stored_config(run_dir)
    before, after = stored.shared_settings(), config.shared_settings()
    if before != after:
        changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
        raise UserError(
            f"{run_dir} holds a sweep with other settings ({', '.join(changed)}): its results would "
            "not be comparable; pass a new --out directory, or restore those settings."
        )
    # Gradient checkpointing gives the same gradients and only trades memory for time: the current config's
    # choice holds for the runs still to do (a sweep resumed on a smaller device switches it on).
    checkpointing = config.train.gradient_checkpointing
    moved = stored.train.gradient_checkpointing != checkpointing
    stored = dataclasses.replace(
        stored, train=dataclasses.replace(stored.train, gradient_checkpointing=checkpointing)
    )
    if _grid(stored) == _grid(config):
        return stored, moved
    if not extend:
        stored_grid, new_grid = _grid(stored), _grid(config)
        added = [axis for axis, old, new in zip(GRID_AXES, stored_grid, new_grid) if new - old]
        removed = [axis for axis, old, new in zip(GRID_AXES, stored_grid, new_grid) if old - new]
        detail = "; ".join(
            part
            for part in (
                f"adds {', '.join(added)}" if added else "",
                f"drops {', '.join(removed)}" if removed else "",
            )
            if part
        )
        raise UserError(
            f"the config's grid differs from the one in {run_dir} ({detail}): pass --extend to add "
            "the new runs to this directory, or use a new --out directory."
        )
    merged = dataclasses.replace(
        stored, **{axis: _union(axis, getattr(stored, axis), getattr(config, axis)) for axis in GRID_AXES}
    )
    return merged, True


def _recorded_statuses(run_dir: Path) -> dict[str, str]:
    """The runs ``run_dir``'s store records (read-only; empty when there is no store yet)."""
    if not RunLayout(run_dir).database.is_file():
        return {}
    return {row["run_id"]: row["status"] for row in read_rows(run_dir)}


def clean_stale_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files killed writes left in the run directory (call only under the sweep lock)."""
    layout = RunLayout(run_dir)
    removed: list[Path] = []
    for directory in (layout.root, layout.runs, layout.hessian, layout.figures):
        removed += remove_stale_temporaries(directory)
    return removed


def read_stored_config(run_dir: Path) -> SweepConfig:
    """The config a run directory was made (or last extended) with; a damaged file is a :class:`UserError`."""
    path = RunLayout(run_dir).config
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot read {path} ({reason}): the run directory is damaged; use a new --out."
        ) from exc
    if not isinstance(data, Mapping):
        raise UserError(
            f"{path} holds {type(data).__name__}, not a sweep config: the run directory is damaged; "
            "use a new --out."
        )
    return config_from_dict(data, source=str(path))


def _grid(config: SweepConfig) -> tuple[frozenset[Any], ...]:
    """Each grid axis as a set of points, in :data:`GRID_AXES` order."""
    return tuple(frozenset(_point(axis, value) for value in getattr(config, axis)) for axis in GRID_AXES)


def _point(axis: str, value: Any) -> Any:
    """A grid value as the run key sees it: LRs that print alike in run ids are one point."""
    return lr_key(value) if axis == "lrs" else value


def _union(axis: str, first: Sequence[Any], second: Sequence[Any]) -> tuple[Any, ...]:
    """``first`` then the new points of ``second``; LRs sorted, other axes in the order they were given."""
    known = {_point(axis, item) for item in first}
    merged = tuple(first) + tuple(item for item in second if _point(axis, item) not in known)
    return tuple(sorted(merged)) if axis == "lrs" else merged


def _write_config(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(dict(data), sort_keys=False))


@contextlib.contextmanager
def sweep_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS even on SIGKILL): one sweep per directory.

    A directory this call created is removed again when the sweep fails before it wrote anything but the lock
    (a config the preflight refused): bad input leaves nothing behind.
    """
    fresh = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # local: POSIX only (no flock elsewhere: the sweep runs unguarded)
    except ImportError:  # no flock on this platform: run unguarded
        try:
            yield
        except BaseException:
            if fresh:
                _remove_if_only_the_lock(run_dir)
            raise
        return
    with open(RunLayout(run_dir).lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UserError(
                f"another sweep is running in {run_dir}: wait for it, or use another --out."
            ) from exc
        try:
            yield
        except BaseException:
            if fresh:  # still holding the lock: no other sweep can be using the directory
                _remove_if_only_the_lock(run_dir)
            raise
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_if_only_the_lock(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        if [entry.name for entry in run_dir.iterdir()] == [LOCK_FILE]:
            RunLayout(run_dir).lock.unlink()
            run_dir.rmdir()


def pending(
    specs: Sequence[RunSpec], statuses: Mapping[str, str], *, retry_failed: bool = False
) -> list[RunSpec]:
    """The runs a sweep still has to do: never started, interrupted (``running``), or failed when retrying."""
    final = USABLE_STATUSES if retry_failed else FINAL_STATUSES
    return [spec for spec in specs if statuses.get(spec.run_id) not in final]


# ----------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(
    config: SweepConfig,
    run_dir: str | os.PathLike[str],
    *,
    backend: Backend = "local",
    address: str | None = None,
    extend: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    on_run: Callable[[int, int], None] | None = None,
    at_init: AtInit | None = None,
    source: str = "config",
) -> SweepSummary:
    """Run every grid point of ``config`` not yet finished in ``run_dir``.

    With ``search: adaptive``, every point the search asks for (see the module docstring). Finished runs are
    kept: a rerun resumes, and a changed config is refused unless ``extend``.

    Args:
        config: the sweep, from :func:`load_config` or ``config_from_dict``.
        run_dir: the run directory (created; its ``results.sqlite`` holds one row per run).
        backend: ``"local"`` (one run after another) or ``"ray"`` (fanned out over a Ray cluster).
        address: the Ray cluster's address (``backend="ray"``; default: a local cluster).
        extend: accept a config that adds grid points to an existing run directory.
        retry_failed: run again the runs recorded as failed.
        progress: show progress bars.
        device: where the runs train (default: CUDA when available).
        on_run: called as ``on_run(done, planned)`` after each run and once at the start: the runs finished so
            far and those planned (for a search, an upper bound).
        at_init: called with each adapter the search builds at initialisation for its centre
            (:data:`adaptive.AtInit`).
        source: where ``config`` came from (the YAML file), named by every preflight error.

    Returns:
        A :class:`SweepSummary`: runs planned, skipped as finished and run now, the final statuses, the distinct
        errors of failed runs with their counts, and the search's status lines.

    Raises:
        UserError: the preflight refused the config (nothing is written then), or the run directory holds
            another config.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}.")
    if address is not None and backend != "ray":
        raise UserError("--address names a Ray cluster: add --backend ray.")
    start = time.perf_counter()
    root = Path(run_dir)

    # Read before anything is written: a bad HESSIAN_LORA_REUSE_GIB stops the sweep with nothing to clean up.
    reuse_budget = reuse_budget_bytes() if backend == "local" else 0
    with sweep_lock(root):
        clean_stale_files(root)
        recover_unfinished_store(root)  # a first start killed while creating the store (an older version)
        effective, changed = plan_run_dir(config, root, extend=extend)
        specs = config.runs()
        calibration = None
        if config.search is not None or pending(specs, _recorded_statuses(root), retry_failed=retry_failed):
            # Before anything is written: a config whose runs would all fail the same way leaves no trace.

            checked = preflight(
                effective,
                device=device if backend == "local" else None,
                source=source,
                needs_calibration=_centres_missing(effective, root),
            )
            calibration = checked.calibration
        if changed:
            _write_config(RunLayout(root).config, effective.to_dict())
        # Runs of one method share its adapter at initialisation: built once (SVDs, LoRA-GA's gradients) and
        # copied, in this process (the local backend's runs and the search's centres; Ray workers build their own).
        with reuse_adapters_at_init(reuse_budget) if backend == "local" else contextlib.nullcontext():
            return _sweep_runs(
                config,
                root,
                specs,
                backend=backend,
                address=address,
                retry_failed=retry_failed,
                progress=progress,
                device=device,
                on_run=on_run,
                start=start,
                at_init=at_init,
                calibration=calibration,
            )


def _centres_missing(config: SweepConfig, root: Path) -> bool:
    """Whether an adaptive search still has centres to compute (then its calibration is read by the preflight)."""
    if config.search is None:
        return False

    centres = adaptive.read_centres(root)
    return any(key.centre_key not in centres for key in adaptive.search_keys(config))


def _sweep_runs(
    config: SweepConfig,
    root: Path,
    specs: Sequence[RunSpec],
    *,
    backend: Backend,
    address: str | None,
    retry_failed: bool,
    progress: bool,
    device: Any,
    on_run: Callable[[int, int], None] | None,
    start: float,
    at_init: AtInit | None,
    calibration: Any = None,
) -> SweepSummary:
    """The runs of a prepared run directory (inside the sweep lock): the search's rounds or the grid's pending."""
    if config.search is not None:
        return _run_search(
            config,
            root,
            backend=backend,
            address=address,
            retry_failed=retry_failed,
            progress=progress,
            device=device,
            on_run=on_run,
            start=start,
            at_init=at_init,
            calibration=calibration,
        )
    with open_store(root) as store:
        if config.checkpoints == "best":  # finish a pruning a kill interrupted (sweep/retention.py)
            prune(store, root)
        todo = pending(specs, store.statuses(), retry_failed=retry_failed)
        if on_run is not None:
            on_run(0, len(todo))
        if todo:
            _run_batch(
                config,
                root,
                todo,
                store,
                backend=backend,
                address=address,
                progress=progress,
                device=device,
                on_run=None if on_run is None else lambda done: on_run(done, len(todo)),
            )
        statuses = store.statuses()
        errors = _failure_summary(store, specs)
    return _summary(root, specs, statuses, len(specs) - len(todo), len(todo), start, errors)


def _run_batch(
    config: SweepConfig,
    root: Path,
    todo: Sequence[RunSpec],
    store: Any,
    *,
    backend: Backend,
    address: str | None,
    progress: bool,
    device: Any,
    on_run: Callable[[int], None] | None,
) -> None:
    """Run ``todo`` on the backend; ``on_run(k)`` after its k-th run."""
    if backend == "local":
        run_local(config, root, todo, store, progress=progress, device=device, on_run=on_run)
    else:  # ray_backend imports Ray itself, when a sweep runs on it (an optional dependency)
        run_on_ray(config, root, todo, store, address=address, progress=progress, on_run=on_run)


def _run_search(
    config: SweepConfig,
    root: Path,
    *,
    backend: Backend,
    address: str | None,
    retry_failed: bool,
    progress: bool,
    device: Any,
    on_run: Callable[[int, int], None] | None,
    start: float,
    at_init: AtInit | None = None,
    calibration: Any = None,
) -> SweepSummary:
    """The adaptive search's rounds, inside the sweep lock: ask every key for its round, run what is not
    finished, repeat until no key asks for more."""
    say = (lambda text: tqdm.write(text, file=sys.stderr)) if progress else None
    centres = adaptive.ensure_centres(
        config, root, progress=progress, device=device, say=say, at_init=at_init, calibration=calibration
    )
    metric, higher = adaptive.search_metric(config)
    ran = 0
    with open_store(root) as store:
        # --retry-failed: the failed rows found now are left out (so asked for and rerun) until rerun once.
        left_out = (
            {run_id for run_id, status in store.statuses().items() if status == Status.FAILED}
            if retry_failed
            else set()
        )
        while True:
            rows = store.rows()
            round_specs = adaptive.next_round(
                config, rows, centres, metric, higher, left_out=frozenset(left_out)
            )
            if not round_specs:
                break
            statuses = store.statuses()
            todo = [
                spec
                for spec in round_specs
                if statuses.get(spec.run_id) not in FINAL_STATUSES or spec.run_id in left_out
            ]
            if not todo:  # cannot happen with a well-formed store; never loop without running anything
                raise RuntimeError(f"the adaptive search asked for finished runs only: {round_specs}")
            report: Callable[[int], None] | None = None
            if on_run is not None:
                total = max(adaptive.planned_estimate(config, rows, centres, metric, higher), ran + len(todo))
                on_run(ran, total)
                report = functools.partial(_report_run, on_run, ran, total)
            _run_batch(
                config,
                root,
                todo,
                store,
                backend=backend,
                address=address,
                progress=progress,
                device=device,
                on_run=report,
            )
            ran += len(todo)
            left_out -= {spec.run_id for spec in todo}
        rows = store.rows()
        statuses = store.statuses()
        used = adaptive.used_specs(config, rows, centres, metric, higher)
        errors = _failure_summary(store, used)
    if on_run is not None:
        on_run(ran, ran)
    summary = _summary(root, used, statuses, max(len(used) - ran, 0), ran, start, errors)
    lines = adaptive.record_outcomes(config, root, rows, centres, metric, higher)  # search.json's searches
    return dataclasses.replace(summary, search=tuple(lines))


def _report_run(on_run: Callable[[int, int], None], before: int, total: int, done: int) -> None:
    on_run(before + done, total)


def _summary(
    root: Path,
    specs: Sequence[RunSpec],
    statuses: Mapping[str, str],
    skipped: int,
    ran: int,
    start: float,
    errors: dict[str, int],
) -> SweepSummary:
    counts: dict[str, int] = {}  # keyed by the stored (plain) status values
    for spec in specs:
        status = statuses.get(spec.run_id)
        if status in FINAL_STATUSES:
            counts[status] = counts.get(status, 0) + 1
    return SweepSummary(root, len(specs), skipped, ran, counts, time.perf_counter() - start, errors)


def _failure_summary(store: Any, specs: Sequence[RunSpec]) -> dict[str, int]:
    """The distinct errors of the planned runs recorded failed (each error's last line), with their counts."""
    wanted = {spec.run_id for spec in specs}
    errors: dict[str, int] = {}
    for row in store.rows():
        if row["run_id"] in wanted and row["status"] == Status.FAILED.value:
            lines = [line.strip() for line in str(row.get("error") or "").splitlines() if line.strip()]
            key = lines[-1][:300] if lines else "no error recorded"
            errors[key] = errors.get(key, 0) + 1
    return errors
