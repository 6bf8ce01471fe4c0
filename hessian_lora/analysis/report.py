"""Analysis output: the markdown table, the one-paragraph relation summary, and analysis.json/analysis.md."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_lora._io import write_text_atomic
from hessian_lora.analysis.summary import Analysis
from hessian_lora.rundir import RunLayout


def _fmt(value: float | None, spec: str = ".3g") -> str:
    """A number for the table; "–" where there is none."""
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def markdown_table(analysis: Analysis | Mapping[str, Any]) -> str:
    """The per-method table and the relation summary, as markdown."""
    data = analysis.to_dict() if isinstance(analysis, Analysis) else dict(analysis)
    metric = data["metric"]
    relation = data["relation"]
    preferred = relation.get("preferred_fit")
    lomo = {item["method"]: item for item in relation.get("lomo", {}).get(preferred or "", [])}
    lines = [
        f"| method | η* | grid best LR | η* spread over seeds | peak {metric} | gap to best | "
        "λ_max init (whole) | λ_max init (module median) | λ_max end | η*·λ/2 | λ̃ end / Adam bound | "
        "LOMO predicted η* (×actual) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, method in data["methods"].items():
        eta = _fmt(method["eta_star"])
        if method["fit_kind"] == "edge":
            eta = ("≤ " if method["eta_star"] == min(method["lrs"]) else "≥ ") + eta
        spread = method.get("eta_spread_factor")
        spread_text = f"×{spread:.2f} ({method['n_seeds']} seeds)" if spread else f"– ({method['n_seeds']} seed)"
        peak = _fmt(method["peak_metric"], ".4g")
        if method["n_seeds"] > 1:
            peak += f" ± {_fmt(method['peak_metric_std'], '.2g')}"
        prediction = lomo.get(name)
        lomo_text = f"{_fmt(prediction['predicted'])} (×{prediction['ratio']:.2f})" if prediction else "–"
        lines.append(
            f"| {name}{' (best)' if name == data['best_method'] else ''} | {eta} | {_fmt(method['eta_grid'])} | "
            f"{spread_text} | {peak} | {_fmt(method['gap_to_best'], '.3g')} | {_fmt(method['lambda_init_whole'])} | "
            f"{_fmt(method['lambda_init_module_median'])} | {_fmt(method['lambda_final_whole'])} | "
            f"{_fmt(method['eta_lambda_over_2'])} | {_fmt(method['precond_over_adam_threshold'])} | {lomo_text} |"
        )
    lines.append("")
    lines.append(relation_summary(data))
    return "\n".join(lines)


def relation_summary(data: Mapping[str, Any]) -> str:
    """The relation across methods in one paragraph, from ``Analysis.to_dict()`` (or analysis.json)."""
    relation = data["relation"]
    parts = [f"λ_max–η* relation over {relation['n_methods']} methods (λ at init, {relation['lambda_source']}):"]
    if relation.get("spearman_rho") is not None:
        parts.append(f"Spearman ρ = {relation['spearman_rho']:.3f} (p = {relation['spearman_p']:.3g});")
    if relation.get("slope") is not None:
        text = f"slope of log η* on log λ_max = {relation['slope']:.3f}"
        if relation.get("slope_ci95"):
            low, high = relation["slope_ci95"]
            text += f" (95% bootstrap CI [{low:.3f}, {high:.3f}], {relation['bootstrap_valid']} resamples)"
        parts.append(text + ";")
    if relation.get("c") is not None:
        parts.append(f"η* ≈ c/λ_max with c = {relation['c']:.3g} (×{relation['c_spread_factor']:.2f} spread);")
    gd = [m["eta_lambda_over_2"] for m in data["methods"].values() if m.get("eta_lambda_over_2")]
    if gd:
        parts.append(f"η* is {min(gd):.3g}–{max(gd):.3g} of gradient descent's bound 2/λ_max at init;")
    adam = [m["precond_over_adam_threshold"] for m in data["methods"].values() if m.get("precond_over_adam_threshold")]
    if adam:
        parts.append(f"the preconditioned sharpness at the end of the η* run is {min(adam):.3g}–{max(adam):.3g} of "
                     "Adam's edge of stability (2+2β₁)/((1−β₁)η);")
    for fit, count in relation.get("lomo_within_2x", {}).items():
        total = len(relation["lomo"][fit])
        marker = " (preferred)" if fit == relation.get("preferred_fit") else ""
        parts.append(f"leave-one-method-out within 2×: {count}/{total} with the {fit} fit{marker};")
    parts.append(f"metric = {data['metric']}, Adam β₁ = {data['beta1']}.")
    return " ".join(parts)


def write_analysis(analysis: Analysis, out_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``analysis.json`` and ``analysis.md`` in ``out_dir`` (default: the run directory)."""
    layout = RunLayout(out_dir or analysis.run_dir)
    json_path, md_path = layout.analysis_json, layout.analysis_md
    # ensure_ascii=False: λ, η and β stay readable in the JSON (the files are UTF-8).
    data = analysis.to_dict()
    markdown = markdown_table(analysis)
    stability = _stability(analysis)
    if stability is not None:  # sweeps with hessian.during probes: the edge-of-stability summary
        data["stability"] = stability.to_dict()
        markdown += "\n\n" + stability.markdown()
    write_text_atomic(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(md_path, markdown + "\n")
    return json_path, md_path


def _stability(analysis: Analysis) -> Any:
    from hessian_lora.analysis.stability import stability_report
    from hessian_lora.errors import UserError

    try:
        return stability_report(analysis.run_dir, analysis)
    except UserError:
        return None

