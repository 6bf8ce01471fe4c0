"""``search: adaptive`` inside a sweep: each method's centre (``search.json``), the rounds, the status lines.

The search itself is :mod:`hessian_lora.sweep.search` (pure, replayed from the rows). This module feeds it:

- **Keys.** One search per (method, rank, batch size), seeds averaged: every point of a round runs for every
  seed of the config, and a point counts as observed when all its seeds have a final row; its value is the
  seed mean of the metric, as analysis averages seeds before it fits η*. (One search per seed would give each
  seed its own LR set and a seed-mean curve with holes.) A diverged seed scores 0 accuracy (as analysis counts
  it) or no loss; a failed one no metric, and a point any seed of which has no metric scores worst.
- **Centres.** One per (method, rank), computed once and kept in ``RUN_DIR/search.json`` (written atomically
  after each), shared by the key's batch sizes: recommend's η̂ = calibration(λ_max at initialisation of the
  first seed's adapter) when the calibration (``search.calibration``, default the shipped one) was measured on
  this sweep's model, task and rank; otherwise :func:`~hessian_lora.sweep.search.grid_center` of the config's
  ``lr``. With ``hessian.init`` the probe *is* the sweep's λ at initialisation: it is measured with the sweep's
  settings into ``hessian/<method>_r<rank>_s<seed>_init.json``, from which every run then resumes instead of
  measuring again. Without it, λ is measured with the calibration's probe settings into that same file (the
  λ at initialisation analysis reads).
- **Rows.** Final rows are observed; ``running`` rows (an interrupted sweep) are left out, so the search asks
  for them again and they are rerun; with ``--retry-failed`` the failed rows found at the start are left out
  once, so they are rerun once.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hessian_lora._io import write_json_atomic
from hessian_lora.errors import UserError
from hessian_lora.registry import HIGHER_IS_BETTER, SCORE_METRICS
from hessian_lora.rundir import InitKey, RunLayout, Status
from hessian_lora.sweep.config import RunSpec, SweepConfig
from hessian_lora.sweep.search import AdaptiveSearch, grid_center, next_points, search_status

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
    return [SearchKey(method, rank, batch) for method in config.methods for rank in config.ranks
            for batch in config.batch_sizes]


def search_metric(config: SweepConfig) -> tuple[str, bool]:
    """(metric, higher is better): ``search.metric``, or for ``auto`` accuracy when the runs measure it (the
    task has a scorer and ``eval.accuracy`` is on), else eval_loss; the same default analysis picks."""
    settings = _settings(config)
    metric = settings.metric
    if metric == "auto":
        from hessian_lora.sweep.execute import cached_task

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
    import json

    path = RunLayout(run_dir).search
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        centres = data["centres"]
        if not isinstance(centres, dict) or not all(isinstance(item, dict) and item.get("lr", 0) > 0
                                                    for item in centres.values()):
            raise TypeError("centres must map names to {lr: ...}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}): delete it to compute the search centres again.") from exc
    return centres


AtInit = Callable[[Any, Any, InitKey], None]
"""``at_init(model, tokenizer, key)``: called with each adapter a centre builds at initialisation, after its λ_max
is measured, so a caller can measure more on the same adapter instead of building it again (the demo's
per-module scan: an SVD-initialised adapter of SmolLM2 takes 5-17 s to build)."""


def ensure_centres(config: SweepConfig, run_dir: str | os.PathLike[str], *, progress: bool = False,
                   device: Any = None, say: Callable[[str], None] | None = None,
                   at_init: AtInit | None = None, calibration: Any = None) -> dict[str, dict[str, Any]]:
    """Every (method, rank)'s centre: read from search.json, or computed now and added to it (atomically, one
    at a time, so a kill loses at most the one being measured). ``at_init``: see :data:`AtInit`.
    ``calibration``: the search's calibration when the caller (the preflight) already read it."""
    layout = RunLayout(run_dir)
    centres = read_centres(run_dir)
    for key in search_keys(config):
        if key.centre_key in centres:
            continue
        if calibration is None:
            from hessian_lora.recommend import load_calibration

            calibration = load_calibration(_settings(config).calibration)
        clock = time.perf_counter()
        centre = compute_centre(config, layout, key.method, key.rank, calibration, progress=progress, device=device,
                                at_init=at_init)
        centre["seconds"] = round(time.perf_counter() - clock, 2)
        centres[key.centre_key] = centre
        write_json_atomic(layout.search, {"format": SEARCH_FORMAT, "centres": centres}, indent=2)
        if say is not None:
            say(f"search centre {key.centre_key}: {describe_centre(centre)}")
    return centres


def describe_centre(centre: Mapping[str, Any]) -> str:
    """A search centre in one line: η̂ from a calibration, or the grid's centre."""
    if centre.get("source") == "calibration":
        return (f"η̂ = {centre['lr']:.3g} from λ_max at init {centre['lambda_max']:.4g} "
                f"({centre.get('fit')} fit{'' if centre.get('calibrated_method') else ', method not in the calibration'})")
    return f"{centre['lr']:.3g}, the grid's centre ({centre.get('reason')})"


def compute_centre(config: SweepConfig, layout: RunLayout, method: str, rank: int, calibration: Any, *,
                   progress: bool = False, device: Any = None, at_init: AtInit | None = None) -> dict[str, Any]:
    """One centre: η̂ from a λ_max probe where the calibration applies, else the grid's centre (see the module
    docstring)."""
    grid = grid_center(config.lrs)
    probe = calibration.probe
    other = [what for what, ours, theirs in (("model", config.model, probe.get("model")),
                                             ("task", config.task, probe.get("task")),
                                             ("rank", rank, probe.get("rank")))
             if theirs is not None and ours != theirs]
    if other:
        return {"lr": grid, "source": "grid",
                "reason": f"the calibration was measured with another {', '.join(other)}"}
    seed = config.seeds[0]
    key = InitKey(method, rank, seed)
    try:
        lambda_max = _lambda_at_init(config, layout, key, calibration, progress=progress, device=device,
                                     at_init=at_init)
        eta = calibration.predict(lambda_max)
    except UserError as exc:  # no positive curvature, or the report lacks the calibration's λ: fall back
        return {"lr": grid, "source": "grid", "reason": f"no prediction: {exc}"}
    if not (eta > 0 and math.isfinite(eta)):
        return {"lr": grid, "source": "grid", "reason": f"the prediction {eta!r} is not a learning rate"}
    return {"lr": eta, "source": "calibration", "lambda_max": lambda_max, "init_report": str(layout.init_report(key)
            .relative_to(layout.root)), "fit": calibration.fit, "calibrated_method": method in calibration.points,
            "calibration": str(calibration.provenance.get("sweep") or calibration.provenance.get("run_dir")
                               or "given")}


def _lambda_at_init(config: SweepConfig, layout: RunLayout, key: InitKey, calibration: Any, *, progress: bool,
                    device: Any, at_init: AtInit | None = None) -> float:
    """λ_max of (method, rank, seed)'s adapter at initialisation, written to its ``_init.json`` report."""
    from dataclasses import replace

    from hessian_lora.adapters import adapter_at_initialisation
    from hessian_lora.data import make_batches
    from hessian_lora.measure import MeasureSettings, measure
    from hessian_lora.recommend import lambda_from_report, probe_batches
    from hessian_lora.sweep.execute import cached_task, eigen_report

    task = cached_task(config.task, config.data_seed, config.n_train, config.n_eval)
    # Built as execute_run builds it (LoRA-GA: on the first global batch of the first batch size).
    adapter_config = config.adapter_for(key.method, key.rank, key.seed)
    train_config = config.train_for(config.lrs[0], config.batch_sizes[0], key.seed)
    model, tokenizer, _ = adapter_at_initialisation(
        config.model, adapter_config, model_seed=config.model_seed, attention=config.attention, device=device,
        train_examples=task.train, train_config=train_config)
    out = layout.init_report(key)
    if config.hessian.init:  # the sweep's own measurement: every run resumes from this file
        batches = make_batches(tokenizer, task.train[: config.hessian.samples], config.hessian.batch_size,
                               max_length=config.max_length, prompt_template=config.prompt_template)
        report = eigen_report(config, model, batches, out=out, progress=progress)
    else:  # measured as the calibration's probe was
        probe = calibration.probe
        per_module = probe.get("blocks") == "per-module"
        settings = replace(
            MeasureSettings.from_mapping(probe.get("eigen_options") or {}, source="the calibration's eigen_options"),
            blocks=str(probe.get("blocks") or "whole"), modules=probe.get("modules") if per_module else None,
            layers=probe.get("layers") if per_module else None, max_length=int(probe.get("max_length") or 512))
        batches = probe_batches(tokenizer, config.task, data_seed=config.data_seed, n_train=config.n_train,
                                n_eval=config.n_eval, samples=int(probe.get("samples") or 32),
                                batch_size=int(probe.get("batch_size") or 8),
                                max_length=int(probe.get("max_length") or 512),
                                prompt_template=config.prompt_template)
        report = measure(model, batches, settings, out=out, progress=progress)
    lambda_max = lambda_from_report(report, calibration.lambda_source)
    if at_init is not None:
        at_init(model, tokenizer, key)
    return lambda_max


# ----------------------------------------------------------------------------------------------------------
# Rounds


def observed(config: SweepConfig, rows: Sequence[Mapping[str, Any]], key: SearchKey, metric: str, *,
             left_out: frozenset[str] = frozenset()) -> dict[float, float | None]:
    """LR → seed-mean metric of ``key``'s points whose every seed has a final row (``left_out`` run ids and
    ``running`` rows do not count, so they are asked for again)."""
    by_lr: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        if (row["method"], row["rank"], row["batch_size"]) == (key.method, key.rank, key.batch_size) \
                and row["seed"] in config.seeds:
            by_lr.setdefault(f"{row['lr']:.4e}", {})[row["seed"]] = row
    result: dict[float, float | None] = {}
    for seeds in by_lr.values():
        if set(seeds) != set(config.seeds):
            continue
        values = []
        for row in seeds.values():
            if row["status"] not in (Status.DONE, Status.DIVERGED, Status.FAILED) or row["run_id"] in left_out:
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


def next_round(config: SweepConfig, rows: Sequence[Mapping[str, Any]], centres: Mapping[str, Mapping[str, Any]],
               metric: str, higher_is_better: bool, *, left_out: frozenset[str] = frozenset()) -> list[RunSpec]:
    """Every run the current round of every key asks for (each point for every seed), finished or not."""
    settings = _settings(config)
    specs = []
    for key in search_keys(config):
        points = next_points(observed(config, rows, key, metric, left_out=left_out),
                             center=centres[key.centre_key]["lr"], settings=settings,
                             higher_is_better=higher_is_better)
        specs += [RunSpec(key.method, lr, seed, key.rank, key.batch_size) for seed in config.seeds for lr in points]
    return specs


def used_specs(config: SweepConfig, rows: Sequence[Mapping[str, Any]], centres: Mapping[str, Mapping[str, Any]],
               metric: str, higher_is_better: bool) -> list[RunSpec]:
    """The runs the searches have used so far (their points, for every seed): the rows the search made."""
    from hessian_lora.sweep.search import replay

    settings = _settings(config)
    specs = []
    for key in search_keys(config):
        known, pending, _ = replay(observed(config, rows, key, metric), centres[key.centre_key]["lr"], settings,
                                    higher_is_better)
        specs += [RunSpec(key.method, settings.lattice_lr(k), seed, key.rank, key.batch_size)
                  for seed in config.seeds for k in sorted({*known, *pending})]
    return specs


def status_lines(config: SweepConfig, rows: Sequence[Mapping[str, Any]], centres: Mapping[str, Mapping[str, Any]],
                 metric: str, higher_is_better: bool) -> list[str]:
    """One line per key: where its search stands (search_status) and its centre."""
    lines = []
    for key in search_keys(config):
        centre = centres[key.centre_key]
        status = search_status(observed(config, rows, key, metric), center=centre["lr"],
                               settings=_settings(config), higher_is_better=higher_is_better)
        flag = "" if status.done else " (not finished)"
        censored = ", censored" if status.censored and status.best_lr is not None else ""
        lines.append(f"search {key}: {status.reason}{censored}{flag}; {metric}; centre {describe_centre(centre)}")
    return lines


def planned_estimate(config: SweepConfig, rows: Sequence[Mapping[str, Any]], centres: Mapping[str, Mapping[str, Any]],
                     metric: str, higher_is_better: bool) -> int:
    """An upper bound of the runs the whole search will have made: the finished keys' runs, ``max_runs`` points
    for each unfinished key (times the seeds)."""
    settings = _settings(config)
    total = 0
    for key in search_keys(config):
        seen = observed(config, rows, key, metric)
        status = search_status(seen, center=centres[key.centre_key]["lr"], settings=settings,
                               higher_is_better=higher_is_better)
        used = _used_points(seen, centres[key.centre_key]["lr"], settings, higher_is_better)
        total += (used if status.done else max(used, settings.max_runs)) * len(config.seeds)
    return total


def _used_points(seen: Mapping[float, float | None], centre: float, settings: AdaptiveSearch,
                 higher_is_better: bool) -> int:
    from hessian_lora.sweep.search import replay

    known, pending, _ = replay(seen, centre, settings, higher_is_better)
    return len(known) + len(pending)
