"""The set-up files agree: pip's pyproject.toml and conda's environment.yml, the README's two
commands, the Makefile and CI."""

import importlib.util
import re
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, which pytest itself needs there
    import tomli as tomllib  # (not pip's copy: importing pip makes setuptools' distutils shim
    # hand later imports the standard library's distutils, which breaks torch.compile's triton)

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> PyPI name
CONDA_ONLY = {"python", "pip"}


def pyproject_requirements() -> dict[str, str]:
    """name -> floor, from [project] dependencies and every optional-dependencies list (read
    as TOML, so a comment or spacing cannot hide a line)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    found = [
        re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?(.*)", r.replace(" ", "")) for r in requirements
    ]
    return {m[1].lower(): m[3] for m in found}


def conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    result = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert dep["pip"] == ["--editable ."], "conda installs the package itself with pip"
            continue
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", dep).groups()
        if name not in CONDA_ONLY:
            result[CONDA_NAMES.get(name, name).lower()] = spec
    return result


def test_pip_and_conda_list_the_same_packages_with_the_same_floors():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert {"torch", "torchvision", "matplotlib", "tqdm", "pytest", "nbval"} <= set(pip)
    assert pip == conda


def test_requirements_are_floors_only():
    for name, spec in pyproject_requirements().items():
        assert spec.startswith(">="), f"{name}: use a floor (>=), not {spec!r}"
        assert "," not in spec and "<" not in spec, f"{name}: no upper bound"


def test_readme_quick_start_has_exactly_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", quick, re.S)
    commands = [
        line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert commands == ["make lab", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_ci_runs_the_floors_and_newest_sessions_after_make_test_and_floors_pins_every_floor(
    monkeypatch,
):
    """The oldest versions pyproject.toml claims are installed and tested by CI, and so are
    the newest Python and releases: nox's floors session pins each requirement (package, lab
    and test extras, build backend) to its floor's release line, on the oldest Python allowed."""
    ci = (ROOT / ".ci" / "run").read_text()
    make_test = ci.index("\nmake test\n")
    assert make_test < ci.index("session floors -R -- ") < ci.index("session newest -R -- ")
    assert "--sessions floors" in ci and "--sessions newest" in ci
    assert ci.count("--install-only") == 2
    # noxfile.py read without nox installed: a stand-in for the two names it uses at import.
    stand_in = types.SimpleNamespace(
        options=types.SimpleNamespace(), session=lambda **_: lambda function: function
    )
    monkeypatch.setitem(sys.modules, "nox", stand_in)
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    noxfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noxfile)
    pins = dict(pin.split("==") for pin in noxfile.floor_pins())
    for name, floor in pyproject_requirements().items():
        assert pins[name] == floor.removeprefix(">=") + ".*", name
    assert noxfile.oldest_python() == "3.10"


def test_makefile_creates_the_venv_and_runs_lint_and_pytest():
    makefile = (ROOT / "Makefile").read_text()
    assert "-m venv" in makefile and "--editable '.[lab,test]'" in makefile
    target = {t: makefile.split(f"\n{t}:", 1)[1].split("\n\n", 1)[0] for t in ("test", "lint")}
    assert target["test"].startswith(" lint") and "-m pytest" in target["test"]
    assert "ruff check ." in target["lint"] and "ruff format --check ." in target["lint"]


def test_pytest_runs_notebooks_in_strict_nbval_mode():
    text = (ROOT / "pyproject.toml").read_text()
    addopts = re.search(r"^addopts = \"(.*)\"$", text, re.M).group(1).split()
    assert "--nbval" in addopts and "--nbval-lax" not in addopts
    assert "--nbval-current-env" in addopts
    assert any(a.startswith("--nbval-sanitize-with=") for a in addopts)
    assert re.search(r'^testpaths = \["tests", "notebooks"\]$', text, re.M)


def test_make_lab_works_as_root_and_passes_extra_arguments():
    """Jupyter refuses root without --allow-root (containers, cloud machines)."""
    import os
    import subprocess

    result = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "lab", "LAB_ARGS=--port 8899 --no-browser"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if "jupyter lab" in x)
    assert "--port 8899 --no-browser" in line and line.rstrip().endswith("notebooks/")
    assert ("--allow-root" in line) == (os.geteuid() == 0)


@pytest.mark.slow
def test_the_wheel_holds_every_module_the_bundled_drawings_and_the_widget_front_end(tmp_path):
    """What `pip install` outside a checkout (and Colab) gets, built offline with this
    environment's setuptools (the build floor in `nox -s floors`), without setuptools' warning
    that a folder of the package would be ignored: the modules, Part 5's bundled drawings and
    the drawing widget's JavaScript and CSS (package data, not modules)."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        source.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "mnist_dissected",
        source / "mnist_dissected",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-index"),
            *("--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("mnist_dissected-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"mnist_dissected/{p.name}" for p in (ROOT / "mnist_dissected").glob("*.py")}
    drawings = {f"mnist_dissected/drawings/{d}.png" for d in (0, 2, 3, 7)}
    front_end = {
        f"mnist_dissected/widget/{p.name}"
        for p in (ROOT / "mnist_dissected" / "widget").iterdir()
        if p.suffix in {".js", ".css"}
    }
    assert {"mnist_dissected/widget/draw.js", "mnist_dissected/widget/draw.css"} <= front_end
    assert modules | drawings <= names
    assert front_end <= names, sorted(front_end - names)
    upstream = {  # run_example runs them from the installed package (Part 4, §4.5)
        f"mnist_dissected/upstream/{name}"
        for name in ("main_d8dd8ca_parent.py", "main_77f55b9.py", "LICENSE", "README.md")
    }
    assert upstream <= names, sorted(upstream - names)
