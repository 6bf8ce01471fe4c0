"""The engine's docstring examples run as doctests: each listed module has examples, and all of them pass."""

from __future__ import annotations

import ast
import doctest
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The public engine functions and classes users call; each module must keep at least one example.
ENGINE_MODULES = (
    "hessian_lora.hessian.operator",
    "hessian_lora.hessian.lanczos",
    "hessian_lora.hessian.power",
    "hessian_lora.hessian.trace",
    "hessian_lora.hessian.density",
    "hessian_lora.hessian.preconditioned",
)

GENERATE = Path(__file__).resolve().parents[2] / "docs" / "_site_build" / "generate.py"


def _engine_reference() -> dict[str, tuple[str, ...]]:
    """The docs site's engine entries (``ENGINE_REFERENCE`` in docs/_site_build/generate.py), read from its source."""
    tree = ast.parse(GENERATE.read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == "ENGINE_REFERENCE":
            assert isinstance(node, ast.AnnAssign) and node.value is not None
            return dict(ast.literal_eval(node.value))
    raise AssertionError(f"{GENERATE} defines no ENGINE_REFERENCE")


# The public names the docs site shows in its engine section: each must carry an example (module → names).
WITH_EXAMPLES = _engine_reference()

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The examples print rounded values; one thread keeps the reductions' order (and the run's time) fixed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ENGINE_MODULES)
def test_the_engine_module_s_examples_pass(name: str) -> None:
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert attempted > 0, f"{name} has no doctest examples"
    assert failed == 0, f"{failed} of {attempted} doctest examples failed in {name} (see the output above)"


def test_the_site_s_engine_entries_are_the_modules_run_here() -> None:
    assert set(WITH_EXAMPLES) == set(ENGINE_MODULES)
    assert all(WITH_EXAMPLES.values())


@pytest.mark.parametrize(("name", "public"), sorted(WITH_EXAMPLES.items()))
def test_each_listed_public_name_has_an_example(name: str, public: tuple[str, ...]) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    for attribute in public:
        tests = finder.find(getattr(module, attribute), f"{name}.{attribute}", module=module)
        assert any(test.examples for test in tests), f"{name}.{attribute} has no `>>>` example"


def test_a_wrong_example_is_counted_as_failed() -> None:
    # The check can fail: an example whose printed value is wrong is a failure, not a silent pass.
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        ">>> import torch\n>>> round(float(torch.tensor(2.0, dtype=torch.float64).sqrt()), 6)\n1.0\n",
        {},
        "wrong",
        None,
        0,
    )
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    runner.run(test, out=lambda _text: None)
    assert runner.failures == 1 and runner.tries == 2
