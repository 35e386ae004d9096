"""The fast recipe made fast: ``torch.compile`` where it can run, and on NVIDIA GPUs the whole
training step captured once as a CUDA graph and replayed (Part 4, §4.H: how fast it can go).

Why this module exists: ``Net`` is so small that on a GPU each training step is a couple of
milliseconds of kernel launches and Python around a tenth of a millisecond of arithmetic
(launch-bound). A CUDA graph records every kernel of one step (forward, backward, Adam, and
the one-cycle learning rate read from a table on the device) once, then launches them all
with one call per step. ``torch.compile`` fuses the small element-wise kernels on CPU and GPU.
Both are options of a recipe (``compile=True``, ``cuda_graph=True``): where one cannot run
(no C++ compiler, no CUDA, an old PyTorch), training says why and runs eagerly, with the same
numbers. Measured by ``python -m mnist_dissected bench``.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn


def say(message: str) -> None:
    """Fallback notes go to stderr: visible, but not mixed into the example's output lines."""
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- torch.compile


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here, or ``None`` if it should."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "mps":
        return "torch.compile's MPS support is experimental"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++ or clang++) for the CPU code torch.compile generates"
    try:
        importlib.import_module("torch._dynamo")  # absent or broken on some Python/torch pairs
    except Exception as e:
        return f"torch.compile does not load here ({type(e).__name__}: {e})"
    return None


def compile_model(
    model: nn.Module, sample: torch.Tensor, target: torch.Tensor, loss_fn: Callable
) -> tuple[nn.Module, str | None]:
    """``torch.compile(model)``, compiled now (forward and backward, on ``sample``) so that a
    failure falls back to the eager model with a message instead of breaking training later.

    Returns the model to train and ``None``, or the eager model and the reason it stayed eager.
    The compiled model shares its parameters with ``model``; gradients of the trial are cleared.
    """
    reason = compile_unavailable(sample.device)
    if reason is not None:
        return model, reason
    compiled = torch.compile(model)
    try:
        loss_fn(compiled(sample), target).backward()
    except Exception as e:  # inductor raises many kinds (BackendCompilerFailed, CalledProcess..)
        return model, f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0]})"
    finally:
        model.zero_grad(set_to_none=True)
    return compiled, None


# --------------------------------------------------------------------------- one-cycle as a table


def onecycle_table(max_lr: float, total_steps: int) -> tuple[list[float], list[float]]:
    """The learning rate and Adam's beta1 at each of ``total_steps`` steps of ``OneCycleLR``
    (which also cycles beta1 between 0.85 and 0.95), read off PyTorch's own scheduler on a
    throwaway optimizer: the graphed step looks them up instead of calling the scheduler."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps
    )
    lrs, beta1s = [], []
    for _ in range(total_steps):
        group = optimizer.param_groups[0]
        lrs.append(float(group["lr"]))
        beta1s.append(float(group["betas"][0]))
        optimizer.step()  # no gradient: changes nothing, keeps the scheduler's order check quiet
        if len(lrs) < total_steps:
            scheduler.step()
    return lrs, beta1s


class TableAdam:
    """Adam whose learning rate and beta1 are tensors set from :func:`onecycle_table` at each
    step, by tensor operations only: nothing the CPU must read back, so it can be captured.

    ``step()`` does what ``optimizer.step(); scheduler.step()`` does with ``OneCycleLR``.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        table: tuple[list[float], list[float]],
        *,
        capturable: bool = False,
    ) -> None:
        params = list(params)
        device = params[0].device
        self.lrs = torch.tensor(table[0], dtype=torch.float32, device=device)
        self.beta1s = torch.tensor(table[1], dtype=torch.float32, device=device)
        self.index = torch.zeros((), dtype=torch.long, device=device)
        self.lr = self.lrs[0].clone()
        self.beta1 = self.beta1s[0].clone()
        self.beta2 = torch.tensor(0.999, device=device)
        kwargs: dict[str, Any] = {"capturable": True} if capturable else {"foreach": False}
        self.optimizer = torch.optim.Adam(
            params, lr=self.lr, betas=(self.beta1, self.beta2), **kwargs
        )

    def step(self) -> None:
        self.optimizer.step()
        last = torch.tensor(len(self.lrs) - 1, device=self.index.device)
        self.index.add_(1)
        position = torch.minimum(self.index, last)  # past the end: stay at the last rate
        self.lr.copy_(self.lrs[position])
        self.beta1.copy_(self.beta1s[position])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def reset(self) -> None:
        """Back to step 0 in place (tensors keep their addresses, as a captured graph needs)."""
        for state in self.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()
        self.index.zero_()
        self.lr.copy_(self.lrs[0])
        self.beta1.copy_(self.beta1s[0])


# --------------------------------------------------------------------------- the CUDA graph


def cuda_graph_unavailable(device: torch.device) -> str | None:
    """Why the training step cannot be captured as a CUDA graph here, or ``None``."""
    if device.type != "cuda":
        return f"CUDA graphs need an NVIDIA GPU (training on {device.type})"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        param = nn.Parameter(torch.zeros(1, device=device))
        TableAdam([param], ([0.1], [0.9]), capturable=True)
    except (TypeError, ValueError, RuntimeError) as e:
        return f"torch {torch.__version__}'s Adam cannot take tensor lr and betas ({e})"
    return None


class GraphedTrainStep:
    """One training step (forward, loss, backward, Adam, next learning rate) recorded as a
    CUDA graph, replayed for each batch. Batches must all have the captured shape (the
    training batches are cut with ``drop_last=True``).

    Capturing needs a few warm-up steps; the model and the optimizer are put back to where
    they were afterwards, so the captured run starts exactly where an eager one would.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        optimizer: TableAdam,
        sample: torch.Tensor,
        target: torch.Tensor,
        *,
        warmup: int = 3,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.x = sample.clone(memory_format=torch.preserve_format)
        self.y = target.clone()
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value.copy_(saved[name])
        optimizer.reset()
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._step()

    def _step(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.loss_of(self.x, self.y)
        loss.backward()
        self.optimizer.step()
        return loss

    def loss_of(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .models import loss_function

        return loss_function(self.model)(self.model(x), y)

    def __call__(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.x.copy_(data, non_blocking=True)
        self.y.copy_(target, non_blocking=True)
        self.graph.replay()
        return self.loss.detach().clone()
