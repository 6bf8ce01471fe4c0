"""Analysis output: the markdown table, the one-paragraph relation summary, and analysis.json/analysis.md."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hessian_lora.analysis.censoring import bound_text
from hessian_lora.analysis.claims import claims_markdown, paper_claims
from hessian_lora.analysis.curves import metric_name
from hessian_lora.analysis.runs import RunDirectory, read_outcomes, read_run_directory
from hessian_lora.analysis.stability import stability_report
from hessian_lora.analysis.summary import Analysis
from hessian_lora.analysis.uncertainty import NO_INTERVAL
from hessian_lora.core.atomic import write_text_atomic
from hessian_lora.core.errors import UserError
from hessian_lora.core.metrics import SCORE_METRICS
from hessian_lora.core.rundir import RunLayout
from hessian_lora.measurement.reports import optional_float

if TYPE_CHECKING:
    from hessian_lora.hessian.results import BlockReport


def _fmt(value: float | None, spec: str = ".3g") -> str:
    """A number for the table; "–" where there is none."""
    return (
        "–"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else format(value, spec)
    )


def _interval(interval: Any, spec: str = ".3g", scale: float = 1.0) -> str:
    return f" [{format(interval[0] * scale, spec)}, {format(interval[1] * scale, spec)}]" if interval else ""


def _gap_text(method: Mapping[str, Any], metric: str) -> str:
    """Peak minus the best method's peak with its paired interval and verdict, e.g. ``−10.2 points [−17.0, −3.1]:
    below the best beyond noise``; in points (×100) for a score."""
    verdict = method.get("gap_verdict")
    if verdict == "best":
        return "best"
    scale, unit, spec = (100.0, " points", "+.1f") if metric in SCORE_METRICS else (1.0, "", "+.3g")
    gap = method.get("gap_ci")
    signed = -method["gap_to_best"] if method.get("higher_is_better", True) else method["gap_to_best"]
    text = format(signed * scale, spec).replace("-", "−") + unit
    if gap:
        text += _interval(gap, spec, scale).replace("-", "−")
    return f"{text}: {verdict}" if verdict else text


def markdown_table(analysis: Analysis | Mapping[str, Any]) -> str:
    """The per-method table and the relation summary, as markdown. A censored η* shows as a bound (≥/≤), each
    interval says what it resampled, and the gap column says whether a method is worse than the best beyond
    noise."""
    data = analysis.to_dict() if isinstance(analysis, Analysis) else dict(analysis)
    metric = data["metric"]
    relation = data["relation"]
    level = data.get("level", 0.95)
    preferred = relation.get("preferred_fit")
    lomo = {item["method"]: item for item in relation.get("lomo", {}).get(preferred or "", [])}
    named = metric if metric not in SCORE_METRICS else "score"
    lines = [
        f"| method | η* [{level:.0%} CI] | grid best LR | per-seed η*: geometric SD, range (max/min) | "
        f"peak {named} [{level:.0%} CI] | "
        "vs best peak | λ_max init (whole) | λ_max init (module median) | λ_max end | η*·λ/2 | "
        "λ̃ end / Adam bound | LOMO predicted η* (×actual) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, method in data["methods"].items():
        censored = method.get("censored")
        if (
            censored is None and method["fit_kind"] == "edge"
        ):  # analysis.json written before censoring existed
            censored = "low" if method["eta_star"] == min(method["lrs"]) else "high"
        eta = bound_text(censored, method["eta_star"]) + (
            _interval(method.get("eta_ci")) if not censored else ""
        )
        spread, seed_range = method.get("eta_spread_factor"), method.get("eta_seed_range_factor")
        spread_text = (
            f"×{spread:.2f}"
            + (f", ×{seed_range:.2f}" if seed_range else "")
            + f" ({method['n_seeds']} seeds)"
            if spread
            else f"– ({method['n_seeds']} seed)"
        )
        peak = _fmt(method["peak_metric"], ".4g")
        if censored:
            peak = ("≥ " if data.get("higher_is_better", True) else "≤ ") + peak + " (at the grid edge)"
        peak += _interval(method.get("peak_ci"), ".3g")
        if method.get("uncertainty_basis") == NO_INTERVAL:
            peak += f" ({NO_INTERVAL})"
        prediction = lomo.get(name)
        lomo_text = f"{_fmt(prediction['predicted'])} (×{prediction['ratio']:.2f})" if prediction else "–"
        gap = _gap_text({**method, "higher_is_better": data.get("higher_is_better", True)}, metric)
        lines.append(
            f"| {name}{' (best)' if name == data['best_method'] else ''} | {eta} | {_fmt(method['eta_grid'])} | "
            f"{spread_text} | {peak} | {gap} | {_fmt(method['lambda_init_whole'])} | "
            f"{_fmt(method['lambda_init_module_median'])} | {_fmt(method['lambda_final_whole'])} | "
            f"{_fmt(method['eta_lambda_over_2'])} | {_fmt(method['precond_over_adam_threshold'])} | {lomo_text} |"
        )
    lines.append("")
    lines.append(data_caveats(data))
    lines.append("")
    lines.append(relation_summary(data))
    return "\n".join(lines)


def data_caveats(data: Mapping[str, Any]) -> str:
    """What the numbers rest on, said out loud: seeds, evaluation problems, censored optima, the intervals."""
    methods = data["methods"].values()
    seeds = sorted({method["n_seeds"] for method in methods})
    bases = sorted({method.get("uncertainty_basis") or "" for method in methods} - {""})
    parts = [f"seeds per method: {', '.join(map(str, seeds))}"]
    examples = data.get("n_eval_examples")
    if examples:
        parts.append(f"evaluation problems: {examples}")
    else:  # per-example scores exist for accuracy only; a loss metric is bootstrapped over seeds
        parts.append(
            "no per-example scores stored"
            if data["metric"] == "accuracy"
            else f"no per-example bootstrap ({data['metric']} has no per-example scores)"
        )
    if examples and data["metric"] in SCORE_METRICS:
        parts.append(f"one problem = {100 / examples:.2g} points")
    if data["metric"] in SCORE_METRICS:
        parts.append(
            f"{data['metric']} = {metric_name(data['metric'], (data.get('setup') or {}).get('task'))}"
        )
    censored = [name for name, method in data["methods"].items() if method.get("censored")]
    if censored:
        parts.append(f"censored optima (at a grid edge, bounds only): {', '.join(censored)}")
    resampled = [basis for basis in bases if basis != NO_INTERVAL]
    if resampled:
        paired = (
            " (evaluation problems paired across methods)" if any("examples" in b for b in resampled) else ""
        )
        parts.append(
            f"{data.get('level', 0.95):.0%} intervals: bootstrap over {'; '.join(resampled)}{paired}"
        )
    if NO_INTERVAL in bases:
        parts.append(NO_INTERVAL)
    return "Data: " + "; ".join(parts) + "."


def uncertified_lambda_text(data: Mapping[str, Any]) -> str:
    """The λ_max values at init behind the relation that Lanczos did not certify, said out loud ("" when all were)."""
    key = {"whole": "lambda_init_whole_uncertified", "module_median": "lambda_init_module_uncertified"}[
        data["relation"]["lambda_source"]
    ]
    residuals = {name: method[key] for name, method in data["methods"].items() if method.get(key) is not None}
    if not residuals:
        return ""
    listed = ", ".join(f"{name} {value:.2g}" for name, value in residuals.items())
    return (
        f"λ_max at init not certified for {len(residuals)} of {len(data['methods'])} methods (the explicit "
        f"relative residual ‖Hy − θy‖/θ stayed above the solver's tol: {listed}): each such θ is a lower bound "
        f"on λ_max and lies within that fraction of an eigenvalue;"
    )


def relation_summary(data: Mapping[str, Any]) -> str:
    """The relation across methods in one paragraph, from ``Analysis.to_dict()`` (or analysis.json)."""
    relation = data["relation"]
    censored = relation.get("censored") or {}
    total = relation.get("n_total") or relation["n_methods"]
    head = f"λ_max–η* relation over {relation['n_methods']} methods (λ at init, {relation['lambda_source']}"
    if censored:
        listed = ", ".join(f"{name} {bound}" for name, bound in censored.items())
        head += f"; {len(censored)} of {total} excluded as censored: {listed}"
    parts = [head + "):"]
    uncertified = uncertified_lambda_text(data)
    if uncertified:
        parts.append(uncertified)
    if relation.get("note"):
        parts.append(relation["note"] + ".")
        if relation.get("extend"):
            parts.append(relation["extend"][0].upper() + relation["extend"][1:] + ".")
        parts.append(f"metric = {data['metric']}.")
        return " ".join(parts)
    if relation.get("spearman_rho") is not None:
        text = f"Spearman ρ = {relation['spearman_rho']:.3f} (exact p = {relation['spearman_p']:.3g}"
        if relation.get("spearman_rho_ci"):
            low, high = relation["spearman_rho_ci"]
            text += f"; ρ over η* draws [{low:.2f}, {high:.2f}]"
        parts.append(text + ");")
    if relation.get("slope") is not None:
        text = f"slope of log η* on log λ_max = {relation['slope']:.3f}"
        if relation.get("slope_ci95"):
            low, high = relation["slope_ci95"]
            text += (
                f" ({data.get('level', 0.95):.0%} bootstrap CI [{low:.3f}, {high:.3f}] over methods and η* "
                f"draws, {relation['bootstrap_valid']} resamples)"
            )
        parts.append(text + ";")
    fits = relation.get("by_source") or {}
    if len(fits) > 1:  # the same fit with each kind of λ, so no reader takes one λ's R² for the other's
        said = []
        for source, fit in fits.items():
            interval = fit.get("slope_ci95")
            text = f"{source} λ: slope {fit['slope']:.3f}" + (
                f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
            )
            text += f", R² {fit['r2']:.2f}" if fit.get("r2") is not None else ""
            if fit.get("inverse_in_ci") is not None:
                text += ", η* ∝ 1/λ " + ("not rejected" if fit["inverse_in_ci"] else "rejected (−1 outside)")
            said.append(text)
        parts.append("by kind of λ at init: " + "; ".join(said) + ";")
    if relation.get("c") is not None:
        parts.append(
            f"η* ≈ c/λ_max with c = {relation['c']:.3g} (×{relation['c_spread_factor']:.2f} spread);"
        )
    gd = [
        m["eta_lambda_over_2"]
        for m in data["methods"].values()
        if m.get("eta_lambda_over_2") and not m.get("censored")
    ]
    if gd:
        parts.append(f"η* is {min(gd):.3g}–{max(gd):.3g} of gradient descent's bound 2/λ_max at init;")
    adam = [
        m["precond_over_adam_threshold"]
        for m in data["methods"].values()
        if m.get("precond_over_adam_threshold")
    ]
    if adam:
        parts.append(
            f"the preconditioned sharpness at the end of the η* run is {min(adam):.3g}–{max(adam):.3g} of "
            "Adam's edge of stability (2+2β₁)/((1−β₁)η);"
        )
    for fit, count in relation.get("lomo_within_2x", {}).items():
        total = len(relation["lomo"][fit])
        marker = " (preferred)" if fit == relation.get("preferred_fit") else ""
        parts.append(f"leave-one-method-out within 2×: {count}/{total} with the {fit} fit{marker};")
    if relation.get("extend"):
        parts.append(f"to turn the censored optima into values, {relation['extend']};")
    parts.append(f"metric = {data['metric']}, Adam β₁ = {data['beta1']}.")
    return " ".join(parts)


def write_analysis(analysis: Analysis, out_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``analysis.json`` and ``analysis.md`` in ``out_dir`` (default: the run directory)."""
    layout = RunLayout(out_dir or analysis.run_dir)
    json_path, md_path = layout.analysis_json, layout.analysis_md
    # ensure_ascii=False: λ, η and β stay readable in the JSON (the files are UTF-8).
    data = analysis.to_dict()
    markdown = markdown_table(analysis)
    search = search_section(analysis.run_dir)
    if search is not None:  # search: adaptive: what each key's search found, and by which metric
        data["search"], text = search
        markdown += "\n\n" + text
    directory = read_run_directory(analysis.run_dir)  # read once for the cost and the stability sections
    cost = cost_section(directory)
    if cost is not None:  # what the data cost, as the run rows and the eigen reports recorded it
        data["cost"], text = cost
        markdown += "\n\n" + text
    claims = paper_claims(data)
    if claims:  # LoRA and the paper's methods: the paper's figures against ours, with a verdict per claim
        data["claims"] = [row.to_dict() for row in claims]
        markdown += "\n\n" + claims_markdown(claims, data)
    stability = _stability(directory, analysis)
    if stability is not None:  # sweeps with hessian.during probes: the edge-of-stability summary
        data["stability"] = stability.to_dict()
        markdown += "\n\n" + stability.markdown()
    write_text_atomic(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(md_path, markdown + "\n")
    return json_path, md_path


def search_section(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], str] | None:
    """The adaptive search's outcomes from ``search.json`` (``None`` for a grid sweep or an older file): per
    method-setting the metric that decided (and why, when it is not the configured one), whether the optimum
    was located, and the search's own words."""
    outcomes = read_outcomes(run_dir)
    if not outcomes:
        return None
    lines = [
        "### Adaptive search",
        "",
        "| search | decided by | outcome | best LR | runs | what the search says |",
        "|---|---|---|---|---|---|",
    ]
    for name, item in outcomes.items():
        decided = str(item.get("metric"))
        if item.get("fallback_reason"):
            decided += f" ({item['fallback_reason']})"
        best = item.get("best_lr")
        outcome = "located" if item.get("located") else f"**not located** ({item.get('outcome')})"
        lines.append(
            f"| {name} | {decided} | {outcome} | {'—' if best is None else f'{best:.3g}'} | "
            f"{item.get('runs')} | {item.get('reason')} |"
        )
    return outcomes, "\n".join(lines)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def eigen_wall_seconds(blocks: Sequence[BlockReport]) -> float:
    """The solver seconds of ``blocks``: each block's own, except that blocks solved side by side on shared
    passes (one ``scan_group``) count their group's longest eigen solve once, since their clocks ran together;
    what each did after its eigenvalues (trace, density) ran on its own and adds. Blocks from reports written
    before ``scan_group`` existed carry none and add in full, which overstates a shared pass."""
    groups: dict[str, float] = {}
    total = 0.0
    for block in blocks:
        # A minimal or hand-edited report may lack a time, or hold one that is no number: it adds nothing.
        seconds = _recorded(block.seconds)
        eigen_seconds = _recorded(block.eigen.seconds) if block.eigen is not None else 0.0
        if block.scan_group is None or block.eigen is None:
            total += seconds
        else:
            groups[block.scan_group] = max(groups.get(block.scan_group, 0.0), eigen_seconds)
            total += max(seconds - eigen_seconds, 0.0)  # its trace, density, preconditioning: on its own
    return total + sum(groups.values())


def _recorded(value: Any) -> float:
    """A recorded time or count as a finite number >= 0, or 0 where the report has none (or nonsense)."""
    number = optional_float(value)
    return number if number is not None and math.isfinite(number) and number >= 0 else 0.0


def cost_section(directory: RunDirectory) -> tuple[dict[str, Any], str] | None:
    """What the run directory's data cost, summed from what it recorded: the runs' wall seconds (training and
    evaluation where the rows split them) and the eigen reports' solver seconds and products. None without a
    finished run or report. The seconds are as measured, on whatever else the machine was doing then."""
    runs = [run for run in directory.runs if run.is_usable and run.wall_seconds is not None]
    # a report copied from a seed with a bit-identical adapter at init cost nothing: counted once, as its source
    reports = [
        *(report for key, report in directory.init_reports.items() if key not in directory.reused_inits),
        *directory.final_reports.values(),
    ]
    blocks = [block.report for report in reports for block in report.blocks]
    if not runs and not blocks:
        return None
    walls = [
        float(run.wall_seconds) for run in runs if run.wall_seconds is not None
    ]  # all of them: filtered above
    data: dict[str, Any] = {
        "runs": len(runs),
        "run_seconds": sum(walls),
        "median_run_seconds": statistics.median(walls) if walls else None,
        "train_seconds": sum(float(run.train_seconds) for run in runs if run.train_seconds is not None),
        "eval_seconds": sum(float(run.eval_seconds) for run in runs if run.eval_seconds is not None),
        "eigen_reports": len(reports),
        "eigen_blocks": len(blocks),
        "eigen_blocks_whole": sum(1 for report in reports for block in report.blocks if block.is_whole),
        "eigen_reports_with_modules": sum(1 for report in reports if report.modules),
        "eigen_products": sum(int(_recorded(block.hvps)) for block in blocks),
        "eigen_seconds": eigen_wall_seconds(blocks),
        "eigen_blocks_in_groups": sum(1 for block in blocks if block.scan_group is not None),
        "eigen_reports_reused": len(directory.reused_inits),
    }
    parts = []
    if runs:
        split = (
            f" ({_hours(data['train_seconds'])} training, {_hours(data['eval_seconds'])} evaluating)"
            if data["train_seconds"]
            else ""
        )
        parts.append(
            f"{len(runs)} finished runs took {_hours(data['run_seconds'])}{split}, "
            f"median {data['median_run_seconds']:.0f} s a run"
        )
    if blocks:
        reused = (
            f" ({len(directory.reused_inits)} more copied from a seed whose adapter at init was "
            "bit-identical, at no cost)"
            if directory.reused_inits
            else ""
        )
        whole, modules = data["eigen_blocks_whole"], len(blocks) - data["eigen_blocks_whole"]
        merged = data["eigen_reports_with_modules"]
        split = f", {merged} of them with per-module blocks from a separate file merged in" if merged else ""
        parts.append(
            f"{len(reports)} λ reports (one per adapter measured{split}) hold {len(blocks)} blocks "
            f"({whole} whole-adapter, {modules} single-module), which took {_hours(data['eigen_seconds'])} "
            f"of solver time in {data['eigen_products']} Hessian-vector products{reused}"
        )
        grouped = data["eigen_blocks_in_groups"]
        if grouped:
            parts[-1] += (
                f" ({grouped} of the blocks solved side by side on shared passes: each group's "
                "time counted once)"
            )
    text = (
        "### Cost (as recorded)\n\n"
        + "; ".join(parts)
        + ". A run's wall time is its training, its evaluation "
        "and the rest (loading the model, and a λ probe at initialisation where the run made it, so the two sums "
        "overlap). Seconds as each run and solve measured them, on whatever else the machine did then."
    )
    return data, text


def _stability(directory: RunDirectory, analysis: Analysis) -> Any:
    try:
        return stability_report(directory, analysis)
    except UserError:
        return None
