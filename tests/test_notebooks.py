"""What every notebook has (../shared/NOTEBOOKS.md), checked without running a kernel.

nbval re-executes the notebooks; these tests check their shape: title, Colab badge and set-up
cell agreeing with the one repository URL, the "where you are" list, numbered sections,
exercises whose solutions are checked (by the tests where they are graded, else in the
notebook), and committed outputs from one top-to-bottom run.
"""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]_*.ipynb"))
#: The cores and their companions ("going further", tests/test_course_shape.py).
EVERY_NOTEBOOK = NOTEBOOKS + sorted((ROOT / "notebooks" / "further").glob("[0-9]_*.ipynb"))
PARTS = {
    1: ("1_mnist_load", "Loading the data"),
    2: ("2_mnist_model", "Model components and the forward pass"),
    3: ("3_mnist_backprop", "Autograd and backpropagation"),
    4: ("4_mnist_train", "Training"),
    5: ("5_mnist_visualize", "Visualizing the results"),
    6: ("6_mnist_distributed", "Scaling out with DistributedDataParallel"),
}
#: One part, one module: the notebook links to it, its docstrings point back to the notebook.
MODULE_OF_PART = {1: "data", 2: "models", 3: "backprop", 4: "train", 5: "plots", 6: "distributed"}
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def repo_url() -> str:
    """The one place the repository URL is defined: pyproject.toml's [project.urls]."""
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^Repository = "(.+)"$', text, re.M).group(1)


def colab_url(stem: str) -> str:
    path = repo_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{stem}.ipynb"


def setup_cell_source() -> str:
    return (
        "# Set-up: in Google Colab, install the helper package; anywhere else this cell does "
        "nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    REPO_URL = "{repo_url()}"\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"], '
        "check=True)"
    )


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_all_six_parts_exist():
    assert [p.stem for p in NOTEBOOKS] == [stem for stem, _ in PARTS.values()]


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def notebook(request):
    return request.param, load(request.param)


def test_title_badge_and_where_you_are(notebook):
    path, nb = notebook
    n = int(path.stem[0])
    first = source(nb["cells"][0])
    assert first.startswith(f"# Part {n}: "), "first cell must be the title '# Part N: ...'"
    assert f"({colab_url(path.stem)})" in first, "Colab badge must point at this notebook"
    for k, (stem, title) in PARTS.items():
        link = f"[Part {k}: {title}]({stem}.ipynb)"
        assert link in first, f"'where you are' list lacks {link}"
    assert "(you are here)" in first


def test_first_code_cell_is_the_colab_setup(notebook):
    _, nb = notebook
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert source(code[0]) == setup_cell_source()


def test_sections_are_numbered_in_order(notebook):
    path, nb = notebook
    n = int(path.stem[0])
    headings = [
        line
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
        for line in source(c).splitlines()
        if line.startswith("## ")
    ]
    numbered = [int(m.group(1)) for h in headings if (m := re.match(rf"## {n}\.(\d+) ", h))]
    assert len(numbered) >= 3, "sections are numbered N.1, N.2, ..."
    assert numbered == list(range(1, len(numbered) + 1))
    assert "## Summary" in headings and "## Exercises" in headings


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def solution_blocks(markdown: str) -> list[str]:
    return [
        block
        for details in re.findall(r"<details>(.*?)</details>", markdown, re.S)
        for block in re.findall(r"```python\n(.*?)```", details, re.S)
    ]


def test_every_solution_is_checked_and_none_shows_on_run_all(notebook):
    """Each exercise has a worked solution, and none runs or shows on Run All: they live in
    the part's solutions notebook (``solutions/``), each collapsed in a Markdown cell
    tagged ``solution``, and the tests run them (``tests/test_exercises*.py``)."""
    path, nb = notebook
    cells = nb["cells"]
    solutions_nb = load(ROOT / "solutions" / f"{path.stem}_solutions.ipynb")
    markdown = "\n".join(source(c) for c in solutions_nb["cells"] if "solution" in tags(c))
    code = "\n".join(source(c) for c in cells if c["cell_type"] == "code")
    solutions = solution_blocks(markdown)
    assert len(solutions) >= 5, "5-8 exercises, each with a worked solution"
    assert not any("<details>" in source(c) for c in cells), f"{path.name}: a solution in sight"
    for block in solutions:
        assert block.strip() not in code, f"{path.name}: a solution runs on Run All:\n{block}"
    exercises = [c for c in cells if "exercise" in tags(c)]
    assert len(exercises) >= 3, "at least three exercises that require writing code"
    for cell in exercises:
        assert "raise NotImplementedError" in source(cell), "an exercise ships as a stub"


#: Words about the test machinery that have no place in a lesson.
MACHINERY = ("nbval", "not compared", "not checked", "the cell after it asserts", "strict mode")


def test_test_machinery_stays_out_of_the_learners_code_and_prose(notebook):
    """nbval's markers are cell tags, never comment lines in the code a learner reads; the
    lessons never talk about the comparison (the README and Part 1 say how the notebooks check
    themselves, once)."""
    path, nb = notebook
    first_section = next(
        i for i, c in enumerate(nb["cells"]) if source(c).startswith(f"## {path.name[0]}.1 ")
    )
    for i, cell in enumerate(nb["cells"]):
        text = source(cell)
        assert "NBVAL_" not in text, f"{path.name} cell {i}: a marker in the code, not a tag"
        if cell["cell_type"] == "markdown" and i > first_section:  # Part 1's top says it once
            lowered = " ".join(text.lower().split())
            for phrase in MACHINERY:
                assert phrase not in lowered, f"{path.name} cell {i}: {phrase!r} in the lesson"


def test_opening_in_jupyterlab_does_not_change_the_kernelspec(notebook):
    """JupyterLab rewrites a kernelspec that differs from ipykernel's: the file would change."""
    _, nb = notebook
    assert nb["metadata"]["kernelspec"] == KERNELSPEC


def test_links_to_its_module_and_shows_code_with_show_source(notebook):
    path, nb = notebook
    module = MODULE_OF_PART[int(path.stem[0])]
    markdown = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert f"(../mnist_dissected/{module}.py)" in markdown
    assert "inspect.getsource" not in code, "show the package's code with show_source"
    assert "os.environ[" not in code, "nothing a notebook does may leak into the process"


def test_figures_show_whatever_mplbackend_says(notebook):
    """MPLBACKEND=agg would swallow every figure; the inline backend, asked for, shows them."""
    _, nb = notebook
    code = [source(c) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code[1].startswith("%matplotlib inline"), "the imports cell asks for inline figures"


def test_committed_executed_top_to_bottom(notebook):
    _, nb = notebook
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    counts = [
        c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code" and source(c).strip()
    ]
    assert counts == list(range(1, len(counts) + 1)), "run the notebook top to bottom, then commit"


def test_committed_in_the_form_jupyterlab_saves(notebook):
    """Ctrl+S on an unchanged notebook must change nothing on disk (`make execute` writes it so)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from notebook_form import lab_form
    finally:
        sys.path.remove(str(ROOT / "tools"))
    path, _ = notebook
    text = path.read_text(encoding="utf-8")
    assert lab_form(text) == text, f"run: python tools/notebook_form.py notebooks/{path.name}"


def test_readme_badges_agree():
    readme = (ROOT / "README.md").read_text()
    for stem, _ in PARTS.values():
        assert f"({colab_url(stem)})" in readme
        student = colab_url(stem).replace("/blob/main/notebooks/", "/blob/main/student/notebooks/")
        assert f"({student})" in readme, f"the student edition of {stem} opens in Colab"


def test_docstring_pointers_name_sections_that_exist():
    """'Dissected in Part 3, §3.5' in the package must point at a real heading."""
    headings: dict[int, set[str]] = {}
    for path in EVERY_NOTEBOOK:
        nb = load(path)
        headings.setdefault(int(path.stem[0]), set()).update(
            m.group(1)
            for c in nb["cells"]
            if c["cell_type"] == "markdown"
            for m in re.finditer(r"^## (\d+\.[\dA-Z]+) ", source(c), re.M)
        )
    pointers = 0
    for module in sorted((ROOT / "mnist_dissected").glob("*.py")):
        text = " ".join(module.read_text().split())
        for part, sections in re.findall(
            r"Part (\d), ((?:§[\dA-Z.]*[\dA-Z](?:,? (?:and )?)?)+)", text
        ):
            for section in re.findall(r"§([\dA-Z.]*[\dA-Z])", sections):
                pointers += 1
                assert section.startswith(f"{part}."), f"{module.name}: Part {part}, §{section}"
                assert section in headings.get(int(part), set()), (
                    f"{module.name} points at Part {part}, §{section}: no such section"
                )
    assert pointers >= 30


def test_every_part_module_points_back_to_its_notebook():
    for part, module in MODULE_OF_PART.items():
        text = (ROOT / "mnist_dissected" / f"{module}.py").read_text()
        assert f"notebooks/{PARTS[part][0]}.ipynb" in text, module


def test_links_between_parts_name_sections_that_exist():
    """'(see Part 3, §3.4)' in one notebook's prose must point at a heading of Part 3."""
    headings: dict[int, set[str]] = {}
    for path in EVERY_NOTEBOOK:
        headings.setdefault(int(path.stem[0]), set()).update(
            m.group(1)
            for c in load(path)["cells"]
            if c["cell_type"] == "markdown"
            for m in re.finditer(r"^## (\d+\.[\dA-Z]+) ", source(c), re.M)
        )
    for path in EVERY_NOTEBOOK:
        for c in load(path)["cells"]:
            if c["cell_type"] != "markdown":
                continue
            text = " ".join(source(c).split())
            for part, section in re.findall(r"Part (\d),? §(\d+\.[\dA-Z]+)", text):
                assert section in headings[int(part)], f"{path.name}: Part {part}, §{section}"
