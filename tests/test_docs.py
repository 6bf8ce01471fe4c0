"""The README is a front page, and no link between the project's pages is dead."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# written at build time by docs/_site_build/generate.py; the strict build below checks links to them
GENERATED = {
    ROOT / "docs" / "reference" / "api.md",
    ROOT / "docs" / "reference" / "cli.md",
    ROOT / "docs" / "changelog.md",
}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(
        r"```.*?```", "", page.read_text(), flags=re.DOTALL
    )  # a '#' inside a code block is no heading
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def dead_links(page: Path) -> list[str]:
    dead = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto: — outside the repository
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if linked in GENERATED:
            continue
        if not linked.exists():
            dead.append(f"{page.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            dead.append(f"{page.name}: {target} (no such heading)")
    return dead


def test_slug_follows_github() -> None:
    assert (
        slug("The paper's other models: Gemma-3-1B and Llama-2-7B")
        == "the-papers-other-models-gemma-3-1b-and-llama-2-7b"
    )
    assert slug("The replication: three seeds, 256 problems") == "the-replication-three-seeds-256-problems"


def test_no_link_between_the_pages_is_dead() -> None:
    assert [page for page in PAGES if page.is_file()] == PAGES
    assert [link for page in PAGES for link in dead_links(page)] == []


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n[ok](#top) [gone](b.md) [no heading](a.md#nowhere)\n")
    assert dead_links(tmp_path / "a.md") == [
        "a.md: b.md (no such file)",
        "a.md: a.md#nowhere (no such heading)",
    ]


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_command = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert first_command < 60  # the first usage example is on the first screen
    text = "\n".join(lines)
    assert "Learning Rate Matters: Vanilla LoRA May Suffice for LLM Fine-tuning" in text
    assert "(https://arxiv.org/abs/2602.04998)" in text
    # the README's two set-up commands are exactly what CI runs (the test command) and the main job
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest" in text
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest" in (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && .venv/bin/hessian-lora demo" in text


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    # mkdocs.yml sets strict: a dead link, a missing anchor or a docstring mkdocstrings cannot parse fails here
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DISABLE_MKDOCS_2_WARNING": "true",
        "NO_MKDOCS_2_WARNING": "1",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    import hessian_lora

    for name, module in hessian_lora._PUBLIC.items():  # every public name has its reference entry
        assert f'id="{module}.{name}"' in api, name
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "hessian-lora eigen" in cli and "--krylov-memory" in cli


def test_the_guides_python_is_the_examples_the_tests_run() -> None:
    # A how-to page's Python is an include of an examples/ script (pymdownx.snippets), so tests/test_examples.py
    # runs exactly the code a reader copies; a hand-written Python block there would run nowhere.
    from test_examples import RUNS

    blocks = [
        (page.name, block.strip())
        for page in sorted((ROOT / "docs" / "guides").glob("*.md"))
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    ]
    assert blocks
    for page, block in blocks:
        include = re.fullmatch(r'--8<-- "examples/([\w.]+)"', block)
        assert include and include[1] in RUNS, f"{page}: a Python block that is not an example the tests run"
