"""The checks that keep the layers and the public API as docs/ARCHITECTURE.md describes them, run by the suite so
that CI runs them: the import contracts (import-linter, setup.cfg), ruff (with the docstring rules, ruff.toml)
and the type checker (mypy, setup.cfg)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run bash scripts/setup.sh (it installs the dev extra).")
    return str(found)


def _run(*command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def test_import_contracts_hold() -> None:
    result = _run(_tool("lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_ruff_with_the_docstring_rules() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "hessian_lora", "tests", "bench")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy() -> None:
    result = _run(_tool("mypy"), "--no-incremental", timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_settings_sweep_configs_and_run_directory_readers_load_without_torch() -> None:
    code = ("import hessian_lora.sweep.config, hessian_lora.settings, hessian_lora.rundir, hessian_lora.reports, "
            "hessian_lora.runs, hessian_lora.analysis, hessian_lora.hessian, sys; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('hessian_lora'))")
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_lazy_engine_package_names_the_solvers_not_their_submodules() -> None:
    # measure imports hessian_lora.hessian.lanczos (the submodule) before anyone asks the package for lanczos.
    code = ("import inspect, hessian_lora.measure; from hessian_lora.hessian import lanczos, HessianOperator; "
            "import hessian_lora.hessian as engine; "
            "assert inspect.isfunction(lanczos) and engine.lanczos is lanczos, lanczos; "
            "assert inspect.isclass(HessianOperator)")
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_no_import_cycle_counting_function_level_imports() -> None:
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder
    graph = grimp.build_graph("hessian_lora", exclude_type_checking_imports=True)
    cycles = [(a, b) for a in sorted(graph.modules) for b in sorted(graph.find_modules_directly_imported_by(a))
              if graph.chain_exists(importer=b, imported=a)]
    assert not cycles, cycles
