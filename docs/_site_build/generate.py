"""Pages generated at build time (mkdocs-gen-files), so the reference cannot drift from the code.

- ``reference/api.md``: one mkdocstrings entry per name the package exports (``hessian_lora._PUBLIC``), then the
  engine's operators and solvers (``ENGINE_REFERENCE``);
- ``reference/cli.md``: every command's ``--help``, from the CLI's own parser;
- ``changelog.md`` and the figures the pages show from outside ``docs/`` (``../figures``, ``../results``), copied
  in under ``_repo/`` (``hooks.py`` points the pages' ``../`` links there).
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]


def public_names() -> dict[str, str]:
    """``hessian_lora._PUBLIC`` read from the source (no import: the package's modules load torch)."""
    tree = ast.parse((ROOT / "hessian_lora" / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "_PUBLIC"
        ):
            return dict(ast.literal_eval(node.value))
    raise SystemExit("hessian_lora/__init__.py defines no _PUBLIC table")


# The engine's operators and solvers a user calls directly (``hessian_lora.hessian``, not at the package's top):
# each entry's docstring carries an example that tests/hessian/test_doctests.py runs (it reads this table).
ENGINE_REFERENCE: dict[str, tuple[str, ...]] = {
    "hessian_lora.hessian.operator": ("DenseOperator", "DiagonalOperator"),
    "hessian_lora.hessian.lanczos": ("lanczos",),
    "hessian_lora.hessian.power": ("power_iteration",),
    "hessian_lora.hessian.trace": ("hutchinson", "hutchplusplus"),
    "hessian_lora.hessian.density": ("spectral_density",),
    "hessian_lora.hessian.preconditioned": ("preconditioned_sharpness",),
}


def api_page() -> str:
    """The Python API page: a mkdocstrings entry per public name, grouped by the module that owns it."""
    lines = [
        "# Python API",
        "",
        "Everything below is importable from the package's top: `import hessian_lora as h; h.eigen(...)`.",
        "Each entry is generated from the docstring of the name's one home (the module in its heading).",
        "",
    ]
    by_module: dict[str, list[str]] = {}
    for name, module in public_names().items():
        by_module.setdefault(module, []).append(name)
    for module, names in by_module.items():
        lines += [f"## `{module}`", ""]
        lines += [f"::: {module}.{name}\n" for name in names]
    lines += [
        "## The engine (`hessian_lora.hessian`)",
        "",
        "The operators and solvers under `measure`, for your own operators; each example runs as a doctest.",
        "",
    ]
    for module, names in ENGINE_REFERENCE.items():
        lines += [f"::: {module}.{name}\n" for name in names]
    return "\n".join(lines)


def cli_page() -> str:
    """The command-line page: the top parser's and every sub-command's ``--help``."""
    os.environ.setdefault("COLUMNS", "110")  # argparse wraps help text at the terminal's width
    from hessian_lora.cli.main import build_parser  # local: the build imports the CLI only to print its help

    parser = build_parser()
    lines = [
        "# Command line",
        "",
        "Every command's `--help`, generated from the parser at build time.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        lines += [f"## `hessian-lora {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


with mkdocs_gen_files.open("reference/api.md", "w") as page:
    page.write(api_page())
with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_page())
with mkdocs_gen_files.open("changelog.md", "w") as page:
    page.write((ROOT / "CHANGELOG.md").read_text())
with mkdocs_gen_files.open("contributing.md", "w") as page:
    # The repository's CONTRIBUTING.md links the pages as docs/X.md; on the site they sit beside it.
    page.write((ROOT / "CONTRIBUTING.md").read_text().replace("](docs/", "]("))
for folder in ("figures", "results/smollm2/figures"):
    for image in sorted((ROOT / folder).glob("*.png")):
        with mkdocs_gen_files.open(f"_repo/{folder}/{image.name}", "wb") as copy:
            copy.write(image.read_bytes())
