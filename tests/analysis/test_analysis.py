"""Analysis math against exact references: parabolas in log-LR, exact power laws, and synthetic run dirs."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
from synthetic_run import QUARTER_DECADE_GRID, SyntheticMethod, accuracy_at, eigen_report, write_run_dir

from hessian_lora import analysis
from hessian_lora.core.errors import UserError
from hessian_lora.hessian.preconditioned import adam_thresholds
from hessian_lora.measurement.reports import report_from_dict

METHODS = {
    "lora": SyntheticMethod(eta_star=3.1e-4, lambda_init=1.5),
    "pissa": SyntheticMethod(eta_star=3.1e-5, lambda_init=15.0, peak=0.59, module_ratio=1.3),
    "milora": SyntheticMethod(eta_star=1.0e-4, lambda_init=4.7, peak=0.61),
    "initab": SyntheticMethod(eta_star=1.7e-4, lambda_init=2.7, peak=0.58, diverge_above=2.5e-3),
}


def test_parabola_vertex_is_exact_for_uneven_spacing() -> None:
    a, vertex_x, vertex_y = -1.7, 0.37, 2.5
    xs = [0.1, 0.45, 1.3]
    ys = [a * (x - vertex_x) ** 2 + vertex_y for x in xs]
    x, y, curvature = analysis.parabola_vertex(xs, ys)
    assert x == pytest.approx(vertex_x, rel=1e-12)
    assert y == pytest.approx(vertex_y, rel=1e-12)
    assert curvature == pytest.approx(a, rel=1e-12)


@pytest.mark.parametrize("eta_star", [2.9e-5, 1.07e-4, 3.3e-4, 5.1e-3])
def test_fit_peak_recovers_the_vertex_of_a_parabola_in_log_lr(eta_star: float) -> None:
    method = SyntheticMethod(eta_star=eta_star, lambda_init=1.0)
    accuracy = [accuracy_at(method, lr) for lr in QUARTER_DECADE_GRID]
    peak = analysis.fit_peak(QUARTER_DECADE_GRID, accuracy)
    assert peak.kind == "quadratic"
    assert peak.eta_star == pytest.approx(eta_star, rel=1e-9)
    assert peak.peak_metric_fit == pytest.approx(method.peak, rel=1e-9)
    assert peak.eta_grid == min(QUARTER_DECADE_GRID, key=lambda lr: abs(math.log10(lr / eta_star)))


def test_fit_peak_for_a_loss_minimises_and_handles_unsorted_input() -> None:
    lrs = [1e-3, 1e-5, 1e-4, 3e-4, 3e-5]
    loss = [1.0 + 0.3 * (math.log10(lr) - math.log10(7e-5)) ** 2 for lr in lrs]
    peak = analysis.fit_peak(lrs, loss, higher_is_better=False)
    assert peak.eta_star == pytest.approx(7e-5, rel=1e-9)
    assert peak.peak_metric_fit == pytest.approx(1.0, rel=1e-12)
    assert peak.peak_metric == min(loss)


def test_fit_peak_edge_flat_and_single() -> None:
    edge = analysis.fit_peak([1e-4, 1e-3, 1e-2], [0.5, 0.4, 0.1])
    assert (edge.kind, edge.eta_star, edge.at_edge) == ("edge", 1e-4, True)
    flat = analysis.fit_peak([1e-5, 1e-4, 1e-3, 1e-2, 1e-1], [0.1, 1.0, 1.0, 1.0, 0.2])
    assert flat.kind == "flat" and flat.eta_star == pytest.approx(1e-3, rel=1e-12)
    single = analysis.fit_peak([3e-4], [0.2])
    assert (single.kind, single.eta_star) == ("single", 3e-4)
    tied_pair = analysis.fit_peak([1e-4, 1e-3, 1e-2], [0.5, 0.5, 0.1])
    assert tied_pair.kind == "quadratic" and 1e-4 < tied_pair.eta_star < 1e-3
    with pytest.raises(ValueError):
        analysis.fit_peak([1e-4, 1e-4], [0.1, 0.2])


def test_power_law_and_inverse_constant_are_exact_on_an_exact_power_law() -> None:
    lambdas = [0.3, 1.2, 4.0, 17.0, 90.0]
    c = 2.7e-4
    etas = [c / lam for lam in lambdas]
    power = analysis.fit_power_law(lambdas, etas)
    assert power.slope == pytest.approx(-1.0, abs=1e-12)
    assert 10**power.intercept == pytest.approx(c, rel=1e-12)
    assert power.r2 == pytest.approx(1.0, abs=1e-12)
    constant, spread = analysis.fit_inverse_constant(lambdas, etas)
    assert constant == pytest.approx(c, rel=1e-12)
    assert spread == pytest.approx(1.0, abs=1e-12)
    steeper = analysis.fit_power_law(lambdas, [c * lam**-0.5 for lam in lambdas])
    assert steeper.slope == pytest.approx(-0.5, abs=1e-12)
    assert steeper.predict(9.0) == pytest.approx(c / 3, rel=1e-12)


def test_bootstrap_interval_contains_the_true_slope() -> None:
    rng = np.random.default_rng(1)
    lambdas = np.logspace(-1, 2, 8)
    points = {
        f"m{i}": [
            (
                lam * math.exp(0.02 * rng.standard_normal()),
                1e-4 / lam * math.exp(0.15 * rng.standard_normal()),
            )
            for _ in range(3)
        ]
        for i, lam in enumerate(lambdas)
    }
    low, high, valid = analysis.bootstrap_slope(points, samples=2000, seed=0)
    assert valid > 1900
    assert low < -1.0 < high
    assert high - low < 0.5
    exact = {f"m{i}": [(lam, 1e-4 / lam)] for i, lam in enumerate(lambdas)}
    low, high, _ = analysis.bootstrap_slope(exact, samples=200)
    assert low == pytest.approx(-1.0, abs=1e-12) and high == pytest.approx(-1.0, abs=1e-12)


def test_leave_one_method_out_is_exact_on_an_exact_law_and_flags_misses() -> None:
    points = {name: (lam, 3e-4 / lam) for name, lam in zip("abcd", [1.0, 2.0, 10.0, 20.0])}
    for fit in analysis.FIT_KINDS:
        predictions = analysis.leave_one_method_out(points, fit)
        assert len(predictions) == 4
        assert all(p.ratio == pytest.approx(1.0, rel=1e-12) and p.within_2x for p in predictions)
    points["e"] = (5.0, 3e-4 / 5.0 * 3)  # three times the law: outside 2x
    miss = {p.method: p for p in analysis.leave_one_method_out(points, "inverse")}["e"]
    assert not miss.within_2x and miss.ratio < 0.5


def test_adam_threshold_is_38_over_eta_at_beta1_0_9() -> None:
    assert adam_thresholds(1e-3, 0.9)[1] == pytest.approx(38_000.0, rel=1e-12)


def test_analyze_recovers_each_methods_optimum_and_the_relation(tmp_path) -> None:
    run_dir = write_run_dir(tmp_path / "run", METHODS)
    result = analysis.analyze(run_dir, bootstrap_samples=500)
    assert result.metric == "accuracy"
    assert set(result.methods) == set(METHODS)
    for name, truth in METHODS.items():
        summary = result.methods[name]
        assert summary.eta_star == pytest.approx(truth.eta_star, rel=1e-9), name
        assert summary.fit_kind == "quadratic"
        assert summary.lambda_init_whole == pytest.approx(truth.lambda_init, rel=1e-12)
        # per-module blocks: ratio × (1 + 0.1·layer + 0.05·index) over 2 layers × 2 modules; median = ratio×1.075
        assert summary.lambda_init_module_median == pytest.approx(
            truth.module_ratio * 1.075 * truth.lambda_init
        )
        # end of training at the best grid LR: λ_final = 1.1·2/η, λ̃ = 0.9·38/η by construction
        assert summary.final_lambda_eta_over_2 == pytest.approx(1.1, rel=1e-12)
        assert summary.precond_over_adam_threshold == pytest.approx(0.9, rel=1e-12)
        assert summary.eta_lambda_over_2 == pytest.approx(truth.eta_star * truth.lambda_init / 2, rel=1e-9)
    assert result.best_method == "milora"
    best_peak = result.methods["milora"].peak_metric  # observed at the best grid point
    assert result.methods["pissa"].gap_to_best == pytest.approx(
        best_peak - result.methods["pissa"].peak_metric
    )
    assert result.methods["milora"].gap_to_best == 0.0
    assert result.methods["initab"].diverged_lrs == tuple(lr for lr in QUARTER_DECADE_GRID if lr > 2.5e-3)
    relation = result.relation
    assert relation.lambda_source == "whole"
    assert relation.n_methods == 4
    assert relation.spearman_rho == pytest.approx(-1.0)
    truth_fit = analysis.fit_power_law(
        [m.lambda_init for m in METHODS.values()], [m.eta_star for m in METHODS.values()]
    )
    assert relation.slope == pytest.approx(truth_fit.slope, rel=1e-9)
    assert relation.slope_ci95[0] <= relation.slope <= relation.slope_ci95[1]
    assert set(relation.lomo) == {"power", "inverse"}
    assert relation.preferred_fit in analysis.FIT_KINDS


def test_analyze_spread_over_seeds(tmp_path) -> None:
    run_dir = write_run_dir(
        tmp_path / "run",
        {"lora": METHODS["lora"], "pissa": METHODS["pissa"]},
        seeds=(0, 1, 2),
        seed_shift=0.2,
    )
    summary = analysis.analyze(run_dir, bootstrap_samples=100).methods["lora"]
    assert summary.n_seeds == 3
    assert summary.eta_star == pytest.approx(METHODS["lora"].eta_star, rel=1e-9)
    for seed, eta in summary.eta_star_per_seed.items():
        assert eta == pytest.approx(METHODS["lora"].eta_star * 10 ** ((seed - 1) * 0.2), rel=1e-9)
    assert summary.eta_spread_factor == pytest.approx(10**0.2, rel=1e-9)  # std of (-0.2, 0, 0.2), ddof=1
    assert summary.peak_metric_std > 0


def test_exact_inverse_law_gives_slope_minus_one_and_c(tmp_path) -> None:
    c = 4.5e-4
    methods = {
        f"m{i}": SyntheticMethod(eta_star=c / lam, lambda_init=lam)
        for i, lam in enumerate([0.5, 1.3, 4.0, 11.0])
    }
    result = analysis.analyze(write_run_dir(tmp_path / "run", methods), bootstrap_samples=200)
    assert result.relation.slope == pytest.approx(-1.0, abs=1e-8)
    assert result.relation.c == pytest.approx(c, rel=1e-8)
    assert result.relation.lomo_within_2x == {"power": 4, "inverse": 4}


def test_lambda_from_the_column_when_there_are_no_reports(tmp_path) -> None:
    run_dir = write_run_dir(tmp_path / "run", METHODS, reports=False, final_reports=False)
    result = analysis.analyze(run_dir, bootstrap_samples=100)
    assert result.relation.lambda_source == "whole"
    assert result.methods["pissa"].lambda_init_whole == pytest.approx(15.0)
    assert result.methods["pissa"].lambda_init_module_median is None
    assert result.methods["pissa"].final_lambda_eta_over_2 == pytest.approx(1.1)  # lambda_final column


def test_write_analysis_and_markdown(tmp_path) -> None:
    run_dir = write_run_dir(tmp_path / "run", METHODS)
    result = analysis.analyze(run_dir, bootstrap_samples=100)
    json_path, md_path = analysis.write_analysis(result)
    data = json.loads(json_path.read_text())
    assert data["methods"]["lora"]["eta_star"] == pytest.approx(3.1e-4, rel=1e-9)
    assert data["relation"]["slope_ci95"] is not None
    table = md_path.read_text()
    main_table = table.split("\n\n")[0]  # later sections (edge of stability, ...) have tables of their own
    rows = [line for line in main_table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(METHODS)  # header + one row per method
    assert "milora (best)" in table and "Spearman" in table
    assert not list(json_path.parent.glob(".*.tmp"))


def test_an_uncertified_lambda_at_init_is_said_with_its_residual(tmp_path) -> None:
    """A λ_max whose Lanczos stopped above tol (the SmolLM2 demo's whole-adapter blocks) enters the relation, and the
    analysis says which ones and by how much they missed."""
    run_dir = write_run_dir(tmp_path / "run", METHODS)
    (path,) = (run_dir / "hessian").glob("lora_*_init.json")
    report = json.loads(path.read_text())
    whole = report["blocks"][0]
    whole.update(converged=False, residual=3e-3 * whole["lambda_max"])
    report["blocks"][1].update(converged=False, residual=5e-3 * report["blocks"][1]["lambda_max"])
    path.write_text(json.dumps(report))
    result = analysis.analyze(run_dir, bootstrap_samples=100)
    assert result.methods["lora"].lambda_init_whole_uncertified == pytest.approx(3e-3)
    assert result.methods["lora"].lambda_init_module_uncertified == pytest.approx(5e-3)
    assert all(
        result.methods[name].lambda_init_whole_uncertified is None for name in METHODS if name != "lora"
    )
    _, md_path = analysis.write_analysis(result)
    text = md_path.read_text()
    assert f"λ_max at init not certified for 1 of {len(METHODS)} methods" in text and "lora 0.003)" in text
    certified = analysis.analyze(write_run_dir(tmp_path / "certified", METHODS), bootstrap_samples=100)
    assert "not certified" not in analysis.relation_summary(certified.to_dict())


def test_eval_loss_metric_and_auto_choice(tmp_path) -> None:
    run_dir = write_run_dir(tmp_path / "run", METHODS)
    result = analysis.analyze(run_dir, metric="eval_loss", bootstrap_samples=50)
    assert not result.higher_is_better
    # eval_loss = 1 - accuracy: the same optimum, diverged runs left out
    assert result.methods["lora"].eta_star == pytest.approx(3.1e-4, rel=1e-9)
    with sqlite3.connect(run_dir / "results.sqlite") as connection:
        # one method whose accuracy is zero at every LR cannot locate its optimum by accuracy: use the loss
        connection.execute("UPDATE runs SET accuracy = 0.0 WHERE method = 'lora'")
    assert analysis.analyze(run_dir, bootstrap_samples=50).metric == "eval_loss"


def test_bad_inputs_raise_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        analysis.analyze(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"results\.sqlite"):
        analysis.analyze(tmp_path / "empty")
    run_dir = write_run_dir(tmp_path / "run", METHODS)
    with sqlite3.connect(run_dir / "results.sqlite") as connection:
        connection.execute("UPDATE runs SET rank = 16 WHERE method = 'pissa'")
    with pytest.raises(UserError, match="--rank"):
        analysis.analyze(run_dir)
    assert analysis.analyze(run_dir, rank=8, bootstrap_samples=50).methods.keys() == {
        "lora",
        "milora",
        "initab",
    }
    with pytest.raises(UserError, match="metric"):
        analysis.analyze(run_dir, rank=8, metric="bleu")


def test_report_parser_reads_the_engine_report_and_tolerates_missing_parts() -> None:
    full = report_from_dict(eigen_report(2.0, 1.0, seed=0, precond=5.0, lr=1e-3))
    whole = full.whole
    assert whole.name == "adapter" and whole.lambda_max == 2.0 and whole.solver == "lanczos"
    assert whole.history[-1] == (9, 2.0) and whole.history[0][1] == pytest.approx(0.8)
    assert whole.trace == 6.0 and whole.precond_sharpness == 5.0 and full.precond_sharpness == 5.0
    nodes = np.concatenate(whole.density.nodes)
    sigma = np.ptp(nodes) / 100  # the kernel width and grid the analysis used to smooth with
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, 600)
    density = whole.density.smoothed(grid, sigma).numpy()
    assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-3)  # a probability density
    assert len(full.modules) == 4 and full.first_with("density") is whole
    summary = report_from_dict({"blocks": [{"name": "whole", "lambda_max": 2.0}]})
    assert summary.whole.lambda_max == 2.0 and summary.module_median is None and summary.whole.density is None
    per_module = report_from_dict(
        {
            "blocks": [
                {"name": "base_model.model.model.layers.1.mlp.down_proj", "lambda_max": 3.0},
                {"name": "base_model.model.model.layers.0.mlp.down_proj", "lambda_max": 1.0},
                {"name": "broken"},
            ]
        }
    )
    assert per_module.whole is None and per_module.module_median == 2.0
    assert [block.layer for block in per_module.modules] == [1, 0]
    assert per_module.modules[0].module == "down_proj"


def test_extra_init_reports_merge_and_sharpness_falls_back_to_reports(tmp_path) -> None:
    run_dir = write_run_dir(tmp_path / "run", METHODS)
    extra = eigen_report(99.0, 1.0, seed=0)
    extra["blocks"] = [
        dict(extra["blocks"][0], name="whole", lambda_max=99.0),
        dict(extra["blocks"][1], name="layers.5.mlp.down_proj", lambda_max=7.0),
    ]
    (run_dir / "hessian" / "lora_r8_s0_init_modules.json").write_text(json.dumps(extra))
    with sqlite3.connect(run_dir / "results.sqlite") as connection:
        connection.execute("UPDATE runs SET precond_lambda_final = NULL, lambda_final = NULL")
    report = analysis.read_run_directory(run_dir).init_report("lora", 0)
    assert report.whole.name == "adapter" and report.whole.lambda_max == pytest.approx(1.5)  # primary kept
    assert "layers.5.mlp.down_proj" in {block.name for block in report.modules}
    assert "whole" not in {
        block.name for block in report.modules
    }  # another whole-adapter block merges into it
    result = analysis.analyze(run_dir, bootstrap_samples=50)
    assert result.methods["pissa"].precond_over_adam_threshold == pytest.approx(0.9, rel=1e-12)
    assert result.methods["pissa"].final_lambda_eta_over_2 == pytest.approx(1.1, rel=1e-12)


def test_spearman_p_value_is_exact_for_few_methods() -> None:
    from hessian_lora.analysis import spearman_exact

    rho, p_value = spearman_exact([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0])
    assert abs(rho + 1.0) < 1e-12
    assert abs(p_value - 2 / 120) < 1e-12  # two of the 5! orderings are as extreme


# ----------------------------------------------------------------------------------------------------------
# Censoring: an optimum at a grid edge is a bound


EDGE_METHODS = {  # every optimum far outside the quarter-decade grid 2e-5 .. 1.1e-2
    "lora": SyntheticMethod(eta_star=0.3, lambda_init=1.5),
    "pissa": SyntheticMethod(eta_star=1e-7, lambda_init=15.0),
    "milora": SyntheticMethod(eta_star=1.0, lambda_init=4.7),
    "initab": SyntheticMethod(eta_star=2e-7, lambda_init=2.7),
}


def test_optima_at_the_grid_edge_give_no_relation_and_say_why(tmp_path) -> None:
    result = analysis.analyze(write_run_dir(tmp_path / "run", EDGE_METHODS), bootstrap_samples=100)
    assert {name: s.censored for name, s in result.methods.items()} == {
        "lora": "high",
        "pissa": "low",
        "milora": "high",
        "initab": "low",
    }
    relation = result.relation
    assert relation.n_methods == 0 and relation.n_total == 4 and len(relation.censored) == 4
    assert relation.slope is None and relation.slope_ci95 is None and relation.spearman_rho is None
    assert relation.c is None and relation.lomo == {} and relation.lomo_within_2x == {}
    assert relation.note.startswith("not enough interior optima (4 of 4 censored: lora ≥ 0.0112")
    # The advice names concrete learning rates half a decade beyond both edges, and the command.
    assert "add lr 6.32e-06, 1.12e-05, 0.02, 0.0356" in relation.extend
    assert "hessian-lora sweep CONFIG --out" in relation.extend and "--extend" in relation.extend
    table = analysis.markdown_table(result)
    assert "| milora | ≥ 0.0112 |" in table and "| pissa | ≤ 2e-05 |" in table
    assert "not enough interior optima" in table
    for absent in ("slope", "CI [", "within 2×", "Spearman", "c/λ"):
        assert absent not in table.split("\n\n")[-1], absent


def test_an_adaptive_sweep_is_told_to_resume_its_search_not_to_edit_an_lr_list(tmp_path) -> None:
    """An adaptive search has no `lr:` list: it extends past an edge by itself, so the advice is a rerun (and
    its run budget), never a grid to paste into the config."""
    for search in ("adaptive", {"mode": "adaptive", "max_runs": 6}):
        root = write_run_dir(tmp_path / str(len(str(search))), EDGE_METHODS, config={"search": search})
        extend = analysis.analyze(root, bootstrap_samples=50).relation.extend
        assert "let the adaptive search extend past the edge" in extend and "max_runs" in extend
        assert f"hessian-lora sweep CONFIG --out {root}" in extend and "lr: [" not in extend
        assert "--extend" not in extend


def test_censored_methods_are_left_out_of_the_fit_and_counted(tmp_path) -> None:
    methods = {**METHODS, "dora": SyntheticMethod(eta_star=1.0, lambda_init=0.2)}  # optimum beyond the grid
    result = analysis.analyze(write_run_dir(tmp_path / "run", methods), bootstrap_samples=200)
    relation = result.relation
    assert result.methods["dora"].censored == "high" and relation.censored == {"dora": "≥ 0.0112"}
    assert relation.n_methods == 4 and relation.n_total == 5 and relation.note is None
    truth = analysis.fit_power_law(
        [m.lambda_init for m in METHODS.values()], [m.eta_star for m in METHODS.values()]
    )
    assert relation.slope == pytest.approx(truth.slope, rel=1e-9)  # dora's bound would pull it
    assert {item["method"] for item in relation.lomo["power"]} == set(METHODS)
    summary = analysis.relation_summary(result.to_dict())
    assert "1 of 5 excluded as censored: dora ≥ 0.0112" in summary and "--extend" in summary


def test_cost_section_sums_what_the_rows_and_reports_recorded(tmp_path) -> None:
    from hessian_lora.analysis.report import cost_section
    from hessian_lora.analysis.runs import read_run_directory

    methods = {
        "lora": SyntheticMethod(eta_star=1e-3, lambda_init=10.0),
        "pissa": SyntheticMethod(eta_star=1e-4, lambda_init=100.0),
    }
    write_run_dir(tmp_path, methods, lrs=QUARTER_DECADE_GRID[:4], final_reports=False)
    with sqlite3.connect(tmp_path / "results.sqlite") as db:  # a sweep of today records the split too
        db.execute("ALTER TABLE runs ADD COLUMN train_seconds REAL")
        db.execute("ALTER TABLE runs ADD COLUMN eval_seconds REAL")
        db.execute("UPDATE runs SET wall_seconds = 10.0, train_seconds = 4.0, eval_seconds = 5.0")
        count = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    blocks = [
        block
        for path in (tmp_path / "hessian").glob("*.json")
        for block in json.loads(path.read_text())["blocks"]
    ]
    data, text = cost_section(read_run_directory(tmp_path))
    assert (data["runs"], data["run_seconds"], data["train_seconds"], data["eval_seconds"]) == (
        count,
        10.0 * count,
        4.0 * count,
        5.0 * count,
    )
    assert data["median_run_seconds"] == 10.0
    assert data["eigen_blocks"] == len(blocks) and data["eigen_products"] == sum(b["hvps"] for b in blocks)
    assert data["eigen_seconds"] == pytest.approx(sum(b["seconds"] for b in blocks))
    assert text.startswith("### Cost (as recorded)") and f"{count} finished runs took" in text
    assert data["eigen_blocks_in_groups"] == 0 and "shared passes" not in text

    # Two blocks solved side by side on shared passes: their eigen clocks ran together, so the group costs its
    # longest eigen solve once, plus what each did on its own afterwards (a trace: seconds beyond eigen's).
    path = next(
        path
        for path in sorted((tmp_path / "hessian").glob("*.json"))
        if len(json.loads(path.read_text())["blocks"]) >= 2
    )
    report = json.loads(path.read_text())
    first, second = report["blocks"][:2]
    first.update(seconds=7.0, scan_group="g1")
    first["eigen"]["seconds"] = 5.0
    second.update(seconds=4.0, scan_group="g1")
    second["eigen"]["seconds"] = 4.0
    path.write_text(json.dumps(report))
    others = sum(
        b["seconds"]
        for p in (tmp_path / "hessian").glob("*.json")
        if p != path
        for b in json.loads(p.read_text())["blocks"]
    ) + sum(b["seconds"] for b in report["blocks"][2:])
    data, text = cost_section(read_run_directory(tmp_path))
    assert data["eigen_seconds"] == pytest.approx(others + max(5.0, 4.0) + (7.0 - 5.0))  # not others + 7 + 4
    assert data["eigen_blocks_in_groups"] == 2 and "2 of the blocks solved side by side" in text


def test_the_module_median_says_what_it_stands_on(tmp_path) -> None:
    """The per-module median names its module kinds, how many layers, which seeds and how many examples."""
    result = analysis.analyze(write_run_dir(tmp_path / "run", METHODS), bootstrap_samples=50)
    basis = result.methods["lora"].lambda_init_module_basis
    assert (
        basis == "q_proj/v_proj of 2 layers, seed 0, 16 examples"
    )  # the synthetic run: one seed, layers 0-1
    from hessian_lora.analysis.summary import _module_basis

    assert _module_basis({"q_proj"}, {0, 14, 29}, {1}, {8, 64}) == "q_proj of 3 layers, seed 1, 8–64 examples"
    assert _module_basis(set(), set(), set(), set()) is None
