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


@pytest.mark.parametrize(
    "payload, holds",
    [
        ({"model": Net().state_dict(), "epoch": 3}, "a dict with the keys 'model', 'epoch'"),
        ([1, 2, 3], "a list"),
        ({}, "an empty dict"),
        ({"format": "else/2", "state_dict": {}}, "a dict with the keys 'format', 'state_dict'"),
    ],
    ids=["training-dict", "list", "empty", "other-format"],
)
def test_file_that_is_no_checkpoint(tmp_path, payload, holds):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path} is neither an mnist-dissected checkpoint")
    assert f"nor a bare state_dict (it holds {holds}" in message
    assert "torch.save(model.state_dict(), path)" in message
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- bare state_dicts


@pytest.mark.parametrize("cls", [Net, LeNet])
def test_a_bare_state_dict_loads_as_the_model_its_keys_and_shapes_are(tmp_path, cls):
    """The example's own file, ``torch.save(model.state_dict(), "mnist_cnn.pt")``."""
    torch.manual_seed(3)
    saved = cls()
    path = tmp_path / "mnist_cnn.pt"
    torch.save(saved.state_dict(), path)
    loaded, meta = checkpoint.load_checkpoint(path)
    assert type(loaded) is cls and not loaded.training
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert meta["format"] == checkpoint.BARE_FORMAT and meta["architecture"] == cls.name
    assert meta["recipe"] is meta["seed"] is meta["test"] is meta["history"] is None
    into, _ = checkpoint.load_checkpoint(path, cls())
    assert torch.equal(into.conv1.weight, saved.conv1.weight)
    other = LeNet if cls is Net else Net
    with pytest.raises(checkpoint.CheckpointError, match=f"weights of a {cls.__name__}, not of"):
        checkpoint.load_checkpoint(path, other())


def renamed(state: dict, old: str, new: str) -> dict:
    return {new if k == old else k: v for k, v in state.items()}


class TodaysExampleNet(torch.nn.Module):
    """pytorch/examples' mnist/main.py Net since 0634306 (Nov 2019), its layers as at 77f55b9."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = torch.nn.Dropout(0.25)
        self.dropout2 = torch.nn.Dropout(0.5)
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)


def test_todays_examples_bare_state_dict_loads_as_todaynet(tmp_path):
    torch.manual_seed(0)
    theirs = TodaysExampleNet()
    path = tmp_path / "mnist_cnn.pt"
    torch.save(theirs.state_dict(), path)
    ours, meta = checkpoint.load_checkpoint(path)
    assert type(ours).__name__ == "TodayNet" and meta["format"] == "bare state_dict"
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "make, complaint",
    [
        (
            lambda: renamed(Net().state_dict(), "fc2.bias", "fc3.bias"),
            "compared with a Net, it lacks fc2.bias, and has unexpected fc3.bias",
        ),
        (
            lambda: {k: v for k, v in Net().state_dict().items() if k != "conv2.weight"},
            "compared with a Net, it lacks conv2.weight;",
        ),
        (
            lambda: {f"module.{k}": v for k, v in Net().state_dict().items()},
            "it lacks conv1.weight, conv1.bias, conv2.weight, conv2.bias and 4 more, and has "
            "unexpected module.conv1.weight",
        ),
        (
            lambda: {**Net().state_dict(), "fc1.weight": torch.zeros(50, 321)},
            "its fc1.weight has shape [50, 321] where a Net's has [50, 320];",
        ),
        (
            lambda: {**LeNet().state_dict(), "fc3.weight": torch.zeros(12, 84)},
            "its fc3.weight has shape [12, 84] where a LeNet's has [10, 84];",
        ),
        (
            lambda: {**TodaysExampleNet().state_dict(), "fc1.weight": torch.zeros(128, 9215)},
            "its fc1.weight has shape [128, 9215] where a TodayNet's has [128, 9216];",
        ),
    ],
    ids=["renamed-key", "missing-key", "ddp-prefix", "wrong-shape", "lenet-shape", "today-shape"],
)
def test_a_bare_state_dict_of_no_model_here_names_what_did_not_match(tmp_path, make, complaint):
    path = tmp_path / "mnist_cnn.pt"
    torch.save(make(), path)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path} is a bare state_dict, but not of a Net, LeNet or TodayNet: ")
    assert complaint in message and "\n" not in message
    assert message.endswith("train a model here: python -m mnist_dissected train --save-model")


def test_a_bare_state_dict_is_checked_like_a_checkpoint(tmp_path, monkeypatch):
    """Checksums and the size bound first, then ``weights_only``: the same way in."""
    path = tmp_path / "mnist_cnn.pt"
    torch.save(Net().state_dict(), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="does not match the checksum"):
        checkpoint.load_checkpoint(path)
    torch.save(Net().state_dict(), path)
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real_load(*a, **k))
    checkpoint.load_checkpoint(path)
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_save_state_dict_writes_the_examples_file(tmp_path):
    """What the example's code loads: plain ``torch.load(weights_only=True)``, strict."""
    torch.manual_seed(1)
    net = Net()
    path = checkpoint.save_state_dict(tmp_path / "mnist_cnn.pt", torch.nn.DataParallel(net))
    state = torch.load(path, weights_only=True)
    assert list(state) == list(Net().state_dict())  # unwrapped: no module. prefix
    fresh = Net()
    fresh.load_state_dict(state)  # strict
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["mnist_cnn.pt"], "no temporary file left"


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
