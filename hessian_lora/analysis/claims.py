"""The paper's claims against a run's analysis: for each claim, the paper's figure, ours with its interval, and a
verdict that says no more than the data does, by a rule that the data could fail (docs/claims.md states each).

The paper (arXiv 2602.04998; ``../shared/REFERENCE.md``, "The paper") reports, for Qwen3-0.6B with r = 128:

- **tuned, all methods peak within 1–2 %** of each other;
- **best LRs differ**: η* lower than LoRA's by 10× (PiSSA), 3.2× (MiLoRA), 1.8× (Init[AB]) and up to 18.2×
  (OLoRA, LoRA-GA);
- **λ_max relative to LoRA** (q_proj modules): PiSSA ~10×, MiLoRA and Init[AB] ~2×, OLoRA and LoRA-GA up to ~100×;
- and, the paper's explanation, **a sharper adapter needs a lower LR**.

The rules:

- **peaks**: an equivalence test, two one-sided tests at 5 % each (the paired bootstrap's 90 % interval of the
  gap to the best): *supported* when the interval lies inside ±2 points, *contradicted* when it lies below −2,
  *not resolved* otherwise; the verdict says how far the interval's end lies from −2 in points and in problems
  (a score moves by one problem's share, 100/N points), and the power calculation (:mod:`.power`) how many seeds
  would decide it. One pooled row tests the mean gap of every other method the same way;
- **LR ratios**: the interval is the ratio of the two η* intervals, end against end (wider than a paired one);
  *consistent* only when it holds the paper's factor **and excludes 1×** (no difference: the paper claims one),
  *differs* when it excludes the factor, *not resolved* when it holds both; an interval end set by the highest or
  lowest LR searched (a censored end) makes any verdict that end could change *not testable*; a censored η*
  itself is a bound, *not testable*; an optimum that leaving one seed out moves by more than half a lattice step
  is flagged, with the ratio without that seed;
- **λ ratios** (certified values, no interval): *consistent* when the ratio lies in the paper's band, the ratios
  closer in log to the paper's figure than to 1×, [√f, f^1.5] (so ≈ 2× rejects 1×); *differs* outside it; under
  an "up to" figure's band, neither;
- **the relation**, once per kind of λ (whole adapter, and the paper's per-module λ as module medians), each with
  its R²: *supported* when the slope's interval is below 0; and **η* ∝ 1/λ** (slope −1) tested on its own:
  *consistent* when the slope's interval holds −1, *rejected* when it excludes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hessian_lora.core.metrics import SCORE_METRICS
from hessian_lora.methods.registry import DEFAULT_METHOD, METHODS

REFERENCE = DEFAULT_METHOD
# The paper's "within 1–2 %", read as accuracy points (its tables report accuracy in %); the looser end is tested.
PEAK_TOLERANCE_POINTS = 2.0
# The paper's figures, each method's in its spec (hessian_lora/methods/<name>.py, ``paper``):
# η*_LoRA / η*_method as the paper reports it (Qwen3-0.6B, r = 128); OLoRA's and LoRA-GA's is the paper's "up to".
PAPER_LR_FACTOR: Mapping[str, float] = {
    name: spec.paper.lr_factor for name, spec in METHODS.items() if spec.paper
}
# λ_max(method) / λ_max(LoRA) per q_proj module as the paper reports it (approximate: "~10×", "~2×", "up to ~100×").
PAPER_LAMBDA_RATIO: Mapping[str, float] = {
    name: spec.paper.lambda_ratio for name, spec in METHODS.items() if spec.paper
}
UP_TO = frozenset(
    name for name, spec in METHODS.items() if spec.paper and spec.paper.up_to
)  # the paper's "up to"
# An "up to" is the larger figure of OLoRA and LoRA-GA, not each one's: a value below it cannot contradict it, and
# it confirms no value either, so it is not called "differs" (nor "consistent").
UNDER_UP_TO = 'below the paper\'s "up to": not a contradiction, and no value to confirm'
PAPER_SETUP = "Qwen3-0.6B-Base, r = 128, one epoch of MetaMathQA (GSM8K/MATH), seeds 1–3"


@dataclass(frozen=True)
class ClaimRow:
    """One line of the claims table: what the paper says, what this run shows, and the verdict."""

    claim: str
    method: str
    paper: str
    ours: str
    verdict: str

    def to_dict(self) -> dict[str, str]:
        """The row as JSON-ready strings."""
        return asdict(self)


def _points(value: float) -> str:
    return format(value * 100, "+.1f").replace("-", "−")


def _ratio(value: float) -> str:
    return f"{value:.3g}×"


def paper_band(factor: float) -> tuple[float, float]:
    """The ratios closer in log to the paper's ``factor`` than to 1× (no effect), and as far on the other side:
    [√factor, factor^1.5]. For ≈ 2× that is [1.41×, 2.83×]: a ratio of 1× fails it."""
    return math.sqrt(factor), factor**1.5


def _problems(points: float, n_problems: int | None) -> str:
    """``0.1 points = 0.27 problems`` (the distance in the score's own granularity), or the points alone."""
    text = f"{points:.2g} points"
    if n_problems:
        text += (
            f" = {points * n_problems / 100:.2g} problem{'s' if abs(points * n_problems / 100) != 1 else ''}"
        )
    return text


def _seeds_text(power: Mapping[str, Any] | None, data: Mapping[str, Any], methods: Sequence[str]) -> str:
    """What would decide an unresolved gap: the seeds (or problems) the power calculation asks for, and the runs."""
    if not power:
        return ""
    components = power.get("components") or {}
    seeds, problems = components.get("n_seeds"), components.get("n_problems")
    needed, more_problems, problems_needed = (
        power.get("seeds_needed"),
        power.get("seeds_needed_4x_problems"),
        power.get("problems_needed"),
    )
    if needed is not None:
        runs = sum(len(data["methods"][name].get("lrs") or []) for name in methods if name in data["methods"])
        extra = max(needed - (seeds or 0), 0) * runs
        median = (data.get("cost") or {}).get("median_run_seconds")
        cost = f", ≈ {extra * median / 3600:.0f} h of runs" if median and extra else ""
        text = f"{needed} seeds at {problems} problems would decide it ({extra} more runs{cost})"
    else:
        text = f"no number of seeds decides it at {problems} problems"
        text += (
            f"; at {4 * (problems or 0)} problems, {more_problems} seeds"
            if more_problems is not None
            else f", nor at {4 * (problems or 0)} problems"
        )
        text += (
            f"; {problems_needed} problems at {seeds} seeds"
            if problems_needed is not None
            else f", nor any number of problems at {seeds} seeds"
        )
    return f"; power (80 %, the observed gap taken as true): {text}"


def _equivalence(
    interval: Sequence[float],
    point: float,
    data: Mapping[str, Any],
    power: Mapping[str, Any] | None,
    methods: Sequence[str],
) -> tuple[str, str]:
    """(ours, verdict) of one gap's equivalence test against ±2 points from its 90 % interval."""
    n = data.get("n_eval_examples")
    low, high = float(interval[0]), float(interval[1])
    margin = PEAK_TOLERANCE_POINTS / 100
    ours = f"{_points(point)} points, 90 % [{_points(low)}, {_points(high)}]"
    grain = f" (one problem = {100 / n:.2g} points)" if n else ""
    close = (
        "; under one problem: one answer could flip it"
        if n and min(abs(low + margin), abs(high + margin)) < 1 / n
        else ""
    )
    if -margin < low and high < margin:
        verdict = (
            f"supported: equivalent within ±2 points (both one-sided tests pass); the interval clears −2 by "
            f"{_problems((low + margin) * 100, n)}{grain}{close}"
        )
    elif high < -margin:
        verdict = (
            f"contradicted: the 90 % interval lies below −2 points, by "
            f"{_problems((-margin - high) * 100, n)}{grain}{close}"
        )
    else:
        side = low if low <= -margin else high
        where = (
            f"reaches {_problems((-margin - low) * 100, n)} below −2"
            if side == low
            else f"reaches {_problems((high - margin) * 100, n)} above +2"
        )
        verdict = f"not resolved: the 90 % interval {where}{grain}{close}" + _seeds_text(power, data, methods)
    return ours, verdict


def _peak_rows(data: Mapping[str, Any]) -> list[ClaimRow]:
    claim = "tuned, every method peaks within 1–2 % of the best (equivalence: two one-sided tests, ±2 points)"
    if data["metric"] not in SCORE_METRICS:
        return [
            ClaimRow(
                claim,
                "all",
                "within 1–2 %",
                f"metric {data['metric']}",
                "not testable: the optimum was decided by a loss, not a score",
            )
        ]
    rows = []
    best = data.get("best_method")
    for name, method in data["methods"].items():
        if method.get("gap_verdict") == "best":
            rows.append(ClaimRow(claim, name, "within 1–2 %", "the best peak", "reference"))
            continue
        point = -method["gap_to_best"]  # a score: higher is better, so the gap is a shortfall
        if method.get("censored"):
            rows.append(
                ClaimRow(
                    claim,
                    name,
                    "within 1–2 %",
                    f"{_points(point)} points (optimum at an edge)",
                    "not testable: the method's optimum was not reached",
                )
            )
            continue
        interval = method.get("gap_ci_equivalence")
        if not interval:
            rows.append(
                ClaimRow(
                    claim,
                    name,
                    "within 1–2 %",
                    f"{_points(point)} points (no interval)",
                    "not resolved: no interval",
                )
            )
            continue
        ours, verdict = _equivalence(interval, point, data, method.get("power"), [name, best or REFERENCE])
        rows.append(ClaimRow(claim, name, "within 1–2 %", ours, verdict))
    pooled = data.get("pooled_gap")
    if pooled and pooled.get("gap_ci_equivalence"):
        names = list(pooled["methods"])
        ours, verdict = _equivalence(
            pooled["gap_ci_equivalence"],
            pooled["gap"],
            data,
            pooled.get("power"),
            [*names, best or REFERENCE],
        )
        rows.append(
            ClaimRow(claim, f"pooled ({len(names)} methods)", "within 1–2 %", f"mean gap {ours}", verdict)
        )
    return rows


def _against_lora(
    data: Mapping[str, Any], factors: Mapping[str, float], prefix: str = ""
) -> Iterator[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]:
    """(method, the paper's figure as text, the method's summary, LoRA's) for each method the paper gives a factor
    for and the run has; nothing without LoRA. OLoRA's and LoRA-GA's figure is the paper's "up to"."""
    methods = data["methods"]
    reference = methods.get(REFERENCE)
    if reference is None:
        return
    for name, factor in factors.items():
        if name in methods:
            upto = "up to " if name in UP_TO else ""
            yield name, f"{upto}{prefix}{_ratio(factor)}", methods[name], reference


def _censored_ends(interval: Sequence[float], lrs: Sequence[float]) -> tuple[bool, bool]:
    """Whether the η* interval's lower / upper end is the lowest / highest LR searched (the bootstrap's optimum
    there is a bound: the true end may lie beyond)."""
    if not lrs:
        return False, False
    return (
        math.isclose(interval[0], min(lrs), rel_tol=1e-9),
        math.isclose(interval[1], max(lrs), rel_tol=1e-9),
    )


def _seed_flag(method: Mapping[str, Any], reference: Mapping[str, Any], name: str) -> str:
    """The text ``; flagged: without seed 2, 4.45×`` for each seed whose removal moves either optimum (a one-seed
    optimum)."""
    parts = []
    for who, summary in ((name, method), (REFERENCE, reference)):
        for seed in summary.get("seeds_moving_optimum") or []:
            without = (summary.get("eta_star_without_seed") or {}).get(str(seed)) or (
                summary.get("eta_star_without_seed") or {}
            ).get(seed)
            if without is None:
                continue
            ratio = reference["eta_star"] / without if who == name else without / method["eta_star"]
            parts.append(f"without {who}'s seed {seed}, {_ratio(ratio)}")
    return f"; flagged, one seed moves the optimum past half an LR step: {', '.join(parts)}" if parts else ""


def _lr_verdict(
    low: float, high: float, factor: float, name: str, low_censored: bool, high_censored: bool
) -> str:
    """The LR-ratio rule of the module docstring; a censored end widens the interval on its side without limit."""
    if high < factor and not high_censored:
        return UNDER_UP_TO if name in UP_TO else "differs: our interval is below the paper's factor"
    if low > factor and not low_censored:
        return "differs: our interval is above the paper's factor"
    if low_censored or high_censored:
        end = "lower" if low_censored else "upper"
        return (
            f"not testable: the interval's {end} end is set by the edge of the LRs searched (a censored end), "
            "and the verdict turns on it"
        )
    if low <= 1.0:
        return "not resolved: the interval holds the paper's factor and also 1× (no difference)"
    return "consistent: the paper's factor is inside our interval, and 1× (no difference) is not"


def _lr_rows(data: Mapping[str, Any]) -> list[ClaimRow]:
    claim = "η* lower than LoRA's by the paper's factor (η*_LoRA / η*)"
    rows = []
    for name, paper, method, reference in _against_lora(data, PAPER_LR_FACTOR):
        factor = PAPER_LR_FACTOR[name]
        if method.get("eta_star") is None or reference.get("eta_star") is None:
            continue
        point = reference["eta_star"] / method["eta_star"]
        if method.get("censored") or reference.get("censored"):
            edge = name if method.get("censored") else REFERENCE
            rows.append(
                ClaimRow(
                    claim,
                    name,
                    paper,
                    f"{_ratio(point)} (bound: {edge}'s η* at an edge)",
                    "not testable: an optimum was not reached",
                )
            )
            continue
        ours_ci, ref_ci = method.get("eta_ci"), reference.get("eta_ci")
        if not ours_ci or not ref_ci:
            rows.append(
                ClaimRow(claim, name, paper, f"{_ratio(point)} (no interval)", "not resolved: no interval")
            )
            continue
        low, high = ref_ci[0] / ours_ci[1], ref_ci[1] / ours_ci[0]
        ours_low, ours_high = _censored_ends(ours_ci, method.get("lrs") or [])
        ref_low, ref_high = _censored_ends(ref_ci, reference.get("lrs") or [])
        # The ratio's low end is LoRA's low end over the method's high end, and the other way round.
        low_censored, high_censored = ref_low or ours_high, ref_high or ours_low
        verdict = _lr_verdict(low, high, factor, name, low_censored, high_censored)
        ends = "".join(
            mark
            for mark, flag in (
                (" (lower end censored)", low_censored),
                (" (upper end censored)", high_censored),
            )
            if flag
        )
        rows.append(
            ClaimRow(
                claim,
                name,
                paper,
                f"{_ratio(point)} [{_ratio(low)}, {_ratio(high)}]{ends}",
                verdict + _seed_flag(method, reference, name),
            )
        )
    return rows


def _seed_spread(method: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """The ratio's range over the seeds both methods have a λ for ("" with fewer than two)."""
    ours, ref = method.get("lambda_init_per_seed") or {}, reference.get("lambda_init_per_seed") or {}
    ratios = [float(ours[s]) / float(ref[s]) for s in ours if s in ref and ours[s] and ref[s]]
    if len(ratios) < 2:
        return ""
    return f", seeds {min(ratios):.3g}–{max(ratios):.3g}×"


def per_module_ratios(ours: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """λ_max(method) / λ_max(reference) of each module both measured (matched by name, so a layer is compared
    with the reference's same layer): the paper's per-layer view, which the claims and figure (c) both use."""
    return {
        name: float(ours[name]) / float(reference[name])
        for name in sorted(ours)
        if name in reference and ours[name] and reference[name]
    }


def _per_layer_ratios(method: Mapping[str, Any], reference: Mapping[str, Any]) -> list[float]:
    """:func:`per_module_ratios` of two methods' summaries at init ([] where either has no modules)."""
    return list(
        per_module_ratios(
            method.get("lambda_init_modules") or {}, reference.get("lambda_init_modules") or {}
        ).values()
    )


def _lambda_rows(data: Mapping[str, Any]) -> list[ClaimRow]:
    claim = "λ_max at init relative to LoRA's (the paper: q_proj modules)"
    rows = []
    for name, paper, method, reference in _against_lora(data, PAPER_LAMBDA_RATIO, prefix="~"):
        factor = PAPER_LAMBDA_RATIO[name]
        module, ref_module = (
            method.get("lambda_init_module_median"),
            reference.get("lambda_init_module_median"),
        )
        whole, ref_whole = method.get("lambda_init_whole"), reference.get("lambda_init_whole")
        per_layer = _per_layer_ratios(method, reference)
        basis = method.get("lambda_init_module_basis")
        if per_layer:
            # The paper's view (and figure c's): each module's ratio to LoRA's same module, then their median.
            ratio = float(np.median(per_layer))
            block = (
                f"median of {len(per_layer)} per-module ratios, {min(per_layer):.3g}–{max(per_layer):.3g}×"
                + (f": {basis}" if basis else "")
            )
        elif module and ref_module:
            ratio, block = module / ref_module, "per-module median" + (f": {basis}" if basis else "")
        elif whole and ref_whole:
            ratio, block = whole / ref_whole, "whole adapter"
        else:
            continue
        ours = (
            f"{_ratio(ratio)} ({block}{_seed_spread(method, reference) if block == 'whole adapter' else ''})"
        )
        flag = (
            "lambda_init_whole_uncertified" if block == "whole adapter" else "lambda_init_module_uncertified"
        )
        uncertified = method.get(flag) or reference.get(flag)
        low, high = paper_band(factor)
        band = f"band [{_ratio(low)}, {_ratio(high)}]"
        if low <= ratio <= high:
            verdict = f"consistent: inside the paper's {band} (closer to its figure than to 1×)"
        elif ratio < low and name in UP_TO:
            verdict = f"{UNDER_UP_TO} (below its {band})"
        else:
            off = max(ratio / factor, factor / ratio)
            verdict = (
                f"differs: {off:.3g}× {'below' if ratio < low else 'above'} the paper's figure, "
                f"outside its {band}"
            )
            if ratio < low and ratio < math.sqrt(low):
                verdict += ", nearer to 1× (no effect) than to the paper's figure"
        if per_layer and len(per_layer) > 1:
            inside = sum(low <= value <= high for value in per_layer)
            verdict += f"; {inside} of {len(per_layer)} modules inside the band"
        if block == "whole adapter":
            verdict += "; not the paper's block (q_proj), so a hint, not a test"
        if uncertified:
            verdict += "; a λ is uncertified"
        rows.append(ClaimRow(claim, name, paper, ours, verdict))
    return rows


SOURCE_NAMES = {
    "whole": "whole-adapter λ",
    "module_median": "per-module λ (module medians, the paper's block)",
}


def _relation_fits(data: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The relation's fit per λ source (``by_source``); an older analysis.json's single fit under its source."""
    relation = data.get("relation") or {}
    fits = dict(relation.get("by_source") or {})
    if not fits and relation.get("slope") is not None:
        fits[relation.get("lambda_source", "whole")] = relation
    return fits


def _relation_rows(data: Mapping[str, Any]) -> list[ClaimRow]:
    claim = "a sharper adapter needs a lower LR (log η* against log λ_max)"
    inverse = "η* ∝ 1/λ_max (slope −1, the form of gradient descent's bound 2/λ)"
    relation = data.get("relation") or {}
    fits = _relation_fits(data)
    if not fits:
        return [
            ClaimRow(
                claim,
                "all",
                "yes (its explanation of the LR gaps)",
                relation.get("note") or "no fit",
                "not testable: too few interior optima",
            )
        ]
    rows = []
    for source, fit in fits.items():
        slope, interval = fit["slope"], fit.get("slope_ci95")
        rho, r2 = fit.get("spearman_rho"), fit.get("r2")
        count = len(fit.get("methods") or []) or relation.get("n_methods", 0)
        ours = f"slope {slope:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")
        ours += (f", R² {r2:.2f}" if r2 is not None else "") + (
            f", Spearman ρ {rho:.2f}" if rho is not None else ""
        )
        ours += f" over {count} methods"
        if not interval:
            verdict = "not resolved: no interval"
        elif interval[1] < 0:
            verdict = "supported: the slope's interval is below 0"
        elif interval[0] > 0:
            verdict = "contradicted: the slope's interval is above 0"
        else:
            verdict = "not resolved: the slope's interval contains 0"
        method = SOURCE_NAMES.get(source, source)
        rows.append(ClaimRow(claim, method, "yes (its explanation of the LR gaps)", ours, verdict))
        if interval:
            holds = interval[0] <= -1.0 <= interval[1]
            said = (
                "consistent: the slope's interval holds −1"
                if holds
                else f"rejected: the slope's interval excludes −1 ({'above' if interval[0] > -1 else 'below'} it)"
            )
            rows.append(ClaimRow(inverse, method, "not claimed; tested as the bound's form", ours, said))
    return rows


def paper_claims(data: Mapping[str, Any]) -> list[ClaimRow]:
    """The claims table for ``data`` (``Analysis.to_dict()`` or analysis.json); empty without LoRA."""
    if REFERENCE not in data.get("methods", {}):
        return []
    return [*_peak_rows(data), *_lr_rows(data), *_lambda_rows(data), *_relation_rows(data)]


def setup_text(setup: Mapping[str, Any]) -> str:
    """Ours, in the paper's terms: ``smollm2-135m, r = 64, 24 AdamW steps, arith:chain_sum…`` ("" without one)."""
    parts = [str(setup["model"])] if setup.get("model") else []
    if setup.get("rank") is not None:
        parts.append(f"r = {setup['rank']}")
    if setup.get("steps"):
        parts.append(f"{setup['steps']} {setup.get('optimizer', 'AdamW')} steps")
    elif setup.get("epochs"):
        parts.append(f"{setup['epochs']} epoch(s) of {setup.get('optimizer', 'AdamW')}")
    if setup.get("task"):
        parts.append(f"task {setup['task']}")
    return ", ".join(parts)


def claims_markdown(rows: Sequence[ClaimRow], data: Mapping[str, Any]) -> str:
    """The table as markdown, headed by both setups and what the evidence is (seeds, problems, the score's
    granularity), so no verdict reads as more."""
    seeds = sorted({int(m.get("n_seeds") or 0) for m in data["methods"].values()})
    seeds_text = (
        "–".join(str(s) for s in (seeds[0], seeds[-1])) if len(seeds) > 1 else str(seeds[0] if seeds else 0)
    )
    problems = data.get("n_eval_examples")
    level = data.get("level", 0.95)
    ours = setup_text(data.get("setup") or {})
    grain = f" (one problem = {100 / problems:.2g} points)" if problems else ""
    lines = [
        "### The paper's claims",
        "",
        f"The paper: {PAPER_SETUP}. Ours: {ours or 'the run directory'}.",
        "",
        f"Evidence: {seeds_text} seed(s) per method, {problems if problems is not None else '?'} evaluation "
        f"problems{grain}, {level:.0%} intervals ({_basis(data)}; the peaks' equivalence test reads the 90 % "
        "interval). Each verdict's rule is in its cell and in docs/claims.md.",
        "",
        "| claim | method | paper | ours | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.claim} | {r.method} | {r.paper} | {r.ours} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def _basis(data: Mapping[str, Any]) -> str:
    bases = sorted(
        {str(m.get("uncertainty_basis")) for m in data["methods"].values() if m.get("uncertainty_basis")}
    )
    return "; ".join(bases) if bases else "no intervals"
