"""Bootstrap intervals of η*, the peak and the gap to the best method, against sweeps with known noise."""

from __future__ import annotations

import time

import numpy as np
import pytest
from synthetic_run import SyntheticMethod, noisy_runs, write_eval_scores, write_run_dir

from hessian_lora import analysis
from hessian_lora.analysis.uncertainty import NO_INTERVAL, bootstrap_optima, percentile_interval

GRID = tuple(2e-5 * 10 ** (k / 4) for k in range(12))


def test_eta_intervals_cover_the_true_optimum_at_about_their_nominal_rate() -> None:
    """40 synthetic sweeps (3 seeds whose optima wander, 64 Bernoulli problems per run): the 90% η* interval
    should contain the true η* in at least ~80% of them, without being uselessly wide."""
    started = time.perf_counter()
    truth = SyntheticMethod(eta_star=3.1e-4, lambda_init=1.0, peak=0.7, curvature=0.2)
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for replication in range(40):
        runs = noisy_runs(
            {"lora": truth}, lrs=GRID, seeds=(0, 1, 2), n_examples=64, rng=rng, seed_shift_sd=0.1
        )
        draws = bootstrap_optima(
            runs, ["lora"], "accuracy", higher_is_better=True, samples=300, seed=replication
        )
        assert draws.basis["lora"] == "seeds and evaluation examples" and draws.n_examples == 64
        low, high = percentile_interval(draws.eta["lora"], 0.9, log=True)
        hits += low <= truth.eta_star <= high
        widths.append(np.log10(high / low))
    assert hits / 40 >= 0.8
    assert float(np.mean(widths)) < 1.5  # decades: informative, not the whole 2.75-decade grid
    assert time.perf_counter() - started < 20


def test_gap_to_the_best_is_a_paired_interval_with_a_verdict(tmp_path) -> None:
    methods = {
        "lora": SyntheticMethod(eta_star=3.1e-4, lambda_init=1.5, peak=0.7, curvature=0.2),
        "dora": SyntheticMethod(eta_star=2.9e-4, lambda_init=1.6, peak=0.69, curvature=0.2),
        "pissa": SyntheticMethod(eta_star=3.1e-5, lambda_init=15.0, peak=0.45, curvature=0.2),
        "milora": SyntheticMethod(eta_star=1e-4, lambda_init=4.7, peak=0.68, curvature=0.2),
    }
    run_dir = write_run_dir(tmp_path / "run", methods, seeds=(0, 1))
    runs = noisy_runs(methods, lrs=GRID, seeds=(0, 1), n_examples=200, rng=np.random.default_rng(0))
    write_eval_scores(run_dir, runs)  # per-example scores next to the (noise-free) rows
    result = analysis.analyze(run_dir, bootstrap_samples=300)
    assert result.n_eval_examples == 200
    pissa = result.methods["pissa"]
    assert pissa.gap_verdict == "below the best beyond noise" and pissa.gap_ci[1] < 0
    assert result.methods["dora"].gap_verdict in ("within noise", "best")
    assert pissa.eta_ci[0] < pissa.eta_star < pissa.eta_ci[1]
    table = analysis.markdown_table(result)
    assert "below the best beyond noise" in table and "evaluation problems: 200" in table
    assert result.relation.spearman_rho_ci is not None


def test_one_seed_without_per_example_scores_says_there_is_no_interval(tmp_path) -> None:
    methods = {
        "lora": SyntheticMethod(eta_star=3.1e-4, lambda_init=1.5),
        "pissa": SyntheticMethod(eta_star=3.1e-5, lambda_init=15.0, peak=0.5),
    }
    result = analysis.analyze(write_run_dir(tmp_path / "run", methods), bootstrap_samples=50)
    for summary in result.methods.values():
        assert summary.uncertainty_basis == NO_INTERVAL and summary.eta_ci is None and summary.peak_ci is None
    assert result.methods["pissa"].gap_verdict == "no interval"
    assert NO_INTERVAL in analysis.markdown_table(result)


def test_seeds_only_without_per_example_scores(tmp_path) -> None:
    methods = {"lora": SyntheticMethod(eta_star=3.1e-4, lambda_init=1.5)}
    result = analysis.analyze(
        write_run_dir(tmp_path / "run", methods, seeds=(0, 1, 2), seed_shift=0.2), bootstrap_samples=200
    )
    summary = result.methods["lora"]
    assert summary.uncertainty_basis == "seeds" and result.n_eval_examples is None
    assert summary.eta_ci[0] <= summary.eta_star <= summary.eta_ci[1]
    assert summary.eta_ci[1] / summary.eta_ci[0] == pytest.approx(
        10**0.4, rel=0.3
    )  # the seeds span ±0.2 decades
