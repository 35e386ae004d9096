"""Saving and loading trained models, safely (dissected in Part 4, §4.8 and §4.G).

Why this module exists:
- A checkpoint is the ``state_dict`` plus what you need to trust it later: architecture,
  recipe, epochs, history, torch version. It is written atomically (temporary file, then
  rename), so a crash or a second process never leaves half a file under the real name.
- Loading first checks that the file is a checkpoint at all (an HTML error page or an image
  saved as ``.pt`` is named for what it is), that it does not unpack to more than a checkpoint
  of these models can (:data:`MAX_UNPACKED_BYTES`) and the checksums its zip archive holds
  (``torch.load`` does not: a damaged byte in the weights would load as a wrong number,
  silently), then uses ``torch.load(..., weights_only=True)``: a checkpoint is a pickle, and a
  plain pickle can run any code when loaded. ``weights_only`` only rebuilds tensors and plain
  data, so a malicious file is refused instead of executed.
- The example's own file, a bare ``state_dict`` (``mnist_cnn.pt``), loads too, through the same
  checks, when its keys and shapes are exactly those of ``Net`` or ``LeNet``
  (:func:`~mnist_dissected.example_compat.match_state_dict`); anything else is named for what
  did not match. :func:`save_state_dict` writes one, for the example's code to load.
- Saving and loading know nothing of training: the cache of trained models that Part 5 uses
  is :mod:`mnist_dissected.pretrained`.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import MnistDissectedError
from .example_compat import match_state_dict
from .files import atomic_write
from .models import MODELS, MNISTModel, unwrap

FORMAT = "mnist-dissected/1"
#: The ``format`` :func:`read_checkpoint` reports for a bare ``state_dict``, which has none.
BARE_FORMAT = "bare state_dict"
#: The most a checkpoint may unpack to. These models' checkpoints take 90 KB (Net) to 250 KB
#: (LeNet): 64 MB is generous, and still bounds what a broken or hostile file makes
#: ``torch.load`` read into memory (it reads the whole pickle, however long).
MAX_UNPACKED_BYTES = 64 << 20
#: What a file that is not a checkpoint begins with, and what it then is.
_SIGNATURES = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
    b"version https://git-lfs": "a Git LFS pointer (the file itself was never fetched)",
}


class CheckpointError(MnistDissectedError, ValueError):
    """A file that is not a usable checkpoint for what was asked."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that readers see whole or not at all (see :mod:`mnist_dissected.files`)."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as a plain ``state_dict`` on the CPU, unwrapped (no ``module.`` or
    ``_orig_mod.`` in the names): what a plain model, on any device, loads."""
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def save_state_dict(path: str | os.PathLike, model: nn.Module) -> Path:
    """Save ``model``'s bare ``state_dict``, as the example does (``torch.save(model.
    state_dict(), "mnist_cnn.pt")``), atomically: the file the example's code loads with
    ``model.load_state_dict(torch.load(path, weights_only=True))``. No metadata: keep the
    checkpoint it came from for that."""
    return atomic_save(plain_state_dict(model), path)


def save_checkpoint(
    path: str | os.PathLike,
    model: MNISTModel,
    *,
    recipe: Any = None,
    history: list[dict[str, Any]] | None = None,
    seed: int | None = None,
    test: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model``'s weights with the metadata that makes them reproducible (the recipe, a
    dataclass, is stored as plain data, which ``weights_only`` loading can read).

    A model inside ``DistributedDataParallel`` or ``torch.compile`` is saved unwrapped (no
    ``module.`` or ``_orig_mod.`` in the names), so that a plain model loads it. ``extra``:
    more metadata, plain data under names of its own (e.g. who wrote the file).
    """
    model = unwrap(model)
    payload = {
        "format": FORMAT,
        "architecture": model.name,
        "model_kwargs": model.config(),
        "state_dict": plain_state_dict(model),
        "recipe": dataclasses.asdict(recipe) if recipe is not None else None,
        "epochs": len(history) if history is not None else None,
        "history": history,
        "seed": seed,
        "test": test,
        "torch_version": str(torch.__version__),
    }
    clash = sorted(set(extra or {}) & set(payload))
    if clash:
        raise ValueError(f"extra metadata may not replace the checkpoint's own fields {clash}")
    payload.update(extra or {})
    return atomic_save(payload, path)


def _unpickler_reason(error: Exception) -> str:
    """What torch's long weights_only message says was refused, in a few words: the text after
    "WeightsUnpickler error:", up to the end of its first paragraph or sentence (torch's advice
    is left out)."""
    text = str(error)
    _, found, rest = text.partition("WeightsUnpickler error:")
    paragraph = (rest if found else text).strip().split("\n\n")[0]
    return " ".join(paragraph.split()).split(". ")[0].strip()[:160] or "unknown content"


def _is_text(head: bytes) -> bool:
    """True if ``head`` reads as text (UTF-8, nothing but printable characters and spaces)."""
    try:  # incremental: a character cut off at the end of ``head`` is no error
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def _looks_like(head: bytes) -> str | None:
    """What a file that begins with ``head`` looks like when it cannot be a checkpoint; None
    where it may be one: a zip archive (what ``torch.save`` writes) or a pickle (what it wrote
    before torch 1.6, and what ``pickle.dump`` writes), which ``torch.load`` then judges.

    Why: ``torch.load`` calls anything it cannot read an unsafe pickle, and a download that
    failed often leaves a web page or an image under the checkpoint's name."""
    if head.startswith(b"PK") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return None
    if not head:
        return "an empty file (0 bytes: an interrupted copy or download)"
    found = next((what for magic, what in _SIGNATURES.items() if head.startswith(magic)), None)
    if found:
        return found
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html")) or b"<html" in start:
        return "an HTML page (a web server's answer, e.g. an error page, saved as the file)"
    if _is_text(head):
        return "text"
    return "random bytes (no file format this check knows)"


def _refuse_non_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError`, saying what the file looks like, if it cannot be a
    checkpoint (:func:`_looks_like`): such a file is never called a pickle that could run code,
    nor is loading it with ``weights_only=False`` suggested."""
    with open(path, "rb") as f:
        what = _looks_like(f.read(512))
    if what is not None:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: it looks like {what}; nothing was loaded. "
            "Get the file again from where it came from, or save a new one with "
            "mnist_dissected.checkpoint.save_checkpoint"
        )


def _refuse_oversized(path: Path, unpacked: int) -> None:
    """Raise :class:`CheckpointError` if a checkpoint would unpack to more than
    :data:`MAX_UNPACKED_BYTES` (``unpacked``: the sizes its archive declares, or the file's
    size where it is a plain pickle), before any of it is read."""
    if unpacked > MAX_UNPACKED_BYTES:
        raise CheckpointError(
            f"{path} would unpack to {unpacked / 2**20:,.0f} MB, more than the "
            f"{MAX_UNPACKED_BYTES >> 20} MB a checkpoint of these models may take (theirs take "
            "a few hundred KB); refused before reading it. It was not written by "
            "save_checkpoint, or was changed since: delete it, or save it again"
        )


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is truncated or not a PyTorch checkpoint ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no details'}); save it again"
    )


def check_integrity(path: Path) -> None:
    """Raise :class:`CheckpointError` if the checkpoint's zip archive declares parts that
    unpack to more than :data:`MAX_UNPACKED_BYTES` (checked first, from the archive's
    directory, before any part is read), or if a part no longer has the checksum (CRC-32) it
    was saved with. ``torch.load`` does not check them, so a damaged file (a bad disk, an
    interrupted copy) would otherwise load wrong weights silently. A file that is no zip
    archive is checked for its size only and left to ``torch.load``, which says what it is."""
    if not zipfile.is_zipfile(path):
        _refuse_oversized(path, path.stat().st_size)  # torch.load reads a plain pickle whole
        return
    try:
        archive = zipfile.ZipFile(path)
    except Exception as e:  # a damaged archive fails in many ways
        raise _unreadable(path, e) from e
    with archive:
        _refuse_oversized(path, sum(part.file_size for part in archive.infolist()))
        try:
            damaged = archive.testzip()  # reads every part and compares its CRC-32
        except Exception as e:
            raise _unreadable(path, e) from e
    if damaged is not None:
        raise CheckpointError(
            f"{path} is damaged: its part {damaged} does not match the checksum it was saved "
            "with (the file changed after it was written: a bad disk or an interrupted copy); "
            "its weights cannot be trusted, save it again"
        )


def _load_safely(path: Path, map_location: str | torch.device) -> Any:
    """What ``path`` holds, loaded with ``weights_only=True``, after checking that it can be a
    checkpoint at all, of a sane size, and whole (:func:`check_integrity`)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _refuse_non_checkpoint(path)
    check_integrity(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: besides tensors and plain data it holds Python objects, "
            "and loading those could run any code the file's author chose. Load it with "
            "torch.load(path, weights_only=False) only if you trust where the file came from "
            "(you made it, or got it from someone you trust, over a channel you trust), then "
            "save a clean copy with mnist_dissected.checkpoint.save_checkpoint; otherwise "
            f"delete it. (What was refused: {_unpickler_reason(e)})"
        ) from e
    except Exception as e:  # zip, pickle and storage readers fail in many ways on bad bytes
        raise _unreadable(path, e) from e


def is_bare_state_dict(payload: Any) -> bool:
    """True if ``payload`` is a ``state_dict`` alone: names to tensors, nothing else."""
    return (
        isinstance(payload, dict)
        and bool(payload)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items())
    )


def _describe(payload: Any) -> str:
    """What a file that is no checkpoint of ours holds, in a few words, for the messages."""
    if not isinstance(payload, dict):
        return f"a {type(payload).__name__}"
    keys = [repr(k) for k in list(payload)[:5]]
    more = f" and {len(payload) - 5} more" if len(payload) > 5 else ""
    return f"a dict with the keys {', '.join(keys)}{more}" if keys else "an empty dict"


def bare_payload(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """A bare ``state_dict`` as a checkpoint's payload: the model its keys and shapes are
    exactly (:func:`~mnist_dissected.example_compat.match_state_dict`), the metadata it does
    not have as ``None``. Raises :class:`CheckpointError`, naming what did not match."""
    model, problem = match_state_dict(state)
    if model is None:
        names = [cls.__name__ for cls in MODELS.values()]
        ours = ", ".join(names[:-1]) + " or " + names[-1]
        raise CheckpointError(
            f"{path} is a bare state_dict, but not of a {ours}: {problem}; load it "
            "with the code that saved it, or train a model here: python -m mnist_dissected "
            "train --save-model"
        )
    unknown = dict.fromkeys(("recipe", "epochs", "history", "seed", "test", "torch_version"))
    return {
        "format": BARE_FORMAT,
        "architecture": model.name,
        "model_kwargs": {},
        "state_dict": state,
        **unknown,
    }


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file safely (``weights_only=True``, after :func:`check_integrity`)
    and check it is one of ours, or a bare ``state_dict`` of one of the package's models
    (returned as a payload whose ``format`` is :data:`BARE_FORMAT`, see :func:`bare_payload`).
    """
    path = Path(path)
    payload = _load_safely(path, map_location)
    if is_bare_state_dict(payload):
        return bare_payload(payload, path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is neither an mnist-dissected checkpoint (no {FORMAT!r} format tag) nor "
            f"a bare state_dict (it holds {_describe(payload)}); save the model with "
            "save_checkpoint, or its state_dict alone with torch.save(model.state_dict(), path)"
        )
    return payload


def _malformed(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is a damaged mnist-dissected checkpoint ({what}); save it "
        "again with mnist_dissected.checkpoint.save_checkpoint"
    )


def build_from_checkpoint(payload: dict, path: Path) -> MNISTModel:
    """A fresh model of the architecture a checkpoint's metadata names, checked field by field
    so that a damaged file gives a :class:`CheckpointError`, not a ``KeyError``."""
    arch, kwargs = payload.get("architecture"), payload.get("model_kwargs", {})
    if not isinstance(arch, str):
        raise _malformed(path, f"architecture is {arch!r}, not a name")
    if arch.lower() not in MODELS:
        raise CheckpointError(
            f"{path} holds an unknown architecture {arch!r}; known: {sorted(MODELS)}"
        )
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise _malformed(path, f"model_kwargs is {kwargs!r}, not a dict of arguments")
    cls = MODELS[arch.lower()]
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _malformed(path, f"model_kwargs {kwargs!r} do not build a {cls.__name__}: {e}") from e


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> tuple[MNISTModel, dict[str, Any]]:
    """Weights from ``path`` into ``model`` (or into a fresh model of the saved architecture).

    Returns the model (in eval mode) and the checkpoint's metadata (everything but the
    weights). A bare ``state_dict`` (the example's ``mnist_cnn.pt``) loads as the model its keys
    and shapes are, with no metadata (``None`` for each field; ``format``: :data:`BARE_FORMAT`).
    A checkpoint of another architecture, or a damaged one, raises :class:`CheckpointError`.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    arch = payload.get("architecture")
    if model is None:
        model = build_from_checkpoint(payload, path)
    elif not isinstance(arch, str) or getattr(model, "name", None) != arch.lower():
        saved = MODELS[arch.lower()].__name__ if str(arch).lower() in MODELS else arch
        raise CheckpointError(
            f"{path} holds the weights of a {saved}, not of a "
            f"{type(model).__name__}; load it into a {saved}()"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise _malformed(path, "no state_dict of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {type(model).__name__}: {e}") from e
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
