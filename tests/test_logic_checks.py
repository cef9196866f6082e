"""Checks whose logic a one-line slip could break with every other test still green: which snapshot
--snapshots last names, an IDX file longer than its header declares, a --gpu index equal to the number
of CUDA devices, and a folder checked writable by writing into it, before any work."""
import os

import numpy as np
import pytest
import torch

import mnist
import over_training
import runner.data
import runner.files
import runner.jobs
from conftest import write_idx
from runner.errors import UserError
from test_data_checks import run_main


def test_snapshots_last_and_best_name_the_latest_and_validations_pick_in_any_listed_order():
    found = [(2000, "C.iter2000.pt"), (3000, "C.iter3000.pt"), (1000, "C.iter1000.pt")]
    ckpt = {"record": {"best_snapshot": {"iter": 2000}}}
    assert over_training.chosen(found, ckpt, "C.pt", "last") == [(3000, "C.iter3000.pt")]
    assert over_training.chosen(found, ckpt, "C.pt", "best") == [(2000, "C.iter2000.pt")]
    assert over_training.chosen(found, ckpt, "C.pt", "last,1000") == [(1000, "C.iter1000.pt"), (3000, "C.iter3000.pt")]


@pytest.mark.parametrize("extra", [1, 784])
def test_an_idx_file_longer_than_its_header_declares_is_refused(tmp_path, extra):
    path = str(tmp_path / "train-images-idx3-ubyte")
    write_idx(path, np.zeros((3, 28, 28)))
    assert runner.data.idx_problem(path) is None
    with open(path, "ab") as f:
        f.write(bytes(extra))
    assert runner.data.idx_problem(path).startswith("too long: its header declares 3 x 28 x 28 bytes")


@pytest.mark.parametrize("count", [1, 2, 4])
def test_a_gpu_index_equal_to_the_device_count_is_refused_and_the_one_below_taken(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert runner.jobs.parse_gpus(str(count - 1)) == [torch.device(f"cuda:{count - 1}")]
    with pytest.raises(UserError, match=f"no device {count}$"):
        runner.jobs.parse_gpus(str(count))
    with pytest.raises(UserError, match=f"no device {count}$"):
        runner.jobs.parse_gpus(f"0,{count}")


@pytest.fixture
def unwritable(tmp_path):
    """A folder no file can be created in, for this user: a read-only one, or for root (whom no mode
    stops) sysfs, which refuses new files to everyone."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        yield str(folder)
        folder.chmod(0o755)
        return
    try:
        open("/sys/kernel/probe-of-the-tests", "w").close()
    except OSError:
        yield "/sys/kernel"
        return
    os.remove("/sys/kernel/probe-of-the-tests")
    pytest.skip("no folder here refuses root's files")


def test_check_writable_writes_into_the_folder_and_refuses_one_that_takes_no_file(unwritable, tmp_path):
    runner.files.check_writable(str(tmp_path / "new" / "ckpt"), "--ckpt-dir")  # creates nothing, leaves nothing
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match="^--ckpt-dir: .* cannot be created"):
        runner.files.check_writable(os.path.join(unwritable, "ckpt"), "--ckpt-dir")
    with pytest.raises(UserError, match="^--out: .* cannot be written to"):
        runner.files.check_writable(unwritable, "--out")


def test_a_checkpoint_folder_that_takes_no_file_is_refused_before_any_training(unwritable, fake_mnist, tmp_path, capsys):
    code, err = run_main(mnist.main, ["--quick", "--gpu", "cpu", "--models", "A", "--data-dir", fake_mnist,
                                      "--ckpt-dir", os.path.join(unwritable, "ckpt"), "--out", str(tmp_path / "r.json")],
                         capsys)
    assert code == 2 and err.startswith("error: --ckpt-dir: ") and len(err.splitlines()) == 1, err
    assert "(standard)" not in err and os.listdir(tmp_path) == []
