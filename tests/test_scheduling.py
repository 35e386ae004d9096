"""The suite's own scheduling on pytest-xdist workers (conftest.py): which file goes out first.

Why: a file that reads a model from the cache while another worker trains it waits at the lock,
idle, and a long file given out last makes the whole run wait for it; conftest.py's scheduler
hands out Part 4 (the trainer) and the longest files first. These tests drive that scheduler
as xdist does, with a worker that only records what it was sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SCHEDULE_FIRST, pytest_xdist_make_scheduler

ROOT = Path(__file__).resolve().parents[1]
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
    "tests/test_cli.py::a",
    f"{SCHEDULE_FIRST[1]}::Cell 0",
    f"{SCHEDULE_FIRST[0]}::Cell 0",
]


def test_part_4_and_the_long_files_go_out_first_then_the_rest_as_xdist_orders_them(
    request,
):
    given = files_given_out(Options(request.config, **NOT_SHUFFLED), COLLECTION)
    assert given == [
        SCHEDULE_FIRST[0],
        SCHEDULE_FIRST[1],
        "tests/test_cli.py",
        "tests/test_many.py",
    ]


def test_shuffled_the_files_go_out_in_the_shuffled_order(request):
    shuffled = {**NOT_SHUFFLED, "random_order_enabled": True}
    given = files_given_out(Options(request.config, **shuffled), COLLECTION)
    assert given == [
        "tests/test_many.py",
        "tests/test_cli.py",
        SCHEDULE_FIRST[1],
        SCHEDULE_FIRST[0],
    ]


def test_other_distributions_keep_xdists_own_scheduler(request):
    assert (
        pytest_xdist_make_scheduler(config=Options(request.config, dist="load"), log=None) is None
    )


def test_every_file_scheduled_first_exists_and_comes_once():
    assert len(set(SCHEDULE_FIRST)) == len(SCHEDULE_FIRST)
    missing = [name for name in SCHEDULE_FIRST if not (ROOT / name).is_file()]
    assert not missing, f"renamed or gone: {missing} (conftest.py's SCHEDULE_FIRST)"
