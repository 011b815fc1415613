"""Data: the embedded 8x8 digits, MNIST / Fashion-MNIST from IDX files, and a device-side DataLoader.

    X, y = tg.data.load_digits()                      # (1797, 64) float32 in [0, 1], (1797,) int64
    test = tg.data.MNIST("data", train=False)         # IDX files in data/ or data/MNIST/raw
    loader = tg.data.DataLoader(test, batch_size=256, shuffle=True, seed=0)
    for xb, yb in loader: ...                         # Tensors on the default device
"""

from tensorgrad.data.datasets import (
    FASHION_MNIST_MD5,
    FASHION_MNIST_MIRRORS,
    MNIST,
    MNIST_MD5,
    MNIST_MIRRORS,
    FashionMNIST,
    download,
    load_digits,
    read_idx,
)
from tensorgrad.data.loader import DataLoader

__all__ = [
    "load_digits", "read_idx", "download", "MNIST", "FashionMNIST", "DataLoader",
    "MNIST_MIRRORS", "FASHION_MNIST_MIRRORS", "MNIST_MD5", "FASHION_MNIST_MD5",
]
