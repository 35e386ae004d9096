"""Part 6's engine: real process groups (gloo, 2 processes on 127.0.0.1, launched by torchrun),
not a simulation. What must hold: DDP's averaged gradient is the single-process gradient, the
copies stay identical, every sample is seen once per epoch on both data paths, only rank 0
saves (a checkpoint a plain ``Net`` loads), the distributed test score is the single-process
one, and a world that cannot form fails fast with a message that says where and how long.

Launching processes costs seconds (each imports torch), so one launch of this file as a worker
(``torchrun ... tests/test_distributed.py --worker OUT``) checks many things, and the tests
below read what each rank wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from mnist_dissected import distributed, launch, models, process_group, sharding
from mnist_dissected.data import TensorBatches
from mnist_dissected.models import Net
from mnist_dissected.recipes import get_recipe

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 150  # a loaded 2-core machine needs ~20 s; a hang must not block forever


# --------------------------------------------------------------------------- in one process


@pytest.mark.parametrize("n", [1, 3, 10, 11])
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_indices_cut_like_distributed_sampler(n, world_size, drop_last):
    for shuffle, epoch in [(False, 0), (True, 0), (True, 1)]:
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch))
            if shuffle
            else torch.arange(n)
        )
        parts = []
        for rank in range(world_size):
            sampler = DistributedSampler(
                range(n),
                num_replicas=world_size,
                rank=rank,
                shuffle=shuffle,
                seed=7,
                drop_last=drop_last,
            )
            sampler.set_epoch(epoch)
            mine = sharding.shard_indices(
                order, rank=rank, world_size=world_size, drop_last=drop_last
            )
            assert mine.tolist() == list(sampler)
            assert len(mine) == sharding.shard_size(n, world_size, drop_last=drop_last)
            parts.append(mine.tolist())
        seen = {i for part in parts for i in part}
        assert seen <= set(range(n))
        if not drop_last:
            assert seen == set(range(n))  # every sample, some twice (padding)


def test_sharded_batches_give_each_rank_its_share_of_the_same_permutation():
    n, world_size, b = 23, 2, 4
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)

    def whole():  # what every rank builds: same data, same seed
        return TensorBatches(images, torch.arange(n), batch_size=b, shuffle=True, seed=3)

    shards = [sharding.ShardedBatches(whole(), rank=r, world_size=world_size) for r in range(2)]
    reference = whole()
    for _ in range(2):  # two epochs: a new permutation each, the same on every rank
        perm = reference.order()
        epoch = [[t.tolist() for _, t in shard] for shard in shards]
        assert [len(e) for e in epoch] == [len(s) for s in shards] == [3, 3]
        for r, batches in enumerate(epoch):
            assert all(len(batch) <= b for batch in batches)
            flat = [i for batch in batches for i in batch]
            assert flat == sharding.shard_indices(perm, rank=r, world_size=2).tolist()
        assert {i for e in epoch for batch in e for i in batch} == set(range(n))
    for images_, targets in sharding.ShardedBatches(whole(), rank=1, world_size=2):
        assert images_.flatten().long().tolist() == targets.tolist()  # images follow targets


def test_world_from_the_environment(monkeypatch):
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }
    assert process_group.launched_by_torchrun(env) and process_group.World.from_env(
        env
    ) == process_group.World(3, 4, 1)
    assert not process_group.World.from_env(env).is_main
    assert not process_group.launched_by_torchrun(
        {k: v for k, v in env.items() if k != "MASTER_PORT"}
    )
    assert process_group.World.from_env({}) == process_group.World(0, 1, 0)
    assert process_group.pick_backend("cpu") == "gloo"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # as on a Mac
    assert process_group.ddp_device("mps") == torch.device("cpu"), "MPS has no DDP backend"
    with pytest.raises(process_group.WorldError, match="does not describe a world"):
        process_group.World.from_env({**env, "RANK": "4"})
    with pytest.raises(process_group.WorldError, match="does not describe a world"):
        process_group.World.from_env({**env, "RANK": "zero"})
    for name in process_group.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with (
        pytest.raises(process_group.WorldError, match=r"MASTER_ADDR.*not set"),
        process_group.init_distributed(),
    ):
        pass


@pytest.mark.slow
def test_world_of_one_without_torchrun(monkeypatch, tmp_path):
    """Plain python: the same code forms a world of one, saves, scores like train.evaluate."""
    from mnist_dissected.checkpoint import load_checkpoint
    from mnist_dissected.train import evaluate

    for name in process_group.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(0)
    data = TensorBatches(torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,)), batch_size=16)
    with process_group.init_distributed(timeout_s=10) as world:
        assert world == process_group.World(0, 1, 0) and process_group.is_main_process()
        model = distributed.wrap_ddp(Net(dropout=0))
        assert models.unwrap(model) is model.module and models.unwrap(model.module) is model.module
        assert distributed.evaluate_distributed(model, data) == evaluate(model.module, data)
        saved = distributed.save_on_main(tmp_path / "one.pt", model, seed=0)
    assert not torch.distributed.is_initialized()  # destroyed on the way out
    loaded, meta = load_checkpoint(saved, Net(dropout=0))
    assert meta["seed"] == 0
    for p, q in zip(loaded.parameters(), model.module.parameters(), strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------- real processes


def _worker(out: Path) -> None:
    """Runs in every rank under torchrun; writes what it saw to ``out/rank{r}.json``."""
    import mnist_dissected.checkpoint as checkpoint
    from mnist_dissected.train import evaluate

    report: dict = {}
    with process_group.init_distributed(backend="gloo", timeout_s=30) as world:
        r, n = world.rank, world.world_size
        report["world"] = [r, n, world.local_rank]

        # Whole-tensor path: 23 samples, 4 per rank per batch, 2 epochs.
        whole = TensorBatches(
            torch.arange(23.0).view(23, 1, 1, 1),
            torch.arange(23),
            batch_size=4,
            shuffle=True,
            seed=3,
        )
        shard = sharding.shard_batches(whole)
        report["tensor_epochs"] = [[t.tolist() for _, t in shard] for _ in range(2)]

        # DataLoader path: DistributedSampler, set_epoch before each epoch.
        loader = sharding.distributed_loader(
            TensorDataset(torch.arange(23)), 4, shuffle=True, seed=5
        )
        report["loader_epochs"] = []
        for epoch in range(2):
            sharding.set_epoch(loader, epoch)
            report["loader_epochs"].append([b[0].tolist() for b in loader])

        # A test-set score split across ranks equals the single-process score, exactly.
        torch.manual_seed(0)  # same data and model on every rank
        images, targets = torch.randn(70, 1, 28, 28), torch.randint(0, 10, (70,))
        model = distributed.wrap_ddp(Net(dropout=0))
        tensors = TensorBatches(images, targets, batch_size=16)
        dataset_loader = DataLoader(TensorDataset(images, targets), batch_size=16)
        report["eval"] = {
            "tensors": [
                distributed.evaluate_distributed(model, tensors),
                evaluate(model.module, tensors),
            ],
            "loader": [
                distributed.evaluate_distributed(model, dataset_loader),
                evaluate(model.module, dataset_loader),
            ],
        }
        report["mean_over_ranks"] = process_group.mean_over_ranks([float(r), 10.0 * r])

        # Only rank 0 writes; the others return once the file is there.
        calls = []
        original = checkpoint.save_checkpoint

        def counting_save(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        checkpoint.save_checkpoint = counting_save
        path = out / "ddp.pt"
        saved = distributed.save_on_main(path, model, seed=11)
        report["save"] = {
            "returned": str(saved) if saved else None,
            "calls": len(calls),
            "file_there_after": path.is_file(),
            "param_sum": sum(p.double().sum().item() for p in model.module.parameters()),
        }
        checkpoint.save_checkpoint = original

        # The whole story on real MNIST: one training batch, one test batch.
        try:
            run = distributed.train_ddp("net", "fast", seed=1, dry_run=True, verbose=False)
            report["train_ddp"] = {
                "n": run.test["n"],
                "accuracy": run.test["accuracy"],
                "steps": len(run.history[0]["step_losses"]),
                "plain": type(run.model).__name__,
                "fields": sorted(run.history[0]),
            }
        except Exception as e:  # reported, and the test of it fails with the message
            report["train_ddp"] = {"error": f"{type(e).__name__}: {e}"}
            process_group.barrier()
    (out / f"rank{r}.json").write_text(json.dumps(report))


class Launch:
    """A command started at once and waited for later: the launches below run side by side
    (most of their time is importing torch and waiting for timeouts).

    It runs in a session of its own, so a hang ends *all* its processes (torchrun and its
    workers: killing torchrun alone leaves a stuck worker holding the output pipes, and
    reading them then blocks for good), and before that every Python process in it prints
    where it is stuck (``faulthandler`` on SIGABRT), so the failure says where it hung."""

    def __init__(self, command: list[str], **env: str) -> None:
        env = {
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
            "PYTHONFAULTHANDLER": "1",
            "TORCH_CPP_LOG_LEVEL": "FATAL",
            **env,
        }
        # No core file in the checkout from a process ended by SIGABRT (the limit is inherited).
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
        try:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **env},
                start_new_session=True,
            )
        finally:
            resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
        self._result: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        """Return code, stdout, stderr (waits; a hang fails after LAUNCH_TIMEOUT_S, with the
        stacks of every process of the launch)."""
        if self._result is None:
            try:
                out, err = self.process.communicate(timeout=LAUNCH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                out, err = self._end(dump_stacks=True)
                pytest.fail(
                    f"{' '.join(self.process.args)} hung for {LAUNCH_TIMEOUT_S} s; where each "
                    f"process was:\n{err[-8000:]}\nstdout:\n{out[-2000:]}"
                )
            self._result = (self.process.returncode, out, err)
        return self._result

    def stop(self) -> None:
        if self._result is None and self.process.poll() is None:
            self._end(dump_stacks=False)

    def _end(self, *, dump_stacks: bool) -> tuple[str, str]:
        if dump_stacks:  # the workers, not torchrun: torchrun ends them when told to end
            for pid in _descendants(self.process.pid) or [self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)
            time.sleep(3)
        launch._end_session(self.process)
        return self.process.communicate(timeout=30)


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux's /proc; none elsewhere)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, children.read_text().split()):
                found += [child, *_descendants(child)]
    return found


#: One process, two worlds of 2 that never form (3-second timeout each): first as rank 1 at
#: a port where nobody listens (the error printed), then as rank 0 whose rank 1 never comes
#: (the error left uncaught, as a script would show it).
NEVER_FORMS = """
import os, sys
from mnist_dissected.process_group import WorldError, init_distributed
os.environ.update(RANK="1", MASTER_PORT=sys.argv[1])
try:
    with init_distributed(backend="gloo", timeout_s=3):
        pass
except WorldError as e:
    print(e, flush=True)
os.environ.update(RANK="0", MASTER_PORT=sys.argv[2])
with init_distributed(backend="gloo", timeout_s=3):
    pass
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    two = dict(WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", RANK="0", MASTER_PORT="1")
    two["PYTHON_COLORS"] = "0"  # plain tracebacks: Python 3.13 colours them under FORCE_COLOR
    ports = [process_group.free_port(), process_group.free_port()]
    launches = {
        "worker": Launch(
            launch.torchrun_command([str(Path(__file__)), "--worker", str(out)]),
            TMPDIR=str(tmp_path_factory.mktemp("torchrun_tmp")),  # its torchelastic_* logs
        ),
        "demo": Launch(
            launch.torchrun_command(
                ["-m", "mnist_dissected.dist_demo", "all", "--show-difference"]
            ),
            TMPDIR=str(tmp_path_factory.mktemp("torchrun_tmp")),
        ),
        "never": Launch([sys.executable, "-c", NEVER_FORMS, *map(str, ports)], **two),
    }
    yield {"out": out, "ports": ports, **launches}
    for started in launches.values():
        started.stop()


@pytest.fixture(scope="module")
def ranks(launched) -> list[dict]:
    status, _, err = launched["worker"].result()
    assert status == 0, err[-3000:]
    out = launched["out"]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)] + [out]


@pytest.mark.slow
def test_two_real_processes_formed_one_world(ranks):
    assert [ranks[r]["world"] for r in range(2)] == [[0, 2, 0], [1, 2, 1]]


@pytest.mark.slow
def test_tensor_path_shards_like_distributed_sampler(ranks):
    reference = TensorBatches(
        torch.arange(23.0).view(23, 1, 1, 1), torch.arange(23), batch_size=4, shuffle=True, seed=3
    )
    for epoch in range(2):
        perm = reference.order()
        per_rank = [[i for b in ranks[r]["tensor_epochs"][epoch] for i in b] for r in range(2)]
        assert [len(ranks[r]["tensor_epochs"][epoch]) for r in range(2)] == [3, 3]
        for r in range(2):
            assert per_rank[r] == perm[r::2].tolist() + (perm[:1].tolist() if r else [])
        assert sorted(per_rank[0] + per_rank[1]) == sorted([*range(23), perm[0].item()])
    assert ranks[0]["tensor_epochs"][0] != ranks[0]["tensor_epochs"][1]  # reshuffled


@pytest.mark.slow
def test_loader_path_shards_with_distributed_sampler(ranks):
    for epoch in range(2):
        parts = [[i for b in ranks[r]["loader_epochs"][epoch] for i in b] for r in range(2)]
        assert len(parts[0]) == len(parts[1]) == 12  # 23 padded to 24
        assert set(parts[0]) | set(parts[1]) == set(range(23))
    assert ranks[0]["loader_epochs"][0] != ranks[0]["loader_epochs"][1]  # set_epoch reshuffled


@pytest.mark.slow
def test_distributed_score_equals_the_single_process_score(ranks):
    for r in range(2):
        for path in ("tensors", "loader"):
            split, single = ranks[r]["eval"][path]
            assert split == single  # loss and accuracy, bit for bit
            assert round(split[1] * 70) == split[1] * 70  # a count out of 70: no sample twice
    assert ranks[0]["eval"] == ranks[1]["eval"]


@pytest.mark.slow
def test_mean_over_ranks(ranks):
    assert ranks[0]["mean_over_ranks"] == ranks[1]["mean_over_ranks"] == [0.5, 5.0]


@pytest.mark.slow
def test_only_rank_0_saves_and_a_plain_net_loads_it(ranks):
    from mnist_dissected.checkpoint import load_checkpoint, read_checkpoint

    out = ranks[2]
    assert ranks[0]["save"]["calls"] == 1 and ranks[1]["save"]["calls"] == 0
    assert ranks[0]["save"]["returned"] == str(out / "ddp.pt")
    assert ranks[1]["save"]["returned"] is None
    assert ranks[1]["save"]["file_there_after"]  # rank 1 waited for rank 0's file
    assert not any(k.startswith("module.") for k in read_checkpoint(out / "ddp.pt")["state_dict"])
    model, meta = load_checkpoint(out / "ddp.pt", Net())
    assert meta["seed"] == 11
    total = sum(p.double().sum().item() for p in model.parameters())
    assert total == ranks[0]["save"]["param_sum"] == ranks[1]["save"]["param_sum"]
    assert [p.name for p in out.iterdir() if p.suffix == ".pt"] == ["ddp.pt"]  # no leftovers


@pytest.mark.slow
def test_train_ddp_dry_run_on_mnist(ranks):
    for r in range(2):
        result = ranks[r]["train_ddp"]
        assert "error" not in result, result.get("error")
        assert result["n"] == 1000 and result["steps"] == 1 and result["plain"] == "Net"
    assert ranks[0]["train_ddp"] == ranks[1]["train_ddp"]
    # The same fit, so the same history as one process's (train_seconds included).
    from mnist_dissected.recipes import make_optimizer
    from mnist_dissected.train import fit

    torch.manual_seed(0)
    tiny = TensorBatches(torch.randn(8, 1, 28, 28), torch.arange(8) % 10, batch_size=4)
    model = Net()
    optimizer, _ = make_optimizer(model, get_recipe("classic"), steps_per_epoch=2)
    one_process = fit(model, tiny, tiny, optimizer, progress=False, verbose=False)
    assert ranks[0]["train_ddp"]["fields"] == sorted(one_process[0])


@pytest.mark.slow
def test_demo_ddp_step_gradients_and_parameters(launched, capsys):
    status, out, err = launched["demo"].result()
    assert status == 0, err[-3000:]
    assert "rank 0: all_reduce(SUM): [1.0, 10.0] -> [3.0, 30.0]" in out
    assert "rank 1: broadcast(src=0): [0.0, 0.0] -> [42.0, 7.0]" in out
    assert "rank 1: shuffle=False: [1, 3, 0]" in out
    assert "bitwise identical on all ranks" in out
    lines = out.splitlines()
    assert lines.index("rank 0: shuffle=False: [0, 2, 4]") + 1 == lines.index(
        "rank 1: shuffle=False: [1, 3, 0]"
    )  # in rank order
    diff = float(re.search(r"max abs difference (\S+)\)", out).group(1))
    assert diff < 1e-6
    with capsys.disabled():
        print(f"\n[DDP vs single process: max abs gradient difference {diff:.1e}]")


@pytest.mark.slow
def test_a_world_that_cannot_form_fails_fast_and_says_why(launched):
    """A rank 1 at a port nobody listens on, and a rank 0 whose peer never comes: both give up
    after the 3-second timeout with the address and the seconds, not a hang."""
    status, out, err = launched["never"].result()
    wrong_port, alone = launched["ports"]
    assert status != 0
    start = "the process group did not form within 3 s: rank {} of 2 waited for its peers at "
    assert out.startswith(start.format(1) + f"127.0.0.1:{wrong_port}"), out
    assert "connect" in out and "Start all 2 processes" in out
    uncaught = err.strip().splitlines()[-1]
    assert uncaught.startswith(
        "mnist_dissected.process_group.WorldError: " + start.format(0) + f"127.0.0.1:{alone}"
    ), uncaught
    assert "clients" in uncaught


#: A worker that never finishes: it writes its PID, then waits.
STUCK_WORKER = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], f"worker{os.environ['RANK']}.pid").write_text(str(os.getpid()))
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_timed_out_launch_leaves_no_worker_behind(tmp_path, monkeypatch):
    """run_torchrun's timeout ends torchrun and its workers, not torchrun alone (a worker stuck
    in a collective was once left spinning after the notebook cell gave up), and leaves no
    folder in the temporary directory (torchrun's own logs went to a torchelastic_* folder
    there at every launch)."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_WORKER)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # this process's temporaries
    monkeypatch.setenv("TMPDIR", str(temporary))  # torchrun's and its workers'
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        launch.run_torchrun([str(script), str(tmp_path)], timeout_s=15)
    assert any(arg.startswith(f"--log-dir={temporary}") for arg in timed_out.value.cmd)
    assert list(temporary.iterdir()) == [], "the launch left temporaries behind"
    pids = [int(f.read_text()) for f in sorted(tmp_path.glob("worker*.pid"))]
    assert len(pids) == 2, "both workers had started"
    deadline = time.monotonic() + 5
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, pids)), f"workers still running: {pids}"


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(Path(sys.argv[2]))


CLOSE_HANGS = """
import ctypes
import torch.distributed as dist
from mnist_dissected import process_group

process_group.CLOSE_TIMEOUT_S = 0.5
# torch 2.2's gloo deadlock: the destroy blocks in C++ *holding the GIL* (PyDLL keeps it held)
dist.destroy_process_group = lambda: ctypes.PyDLL(None).sleep(60)
print("all work done", flush=True)
process_group.close_group(process_group.World(rank=1, world_size=2))
print("never reached")
"""


def test_a_rank_whose_group_will_not_close_ends_instead_of_hanging():
    """A destroy that deadlocks holding the GIL (torch 2.2's gloo, seen in CI: no Python
    thread can run, so a watchdog thread of Python's could not help) must not hang the
    launcher: faulthandler's watchdog ends the rank with status 1 and its threads' stacks."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_HANGS], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - start < 30, "bounded: well under the hang"
    assert done.returncode == 1
    assert done.stdout == "all work done\n"
    assert "Timeout (0:00:00.500000)!" in done.stderr, done.stderr
    assert "in close_group" in done.stderr, "the stack says where it hung"
