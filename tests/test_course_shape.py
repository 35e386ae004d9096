"""A course a lecturer can assign (../shared/NOTEBOOKS.md): each part is a core of an hour or
less, opening with objectives, prerequisites and its time, a companion ("going further") that
holds the deep dives, linked both ways, section by section, and a solutions notebook that holds
the worked solutions of the core's exercises, out of the learner's way.

What is checked here without a kernel: the shape of the three notebooks, the core's word budget
(``tools/course_report.py`` counts it), that every link between a core and its companion
names a section that exists, and that the solutions notebook repeats the core's tasks as they
are. nbval runs the core and the companion, strictly, like every other notebook.
"""

import json
import posixpath
import re
import sys
from pathlib import Path

import pytest
from test_notebooks import KERNELSPEC, MACHINERY, PARTS, repo_url, setup_cell_source, source

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from course_report import CORE_WORDS, markdown_words, prose_words  # noqa: E402
from notebook_form import lab_form  # noqa: E402
from student_edition import solutions_path  # noqa: E402

sys.path.remove(str(ROOT / "tools"))

CORES = sorted((ROOT / "notebooks").glob("[0-9]_*.ipynb"))
COMPANIONS = sorted((ROOT / "notebooks" / "further").glob("[0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9]_*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def companion_of(core: Path) -> Path:
    return ROOT / "notebooks" / "further" / f"{core.stem}_further.ipynb"


def sections(nb: dict) -> list[str]:
    """The numbered headings of ``nb`` in order: '4.1', '4.2', ... or '4.A', '4.B', ..."""
    return [
        m.group(1)
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
        for m in re.finditer(r"^## (\d\.[\dA-Z]+) ", source(c), re.M)
    ]


def section_texts(nb: dict) -> dict[str, str]:
    """Each numbered section's Markdown, joined: its heading cell and the Markdown up to the
    next numbered heading (or the recap)."""
    texts: dict[str, str] = {}
    current = None
    for cell in nb["cells"]:
        text = source(cell)
        if cell["cell_type"] != "markdown":
            continue
        if m := re.match(r"## (\d\.[\dA-Z]+) ", text):
            current = m.group(1)
        elif text.startswith("## "):
            current = None
        if current:
            texts[current] = texts.get(current, "") + "\n" + text
    return texts


def test_every_part_has_a_companion():
    assert [p.name for p in COMPANIONS] == [companion_of(p).name for p in CORES]


@pytest.fixture(params=CORES, ids=[p.stem for p in CORES])
def core(request):
    return request.param, load(request.param)


@pytest.fixture(params=COMPANIONS, ids=[p.stem for p in COMPANIONS])
def companion(request):
    return request.param, load(request.param)


def opening(nb: dict, part: int) -> str:
    """The Markdown before the first numbered section."""
    text = []
    for cell in nb["cells"]:
        if source(cell).startswith(f"## {part}.1 "):
            break
        if cell["cell_type"] == "markdown":
            text.append(source(cell))
    return "\n".join(text)


def test_core_opens_with_objectives_prerequisites_and_its_time(core):
    path, nb = core
    top = opening(nb, int(path.stem[0]))
    assert "**Learning objectives**" in top, "what a student can do at the end"
    assert "**Prerequisites**" in top, "which earlier sections this part builds on"
    assert re.search(r"\*\*Time\*\*[^\n]*\d+ min", top), "the time it takes, in minutes"
    assert re.search(r"Run All[^\n]*\d+ s\b", top), "its measured Run-All time"


def test_core_fits_an_hour(core):
    """About 15 minutes of reading at most; the rest of the hour is running, looking, exercises.
    Counted both ways: every alphabetic word of every Markdown cell (code, HTML and link
    targets too), and the prose alone split at spaces (numbers count there)."""
    path, nb = core
    count = max(markdown_words(nb), prose_words(nb))
    assert count <= CORE_WORDS, (
        f"{path.name}: {count} words of Markdown, over {CORE_WORDS}: move a deep dive to "
        f"further/{companion_of(path).name}"
    )


def tasks(nb: dict) -> dict[int, str]:
    """Task number -> the Markdown cell that states it (``**N. ...``)."""
    return {
        int(m[1]): source(c)
        for c in nb["cells"]
        if c["cell_type"] == "markdown" and (m := re.match(r"\*\*(\d)\. ", source(c)))
    }


def seen_from_solutions(markdown: str, core_name: str) -> str:
    """``markdown`` of ``notebooks/<core_name>`` as it reads from ``solutions/``: each relative
    link leads to the same file, and a link within the core (``#...``) leads into it."""

    def moved(link: re.Match) -> str:
        target = link[1]
        if re.match(r"[a-z]+:", target) or target.startswith("/"):
            return link[0]
        target = core_name + target if target.startswith("#") else target
        return f"]({posixpath.relpath(posixpath.normpath('notebooks/' + target), 'solutions')})"

    return re.sub(r"\]\(([^)\s]+)\)", moved, markdown)


def test_every_part_has_its_solutions_apart():
    assert [p.name for p in SOLUTIONS] == [solutions_path(p).name for p in CORES]


@pytest.mark.parametrize("core_path", CORES, ids=lambda p: p.stem)
def test_the_solutions_repeat_every_task_and_answer_each(core_path):
    """The core states each task once and links to its solutions once (a cell tagged
    ``solution``, which the student edition drops); the solutions notebook repeats each task
    word for word (its links lead where the core's do) and answers it in a folded
    ``<details>`` block (that none is left in the core, `test_notebooks.py` checks)."""
    core_nb, path = load(core_path), solutions_path(core_path)
    nb = load(path)
    n, title = int(core_path.stem[0]), source(core_nb["cells"][0]).splitlines()[0]
    first = source(nb["cells"][0])
    assert first.startswith(f"{title}: solutions\n"), first.splitlines()[0]
    assert f"](../notebooks/{core_path.name})" in first, "the title links back to the exercises"
    assert all(c["cell_type"] == "markdown" for c in nb["cells"]), "read, not run"
    assert nb["metadata"]["kernelspec"] == KERNELSPEC
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, "no widget state to carry"
    text = path.read_text(encoding="utf-8")
    assert lab_form(text) == text, f"run: python tools/notebook_form.py {path}"

    asked = tasks(core_nb)
    assert sorted(asked) == list(range(1, len(asked) + 1)) and len(asked) >= 5
    repeated = tasks(nb)
    assert repeated == {k: seen_from_solutions(v, core_path.name) for k, v in asked.items()}
    cells = nb["cells"]
    assert source(cells[-1]) == f"Back to [Part {n}'s exercises](../notebooks/{core_path.name}).", (
        "it ends with the way back"
    )
    for i, cell in enumerate(cells[1:-1], 1):
        task = re.match(r"\*\*(\d)\. ", source(cell))
        if task:
            answer = cells[i + 1]  # at worst the way back, which is no answer
            assert "solution" in answer["metadata"].get("tags", []), f"task {task[1]}: no answer"
            assert source(answer).startswith("<details><summary>Solution</summary>")
            assert "```python" in source(answer), f"task {task[1]}: its answer has no code"
        else:
            assert "solution" in cell["metadata"].get("tags", []), f"cell {i}: neither"

    in_core = [c for c in core_nb["cells"] if "solution" in c["metadata"].get("tags", [])]
    assert len(in_core) == 1, "the core links to its solutions in one cell"
    assert f"](../solutions/{path.name})" in source(in_core[0])


def test_companion_title_badge_and_way_back(companion):
    path, nb = companion
    n = int(path.stem[0])
    core_stem, title = PARTS[n]
    first = source(nb["cells"][0])
    assert first.startswith(f"# Part {n}, going further: "), first.splitlines()[0]
    badge = repo_url().removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{badge}/blob/main/notebooks/further/"
    assert f"({colab}{path.name})" in first, "the Colab badge opens this notebook"
    assert f"](../{core_stem}.ipynb)" in first, "the title links back to its core"


def test_companion_runs_like_a_core(companion):
    path, nb = companion
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert source(code[0]) == setup_cell_source()
    assert source(code[1]).startswith("%matplotlib inline")
    assert nb["metadata"]["kernelspec"] == KERNELSPEC
    counts = [c["execution_count"] for c in code if source(c).strip()]
    assert counts == list(range(1, len(counts) + 1)), "run it top to bottom, then commit"
    text = path.read_text(encoding="utf-8")
    assert lab_form(text) == text, f"run: python tools/notebook_form.py {path}"
    for i, cell in enumerate(nb["cells"]):
        assert "NBVAL_" not in source(cell), f"{path.name} cell {i}: a marker, not a tag"
        if cell["cell_type"] == "markdown":
            lowered = " ".join(source(cell).lower().split())
            for phrase in MACHINERY:
                assert phrase not in lowered, f"{path.name} cell {i}: {phrase!r}"


def test_companion_sections_are_lettered_in_order(companion):
    path, nb = companion
    n = path.stem[0]
    found = sections(nb)
    assert found, "a companion has at least one section"
    assert found == [f"{n}.{chr(ord('A') + i)}" for i in range(len(found))]


def test_core_and_companion_link_both_ways_section_by_section(companion):
    """Each companion section says which core section it deepens (a link to the core naming
    §N.k), and that core links to it (a link into the companion naming §N.X)."""
    path, nb = companion
    n = int(path.stem[0])
    core_stem = PARTS[n][0]
    core_nb = load(ROOT / "notebooks" / f"{core_stem}.ipynb")
    core_sections = set(sections(core_nb))
    core_markdown = " ".join(
        " ".join(source(c).split()) for c in core_nb["cells"] if c["cell_type"] == "markdown"
    )
    link_into = re.compile(rf"\[([^\]]*)\]\(further/{re.escape(path.name)}\)")
    linked_from_core = {s for label in link_into.findall(core_markdown) for s in _ids(label)}
    for section, text in section_texts(nb).items():
        text = " ".join(text.split())
        back = re.findall(rf"\[([^\]]*)\]\(\.\./{core_stem}\.ipynb\)", text)
        named = {s for label in back for s in _ids(label)}
        assert named, f"{path.name} §{section}: no link back to the core section it deepens"
        assert named <= core_sections, f"{path.name} §{section} links to {named - core_sections}"
        assert section in linked_from_core, f"{core_stem} never links to §{section}"
    assert linked_from_core <= set(sections(nb)), "the core links to a section that is not there"


def _ids(label: str) -> list[str]:
    return re.findall(r"§(\d\.[\dA-Z]+)", label)


def test_readme_lists_every_core_and_companion_with_its_time():
    """The README's table is where a lecturer chooses: each core with its time, each companion
    beside it, both opening in Colab."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    badge = repo_url().removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{badge}/blob/main/notebooks/"
    for core_path, companion_path in zip(CORES, COMPANIONS, strict=True):
        row = next(
            (line for line in readme.splitlines() if f"](notebooks/{core_path.name})" in line),
            None,
        )
        assert row, f"README: no row for {core_path.name}"
        assert f"](notebooks/further/{companion_path.name})" in row, "its companion beside it"
        assert f"({colab}further/{companion_path.name})" in row, "the companion opens in Colab"
        assert re.search(r"\b\d+ min\b", row), "the core's time, in minutes"


@pytest.mark.parametrize("path", CORES + COMPANIONS + SOLUTIONS, ids=lambda p: p.stem)
def test_every_relative_link_leads_somewhere(path):
    """A link moved between a core and its companion changes folder: ``../`` must follow it."""
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for link in re.findall(r"\]\(([^)#\s]+)", source(cell)):
            if not re.match(r"[a-z]+:", link):
                assert (path.parent / link).exists(), f"{path.name} cell {i}: {link}"
