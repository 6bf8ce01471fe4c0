"""Calibration fits, the narrow grid, the shipped calibration, and a real λ probe on the tiny model."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from synthetic_run import SyntheticMethod, write_run_dir

from hessian_lora.cli.main import main
from hessian_lora.core.errors import UserError
from hessian_lora.sweep import recommend

C = 4.5e-4
METHODS = {
    f"m{i}": SyntheticMethod(eta_star=C / lam, lambda_init=lam) for i, lam in enumerate([0.6, 1.3, 4.0, 11.0])
}


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    return write_run_dir(tmp_path_factory.mktemp("recommend") / "run", METHODS)


def test_calibration_recovers_an_exact_inverse_law_and_round_trips(exact_run, tmp_path) -> None:
    calibration = recommend.calibration_from_run(exact_run, note="synthetic", bootstrap_samples=100)
    assert calibration.c == pytest.approx(C, rel=1e-8)
    assert calibration.log10_error == pytest.approx(0.0, abs=1e-8)
    assert calibration.predict(2.0) == pytest.approx(C / 2.0, rel=1e-8)
    assert set(calibration.points) == set(METHODS)
    assert calibration.probe["model"] == "tiny-llama" and calibration.probe["rank"] == 8
    assert calibration.probe["samples"] == 8 and calibration.probe["blocks"] == "whole"
    assert calibration.provenance["note"] == "synthetic"
    path = recommend.save_calibration(calibration, tmp_path / "cal.json")
    assert recommend.load_calibration(path) == recommend.Calibration.from_dict(json.loads(path.read_text()))
    assert recommend.load_calibration(path).predict(2.0) == calibration.predict(2.0)
    assert recommend.load_calibration(exact_run).c == pytest.approx(C, rel=1e-8)


def test_predict_refuses_non_positive_lambda(exact_run) -> None:
    calibration = recommend.calibration_from_run(exact_run, bootstrap_samples=50)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(UserError, match="positive"):
            calibration.predict(bad)


@pytest.mark.parametrize(("error", "points"), [(None, 3), (0.0, 3), (0.3, 7), (5.0, 9)])
def test_narrow_grid_is_centred_in_quarter_decades(error, points) -> None:
    grid = recommend.narrow_grid(1e-4, error)
    assert len(grid) == points
    assert grid[points // 2] == pytest.approx(1e-4, rel=1e-12)
    ratios = [b / a for a, b in itertools.pairwise(grid)]
    assert all(ratio == pytest.approx(10**0.25, rel=1e-12) for ratio in ratios)


def test_shipped_calibration_loads_and_says_where_it_comes_from() -> None:
    calibration = recommend.load_calibration()
    assert calibration.fit in ("power", "inverse")
    assert (
        calibration.provenance["note"]
        and calibration.provenance["config"]["model"] == calibration.probe["model"]
    )
    assert len(calibration.points) >= 2
    for point in calibration.points.values():
        assert point["lambda_max"] > 0 and point["eta_star"] > 0


def test_shipped_calibration_predicts_from_its_fit_and_warns_off_its_model() -> None:
    calibration = recommend.load_calibration()
    lora = calibration.points["lora"]
    expected = 10 ** (calibration.intercept + calibration.slope * math.log10(lora["lambda_max"]))
    assert calibration.predict(lora["lambda_max"]) == pytest.approx(expected, rel=1e-9)
    # A probe on another model than the calibration's still answers, with a warning that says so.
    result = recommend.recommend("lora", model="tiny-llama", rank=4, calibration=calibration, progress=False)
    assert result.eta == pytest.approx(calibration.predict(result.lambda_max))
    assert min(result.grid) < result.eta < max(result.grid)
    assert any("model" in warning for warning in result.warnings)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys) -> None:
    assert main(["recommend"]) == 2
    assert main(["recommend", "--method", "lora", "--calibration", str(tmp_path / "missing")]) == 2
    assert main(["recommend", "--method", "nope"]) == 2
    (tmp_path / "bad.json").write_text(json.dumps({"fit": "power"}))
    assert main(["recommend", "--method", "lora", "--calibration", str(tmp_path / "bad.json")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hessian-lora")]
    assert len(errors) == 4 and all("error:" in line for line in errors)


def test_cli_saves_a_calibration(exact_run, tmp_path, capsys) -> None:
    target = tmp_path / "saved.json"
    assert (
        main(
            [
                "recommend",
                "--calibration",
                str(exact_run),
                "--save-calibration",
                str(target),
                "--note",
                "from the test",
            ]
        )
        == 0
    )
    assert "written to" in capsys.readouterr().out
    saved = recommend.load_calibration(target)
    assert saved.c == pytest.approx(C, rel=1e-8) and saved.provenance["note"] == "from the test"


def test_no_calibration_from_censored_optima_and_old_files_still_load(tmp_path, capsys) -> None:
    edge = {
        f"m{i}": SyntheticMethod(eta_star=eta, lambda_init=lam)
        for i, (eta, lam) in enumerate([(1.0, 0.5), (1e-7, 1.3), (0.5, 4.0), (2e-7, 11.0)])
    }
    run_dir = write_run_dir(tmp_path / "edge", edge)
    with pytest.raises(UserError, match=r"not enough interior optima .*--extend"):
        recommend.calibration_from_run(run_dir, bootstrap_samples=50)
    assert (
        main(["recommend", "--calibration", str(run_dir), "--save-calibration", str(tmp_path / "c.json")])
        == 2
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "not enough interior optima" in errors[0]
    # New files say how many interior optima they rest on; files without the field still load.
    calibration = recommend.calibration_from_run(
        write_run_dir(tmp_path / "ok", METHODS), bootstrap_samples=50
    )
    assert calibration.n_interior == len(METHODS)
    old = {key: value for key, value in calibration.to_dict().items() if key != "n_interior"}
    assert recommend.Calibration.from_dict(old).n_interior is None
    with pytest.raises(UserError, match="2 interior optima"):
        recommend.Calibration.from_dict({**calibration.to_dict(), "n_interior": 2})


def test_prompt_template_shapes_the_probe_batches_and_bad_ones_are_refused(capsys) -> None:
    from hessian_lora.inputs.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    cut = {"data_seed": 0, "n_train": None, "n_eval": None, "samples": 2, "batch_size": 2, "max_length": 512}
    plain = recommend.probe_batches(tokenizer, "arith", **cut, prompt_template="plain")
    alpaca = recommend.probe_batches(tokenizer, "arith", **cut, prompt_template="alpaca")
    assert alpaca[0].input_ids.shape[1] > plain[0].input_ids.shape[1]
    assert main(["recommend", "--method", "lora", "--prompt-template", "{nothing}"]) == 2
    assert "bad prompt template" in capsys.readouterr().err
