"""MkDocs hook: a page's links to the repository outside ``docs/`` (``../figures/x.png``) point at the copies
``generate.py`` adds under ``_repo/``, so the same Markdown renders on GitHub and on the site."""

from __future__ import annotations

import re
from typing import Any

_OUTSIDE = re.compile(r"\]\(\.\./(figures|results)/")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Rewrite ``](../figures/`` and ``](../results/`` links of a top-level page to the ``_repo/`` copies, and
    ``](../CONTRIBUTING.md)`` to the site's copy of it."""
    if "/" in page.file.src_uri:  # only pages at docs/'s top link with ../
        return markdown
    return _OUTSIDE.sub(r"](_repo/\1/", markdown).replace("](../CONTRIBUTING.md)", "](contributing.md)")
