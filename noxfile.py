"""The test suite at both ends of what pyproject.toml promises: `nox -s floors`, `nox -s newest`.

Why this file exists: pyproject.toml declares floors only (``torch>=2.2``, ...), and `make test`
always installs the newest releases, so nothing else checks that the floors still work.

- ``floors``: the oldest Python allowed (``requires-python``) and, for every requirement of the
  package and of its ``test`` extra, the floor's release line: ``torch>=2.2`` becomes
  ``torch==2.2.*`` (2.2.2, the bug-fix release of the declared minor version). Then the whole
  suite, unit tests and strict nbval of every notebook, as `make test` runs it.
- ``newest``: the newest Python here and the newest releases.

Both need the package registry (PyTorch from PyPI: about 2.5 GB of downloads with its CUDA
libraries, even on a machine without a GPU). A Python that is not on PATH is skipped by nox:
with pyenv, e.g. ``PATH=$(pyenv root)/versions/3.10.13/bin:$PATH nox -s floors``. Arguments
after ``--`` go to pytest, e.g. ``nox -s floors -- -m "not slow" -p no:nbval tests``.

``.ci/run`` runs ``floors`` and then ``newest`` after ``make test`` (their environments install
meanwhile), without the tests marked ``newest_only`` (``make test`` ran them), on pytest-xdist
workers of one thread each as ``make test`` does.
"""

from __future__ import annotations

import re
from pathlib import Path

import nox

try:
    import tomllib
except ImportError:  # Python 3.10 runs nox too
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NEWEST_PYTHON = "3.13"

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["floors"]


# Fails when pip installed something other than the pins (it would only with a stale pin).
CHECK_PINS = """
import sys
from importlib.metadata import version
from packaging.requirements import Requirement

for pin in sys.argv[1:]:
    req = Requirement(pin)
    got = version(req.name)
    assert got in req.specifier, f"{req.name} {got} is not {req.specifier}"
    print(f"{req.name:12} {got}")
"""


def oldest_python() -> str:
    """``requires-python = ">=3.10"`` -> ``"3.10"``."""
    spec = PYPROJECT["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)", spec)
    assert match, f"requires-python should be a floor, not {spec!r}"
    return match[1]


#: What ``make test`` installs: the package with these extras (JupyterLab for the browser test).
EXTRAS = ("lab", "test")


def floor_pins(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """``name>=X.Y`` -> ``name==X.Y.*`` for the dependencies, the ``extras``' and the build
    backend, once each."""
    requirements = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        requirements += PYPROJECT["project"]["optional-dependencies"][extra]
    # The build backend too: the Colab test builds the package offline with this one.
    requirements += PYPROJECT["build-system"]["requires"]
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=(\d+(?:\.\d+)?)", requirement.replace(" ", ""))
        assert match, f"{requirement!r}: expected a floor, name>=X.Y"
        name, floor = match.groups()
        pins[name.lower()] = f"{name}=={floor}.*"
    return list(pins.values())


def run_suite(session: nox.Session) -> None:
    session.run("python", "-m", "pip", "check")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("python", "-m", "pytest", *session.posargs)
    session.run("ruff", "check", ".")


@nox.session(python=oldest_python())
def floors(session: nox.Session) -> None:
    """The declared floors: oldest Python, each requirement at its floor's release line."""
    pins = floor_pins()
    session.install(*pins)
    # The package itself, editable and without touching what was just pinned, built by the
    # pinned setuptools (the build floor) rather than the newest one in an isolated build.
    session.install("--no-deps", "--no-build-isolation", "--editable", ".")
    session.run("python", "-c", CHECK_PINS, *pins)
    run_suite(session)


@nox.session(python=NEWEST_PYTHON)
def newest(session: nox.Session) -> None:
    """The newest releases (what a reader gets today), on the newest Python."""
    session.install(
        "--upgrade", "--upgrade-strategy", "eager", "--editable", f".[{','.join(EXTRAS)}]"
    )
    run_suite(session)
