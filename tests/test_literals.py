"""Names that belong to one place: a method's name is a string literal only in its own module and the registry."""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def method_name_literals(source: str, names: Collection[str], *, allowed: Collection[str] = (),
                         submodules: Collection[str] = ()) -> list[tuple[int, str]]:
    """(line, name) of every string constant in ``source`` that equals a method name in ``names``, except
    docstrings, ``allowed`` names (a method's own module may name itself) and ``submodules`` (a package's
    ``__init__`` naming its own submodules for a lazy loader: a module name that happens to equal a method's)."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                  and node.value not in allowed and node.value not in submodules and id(node) not in docstrings)


def test_no_method_name_literal_outside_its_module() -> None:
    from hessian_lora.methods.registry import METHODS

    names = set(METHODS)
    methods_dir = PACKAGE / "methods"
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == methods_dir / "registry.py":
            continue  # the registry lists every method, one line each
        allowed = {path.stem} if path.parent == methods_dir else set()
        submodules = ({p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
                      if path.name == "__init__.py" else set())
        found += [f"{path.relative_to(ROOT)}:{line}: {name!r}"
                  for line, name in method_name_literals(path.read_text(encoding="utf-8"), names, allowed=allowed,
                                                         submodules=submodules)]
    assert not found, ("method names as string literals outside their module and the registry (ask the spec, or "
                       "use registry.DEFAULT_METHOD): " + ", ".join(found))


def test_the_method_literal_check_sees_a_name_and_skips_docstrings() -> None:
    source = ('"""Module about pissa."""\n'
              'def f(method="lora"):\n'
              '    """pissa in prose."""\n'
              '    return method == "pissa" or f"{method}_x" or "lora_ga"\n')
    assert method_name_literals(source, {"lora", "pissa"}) == [(2, "lora"), (4, "pissa")]
    assert method_name_literals(source, {"lora", "pissa"}, allowed={"pissa"}) == [(2, "lora")]
    assert method_name_literals('_LAZY = {"norm": "dora"}\n', {"dora"}, submodules={"dora"}) == []
