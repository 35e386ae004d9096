"""pytest set-up shared by the unit tests and the notebook tests (nbval, strict mode).

Why this file exists: nbval takes a relative ``--nbval-sanitize-with`` path from the folder
pytest runs in, so it is resolved here against the repository root; and nbval waits only 5 s
for each output message by default, too short for a cell that trains a model. Under load it
must wait longer still: with two pytest-xdist workers on two cores, one training cell's last
messages came more than 60 s after its reply, and the verdict must not depend on the load
(nbval's own limit for a cell's run, ``--nbval-cell-timeout``, stays 2000 s).

The suite may run shuffled (``make test-shuffled``: pytest-random-order, with pytest-xdist): test
modules and notebooks in any order, each module's tests in any order, but each notebook's cells
in their own order, since a notebook is a story told top to bottom.
"""

from pathlib import Path

import pytest

SANITIZE_FILE = "nbval-sanitize.cfg"
#: How long nbval waits for each output message of a cell (its default: 5 s).
OUTPUT_TIMEOUT_S = 600


def pytest_configure(config):
    if config.getoption("nbval_sanitize_with", default=None):
        path = Path(config.getoption("nbval_sanitize_with"))
        if not path.is_absolute():
            config.option.nbval_sanitize_with = str(Path(config.rootpath) / path)


@pytest.hookimpl(tryfirst=True)  # before pytest-random-order shuffles: it reads the mark
def pytest_collection_modifyitems(config, items):
    keep_order = config.pluginmanager.hasplugin("random_order")
    for item in items:
        if hasattr(item, "output_timeout"):  # a notebook's cell (nbval)
            item.output_timeout = OUTPUT_TIMEOUT_S
            if keep_order:
                item.add_marker(pytest.mark.random_order(disabled=True))
