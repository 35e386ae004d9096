"""Time a learner's Run All: every cell of each notebook, cold (a fresh clone, empty model
cache) or warm (this checkout, its cache as it is).

Why this file exists: a core notebook promises its Run-All time at the top, and the slow cells
are what to make faster. Timing belongs in a script run on purpose, never in a test. Each
notebook runs in a fresh kernel from its own folder, as Jupyter runs it; nothing is written
back to the notebook. ``--cold`` clones this repository's committed ``HEAD`` into a temporary
folder for each notebook and runs it there with that clone's package first on ``PYTHONPATH``,
so its data and model cache start as a fresh clone's (the ``data/`` of a checkout holds both).

Usage: ``python tools/time_cells.py [--cold] [--top N] [--json FILE] NOTEBOOK ...``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def cell_seconds(cell: nbformat.NotebookNode) -> float:
    """Seconds a code cell ran, from the timestamps the client records in its metadata."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    seconds = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(
        start.replace("Z", "+00:00")
    )
    return seconds.total_seconds()


def run(path: Path, *, env: dict[str, str] | None = None) -> dict:
    """Execute ``path`` top to bottom in a fresh kernel; its total and per-cell seconds."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=2400,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
    )
    old = dict(os.environ)
    os.environ.update(env or {})  # the kernel inherits this process's environment
    try:
        start = time.perf_counter()
        client.execute()
        total = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(old)
    cells = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            cells.append({"cell": index, "s": round(cell_seconds(cell), 2), "first_line": first})
    return {"notebook": path.name, "total_s": round(total, 1), "cells": cells}


def run_cold(path: Path) -> dict:
    """``path`` (in this checkout) run in a fresh clone of ``HEAD``: empty data folder and
    model cache, the clone's package imported first."""
    relative = path.resolve().relative_to(ROOT)
    with tempfile.TemporaryDirectory(prefix="mnist-cold-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {"PYTHONPATH": str(clone), "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        return run(clone / relative, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--cold", action="store_true", help="a fresh clone per notebook")
    parser.add_argument("--top", type=int, default=5, help="the slowest cells to list")
    parser.add_argument("--json", type=Path, help="write every cell's time here")
    args = parser.parse_args(argv)
    results = []
    for path in args.notebooks:
        result = run_cold(path) if args.cold else run(path.resolve())
        result["kind"] = "cold" if args.cold else "warm"
        results.append(result)
        slow = sorted(result["cells"], key=lambda c: -c["s"])[: args.top]
        print(f"{result['notebook']} ({result['kind']}): {result['total_s']:.1f} s", flush=True)
        for cell in slow:
            print(f"  {cell['s']:7.2f} s  cell {cell['cell']:3d}  {cell['first_line'][:70]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
