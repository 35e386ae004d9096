"""``show_source``: the notebooks (every part) show the package's code instead of copying it.

Why this module exists: a notebook that pastes a function drifts from the function; one that
shows it with this helper always shows the code that runs. In Jupyter the source appears
syntax-highlighted (as Markdown's fenced code, which JupyterLab, Notebook 7, VS Code and Colab
render); the plain-text copy of the same output is what nbval compares and terminals print.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any


class Source:
    """Source code that Jupyter shows highlighted and a terminal shows as plain text."""

    def __init__(self, code: str, *, where: str = "") -> None:
        self.code, self.where = code, where

    def _repr_markdown_(self) -> str:
        heading = f"`{self.where}`\n\n" if self.where else ""
        return f"{heading}```python\n{self.code}\n```"

    def __repr__(self) -> str:
        return (f"# {self.where}\n" if self.where else "") + self.code


def show_source(obj: Any) -> Source:
    """The source of a function, class or method, labelled with the module it lives in (so the
    notebook links back to the package). Make it a cell's last line to display it."""
    code = textwrap.dedent(inspect.getsource(obj)).rstrip()
    module = inspect.getmodule(obj)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", ""))
    return Source(code, where=f"{module.__name__}.{name}" if module else name)
