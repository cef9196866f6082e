"""Shared fixtures: tiny fake data sets in the exact files torchvision reads, so that the real loading
code runs offline, and a repository-root import path."""
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def learnable_images(labels, size=28, seed=0):
    """Noise plus a bright 4x4 patch whose place depends on the label: a task tiny models can learn."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), size, size), dtype=np.uint8)
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 5)
        images[i, 4 + 10 * r:8 + 10 * r, 2 + 5 * c:6 + 5 * c] = 255
    return images


def write_idx(path, array):
    """IDX format (MNIST's): magic 0x08 (ubyte) + number of dimensions, the sizes, then the bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_fake_mnist(root, folder="MNIST", n_train=256, n_test=256):
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), learnable_images(labels, seed=n))
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return root


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory):
    return write_fake_mnist(str(tmp_path_factory.mktemp("data")))
