"""pytest set-up shared by the unit tests and the notebook tests (nbval, strict mode).

Why this file exists: nbval takes a relative ``--nbval-sanitize-with`` path from the folder
pytest runs in, so it is resolved here against the repository root; and nbval waits only 5 s
for each output message by default, too short for a cell that trains a model. Under load it
must wait longer still: with two pytest-xdist workers on two cores, one training cell's last
messages came more than 60 s after its reply, and the verdict must not depend on the load
(nbval's own limit for a cell's run, ``--nbval-cell-timeout``, stays 2000 s).
"""

from pathlib import Path

SANITIZE_FILE = "nbval-sanitize.cfg"
#: How long nbval waits for each output message of a cell (its default: 5 s).
OUTPUT_TIMEOUT_S = 600


def pytest_configure(config):
    if config.getoption("nbval_sanitize_with", default=None):
        path = Path(config.getoption("nbval_sanitize_with"))
        if not path.is_absolute():
            config.option.nbval_sanitize_with = str(Path(config.rootpath) / path)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S
