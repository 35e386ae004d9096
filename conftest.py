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

On pytest-xdist workers (``--dist loadfile``), xdist hands out whole files, those with the most
tests first, whatever the order pytest collected them in; shuffled, they go out in the shuffled
order instead (:func:`pytest_xdist_make_scheduler`), so a file that reads a model from the cache
may run before the file that trains it, or while it trains it.
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


def shuffled(config: pytest.Config) -> bool:
    """Whether pytest-random-order shuffles this run (the plugin's own answer)."""
    if not config.pluginmanager.hasplugin("random_order"):
        return False
    from random_order.config import Config

    return Config(config).is_enabled


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: called only where it runs
def pytest_xdist_make_scheduler(config, log):
    """Shuffled, ``--dist loadfile`` hands out the files in the shuffled order (xdist's own
    scheduler sorts them by their number of tests, which would undo the shuffle of the files);
    otherwise xdist's own scheduler. Each worker still takes a whole file at a time.

    (Giving Part 4 and the longest files out first was measured too, from a fresh clone, and
    dropped: 537 s against 508 s for xdist's order, 2026-12-07.)"""
    if config.getvalue("dist") != "loadfile" or not shuffled(config):
        return None
    from xdist.scheduler import LoadFileScheduling

    class ShuffledFiles(LoadFileScheduling):
        ordered = False

        def _assign_work_unit(self, node):
            if not self.ordered:  # the first call: xdist has filled its queue of files
                self.ordered = True
                order = list(dict.fromkeys(self._split_scope(i) for i in self.collection))
                files = sorted(self.workqueue.items(), key=lambda f: order.index(f[0]))
                self.workqueue.clear()
                self.workqueue.update(files)
            super()._assign_work_unit(node)

    return ShuffledFiles(config, log)
