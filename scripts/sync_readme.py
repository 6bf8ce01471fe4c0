"""Copy sections of a shipped analysis.md into the results page, between markers, so its numbers are the data's.

    python scripts/sync_readme.py           # rewrite every marked block of docs/results.md from its source
    python scripts/sync_readme.py --check   # exit 1, naming the block, if any block differs from its source
    python scripts/sync_readme.py --readme README.md   # another page with marked blocks

A marked block in docs/results.md (the measured record the README links to) reads

    <!-- from ../results/smollm2/analysis.md: ### The paper's claims -->
    ...copied text...
    <!-- end -->

and holds the body of that heading in that file: the lines after the heading up to the next heading of the same
or a higher level, blank lines at either end dropped. The heading ``(top)`` names the text before the first
heading (analysis.md's main table, its data line and the relation). The source path is relative to the page's
directory. tests/analysis/test_replication.py runs the check, so a re-analysed run directory whose numbers moved fails
the tests until the README is synced.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = "(top)"
BLOCK = re.compile(
    r"^<!-- from (?P<path>\S+): (?P<heading>.+?) -->\n(?P<body>.*?)^<!-- end -->$", re.MULTILINE | re.DOTALL
)


def section(markdown: str, heading: str) -> str:
    """The body of ``heading`` (a whole heading line such as ``### Cost``, or ``(top)``) in ``markdown``."""
    lines = markdown.splitlines()
    if heading == TOP:
        start, level = 0, 0
    else:
        matches = [i for i, line in enumerate(lines) if line.strip() == heading.strip()]
        if len(matches) != 1:
            raise KeyError(f"heading {heading!r} occurs {len(matches)} times, not once")
        start, level = matches[0] + 1, len(heading) - len(heading.lstrip("#"))
    end = len(lines)
    for i in range(start, len(lines)):
        hashes = len(lines[i]) - len(lines[i].lstrip("#"))
        if hashes and lines[i][hashes : hashes + 1] == " " and (level == 0 or hashes <= level):
            end = i
            break
    return "\n".join(lines[start:end]).strip("\n")


def sync(readme: Path, *, check: bool) -> list[str]:
    """Rewrite (or with ``check`` only compare) every marked block of ``readme``; returns the stale blocks."""
    text = readme.read_text()
    stale: list[str] = []

    def replace(match: re.Match[str]) -> str:
        source = readme.parent / match["path"]
        try:
            body = section(source.read_text(), match["heading"])
        except (OSError, KeyError) as exc:
            raise SystemExit(
                f"error: {readme}: the block from {match['path']}: {match['heading']}: {exc}"
            ) from exc
        if match["body"].strip("\n") != body:
            stale.append(f"{match['path']}: {match['heading']}")
        return f"<!-- from {match['path']}: {match['heading']} -->\n{body}\n<!-- end -->"

    updated = BLOCK.sub(replace, text)
    if not check and updated != text:
        tmp = readme.with_name(readme.name + ".tmp")
        tmp.write_text(updated)
        tmp.replace(readme)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "docs" / "results.md",
        help="the page whose marked blocks to sync (default: docs/results.md)",
    )
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    stale = sync(args.readme, check=args.check)
    for name in stale:
        print(f"{args.readme}: stale block from {name}" + ("" if args.check else " (rewritten)"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
