"""Adaptive LR search (settings/search.py) on synthetic curves: no model, no run store, milliseconds per test.

A curve is an eval loss against LR, a valley in log10 LR around a true optimum (parabolic, asymmetric, or diverging
above 3x the optimum), with small deterministic noise. The reference is what the paper's 12-point grid
2e-5 · 10^(k/4), k = -1..10 finds on the same curve.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from hessian_lora.analysis import fit_peak
from hessian_lora.core.errors import UserError
from hessian_lora.settings.search import (
    AdaptiveSearch,
    first_bracket,
    grid_center,
    is_flat,
    next_points,
    search_from_config,
    search_status,
)
from hessian_lora.settings.sweep import parse_lr_grid

GRID = parse_lr_grid({"base": 2e-5, "per_decade": 4, "k": [-1, 10]})
BOUNDED = AdaptiveSearch(min_lr=GRID[0], max_lr=GRID[-1])  # the search confined to the grid's range
SHAPES = ("parabolic", "asymmetric", "diverging")
# True optima every 0.1 decade from the grid's first to its last point.
INSIDE = tuple(GRID[0] * 10 ** (0.1 * i) for i in range(28))


def curve(opt, shape="parabolic", noise=0.003):
    def loss(lr):
        x = math.log10(lr / opt)
        if shape == "diverging" and x > math.log10(3):
            return None
        curvature = 3.0 if shape == "asymmetric" and x > 0 else 1.0
        return 1.0 + curvature * x * x + noise * math.sin(37 * math.log10(lr))

    return loss


def drive(loss, center, settings=BOUNDED, higher_is_better=False):
    """The sweep's loop: ask for a round, run all of it, repeat. Returns (observed, rounds)."""
    observed, rounds = {}, []
    while points := next_points(
        observed, center=center, settings=settings, higher_is_better=higher_is_better
    ):
        assert len(rounds) < 50, "the search does not terminate"
        rounds.append(points)
        observed.update({lr: loss(lr) for lr in points})
    return observed, rounds


def status(observed, center, settings=BOUNDED, higher_is_better=False):
    return search_status(observed, center=center, settings=settings, higher_is_better=higher_is_better)


def best_of(loss, lrs):
    finite = {lr: value for lr in lrs if (value := loss(lr)) is not None}
    return min(finite, key=lambda lr: (finite[lr], lr)) if finite else None


def decades(a, b):
    return abs(math.log10(a / b))


# ----------------------------------------------------------------------------------------------------------
# Settings and lattice


def test_lattice_points_are_the_papers_grid_points_bit_for_bit():
    settings = AdaptiveSearch()
    assert tuple(settings.lattice_lr(k) for k in range(-1, 11)) == GRID
    assert [settings.lattice_index(lr) for lr in GRID] == list(range(-1, 11))
    assert settings.lattice_index(1.0001e-4) is None  # off the lattice: ignored by the search
    assert settings.lattice_index(float(f"{GRID[3]:.4e}")) == 2  # as run ids see it (5 significant digits)


def test_settings_from_yaml_forms():
    assert search_from_config(None) is None
    assert search_from_config("grid") is None
    assert search_from_config({"mode": "grid"}) is None
    assert search_from_config("adaptive") == AdaptiveSearch()
    settings = search_from_config(
        {
            "mode": "adaptive",
            "resolution": 0.25,
            "max_runs": 6,
            "min_lr": "1e-5",
            "max_lr": 1e-2,
            "bracket": 0.75,
        }
    )
    assert settings == AdaptiveSearch(max_runs=6, min_lr=1e-5, max_lr=1e-2, bracket=0.75)
    assert settings.bounds == (-1, 10)  # 2e-5 · 10^(k/4) inside [1e-5, 1e-2]
    assert (
        AdaptiveSearch(base=1e-3, per_decade=2, resolution=0.5).lattice_lr(-1)
        == parse_lr_grid({"base": 1e-3, "per_decade": 2, "k": [-3, 2]})[2]
    )


@pytest.mark.parametrize(
    "bad",
    [
        "fast",
        {"mode": "random"},
        {"mode": "grid", "max_runs": 4},
        {"resolution": 0.3},
        {"resolution": 0},
        {"bracket": 0.25, "resolution": 0.5},
        {"max_runs": 0},
        {"max_runs": 2.5},
        {"max_runs": True},
        {"min_lr": 1e-2, "max_lr": 1e-3},
        {"min_lr": 2.1e-5, "max_lr": 2.2e-5},
        {"per_decade": 0},
        {"base": -1.0},
        {"speed": 2},
        {"max_lr": float("inf")},
        {"fallback": "accuracy"},
        {"fallback": 3},
        {"flat_tolerance": -0.1},
        {"flat_tolerance": "none"},
        {"leave_method_out": "yes"},
    ],
)
def test_bad_settings_are_one_line_user_errors(bad):
    with pytest.raises(UserError) as info:
        search_from_config(bad, source="sweep.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("sweep.yaml: ")


def test_first_round_is_the_bracket_around_the_lattice_point_nearest_the_centre():
    settings = AdaptiveSearch()
    first = next_points(
        {}, center=3.1e-4, settings=settings, higher_is_better=False
    )  # nearest: k = 5 (3.56e-4)
    assert first == tuple(settings.lattice_lr(k) for k in (3, 5, 7))
    assert next_points({}, center=grid_center(GRID), settings=settings, higher_is_better=False) == tuple(
        settings.lattice_lr(k) for k in (2, 4, 6)
    )
    # At a bound the bracket is clipped; with a cap below 3 it keeps the points nearest the centre.
    assert next_points({}, center=1e-9, settings=BOUNDED, higher_is_better=False) == GRID[:3:2]
    assert next_points({}, center=GRID[5], settings=AdaptiveSearch(max_runs=1), higher_is_better=False) == (
        GRID[5],
    )


# ----------------------------------------------------------------------------------------------------------
# Finding the grid's optimum


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("centre_error", "max_used"),
    [
        (0.0, 5),
        (0.25, 6),
        (-0.25, 6),
        (0.5, 6),
        (-0.5, 6),  # typical: η̂ within the first bracket
        (0.75, 7),
        (-0.75, 7),
        (1.0, 7),
        (-1.0, 7),  # each extension costs one more run
        (1.5, 8),
        (-1.5, 8),  # a bad centre: three extensions, at the default cap of 8 (still located)
    ],
)
def test_finds_the_grids_best_within_a_quarter_decade(shape, centre_error, max_used):
    for opt in INSIDE:
        loss = curve(opt, shape)
        center = opt * 10**centre_error
        observed, _ = drive(loss, center)
        found = status(observed, center)
        assert found.done and "run cap" not in found.reason
        assert decades(found.best_lr, best_of(loss, GRID)) <= 0.25 + 1e-9, (opt, observed)
        assert len(observed) <= max_used, (opt, len(observed))
        assert len(observed) <= 6 or abs(centre_error) > 0.5  # half the grid's 12 runs in typical cases


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("side", [-1, 1])
def test_optimum_outside_the_first_bracket_is_followed_beyond_the_grid(shape, side):
    """Wider bounds than the paper's grid, centre in the grid's middle: optima up to a decade past either end
    (1.4 to 2.4 decades from the centre) are followed, one extension (one run, one round) per half decade."""
    settings = AdaptiveSearch(min_lr=1e-7, max_lr=1.0, max_runs=12)
    lattice = tuple(settings.lattice_lr(k) for k in range(settings.bounds[0], settings.bounds[1] + 1))
    center, edge = grid_center(GRID), (GRID[-1] if side > 0 else GRID[0])
    for step in range(11):
        opt = edge * 10 ** (side * 0.1 * step)
        loss = curve(opt, shape)
        observed, rounds = drive(loss, center, settings)
        found = status(observed, center, settings)
        assert found.done and not found.censored and "located" in found.reason, found
        assert decades(found.best_lr, best_of(loss, lattice)) <= 0.25 + 1e-9
        extensions = math.ceil(2 * decades(opt, center))
        assert len(observed) <= 5 + extensions and len(rounds) <= 3 + extensions


@pytest.mark.parametrize("side", [-1, 1])
def test_optimum_beyond_the_bounds_stays_censored_at_the_bound(side):
    for beyond in (0.3, 1.0, 3.0):
        opt = (GRID[-1] if side > 0 else GRID[0]) * 10 ** (side * beyond)
        observed, _ = drive(curve(opt), grid_center(GRID))
        found = status(observed, grid_center(GRID))
        assert found.done and found.censored
        assert found.best_lr == (GRID[-1] if side > 0 else GRID[0])
        assert ("upper" if side > 0 else "lower") in found.reason
        assert all(GRID[0] <= lr <= GRID[-1] for lr in observed)


def test_diverged_runs_score_worst_and_a_fully_diverged_bracket_steps_down():
    opt = GRID[3]
    loss = curve(opt, "diverging")
    center = GRID[9]  # 1.5 decades too high: the whole first bracket diverges
    observed, rounds = drive(loss, center)
    assert all(loss(lr) is None for lr in rounds[0])
    assert len(rounds[1]) == 1 and rounds[1][0] < min(rounds[0])  # steps down, one point per round
    found = status(observed, center)
    assert found.done and decades(found.best_lr, best_of(loss, GRID)) <= 0.25 + 1e-9


def test_nothing_but_divergence_ends_at_the_lower_bound_or_the_cap():
    for settings in (BOUNDED, AdaptiveSearch(max_runs=5)):
        observed, _ = drive(lambda lr: None, GRID[6], settings)
        found = status(observed, GRID[6], settings)
        assert found.done and found.best_lr is None and found.censored
        assert len(observed) <= settings.max_runs
        assert "no run produced a metric" in found.reason or "run cap" in found.reason


@pytest.mark.parametrize("max_runs", [1, 2, 3, 4, 5, 6, 8, 12])
def test_flat_and_noisy_curves_terminate_within_the_cap(max_runs):
    settings = AdaptiveSearch(max_runs=max_runs)
    rng = random.Random(max_runs)
    noisy = {settings.lattice_lr(k): rng.random() for k in range(settings.bounds[0], settings.bounds[1] + 1)}
    curves = [lambda lr: 1.0, lambda lr: noisy[lr], lambda lr: round(rng.random(), 1), lambda lr: 0.0]
    for loss in curves:
        for center in (GRID[0], GRID[5], 0.5):
            observed, _ = drive(loss, center, settings)
            assert 1 <= len(observed) <= max_runs
            assert status(observed, center, settings).done
    observed, _ = drive(lambda lr: 1.0, GRID[5], settings)
    plateau = status(observed, GRID[5], settings)  # a plateau has no optimum: not the centre's tie
    assert not plateau.located
    if max_runs >= 2:
        assert plateau.outcome == "flat" and plateau.best_lr is None
    else:  # one point: its own lowest and highest LR tried
        assert plateau.outcome == "edge" and plateau.censored


def test_a_flat_metric_stops_after_the_bracket_and_says_it_learned_nothing():
    observed, rounds = drive(lambda lr: 0.0, GRID[5], higher_is_better=True)  # accuracy 0 in every run
    assert len(rounds) == 1 and len(observed) == 3
    found = status(observed, GRID[5], higher_is_better=True)
    assert found.done and found.outcome == "flat" and not found.located and found.best_lr is None
    assert "located" not in found.reason and "flat" in found.reason and "learned nothing" in found.reason
    # Within a tolerance: one problem of 64 either way is still flat when the tolerance says so.
    wobble = {GRID[3]: 0.0, GRID[5]: 1 / 64, GRID[7]: 0.0}
    assert status(wobble, GRID[5], higher_is_better=True).outcome != "flat"
    tolerant = AdaptiveSearch(min_lr=GRID[0], max_lr=GRID[-1], flat_tolerance=1.5 / 64)
    assert status(wobble, GRID[5], tolerant, higher_is_better=True).outcome == "flat"
    assert next_points(wobble, center=GRID[5], settings=tolerant, higher_is_better=True) == ()


def test_is_flat_needs_two_points_with_a_metric_each():
    settings = AdaptiveSearch()
    assert is_flat([0.0, 0.0, 0.0], settings)
    assert not is_flat([0.0], settings)  # one point shows nothing either way, but is not "flat"
    assert not is_flat([0.0, 0.0, None], settings)  # a failed or diverged point is information
    assert not is_flat([None, None], settings)  # no metric at all is its own outcome
    assert not is_flat([0.1, 0.2], settings) and is_flat(
        [0.1, 0.2], AdaptiveSearch(flat_tolerance=0.1 + 1e-12)
    )


def test_an_optimum_at_the_edge_of_what_was_tried_is_never_located():
    """A loss still falling at the largest LR tried when the cap stops the search (the issue's tiny-llama case
    by held-out loss): a bound, said as such."""
    settings = AdaptiveSearch(max_runs=4)
    falling = curve(GRID[-1] * 100)  # optimum far above: every extension improves
    observed, _ = drive(falling, GRID[3], settings)
    found = status(observed, GRID[3], settings)
    assert found.done and found.outcome == "edge" and found.censored and not found.located
    assert found.best_lr == max(observed) and "not located" in found.reason and "highest" in found.reason
    bounded, _ = drive(curve(GRID[0] / 100), GRID[3])  # below the lower LR bound
    at_bound = status(bounded, GRID[3])
    assert at_bound.outcome == "edge" and at_bound.best_lr == GRID[0] and "lowest" in at_bound.reason


def test_a_cap_inside_the_refinement_is_coarse_not_located():
    settings = AdaptiveSearch(max_runs=3, bracket=1.0)
    observed, _ = drive(curve(GRID[5]), GRID[5], settings)
    found = status(observed, GRID[5], settings)
    assert found.outcome == "coarse" and not found.located and found.best_lr == GRID[5]
    assert "not located to ±0.25 decades" in found.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_located_means_observed_neighbours_within_the_resolution(shape):
    for opt, center, cap in itertools.product(INSIDE[::2], (GRID[0], GRID[6], GRID[11]), (3, 5, 8)):
        settings = AdaptiveSearch(min_lr=GRID[0], max_lr=GRID[-1], max_runs=cap)
        observed, _ = drive(curve(opt, shape), center, settings)
        found = status(observed, center, settings)
        assert found.done and found.outcome in ("located", "edge", "coarse", "no_metric")
        tried = sorted(observed)
        if found.located:
            i = tried.index(found.best_lr)
            assert 0 < i < len(tried) - 1
            assert decades(tried[i - 1], found.best_lr) <= 0.25 + 1e-9
            assert decades(tried[i + 1], found.best_lr) <= 0.25 + 1e-9
        if found.best_lr in (tried[0], tried[-1]):
            assert found.outcome == "edge"


def test_higher_is_better_searches_the_same_points():
    loss = curve(GRID[7], "asymmetric")
    by_loss, _ = drive(loss, GRID[4])
    by_accuracy, _ = drive(
        lambda lr: None if loss(lr) is None else 2.0 - loss(lr), GRID[4], higher_is_better=True
    )
    assert list(by_loss) == list(by_accuracy)


def test_peak_fit_on_the_searched_points_matches_the_grids_fit():
    for shape, opt in itertools.product(SHAPES, INSIDE[2:-2]):
        loss = curve(opt, shape)
        observed, _ = drive(loss, opt * 10**0.4)
        searched = sorted((lr, value) for lr, value in observed.items() if value is not None)
        on_grid = [(lr, loss(lr)) for lr in GRID if loss(lr) is not None]
        mine = fit_peak(*zip(*searched), higher_is_better=False)
        reference = fit_peak(*zip(*on_grid), higher_is_better=False)
        assert decades(mine.eta_star, reference.eta_star) <= 0.25, (shape, opt, mine, reference)
        assert mine.kind == reference.kind == "quadratic"


# ----------------------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_observations_give_the_same_points_in_any_order():
    loss = curve(GRID[8], "diverging")
    observed, rounds = drive(loss, GRID[3])
    assert drive(loss, GRID[3]) == (observed, rounds)
    for seed in range(5):
        items = list(observed.items())
        random.Random(seed).shuffle(items)
        for cut in range(len(items) + 1):
            partial = dict(items[:cut])
            assert next_points(
                partial, center=GRID[3], settings=BOUNDED, higher_is_better=False
            ) == next_points(
                dict(sorted(partial.items())), center=GRID[3], settings=BOUNDED, higher_is_better=False
            )


@pytest.mark.parametrize("shape", SHAPES)
def test_a_kill_anywhere_resumes_into_exactly_the_same_runs(shape):
    """Kill after any subset of a round has finished (parallel runs end in any order; an interrupted run has no
    metric row): recomputing from the finished rows gives the rest of that round, and the whole search makes
    the same runs as an uninterrupted one."""
    for opt, center in itertools.product(INSIDE[::3], (GRID[1], GRID[6], GRID[10])):
        loss = curve(opt, shape)
        _, rounds = drive(loss, center)
        done = {}
        for points in rounds:
            for size in range(len(points)):
                for finished in itertools.combinations(points, size):
                    rows = {**done, **{lr: loss(lr) for lr in finished}}
                    rest = next_points(rows, center=center, settings=BOUNDED, higher_is_better=False)
                    assert rest == tuple(lr for lr in points if lr not in finished)
            done.update({lr: loss(lr) for lr in points})
        assert next_points(done, center=center, settings=BOUNDED, higher_is_better=False) == ()


def test_rows_the_search_did_not_ask_for_are_ignored_and_existing_ones_reused():
    loss = curve(GRID[6], "asymmetric")
    observed, _ = drive(loss, GRID[4])
    # Rows of other LRs (an earlier grid off the search's path, off-lattice LRs) change nothing...
    extra = {**observed, GRID[0]: 0.5, GRID[11]: None, 1.2345e-4: 0.1}
    assert next_points(extra, center=GRID[4], settings=BOUNDED, higher_is_better=False) == ()
    assert status(extra, GRID[4]) == status(observed, GRID[4])
    # ...and a directory holding the full grid already has every point the search would run.
    full = {lr: loss(lr) for lr in GRID}
    assert next_points(full, center=GRID[4], settings=BOUNDED, higher_is_better=False) == ()
    assert status(full, GRID[4]).best_lr == status(observed, GRID[4]).best_lr


def test_status_reports_progress():
    first = status({}, GRID[5])
    assert first == (False, first.reason, None, False, "running") and "0 of at most 8 runs" in first.reason
    assert first_bracket(GRID[5], BOUNDED) == (GRID[3], GRID[5], GRID[7])
    loss = curve(GRID[5])
    observed, rounds = drive(loss, GRID[5])
    middle = status({lr: loss(lr) for lr in rounds[0]}, GRID[5])
    assert not middle.done and "refining" in middle.reason and middle.best_lr == GRID[5]
    done, reason, best_lr, censored, outcome = status(observed, GRID[5])
    assert done and "located" in reason and best_lr == GRID[5] and not censored and outcome == "located"
    with pytest.raises(UserError):
        status({}, 0.0)
