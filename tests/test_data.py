"""The shipped data, its checks, and the two data paths."""

import gzip
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import datasets

from mnist_dissected import data as D

SHIPPED = Path(__file__).resolve().parent.parent / "data"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def train_set():
    return D.load_mnist(train=True, transform=D.mnist_transform())


@pytest.fixture(scope="module")
def test_set():
    return D.load_mnist(train=False, transform=D.mnist_transform())


@pytest.fixture
def no_download(monkeypatch):
    """Make any download attempt fail as it does offline, and record that it was tried."""
    tried = []

    def offline(self):
        tried.append(self.root)
        raise RuntimeError("Error downloading: <urlopen error Name or service not known>")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    return tried


def copy_shipped(root: Path, *names: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SHIPPED / f"{name}.gz", root / f"{name}.gz")


# --------------------------------------------------------------------------- shipped files


def test_shipped_files_have_the_documented_checksums():
    readme = (SHIPPED / "README.md").read_text()
    for name, digest in D.RESOURCES.items():
        assert D.sha256_of(SHIPPED / f"{name}.gz", gzipped=True) == digest
        assert digest in readme, f"data/README.md must list the checksum of {name}"


def test_sizes_labels_and_class_counts(train_set, test_set):
    assert len(train_set) == 60_000 and len(test_set) == 10_000
    assert train_set.data.shape == (60_000, 28, 28) and train_set.data.dtype == torch.uint8
    assert torch.bincount(train_set.targets).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_set.targets).tolist() == TEST_COUNTS
    assert train_set.targets[0].item() == 5


def test_mean_and_std_constants_agree_with_the_data(train_set):
    mean, std = D.compute_mean_std(train_set)
    assert round(mean, 4) == D.MNIST_MEAN
    assert round(std, 4) == D.MNIST_STD


def test_normalized_training_set_has_mean_0_std_1(train_set):
    x = D.normalize_images(train_set.data)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3


# --------------------------------------------------------------------------- where data is found


def test_root_argument_then_env_then_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    assert D.data_root() == SHIPPED
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))
    assert D.data_root() == tmp_path / "env"
    assert D.data_root(tmp_path / "arg") == tmp_path / "arg"


def test_shipped_gz_files_are_verified_and_decompressed_without_download(tmp_path, no_download):
    copy_shipped(tmp_path, *D.RESOURCES)
    test = D.load_mnist(train=False, root=tmp_path)
    assert len(test) == 10_000 and no_download == []
    for name, digest in D.RESOURCES.items():
        raw = tmp_path / "MNIST" / "raw" / name
        assert D.sha256_of(raw) == digest
    assert not list((tmp_path / "MNIST" / "raw").glob("*.part")), "no temporary files left"


def test_missing_files_offline_name_the_files_the_places_and_the_fix(tmp_path, no_download):
    copy_shipped(tmp_path, "t10k-labels-idx1-ubyte")
    with pytest.raises(D.MNISTNotFoundError) as err:
        D.load_mnist(train=False, root=tmp_path)
    message = str(err.value)
    assert no_download, "a download is tried first"
    for name in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"]:
        assert name in message
    assert "t10k-labels-idx1-ubyte.gz," not in message.splitlines()[0], "that one is there"
    assert str(tmp_path / "MNIST" / "raw") in message and str(tmp_path) in message
    assert D.ENV_VAR in message and "Name or service not known" in message


def test_missing_files_without_download_are_not_downloaded(tmp_path, no_download):
    with pytest.raises(D.MNISTNotFoundError, match="MNIST files not found"):
        D.load_mnist(root=tmp_path, download=False)
    assert no_download == []


def test_downloader_that_raises_urlerror_is_reported_too(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(D.MNISTNotFoundError, match="no network"):
        D.load_mnist(root=tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "not-gzip"])
def test_corrupt_or_truncated_gz_is_named_with_its_checksum_and_kept(tmp_path, no_download,
                                                                    damage):
    name = "t10k-labels-idx1-ubyte"
    copy_shipped(tmp_path, *D.RESOURCES)
    gz = tmp_path / f"{name}.gz"
    good = gzip.decompress(gz.read_bytes())
    if damage == "flip":  # a valid gzip of wrong content
        bad = bytearray(good)
        bad[100] ^= 0xFF
        gz.write_bytes(gzip.compress(bytes(bad)))
    elif damage == "truncate":
        gz.write_bytes(gz.read_bytes()[:2000])
    else:
        gz.write_bytes(b"<html>mirror error page</html>")
    damaged = gz.read_bytes()
    with pytest.raises(D.CorruptDataError) as err:
        D.load_mnist(train=False, root=tmp_path)
    assert str(gz) in str(err.value) and D.RESOURCES[name] in str(err.value)
    assert gz.read_bytes() == damaged, "the user's file is left as it is"
    assert not (tmp_path / "MNIST" / "raw" / name).exists(), "nothing bad is used"
    assert no_download == [], "never silently replaced by a download"


def test_corrupt_decompressed_file_is_refused_and_kept(tmp_path, no_download):
    copy_shipped(tmp_path, *D.RESOURCES)
    D.prepare_raw(tmp_path)
    raw = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(D.CorruptDataError, match=D.RESOURCES["train-labels-idx1-ubyte"]):
        D.load_mnist(root=tmp_path)
    assert raw.exists()


# --------------------------------------------------------------------------- transforms, paths


def test_padding_for_lenet_matches_the_transform(test_set):
    padded = D.load_mnist(train=False, transform=D.mnist_transform(pad=2))
    x, _ = padded[0]
    assert x.shape == (1, 32, 32)
    assert torch.equal(D.normalize_images(test_set.data[:1], pad=2)[0], x)
    raw = test_set.data[:1].unsqueeze(1).float() / 255
    assert torch.equal(D.pad_to_32(raw)[..., 2:30, 2:30], raw)
    normalized = D.normalize_images(test_set.data[:1])
    assert torch.allclose(D.pad_to_32(normalized, D.NORMALIZED_BLACK), x)


def test_make_loader_defaults_to_no_worker_processes(test_set):
    loader = D.make_loader(test_set)
    assert loader.num_workers == 0 and loader.batch_size == 64 and len(loader) == 157


def test_seeded_loader_gives_the_same_first_batch(test_set):
    first = [next(iter(D.make_loader(test_set, shuffle=True, seed=3)))[1] for _ in range(2)]
    assert torch.equal(*first)
    other = next(iter(D.make_loader(test_set, shuffle=True, seed=4)))[1]
    assert not torch.equal(first[0], other)


def test_tensor_path_yields_exactly_the_dataloader_batches(test_set):
    """Same order in, same bits out: the fast path is the DataLoader path without the copies."""
    fast = D.TensorBatches.from_dataset(test_set, batch_size=100)
    order = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))
    loader = D.make_loader(test_set, batch_size=100, sampler=order.tolist())
    n = 0
    for (x1, y1), (x2, y2) in zip(loader, fast.batches(order), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        n += 1
    assert n == 100
    unshuffled = zip(D.make_loader(test_set, batch_size=100), fast, strict=True)
    assert all(torch.equal(a[0], b[0]) for a, b in unshuffled)


def test_tensor_path_reshuffles_every_epoch_reproducibly(test_set):
    def epochs(seed):
        fast = D.TensorBatches.from_dataset(test_set, batch_size=1000, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in fast]) for _ in range(2)]

    a, b = epochs(0), epochs(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same seed, same order"
    assert not torch.equal(a[0], a[1]), "a new order each epoch"
    assert torch.equal(a[0].sort().values, test_set.targets.sort().values), "a permutation"


@pytest.mark.parametrize("drop_last, batches, last", [(False, 157, 16), (True, 156, 64)])
def test_tensor_path_drop_last(test_set, drop_last, batches, last):
    fast = D.TensorBatches.from_dataset(test_set, batch_size=64, drop_last=drop_last)
    sizes = [len(y) for _, y in fast]
    assert len(fast) == len(sizes) == batches and sizes[-1] == last
    loader = D.make_loader(test_set, batch_size=64, drop_last=drop_last)
    assert len(loader) == len(fast)


def test_tensor_path_channels_last_keeps_values(test_set):
    plain = D.TensorBatches.from_dataset(test_set)
    cl = D.TensorBatches.from_dataset(test_set, channels_last=True)
    assert cl.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain.images, cl.images)


def test_mismatched_images_and_targets_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 targets"):
        D.TensorBatches(torch.zeros(3, 1, 28, 28), torch.zeros(2))
