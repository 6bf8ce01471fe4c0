"""Adaptive learning-rate search (``search: adaptive``): which LRs to run next, from what has been observed.

Why a pure function: a sweep is resumed after SIGKILL by rereading its run store, so the search keeps no
state of its own. :func:`next_points` replays the search from scratch on every call: round 1 is a function of
nothing, round n+1 of the results of rounds 1..n. A round whose points are not all observed yet is the current
round, and its missing points are returned. Rows the replay never asks for (an earlier grid, other seeds) are
ignored, and rows it asks for that already exist are reused. So a killed-and-resumed sweep makes exactly the runs
of an uninterrupted one, whenever it was killed, even halfway through a round.

Why a lattice: every point is ``base · 10^(k / per_decade)`` for an integer k, computed like
:func:`~hessian_lora.settings.sweep.parse_lr_grid` computes ``{base, per_decade, k}`` grids. The default is the
paper's quarter-decade lattice 2e-5 · 10^(k/4), so an adaptive point *is* a grid point: the same float, the same
run id, and η* values comparable with a grid sweep's. Snapping to a sweep's own ``lrs`` was rejected because those
may be irregular (tiny.yaml) and end where a censored optimum needs the search to go on. For a geometric grid,
set ``base`` and ``per_decade`` to match it (smollm2_arith.yaml: base 1e-3, per_decade 2).

The algorithm, in lattice steps (bracket b = bracket/step, fine f = resolution/step):
  1. a bracket {c - b, c, c + b} around the lattice point c nearest the centre (recommend's η̂, or the grid's
     centre);
  2. if the best point is the lowest (highest) observed LR, the optimum is censored on that side: run one point
     b steps further on that side;
  3. otherwise halve the gaps to the best point's neighbours (both sides at once, so they can run in parallel)
     until both are at most f. That locates η* to ±resolution; analysis.fit_peak then refines it by its parabola.
It stops at the run cap (the optimum may stay censored or coarse) and at the LR bounds (censored there).
A metric that is flat on every point used (all values within ``flat_tolerance``: accuracy 0.0 in every run of a
model that learns nothing it can score) stops the search: it has learned nothing, and no point is its optimum
(:mod:`hessian_lora.sweep.adaptive` then starts over on ``fallback``, the held-out loss, when the flat metric was
the scorer's). A run without a metric (diverged, failed) scores worst. If no run has a metric yet, the search steps
down, because divergence means the LR is too high. Ties go to the point nearest the centre, then to the lower LR.
Every round adds at least one new lattice point inside the bounds, so the search always ends, at the latest at
``max_runs`` points.

What a finished search reports (:class:`SearchStatus.outcome`) never claims more than its points show: ``located``
only when the best point has observed neighbours on both sides within ``resolution``; ``edge`` when the best
point is the lowest or highest LR tried (an LR bound or the run cap stopped it: η* is a bound, not located);
``coarse`` when the cap stopped it with an interior best whose neighbours are still farther than ``resolution``;
``flat`` when the metric did not vary; ``no_metric`` when no run produced one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from hessian_lora.core.errors import UserError
from hessian_lora.core.rundir import lr_key
from hessian_lora.core.yaml_reader import numbers_from_strings, settings_from_mapping

SEARCH_MODES = ("grid", "adaptive")
SEARCH_METRICS = (
    "auto",
    "accuracy",
    "eval_loss",
    "train_loss",
)  # analysis.curves.HIGHER_IS_BETTER's, and auto
FALLBACK_METRICS = ("eval_loss", "train_loss", "none")
OUTCOMES = ("running", "located", "edge", "coarse", "flat", "no_metric")
_WORST = -math.inf


@dataclass(frozen=True)
class AdaptiveSearch:
    """Settings of the adaptive search for one (method, rank, seed, batch size). Lengths are in decades of LR."""

    resolution: float = 0.25  # stop when the best point's neighbours are this close (a multiple of the step)
    bracket: float = 0.5  # half-width of the first round, and the step when extending a censored side
    max_runs: int = 8  # a 12-point grid costs 12; a centre within ±0.5 decades typically needs 5-6
    min_lr: float = 1e-6  # the search never leaves [min_lr, max_lr]; an optimum at a bound is censored
    max_lr: float = 1.0
    base: float = 2e-5  # lattice: base · 10^(k / per_decade)
    per_decade: int = 4
    metric: str = (
        "auto"  # what the search optimises: auto (accuracy when the task has a scorer, else eval_loss)
    )
    calibration: str | None = None  # the centre's calibration (json or RUN_DIR); None: the shipped one
    # The centre's calibration refitted without the searched method's own point (when it has one), so no centre
    # rests on the η* it is meant to find (sweep/adaptive.py).
    leave_method_out: bool = False
    # When the metric is flat (or missing) on the whole first bracket, the search starts over on this metric
    # (held-out loss by default; "none": stop and say so). sweep/adaptive.py applies it.
    fallback: str = "eval_loss"
    flat_tolerance: float = 0.0  # a metric whose values on the points used span at most this is flat

    def __post_init__(self) -> None:
        def positive(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise UserError(f"search.{name} must be a positive number, got {value!r}.")
            return float(value)

        if isinstance(self.per_decade, bool) or not isinstance(self.per_decade, int) or self.per_decade < 1:
            raise UserError(f"search.per_decade must be an integer >= 1, got {self.per_decade!r}.")
        if isinstance(self.max_runs, bool) or not isinstance(self.max_runs, int) or self.max_runs < 1:
            raise UserError(f"search.max_runs must be an integer >= 1, got {self.max_runs!r}.")
        for name in ("resolution", "bracket"):
            steps = positive(name) * self.per_decade
            if abs(steps - round(steps)) > 1e-6:
                raise UserError(
                    f"search.{name} {getattr(self, name)} is not a multiple of the lattice step "
                    f"1/{self.per_decade} decade: use e.g. {1 / self.per_decade:g}."
                )
        if self.bracket < self.resolution - 1e-9:
            raise UserError(
                f"search.bracket {self.bracket} is below the resolution {self.resolution}: raise it."
            )
        positive("base")
        if self.metric not in SEARCH_METRICS:
            raise UserError(f"search.metric must be one of {', '.join(SEARCH_METRICS)}, got {self.metric!r}.")
        if self.fallback not in FALLBACK_METRICS:
            raise UserError(
                f"search.fallback must be one of {', '.join(FALLBACK_METRICS)}, got {self.fallback!r}."
            )
        if not isinstance(self.leave_method_out, bool):
            raise UserError(f"search.leave_method_out must be true or false, got {self.leave_method_out!r}.")
        if (
            isinstance(self.flat_tolerance, bool)
            or not isinstance(self.flat_tolerance, (int, float))
            or not (0 <= self.flat_tolerance < math.inf)
        ):
            raise UserError(f"search.flat_tolerance must be a number >= 0, got {self.flat_tolerance!r}.")
        if self.calibration is not None and (
            not isinstance(self.calibration, str) or not self.calibration.strip()
        ):
            raise UserError(
                f"search.calibration must be a calibration .json or a RUN_DIR, got {self.calibration!r}."
            )
        if positive("min_lr") > positive("max_lr"):
            raise UserError(f"search.min_lr {self.min_lr:g} is above max_lr {self.max_lr:g}: swap them.")
        if self.bounds[0] > self.bounds[1]:
            raise UserError(
                f"search: no lattice point lies in [{self.min_lr:g}, {self.max_lr:g}]: widen the bounds."
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "config") -> AdaptiveSearch:
        """Settings from the YAML ``search:`` mapping (``mode`` aside); every problem is a one-line UserError."""
        values = {
            key: value
            if key in ("mode", "metric", "calibration", "fallback", "leave_method_out")
            else numbers_from_strings(value)
            for key, value in data.items()
        }
        return settings_from_mapping(cls, values, what="search", source=source, also_known=("mode",))

    def lattice_lr(self, k: int) -> float:
        """The k-th lattice LR, bit for bit the value parse_lr_grid gives for ``{base, per_decade, k}``."""
        return float(self.base) * 10 ** (k / self.per_decade)

    def lattice_index(self, lr: float) -> int | None:
        """k of a lattice LR (as run ids see LRs: 5 significant digits), None for an LR off the lattice."""
        k = round(self.per_decade * math.log10(lr / self.base))
        return k if lr_key(self.lattice_lr(k)) == lr_key(lr) else None

    @property
    def bounds(self) -> tuple[int, int]:
        """Lowest and highest lattice index inside [min_lr, max_lr]."""
        low = math.ceil(self.per_decade * math.log10(self.min_lr / self.base) - 1e-9)
        high = math.floor(self.per_decade * math.log10(self.max_lr / self.base) + 1e-9)
        return low, high


def search_from_config(value: Any, *, source: str = "config") -> AdaptiveSearch | None:
    """The YAML ``search:`` value: absent, ``grid`` or ``{mode: grid}`` → None (run the grid, the default);
    ``adaptive`` or ``{mode: adaptive, resolution: ..., ...}`` → the settings."""
    mode = value.get("mode", "adaptive") if isinstance(value, Mapping) else value
    if value is None or mode == "grid":
        if isinstance(value, Mapping) and set(value) - {"mode"}:
            raise UserError(f"{source}: search settings other than mode need mode: adaptive.")
        return None
    if mode != "adaptive":
        raise UserError(
            f"{source}: search must be one of {', '.join(SEARCH_MODES)} or a mapping with mode: "
            f"adaptive, got {mode!r}."
        )
    return AdaptiveSearch.from_mapping(value if isinstance(value, Mapping) else {}, source=source)


def grid_center(lrs: tuple[float, ...] | list[float]) -> float:
    """The centre to start from when no prediction applies: the geometric middle of the sweep's LR grid."""
    return 10 ** ((math.log10(min(lrs)) + math.log10(max(lrs))) / 2)


class SearchStatus(NamedTuple):
    """For progress lines and reports. ``censored``: the best point has no observed neighbour on one side.
    ``outcome``: one of :data:`OUTCOMES` (see the module docstring); only ``located`` locates an optimum."""

    done: bool
    reason: str
    best_lr: float | None
    censored: bool
    outcome: str = "running"

    @property
    def located(self) -> bool:
        """True only for an interior optimum resolved to the search's resolution."""
        return self.outcome == "located"


def first_bracket(center: float, settings: AdaptiveSearch) -> tuple[float, ...]:
    """The LRs of the first round (a function of the centre only), increasing."""
    points, _ = _round({}, _center_index(center, settings), settings)
    return tuple(settings.lattice_lr(k) for k in points)


def is_flat(values: Sequence[float | None], settings: AdaptiveSearch) -> bool:
    """Whether ``values`` (of two or more points, each with a metric) span at most ``settings.flat_tolerance``:
    the metric says nothing about where the optimum is. A point without a metric is information (it failed or
    diverged), so values with a None are not flat; all None is "no metric", not flat."""
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return (
        len(values) >= 2
        and len(finite) == len(values)
        and max(finite) - min(finite) <= settings.flat_tolerance
    )


def next_points(
    observed: Mapping[float, float | None], *, center: float, settings: AdaptiveSearch, higher_is_better: bool
) -> tuple[float, ...]:
    """The LRs to run next (all of one round, increasing; they may run in parallel), or () when the search is
    done. ``observed``: LR → metric of the finished runs of this method-setting, None for no metric."""
    _, pending, _ = replay(observed, center, settings, higher_is_better)
    return tuple(settings.lattice_lr(k) for k in pending)


def search_status(
    observed: Mapping[float, float | None], *, center: float, settings: AdaptiveSearch, higher_is_better: bool
) -> SearchStatus:
    """Where the search stands: done or not, why, the best LR so far, whether it is censored, and (once done)
    what it found (:data:`OUTCOMES`): never ``located`` for an optimum at the edge of what was tried, a flat
    metric or no metric."""
    known, pending, reason = replay(observed, center, settings, higher_is_better)
    runs = f"{len(known)} of at most {settings.max_runs} runs"
    done = not pending
    if not known or max(known.values()) == _WORST:
        text = f"no optimum: {reason}" if done else reason
        return SearchStatus(done, f"{text} ({runs})", None, bool(known), "no_metric" if done else "running")
    if _flat(known, settings):
        values = sorted({value if higher_is_better else -value for value in known.values()})
        shown = f"{values[0]:.4g}" if len(values) == 1 else f"{values[0]:.4g}–{values[-1]:.4g}"
        flat_reason = (
            f"no optimum: the metric is flat across the {len(known)} LRs tried "
            f"({settings.lattice_lr(min(known)):.3g}–{settings.lattice_lr(max(known)):.3g}, all {shown}): "
            "the search learned nothing"
        )
        return SearchStatus(done, f"{flat_reason} ({runs})", None, False, "flat" if done else "running")
    kc = _center_index(center, settings)
    best = _best(known, kc)
    below, above = [k for k in known if k < best], [k for k in known if k > best]
    censored = not below or not above
    best_lr = settings.lattice_lr(best)
    if not done:
        return SearchStatus(
            False, f"{reason}; best so far {best_lr:.3g} ({runs})", best_lr, censored, "running"
        )
    fine = round(settings.resolution * settings.per_decade)
    if censored:
        side = "lowest" if not below else "highest"
        return SearchStatus(
            True,
            f"optimum not located: the best LR {best_lr:.3g} is the {side} tried, so η* is "
            f"only a bound ({reason}) ({runs})",
            best_lr,
            True,
            "edge",
        )
    gaps = (best - max(below), min(above) - best)
    if max(gaps) > fine:
        return SearchStatus(
            True,
            f"optimum not located to ±{settings.resolution:g} decades: best {best_lr:.3g}, "
            f"its tried neighbours {gaps[0] / settings.per_decade:g} and "
            f"{gaps[1] / settings.per_decade:g} decades away ({reason}) ({runs})",
            best_lr,
            False,
            "coarse",
        )
    return SearchStatus(True, f"{reason}; best {best_lr:.3g} ({runs})", best_lr, False, "located")


def replay(
    observed: Mapping[float, float | None], center: float, settings: AdaptiveSearch, higher_is_better: bool
) -> tuple[dict[int, float], tuple[int, ...], str]:
    """Rerun the search on ``observed``: (scores of the points it has used, the current round's missing
    points, what it is doing)."""
    low, high = settings.bounds
    scores: dict[int, float] = {}
    for lr, value in sorted(observed.items()):
        k = settings.lattice_index(lr) if lr > 0 else None
        if k is not None and low <= k <= high:
            scores.setdefault(k, _score(value, higher_is_better))
    kc = _center_index(center, settings)
    known: dict[int, float] = {}
    while True:
        points, reason = _round(known, kc, settings)
        known.update({k: scores[k] for k in points if k in scores})
        missing = tuple(k for k in points if k not in scores)
        if missing or not points:
            return known, missing, reason


def _round(known: Mapping[int, float], kc: int, s: AdaptiveSearch) -> tuple[tuple[int, ...], str]:
    """One round on the points used so far: (new lattice indices, increasing; what they are for). The cap is
    applied last, so a search that ends exactly at its last run reports its optimum located, not capped."""
    wanted, reason = _plan(known, kc, s)
    budget = s.max_runs - len(known)
    if wanted and budget <= 0:
        return (), f"run cap {s.max_runs} reached"
    return tuple(sorted(wanted[:budget])), reason


def _plan(known: Mapping[int, float], kc: int, s: AdaptiveSearch) -> tuple[list[int], str]:
    """The next round without a cap, most useful point first (what a smaller budget keeps)."""
    low, high = s.bounds
    wide, fine = round(s.bracket * s.per_decade), round(s.resolution * s.per_decade)
    if not known:
        bracket = {min(max(kc + d, low), high) for d in (-wide, 0, wide)}
        return sorted(bracket, key=lambda k: (abs(k - kc), k)), "bracket around the centre"
    lowest, highest = min(known), max(known)
    if max(known.values()) == _WORST:
        if lowest == low:
            return [], "no run produced a metric, down to the lower LR bound"
        return [max(lowest - wide, low)], "no run produced a metric yet: stepping down"
    if _flat(known, s):
        return [], "the metric is flat: stopped"
    best = _best(known, kc)
    if best == lowest and best > low:
        return [max(best - wide, low)], "best at the lowest LR: extending below"
    if best == highest and best < high:
        return [min(best + wide, high)], "best at the highest LR: extending above"
    below, above = [k for k in known if k < best], [k for k in known if k > best]
    sides = []  # (neighbour's score, new point): bisect each gap wider than the resolution
    if below and best - max(below) > fine:
        sides.append((known[max(below)], best - max(fine, (best - max(below)) // 2)))
    if above and min(above) - best > fine:
        sides.append((known[min(above)], best + max(fine, (min(above) - best) // 2)))
    if sides:  # the side of the better neighbour first
        return [
            k for _, k in sorted(sides, key=lambda side: (-side[0], side[1]))
        ], "refining around the best LR"
    if best in (low, high):
        return [], f"optimum censored at the {'lower' if best == low else 'upper'} LR bound"
    return [], f"optimum located to ±{s.resolution:g} decades"


def _flat(known: Mapping[int, float], settings: AdaptiveSearch) -> bool:
    """Flat on the points used (scores are signed metrics, WORST for none): see :func:`is_flat`."""
    return is_flat([None if value == _WORST else value for value in known.values()], settings)


def _best(known: Mapping[int, float], kc: int) -> int:
    """Highest score; ties to the point nearest the centre, then to the lower LR (deterministic)."""
    return max(known, key=lambda k: (known[k], -abs(k - kc), -k))


def _center_index(center: float, settings: AdaptiveSearch) -> int:
    if not (isinstance(center, (int, float)) and 0 < center < math.inf):
        raise UserError(f"the search centre must be a positive learning rate, got {center!r}.")
    low, high = settings.bounds
    return min(max(round(settings.per_decade * math.log10(center / settings.base)), low), high)


def _score(value: float | None, higher_is_better: bool) -> float:
    if value is None or not math.isfinite(value):
        return _WORST
    return float(value) if higher_is_better else -float(value)
