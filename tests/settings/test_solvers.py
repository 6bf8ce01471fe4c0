"""The solver table (settings/solvers.py) drives every dispatch: a solver registered in the table is measured,
probed, planned for and labelled without an edit elsewhere; a solver the table does not support somewhere is
refused there in one line; an unknown solver is one line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import hessian_lora
from hessian_lora.core.errors import UserError
from hessian_lora.hessian import DenseOperator, lanczos, preconditioned_sharpness
from hessian_lora.hessian.lanczos import solve as lanczos_solve
from hessian_lora.hessian.memory_plan import plan_memory
from hessian_lora.hessian.power import solve as power_solve
from hessian_lora.hessian.results import EigenResult
from hessian_lora.measurement.training_probe import SharpnessProbe
from hessian_lora.settings import solvers
from hessian_lora.settings.measurement import CHOICES, PROBE_SOLVERS, SOLVERS, DuringSettings, MeasureSettings

ROOT = Path(__file__).resolve().parents[2]
TOY = "toy"


class _Recorder:
    """A toy solver's entry: Lanczos under another name, keeping every request it gets."""

    def __init__(self) -> None:
        self.requests: list[solvers.SolveRequest] = []

    def __call__(self, operator: Any, request: solvers.SolveRequest) -> EigenResult:
        self.requests.append(request)
        return dataclasses.replace(lanczos_solve(operator, request), solver=TOY)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorder]:
    """A toy solver registered in the table (monkeypatched: the table is restored afterwards): it warm-starts, finds
    only the largest end, keeps its iterates and has no preconditioned solver."""
    recorder = _Recorder()
    spec = solvers.SolverSpec(
        name=TOY,
        entry=recorder,
        label="Toy iteration",
        summary="a test's",
        keeps="iterates",
        warm_starts=True,
        finds_smallest=False,
    )
    monkeypatch.setitem(solvers.TABLE, TOY, spec)
    yield recorder


def _one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_the_settings_choices_and_the_command_line_are_the_tables() -> None:
    assert SOLVERS == solvers.names() == tuple(solvers.TABLE) and CHOICES["solver"] == SOLVERS
    assert tuple(name for name, spec in solvers.TABLE.items() if spec.warm_starts) == PROBE_SOLVERS
    assert solvers.DEFAULT_SOLVER == MeasureSettings().solver == DuringSettings().solver == solvers.names()[0]
    (help_text,) = [f.metadata["help"] for f in dataclasses.fields(MeasureSettings) if f.name == "solver"]
    assert all(f"{name} ({spec.summary})" in help_text for name, spec in solvers.TABLE.items())


def test_every_entry_resolves_to_a_function_of_its_own_module() -> None:
    for spec in solvers.TABLE.values():
        entry = spec.resolve()
        assert callable(entry) and entry.__module__ == spec.module, spec.name
        assert spec.preconditioned is None or spec.preconditioned in solvers.TABLE, spec.name
    assert solvers.all_names() >= set(solvers.TABLE)


def test_the_table_loads_without_torch() -> None:
    code = "import hessian_lora.settings.solvers as s, sys; s.names(); assert 'torch' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_unknown_solver_is_one_line_everywhere() -> None:
    with pytest.raises(UserError) as error:
        MeasureSettings(solver="lobpcg")
    assert _one_line(error) == f"unknown solver 'lobpcg': use {', '.join(solvers.names())}."
    with pytest.raises(UserError) as error:
        DuringSettings(solver="lobpcg")
    assert "hessian.during.solver 'lobpcg'" in _one_line(error)
    operator = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(UserError) as error:
        preconditioned_sharpness(
            operator,
            torch.ones(3, dtype=torch.float64),
            lr=1e-3,
            beta1=0.9,
            eps=1e-8,
            step=1,
            solver="lobpcg",
        )
    assert "unknown solver 'lobpcg'" in _one_line(error)
    with pytest.raises(UserError) as error:
        plan_memory(
            torch.nn.Linear(2, 2),
            [],
            block_parameters=4,
            dtype=torch.float32,
            device=torch.device("cpu"),
            max_iter=5,
            solver="lobpcg",
            free_bytes=2**30,
        )
    assert "unknown solver 'lobpcg'" in _one_line(error)


def test_a_toy_solver_in_the_table_is_what_measure_runs(toy: _Recorder, generic_problem: Any) -> None:
    problem = generic_problem
    options = {
        "model": problem.model,
        "batches": problem.batches,
        "tol": 1e-8,
        "max_iter": 200,
        "progress": False,
    }
    report = hessian_lora.eigen(solver=TOY, **options)
    reference = hessian_lora.eigen(solver="lanczos", smallest=False, **options)
    (block,), (expected,) = report.blocks, reference.blocks
    assert len(toy.requests) == 1 and block.eigen.solver == TOY and report.settings["solver"] == TOY
    # The table says the toy finds no λ_min: the request asks for the largest end, the report records smallest off.
    assert (
        toy.requests[0].which == "largest"
        and report.settings["smallest"] is False
        and block.lambda_min is None
    )
    assert block.lambda_max == pytest.approx(expected.lambda_max, rel=1e-10)
    assert solvers.label(TOY) == "Toy iteration"


def test_the_memory_plan_charges_what_the_table_says_a_solver_keeps(toy: _Recorder) -> None:
    common: dict[str, Any] = {
        "block_parameters": 1000,
        "dtype": torch.float32,
        "device": torch.device("cpu"),
        "max_iter": 50,
        "free_bytes": 2**30,
    }
    model = torch.nn.Linear(2, 2)
    for name, spec in solvers.TABLE.items():
        plan = plan_memory(model, [], solver=name, **common)
        assert plan.krylov_vectors == 50 * spec.vectors_per_step, name
        assert plan.keep_products == (spec.keeps == "basis_and_products"), name
    assert plan_memory(model, [], solver=TOY, **common).krylov_vectors == 50


def test_each_path_refuses_a_solver_the_table_does_not_support_there(toy: _Recorder) -> None:
    # no block of start vectors: block_size and the built starts are refused in the settings, naming the solver that has
    with pytest.raises(UserError) as error:
        MeasureSettings(solver=TOY, block_size=2)
    assert "solver toy takes no block of start vectors" in _one_line(error) and "solver lanczos" in str(
        error.value
    )
    with pytest.raises(UserError) as error:
        MeasureSettings(solver=TOY, start="gradient")
    assert "--start" in _one_line(error)
    # no preconditioned solver: the measurement's preconditioned sharpness and the probe's are refused
    operator = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -1.0], dtype=torch.float64)))
    with pytest.raises(UserError) as error:
        preconditioned_sharpness(
            operator, torch.ones(3, dtype=torch.float64), lr=1e-3, beta1=0.9, eps=1e-8, step=1, solver=TOY
        )
    assert "solver toy has no preconditioned sharpness" in _one_line(error)
    with pytest.raises(UserError) as error:
        DuringSettings(solver=TOY)
    assert "hessian.during.preconditioned false" in _one_line(error)
    assert DuringSettings(solver=TOY, preconditioned=False).solver == TOY
    # no warm starts: the probe refuses it; the spec refuses a start handed to it anyway
    cold = dataclasses.replace(solvers.TABLE[TOY], warm_starts=False)
    solvers.TABLE[TOY] = cold
    with pytest.raises(UserError) as error:
        DuringSettings(solver=TOY, preconditioned=False)
    assert "hessian.during.solver toy takes no start vectors" in _one_line(error)
    with pytest.raises(UserError) as error:
        cold.run(operator, solvers.SolveRequest(start=torch.ones(1, 3, dtype=torch.float64)))
    assert "takes no start vectors" in _one_line(error)
    with pytest.raises(UserError) as error:
        cold.run(operator, solvers.SolveRequest(which="both"))
    assert "does not find the smallest eigenvalue" in _one_line(error)
    assert toy.requests == []  # every refusal came before a product


def test_the_preconditioned_sharpness_runs_the_solver_the_table_names() -> None:
    operator = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -1.0], dtype=torch.float64)))
    diagonal = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    for name, spec in solvers.TABLE.items():
        result = preconditioned_sharpness(
            operator, diagonal, lr=1e-3, beta1=0.9, eps=1e-8, step=1, solver=name, tol=1e-10, max_iter=50
        )
        assert result.sharpness == pytest.approx(3.0, rel=1e-8)
        assert solvers.spec_of_result(result.eigen.solver) is solvers.TABLE[spec.preconditioned or ""], name


def test_the_probe_dispatches_through_the_table_and_warm_starts(toy: _Recorder, generic_problem: Any) -> None:
    problem = generic_problem
    probe = SharpnessProbe(
        problem.model,
        problem.batches,
        DuringSettings(solver=TOY, preconditioned=False, tol=1e-6, max_iter=100),
    )
    first = probe(0)
    second = probe(10)
    assert first is not None and second is not None and len(toy.requests) == 2
    assert toy.requests[0].start is None  # nothing to start from: the solver draws its own
    assert toy.requests[1].start is not None and toy.requests[1].which == "largest"
    assert second.lambda_max == pytest.approx(first.lambda_max, rel=1e-5)


def test_power_iteration_now_warm_starts_in_the_probe(
    monkeypatch: pytest.MonkeyPatch, generic_problem: Any
) -> None:
    # Before the table the probe handed power iteration no start at all; the table says it takes one.
    starts: list[Any] = []

    def recording(operator: Any, request: solvers.SolveRequest) -> EigenResult:
        starts.append(request.start)
        return power_solve(operator, request)

    monkeypatch.setitem(solvers.TABLE, "power", dataclasses.replace(solvers.TABLE["power"], entry=recording))
    problem = generic_problem
    probe = SharpnessProbe(
        problem.model,
        problem.batches,
        DuringSettings(solver="power", preconditioned=False, tol=1e-4, max_iter=300),
    )
    probe(0)
    probe(10)
    assert starts[0] is None and starts[1] is not None


def test_figures_label_a_result_by_the_table() -> None:
    for spec in solvers.TABLE.values():
        for name in (spec.name, *spec.result_names):
            assert solvers.label(name) == spec.label
    assert solvers.label("a-solver-of-an-old-report") == "a-solver-of-an-old-report"


def test_a_direct_lanczos_and_the_tables_entry_agree() -> None:
    operator = DenseOperator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
    request = solvers.SolveRequest(k=2, which="both", tol=1e-10, max_iter=20, seed=3)
    direct = lanczos(operator, k=2, which="both", tol=1e-10, max_iter=20, seed=3)
    via = solvers.get("lanczos").run(operator, request)
    assert via.largest == direct.largest and via.smallest == direct.smallest
