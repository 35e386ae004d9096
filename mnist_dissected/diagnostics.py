"""Part 5 (diagnostics): what the layers of ``Net`` do while it trains, read with hooks.

Why this module exists: a loss curve says *that* training goes well or badly, not *where*. The
usual diagnostics look inside each layer while it trains: the histograms of its activations and
of the gradients flowing back into them, the share of its ReLUs that are dead (zero for every
image of a batch), and the size of each step's update against the weights it changes (CS231n's
rule of thumb: about 1e-3, https://cs231n.github.io/neural-networks-3/#ratio). They are read
with PyTorch's hooks, so the model's code stays as it is: :class:`Recorder` registers them and
takes them away again. :func:`diagnose_inits` runs the initialisation experiment (weights too
small, too large, PyTorch's default) and caches what it recorded next to
:func:`~mnist_dissected.pretrained.load_or_train`'s checkpoints, so that a notebook run a second
time only plots.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from .data import TensorBatches, load_mnist, train_validation_indices
from .models import Net
from .plots import STYLE, styled
from .results_cache import cached_experiment

#: The layers of ``Net`` that hold weights, in the order the forward pass runs them.
LAYERS = ("conv1", "conv2", "fc1", "fc2")
#: How ``Net.forward`` feeds each layer's output to its ReLU: after a 2x2 max-pool (the
#: convolutions) or directly (``fc1``). ``fc2`` has no ReLU (log-softmax follows it).
RELU_POOL = {"conv1": 2, "conv2": 2, "fc1": 1}
#: The initialisations compared: every weight and bias of a default ``Net`` times this factor.
INIT_SCALES = {"small": 0.01, "default": 1.0, "large": 10.0}
#: Bumped when what :func:`diagnose_run` records changes: older cached files are recomputed.
DIAGNOSTICS_VERSION = 1


class Recorder:
    """Forward hooks on ``model``'s ``layers`` that keep each layer's latest output
    (``activations``) and, through a hook on that output tensor, the gradient of the loss with
    respect to it (``gradients``) once ``backward`` has run.

    Why hooks: the model's ``forward`` is not touched, so what is recorded is the real
    network's. Use it as a context manager (or call :meth:`remove`): a hook left behind runs on
    every later forward pass and keeps its tensors alive.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] = LAYERS) -> None:
        self.activations: dict[str, torch.Tensor] = {}
        self.gradients: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.activations[name] = output.detach()
            if output.requires_grad:  # no graph under torch.no_grad(): nothing flows back

                def keep_grad(grad: torch.Tensor) -> None:
                    self.gradients[name] = grad.detach()

                output.register_hook(keep_grad)  # goes with the tensor: nothing to remove

        return keep

    def remove(self) -> None:
        """Take every forward hook away (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def relu_input(name: str, activation: torch.Tensor) -> torch.Tensor:
    """What ``Net``'s ReLU after layer ``name`` sees: its output max-pooled where the forward
    pass pools it first (:data:`RELU_POOL`)."""
    pool = RELU_POOL[name]
    return F.max_pool2d(activation, pool) if pool > 1 else activation


def dead_relu_share(relu_in: torch.Tensor) -> float:
    """The share of units (every position of every channel) whose ReLU outputs zero for every
    image of the batch (the first dimension): input at or below zero throughout. Such a unit
    passes no gradient back either, so on this batch it neither works nor learns. The same
    answer for a ReLU's input or its output (ReLU's output is zero exactly where its input is
    at most zero)."""
    return (relu_in <= 0).all(dim=0).float().mean().item()


def weights_of(model: nn.Module, layers: Sequence[str] = LAYERS) -> dict[str, torch.Tensor]:
    """A copy of each layer's weight tensor (not the bias): what :func:`update_ratios` compares
    the next step's weights with."""
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach().clone() for name in layers}


def update_ratios(before: dict[str, torch.Tensor], model: nn.Module) -> dict[str, float]:
    """Per layer, ``|update| / |weight|``: the norm of what the last step changed in the layer's
    weight (the learning rate is in it: plain SGD's update is ``lr * grad``) over the norm of the
    weight before it. CS231n's rule of thumb: about 1e-3; far below, the layer hardly learns;
    far above, it is thrown around."""
    modules = dict(model.named_modules())
    return {
        name: ((modules[name].weight.detach() - w).norm() / w.norm()).item()
        for name, w in before.items()
    }


def histogram(values: torch.Tensor, *, bins: int = 40) -> dict[str, list[float]]:
    """``values`` as a histogram over their own range: ``edges`` (``bins + 1``) and ``counts``
    (plain lists: they go into a JSON cache)."""
    values = values.detach().flatten().double()
    low, high = values.min().item(), values.max().item()
    if low == high:  # one value: a bin around it
        low, high = low - 0.5, high + 0.5
    counts = torch.histc(values, bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def default_init_by_hand(model: nn.Module) -> None:
    """Re-initialise every ``Conv2d`` and ``Linear`` of ``model`` the way PyTorch's
    ``reset_parameters`` does, written out: the weight Kaiming-uniform with ``a=sqrt(5)``
    (a uniform draw in ``±1/sqrt(fan_in)``), the bias uniform in ``±1/sqrt(fan_in)``, in the
    order the modules were built. From the same seed it gives the very numbers a fresh model
    has, which is how the notebook shows what the default is."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in = module.weight[0].numel()  # in_channels x kernel area, or in_features
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(module.bias, -bound, bound)


def scaled_net(scale: float, *, seed: int) -> Net:
    """A ``Net`` (no dropout: the fast recipe's) with PyTorch's default initialisation from
    ``seed``, every weight and bias then multiplied by ``scale`` (:data:`INIT_SCALES`)."""
    torch.manual_seed(seed)
    model = Net(dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def training_subset(
    size: int, *, batch_size: int, seed: int, root: str | os.PathLike | None = None
) -> TensorBatches:
    """The first ``size`` images of the training split (the validation images left out, as in
    every run of the series) as shuffled batches, the shuffle drawn from ``seed``."""
    train_idx, _ = train_validation_indices()
    dataset = load_mnist(train=True, root=root)
    return TensorBatches.from_dataset(
        dataset, indices=train_idx[:size], batch_size=batch_size, shuffle=True, seed=seed
    )


def diagnose_run(
    model: nn.Module,
    batches: Iterable,
    *,
    steps: int,
    lr: float,
    momentum: float = 0.0,
    bins: int = 40,
    histogram_steps: Sequence[int] = (0,),
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps of SGD on ``batches`` (cycled) and record, every
    step, the loss, each layer's update-to-weight ratio and dead-ReLU share, and at
    ``histogram_steps`` the histograms of each layer's activations and of their gradients.

    Why plain SGD: its update is ``lr * gradient``, so the ratio shows the gradients' size
    directly; Adam divides each update by the gradient's running size and hides it.
    Returns plain lists and numbers (the JSON cache's content)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    out: dict[str, Any] = {
        "loss": [],
        "ratio": {name: [] for name in LAYERS},
        "dead": {name: [] for name in RELU_POOL},
        "hist": {},
    }
    step = 0
    with Recorder(model) as rec:
        while step < steps:
            for data, target in batches:
                if step == steps:
                    break
                opt.zero_grad(set_to_none=True)
                loss = F.nll_loss(model(data), target)
                loss.backward()
                before = weights_of(model)
                opt.step()
                out["loss"].append(loss.item())
                for name, ratio in update_ratios(before, model).items():
                    out["ratio"][name].append(ratio)
                for name in RELU_POOL:
                    out["dead"][name].append(
                        dead_relu_share(relu_input(name, rec.activations[name]))
                    )
                if step in histogram_steps:
                    out["hist"][str(step)] = {
                        name: {
                            "activation": histogram(rec.activations[name], bins=bins),
                            "gradient": histogram(rec.gradients[name], bins=bins),
                        }
                        for name in LAYERS
                    }
                step += 1
    return out


def diagnose_inits(
    *,
    seeds: Sequence[int] = (1, 2),
    scales: dict[str, float] = INIT_SCALES,
    steps: int = 200,
    subset: int = 12_800,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.0,
    bins: int = 40,
    histogram_steps: Sequence[int] | None = None,
    root: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`diagnose_run` for every initialisation in ``scales`` and every seed, keyed
    ``"<init>/seed<seed>"``; read from the cache when it holds exactly these settings, else
    recorded and cached (written atomically; a file that cannot be read is recorded again).
    The seed draws both the initial weights and the order of the batches (the same batches
    for every initialisation). Histograms: at ``histogram_steps`` (default: the first step
    and the last)."""
    if histogram_steps is None:
        histogram_steps = (0, steps - 1)
    settings = {
        "seeds": list(seeds),
        "scales": dict(scales),
        "steps": steps,
        "subset": subset,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "bins": bins,
        "histogram_steps": list(histogram_steps),
    }

    def record() -> dict[str, dict[str, Any]]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same sums in the same order on any number of cores
        try:
            images = training_subset(subset, batch_size=batch_size, seed=0, root=root)
            return {
                f"{init}/seed{seed}": diagnose_run(
                    scaled_net(scale, seed=seed),
                    dataclasses.replace(images, seed=seed),  # its shuffle drawn from seed
                    steps=steps,
                    lr=lr,
                    momentum=momentum,
                    bins=bins,
                    histogram_steps=histogram_steps,
                )
                for seed in seeds
                for init, scale in scales.items()
            }
        finally:
            torch.set_num_threads(threads)

    settings["version"] = DIAGNOSTICS_VERSION
    return cached_experiment("diagnostics", settings, record, root=root)


#: CS231n's rule of thumb for the update-to-weight ratio, drawn on the ratio plots.
RULE_OF_THUMB = 1e-3


@styled
def plot_histograms(run: dict[str, Any], *, title: str) -> Figure:
    """A grid: one row per layer, its output (left; before pooling and ReLU) and the gradient of
    the loss with respect to that output (right), at each step ``run`` kept histograms of
    (lighter: earlier). Counts on a log axis, so that the few large values show beside the many
    small ones."""
    steps = sorted(run["hist"], key=int)
    fig, axes = plt.subplots(len(LAYERS), 2, figsize=(10, 2 * len(LAYERS)))
    for row, name in zip(axes, LAYERS, strict=True):
        for ax, kind in zip(row, ("activation", "gradient"), strict=True):
            for i, step in enumerate(steps):
                h = run["hist"][step][name][kind]
                alpha = 0.4 + 0.6 * i / max(1, len(steps) - 1)
                ax.stairs(h["counts"], h["edges"], alpha=alpha, label=f"step {int(step) + 1}")
            ax.set_yscale("log")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            what = "output" if kind == "activation" else "gradient of its output"
            ax.set_title(f"{name}: {what}", fontsize=STYLE["font"]["label"] + 1)
    axes[0, 0].legend(fontsize=STYLE["font"]["small"])
    for ax in axes[-1]:
        ax.set_xlabel("value")
    for ax in axes[:, 0]:
        ax.set_ylabel("count")
    fig.suptitle(title, fontsize=STYLE["font"]["title"])
    fig.tight_layout()
    return fig


def _init_title(init: str) -> str:
    scale = INIT_SCALES.get(init)
    return init if scale is None else f"{init} (weights x {scale:g})"


def _panels(runs: dict[str, dict[str, Any]], *, height: float = 3.3):
    inits = list(dict.fromkeys(key.split("/")[0] for key in runs))
    fig, axes = plt.subplots(1, len(inits), figsize=(4 * len(inits), height), sharey=True)
    return fig, dict(zip(inits, axes, strict=True))


@styled
def plot_losses(runs: dict[str, dict[str, Any]], *, title: str) -> Figure:
    """The training loss of every step, one panel per initialisation side by side, one line per
    seed, on a log axis (the large initialisation starts thousands of times higher)."""
    fig, panels = _panels(runs)
    for key, run in runs.items():
        init, seed = key.split("/")
        ax = panels[init]
        ax.plot(range(1, len(run["loss"]) + 1), run["loss"], lw=0.8, label=seed)
        ax.axhline(math.log(10), color="0.5", ls=":", lw=1)
        ax.set(yscale="log", xlabel="step", title=_init_title(init))
    first = next(iter(panels.values()))
    first.set_ylabel("training loss (dotted: ln 10, chance)")
    first.legend(fontsize=STYLE["font"]["small"])
    fig.suptitle(title, fontsize=STYLE["font"]["title"])
    fig.tight_layout()
    return fig


@styled
def plot_ratios(runs: dict[str, dict[str, Any]], *, title: str, seed: int = 1) -> Figure:
    """Each layer's update-to-weight ratio over the steps, one panel per initialisation side by
    side, on a log axis, with CS231n's 1e-3 dashed. A ratio of 0 (nothing moved) is left out:
    a log axis has no 0."""
    fig, panels = _panels({k: r for k, r in runs.items() if k.endswith(f"seed{seed}")})
    for key, run in runs.items():
        init, run_seed = key.split("/")
        if run_seed != f"seed{seed}":
            continue
        ax = panels[init]
        for name in LAYERS:
            ratios = [r if r > 0 else float("nan") for r in run["ratio"][name]]
            ax.plot(range(1, len(ratios) + 1), ratios, lw=0.8, label=name)
        ax.axhline(RULE_OF_THUMB, color="0.3", ls="--", lw=1)
        ax.set(yscale="log", xlabel="step", title=_init_title(init))
    first = next(iter(panels.values()))
    first.set_ylabel("|update| / |weight|")
    first.legend(fontsize=STYLE["font"]["small"])
    fig.suptitle(title, fontsize=STYLE["font"]["title"])
    fig.tight_layout()
    return fig
