"""The benchmark is run by hand (`python -m mnist_dissected bench`), not timed in tests; this
only keeps its pieces from rotting."""

import torch

from mnist_dissected.bench import time_epoch
from mnist_dissected.data import TensorBatches


def test_time_epoch_trains_one_epoch_and_returns_seconds():
    torch.manual_seed(0)
    batches = TensorBatches(
        torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,)), batch_size=64
    )
    seconds = time_epoch(batches, torch.device("cpu"), channels_last=True)
    assert isinstance(seconds, float) and seconds > 0
