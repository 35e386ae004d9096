"""Write notebooks in the form JupyterLab saves them, so that Ctrl+S on an unchanged notebook
changes nothing on disk.

Why this file exists: a notebook executed by ``nbconvert`` (``make execute``) stores the
widgets' state as Python writes it: ``"max": 215.0``. JupyterLab holds the notebook as
JavaScript objects, where 215.0 and 215 are one number, and saves ``215``: opening a freshly
executed notebook and pressing Ctrl+S rewrote 33 numbers of Part 4 and 698 of Part 5. This
script rewrites each notebook once in Lab's form (integral floats as integers, nbformat's JSON
layout, one trailing newline); ``make execute`` runs it after executing, and a test checks that
every committed notebook is already in that form.

Usage: ``python tools/notebook_form.py notebooks/*.ipynb`` (rewrites in place, prints what
changed); ``--check`` only reports and exits 1 if a notebook is not in Lab's form.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def as_javascript_number(value: Any) -> Any:
    """``value`` with every float that JavaScript would print as an integer made an int."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: as_javascript_number(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_javascript_number(item) for item in value]
    return value


def lab_form(text: str) -> str:
    """The notebook ``text`` as JupyterLab would save it: the server writes what the browser
    sent with nbformat's layout (indent 1, sorted keys, no ASCII escapes) and a final newline."""
    import nbformat

    notebook = nbformat.from_dict(as_javascript_number(json.loads(text)))
    written = nbformat.writes(notebook, version=nbformat.NO_CONVERT)
    return written if written.endswith("\n") else written + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed = []
    for name in (arg for arg in argv if arg != "--check"):
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        wanted = lab_form(text)
        if wanted != text:
            changed.append(name)
            if not check:
                path.write_text(wanted, encoding="utf-8")
    verb = "not in JupyterLab's form" if check else "rewritten in JupyterLab's form"
    for name in changed:
        print(f"{name}: {verb}")
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
