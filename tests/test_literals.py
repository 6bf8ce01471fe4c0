"""Names that belong to one place: a solver's name is a string literal only in the solver table and its own module."""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules where a word that is a solver's name means something else, with what it means there: "power" is also the
# power-law fit of the LR relation and a power calculation's probability. (A module moved: update its path here.)
_SOLVER_WORD_MEANS_ELSE: dict[str, dict[str, str]] = {
    "hessian_lora/analysis/relation.py": {"power": "the power-law fit kind (FitKind)"},
    "hessian_lora/recommend.py": {"power": "the calibration's power-law fit kind"},
    "hessian_lora/schemas.py": {"power": "the calibration file's fit kind"},
    "hessian_lora/sweep/adaptive.py": {"power": "the calibration's power-law fit kind"},
    "hessian_lora/commands/sweep.py": {"power": "the refit's power-law fit kind"},
    "hessian_lora/analysis/power.py": {"power": "a power calculation's probability (its option)"},
    "hessian_lora/analysis/summary.py": {"power": "the summary's power-estimate key"},
    "hessian_lora/analysis/claims.py": {"power": "the summary's power-estimate key"},
}


def _solver_name_literals(source: str, names: Collection[str], *, allowed: Collection[str] = (),
                          submodules: Collection[str] = ()) -> list[tuple[int, str]]:
    """(line, name) of every string constant in ``source`` equal to a solver name in ``names``, except ``allowed``
    names (a solver's own module names itself) and ``submodules`` (a package ``__init__``'s lazy loader naming its
    submodules, ``lanczos.py`` say, by a module name that is a solver's too)."""
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                  and node.value not in allowed and node.value not in submodules)


def test_no_solver_name_literal_outside_registry() -> None:
    from hessian_lora.hessian import solvers

    package = ROOT / "hessian_lora"
    names = solvers.all_names()
    table = package / "hessian" / "solvers.py"
    own: dict[Path, set[str]] = {}  # a solver's own module (its entry's) → the names it may write
    for spec in solvers.TABLE.values():
        assert isinstance(spec.module, str), spec.name  # the shipped table names its entries by import path
        own.setdefault(ROOT / (spec.module.replace(".", "/") + ".py"), set()).update({spec.name, *spec.result_names})
    found, used = [], set()
    for path in sorted(package.rglob("*.py")):
        if path == table:
            continue  # the table names every solver, one row each
        relative = path.relative_to(ROOT).as_posix()
        elsewhere = _SOLVER_WORD_MEANS_ELSE.get(relative, {})
        submodules = {p.stem for p in path.parent.glob("*.py")} if path.name == "__init__.py" else set()
        for line, name in _solver_name_literals(path.read_text(encoding="utf-8"), names,
                                                allowed=own.get(path, set()), submodules=submodules):
            if name in elsewhere:
                used.add((relative, name))
            else:
                found.append(f"{relative}:{line}: {name!r}")
    assert not found, ("solver names as string literals outside hessian/solvers.py and the solver's own module "
                       "(ask the table: solvers.get(name).warm_starts, ..., or use solvers.DEFAULT_SOLVER): "
                       + ", ".join(found))
    stale = sorted(f"{path}: {name!r}" for path, words in _SOLVER_WORD_MEANS_ELSE.items() for name in words
                   if (path, name) not in used)
    assert not stale, "exemptions no module needs any more (moved or rewritten? update the list): " + ", ".join(stale)


def test_the_solver_literal_check_sees_a_name() -> None:
    source = ('"""About lanczos."""\n'
              'def f(solver="lanczos"):\n'
              '    return solver == "power" or f"{solver}_x" or "lanczos_steps"\n')
    assert _solver_name_literals(source, {"lanczos", "power"}) == [(2, "lanczos"), (3, "power")]
    assert _solver_name_literals(source, {"lanczos", "power"}, allowed={"power"}) == [(2, "lanczos")]
    assert _solver_name_literals('_LAZY = {"power_iteration": "power"}\n', {"power"}, submodules={"power"}) == []
