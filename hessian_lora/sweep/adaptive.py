"""``search: adaptive`` inside a sweep: each method's centre (``search.json``), the rounds, the status lines.

The search itself is :mod:`hessian_lora.settings.search` (pure, replayed from the rows). This module feeds it:

- **Keys.** One search per (method, rank, batch size), seeds averaged: every point of a round runs for every
  seed of the config, and a point counts as observed when all its seeds have a final row; its value is the
  seed mean of the metric, as analysis averages seeds before it fits η*. (One search per seed would give each
  seed its own LR set and a seed-mean curve with holes.) A diverged seed scores 0 accuracy (as analysis counts
  it) or no loss; a failed one no metric, and a point any seed of which has no metric scores worst.
- **Centres.** One per (method, rank), computed once and kept in ``RUN_DIR/search.json`` (written atomically
  after each), shared by the key's batch sizes: recommend's η̂ = calibration(λ_max at initialisation of the
  first seed's adapter) when the calibration (``search.calibration``, default the shipped one) was measured on
  this sweep's model, task and rank; otherwise :func:`~hessian_lora.settings.search.grid_center` of the config's
  ``lr``. With ``hessian.init`` the probe *is* the sweep's λ at initialisation: it is measured with the sweep's
  settings into ``hessian/<method>_r<rank>_s<seed>_init.json``, from which every run then resumes instead of
  measuring again. Without it, λ is measured with the calibration's probe settings into that same file (the
  λ at initialisation analysis reads).
- **Which metric decides.** ``search.metric`` (auto: accuracy when the task has a scorer) unless it is flat or
  missing on every point of the first bracket (accuracy 0.0 in all three runs of a model that answers nothing
  right, a column no run recorded): then the key's search starts over on ``search.fallback`` (the held-out loss),
  whose first bracket is the same three runs, so nothing is rerun. The choice is a function of the bracket's rows
  only, so a resumed sweep makes the same choice. The status lines and ``search.json``'s ``searches`` say which
  metric decided and why, and what the search found (``located`` only for an interior optimum resolved to
  ``resolution``; see :mod:`hessian_lora.settings.search`).
- **Honest centres.** ``search.leave_method_out``: the calibration is refitted without the searched method's own
  point (same fit kind, the other methods' (λ, η*)), so a method's centre never rests on the η* the search is
  meant to find; methods the calibration does not hold use it as it is. ``search.json`` records which.
- **Rows.** Final rows are observed; ``running`` rows (an interrupted sweep) are left out, so the search asks
  for them again and they are rerun; with ``--retry-failed`` the failed rows found at the start are left out
  once, so they are rerun once.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hessian_lora.analysis.relation import fit_inverse_constant, fit_power_law
from hessian_lora.analysis.runs import read_outcomes  # noqa: F401  (its home is runs.py; re-exported for callers here)
from hessian_lora.core.atomic import write_json_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.core.metrics import HIGHER_IS_BETTER, SCORE_METRICS
from hessian_lora.core.rundir import InitKey, RunLayout, Status
from hessian_lora.inputs.tasks import make_batches
from hessian_lora.measurement.measure import MeasureSettings, measure
from hessian_lora.measurement.targets import AdaptedModule
from hessian_lora.settings.search import (
    AdaptiveSearch,
    SearchStatus,
    first_bracket,
    grid_center,
    is_flat,
    next_points,
    replay,
    search_status,
)
from hessian_lora.settings.sweep import RunSpec, SweepConfig
from hessian_lora.sweep.execute import cached_task, eigen_report
from hessian_lora.sweep.recommend import lambda_from_report, load_calibration, probe_batches
from hessian_lora.training.adapters import adapter_at_initialisation

SEARCH_FORMAT = 1


@dataclass(frozen=True)
class SearchKey:
    """One adaptive search: a method-setting, seeds averaged."""

    method: str
    rank: int
    batch_size: int

    @property
    def centre_key(self) -> str:
        """The centre's name in search.json: shared by the batch sizes of a (method, rank)."""
        return f"{self.method}_r{self.rank}"

    def __str__(self) -> str:
        return f"{self.method} r={self.rank} batch={self.batch_size}"


def search_keys(config: SweepConfig) -> list[SearchKey]:
    """The searches of ``config``, in the order of :meth:`SweepConfig.runs`."""
    return [
        SearchKey(method, rank, batch)
        for method in config.methods
        for rank in config.ranks
        for batch in config.batch_sizes
    ]


def search_metric(config: SweepConfig) -> tuple[str, bool]:
    """(metric, higher is better): ``search.metric``, or for ``auto`` accuracy when the runs measure it (the
    task has a scorer and ``eval.accuracy`` is on), else eval_loss; the same default analysis picks."""
    settings = _settings(config)
    metric = settings.metric
    if metric == "auto":
        task = cached_task(config.task, config.data_seed, config.n_train, config.n_eval)
        metric = "accuracy" if config.eval.accuracy and task.scorer is not None and task.eval else "eval_loss"
    return metric, HIGHER_IS_BETTER[metric]


def _settings(config: SweepConfig) -> AdaptiveSearch:
    if config.search is None:
        raise ValueError("the sweep config has no adaptive search")
    return config.search


# ----------------------------------------------------------------------------------------------------------
# Centres


def read_centres(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The centres in ``RUN_DIR/search.json`` (empty when there is none yet)."""
    path = RunLayout(run_dir).search
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        centres = data["centres"]
        if not isinstance(centres, dict) or not all(
            isinstance(item, dict) and item.get("lr", 0) > 0 for item in centres.values()
        ):
            raise TypeError("centres must map names to {lr: ...}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}): delete it to compute the search centres again.") from exc
    return centres


AtInit = Callable[[Any, Any, InitKey], None]
"""``at_init(model, tokenizer, key)``: called with each adapter a centre builds at initialisation, after its λ_max
is measured, so a caller can measure more on the same adapter instead of building it again (the demo's
per-module scan: an SVD-initialised adapter of SmolLM2 takes 5-17 s to build)."""


def ensure_centres(
    config: SweepConfig,
    run_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    device: Any = None,
    say: Callable[[str], None] | None = None,
    at_init: AtInit | None = None,
    calibration: Any = None,
) -> dict[str, dict[str, Any]]:
    """Every (method, rank)'s centre: read from search.json, or computed now and added to it (atomically, one
    at a time, so a kill loses at most the one being measured). ``at_init``: see :data:`AtInit`.
    ``calibration``: the search's calibration when the caller (the preflight) already read it."""
    layout = RunLayout(run_dir)
    centres = read_centres(run_dir)
    for key in search_keys(config):
        if key.centre_key in centres:
            continue
        if calibration is None:
            calibration = load_calibration(_settings(config).calibration)
        clock = time.perf_counter()
        centre = compute_centre(
            config,
            layout,
            key.method,
            key.rank,
            calibration,
            progress=progress,
            device=device,
            at_init=at_init,
        )
        centre["seconds"] = round(time.perf_counter() - clock, 2)
        centres[key.centre_key] = centre
        write_json_atomic(layout.search, {"format": SEARCH_FORMAT, "centres": centres}, indent=2)
        if say is not None:
            say(f"search centre {key.centre_key}: {describe_centre(centre)}")
    return centres


def leave_method_out(calibration: Any, method: str) -> Any:
    """``calibration`` refitted on every point but ``method``'s (the same fit kind; ``inverse`` when fewer than
    two distinct λ remain for a power law). A UserError when fewer than two points would remain."""
    points = {name: point for name, point in calibration.points.items() if name != method}
    if len(points) < 2:
        raise UserError(
            f"search.leave_method_out: the calibration holds {len(calibration.points)} methods, so "
            f"without {method} fewer than 2 remain to fit: use a calibration with more methods, or "
            "set leave_method_out: false."
        )
    lambdas = [float(point["lambda_max"]) for point in points.values()]
    etas = [float(point["eta_star"]) for point in points.values()]
    c, _ = fit_inverse_constant(lambdas, etas)
    fit, slope, intercept = "inverse", None, None
    if calibration.fit == "power" and len(set(lambdas)) >= 2:
        power = fit_power_law(lambdas, etas)
        fit, slope, intercept = "power", power.slope, power.intercept
    provenance = {**calibration.provenance, "left_out": method}
    return replace(
        calibration,
        fit=fit,
        c=c,
        slope=slope,
        intercept=intercept,
        points=points,
        provenance=provenance,
        log10_error=None,
        n_interior=len(points),
    )


def describe_centre(centre: Mapping[str, Any]) -> str:
    """A search centre in one line: η̂ from a calibration, or the grid's centre."""
    if centre.get("source") == "calibration":
        if centre.get("left_out"):
            how = f", refitted without {centre['left_out']}'s own point"
        else:
            how = "" if centre.get("calibrated_method") else ", method not in the calibration"
        return (
            f"η̂ = {centre['lr']:.3g} from λ_max at init {centre['lambda_max']:.4g} "
            f"({centre.get('fit')} fit{how})"
        )
    return f"{centre['lr']:.3g}, the grid's centre ({centre.get('reason')})"


def compute_centre(
    config: SweepConfig,
    layout: RunLayout,
    method: str,
    rank: int,
    calibration: Any,
    *,
    progress: bool = False,
    device: Any = None,
    at_init: AtInit | None = None,
) -> dict[str, Any]:
    """One centre: η̂ from a λ_max probe where the calibration applies, else the grid's centre (see the module
    docstring)."""
    grid = grid_center(config.lrs)
    probe = calibration.probe
    other = [
        what
        for what, ours, theirs in (
            ("model", config.model, probe.get("model")),
            ("task", config.task, probe.get("task")),
            ("rank", rank, probe.get("rank")),
        )
        if theirs is not None and ours != theirs
    ]
    if other:
        return {
            "lr": grid,
            "source": "grid",
            "reason": f"the calibration was measured with another {', '.join(other)}",
        }
    seed = config.seeds[0]
    key = InitKey(method, rank, seed)
    left_out = None
    if _settings(config).leave_method_out and method in calibration.points:
        calibration, left_out = leave_method_out(calibration, method), method
    try:
        lambda_max = _lambda_at_init(
            config, layout, key, calibration, progress=progress, device=device, at_init=at_init
        )
        eta = calibration.predict(lambda_max)
    except UserError as exc:  # no positive curvature, or the report lacks the calibration's λ: fall back
        return {"lr": grid, "source": "grid", "reason": f"no prediction: {exc}"}
    if not (eta > 0 and math.isfinite(eta)):
        return {"lr": grid, "source": "grid", "reason": f"the prediction {eta!r} is not a learning rate"}
    return {
        "lr": eta,
        "source": "calibration",
        "lambda_max": lambda_max,
        "init_report": str(layout.init_report(key).relative_to(layout.root)),
        "fit": calibration.fit,
        "calibrated_method": method in calibration.points,
        "calibration": str(
            calibration.provenance.get("sweep") or calibration.provenance.get("run_dir") or "given"
        ),
        **({"left_out": left_out, "fit_methods": sorted(calibration.points)} if left_out else {}),
    }


def _lambda_at_init(
    config: SweepConfig,
    layout: RunLayout,
    key: InitKey,
    calibration: Any,
    *,
    progress: bool,
    device: Any,
    at_init: AtInit | None = None,
) -> float:
    """λ_max of (method, rank, seed)'s adapter at initialisation, written to its ``_init.json`` report."""
    task = cached_task(config.task, config.data_seed, config.n_train, config.n_eval)
    # Built as execute_run builds it (LoRA-GA: on the first global batch of the first batch size).
    adapter_config = config.adapter_for(key.method, key.rank, key.seed)
    train_config = config.train_for(config.lrs[0], config.batch_sizes[0], key.seed)
    model, tokenizer, _ = adapter_at_initialisation(
        config.model,
        adapter_config,
        model_seed=config.model_seed,
        attention=config.attention,
        device=device,
        train_examples=task.train,
        train_config=train_config,
    )
    out = layout.init_report(key)
    if config.hessian.init:  # the sweep's own measurement: every run resumes from this file
        batches = make_batches(
            tokenizer,
            task.train[: config.hessian.samples],
            config.hessian.batch_size,
            max_length=config.max_length,
            prompt_template=config.prompt_template,
        )
        report = eigen_report(config, model, batches, out=out, progress=progress)
    else:  # measured as the calibration's probe was
        probe = calibration.probe
        per_module = probe.get("blocks") == "per-module"
        settings = replace(
            MeasureSettings.from_mapping(
                probe.get("eigen_options") or {}, source="the calibration's eigen_options"
            ),
            blocks=str(probe.get("blocks") or "whole"),
            modules=probe.get("modules") if per_module else None,
            layers=probe.get("layers") if per_module else None,
            max_length=int(probe.get("max_length") or 512),
        )
        batches = probe_batches(
            tokenizer,
            config.task,
            data_seed=config.data_seed,
            n_train=config.n_train,
            n_eval=config.n_eval,
            samples=int(probe.get("samples") or 32),
            batch_size=int(probe.get("batch_size") or 8),
            max_length=int(probe.get("max_length") or 512),
            prompt_template=config.prompt_template,
        )
        report = measure(AdaptedModule(model), settings, batches=batches, out=out, progress=progress)
    lambda_max = lambda_from_report(report, calibration.lambda_source)
    if at_init is not None:
        at_init(model, tokenizer, key)
    return lambda_max


# ----------------------------------------------------------------------------------------------------------
# Rounds


def observed(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    key: SearchKey,
    metric: str,
    *,
    left_out: frozenset[str] = frozenset(),
) -> dict[float, float | None]:
    """LR → seed-mean metric of ``key``'s points whose every seed has a final row (``left_out`` run ids and
    ``running`` rows do not count, so they are asked for again)."""
    by_lr: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        if (row["method"], row["rank"], row["batch_size"]) == (key.method, key.rank, key.batch_size) and row[
            "seed"
        ] in config.seeds:
            by_lr.setdefault(f"{row['lr']:.4e}", {})[row["seed"]] = row
    result: dict[float, float | None] = {}
    for seeds in by_lr.values():
        if set(seeds) != set(config.seeds):
            continue
        values = []
        for row in seeds.values():
            if (
                row["status"] not in (Status.DONE, Status.DIVERGED, Status.FAILED)
                or row["run_id"] in left_out
            ):
                break
            values.append(_value(row, metric))
        else:
            lr = float(next(iter(seeds.values()))["lr"])
            result[lr] = None if None in values else sum(values) / len(values)
    return result


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    if value is None and row["status"] == Status.DIVERGED and metric in SCORE_METRICS:
        return 0.0  # a diverged run answers nothing right (analysis.curves.metric_value)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


@dataclass(frozen=True)
class KeySearch:
    """One key's search as the rows show it: the metric that decides (and why), its observations, its status."""

    key: SearchKey
    metric: str
    higher_is_better: bool
    observed: dict[float, float | None]
    centre: float
    status: SearchStatus
    fallback_reason: str | None = None  # why ``metric`` is not the configured one (None: it is)

    def to_dict(self, configured: str) -> dict[str, Any]:
        """The search's entry in search.json's ``searches`` (``configured``: the metric the config asked for)."""
        return {
            "metric": self.metric,
            "configured_metric": configured,
            "fallback_reason": self.fallback_reason,
            "outcome": self.status.outcome,
            "located": self.status.located,
            "best_lr": self.status.best_lr,
            "censored": self.status.censored,
            "done": self.status.done,
            "runs": len(self.observed),
            "reason": self.status.reason,
        }


def key_search(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    key: SearchKey,
    centre: float,
    metric: str,
    higher_is_better: bool,
    *,
    left_out: frozenset[str] = frozenset(),
) -> KeySearch:
    """``key``'s search on ``metric``, or on ``search.fallback`` when ``metric`` is flat or missing on every point
    of the first bracket (see the module docstring)."""
    settings = _settings(config)
    seen = observed(config, rows, key, metric, left_out=left_out)
    reason = None
    if settings.fallback not in ("none", metric):
        bracket = first_bracket(centre, settings)
        if all(lr in seen for lr in bracket):  # the choice waits for the whole bracket
            values = [seen[lr] for lr in bracket]
            if all(value is None for value in values):
                reason = f"{metric} missing in all {len(bracket)} runs of the first bracket"
            elif is_flat(values, settings):
                shown = sorted({float(value) for value in values if value is not None})
                reason = (
                    f"{metric} flat on the first bracket ({', '.join(f'{value:.4g}' for value in shown)} in "
                    f"all {len(bracket)} runs)"
                )
    if reason is not None:
        fallback = observed(config, rows, key, settings.fallback, left_out=left_out)
        if all(fallback.get(lr) is None for lr in first_bracket(centre, settings)):
            # The fallback was not recorded either (no held-out set, every run failed): nothing to switch to;
            # the configured metric's search stops and says it is flat or missing.
            reason = None
        else:
            metric, higher_is_better, seen = settings.fallback, HIGHER_IS_BETTER[settings.fallback], fallback
    status = search_status(seen, center=centre, settings=settings, higher_is_better=higher_is_better)
    return KeySearch(key, metric, higher_is_better, seen, centre, status, reason)


def key_searches(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    centres: Mapping[str, Mapping[str, Any]],
    metric: str,
    higher_is_better: bool,
    *,
    left_out: frozenset[str] = frozenset(),
) -> list[KeySearch]:
    """Every search key's search as the rows stand (the metric that decides it, its centre, its status)."""
    return [
        key_search(
            config, rows, key, centres[key.centre_key]["lr"], metric, higher_is_better, left_out=left_out
        )
        for key in search_keys(config)
    ]


def next_round(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    centres: Mapping[str, Mapping[str, Any]],
    metric: str,
    higher_is_better: bool,
    *,
    left_out: frozenset[str] = frozenset(),
) -> list[RunSpec]:
    """Every run the current round of every key asks for (each point for every seed), finished or not."""
    settings = _settings(config)
    specs = []
    for search in key_searches(config, rows, centres, metric, higher_is_better, left_out=left_out):
        points = next_points(
            search.observed, center=search.centre, settings=settings, higher_is_better=search.higher_is_better
        )
        key = search.key
        specs += [
            RunSpec(key.method, lr, seed, key.rank, key.batch_size) for seed in config.seeds for lr in points
        ]
    return specs


def used_specs(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    centres: Mapping[str, Mapping[str, Any]],
    metric: str,
    higher_is_better: bool,
) -> list[RunSpec]:
    """The runs the searches have used so far (their points, for every seed): the rows the search made."""
    settings = _settings(config)
    specs = []
    for search in key_searches(config, rows, centres, metric, higher_is_better):
        known, pending, _ = replay(search.observed, search.centre, settings, search.higher_is_better)
        key = search.key
        specs += [
            RunSpec(key.method, settings.lattice_lr(k), seed, key.rank, key.batch_size)
            for seed in config.seeds
            for k in sorted({*known, *pending})
        ]
    return specs


def status_line(search: KeySearch, centre: Mapping[str, Any]) -> str:
    """Where one key's search stands, which metric decided (and why), and its centre."""
    status = search.status
    flag = "" if status.done else " (not finished)"
    decided = (
        search.metric
        if search.fallback_reason is None
        else f"{search.fallback_reason}, so {search.metric} decided"
    )
    return f"search {search.key}: {status.reason}{flag}; by {decided}; centre {describe_centre(centre)}"


def status_lines(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    centres: Mapping[str, Mapping[str, Any]],
    metric: str,
    higher_is_better: bool,
) -> list[str]:
    """One line per key: where its search stands (search_status), the metric that decided, its centre."""
    return [
        status_line(search, centres[search.key.centre_key])
        for search in key_searches(config, rows, centres, metric, higher_is_better)
    ]


def record_outcomes(
    config: SweepConfig,
    run_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    centres: Mapping[str, Mapping[str, Any]],
    metric: str,
    higher_is_better: bool,
) -> list[str]:
    """Write each key's outcome (metric that decided, why, located or not, best LR) into search.json's
    ``searches`` next to the centres, and return the status lines. Deterministic in the rows (no times), so a
    rerun of a finished sweep writes the same file."""
    searches = key_searches(config, rows, centres, metric, higher_is_better)
    layout = RunLayout(run_dir)
    write_json_atomic(
        layout.search,
        {
            "format": SEARCH_FORMAT,
            "centres": dict(centres),
            "searches": {str(search.key): search.to_dict(metric) for search in searches},
        },
        indent=2,
    )
    return [status_line(search, centres[search.key.centre_key]) for search in searches]


def planned_estimate(
    config: SweepConfig,
    rows: Sequence[Mapping[str, Any]],
    centres: Mapping[str, Mapping[str, Any]],
    metric: str,
    higher_is_better: bool,
) -> int:
    """An upper bound of the runs the whole search will have made: the finished keys' runs, ``max_runs`` points
    for each unfinished key (times the seeds)."""
    settings = _settings(config)
    total = 0
    for search in key_searches(config, rows, centres, metric, higher_is_better):
        used = _used_points(search.observed, search.centre, settings, search.higher_is_better)
        total += (used if search.status.done else max(used, settings.max_runs)) * len(config.seeds)
    return total


def _used_points(
    seen: Mapping[float, float | None], centre: float, settings: AdaptiveSearch, higher_is_better: bool
) -> int:
    known, pending, _ = replay(seen, centre, settings, higher_is_better)
    return len(known) + len(pending)
