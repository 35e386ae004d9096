"""Part 4's guards: a run that diverged stops with one line, a run that learns nothing says so.

Why this module exists: a learning rate far off the mark does not crash PyTorch. ``--lr 1e30``
trains to a NaN loss and, unguarded, the NaN model is scored and saved as a success; ``--lr
1.0`` (today's example's rate, meant for Adadelta) given to SGD with momentum leaves the model
at chance level, 10% accuracy, silently. :func:`~mnist_dissected.train.train_epoch` and
:func:`~mnist_dissected.train.fit` (so also Part 6's DDP training, which is ``fit``) call the
checks here; each is one line there, so the loop Part 4 dissects stays readable.

- :class:`LossWatch`, :func:`stop_if_diverged`: a non-finite loss raises
  :class:`TrainingDivergedError`, naming the epoch, the step and the learning rate. Checking
  costs no wait for the device (see :class:`LossWatch`).
- :func:`check_progress`: after each epoch, a NaN validation loss stops the run too, and a run
  still at chance level gets a :class:`ChanceLevelWarning` that names the likely cause.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .errors import MnistDissectedError
from .process_group import is_main_process

#: The loss of a model that guesses: ln 10 for MNIST's ten equally frequent digits.
CHANCE_LOSS = math.log(10)
#: Chance-level accuracy (one digit in ten) and loss are judged once the run has taken this
#: many steps: fewer can leave a healthy run at chance (the example's SGD, lr 0.01, batch 64,
#: is still at 2.28 and 18% after 32 steps; it is near 99% after one epoch of 860).
MIN_STEPS_TO_JUDGE = 100

#: Learning rates that usually work with each optimizer (the example's SGD with momentum,
#: PyTorch's default for Adam; the fast recipe's one-cycle peaks at 10 times it).
USUAL_LR = {torch.optim.SGD: 0.01, torch.optim.Adam: 0.001}


class TrainingDivergedError(MnistDissectedError, FloatingPointError):
    """The loss became NaN or infinite: the weights are garbage from that step on, so the run
    stops instead of returning (and the CLI saving) a NaN model. Usually the learning rate is
    too large for the optimizer."""


class ChanceLevelWarning(MnistDissectedError, UserWarning):
    """After its first :data:`MIN_STEPS_TO_JUDGE` steps the model still does no better than
    guessing. A warning, not an error: the run may be an experiment on purpose. (Derives from
    the package's error base too, so that ``-W error`` turns it into the CLI's one line.)"""


def learning_rate(optimizer: Any) -> float:
    """The rate the run was given (``--lr``): one-cycle's peak, StepLR's starting rate, else the
    current one (the captured CUDA-graph step's Adam keeps its one-cycle rates in a table)."""
    table = getattr(optimizer, "lrs", None)  # fastpath.TableAdam
    if table is not None:
        rate = torch.as_tensor(table).max()
    else:
        group = getattr(optimizer, "optimizer", optimizer).param_groups[0]
        rate = group.get("max_lr", group.get("initial_lr", group["lr"]))
    return float(f"{float(rate):.6g}")  # as given: 0.01, not float32's 0.009999999776


def diverged(
    value: float, *, epoch: int, step: int | None, optimizer: Any
) -> TrainingDivergedError:
    """The one-line error for a non-finite loss at ``step`` (1-based) of ``epoch`` (``None``:
    the validation loss after it)."""
    where = f"at epoch {epoch}, step {step}" if step is not None else f"after epoch {epoch}"
    what = "the loss" if step is not None else "the validation loss"
    return TrainingDivergedError(
        f"{what} became {value} {where} (learning rate {learning_rate(optimizer)!r}): the "
        "training diverged and stopped; lower the learning rate (--lr)"
    )


def stop_if_diverged(
    losses: Sequence[float], *, epoch: int, optimizer: Any, first_step: int = 1
) -> None:
    """Raise :class:`TrainingDivergedError` at the first non-finite value of ``losses`` (the
    step losses of ``epoch``, the first one being step ``first_step``)."""
    for step, value in enumerate(losses, start=first_step):
        if not math.isfinite(value):
            raise diverged(value, epoch=epoch, step=step, optimizer=optimizer)


class LossWatch:
    """Stops :func:`~mnist_dissected.train.train_epoch` at its first non-finite loss as early
    as costs nothing: reading a loss makes the CPU wait for the device, which the loop avoids.

    - On the CPU (``every_step``) the loss is computed by the time it is read: each step is
      checked at once, so a NaN at step 3 stops at step 3, not after a wasted epoch.
    - On an accelerator (CUDA, MPS) the losses are checked where the loop waits anyway: at each
      ``log_interval`` line and at the end of the epoch (the fast recipe logs nothing: a NaN
      there costs the rest of that epoch, seconds on a GPU, then stops before validation).
    - ``active=False`` (data-parallel training): ranks see different batches, so one rank may
      see a NaN a step before another and leave while the others wait for it in a collective.
      Then :func:`~mnist_dissected.train.fit` checks the losses averaged over ranks at the end
      of the epoch, the same on every rank, so all stop together.
    """

    def __init__(
        self, optimizer: Any, *, epoch: int, active: bool = True, every_step: bool = False
    ) -> None:
        self.optimizer, self.epoch, self.active = optimizer, epoch, active
        self.every_step = every_step  # the losses are on the CPU: reading one is free
        self.checked = 0  # losses[:checked] are known to be finite

    def step(self, losses: list[torch.Tensor], *, synced: bool = False) -> None:
        """After each step: check the new losses if that needs no wait (``synced``: the loop
        has just waited for the device, e.g. to print a log line)."""
        if self.active and (synced or self.every_step):
            new = torch.stack(losses[self.checked :]).tolist()
            stop_if_diverged(
                new, epoch=self.epoch, optimizer=self.optimizer, first_step=self.checked + 1
            )
            self.checked = len(losses)

    def end(self, values: list[float]) -> list[float]:
        """At the end of the epoch (the losses read back as numbers): check the rest, return
        ``values``."""
        if self.active:
            stop_if_diverged(
                values[self.checked :],
                epoch=self.epoch,
                optimizer=self.optimizer,
                first_step=self.checked + 1,
            )
        return values


def likely_cause(optimizer: Any) -> str:
    """What usually leaves a model at chance: the learning rate, compared with the rates that
    usually work with this optimizer (``--lr 1.0``, for example, is Adadelta's rate in today's
    pytorch/examples, not SGD's)."""
    lr, inner = learning_rate(optimizer), getattr(optimizer, "optimizer", optimizer)
    kind = next((k for k in USUAL_LR if isinstance(inner, k)), None)
    if kind is None:
        return f"check the learning rate ({lr!r}) and that the labels match the images"
    name, usual = kind.__name__, USUAL_LR[kind]
    if lr > 20 * usual:
        adadelta = " (1.0 is the rate of today's example's Adadelta)" if lr == 1.0 else ""
        return (
            f"the learning rate {lr!r} is far too large for {name}{adadelta}: lower it (--lr), "
            f"e.g. to {usual!r}"
        )
    if lr < usual / 20:
        return f"the learning rate {lr!r} is far too small for {name}: raise it (--lr) to {usual!r}"
    return f"the learning rate {lr!r} is usual for {name}: check that the labels match the images"


def check_progress(history: list[dict[str, Any]], *, optimizer: Any) -> None:
    """After an epoch's record is added to ``history``: a NaN validation loss (the last step
    broke the weights) raises :class:`TrainingDivergedError`; a run that is still at chance gets
    one :class:`ChanceLevelWarning` (on rank 0 only: every rank has the same numbers).

    The criterion, judged once, at the end of the first epoch by which the run has taken
    :data:`MIN_STEPS_TO_JUDGE` steps: the mean training loss of that epoch's last quarter is
    above 0.9 x ln 10 (a model that guesses scores ln 10 = 2.30; the example's first epoch ends
    well below 1) *and* the validation accuracy is below 20%, twice chance. Both: a slow but
    healthy run has left chance on one of them, a run stuck at 10% with a loss of 2.30 (or a
    huge one) has left it on neither.
    """
    record = history[-1]
    if not math.isfinite(record["val_loss"]):
        raise diverged(record["val_loss"], epoch=record["epoch"], step=None, optimizer=optimizer)
    steps = sum(len(r["step_losses"]) for r in history)
    before = steps - len(record["step_losses"])
    if not before < MIN_STEPS_TO_JUDGE <= steps:  # too early, or judged at an earlier epoch
        return
    tail = record["step_losses"][-max(1, len(record["step_losses"]) // 4) :]
    loss = sum(tail) / len(tail)
    if loss > 0.9 * CHANCE_LOSS and record["val_accuracy"] < 0.2 and is_main_process():
        warnings.warn(
            ChanceLevelWarning(
                f"after {steps} steps (epoch {record['epoch']}) the model is still at chance "
                f"level: training loss {loss:.2f} (guessing: ln 10 = {CHANCE_LOSS:.2f}), "
                f"validation accuracy {100 * record['val_accuracy']:.1f}% (guessing: 10%). "
                f"It is not learning; the likely cause: {likely_cause(optimizer)}"
            ),
            stacklevel=3,
        )
