"""Checkpoints: metadata, atomic writes, safe loading, clear errors for damaged files."""

import os
import pickle
import random
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from mnist_dissected import checkpoint
from mnist_dissected.errors import MnistDissectedError
from mnist_dissected.models import LeNet, Net
from mnist_dissected.recipes import RECIPES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = Net()
    history = [
        {
            "epoch": 1,
            "train_loss": 0.5,
            "step_losses": [0.7, 0.3],
            "val_loss": 0.1,
            "val_accuracy": 0.97,
            "seconds": 1.5,
        }
    ]
    path = checkpoint.save_checkpoint(
        tmp_path / "net.pt", net, recipe=RECIPES["fast"], history=history, seed=7
    )
    return net, path


def test_round_trip_with_metadata(saved):
    net, path = saved
    loaded, meta = checkpoint.load_checkpoint(path, Net())
    for p, q in zip(net.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not loaded.training
    assert meta["architecture"] == "net" and meta["recipe"]["name"] == "fast"
    assert meta["epochs"] == 1 and meta["seed"] == 7 and meta["history"][0]["seconds"] == 1.5
    assert meta["torch_version"] == str(torch.__version__)
    rebuilt, _ = checkpoint.load_checkpoint(path)  # architecture and weights from the file
    assert type(rebuilt) is Net and not rebuilt.training
    for p, q in zip(net.parameters(), rebuilt.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_architectures_arguments_are_saved_and_rebuilt(tmp_path):
    """Not the defaults: a Net without dropout comes back without dropout."""
    path = checkpoint.save_checkpoint(tmp_path / "no_dropout.pt", Net(dropout=0.0))
    rebuilt, meta = checkpoint.load_checkpoint(path)
    assert meta["model_kwargs"] == {"dropout": 0.0}
    assert rebuilt.dropout == 0.0 and rebuilt.conv2_drop.p == 0.0


def test_write_is_atomic_and_leaves_no_temporary_file(saved, monkeypatch):
    _, path = saved
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, LeNet())
    assert path.read_bytes() == before, "the old checkpoint is untouched"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_another_architecture_is_a_clear_error(saved):
    _, path = saved
    with pytest.raises(checkpoint.CheckpointError, match="weights of a Net, not of a LeNet"):
        checkpoint.load_checkpoint(path, LeNet())


def test_truncated_checkpoint_is_a_clear_error(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or not a PyTorch checkpoint"):
        checkpoint.load_checkpoint(path, Net())


def test_file_that_is_no_checkpoint(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(Net().state_dict(), bare)
    with pytest.raises(checkpoint.CheckpointError, match="not an mnist-dissected checkpoint"):
        checkpoint.load_checkpoint(bare)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")


class Exploit:
    """Unpickling this runs code (here: creates a file). weights_only must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("wrap", ["torch.save", "plain pickle"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, wrap):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": checkpoint.FORMAT, "architecture": "Net", "state_dict": Exploit(marker)}
    if wrap == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(checkpoint.CheckpointError, match="refused to load") as err:
        checkpoint.load_checkpoint(evil)
    message = str(err.value)
    assert str(evil) in message and "could run any code" in message
    assert "only if you trust where the file came from" in message and "save_checkpoint" in message
    assert "file an issue" not in message.lower()
    assert not marker.exists(), "the code in the pickle must not have run"
    if wrap == "plain pickle":
        pickle.loads(evil.read_bytes())
        assert marker.exists(), "sanity: the exploit does run when unpickled unsafely"


@pytest.mark.parametrize(
    "damage, complaint",
    [
        (lambda p: p.update(model_kwargs={"dropout": 0.5, "width": 3}), "do not build a Net"),
        (lambda p: p.update(model_kwargs=["dropout"]), "not a dict of arguments"),
        (lambda p: p.update(model_kwargs={"dropout": "half"}), "do not build a Net"),
        (lambda p: p.pop("state_dict"), "no state_dict"),
        (lambda p: p.update(state_dict=[1, 2]), "no state_dict"),
        (lambda p: p.update(state_dict={"fc1.weight": "x"}), "no state_dict"),
        (lambda p: p.update(architecture=None), "not a name"),
        (lambda p: p.update(architecture="ResNet"), "unknown architecture"),
    ],
)
def test_malformed_metadata_is_a_checkpoint_error(saved, tmp_path, damage, complaint):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    damage(payload)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(checkpoint.CheckpointError, match=complaint):
        checkpoint.load_checkpoint(bad)


def test_version_1_checkpoints_name_the_class_and_still_load(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["architecture"] = "Net"  # what version 1 saved
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    model, _ = checkpoint.load_checkpoint(old)
    assert isinstance(model, Net)


@pytest.mark.parametrize(
    "wrap",
    [
        torch.nn.DataParallel,  # DistributedDataParallel's ".module", without a process group
        torch.compile,  # "_orig_mod"; compiling is lazy: saving needs no compiler
        lambda net: torch.compile(torch.nn.DataParallel(net)),
    ],
    ids=["data-parallel", "compiled", "both"],
)
def test_checkpoint_of_a_wrapped_model_loads_into_a_plain_net(tmp_path, wrap):
    net = Net()
    path = checkpoint.save_checkpoint(tmp_path / "wrapped.pt", wrap(net))
    names = torch.load(path, weights_only=True)["state_dict"]
    assert names and not any(k.startswith(("module.", "_orig_mod.")) for k in names)
    loaded, meta = checkpoint.load_checkpoint(path, Net())
    assert torch.equal(loaded.fc2.weight, net.fc2.weight) and meta["architecture"] == "net"


def test_a_damaged_checkpoint_is_refused_not_loaded_wrong(saved):
    net, path = saved
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the weights: the archive's structure is intact
    data[middle : middle + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="does not match the checksum") as err:
        checkpoint.load_checkpoint(path, Net())
    assert str(path) in str(err.value) and "save it again" in str(err.value)


def test_extra_metadata_is_kept_but_cannot_replace_the_checkpoints_own(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "m.pt", Net(), extra={"written_by": "me"})
    assert checkpoint.load_checkpoint(path)[1]["written_by"] == "me"
    with pytest.raises(ValueError, match=r"may not replace.*\['seed'\]"):
        checkpoint.save_checkpoint(tmp_path / "n.pt", Net(), extra={"seed": 3})
    assert not (tmp_path / "n.pt").exists()


# --------------------------------------------------------------------------- bad input, round two


def test_save_checkpoint_onto_a_fifo_is_refused_and_leaves_it(tmp_path):
    fifo = tmp_path / "m.pt"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"m\.pt is a FIFO \(named pipe\), not a regular file") as err:
        checkpoint.save_checkpoint(fifo, Net())
    assert isinstance(err.value, MnistDissectedError)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["m.pt"]


def test_save_checkpoint_writes_through_a_symlink(tmp_path):
    target = tmp_path / "store" / "net.pt"
    target.parent.mkdir()
    target.write_bytes(b"an older checkpoint")
    link = tmp_path / "net.pt"
    link.symlink_to(target)
    assert checkpoint.save_checkpoint(link, Net()) == link
    assert link.is_symlink() and os.readlink(link) == str(target), "the link stays a link"
    model, _ = checkpoint.load_checkpoint(target)
    assert isinstance(model, Net)


def padded(path: Path, out: Path, *, megabytes: int) -> Path:
    """``path``'s archive with its pickle followed by ``megabytes`` of zeros, checksums valid:
    deflated, so that it stays small on disk (what torch reads is the unpacked size)."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as padded_archive:
        for info in source.infolist():
            if not info.filename.endswith("/data.pkl"):
                padded_archive.writestr(info, source.read(info))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with padded_archive.open(entry, "w", force_zip64=True) as f:
                f.write(source.read(info))
                for _ in range(megabytes):
                    f.write(bytes(1 << 20))
    return out


def test_a_checkpoint_that_unpacks_to_hundreds_of_megabytes_is_refused_unread(
    saved, tmp_path, monkeypatch
):
    _, path = saved
    bloated = padded(path, tmp_path / "bloated.pt", megabytes=200)
    assert bloated.stat().st_size < 2 << 20, "small on disk"

    def read(*args, **kwargs):
        pytest.fail("its parts were read despite their declared size")

    monkeypatch.setattr(zipfile.ZipFile, "testzip", read)
    monkeypatch.setattr(torch, "load", read)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_checkpoint(bloated)
    message = str(err.value)
    assert message.startswith(f"{bloated} would unpack to 200 MB, more than the 64 MB")
    assert "delete it" in message


@pytest.mark.parametrize(
    "content, looks_like",
    [
        (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title>", "an HTML page"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)), "a JPEG image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), "a PNG image"),
        (b"", "an empty file"),
        (random.Random(0).randbytes(4096), "random bytes"),
        (b"hello", "text"),
    ],
    ids=["html", "jpeg", "png", "empty", "random", "text"],
)
def test_a_file_that_is_no_checkpoint_says_what_it_looks_like(tmp_path, content, looks_like):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not a PyTorch checkpoint: it looks like {looks_like}")
    assert "weights_only=False" not in message and "could run any code" not in message
