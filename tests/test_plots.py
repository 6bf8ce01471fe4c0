"""Figures from synthetic run directories: all six written, one colour per method, no text outside the canvas."""

from __future__ import annotations

import colorsys

import matplotlib.image
import pytest
from matplotlib import colors as mcolors
from synthetic_run import SyntheticMethod, write_run_dir

from hessian_lora import analysis, registry
from hessian_lora.figures import plots

METHODS = {
    "lora": SyntheticMethod(eta_star=3.1e-4, lambda_init=1.5),
    "pissa": SyntheticMethod(eta_star=3.1e-5, lambda_init=15.0, peak=0.59, module_ratio=10.0),
    "milora": SyntheticMethod(eta_star=1.0e-4, lambda_init=4.7, peak=0.61, module_ratio=2.0),
    "initab": SyntheticMethod(eta_star=1.7e-4, lambda_init=2.7, peak=0.58, diverge_above=2.5e-3, module_ratio=1.8),
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
    return drawn.x0 < -tolerance or drawn.y0 < -tolerance or drawn.x1 > width + tolerance or (
        drawn.y1 > height + tolerance)


def test_plot_run_writes_all_six_figures_as_png_and_pdf(run_dir, tmp_path) -> None:
    result = plots.plot_run(run_dir, tmp_path / "figures", bootstrap_samples=100)
    assert result.skipped == {}
    assert sorted(result.written) == list("abcdefg")
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
                    if label.startswith(plots.method_label(method) + ":") or label == plots.method_label(method):
                        assert mcolors.to_hex(line.get_color()) == plots.METHOD_COLORS[method], (key, label)


def test_module_ratio_medians_match_the_synthetic_ratios(run_dir) -> None:
    figure = plots.figure_module_ratios(analysis.read_run_directory(run_dir))
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    # per-module λ = module_ratio × λ_init × (1 + 0.1·layer + 0.05·index + 0.01·seed): the layer and seed factors
    # cancel in the ratio to LoRA's same block
    expected = {name: m.module_ratio * m.lambda_init / METHODS["lora"].lambda_init for name, m in METHODS.items()}
    assert labels == [f"{plots.method_label(name)} (median ×{expected[name]:.2f})" for name in
                      ("pissa", "milora", "initab")]


def test_missing_optional_data_skips_figures_with_reasons(tmp_path) -> None:
    run_dir = write_run_dir(tmp_path / "run", {"lora": METHODS["lora"], "pissa": METHODS["pissa"]},
                            reports=False, final_reports=False)
    result = plots.plot_run(run_dir, bootstrap_samples=50, formats=("png",))
    assert sorted(result.written) == ["a", "b", "f", "g"]  # λ from the lambda_init column; histories in the table
    assert set(result.skipped) == {"c", "d", "e"}
    assert all(reason for reason in result.skipped.values())
    assert (run_dir / "figures" / "a_metric_vs_lr.png").is_file()


def test_palette_is_stable_and_shades_darken_with_learning_rate() -> None:
    assert plots.method_color("my-method") == plots.method_color("my-method")
    assert len(set(plots.METHOD_COLORS.values())) == len(plots.METHOD_COLORS)
    assert set(plots.METHOD_COLORS) == set(registry.METHOD_ORDER) == set(plots.METHOD_LABELS)
    lightness = [colorsys.rgb_to_hls(*rgb)[1] for rgb in plots.shades("lora", 6)]
    assert lightness == sorted(lightness, reverse=True)


def test_method_order_matches_the_registry() -> None:
    from hessian_lora.registry import METHODS as REGISTRY

    assert tuple(REGISTRY) == registry.METHOD_ORDER
