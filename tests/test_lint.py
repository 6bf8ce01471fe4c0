"""The checks that keep the layers and the public API as docs/ARCHITECTURE.md describes them, run by the suite so
that CI runs them: the import contracts (import-linter, setup.cfg), ruff (with the docstring rules, ruff.toml)
and the type checker (mypy, setup.cfg)."""

from __future__ import annotations

import ast
import io
import shutil
import subprocess
import sys
import tokenize
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
    result = _run(sys.executable, "-m", "ruff", "check", "hessian_lora", "tests", "bench", "scripts")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy() -> None:
    result = _run(_tool("mypy"), "--no-incremental", timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_settings_sweep_configs_and_run_directory_readers_load_without_torch() -> None:
    code = (
        "import hessian_lora.settings.sweep, hessian_lora.settings, hessian_lora.core.rundir, "
        "hessian_lora.measurement.reports, "
        "hessian_lora.analysis.runs, hessian_lora.analysis, hessian_lora.hessian, sys; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('hessian_lora'))"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_lazy_engine_package_names_the_solvers_not_their_submodules() -> None:
    # measure imports hessian_lora.hessian.lanczos (the submodule) before anyone asks the package for lanczos.
    code = (
        "import inspect, hessian_lora.measurement.measure; from hessian_lora.hessian import lanczos, HessianOperator; "
        "import hessian_lora.hessian as engine; "
        "assert inspect.isfunction(lanczos) and engine.lanczos is lanczos, lanczos; "
        "assert inspect.isclass(HessianOperator)"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_no_import_cycle_counting_function_level_imports() -> None:
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder
    graph = grimp.build_graph("hessian_lora", exclude_type_checking_imports=True)
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in sorted(graph.find_modules_directly_imported_by(a))
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert not cycles, cycles


def _function_local_imports(source: str) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(source)
    return sorted(
        {
            node
            for function in ast.walk(tree)
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(function)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        },
        key=lambda node: node.lineno,
    )


def _comments(source: str) -> dict[int, str]:
    """Line number → the comment on that line (tokenize: a '#' inside a string is no comment)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.start[0]: token.string for token in tokens if token.type == tokenize.COMMENT}


def unexplained_local_imports(source: str) -> list[int]:
    """The lines of function-local imports without a ``# local: <reason>`` comment on their line or the one above."""
    comments = _comments(source)
    marked = {line for line, text in comments.items() if text.lstrip("# ").startswith("local:")}
    return [
        node.lineno for node in _function_local_imports(source) if not {node.lineno, node.lineno - 1} & marked
    ]


def test_every_function_local_import_says_why() -> None:
    # A function-local import hides an edge from a reader; it stays only where it buys something (the CLI's
    # start-up without torch, an optional dependency, a module only one platform has), and says so.
    unexplained = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "hessian_lora").rglob("*.py"))
        for line in unexplained_local_imports(path.read_text())
    ]
    assert not unexplained, "function-local imports without a '# local: <reason>' comment: " + ", ".join(
        unexplained
    )


def test_the_local_import_check_sees_a_missing_reason() -> None:
    explained = "def f():\n    import json  # local: a reason\n    # local: the reason\n    import os\n"
    assert unexplained_local_imports(explained) == []
    bare = (
        "def f():\n    x = '# local: in a string'\n    import json\n    import os  # a comment, no reason\n"
    )
    assert unexplained_local_imports(bare) == [3, 4]


# The package's top level: at most 12 entries (issue 35), each a folder that is one layer of the chain contract.
TOP_LEVEL_LIMIT = 12


def test_the_package_top_holds_at_most_twelve_entries_each_a_layer_of_the_chain() -> None:
    package = ROOT / "hessian_lora"
    entries = sorted(
        p.name for p in package.iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info")
    )
    assert len(entries) <= TOP_LEVEL_LIMIT, entries
    folders = {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    config = (ROOT / "setup.cfg").read_text()
    chain = config[config.index("[importlinter:contract:chain]") :].split("\n\n")[0]
    layers = {
        line.strip().removeprefix("hessian_lora.") for line in chain.splitlines() if line.startswith("    ")
    }
    assert folders <= layers, f"folders outside the chain contract: {sorted(folders - layers)}"


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    result = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, (
        result.stdout[-6000:] + result.stderr[-2000:] + "\nrun: .venv/bin/ruff format ."
    )


def test_the_tests_mirror_the_package_folders() -> None:
    package = ROOT / "hessian_lora"
    folders = sorted(p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    missing = [f for f in folders if not any((ROOT / "tests" / f).glob("test_*.py"))]
    assert not missing, f"package folders without tests/<folder>/test_*.py: {missing}"
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
