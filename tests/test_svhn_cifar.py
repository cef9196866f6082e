"""svhn.py, cifar10.py, cifar100.py on fake files in torchvision's formats; on-device augmentation;
the SVHN extra subset; several GPUs' command lines."""
import json
import os
import subprocess
import sys

import pytest
import torch

import cifar10
import cifar100
import core
import runner.errors
import runner.jobs
import svhn
from conftest import ROOT, check_quick_schema, write_fake_cifar, write_fake_svhn

SCRIPTS = {"cifar10": (cifar10, lambda root: write_fake_cifar(root, 10)),
           "cifar100": (cifar100, lambda root: write_fake_cifar(root, 100)),
           "svhn": (svhn, write_fake_svhn)}


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_writes_a_schema_valid_json(name, tmp_path, no_md5_check, fake_cifar10, shared_checkpoints):
    script, write_fake = SCRIPTS[name]
    data_dir = fake_cifar10 if name == "cifar10" else write_fake(str(tmp_path))
    out = tmp_path / "results.json"
    ckpt = os.path.join(shared_checkpoints, f"{name}_quick")
    script.main(["--quick", "--gpu", "cpu", "--data-dir", data_dir, "--out", str(out), "--ckpt-dir", ckpt])
    check_quick_schema(json.loads(out.read_text()), f"{name}_quick")


def test_loaders_give_uint8_nchw_images_and_labels(tmp_path, no_md5_check):
    write_fake_cifar(str(tmp_path), 100)
    write_fake_svhn(str(tmp_path))
    for train_x, train_y, test_x, test_y, n_train, n_classes in [
            (*cifar100.load_data(str(tmp_path)), 200, 100),
            (*svhn.load_data(str(tmp_path), extra_n=50, seed=0), 250, 10)]:
        assert train_x.dtype == torch.uint8 and train_x.shape == (n_train, 3, 32, 32) and test_x.shape[1:] == (3, 32, 32)
        assert train_y.dtype == torch.int64 and len(train_y) == n_train
        assert 0 <= train_y.min() and train_y.max() < n_classes and test_y.max() < n_classes


def test_cifar_layout_is_converted_not_scrambled(tmp_path, no_md5_check):
    import torchvision
    write_fake_cifar(str(tmp_path), 10)
    raw = torchvision.datasets.CIFAR10(str(tmp_path), train=False).data  # (N, H, W, C)
    test_x = cifar10.load_data(str(tmp_path))[2]
    assert torch.equal(test_x[7, 2], torch.from_numpy(raw[7, :, :, 2]))


def test_svhn_extra_subset_depends_only_on_the_seed():
    assert torch.equal(svhn.extra_subset(1000, 80, seed=3), svhn.extra_subset(1000, 80, seed=3))
    assert not torch.equal(svhn.extra_subset(1000, 80, seed=3), svhn.extra_subset(1000, 80, seed=4))
    assert svhn.extra_subset(1000, 80, seed=3).max() < 1000


def test_crop_flip_shifts_or_mirrors_each_image_and_keeps_range():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = core.crop_flip(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        candidates = [c for dy in range(9) for dx in range(9)
                      for c in (padded[i, :, dy:dy + 32, dx:dx + 32], padded[i, :, dy:dy + 32, dx:dx + 32].flip(2))]
        assert any(torch.equal(out[i], c) for c in candidates), f"image {i} is no crop of its padded source"


def test_augmented_batches_keep_labels():
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10
    plain = core.Batches(images, labels, 16, seed=0, device=torch.device("cpu"))
    augmented = core.Batches(images, labels, 16, seed=0, device=torch.device("cpu"), augment=core.crop_flip)
    (x0, y0), (x1, y1) = plain(5), augmented(5)
    assert torch.equal(y0, y1) and x1.shape == x0.shape and not torch.equal(x0, x1)


def test_each_job_gets_its_own_gpu_models_and_seed():
    argv = ["--gpu", "0,1", "--iters=5", "--models=A,B", "--set", "eps=0.1", "--no-eval", "--slurm", "--seeds", "3,4"]
    assert runner.jobs.job_argv(argv, ["--gpu", "0", "--models", "B", "--seeds", "4"]) == [
        "--iters=5", "--set", "eps=0.1", "--gpu", "0", "--models", "B", "--seeds", "4"]
    assert runner.jobs.job_argv(["--slurm", "partition=gpu,time=60", "--quick"], ["--eval-only"]) == ["--quick", "--eval-only"]


def test_a_local_job_names_the_physical_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runner.jobs.physical_gpu(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # this process's cuda:1 is the machine's GPU 6
    assert runner.jobs.physical_gpu(1) == 6


@pytest.mark.parametrize("script", ["cifar10.py", "svhn.py", "cifar100.py"])
def test_missing_data_offline_is_a_clear_error(script, tmp_path):
    from test_mnist_script import OFFLINE, assert_clean_error
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), "--quick", "--gpu", "cpu", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, env=os.environ | OFFLINE, cwd=str(tmp_path), timeout=300)
    assert_clean_error(result, str(tmp_path), ".mat" if script == "svhn.py" else "batch" if script == "cifar10.py" else "train")


def test_absent_gpus_in_a_list_are_a_clear_error():
    count = torch.cuda.device_count()
    with pytest.raises(runner.errors.UserError, match="CUDA device"):
        runner.jobs.parse_gpus(f"0,{count + 5}")
