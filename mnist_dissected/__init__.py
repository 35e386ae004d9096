"""mnist-dissected: helpers for the notebooks that take the PyTorch MNIST example apart."""
