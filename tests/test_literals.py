"""Names that belong to one place: a method's name is a string literal only in its own module and the
registry; a solver's only in the solver table and its own module."""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules where a word that is a solver's name means something else, with what it means there: "power" is also the
# power-law fit of the LR relation and a power calculation's probability. (A module moved: update its path here.)
_SOLVER_WORD_MEANS_ELSE: dict[str, dict[str, str]] = {
    "hessian_lora/analysis/relation.py": {"power": "the power-law fit kind (FitKind)"},
    "hessian_lora/sweep/recommend.py": {"power": "the calibration's power-law fit kind"},
    "hessian_lora/settings/schemas.py": {"power": "the calibration file's fit kind"},
    "hessian_lora/sweep/adaptive.py": {"power": "the calibration's power-law fit kind"},
    "hessian_lora/cli/commands/sweep.py": {"power": "the refit's power-law fit kind"},
    "hessian_lora/analysis/power.py": {"power": "a power calculation's probability (its option)"},
    "hessian_lora/analysis/summary.py": {"power": "the summary's power-estimate key"},
    "hessian_lora/analysis/claims.py": {"power": "the summary's power-estimate key"},
}


def _solver_name_literals(
    source: str, names: Collection[str], *, allowed: Collection[str] = (), submodules: Collection[str] = ()
) -> list[tuple[int, str]]:
    """(line, name) of every string constant in ``source`` equal to a solver name in ``names``, except ``allowed``
    names (a solver's own module names itself) and ``submodules`` (a package ``__init__``'s lazy loader naming its
    submodules, ``lanczos.py`` say, by a module name that is a solver's too)."""
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in names
        and node.value not in allowed
        and node.value not in submodules
    )


def test_no_solver_name_literal_outside_registry() -> None:
    from hessian_lora.settings import solvers

    package = ROOT / "hessian_lora"
    names = solvers.all_names()
    table = package / "settings" / "solvers.py"
    own: dict[Path, set[str]] = {}  # a solver's own module (its entry's) → the names it may write
    for spec in solvers.TABLE.values():
        assert isinstance(spec.module, str), spec.name  # the shipped table names its entries by import path
        own.setdefault(ROOT / (spec.module.replace(".", "/") + ".py"), set()).update(
            {spec.name, *spec.result_names}
        )
    found, used = [], set()
    for path in sorted(package.rglob("*.py")):
        if path == table:
            continue  # the table names every solver, one row each
        relative = path.relative_to(ROOT).as_posix()
        elsewhere = _SOLVER_WORD_MEANS_ELSE.get(relative, {})
        submodules = {p.stem for p in path.parent.glob("*.py")} if path.name == "__init__.py" else set()
        for line, name in _solver_name_literals(
            path.read_text(encoding="utf-8"), names, allowed=own.get(path, set()), submodules=submodules
        ):
            if name in elsewhere:
                used.add((relative, name))
            else:
                found.append(f"{relative}:{line}: {name!r}")
    assert not found, (
        "solver names as string literals outside settings/solvers.py and the solver's own module "
        "(ask the table: solvers.get(name).warm_starts, ..., or use solvers.DEFAULT_SOLVER): "
        + ", ".join(found)
    )
    stale = sorted(
        f"{path}: {name!r}"
        for path, words in _SOLVER_WORD_MEANS_ELSE.items()
        for name in words
        if (path, name) not in used
    )
    assert not stale, (
        "exemptions no module needs any more (moved or rewritten? update the list): " + ", ".join(stale)
    )


def test_the_solver_literal_check_sees_a_name() -> None:
    source = (
        '"""About lanczos."""\n'
        'def f(solver="lanczos"):\n'
        '    return solver == "power" or f"{solver}_x" or "lanczos_steps"\n'
    )
    assert _solver_name_literals(source, {"lanczos", "power"}) == [(2, "lanczos"), (3, "power")]
    assert _solver_name_literals(source, {"lanczos", "power"}, allowed={"power"}) == [(2, "lanczos")]
    assert (
        _solver_name_literals('_LAZY = {"power_iteration": "power"}\n', {"power"}, submodules={"power"}) == []
    )


PACKAGE = ROOT / "hessian_lora"


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, classes and functions (prose may name a method)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def method_name_literals(
    source: str, names: Collection[str], *, allowed: Collection[str] = (), submodules: Collection[str] = ()
) -> list[tuple[int, str]]:
    """(line, name) of every string constant in ``source`` that equals a method name in ``names``, except
    docstrings, ``allowed`` names (a method's own module may name itself) and ``submodules`` (a package's
    ``__init__`` naming its own submodules for a lazy loader: a module name that happens to equal a method's)."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in names
        and node.value not in allowed
        and node.value not in submodules
        and id(node) not in docstrings
    )


def test_no_method_name_literal_outside_its_module() -> None:
    from hessian_lora.methods.registry import METHODS

    names = set(METHODS)
    methods_dir = PACKAGE / "methods"
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == methods_dir / "registry.py":
            continue  # the registry lists every method, one line each
        allowed = {path.stem} if path.parent == methods_dir else set()
        submodules = (
            {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
            if path.name == "__init__.py"
            else set()
        )
        found += [
            f"{path.relative_to(ROOT)}:{line}: {name!r}"
            for line, name in method_name_literals(
                path.read_text(encoding="utf-8"), names, allowed=allowed, submodules=submodules
            )
        ]
    assert not found, (
        "method names as string literals outside their module and the registry (ask the spec, or "
        "use registry.DEFAULT_METHOD): " + ", ".join(found)
    )


def test_the_method_literal_check_sees_a_name_and_skips_docstrings() -> None:
    source = (
        '"""Module about pissa."""\n'
        'def f(method="lora"):\n'
        '    """pissa in prose."""\n'
        '    return method == "pissa" or f"{method}_x" or "lora_ga"\n'
    )
    assert method_name_literals(source, {"lora", "pissa"}) == [(2, "lora"), (4, "pissa")]
    assert method_name_literals(source, {"lora", "pissa"}, allowed={"pissa"}) == [(2, "lora")]
    assert method_name_literals('_LAZY = {"norm": "dora"}\n', {"dora"}, submodules={"dora"}) == []
