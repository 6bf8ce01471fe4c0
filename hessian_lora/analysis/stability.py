"""Edge-of-stability view of a sweep with sharpness histories (``hessian: {during: ...}``).

For every run, the probes of ``runs/<run_id>/sharpness.json`` give two ratios over steps (a value of 1 means
"at the stability limit"; :func:`hessian_lora.hessian.thresholds.stability_ratios`):

- Adam: λ̃(t)·η_t / ((2+2β₁)/(1−β₁)), λ̃ = λ₁(P⁻¹H) from the live Adam state (38 at β₁ = 0.9);
- gradient descent: λ(t)·η_t / 2.

η_t is the learning rate of the update that follows the probe (the schedule's value then), so warm-up and decay
count. Per method, the **largest stable LR** is the largest grid LR whose runs (all seeds) finished without
diverging and whose Adam ratio stayed below 1 at every probe.

Which predicts η* (the analysis's optimum) better across methods, the largest stable LR or λ_max at
initialisation (λ(0) of the probes, else the sweep's init report)? Each predictor x is scaled by one constant,
η* ≈ c·x, with x = largest stable LR or 1/λ_init and c the geometric mean of η*/x over methods; the error of a
method is |log10(η*/(c·x))| and the predictor with the smaller mean error wins. (In-sample constants: with few
methods both errors are optimistic alike; the raw ratio η*/largest-stable-LR is reported too.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hessian_lora.analysis.runs import RunDirectory, read_run_directory
from hessian_lora.analysis.summary import Analysis, adam_beta1, relation_lambda
from hessian_lora.core.rundir import RunLayout, Status
from hessian_lora.hessian.thresholds import stability_ratios


@dataclass(frozen=True)
class StabilityCurve:
    """One run's ratios over steps (None where that probe has no value)."""

    run_id: str
    method: str
    lr: float
    seed: int
    status: str
    steps: tuple[int, ...]
    adam_ratio: tuple[float | None, ...]
    gd_ratio: tuple[float | None, ...]
    lambda_max: tuple[float | None, ...]
    preconditioned: tuple[float | None, ...]

    @property
    def peak_adam_ratio(self) -> float | None:
        """The largest λ̃·η/((2+2β₁)/(1−β₁)) along training, or None without preconditioned probes."""
        values = [value for value in self.adam_ratio if value is not None]
        return max(values) if values else None


@dataclass(frozen=True)
class MethodStability:
    """One method's edge-of-stability summary: η*, the largest stable LR and how each predicts η*."""

    method: str
    eta_star: float | None
    largest_stable_lr: float | None
    lambda_init: float | None
    stable_over_eta_star: float | None  # largest stable LR / η*
    error_stable: float | None  # |log10(η*/(c·largest stable LR))|
    error_init: float | None  # |log10(η*/(c/λ_init))|


@dataclass(frozen=True)
class StabilityReport:
    """The edge-of-stability analysis of a run directory: per-run curves and per-method summaries."""

    beta1: float
    curves: tuple[StabilityCurve, ...]
    methods: Mapping[str, MethodStability]
    mean_error_stable: float | None
    mean_error_init: float | None
    better_predictor: str | None  # "largest_stable_lr", "lambda_init" or None (not enough methods)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (curves counted, not listed)."""
        data = asdict(self)
        data.pop("curves")
        data["runs"] = len(self.curves)
        return data

    def markdown(self) -> str:
        """The report as a markdown section (the stability table and the verdict)."""
        lines = [
            "## Edge of stability (sharpness along training)",
            "",
            "| method | η* | largest stable LR | stable/η* | λ_init | err stable | err λ_init |",
            "|---|---|---|---|---|---|---|",
        ]
        for item in self.methods.values():
            lines.append(
                "| "
                + " | ".join(
                    [
                        item.method,
                        _fmt(item.eta_star),
                        _fmt(item.largest_stable_lr),
                        _fmt(item.stable_over_eta_star),
                        _fmt(item.lambda_init),
                        _fmt(item.error_stable),
                        _fmt(item.error_init),
                    ]
                )
                + " |"
            )
        lines.append("")
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        """Which of the largest stable LR and λ_max at init predicts η* better, in one sentence."""
        if self.better_predictor is None:
            return (
                "Not enough methods with both a largest stable LR and λ_max at init to compare the predictors "
                "(need 2)."
            )
        winner = "the largest stable LR" if self.better_predictor == "largest_stable_lr" else "λ_max at init"
        return (
            f"{winner} predicts η* better: mean |log10 error| {_fmt(self.mean_error_stable)} (largest stable "
            f"LR, scaled by one constant) vs {_fmt(self.mean_error_init)} (c/λ_init) over "
            f"{sum(1 for m in self.methods.values() if m.error_stable is not None)} methods; "
            f"Adam limit (2+2β₁)/((1−β₁)η) at β₁ = {self.beta1:g}."
        )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def read_sharpness(run_dir: str | os.PathLike[str], run_id: str) -> dict[str, Any] | None:
    """The run's sharpness.json, or None when it has none (or it is unreadable)."""
    path = RunLayout(run_dir).sharpness(run_id)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, Mapping) and isinstance(data.get("history"), list) else None


def stability_curves(directory: RunDirectory, beta1: float | None = None) -> list[StabilityCurve]:
    """Every usable run's ratio curves (runs without a sharpness history are left out)."""
    beta = beta1 if beta1 is not None else adam_beta1(directory.config)
    curves = []
    for run in directory.runs:
        if not run.is_usable:
            continue
        data = read_sharpness(directory.path, run.run_id)
        if data is None or not data["history"]:
            continue
        points = data["history"]
        ratios = [stability_ratios(point, beta1=beta) for point in points]
        curves.append(
            StabilityCurve(
                run_id=run.run_id,
                method=run.method,
                lr=run.lr,
                seed=run.seed,
                status=run.status,
                steps=tuple(int(point["step"]) for point in points),
                adam_ratio=tuple(adam for _, adam in ratios),
                gd_ratio=tuple(gd for gd, _ in ratios),
                lambda_max=tuple(point.get("lambda_max") for point in points),
                preconditioned=tuple(point.get("preconditioned") for point in points),
            )
        )
    return curves


def largest_stable_lr(curves: Sequence[StabilityCurve]) -> float | None:
    """The largest LR whose runs all stayed below Adam's limit and did not diverge (None: no stable LR)."""
    by_lr: dict[float, list[StabilityCurve]] = {}
    for curve in curves:
        by_lr.setdefault(curve.lr, []).append(curve)
    stable = [
        lr
        for lr, runs in by_lr.items()
        if all(
            run.status == Status.DONE and run.peak_adam_ratio is not None and run.peak_adam_ratio < 1.0
            for run in runs
        )
    ]
    return max(stable) if stable else None


def stability_report(
    run_dir: str | os.PathLike[str] | RunDirectory, analysis: Analysis
) -> StabilityReport | None:
    """The edge-of-stability summary, or None when no run has a sharpness history."""
    directory = run_dir if isinstance(run_dir, RunDirectory) else read_run_directory(run_dir)
    beta1 = analysis.beta1
    curves = [
        curve
        for curve in stability_curves(directory, beta1)
        if analysis.rank is None or _rank_of(directory, curve.run_id) == analysis.rank
    ]
    if not curves:
        return None
    rows: dict[str, dict[str, Any]] = {}
    for method in analysis.methods:
        method_curves = [curve for curve in curves if curve.method == method]
        if not method_curves:
            continue
        summary = analysis.methods[method]
        lam = relation_lambda(summary)
        if lam is None:
            initial = [
                curve.lambda_max[0]
                for curve in method_curves
                if curve.steps
                and curve.steps[0] == 0
                and curve.lambda_max[0] is not None
                and curve.lambda_max[0] > 0
            ]
            lam = math.exp(sum(math.log(v) for v in initial) / len(initial)) if initial else None
        rows[method] = {"eta_star": summary.eta_star, "stable": largest_stable_lr(method_curves), "lam": lam}
    stable_ok = {m: r for m, r in rows.items() if r["stable"] and r["eta_star"] and r["lam"]}
    c_stable = _geo([r["eta_star"] / r["stable"] for r in stable_ok.values()])
    c_init = _geo([r["eta_star"] * r["lam"] for r in stable_ok.values()])
    methods = {}
    for method, r in rows.items():
        both = method in stable_ok
        methods[method] = MethodStability(
            method=method,
            eta_star=r["eta_star"],
            largest_stable_lr=r["stable"],
            lambda_init=r["lam"],
            stable_over_eta_star=r["stable"] / r["eta_star"] if r["stable"] and r["eta_star"] else None,
            error_stable=abs(math.log10(r["eta_star"] / (c_stable * r["stable"])))
            if both and c_stable
            else None,
            error_init=abs(math.log10(r["eta_star"] * r["lam"] / c_init)) if both and c_init else None,
        )
    errors_stable = [m.error_stable for m in methods.values() if m.error_stable is not None]
    errors_init = [m.error_init for m in methods.values() if m.error_init is not None]
    mean_stable = sum(errors_stable) / len(errors_stable) if errors_stable else None
    mean_init = sum(errors_init) / len(errors_init) if errors_init else None
    better = None
    if len(errors_stable) >= 2 and mean_stable is not None and mean_init is not None:
        better = "largest_stable_lr" if mean_stable < mean_init else "lambda_init"
    return StabilityReport(
        beta1=beta1,
        curves=tuple(curves),
        methods=methods,
        mean_error_stable=mean_stable,
        mean_error_init=mean_init,
        better_predictor=better,
    )


def _rank_of(directory: RunDirectory, run_id: str) -> int | None:
    return next((run.rank for run in directory.runs if run.run_id == run_id), None)


def _geo(values: Sequence[float]) -> float | None:
    kept = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in kept) / len(kept)) if kept else None
