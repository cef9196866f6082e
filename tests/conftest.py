"""Shared fixtures: tiny fake data sets in the exact files torchvision reads, so that the real loading
code runs offline, and the import paths: the repository's root, and tools/ (whose tools the tests import)."""
import os
import struct
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tools"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end run (a script's quick run, its jobs, the notebook): "
                                       "`-m \"not slow\"` leaves them out, for the fast loop of the unit tests")


def learnable_images(labels, size=28, seed=0):
    """Noise plus a bright 4x4 patch whose place depends on the label: a task tiny models can learn."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), size, size), dtype=np.uint8)
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 5)
        images[i, 4 + 10 * r:8 + 10 * r, 2 + 5 * c:6 + 5 * c] = 255
    return images


def learnable_set(n, seed):
    """n learnable uint8 images (N x 1 x 28 x 28) and their labels."""
    labels = np.random.default_rng(seed).integers(0, 10, n)
    return torch.from_numpy(learnable_images(labels, seed=seed)).unsqueeze(1), torch.from_numpy(labels)


class RoundedInput(torch.nn.Module):
    """Hard rounding of the input to 4 grey levels: the model's function is almost unchanged, but its
    input gradient is exactly zero, the textbook gradient masking (Athalye et al. 2018)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


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


COLUMNS = ["clean", "fgs", "pgd", "fgs_A'", "pgd_A'", "fgs_B'", "pgd_B'", "fgs_C'", "pgd_C'"]


def check_quick_schema(report, experiment):
    """The results JSON of a full --quick run (all six models), as the README documents it."""
    import torch
    quick = __import__("runner.settings").settings.QUICK_SETTINGS
    assert report["experiment"] == experiment
    assert all(report["settings"][k] == v for k, v in quick.items())
    assert report["seeds"] == {"A": 0, "B": 0, "C": 0, "A'": 1, "B'": 1, "C'": 1}
    prov = report["provenance"]
    assert prov["versions"]["torch"] == torch.__version__ and prov["device"].startswith("cpu")
    assert "git_commit" in prov and "git_dirty" in prov and experiment.split("_")[0] in prov["command"]
    for model in report["models"].values():
        assert model["iters_done"] == quick["iters"] and model["train_seconds"] > 0
        assert [h["iter"] for h in model["history"]] == list(range(quick["log_every"], quick["iters"] + 1, quick["log_every"]))
        assert all("loss" in h and "lr" in h for h in model["history"])
        assert model["sessions"][0]["from_iter"] == 0 and "git_commit" in model["sessions"][0]
    assert report["eval"]["n_test"] == quick["test_n"] and report["eval"]["columns"] == COLUMNS
    assert set(report["table"]) == {"A", "B", "C"}
    for row in report["table"].values():
        assert set(row) == set(COLUMNS) and all(0 <= v <= 100 for v in row.values())


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory):
    return write_fake_mnist(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def shared_checkpoints(tmp_path_factory):
    """One checkpoint root for the session's --quick runs: ensemble.py and generators_study.py reuse
    the models the data-set scripts' quick runs trained (or train them, if they run first)."""
    return str(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar10")), 10)


def write_fake_cifar(root, n_classes=10, n_train=200, n_test=200):
    """CIFAR's python-version pickles, as torchvision reads them (its MD5 check is patched in the tests)."""
    import pickle
    folder = os.path.join(root, "cifar-10-batches-py" if n_classes == 10 else "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(2)
    key = "labels" if n_classes == 10 else "fine_labels"

    def dump(name, n):
        labels = rng.integers(0, n_classes, n)
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, key: labels.tolist()}, f)

    if n_classes == 10:
        for i in range(1, 6):
            dump(f"data_batch_{i}", n_train // 5)
        dump("test_batch", n_test)
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        dump("train", n_train)
        dump("test", n_test)
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    with open(os.path.join(folder, meta[0]), "wb") as f:
        pickle.dump(meta[1], f)
    return root


def write_fake_svhn(root, n=200):
    """SVHN's .mat files: X is (32, 32, 3, N) uint8, y is (N, 1) with the digit 0 stored as 10."""
    import scipy.io
    folder = os.path.join(root, "SVHN")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(3)
    for split in ("train", "test", "extra"):
        scipy.io.savemat(os.path.join(folder, f"{split}_32x32.mat"),
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                          "y": rng.integers(1, 11, (n, 1), dtype=np.uint8)})
    return root


@pytest.fixture
def no_md5_check(monkeypatch):
    """torchvision checks CIFAR's and SVHN's MD5 sums; fake files can only pass with that check off."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn
    exists = lambda path, md5=None: os.path.isfile(path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)
