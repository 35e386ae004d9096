"""A course a lecturer can assign (../shared/NOTEBOOKS.md): each part is a core of an hour or
less, opening with objectives, prerequisites and its time, and a companion ("going further")
that holds the deep dives, linked both ways, section by section.

What is checked here without a kernel: the shape of both notebooks, the core's prose budget
(``tools/course_report.py`` counts it), and that every link between a core and its companion
names a section that exists. nbval runs both notebooks, strictly, like every other.
"""

import json
import re
import sys
from pathlib import Path

import pytest
from test_notebooks import KERNELSPEC, MACHINERY, PARTS, repo_url, setup_cell_source, source

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from course_report import CORE_WORDS, prose_words  # noqa: E402
from notebook_form import lab_form  # noqa: E402

sys.path.remove(str(ROOT / "tools"))

CORES = sorted((ROOT / "notebooks").glob("[0-9]_*.ipynb"))
COMPANIONS = sorted((ROOT / "notebooks" / "further").glob("[0-9]_*.ipynb"))


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
    """About 15 minutes of prose at most; the rest of the hour is running, looking, exercises."""
    path, nb = core
    count = prose_words(nb)
    assert count <= CORE_WORDS, (
        f"{path.name}: {count} words of prose, over {CORE_WORDS}: move a deep dive to "
        f"further/{companion_of(path).name}"
    )


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


@pytest.mark.parametrize("path", CORES + COMPANIONS, ids=lambda p: p.stem)
def test_every_relative_link_leads_somewhere(path):
    """A link moved between a core and its companion changes folder: ``../`` must follow it."""
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for link in re.findall(r"\]\(([^)#\s]+)", source(cell)):
            if not re.match(r"[a-z]+:", link):
                assert (path.parent / link).exists(), f"{path.name} cell {i}: {link}"
