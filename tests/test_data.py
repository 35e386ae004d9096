"""Part 1's module: the dataset, its transforms, the validation split and the two data paths."""

from pathlib import Path

import pytest
import torch

from mnist_dissected import data

SHIPPED = Path(__file__).resolve().parent.parent / "data"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def train_set():
    return data.load_mnist(train=True, transform=data.mnist_transform())


@pytest.fixture(scope="module")
def test_set():
    return data.load_mnist(train=False, transform=data.mnist_transform())


# --------------------------------------------------------------------------- transforms, paths


def test_padding_for_lenet_matches_the_transform(test_set):
    padded = data.load_mnist(train=False, transform=data.mnist_transform(pad=2))
    x, _ = padded[0]
    assert x.shape == (1, 32, 32)
    assert torch.equal(data.normalize_images(test_set.data[:1], pad=2)[0], x)
    raw = test_set.data[:1].unsqueeze(1).float() / 255
    assert torch.equal(data.pad_to_32(raw)[..., 2:30, 2:30], raw)
    normalized = data.normalize_images(test_set.data[:1])
    assert torch.allclose(data.pad_to_32(normalized, value=data.NORMALIZED_BLACK), x)


def test_make_loader_defaults_to_no_worker_processes(test_set):
    loader = data.make_loader(test_set)
    assert loader.num_workers == 0 and loader.batch_size == 64 and len(loader) == 157


def test_seeded_loader_gives_the_same_first_batch(test_set):
    first = [next(iter(data.make_loader(test_set, shuffle=True, seed=3)))[1] for _ in range(2)]
    assert torch.equal(*first)
    other = next(iter(data.make_loader(test_set, shuffle=True, seed=4)))[1]
    assert not torch.equal(first[0], other)


@pytest.mark.slow
def test_tensor_path_yields_exactly_the_dataloader_batches(test_set):
    """Same order in, same bits out: the fast path is the DataLoader path without the copies."""
    fast = data.TensorBatches.from_dataset(test_set, batch_size=100)
    order = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))
    loader = data.make_loader(test_set, batch_size=100, sampler=order.tolist())
    n = 0
    for (x1, y1), (x2, y2) in zip(loader, fast.batches(order), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        n += 1
    assert n == 100
    unshuffled = zip(data.make_loader(test_set, batch_size=100), fast, strict=True)
    assert all(torch.equal(a[0], b[0]) for a, b in unshuffled)


@pytest.mark.slow
@pytest.mark.parametrize("pad", [0, 2])
def test_normalized_images_give_the_per_image_loaders_batches_from_the_same_draws(pad):
    """The example's recipe's loader: the global generator drawn as by the example's own
    loader (a shuffle per epoch), and the same bits in every batch, the images and the
    labels, with the DataLoader fetching each batch in one call (``__getitems__``)."""
    per_image = data.load_mnist(train=False, transform=data.mnist_transform(pad))
    once = data.NormalizedImages(per_image, pad=pad)
    assert len(once) == len(per_image) == 10_000
    x, y = once[7]
    assert torch.equal(x, per_image[7][0]) and y == per_image[7][1] and type(y) is int
    epochs = {}
    for name, dataset in (("per image", per_image), ("once", once)):
        torch.manual_seed(1)
        loader = data.make_loader(dataset, batch_size=1000, shuffle=True)
        epochs[name] = [list(loader) for _ in range(2)]
        epochs[name].append(torch.rand(3))  # what the global generator draws next
    for (a, b), (c, d) in zip(
        (pair for epoch in epochs["per image"][:2] for pair in epoch),
        (pair for epoch in epochs["once"][:2] for pair in epoch),
        strict=True,
    ):
        assert torch.equal(a, c) and torch.equal(b, d) and b.dtype == d.dtype == torch.int64
    assert torch.equal(epochs["per image"][2], epochs["once"][2]), "the draws drifted"
    assert not torch.equal(epochs["once"][0][0][1], epochs["once"][1][0][1]), "one shuffle"


def test_tensor_path_reshuffles_every_epoch_reproducibly(test_set):
    def epochs(seed):
        fast = data.TensorBatches.from_dataset(test_set, batch_size=1000, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in fast]) for _ in range(2)]

    a, b = epochs(0), epochs(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same seed, same order"
    assert not torch.equal(a[0], a[1]), "a new order each epoch"
    assert torch.equal(a[0].sort().values, test_set.targets.sort().values), "a permutation"


@pytest.mark.parametrize("drop_last, batches, last", [(False, 157, 16), (True, 156, 64)])
def test_tensor_path_drop_last(test_set, drop_last, batches, last):
    fast = data.TensorBatches.from_dataset(test_set, batch_size=64, drop_last=drop_last)
    sizes = [len(y) for _, y in fast]
    assert len(fast) == len(sizes) == batches and sizes[-1] == last
    loader = data.make_loader(test_set, batch_size=64, drop_last=drop_last)
    assert len(loader) == len(fast)


def test_tensor_path_channels_last_keeps_values(test_set):
    plain = data.TensorBatches.from_dataset(test_set)
    cl = data.TensorBatches.from_dataset(test_set, channels_last=True)
    assert cl.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain.images, cl.images)


def test_mismatched_images_and_targets_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 targets"):
        data.TensorBatches(torch.zeros(3, 1, 28, 28), torch.zeros(2))


def test_validation_split_is_disjoint_fixed_and_seed_independent():
    train, val = data.train_validation_indices(60000)
    assert len(train) == 55000 and len(val) == data.VALIDATION_SIZE == 5000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))
    again = data.train_validation_indices(60000)
    assert torch.equal(again[1], val)
    with pytest.raises(ValueError, match="validation_size"):
        data.train_validation_indices(10, validation_size=10)


def test_tensor_batches_from_a_subset(test_set):
    idx = torch.tensor([5, 1, 7])
    sub = data.TensorBatches.from_dataset(test_set, indices=idx, batch_size=2)
    assert torch.equal(sub.targets, test_set.targets[idx])
    assert torch.equal(sub.images, data.normalize_images(test_set.data[idx]))


def test_sizes_labels_and_class_counts(train_set, test_set):
    assert len(train_set) == 60_000 and len(test_set) == 10_000
    assert train_set.data.shape == (60_000, 28, 28) and train_set.data.dtype == torch.uint8
    assert torch.bincount(train_set.targets).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_set.targets).tolist() == TEST_COUNTS
    assert train_set.targets[0].item() == 5


def test_mean_and_std_constants_agree_with_the_data(train_set):
    mean, std = data.compute_mean_std(train_set)
    assert round(mean, 4) == data.MNIST_MEAN
    assert round(std, 4) == data.MNIST_STD


def test_normalized_training_set_has_mean_0_std_1(train_set):
    x = data.normalize_images(train_set.data)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3


# --------------------------------------------------------------------------- where data is found
