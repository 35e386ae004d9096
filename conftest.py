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

On pytest-xdist workers (``--dist loadfile``, as ``make test`` runs), whole files go to the
workers in the order :data:`SCHEDULE_FIRST` gives, then the rest as xdist orders them (the most
tests first): see :func:`pytest_xdist_make_scheduler`. Shuffled, the files go in the shuffled
order instead.
"""

from pathlib import Path

import pytest

SANITIZE_FILE = "nbval-sanitize.cfg"

#: The files pytest-xdist hands to its workers first, in this order. Part 4 first: it trains
#: what other files read from the model cache (§4.6's model, §4.9's five seeds); a file that
#: reads a model another worker is still training waits at its lock, idle (the exercises' test
#: waited 70 s so). Then the longest files, so that none of them starts last. Seconds: each
#: file's tests from a fresh clone, one thread, on the AVX-512 machine of 2026-12-07.
SCHEDULE_FIRST = (
    "notebooks/4_mnist_train.ipynb",  # 113 s; trains §4.6's model and §4.9's seeds
    "notebooks/further/4_mnist_train_further.ipynb",  # 278 s, the longest
    "tests/test_exercises.py",  # replays Part 4 and 5: reads the seeds and §4.6's model
    "tests/test_example_compat.py",  # 67 s
    "notebooks/further/6_mnist_distributed_further.ipynb",  # 48 s
    "notebooks/6_mnist_distributed.ipynb",  # 43 s
    "tests/test_browser.py",  # 36 s
    "tests/test_distributed.py",  # 35 s
    "tests/test_bench.py",  # 29 s
    "notebooks/5_mnist_visualize.ipynb",  # 29 s; reads §4.6's model
    "tests/test_cli.py",  # 29 s
)
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
    """Whether pytest-random-order shuffles this run (its own test, read from its options)."""
    options = ("random_order_bucket", "random_order_seed")
    given = [str(config.getoption(name, default="default:")) for name in options]
    return bool(config.getoption("random_order_enabled", default=False)) or any(
        not value.startswith("default:") for value in given
    )


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: called only where it runs
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with :data:`SCHEDULE_FIRST`'s files first (xdist's own scheduler
    otherwise): each worker still takes a whole file at a time, and the next one when it is
    nearly done, so giving out the long files and the trainers first is all it takes."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ScheduleFirst(LoadFileScheduling):
        ordered = False

        def _assign_work_unit(self, node):
            if not self.ordered:  # the first call: xdist has filled its queue of files
                self.ordered = True
                if shuffled(config):  # the shuffled order, not xdist's (most tests first)
                    first = list(dict.fromkeys(self._split_scope(i) for i in self.collection))
                else:
                    first = list(SCHEDULE_FIRST)
                rank = {scope: first.index(scope) for scope in self.workqueue if scope in first}
                files = sorted(self.workqueue.items(), key=lambda f: rank.get(f[0], len(first)))
                self.workqueue.clear()
                self.workqueue.update(files)
            super()._assign_work_unit(node)

    return ScheduleFirst(config, log)
