"""A learning rate from one Hessian probe: λ_max at initialisation plus a calibration of η* against λ_max.

A :class:`Calibration` is fitted on a finished sweep (``analyze``): per method the optimal learning rate η*
and λ_max at initialisation, measured the way the calibration's :class:`probe settings <Calibration>` say
(model, task, data, rank, Hessian block). For a new method (or the same one on the same model), one λ_max
probe at initialisation measured the same way gives η̂ = c/λ_max (or the power-law fit, whichever predicted
held-out methods better) and a narrow grid around it, as wide as the calibration's leave-one-method-out error.

The default calibration ships as package data (``hessian_lora/sweep/calibrations/smollm2.json``); its
``provenance`` says which sweep it came from.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hessian_lora.analysis.censoring import MIN_INTERIOR
from hessian_lora.analysis.relation import FIT_KINDS, fit_inverse_constant, fit_power_law
from hessian_lora.analysis.runs import read_run_directory
from hessian_lora.analysis.summary import Analysis, analyze, relation_lambda
from hessian_lora.core.atomic import write_text_atomic as write_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.inputs.tasks import DEFAULT_PROMPT_TEMPLATE, check_prompt_template, load_task, make_batches
from hessian_lora.measurement.measure import MeasureSettings, measure
from hessian_lora.measurement.reports import ReportView
from hessian_lora.measurement.targets import AdaptedModule
from hessian_lora.methods.registry import METHODS, check_method_rank
from hessian_lora.settings import schemas
from hessian_lora.training.adapters import DEFAULT_TARGETS, AdapterConfig, adapter_at_initialisation

if TYPE_CHECKING:
    from hessian_lora.hessian.results import EigenReport
    from hessian_lora.inputs.tasks import TokenBatch

DEFAULT_CALIBRATION = "smollm2.json"
CALIBRATION_FORMAT = 1
MIN_HALF_WIDTH_DECADES = 0.25
MAX_HALF_WIDTH_DECADES = 1.0
GRID_STEP_DECADES = 0.25


@dataclass(frozen=True)
class Calibration:
    """η* against λ_max at initialisation, fitted on one sweep; ``probe`` says how λ_max must be measured."""

    fit: str  # "power" or "inverse": the one used for predictions
    c: float  # η* ≈ c / λ_max
    slope: float | None  # log10 η* = intercept + slope · log10 λ_max
    intercept: float | None
    log10_error: float | None  # RMS leave-one-method-out error of ``fit`` in decades (None with < 2 methods)
    lambda_source: str  # "whole" or "module_median"
    points: Mapping[str, Mapping[str, float]]  # method -> {"lambda_max", "eta_star"}
    probe: Mapping[str, Any]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    # Interior optima the fit rests on (censored ones, at a grid edge, are left out); None in files written
    # before the field existed.
    n_interior: int | None = None

    def predict(self, lambda_max: float) -> float:
        """η̂ at ``lambda_max`` by the calibration's fit; a λ_max that is not positive is a :class:`UserError`."""
        if not lambda_max > 0 or not math.isfinite(lambda_max):
            raise UserError(
                f"λ_max = {lambda_max} is not positive: the adapter's Hessian has no positive "
                "curvature here; check the probe's data (--task) and method."
            )
        if self.fit == "power" and self.slope is not None and self.intercept is not None:
            return float(10 ** (self.intercept + self.slope * math.log10(lambda_max)))
        return self.c / lambda_max

    def to_dict(self) -> dict[str, Any]:
        """The calibration as JSON-able data (a calibration file)."""
        return {"format": CALIBRATION_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "calibration") -> Calibration:
        """A calibration from a file's data; a missing or bad field is a :class:`UserError` naming ``source``."""
        try:
            calibration = cls(
                fit=str(data["fit"]),
                c=float(data["c"]),
                slope=None if data.get("slope") is None else float(data["slope"]),
                intercept=None if data.get("intercept") is None else float(data["intercept"]),
                log10_error=None if data.get("log10_error") is None else float(data["log10_error"]),
                lambda_source=str(data["lambda_source"]),
                points=dict(data["points"]),
                probe=dict(data["probe"]),
                provenance=dict(data.get("provenance") or {}),
                n_interior=None if data.get("n_interior") is None else int(data["n_interior"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{source} is not a calibration file ({exc!r} missing or malformed): rebuild it with "
                "`hessian-lora recommend --calibration RUN_DIR --save-calibration FILE`."
            ) from exc
        if calibration.fit not in FIT_KINDS:
            raise UserError(f"{source}: unknown fit {calibration.fit!r}; rebuild the calibration.")
        if calibration.n_interior is not None and calibration.n_interior < MIN_INTERIOR:
            raise UserError(
                f"{source} was fitted on {calibration.n_interior} interior optima (needs "
                f"{MIN_INTERIOR}): refit it on a sweep whose optima lie inside its LR grid."
            )
        return calibration


def calibration_from_analysis(
    analysis: Analysis,
    config: Mapping[str, Any],
    init_settings: Mapping[str, Any] | None = None,
    *,
    note: str = "",
) -> Calibration:
    """Fit a calibration on an analysed sweep; ``config`` is the run directory's ``config.yaml``."""
    points = {
        name: (relation_lambda(summary), summary.eta_star)
        for name, summary in analysis.methods.items()
        if not summary.censored
    }  # a censored η* is a bound, not a point to fit through
    points = {name: point for name, point in points.items() if point[0]}
    if not any(relation_lambda(summary) for summary in analysis.methods.values()):
        raise UserError(
            f"{analysis.run_dir} has no λ_max at initialisation: run the sweep with "
            "hessian: {init: true} (or `hessian-lora demo`), then calibrate."
        )
    if len(points) < MIN_INTERIOR or analysis.relation.note:
        why = analysis.relation.note or f"{len(points)} interior optima, a calibration needs {MIN_INTERIOR}"
        advice = f"; {analysis.relation.extend}" if analysis.relation.extend else ""
        raise UserError(f"no calibration from {analysis.run_dir}: {why}{advice}.")
    lambdas = [lam for lam, _ in points.values()]
    etas = [eta for _, eta in points.values()]
    c, _ = fit_inverse_constant(lambdas, etas)
    power = fit_power_law(lambdas, etas) if len(set(lambdas)) >= 2 else None
    relation = analysis.relation
    fit = relation.preferred_fit or "inverse"
    if fit == "power" and power is None:
        fit = "inverse"
    log10_error = None
    if relation.lomo.get(fit):
        errors = [math.log10(item["ratio"]) for item in relation.lomo[fit]]
        log10_error = float(math.sqrt(np.mean(np.square(errors))))
    probe = probe_settings(analysis, config, init_settings)
    provenance = {
        "run_dir": str(Path(analysis.run_dir).resolve()),
        "sweep": config.get("name"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metric": analysis.metric,
        "n_runs": analysis.n_runs,
        "methods": list(points),
        "censored": dict(relation.censored),
        "spearman_rho": relation.spearman_rho,
        "slope_ci95": list(relation.slope_ci95) if relation.slope_ci95 else None,
        "lomo_within_2x": dict(relation.lomo_within_2x),
        "note": note,
        "config": dict(config),
    }
    return Calibration(
        fit=fit,
        c=c,
        slope=power.slope if power else None,
        intercept=power.intercept if power else None,
        log10_error=log10_error,
        lambda_source=relation.lambda_source,
        points={name: {"lambda_max": lam, "eta_star": eta} for name, (lam, eta) in points.items()},
        probe=probe,
        provenance=provenance,
        n_interior=len(points),
    )


def probe_settings(
    analysis: Analysis, config: Mapping[str, Any], init_settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """How a probe must measure λ_max to be comparable with the analysed sweep (model, data, rank, block)."""
    relation = analysis.relation
    hessian = config.get("hessian") if isinstance(config.get("hessian"), Mapping) else {}
    # The sweep's measurement settings that change λ_max at initialisation: the probe must use them too.
    measured = MeasureSettings.from_mapping(
        hessian.get("options") or {}, source=f"{analysis.run_dir}: hessian"
    )
    settings = dict(init_settings or {})
    probe = {
        "model": config.get("model"),
        "model_seed": config.get("model_seed", 0),
        "task": config.get("task"),
        "data_seed": config.get("data_seed", 0),
        "n_train": config.get("n_train"),
        "n_eval": config.get("n_eval"),
        "samples": hessian.get("samples", settings.get("samples")),
        "batch_size": hessian.get("batch_size", settings.get("batch_size")),
        "max_length": config.get("max_length", settings.get("max_length", 512)),
        "rank": analysis.rank,
        "alpha": config.get("alpha"),
        "targets": config.get("targets"),
        "attention": config.get("attention", "eager"),
        "pissa_niter": config.get("pissa_niter"),
        "prompt_template": config.get("prompt_template"),
        "blocks": "whole" if relation.lambda_source == "whole" else "per-module",
        "modules": settings.get("modules") if relation.lambda_source != "whole" else None,
        "layers": settings.get("layers") if relation.lambda_source != "whole" else None,
        "eigen_options": measured.probe_only().options(),
    }
    return probe


def calibration_from_run(
    run_dir: str | os.PathLike[str], *, note: str = "", **analyze_options: Any
) -> Calibration:
    """The calibration of a finished sweep: its analysis' interior optima against λ_max at initialisation."""
    analysis = analyze(run_dir, **analyze_options)
    directory = read_run_directory(run_dir)
    init_settings = next((dict(report.settings) for report in directory.init_reports.values()), {})
    return calibration_from_analysis(analysis, directory.config, init_settings, note=note)


def load_calibration(source: str | os.PathLike[str] | None = None) -> Calibration:
    """A calibration (η* against λ_max over a sweep's methods) for :func:`recommend`.

    Args:
        source: ``None`` for the shipped default (the SmolLM2-135M demo), a calibration JSON file (as written by
            ``hessian-lora recommend --save-calibration``), or a sweep run directory (fitted on the fly).

    Returns:
        The :class:`Calibration`, with the probe settings it was measured with.

    Raises:
        UserError: the file or directory is missing or invalid (one line naming the file, the field and the fix).
    """
    if source is None:
        text = (
            resources.files("hessian_lora.sweep")
            .joinpath("calibrations", DEFAULT_CALIBRATION)
            .read_text(encoding="utf-8")
        )
        return Calibration.from_dict(json.loads(text), source=f"the shipped {DEFAULT_CALIBRATION}")
    path = Path(source)
    if path.is_dir():
        return calibration_from_run(path)
    if not path.is_file():
        raise UserError(
            f"calibration {str(source)!r} does not exist: pass a sweep RUN_DIR or a calibration .json."
        )

    document = schemas.read_document(
        path, schemas.CalibrationDocument, what="calibration", fix=schemas.CALIBRATION_FIX
    )
    _check_probe_options(document.probe, str(path))
    # exclude_unset: the probe as the file gives it (an absent field stays absent, not a default)
    return Calibration.from_dict(document.model_dump(exclude_unset=True), source=str(path))


def _check_probe_options(probe: Any, source: str) -> None:
    """The probe's measurement options and template, checked when the file is read rather than when a probe, a
    model load later, first uses them."""
    try:
        MeasureSettings.from_mapping(probe.eigen_options or {}, source="eigen_options")
        if probe.prompt_template is not None:
            check_prompt_template(probe.prompt_template)
    except UserError as exc:
        raise UserError(f"{source}: probe: {exc} Fix that field, or {schemas.CALIBRATION_FIX}") from exc


def save_calibration(calibration: Calibration, path: str | os.PathLike[str]) -> Path:
    """Write ``calibration`` to ``path`` atomically; returns the path."""
    target = Path(path)
    write_atomic(target, json.dumps(calibration.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n")
    return target


def narrow_grid(
    eta: float, log10_error: float | None, *, step: float = GRID_STEP_DECADES
) -> tuple[float, ...]:
    """Learning rates η·10^(k·step) covering ±2 RMS errors of the calibration (at least ±¼, at most ±1
    decade)."""
    half_width = MIN_HALF_WIDTH_DECADES if log10_error is None else 2 * log10_error
    half_width = min(max(half_width, MIN_HALF_WIDTH_DECADES), MAX_HALF_WIDTH_DECADES)
    steps = math.ceil(half_width / step - 1e-9)
    return tuple(float(eta * 10 ** (k * step)) for k in range(-steps, steps + 1))


# ----------------------------------------------------------------------------------------------------------
# The probe


def probe_batches(
    tokenizer: Any,
    task: str,
    *,
    data_seed: int,
    n_train: int | None,
    n_eval: int | None,
    samples: int,
    batch_size: int,
    max_length: int,
    prompt_template: str | None = None,
) -> list[Any]:
    """The sweep's Hessian data: the first ``samples`` training examples of the task, in batches (formatted by
    ``prompt_template``, default chat)."""
    loaded = load_task(task, seed=data_seed, n_train=max(n_train or samples, samples), n_eval=n_eval or 0)
    return make_batches(
        tokenizer,
        loaded.train[:samples],
        batch_size,
        max_length=max_length,
        prompt_template=prompt_template or DEFAULT_PROMPT_TEMPLATE,
    )


def lambda_from_report(report: EigenReport, lambda_source: str) -> float:
    """The whole adapter's λ_max (``lambda_source`` "whole"), else the median λ_max over the per-module blocks,
    with the whole block found as analysis finds it (:class:`hessian_lora.measurement.reports.ReportView`)."""
    view = ReportView(report)
    value = view.whole.lambda_max if lambda_source == "whole" and view.whole else view.module_median
    if value is None:
        raise UserError(
            f"the probe measured no {lambda_source} λ_max: check the calibration's probe settings."
        )
    return value


@dataclass(frozen=True)
class Recommendation:
    """A recommended learning rate: λ_max at init, η̂ and a narrow grid around it, with the calibration used.

    Attributes:
        method: the method.
        model: the base model spec.
        task: the task spec.
        lambda_max: λ_max at initialisation.
        eta: the recommended learning rate η̂.
        grid: a narrow grid of learning rates around η̂.
        fit: the calibration's fit that gave η̂.
        calibration: where the calibration came from (its sweep or run directory; ``given``).
        warnings: what the user should know (e.g. a λ_max outside the calibration's range).
        probe_seconds: the seconds λ_max took (None: not measured here).
    """

    method: str
    model: str
    task: str
    lambda_max: float
    eta: float
    grid: tuple[float, ...]
    fit: str
    calibration: str
    warnings: tuple[str, ...] = ()
    probe_seconds: float | None = None

    def lines(self) -> list[str]:
        """The recommendation as the lines ``recommend`` prints."""
        grid = ", ".join(f"{lr:.3g}" for lr in self.grid)
        lines = [
            f"{self.method} on {self.model} ({self.task}): λ_max at init = {self.lambda_max:.4g}",
            f"predicted optimal learning rate η* ≈ {self.eta:.3g} ({self.fit} fit, calibration: {self.calibration})",
            f"sweep these: {grid}",
        ]
        return lines + [f"note: {warning}" for warning in self.warnings]


def recommend(
    method: str,
    *,
    model: str | None = None,
    task: str | None = None,
    calibration: Calibration | str | os.PathLike[str] | None = None,
    rank: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    prompt_template: str | None = None,
) -> Recommendation:
    """Probe λ_max of METHOD's adapter at initialisation on MODEL and predict its optimal learning rate.

    ``prompt_template`` formats the probe batches (default: the calibration sweep's, else chat)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: use one of {', '.join(METHODS)}.")
    cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    probe = cal.probe
    model = model or probe.get("model") or "smollm2-135m"
    task = task or probe.get("task") or "arith"
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UserError(
            f"rank must be a positive integer, got {rank!r}: pass e.g. --rank 8, or leave it out for "
            "the calibration's rank."
        )
    rank = rank or probe.get("rank") or 8
    check_method_rank(method, rank)  # before the model loads: peft would raise a bare ValueError
    template = prompt_template or probe.get("prompt_template")
    probe = {**probe, "prompt_template": template}
    warnings = []
    for what, given, calibrated in (
        ("model", model, cal.probe.get("model")),
        ("task", task, cal.probe.get("task")),
        ("rank", rank, cal.probe.get("rank")),
        ("prompt template", template, cal.probe.get("prompt_template")),
    ):
        if calibrated is not None and given != calibrated:
            warnings.append(
                f"the calibration was measured with {what} {calibrated!r}, not {given!r}: λ_max and η* "
                "scales may differ; calibrate on a sweep of this setting (--calibration RUN_DIR)."
            )
    if cal.provenance.get("note"):
        warnings.append(str(cal.provenance["note"]))
    started = time.perf_counter()
    peft_model, tokenizer = _probe_adapter(method, model, task, rank, seed, probe, device)
    batches = _probe_data(tokenizer, task, probe, samples=int(probe.get("samples") or 32))
    blocks = str(probe.get("blocks") or "whole")
    per_module = blocks == "per-module"
    settings = replace(
        MeasureSettings.from_mapping(
            probe.get("eigen_options") or {}, source="the calibration's eigen_options"
        ),
        blocks=blocks,
        modules=probe.get("modules") if per_module else None,
        layers=probe.get("layers") if per_module else None,
        max_length=int(probe.get("max_length") or 512),
    )
    report = measure(AdaptedModule(peft_model), settings, batches=batches, progress=progress)
    lambda_max = lambda_from_report(report, cal.lambda_source)
    eta = cal.predict(lambda_max)
    return Recommendation(
        method=method,
        model=model,
        task=task,
        lambda_max=lambda_max,
        eta=eta,
        grid=narrow_grid(eta, cal.log10_error),
        fit=cal.fit,
        calibration=str(cal.provenance.get("sweep") or cal.provenance.get("run_dir") or "given"),
        warnings=tuple(warnings),
        probe_seconds=time.perf_counter() - started,
    )


def _probe_data(tokenizer: Any, task: str, probe: Mapping[str, Any], *, samples: int) -> list[TokenBatch]:
    """``samples`` examples of the probe task, cut as the calibration's sweep cut its Hessian data."""
    return probe_batches(
        tokenizer,
        task,
        data_seed=int(probe.get("data_seed") or 0),
        n_train=probe.get("n_train"),
        n_eval=probe.get("n_eval"),
        samples=samples,
        batch_size=int(probe.get("batch_size") or 8),
        max_length=int(probe.get("max_length") or 512),
        prompt_template=probe.get("prompt_template"),
    )


def _probe_adapter(
    method: str, model: str, task: str, rank: int, seed: int, probe: Mapping[str, Any], device: str | None
) -> tuple[Any, Any]:
    """METHOD's adapter at initialisation on MODEL, built as the calibration's sweep built its adapters."""
    config = AdapterConfig(
        method=method,
        rank=rank,
        alpha=probe.get("alpha"),
        targets=tuple(probe.get("targets") or DEFAULT_TARGETS),
        seed=seed,
        pissa_niter=probe.get("pissa_niter"),
    )
    built = adapter_at_initialisation(
        model,
        config,
        model_seed=int(probe.get("model_seed") or 0),
        attention=str(probe.get("attention") or "eager"),
        device=device,
        # LoRA-GA estimates its gradient on data: one Hessian batch of the probe task (the sweep uses its first
        # global batch, which the calibration does not record; close, not identical).
        init_batches=lambda tokenizer: _probe_data(
            tokenizer, task, probe, samples=int(probe.get("batch_size") or 8)
        ),
    )
    return built.model, built.tokenizer
