"""The student edition (`make student`, ``tools/student_edition.py``), built into a tmp folder.

Why this file exists: the edition is what a teacher hands out, so it must hold no solution, and
each of its exercises must be a real one: its check reports it unsolved as shipped, and passes
once the series' solution is put in its place. The rest must be the series as committed (the
same cells, executed), and it must open in Colab (its badges point at its own copy) and in
JupyterLab (saved as Lab saves it, links into the repository one folder deeper).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

from mnist_dissected.exercises import NOT_SOLVED

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import student_edition as edition  # noqa: E402 (tools/, put on the path just above)
from notebook_form import lab_form  # noqa: E402

SERIES = sorted((ROOT / "notebooks").glob("[0-9]_*.ipynb"))
#: The parts whose exercises follow the edition's conventions (issue 20); the others still run
#: their solutions in an appendix, and join this list as they are converted.
CONVERTED = (
    "1_mnist_load",
    "2_mnist_model",
    "3_mnist_backprop",
    "4_mnist_train",
    "5_mnist_visualize",
    "6_mnist_distributed",
)
#: Cells besides the imports that an exercise's solution needs (Part 5's reuses §5.12's fgsm).
SETUP = {"5_mnist_visualize": ("def fgsm(",)}


def series(stem: str) -> dict:
    return json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())


def solutions(stem: str) -> dict:
    return json.loads(edition.solutions_path(ROOT / "notebooks" / f"{stem}.ipynb").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("student") / "notebooks"
    return {path.stem: path for path in edition.build(out, SERIES)}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_part_is_written_and_opens_in_colab_and_jupyterlab(built):
    assert sorted(built) == [path.stem for path in SERIES]
    for stem, path in built.items():
        text = path.read_text(encoding="utf-8")
        nbformat.validate(nbformat.reads(text, as_version=nbformat.NO_CONVERT))
        assert lab_form(text) == text, "saving it in JupyterLab would change it"
        notebook = json.loads(text)
        assert notebook["metadata"]["kernelspec"] == series(stem)["metadata"]["kernelspec"]
        title = edition.source(notebook["cells"][0])
        badge = re.search(r"\(https://colab\.research\.google\.com/github/(.+?)\)", title)[1]
        assert badge.endswith(f"/blob/main/{edition.EDITION}/{stem}.ipynb"), badge
        assert edition.NOTE.format(name=f"{stem}.ipynb") in title
        for cell in notebook["cells"]:
            for link in re.findall(r"\]\((\.\./[^)#\s]+|further/[^)#\s]+)", edition.source(cell)):
                target = (ROOT / edition.EDITION / link).resolve()
                assert target.exists(), f"{stem}: {link} leads nowhere from {edition.EDITION}"


@pytest.mark.parametrize("stem", CONVERTED)
def test_no_solution_is_left(stem, built):
    notebook = read(built[stem])
    text = json.dumps(notebook)
    assert not any(edition.SOLUTION in edition.tags(cell) for cell in notebook["cells"])
    assert "<details>" not in text and "Solution</summary>" not in text
    cells = series(stem)["cells"]
    links = [c for c in cells if edition.SOLUTION in edition.tags(c)]
    assert len(links) == 1 and "solutions/" in edition.source(links[0])
    assert "solutions/" not in text, "nothing leads to the solutions"
    lesson = json.dumps([c for c in cells if c not in links])  # outputs included
    answers = [c for c in solutions(stem)["cells"] if edition.SOLUTION in edition.tags(c)]
    assert len(answers) >= 5
    for cell in answers:  # each line only a solution has (not a stub's, nor the lesson's)
        for block in edition.solution_blocks(edition.source(cell)):
            for line in map(str.strip, block.splitlines()):
                escaped = json.dumps(line)[1:-1]
                if line and escaped not in lesson:
                    assert escaped not in text, f"{stem}: {line!r} is left"


@pytest.mark.parametrize("stem", [path.stem for path in SERIES])
def test_everything_else_is_the_series_as_committed(stem, built):
    """The same cells in the same order, outputs and all; only the solutions are gone, the
    exercises' outputs cleared, the title's badge moved and links one folder deeper."""
    kept = [c for c in series(stem)["cells"] if edition.SOLUTION not in edition.tags(c)]
    cells = read(built[stem])["cells"]
    assert len(cells) == len(kept)
    for i, (mine, theirs) in enumerate(zip(cells, kept, strict=True)):
        assert mine["id"] == theirs["id"] and mine["cell_type"] == theirs["cell_type"]
        if mine["cell_type"] == "code":
            assert edition.source(mine) == edition.source(theirs)
            cleared = {edition.EXERCISE, edition.CHECK} & set(edition.tags(theirs))
            want = ([], None) if cleared else (theirs["outputs"], theirs["execution_count"])
            assert (mine["outputs"], mine["execution_count"]) == want, f"cell {i}"
        elif i:
            deeper = edition.source(theirs).replace("](../", "](../../")
            deeper = deeper.replace("](further/", "](../../notebooks/further/")
            assert edition.source(mine) == deeper, f"cell {i}"


def exercise_cases() -> list[tuple[str, str]]:
    return [(stem, e.name) for stem in CONVERTED for e in edition.exercises(series(stem))]


def with_solutions(stem: str) -> list[edition.Exercise]:
    return edition.exercises(series(stem), solutions(stem))


def test_each_converted_part_has_at_least_three_exercises():
    for stem in CONVERTED:
        assert len(edition.exercises(series(stem))) >= 3, stem


@pytest.mark.parametrize("stem, name", exercise_cases())
def test_each_check_fails_as_shipped_and_passes_with_the_solution(stem, name, built):
    """Run the edition's imports, its stub and its check: not solved. Then the series'
    solution in the stub's place, and the same check: ✓."""
    notebook = read(built[stem])
    shipped = next(e for e in edition.exercises(notebook) if e.name == name)
    solution = next(e for e in with_solutions(stem) if e.name == name).solution
    assert shipped.solution is None and solution is not None
    assert re.search(rf"^(def|class) {name}\b", solution, re.M), "it replaces the stub"

    namespace = edition.notebook_namespace(notebook, SETUP.get(stem, ()))
    edition.run_code(shipped.stub, namespace)
    assert edition.run_code(shipped.check, namespace) == NOT_SOLVED.format(name=name) + "\n"

    edition.run_code(solution, namespace)
    assert edition.run_code(shipped.check, namespace).startswith(f"✓ {name}: ")


def test_the_command_line_writes_where_asked(tmp_path, capsys):
    assert edition.main(["--out", str(tmp_path), "--ref", "exercises", str(SERIES[0])]) == 0
    written = tmp_path / SERIES[0].name
    assert capsys.readouterr().out == f"wrote {written}\n"
    title = edition.source(read(written)["cells"][0])
    assert f"/blob/exercises/{edition.EDITION}/{SERIES[0].name})" in title


def test_the_committed_edition_is_the_series_as_it_is_now(built):
    """``student/notebooks`` is committed (the README's Colab badges open it from GitHub), so
    it must be what ``make student`` writes from today's notebooks: rebuild after every change
    to the series."""
    committed = ROOT / edition.EDITION
    assert sorted(p.stem for p in committed.glob("*.ipynb")) == sorted(built)
    for stem, path in built.items():
        mine = (committed / f"{stem}.ipynb").read_text(encoding="utf-8")
        assert mine == path.read_text(encoding="utf-8"), f"run `make student`: {stem} is stale"
