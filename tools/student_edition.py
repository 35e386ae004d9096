"""Write the student edition: the series' notebooks without their solutions (`make student`).

Why this file exists: the series' notebooks are what a learner runs, and Run All never shows a
solution: the worked solutions live in a notebook of their own per part,
``solutions/<part>_solutions.ipynb`` at the repository's top (each task repeated, then its
solution folded in a ``<details>`` block), which the core links to once. A teacher handing
out the notebooks wants that link gone too; this script writes that edition from the same
notebooks, so the two cannot drift. nbconvert's ``TagRemovePreprocessor`` does the work, by
cell tags:

- ``solution``: in a core, the one Markdown cell that links to the part's solutions: removed.
  (In a solutions notebook, each cell with a ``<details><summary>Solution</summary>`` around a
  ```` ```python ```` block, the code that replaces the stub, then the explanation.)
- ``exercise`` (the code cell with the stub, a bare ``raise NotImplementedError``) and
  ``check`` (the one call that checks it, ``check_<name>(<name>)``, imported from
  ``mnist_dissected.exercises_part<N>``): kept, their outputs cleared.
- everything else: kept as committed, outputs included (executed as in the series).

The title's Colab badge is pointed at the edition's own copy on GitHub
(``<repository>/blob/<ref>/student/notebooks/<name>.ipynb``), links into the repository
(``../mnist_dissected/...``) gain one ``../``, since the edition sits one folder deeper, and
links to a part's companion (``further/...``: deep dives, no exercises) lead to the series'
own copy in ``notebooks/further/``. Each
notebook is written as JupyterLab saves it (``notebook_form.lab_form``), so opening one in Lab
and saving it changes nothing.

Usage: ``python tools/student_edition.py [--out DIR] [--ref BRANCH] [NOTEBOOK ...]`` (by default
every ``notebooks/[0-9]_*.ipynb`` into ``student/notebooks``, badges on ``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert.preprocessors import TagRemovePreprocessor
from notebook_form import lab_form  # this folder: the script's, or put on sys.path by the tests

ROOT = Path(__file__).resolve().parent.parent
EXERCISE, CHECK, SOLUTION = "exercise", "check", "solution"
#: Where the edition lives in the repository, and so where its Colab badges point.
EDITION = "student/notebooks"
#: Where each part's worked solutions live (``<part>_solutions.ipynb``).
SOLUTIONS = ROOT / "solutions"
#: The line under each notebook's title that says what this edition is.
NOTE = (
    "*Student edition: the same notebook as the series' "
    "[`notebooks/{name}`](../../notebooks/{name}), without the link to its worked solutions. "
    "Each exercise has a cell for your code and a cell that checks it.*"
)


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: the stub you fill in, its check, and its solution (the first
    Python block of its task's ``solution`` cell in the part's solutions notebook), if that
    notebook was given."""

    name: str
    stub: str
    check: str
    solution: str | None


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def solution_blocks(markdown: str) -> list[str]:
    """The ```` ```python ```` blocks inside the ``<details>`` sections of ``markdown``."""
    return [
        block
        for details in re.findall(r"<details>(.*?)</details>", markdown, re.S)
        for block in re.findall(r"```python\n(.*?)```", details, re.S)
    ]


def solutions_path(core: Path) -> Path:
    """Where the worked solutions of the core notebook ``core`` live."""
    return SOLUTIONS / f"{core.stem}_solutions.ipynb"


def task_number(cells: list[dict], index: int) -> int:
    """The number of the task whose cells include ``cells[index]``: the bold ``**N. `` at the
    start of the nearest Markdown cell before it that is no solution."""
    task = next(
        source(c)
        for c in reversed(cells[:index])
        if c["cell_type"] == "markdown" and SOLUTION not in tags(c)
    )
    found = re.match(r"\*\*(\d)\. ", task)
    if found is None:
        raise ValueError(f"cell {index}: no task (**N. ...) before it: {task[:60]!r}")
    return int(found[1])


def exercises(notebook: dict, solutions: dict | None = None) -> list[Exercise]:
    """The exercises of a notebook, in order: each ``exercise`` cell, the ``check`` cell after
    it, and (given the part's ``solutions`` notebook) the first solution block of its task."""
    cells, found = notebook["cells"], []
    answers = numbered_solutions(solutions) if solutions is not None else {}
    for i, cell in enumerate(cells):
        if EXERCISE not in tags(cell):
            continue
        name = re.search(r"^(?:def|class) (\w+)", source(cell), re.M)
        check = next((c for c in cells[i + 1 :] if CHECK in tags(c)), None)
        if name is None or check is None:
            raise ValueError(f"exercise cell {i}: no def/class, or no check cell after it")
        blocks = answers.get(task_number(cells, i)) or [None]
        found.append(Exercise(name[1], source(cell), source(check), blocks[0]))
    return found


def numbered_solutions(solutions: dict) -> dict[int, list[str]]:
    """Task number -> the code blocks of its ``solution`` cell, in a solutions notebook (the
    number is the one in bold at the start of the task repeated just before it)."""
    cells = solutions["cells"]
    return {
        task_number(cells, i): solution_blocks(source(cell))
        for i, cell in enumerate(cells)
        if SOLUTION in tags(cell)
    }


def run_code(code: str, namespace: dict) -> str:
    """Run a cell's code in ``namespace`` (in this process, no kernel) and return what it
    printed. IPython's ``%`` lines (``%matplotlib inline``) are left out."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith("%")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile("\n".join(lines), "<notebook cell>", "exec"), namespace)
    return printed.getvalue()


def notebook_namespace(notebook: dict, markers: tuple[str, ...] = ()) -> dict:
    """The names a notebook's exercises use: its imports cell (the second code cell, after the
    Colab set-up), then each code cell that contains one of ``markers``, in notebook order. How
    the tests run an exercise and its check in seconds, without the rest of the notebook."""
    code = [source(cell) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    wanted = {1}
    for marker in markers:
        found = [i for i, text in enumerate(code) if marker in text]
        if len(found) != 1:
            raise ValueError(f"{len(found)} code cells contain {marker!r}; expected one")
        wanted.update(found)
    namespace: dict = {}
    for i in sorted(wanted):
        run_code(code[i], namespace)
    return namespace


def deeper_links(markdown: str) -> str:
    """``markdown`` with its relative links fixed for the edition's folder: links into the
    repository (``../mnist_dissected/...``) gain one ``../``; links to a companion notebook
    (``further/...``, the "going further" deep dives, which have no solutions to remove) lead
    to the series' own copy."""
    markdown = re.sub(r"\]\(\.\./", "](../../", markdown)
    return re.sub(r"\]\(further/", "](../../notebooks/further/", markdown)


def colab_badge_target(text: str, stem: str, ref: str) -> str:
    """``text`` with the Colab badge's link moved from the series' notebook to the edition's."""
    repository = r"(https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+)"
    pattern = rf"{repository}/blob/[^/\s]+/notebooks/{re.escape(stem)}\.ipynb"
    moved, count = re.subn(pattern, rf"\1/blob/{ref}/{EDITION}/{stem}.ipynb", text)
    if count != 1:
        raise ValueError(f"{stem}: expected one Colab badge in the title cell, found {count}")
    return moved


def student_notebook(notebook: nbformat.NotebookNode, stem: str, *, ref: str = "main"):
    """The student edition of one notebook (a new object; ``notebook`` is left as it was)."""
    edition = copy.deepcopy(notebook)
    remover = TagRemovePreprocessor(
        remove_cell_tags={SOLUTION}, remove_all_outputs_tags={EXERCISE, CHECK}
    )
    edition, _ = remover.preprocess(edition, {})
    for cell in edition.cells:
        if cell.cell_type == "markdown":
            cell.source = deeper_links(cell.source)
    title = edition.cells[0]
    title.source = colab_badge_target(title.source, stem, ref)
    heading, _, rest = title.source.partition("\n")
    title.source = f"{heading}\n\n{NOTE.format(name=stem + '.ipynb')}\n{rest}"
    return edition


def build(out: Path, notebooks: list[Path], *, ref: str = "main") -> list[Path]:
    """Write the student edition of each of ``notebooks`` into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        edition = student_notebook(notebook, path.stem, ref=ref)
        nbformat.validate(edition)
        target = out / path.name
        target.write_text(lab_form(nbformat.writes(edition)), encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every part")
    parser.add_argument("--out", type=Path, default=ROOT / EDITION, help="default: %(default)s")
    parser.add_argument("--ref", default="main", help="the branch the Colab badges open")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]_*.ipynb"))
    for path in build(args.out, notebooks, ref=args.ref):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
