"""Figures from synthetic run directories: all six written, one colour per method, no text outside the canvas."""

from __future__ import annotations

import colorsys
import json

import matplotlib.image
import pytest
from matplotlib import colors as mcolors
from synthetic_run import SyntheticMethod, write_run_dir

from hessian_lora import analysis
from hessian_lora.analysis.figures import plots, spectrum
from hessian_lora.methods import registry

METHODS = {
    "lora": SyntheticMethod(eta_star=3.1e-4, lambda_init=1.5),
    "pissa": SyntheticMethod(eta_star=3.1e-5, lambda_init=15.0, peak=0.59, module_ratio=10.0),
    "milora": SyntheticMethod(eta_star=1.0e-4, lambda_init=4.7, peak=0.61, module_ratio=2.0),
    "initab": SyntheticMethod(
        eta_star=1.7e-4, lambda_init=2.7, peak=0.58, diverge_above=2.5e-3, module_ratio=1.8
    ),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("plots") / "run", METHODS, seeds=(0, 1), seed_shift=0.1)


def _clipped(figure) -> bool:
    """Whether anything drawn (labels, legends, titles, ticks) extends beyond the canvas of the saved file."""
    figure.canvas.draw()
    drawn = figure.get_tightbbox(figure.canvas.get_renderer())  # inches
    width, height = figure.get_size_inches()
    tolerance = 0.02
    return (
        drawn.x0 < -tolerance
        or drawn.y0 < -tolerance
        or drawn.x1 > width + tolerance
        or (drawn.y1 > height + tolerance)
    )


def test_plot_run_writes_all_six_figures_as_png_and_pdf(run_dir, tmp_path) -> None:
    result = plots.plot_run(run_dir, tmp_path / "figures", bootstrap_samples=100)
    assert result.skipped == {}
    assert sorted(result.written) == list("abcdefgk")
    for key, paths in result.written.items():
        assert [path.suffix for path in paths] == [".png", ".pdf"]
        assert paths[0].stem == plots.FIGURE_NAMES[key]
        image = matplotlib.image.imread(paths[0])
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert paths[1].read_bytes()[:4] == b"%PDF"
    assert not list((tmp_path / "figures").glob(".*"))  # no temporary files left


def test_no_text_is_clipped_and_methods_keep_their_colour(run_dir) -> None:
    directory = analysis.read_run_directory(run_dir)
    result = analysis.analyze(run_dir, bootstrap_samples=100)
    figures = plots.make_figures(directory, result)
    for key, figure in figures.items():
        assert figure is not None, key
        assert not _clipped(figure), key
    # In (a), (d) and (e) the first line of each method carries its label and the palette's colour.
    for key in ("a", "d", "e"):
        for axes in figures[key].axes:
            for line in axes.get_lines():
                label = line.get_label()
                for method in METHODS:
                    if label.startswith(plots.method_label(method) + ":") or label == plots.method_label(
                        method
                    ):
                        assert mcolors.to_hex(line.get_color()) == plots.METHOD_COLORS[method], (key, label)


def test_module_ratio_medians_match_the_synthetic_ratios(run_dir) -> None:
    figure = plots.figure_module_ratios(analysis.read_run_directory(run_dir))
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    # per-module λ = module_ratio × λ_init × (1 + 0.1·layer + 0.05·index + 0.01·seed): the layer and seed factors
    # cancel in the ratio to LoRA's same block
    expected = {
        name: m.module_ratio * m.lambda_init / METHODS["lora"].lambda_init for name, m in METHODS.items()
    }
    assert labels == [
        f"{plots.method_label(name)} (median ×{expected[name]:.2f})" for name in ("pissa", "milora", "initab")
    ]


def test_missing_optional_data_skips_figures_with_reasons(tmp_path) -> None:
    run_dir = write_run_dir(
        tmp_path / "run",
        {"lora": METHODS["lora"], "pissa": METHODS["pissa"]},
        reports=False,
        final_reports=False,
    )
    result = plots.plot_run(run_dir, bootstrap_samples=50, formats=("png",))
    assert sorted(result.written) == [
        "a",
        "b",
        "f",
        "g",
    ]  # λ from the lambda_init column; histories in the table
    assert set(result.skipped) == {"c", "d", "e", "k"}
    assert all(reason for reason in result.skipped.values())
    assert (run_dir / "figures" / "a_metric_vs_lr.png").is_file()


def test_palette_is_stable_and_shades_darken_with_learning_rate() -> None:
    assert plots.method_color("my-method") == plots.method_color("my-method")
    assert len(set(plots.METHOD_COLORS.values())) == len(plots.METHOD_COLORS)
    assert set(plots.METHOD_COLORS) == set(registry.METHOD_ORDER) == set(plots.METHOD_LABELS)
    lightness = [colorsys.rgb_to_hls(*rgb)[1] for rgb in plots.shades("lora", 6)]
    assert lightness == sorted(lightness, reverse=True)


def test_method_order_matches_the_registry() -> None:
    from hessian_lora.methods.registry import METHODS as REGISTRY

    assert tuple(REGISTRY) == registry.METHOD_ORDER


# ----------------------------------------------------------------------------------------------------------
# Figures a researcher can trust (issue 20): observed vs fitted, intervals where they belong, reference lines in
# frame, no line between unmeasured layers, uncertified values marked, coinciding methods visible.

OVERLAP = {
    "lora": SyntheticMethod(eta_star=6.5e-4, lambda_init=28.0),
    "pissa": SyntheticMethod(eta_star=6.5e-5, lambda_init=2254.0, peak=0.5, module_ratio=0.14),
    "dora": SyntheticMethod(eta_star=6.5e-4, lambda_init=28.0),  # LoRA's curve exactly: drawn on top of it
}
UNCERTIFIED_MODULE = "base_model.model.model.layers.1.self_attn.q_proj"


@pytest.fixture(scope="module")
def overlap_run(tmp_path_factory):
    from synthetic_run import mark_uncertified

    root = write_run_dir(
        tmp_path_factory.mktemp("overlap") / "run",
        OVERLAP,
        seeds=(0, 1),
        seed_shift=0.1,
        lrs=tuple(2e-5 * 10 ** (k / 4) for k in range(-1, 13)),
    )
    mark_uncertified(root, "dora_r8_s0", "adapter")
    mark_uncertified(root, "pissa_r8_s0", UNCERTIFIED_MODULE)
    return root, analysis.read_run_directory(root), analysis.analyze(root, bootstrap_samples=100)


def _method_lines(axes, method):
    return [
        line
        for line in axes.get_lines()
        if line.get_color() == plots.METHOD_COLORS[method]
        or mcolors.to_hex(line.get_color()) == plots.METHOD_COLORS[method]
    ]


def test_metric_figure_puts_intervals_at_run_lrs_and_the_fit_in_its_own_strip(overlap_run) -> None:
    _, _, result = overlap_run
    figure = plots.figure_metric_vs_lr(result)
    strip, axes = figure.axes[:2]
    for name, summary in result.methods.items():
        run_lrs = set(summary.lrs)
        # Every vertical interval bar stands at an LR that was run (the best run's), none at the fitted η*.
        vertical = 0
        for collection in axes.collections:
            if (
                hasattr(collection, "get_segments")
                and mcolors.to_hex(collection.get_color()[0]) == plots.METHOD_COLORS[name]
            ):
                for segment in collection.get_segments():
                    xs = {float(x) for x, _ in segment}
                    if len(xs) == 1:
                        vertical += 1
                        assert xs <= run_lrs, (name, xs)
        assert vertical == (1 if summary.peak_ci else 0), name
        # The fitted η* is a tick in a panel of its own (no score axis), on the method's labelled row, at η*.
        assert not [line for line in _method_lines(axes, name) if line.get_marker() == "|"]
        ticks = [line for line in _method_lines(strip, name) if line.get_marker() == "|"]
        assert len(ticks) == 1 and ticks[0].get_xdata()[0] == pytest.approx(summary.eta_star)
        row = int(ticks[0].get_ydata()[0])
        assert strip.get_yticklabels()[row].get_text() == plots.method_label(name)
        # The best run is ringed in black at its own LR and value.
        ringed = [
            line
            for line in _method_lines(axes, name)
            if line.get_markeredgewidth() >= 1.5 and list(line.get_xdata()) == [summary.eta_grid]
        ]
        assert ringed and ringed[0].get_ydata()[0] == pytest.approx(summary.peak_metric * 100)
    assert (
        "fitted η*" in strip.get_title()
        and "not a score" in strip.get_title()
        and "best run" in axes.get_title()
    )
    assert strip.get_shared_x_axes().joined(strip, axes)  # the strip shares the LR axis and nothing else
    assert not _clipped(figure)


def test_coinciding_methods_are_drawn_apart(overlap_run) -> None:
    _, _, result = overlap_run
    figure = plots.figure_metric_vs_lr(result)
    # the curves' panel (the η* strip above it has rows, not curves)
    lora, dora = (
        next(line for line in figure.axes[1].get_lines() if line.get_label().startswith(label))
        for label in ("LoRA:", "DoRA:")
    )
    assert list(lora.get_ydata()) == pytest.approx(list(dora.get_ydata()))  # the same curve...
    assert lora.get_linestyle() != dora.get_linestyle()  # ...in another dash,
    assert lora.get_linewidth() > dora.get_linewidth()  # LoRA wider underneath,
    assert lora.get_zorder() < dora.get_zorder()
    if lora.get_marker() not in ("None", None, ""):
        assert lora.get_marker() != dora.get_marker()  # and with its own marker


def test_the_density_has_a_panel_and_a_kernel_per_method(overlap_run) -> None:
    """(e): spectra four decades apart each get their own panel and kernel width (one shared kernel would be wider
    than LoRA's whole spectrum), and the log axis stops at 10⁻⁴ of the peak."""
    _, directory, _ = overlap_run
    figure = plots.figure_density(directory)
    panels = [axes for axes in figure.axes if axes.get_visible()]
    assert len(panels) == len(OVERLAP)
    widths = {}
    for axes in panels:
        title = axes.get_title()
        name = next(m for m in OVERLAP if title.startswith(plots.method_label(m) + ":"))
        assert mcolors.to_hex(axes.get_lines()[0].get_color()) == plots.METHOD_COLORS[name]
        widths[name] = float(title.rsplit("σ = ", 1)[1])
        low, high = axes.get_ylim()
        assert high / low == pytest.approx(3 / spectrum.DENSITY_FLOOR)
    assert widths["pissa"] > 10 * widths["lora"]
    assert not _clipped(figure)


def test_sharpness_figure_frames_the_data_and_marks_uncertified_lambda(overlap_run) -> None:
    _, _, result = overlap_run
    figure = plots.figure_sharpness_vs_lr(result)
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    etas = [summary.eta_star for summary in result.methods.values()]
    for summary in result.methods.values():
        lam = analysis.relation_lambda(summary)
        assert low <= summary.eta_star <= high and axes.get_xlim()[0] <= lam <= axes.get_xlim()[1]
    # The frame is the data's, within a factor 2 of the optima and their intervals: no bound line squeezes them.
    assert low >= min(etas) / 2 / 1.5 and high <= max(etas) * 2 * 1.5 * 3
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    fractions = [s.eta_star * analysis.relation_lambda(s) / 2 for s in result.methods.values()]
    bound = next(text for text in labels if text.startswith("gradient descent bound"))
    assert f"η* is {min(fractions):.2g}–{max(fractions):.2g} of it" in bound
    assert "per parameter" in axes.get_xlabel() and "nats/token" in axes.get_xlabel()
    faces = {}
    for container in axes.containers:  # errorbar: the label is the container's, the marker its data line
        label = container.get_label()
        for method in OVERLAP:
            if label.startswith(plots.method_label(method) + ":"):
                faces[method] = mcolors.to_hex(container.lines[0].get_markerfacecolor())
    assert faces["dora"] == "#ffffff" and faces["lora"] != "#ffffff" and faces["pissa"] != "#ffffff"
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert any("DoRA" in text and "NOT certified" in text for text in labels)
    assert not any("LoRA:" in text and "NOT certified" in text for text in labels if text.startswith("LoRA"))
    assert "not certified" in axes.get_title()
    assert not _clipped(figure)


def test_module_ratios_are_points_per_measured_layer_with_uncertified_hollow(overlap_run) -> None:
    _, directory, _ = overlap_run
    figure = plots.figure_module_ratios(directory)
    for axes in figure.axes:
        for line in axes.get_lines():
            if line.get_marker() not in ("None", None, ""):
                assert line.get_linestyle() == "None", (
                    line.get_label()
                )  # markers only: no line between layers
        if axes.get_visible() and axes.get_title() == "q_proj":
            hollow = [
                line
                for line in _method_lines(axes, "pissa")
                if mcolors.to_hex(line.get_markerfacecolor()) == "#ffffff"
            ]
            assert len(hollow) == 1 and len(hollow[0].get_xdata()) == 1
            assert round(float(hollow[0].get_xdata()[0])) == 1  # the uncertified block's layer
            assert [tick for tick in axes.get_xticks()] == [0, 1]  # ticks at the measured layers only
    assert "not certified" in figure._suptitle.get_text() and "no line" in figure._suptitle.get_text()
    assert not _clipped(figure)


def test_convergence_titles_match_what_is_drawn(overlap_run) -> None:
    _, directory, _ = overlap_run
    figure = plots.figure_convergence(directory)
    left, right = figure.axes[:2]
    assert "converged" not in right.get_title() and "last estimate" in right.get_title()
    labels = [text.get_text() for text in left.get_legend().get_texts()]
    assert any(text.startswith("DoRA") and "NOT certified" in text and "max_iter" in text for text in labels)
    assert any(
        text.startswith("LoRA") and text.endswith("certified") and "NOT" not in text for text in labels
    )
    assert "1 of 3 not certified" in figure._suptitle.get_text()


def test_convergence_plots_the_certificates_relative_residual_against_tol(tmp_path) -> None:
    """(d): the right panel is the top Ritz pair's recorded ‖Hy − θy‖/|θ| per product with the solver's tol, the
    certificate's own quantity, not the distance to the last estimate (which is 0 at the end by construction)."""
    run_dir = write_run_dir(tmp_path / "run", {name: METHODS[name] for name in ("lora", "pissa")})
    for path in (run_dir / "hessian").glob("*_init.json"):
        data = json.loads(path.read_text())
        for block in data["blocks"]:
            for k, record in enumerate(block["eigen"]["history"]):
                record["residuals"] = [abs(record["values"][0]) * 10.0 ** (-k), 0.0]
        path.write_text(json.dumps(data))
    figure = plots.figure_convergence(analysis.read_run_directory(run_dir))
    right = figure.axes[1]
    lora = next(
        line for line in right.get_lines() if mcolors.to_hex(line.get_color()) == plots.METHOD_COLORS["lora"]
    )
    assert list(lora.get_ydata()) == pytest.approx([10.0 ** (-k) for k in range(len(lora.get_ydata()))])
    assert any(list(line.get_ydata()) == [1e-4, 1e-4] for line in right.get_lines())  # the synthetic tol
    assert "relative residual" in right.get_ylabel() and "last estimate" not in right.get_title()


def test_a_censored_optimum_gets_an_arrow_inside_the_frame(tmp_path) -> None:
    from matplotlib.text import Annotation

    from hessian_lora.analysis.ablation import analyze_ablation
    from hessian_lora.analysis.figures.ablation import figure_eta_vs_setting

    methods = {
        **OVERLAP,
        "milora": SyntheticMethod(eta_star=0.05, lambda_init=5.0, peak=0.52),
    }  # above the grid
    first = write_run_dir(tmp_path / "a", methods, config={"n_train": 64})
    second = write_run_dir(tmp_path / "b", methods, config={"n_train": 128})
    result = analysis.analyze(first, bootstrap_samples=50)
    assert result.methods["milora"].censored == "high"
    ablation = analyze_ablation([first, second], bootstrap_samples=50)
    for figure in (plots.figure_sharpness_vs_lr(result), figure_eta_vs_setting(ablation)):
        axes = figure.axes[0]
        figure.canvas.draw()
        arrows = [child for child in axes.get_children() if isinstance(child, Annotation)]
        assert arrows, "a censored η* has no arrow"
        low, high = axes.get_ylim()
        for arrow in arrows:
            (_, tail), (_, head) = arrow.xyann, arrow.xy
            assert head > tail and low <= tail < head <= high  # pointing up (η* ≥), head in frame
        assert "arrow" in axes.get_title() or any(
            "arrow" in text.get_text() for legend in figure.legends for text in legend.get_texts()
        )


def test_module_ratios_title_names_the_examples_the_modules_were_measured_on(tmp_path) -> None:
    """A per-module scan merged from its own report (scripts/init_modules.py --samples 4) keeps its own sample
    count, though the merged report's settings are the whole-adapter report's; figure (c) names it."""
    run_dir = write_run_dir(tmp_path / "run", {name: METHODS[name] for name in ("lora", "pissa")})
    directory = analysis.read_run_directory(run_dir)
    assert "(on 16 training examples; seed 0)" in plots.figure_module_ratios(directory)._suptitle.get_text()
    for path in sorted((run_dir / "hessian").glob("*_init.json")):
        data = json.loads(path.read_text())
        modules = {
            **data,
            "settings": {**data["settings"], "samples": 4},
            "blocks": [block for block in data["blocks"] if block["name"] != "adapter"],
        }
        data["blocks"] = [block for block in data["blocks"] if block["name"] == "adapter"]
        assert modules["blocks"] and data["blocks"]
        path.write_text(json.dumps(data))
        path.with_name(path.stem + "_modules.json").write_text(json.dumps(modules))
    directory = analysis.read_run_directory(run_dir)
    report = next(iter(directory.init_reports.values()))
    assert report.samples_of(report.whole) == 16 and {
        report.samples_of(block) for block in report.modules
    } == {4}
    assert "(on 4 training examples; seed 0)" in plots.figure_module_ratios(directory)._suptitle.get_text()


def test_module_ratios_title_names_the_seeds_it_averages(tmp_path) -> None:
    """(c) draws each module's geometric mean over the seeds it has: the title says over which."""
    run_dir = write_run_dir(
        tmp_path / "run", {name: METHODS[name] for name in ("lora", "pissa")}, seeds=(1, 2)
    )
    title = plots.figure_module_ratios(analysis.read_run_directory(run_dir))._suptitle.get_text()
    assert "geometric mean over seeds 1, 2" in title and "seed 1)" not in title


def test_sharpness_figure_draws_lambdas_seed_range_and_says_so(run_dir) -> None:
    """(b): each point is the geometric mean of its seeds' λ; the horizontal bar spans their range."""
    result = analysis.analyze(run_dir, bootstrap_samples=50)
    figure = plots.figure_sharpness_vs_lr(result)
    axes = figure.axes[0]
    spans = {}
    for container in axes.containers:
        _, _, bar_lines = container.lines
        label = container.get_label()
        for name, summary in result.methods.items():
            if label.startswith(plots.method_label(name) + ":"):
                horizontal = [
                    segments
                    for segments in bar_lines
                    if any(abs(s[0][1] - s[1][1]) < 1e-12 for s in segments.get_segments())
                ]
                (segment,) = horizontal[0].get_segments()
                spans[name] = (segment[0][0], segment[1][0])
                per_seed = list(summary.lambda_init_per_seed.values())
                assert spans[name] == pytest.approx((min(per_seed), max(per_seed)))
    assert set(spans) == set(result.methods) and all(low < high for low, high in spans.values())
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert any(
        text.startswith("horizontal bars: λ's range over seeds (at most ")
        for text in "; ".join(labels).split("; ")
    )


def test_sharpness_figure_draws_no_seed_bar_for_a_seed_independent_lambda(run_dir) -> None:
    """PiSSA's λ is the same for every seed (the SVD fixes the adapter); their geometric mean rounds a few ulps
    above it, which once made matplotlib refuse a negative bar. No bar then, and no error."""
    import dataclasses

    result = analysis.analyze(run_dir, bootstrap_samples=50)
    same = 2635.9998092651226  # the shipped run's PiSSA λ: its mean over three seeds rounds to ...124
    name = next(iter(result.methods))
    methods = dict(result.methods)
    methods[name] = dataclasses.replace(methods[name], lambda_init_per_seed={"1": same, "2": same, "3": same})
    assert plots.relation_lambda(methods[name]) > same  # the rounding this test is about
    figure = plots.figure_sharpness_vs_lr(dataclasses.replace(result, methods=methods))
    for container in figure.axes[0].containers:
        if container.get_label().startswith(plots.method_label(name) + ":"):
            _, _, bar_lines = container.lines
            assert not [
                segments
                for segments in bar_lines
                if any(abs(s[0][1] - s[1][1]) < 1e-12 for s in segments.get_segments())
            ]


def test_the_layer_heatmap_leaves_unmeasured_cells_empty(run_dir) -> None:
    """(k), the paper's v2 view: λ_max per layer × method for q_proj and k_proj; a cell no report measured stays
    empty (masked, hatched underneath), each panel counts its measured cells, and the values are the reports'."""
    directory = analysis.read_run_directory(run_dir)
    figure = spectrum.figure_layer_heatmap(directory, layers=4)
    q_panel, k_panel = figure.axes[:2]
    assert q_panel.get_title() == f"q_proj: {2 * len(METHODS)} of {4 * len(METHODS)} cells measured"
    assert k_panel.get_title().startswith(f"k_proj: 0 of {4 * len(METHODS)} cells measured")
    grid = q_panel.get_images()[0].get_array()
    assert grid.mask[2:].all() and not grid.mask[:2].any()  # layers 2 and 3: not measured
    values, _ = spectrum._module_values(directory, "pissa")
    column = [label.get_text() for label in q_panel.get_xticklabels()].index(plots.method_label("pissa"))
    assert grid[1, column] == pytest.approx(values["base_model.model.model.layers.1.self_attn.q_proj"])
    assert "layers 0–3" in figure._suptitle.get_text() and "highest layer" not in figure._suptitle.get_text()
    inferred = spectrum.figure_layer_heatmap(directory)
    assert "layers 0–1 (up to the highest layer measured)" in inferred._suptitle.get_text()
    assert not _clipped(figure)


def test_loss_curves_star_each_seeds_own_best_lr(tmp_path) -> None:
    """(f) draws the lowest seed's curves: its star marks that seed's best LR, not the seed mean's."""
    run_dir = write_run_dir(
        tmp_path / "run", {"lora": METHODS["lora"], "pissa": METHODS["pissa"]}, seeds=(0, 1), seed_shift=1.0
    )  # seed 0's optimum half a decade below the mean's
    directory = analysis.read_run_directory(run_dir)
    result = analysis.analyze(run_dir, bootstrap_samples=20)
    figure = plots.figure_loss_curves(directory, result)
    for name, axes in zip(("lora", "pissa"), figure.axes):
        own = max(
            (run for run in directory.runs if run.method == name and run.seed == 0),
            key=lambda run: run.accuracy,
        )
        starred = [line.get_label() for line in axes.get_lines() if "★" in line.get_label()]
        assert starred == [f"{plots.format_lr(own.lr)} ★"]
        assert own.lr != result.methods[name].eta_grid  # the seed mean's best lies elsewhere
    assert "this seed's own score" in figure._suptitle.get_text()


def test_edge_of_stability_with_one_informative_step_is_drawn_against_the_lr(tmp_path) -> None:
    """(g): where each run has Adam's ratio at one step only, a time axis would hold one point: the figure draws
    the ratios against the LR and its title says why."""
    run_dir = write_run_dir(tmp_path / "run", {"lora": METHODS["lora"], "pissa": METHODS["pissa"]})
    directory = analysis.read_run_directory(run_dir)
    result = analysis.analyze(run_dir, bootstrap_samples=20)
    over_time = plots.figure_edge_of_stability(directory, result)
    assert "no time axis" not in over_time._suptitle.get_text()
    assert over_time.axes[0].get_xlabel() == "optimizer step"
    for path in run_dir.glob("runs/*/sharpness.json"):
        data = json.loads(path.read_text())
        data["history"] = [
            point for point in data["history"] if point["step"] in (0, 4)
        ]  # step 0: no Adam state
        path.write_text(json.dumps(data))
    figure = plots.figure_edge_of_stability(analysis.read_run_directory(run_dir), result)
    text = figure._suptitle.get_text()
    assert "no time axis" in text and "step 4" in text
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_xlabel() == plots.LR_AXIS_LABEL
    adam = [line for line in axes.get_lines() if line.get_marker() == "o"]
    assert sorted(float(line.get_xdata()[0]) for line in adam) == sorted(
        run.lr for run in directory.runs if run.method == "lora" and run.seed == 0 and run.is_usable
    )
    assert not _clipped(figure)
