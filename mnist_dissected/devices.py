"""Where a model trains, and how a run is made repeatable: the rules every part shares.

Why this module exists: Parts 1-6, the CLI, ``load_or_train`` and ``torchrun`` workers all pick
a device and seed a run. The rules live here once, at the bottom of the package, so a typo in
``--device`` or in ``$MNIST_DISSECTED_DEVICE`` gets the same one-line error everywhere (never
PyTorch's raw ``RuntimeError``). Dissected in Part 4, §4.3 (devices) and §4.7 (seeds).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import DeviceError

#: The environment variable that picks the device when no argument does.
DEVICE_ENV_VAR = "MNIST_DISSECTED_DEVICE"
#: Device types that can train a model here.
TRAINING_DEVICES = ("cpu", "cuda", "mps")


def usable_device(text: str | torch.device, *, no_accel: bool = False) -> torch.device:
    """``text`` as a device that can train a model here, or a :class:`DeviceError` saying why
    not, in one line. ``no_accel``: only the CPU is allowed (the example's ``--no-accel``)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"{text!r} is not a device; use one of cpu, cuda, cuda:N, mps") from None
    if device.type not in TRAINING_DEVICES:
        raise DeviceError(f"{text!r} cannot train a model; use one of cpu, cuda, cuda:N, mps")
    if no_accel and device.type != "cpu":
        raise DeviceError(f"--device {text} and --no-accel contradict each other")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA is not available here (no NVIDIA GPU, or a CPU-only build "
                "of PyTorch); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"there is no {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            "MPS is not available here (it needs Apple silicon and macOS 12.3 or "
            "later); use --device cpu"
        )
    return device


def pick_device(
    preferred: str | torch.device | None = None, *, no_accel: bool = False
) -> torch.device:
    """``preferred`` (or ``$MNIST_DISSECTED_DEVICE``) if given, else CUDA, then Apple's MPS,
    then the CPU: the same notebook runs wherever the reader is. A device that cannot train
    here raises :class:`~mnist_dissected.errors.DeviceError`, whether it came as an argument
    or from the variable. ``no_accel``: the CPU, even where CUDA or MPS is present. Dissected
    in Part 4, §4.3."""
    if preferred is not None and str(preferred) != "":
        return usable_device(preferred, no_accel=no_accel)
    if no_accel:
        return torch.device("cpu")
    value = os.environ.get(DEVICE_ENV_VAR)
    if value:
        try:
            return usable_device(value)
        except DeviceError as e:
            raise DeviceError(f"${DEVICE_ENV_VAR}={value}: {e}") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (every device's generator), and ask cuDNN for
    deterministic kernels. On the CPU the same seed on the same machine (and number of threads)
    then gives bitwise the same run; on a GPU some other kernels still add in a varying order
    unless ``torch.use_deterministic_algorithms(True)`` is set too. Dissected in Part 4, §4.7.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished the work queued on it. GPUs run asynchronously: a
    clock read without this measures how fast work was *queued*, not done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
