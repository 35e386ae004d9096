"""Part 6's exercises (``mnist_dissected.exercises_part6``) and every solution of the notebook.

Why this file exists: a check that passes a wrong answer, or fails the right one, teaches the
wrong thing. So each check must pass the notebook's own solution (read from its collapsed
``<details>`` block in ``solutions/``, not copied here), report the notebook's stub as
not solved, and fail typical wrong answers with the message a learner should read. The notebook
no longer runs its solutions on Run All (its old "Appendix: the solutions, checked" is gone):
every solution block, the four questions' included, runs here with the asserts it carries."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnist_dissected import exercises, exercises_part6
from mnist_dissected.exercises import ExerciseFailed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import student_edition as edition  # noqa: E402 (tools/, put on the path just above)

NOTEBOOK = ROOT / "notebooks" / "6_mnist_distributed.ipynb"
CHECKS = {
    name: getattr(exercises_part6, f"check_{name}")
    for name in ("shard_by_hand", "ddp_step", "warmup_scaled_lr")
}
#: Cells besides the imports that the solutions use: §6.3's five samples and their sampler,
#: the fast recipe's batches, and §6.4's 16 images, Net and whole-batch gradient.
CELLS = (
    "tiny = list(range(5))",
    "def sampler_epochs(",
    "fast_batches = make_batches(",
    "images16, targets16 = train_split",
)


def notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def solutions_notebook() -> dict:
    return json.loads(edition.solutions_path(NOTEBOOK).read_text(encoding="utf-8"))


def the_exercise(name: str) -> edition.Exercise:
    found = edition.exercises(notebook(), solutions_notebook())
    return next(e for e in found if e.name == name)


def solutions() -> dict[int, list[str]]:
    return edition.numbered_solutions(solutions_notebook())


@pytest.fixture(scope="module")
def namespace():
    built = edition.notebook_namespace(notebook(), CELLS)
    yield built
    torch.set_printoptions(profile="default")  # the imports cell sets its own


# --------------------------------------------------------------------------- each check


def test_three_graded_exercises_in_order():
    assert [e.name for e in edition.exercises(notebook())] == list(CHECKS)


@pytest.mark.parametrize("name", CHECKS)
def test_the_notebook_solution_passes_its_check(name, namespace, capsys):
    edition.run_code(the_exercise(name).solution, namespace)
    CHECKS[name](namespace[name])
    assert capsys.readouterr().out.startswith(f"✓ {name}: ")


@pytest.mark.parametrize("name", CHECKS)
def test_the_notebook_stub_is_reported_not_solved(name, capsys):
    exercise = the_exercise(name)
    assert "raise NotImplementedError  # your code here" in exercise.stub
    assert exercise.check == f"check_{name}({name})", "one call per exercise"
    scope: dict = {"torch": torch}
    edition.run_code(exercise.stub, scope)
    CHECKS[name](scope[name])
    assert capsys.readouterr().out == exercises.NOT_SOLVED.format(name=name) + "\n"


# --------------------------------------------------------------------------- wrong answers


def shard_with(*, pad=True, chunks=False, shuffle=True, epoch_seed=True, rank_seed=False):
    """A shard_by_hand with one typical mistake (each flag at its default: right)."""

    def shard_by_hand(n, rank, world_size, *, epoch, seed=0, drop_last=False):
        draw = seed + (epoch if epoch_seed else 0) + (rank if rank_seed else 0)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(draw)).tolist()
        order = order if shuffle else list(range(n))
        per_rank = n // world_size if drop_last or not pad else math.ceil(n / world_size)
        total = per_rank * world_size
        order = (order * math.ceil(total / n))[:total]
        if chunks:
            return order[rank * per_rank : (rank + 1) * per_rank]
        return order[rank:total:world_size]

    return shard_by_hand


def ddp_with(*, broadcast=True, average=True, share=True, step=1.0):
    """A ddp_step with one typical mistake: no broadcast, the gradients summed (not averaged),
    each replica's own gradient kept, no step (0) or a step up the gradient (-1)."""

    def ddp_step(replicas, shards, lr):
        if broadcast:
            with torch.no_grad():
                for replica in replicas[1:]:
                    for p, q in zip(replica.parameters(), replicas[0].parameters(), strict=True):
                        p.copy_(q)
        for replica, (images, targets) in zip(replicas, shards, strict=True):
            replica.zero_grad()
            F.nll_loss(replica(images), targets).backward()
        if share:
            for group in zip(*(r.parameters() for r in replicas), strict=True):
                total = sum(p.grad for p in group)
                for p in group:
                    p.grad = total / len(replicas) if average else total.clone()
        with torch.no_grad():
            for replica in replicas:
                for p in replica.parameters():
                    p -= step * lr * p.grad

    return ddp_step


def lr_with(*, warmup=True, start_at_zero=False, ahead=0, rule=lambda k: k):
    """A warmup_scaled_lr with one typical mistake."""

    def warmup_scaled_lr(step, *, base_lr, base_batch, batch, warmup_steps):
        target = base_lr * rule(batch / base_batch)
        if not warmup or step + ahead >= warmup_steps:
            return target
        first = 0.0 if start_at_zero else base_lr
        return first + (target - first) * (step + ahead) / warmup_steps

    return warmup_scaled_lr


WRONG = [
    ("shard_by_hand", lambda *a, **k: None, r"should return a list of indices, not None"),
    ("shard_by_hand", shard_with(pad=False), r"returned 2 indices, expected 3: pad the order"),
    ("shard_by_hand", shard_with(chunks=True), r"Each rank takes a contiguous block"),
    ("shard_by_hand", shard_with(shuffle=False), r"an unshuffled order: shuffle first"),
    ("shard_by_hand", shard_with(epoch_seed=False), r"The same order in every epoch"),
    ("shard_by_hand", shard_with(rank_seed=True), r"Each rank drew its own permutation"),
    ("ddp_step", ddp_with(average=False), r"That is the sum of the ranks' gradients"),
    ("ddp_step", ddp_with(share=False), r"That is this rank's own gradient: average it"),
    ("ddp_step", ddp_with(broadcast=False), r"gradients taken at each replica's own weights"),
    ("ddp_step", ddp_with(step=0.0), r"The weights did not move"),
    ("ddp_step", ddp_with(step=-1.0), r"That climbs the loss"),
    ("warmup_scaled_lr", lambda step, **k: None, r"\(0, base_lr=.*should be a number, not None"),
    ("warmup_scaled_lr", lr_with(warmup=False), r"No warm-up"),
    ("warmup_scaled_lr", lr_with(start_at_zero=True), r"The warm-up starts at 0"),
    ("warmup_scaled_lr", lr_with(ahead=1), r"The warm-up is one step ahead"),
    ("warmup_scaled_lr", lr_with(rule=math.sqrt), r"square-root rule"),
    ("warmup_scaled_lr", lr_with(rule=lambda k: 1 / k), r"The rate shrinks as the batch grows"),
]


@pytest.mark.parametrize("name, wrong, message", WRONG)
def test_a_typical_wrong_answer_fails_with_what_is_wrong(name, wrong, message):
    with pytest.raises(ExerciseFailed, match=message) as failed:
        CHECKS[name](wrong)
    assert "\n" not in str(failed.value)


def test_the_messages_say_where():
    """The first index or step that is off, and both values."""
    with pytest.raises(
        ExerciseFailed, match=r"first is at index \(0,\): got 0\.0125, expected 0\.01 "
    ):
        CHECKS["warmup_scaled_lr"](lr_with(ahead=1))
    with pytest.raises(ExerciseFailed, match=r"replica 0's conv1\.weight\.grad after ddp_step"):
        CHECKS["ddp_step"](ddp_with(average=False))


# --------------------------------------------------------------------------- the solutions


#: What each answer's prose quotes, beyond the asserts its blocks carry.
QUOTED = {
    5: "[4, 3, 0] [4, 3, 0]\n",
    6: "True\n",
    7: "[0.01, 0.0175, 0.025, 0.0325, 0.04, 0.04]\n",
}


@pytest.mark.slow  # the set-up loads the fast recipe's batches
def test_every_solution_runs_and_holds_what_its_answer_says(namespace):
    found = solutions()
    assert sorted(found) == list(range(1, 8))
    for number, blocks in found.items():
        assert blocks, f"exercise {number}: its solution has no code"
        printed = "".join(edition.run_code(block, namespace) for block in blocks)
        if number in QUOTED:
            assert printed == QUOTED[number], (number, printed)
