"""Measure each part as a lecturer would: words of prose, cells, figures, and where it is read.

Why this file exists: a core notebook promises an hour (../shared/NOTEBOOKS.md). Reading time is
set by what a student reads, so this counts it the same way every time, two ways:

- ``markdown words``, the strict count: every alphabetic token of every Markdown cell, code
  blocks, HTML and link targets included (what a reviewer counts with
  ``re.findall("[A-Za-z]+", ...)``). The tests hold every core to :data:`CORE_WORDS` by this
  count (:func:`markdown_words`). The worked solutions are not in a core at all: they live in
  ``solutions/``.
- ``words``, the prose alone: code blocks, HTML tags and link targets left out
  (:func:`prose_words`).

``python tools/course_report.py`` prints the table for a closing note or a lecturer.

Usage: ``python tools/course_report.py [--markdown]`` (every core and its companion).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The most prose a core may hold: about 15 minutes of careful reading at 200 words a minute,
#: which leaves the rest of the hour for running cells, looking at figures and the exercises.
CORE_WORDS = 3000


def source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def words(markdown: str) -> int:
    """The words of prose in one Markdown cell (see the module's docstring)."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return len(text.split())


def prose_words(notebook: dict) -> int:
    """The words of prose in ``notebook`` (a loaded ``.ipynb``)."""
    return sum(words(source(c)) for c in notebook["cells"] if c["cell_type"] == "markdown")


def markdown_words(notebook: dict) -> int:
    """Every alphabetic token of every Markdown cell of ``notebook``: the strict count."""
    markdown = "\n".join(source(c) for c in notebook["cells"] if c["cell_type"] == "markdown")
    return len(re.findall(r"[A-Za-z]+", markdown))


def figures(notebook: dict) -> tuple[int, int]:
    """(drawn, plotted): the diagrams shown with their alt text (an ``<img alt=...>``) and the
    plain matplotlib figures (a PNG output)."""
    drawn = plotted = 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            bundle = output.get("data", {})
            if "<img" in "".join(bundle.get("text/html", "")):
                drawn += 1
            elif "image/png" in bundle:
                plotted += 1
    return drawn, plotted


def row(path: Path) -> dict:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    drawn, plotted = figures(notebook)
    sections = [
        m.group(1)
        for c in notebook["cells"]
        if c["cell_type"] == "markdown"
        for m in re.finditer(r"^## (\d\.[\dA-Z]+) ", source(c), re.M)
    ]
    return {
        "notebook": str(path.relative_to(ROOT / "notebooks")),
        "markdown words": markdown_words(notebook),
        "words": prose_words(notebook),
        "sections": len(sections),
        "cells": len(notebook["cells"]),
        "code cells": sum(c["cell_type"] == "code" for c in notebook["cells"]),
        "drawn": drawn,
        "plotted": plotted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args(argv)
    paths = sorted((ROOT / "notebooks").glob("[0-9]_*.ipynb"))
    paths += sorted((ROOT / "notebooks" / "further").glob("[0-9]_*.ipynb"))
    rows = [row(p) for p in paths]
    keys = list(rows[0])
    if args.markdown:
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    else:
        for r in rows:
            print("  ".join(f"{k}={r[k]}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
