"""The public API at the package's top: every name resolves to its one home, lazily (no torch at import)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import hessian_lora

INIT = Path(hessian_lora.__file__)


def test_every_public_name_is_its_home_modules_object() -> None:
    for name, home in hessian_lora._PUBLIC.items():
        assert getattr(hessian_lora, name) is getattr(importlib.import_module(home), name), name


def test_the_issue_s_own_check_runs() -> None:
    # `python -c "import hessian_lora as h; h.SharpnessCallback; h.analyze"`, in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-c", "import hessian_lora as h; h.SharpnessCallback; h.analyze"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_importing_the_package_loads_no_torch() -> None:
    code = (
        "import sys, hessian_lora; assert 'torch' not in sys.modules, 'torch imported'; "
        "print(len(dir(hessian_lora)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= len(hessian_lora._PUBLIC)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'eigenn'"):
        _ = hessian_lora.eigenn  # type: ignore[attr-defined]


def test_the_type_checking_imports_list_exactly_the_public_names() -> None:
    # What editors and mypy see must be what __getattr__ serves: the same names from the same modules.
    tree = ast.parse(INIT.read_text())
    guarded = next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    seen = {
        alias.asname or alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == hessian_lora._PUBLIC
    assert set(hessian_lora.__all__) == {"__version__", *hessian_lora._PUBLIC}


def test_no_public_name_is_shadowed_by_a_submodule() -> None:
    # importing hessian_lora.<name> rebinds the package attribute <name> to the module
    submodules = {
        path.stem for path in INIT.parent.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()
    }
    assert not set(hessian_lora._PUBLIC) & submodules


def test_every_public_function_has_a_reference_docstring() -> None:
    # The API reference is generated from these docstrings (docs/_site_build/generate.py): each public function
    # says what it takes, what it gives back and what it refuses, in Google style (Args/Returns/Raises).
    import inspect

    missing = []
    for name in hessian_lora._PUBLIC:
        value = getattr(hessian_lora, name)
        if not inspect.isfunction(value):
            continue
        doc = inspect.getdoc(value) or ""
        sections = ["Returns:", "Raises:"] + (["Args:"] if inspect.signature(value).parameters else [])
        missing += [f"{name}: {section}" for section in sections if section not in doc]
    assert missing == []


def _class_sections_missing(cls: type) -> str | None:
    """Why ``cls``'s docstring lacks its reference section, or None when it has it."""
    doc = inspect.getdoc(cls) or ""
    if not doc.strip():
        return "no docstring"
    # Dataclasses document their fields (Attributes:); other classes their constructor (Args:). A class that
    # documents both (an exception with a class attribute) passes either way.
    wanted = ("Attributes:",) if dataclasses.is_dataclass(cls) else ("Args:", "Attributes:")
    heads = {line.strip() for line in doc.splitlines() if line.strip().endswith(":")}
    return None if heads & set(wanted) else f"no {' or '.join(wanted)} section"


def test_every_public_class_documents_its_fields_or_constructor() -> None:
    missing = {}
    for name in hessian_lora._PUBLIC:
        value = getattr(hessian_lora, name)
        if inspect.isclass(value):
            why = _class_sections_missing(value)
            if why is not None:
                missing[name] = why
    assert not missing, missing


def test_the_class_section_check_can_fail() -> None:
    @dataclasses.dataclass
    class Bare:
        """A dataclass whose fields go undocumented."""

        x: int

    class Plain:
        """A class with an Attributes-like word but no section: Args are not listed."""

    assert _class_sections_missing(Bare) == "no Attributes: section"
    assert _class_sections_missing(Plain) == "no Args: or Attributes: section"
