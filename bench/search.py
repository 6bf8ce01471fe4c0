"""Adaptive LR search against the paper's 12-point grid, on synthetic curves (no model, runs in a second).

For each curve shape (parabolic, asymmetric, diverging above 3x the optimum), each true optimum η_true placed
every 0.05 decade across the grid and beyond it, and each centre error (how far the predicted η̂ is from η_true),
the search is driven round by round as the sweep would drive it. The table gives, per centre error, the runs
it used (median, worst), its rounds (median), how often its best lattice point lies more than a quarter decade
from the grid's best, how often it ends censored (at a bound) and how often at the run cap before reaching the
resolution. The grid is 2e-5 · 10^(k/4), k = -1..10; the search is bounded to the same range.

    .venv/bin/python bench/search.py
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from hessian_lora.settings.search import AdaptiveSearch, next_points, search_status

GRID = tuple(2e-5 * 10 ** (k / 4) for k in range(-1, 11))
SETTINGS = AdaptiveSearch(min_lr=GRID[0], max_lr=GRID[-1])
Curve = Callable[[float], "float | None"]


def curve(opt: float, shape: str) -> Curve:
    """Eval loss against LR: a valley in log10 LR around ``opt``, with small deterministic noise."""

    def loss(lr: float) -> float | None:
        x = math.log10(lr) - math.log10(opt)
        if shape == "diverging" and x > math.log10(3):
            return None
        curvature = 1.0 if shape != "asymmetric" or x < 0 else 3.0
        return 1.0 + curvature * x * x + 0.003 * math.sin(37 * math.log10(lr))

    return loss


def drive(
    loss: Curve, center: float, settings: AdaptiveSearch = SETTINGS
) -> tuple[dict[float, float | None], int]:
    """The sweep loop: ask for a round, run it, repeat. Returns the observed points and the number of rounds."""
    observed: dict[float, float | None] = {}
    rounds = 0
    while points := next_points(observed, center=center, settings=settings, higher_is_better=False):
        rounds += 1
        observed.update({lr: loss(lr) for lr in points})
    return observed, rounds


def grid_best(loss: Curve, grid: tuple[float, ...] = GRID) -> float | None:
    """The grid's best LR (ties to the lower), None when every grid point diverges."""
    finite = {lr: value for lr in grid if (value := loss(lr)) is not None}
    return min(finite, key=lambda lr: (finite[lr], lr)) if finite else None


def main() -> None:
    print(
        f"{'shape':<11} {'centre error':>12} {'runs median':>11} {'worst':>5} {'rounds':>6} "
        f"{'miss > 1/4 dec':>14} {'censored':>8} {'capped':>6}"
    )
    for shape in ("parabolic", "asymmetric", "diverging"):
        for error in (0.0, 0.25, -0.25, 0.5, -0.5, 0.75, -0.75, 1.0, -1.0, 1.5, -1.5):
            runs, rounds, misses, censored, capped = [], [], 0, 0, 0
            opts = [10 ** (math.log10(GRID[0]) - 0.5 + 0.05 * i) for i in range(int((2.75 + 1.0) / 0.05) + 1)]
            for opt in opts:
                loss = curve(opt, shape)
                center = opt * 10**error
                observed, n_rounds = drive(loss, center)
                status = search_status(observed, center=center, settings=SETTINGS, higher_is_better=False)
                runs.append(len(observed))
                rounds.append(n_rounds)
                reference = grid_best(loss)
                if reference is None:  # the whole grid diverges: the search must find no metric either
                    misses += status.best_lr is not None
                else:
                    misses += (
                        status.best_lr is None or abs(math.log10(status.best_lr / reference)) > 0.25 + 1e-9
                    )
                censored += status.censored
                capped += "run cap" in status.reason
            print(
                f"{shape:<11} {error:>+12.2f} {statistics.median(runs):>11g} {max(runs):>5} "
                f"{statistics.median(rounds):>6g} {misses:>7}/{len(opts):<6} {censored:>8}"
            )


if __name__ == "__main__":
    main()
