"""The suite's own scheduling on pytest-xdist workers (conftest.py): which file goes out first.

Why: ``make test-shuffled`` must show that no verdict depends on the order, but xdist's own
scheduler hands out the files with the most tests first, whatever the shuffle: a file that reads
a model from the cache always ran after the one that trains it. Shuffled, conftest.py's
scheduler hands the files out in the shuffled order. These tests drive it as xdist does, with a
worker that only records what it was sent.
"""

from __future__ import annotations

import pytest

from conftest import pytest_xdist_make_scheduler

NOT_SHUFFLED = {
    "dist": "loadfile",
    "tx": ["2*popen"],  # two workers, as -n 2 gives
    "random_order_enabled": False,
    "random_order_bucket": "default:module",
    "random_order_seed": "default:1",
}


class Options:
    """The running pytest's configuration, with some options replaced."""

    def __init__(self, config: pytest.Config, **values: object) -> None:
        self._config, self._values = config, values

    def getvalue(self, name: str) -> object:
        return self._values[name] if name in self._values else self._config.getvalue(name)

    def getoption(self, name: str, default: object = None) -> object:
        if name in self._values:
            return self._values[name]
        return self._config.getoption(name, default=default)

    def __getattr__(self, name: str) -> object:
        return getattr(self._config, name)


class Worker:
    """Records the tests it is told to run (by their index in its collection)."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent.append(indexes)


def files_given_out(config: Options, collection: list[str]) -> list[str]:
    """The files, in the order the scheduler gives them to one worker."""
    scheduler = pytest_xdist_make_scheduler(config=config, log=None)
    scheduler.collection = collection
    by_size: dict[str, dict[str, bool]] = {}
    for nodeid in collection:
        by_size.setdefault(nodeid.split("::")[0], {})[nodeid] = False
    # as xdist fills its queue: the files with the most tests first
    for scope, tests in sorted(by_size.items(), key=lambda item: -len(item[1])):
        scheduler.workqueue[scope] = tests
    worker = Worker()
    scheduler.registered_collections[worker] = collection
    while scheduler.workqueue:
        scheduler._assign_work_unit(worker)
    return [collection[indexes[0]].split("::")[0] for indexes in worker.sent]


COLLECTION = [
    "tests/test_many.py::a",
    "tests/test_many.py::b",
    "tests/test_many.py::c",
    "notebooks/4_mnist_train.ipynb::Cell 0",
    "tests/test_cli.py::a",
    "tests/test_cli.py::b",
]


def test_shuffled_the_files_go_out_in_the_shuffled_order(request):
    shuffled = {**NOT_SHUFFLED, "random_order_enabled": True}
    given = files_given_out(Options(request.config, **shuffled), COLLECTION)
    assert given == ["tests/test_many.py", "notebooks/4_mnist_train.ipynb", "tests/test_cli.py"]


def test_a_seed_alone_shuffles_too(request):
    seeded = {**NOT_SHUFFLED, "random_order_seed": "42"}  # --random-order-seed=42
    given = files_given_out(Options(request.config, **seeded), COLLECTION)
    assert given == ["tests/test_many.py", "notebooks/4_mnist_train.ipynb", "tests/test_cli.py"]


def test_not_shuffled_or_not_by_file_xdist_schedules_as_it_does(request):
    assert (
        pytest_xdist_make_scheduler(config=Options(request.config, **NOT_SHUFFLED), log=None)
        is None
    )
    shuffled_by_test = {**NOT_SHUFFLED, "random_order_enabled": True, "dist": "load"}
    assert (
        pytest_xdist_make_scheduler(config=Options(request.config, **shuffled_by_test), log=None)
        is None
    )
