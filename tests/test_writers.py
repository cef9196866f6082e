"""Writers of checkpoints and results (issue 21): one process trains a model at a time, a full disk
keeps the last good checkpoint, writes are fsynced before and after their rename, and ensemble.json
keeps the entries other runs wrote meanwhile."""
import errno
import json
import os
import platform
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch

import core
import ensemble
import mnist
import runner.cli
import runner.files
import runner.settings
import runner.training
from conftest import ROOT
from test_data_checks import run_main

DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def mnist_command(data, ckpt, *args):
    return [sys.executable, os.path.join(ROOT, "mnist.py"), "--gpu", "cpu", "--quick", "--models", "A", "--data-dir", data,
            "--ckpt-dir", ckpt, *args]


@pytest.mark.slow
def test_a_second_process_training_the_same_model_stops_and_names_the_first(fake_mnist, tmp_path):
    ckpt, out = str(tmp_path / "ckpt"), tmp_path / "results.json"
    out.write_text('{"experiment": "mnist_quick", "keep": true}')
    env = os.environ | {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    long_run = ["--iters", "100000", "--set", "ckpt_minutes=0"]  # checkpoints every 5 iterations, for a long time
    first = subprocess.Popen(mnist_command(fake_mnist, ckpt, "--no-eval", *long_run), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(ckpt, "A.pt")):  # it trains, so it holds the lock
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() is not None else "slow"
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)  # paused mid-training, it holds its lock and leaves the CPU to the second
        second = subprocess.run(mnist_command(fake_mnist, ckpt, "--out", str(out), *long_run), env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: A: "), second.stderr
        for fragment in (os.path.join(ckpt, "A.pt"), f"pid {first.pid}", platform.node(), "since 20"):
            assert fragment in lines[0], lines[0]
        assert out.read_text() == '{"experiment": "mnist_quick", "keep": true}'

        # evaluation needs no lock: the first process's latest checkpoint loads while it trains
        settings = runner.settings.resolve_settings(mnist.SETTINGS, runner.cli.experiment_parser("").parse_args(
            ["--quick", *long_run]))
        _, _, record = runner.training.prepare_model("A", "standard", 0, settings, mnist.build_D, mnist.build_G, None,
                                                torch.device("cpu"), os.path.join(ckpt, "A.pt"), train=False)
        assert 0 < record["iters_done"] < 100000
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 leaves no stale lock, and the checkpoint is the first process's alone
    with runner.training.training_lock(os.path.join(ckpt, "A.pt"), "A"):
        pass
    record = core.load_checkpoint(os.path.join(ckpt, "A.pt"))["record"]
    assert [s["from_iter"] for s in record["sessions"]] == [0] and record["iters_done"] > 0


def test_a_file_system_without_locks_trains_unlocked_with_a_warning(tmp_path, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with runner.training.training_lock(str(tmp_path / "A.pt"), "A"):
        pass
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "A.pt" in err and "No locks available" in err and len(err.splitlines()) == 1


def test_disk_full_at_a_save_keeps_the_last_good_checkpoint(fake_mnist, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    argv = ["--gpu", "cpu", "--quick", "--models", "A", "--no-eval", "--data-dir", fake_mnist, "--ckpt-dir", str(ckpt),
            "--set", "ckpt_minutes=0"]  # --quick: 10 iterations, a checkpoint at 5 and at 10
    real_save, saved = torch.save, []

    def disk_fills(state, path):
        if saved:  # the second save: the disk fills up halfway through
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            raise DISK_FULL
        real_save(state, path)
        saved.append(open(path, "rb").read())

    monkeypatch.setattr(torch, "save", disk_fills)
    code, err = run_main(mnist.main, argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: A: ") and not any(line.startswith("error") for line in lines[:-1]), err
    for fragment in ("No space left on device", "reached iteration 10 of 10", f"{ckpt / 'A.pt'} keeps iteration 5"):
        assert fragment in lines[-1], lines[-1]
    assert (ckpt / "A.pt").read_bytes() == saved[0]
    assert not [name for name in os.listdir(ckpt) if ".tmp" in name]
    monkeypatch.undo()  # space freed: the same command resumes from the kept checkpoint
    mnist.main(argv)
    record = core.load_checkpoint(str(ckpt / "A.pt"))["record"]
    assert record["iters_done"] == 10 and [s["from_iter"] for s in record["sessions"]] == [0, 5]


def test_results_that_cannot_be_written_keep_the_earlier_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    out.write_text('{"keep": true}')

    def disk_fills(data, f, **kwargs):
        f.write('{"half": ')
        raise DISK_FULL

    monkeypatch.setattr(json, "dump", disk_fills)
    code, err = run_main(lambda argv: runner.files.write_json(str(out), {"new": True}), [], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(out) in lines[0] and "No space left on device" in lines[0] and "kept" in lines[0], lines[0]
    assert out.read_text() == '{"keep": true}' and os.listdir(tmp_path) == ["results.json"]


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino, stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(source, target):
        events.append(("replace", os.stat(source).st_ino, False))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for write in (lambda path: core.save_checkpoint(path, {"w": torch.ones(3)}),
                  lambda path: runner.files.write_json(path, {"a": 1})):
        events.clear()
        path = tmp_path / "folder" / "file"
        write(str(path))
        file, folder = path.stat().st_ino, path.parent.stat().st_ino
        assert events == [("fsync", file, False), ("replace", file, False), ("fsync", folder, True)], events


def test_ensemble_keeps_the_entries_another_run_wrote_meanwhile(tmp_path, monkeypatch):
    out = str(tmp_path / "ensemble.json")
    earlier, other, this = ({"C": {"clean": accuracy}} for accuracy in (10.0, 20.0, 30.0))  # one table for each writer
    runner.files.write_json(out, {"experiment": "ensemble", "datasets": {"cifar10": {"table": earlier}}})

    def run_dataset(key, args, device, results, later):  # while this run trains, another one finishes SVHN and writes its entry
        with open(out) as f:
            report = json.load(f)
        report["datasets"]["svhn"] = {"table": other}
        runner.files.write_json(out, report)
        return {"table": this}

    monkeypatch.setattr(ensemble, "run_dataset", run_dataset)
    ensemble.main(["--gpu", "cpu", "--datasets", "mnist", "--out", out])
    with open(out) as f:
        entries = json.load(f)["datasets"]
    assert {k: v["table"] for k, v in entries.items()} == {"cifar10": earlier, "svhn": other, "mnist": this}


def test_ensemble_merge_waits_for_another_process_merging(tmp_path):
    out = str(tmp_path / "ensemble.json")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; lock = open(sys.argv[1], 'a'); "
                               "fcntl.flock(lock, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", out + ".lock"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        entered = threading.Event()

        def merge():
            with runner.files.merge_lock(out):
                entered.set()

        waiter = threading.Thread(target=merge)
        waiter.start()
        assert not entered.wait(1.0), "merged while another process held the lock"
    finally:
        holder.stdin.close()
        holder.wait()
    waiter.join(10)
    assert entered.is_set()


@pytest.mark.slow
def test_a_run_never_replaces_its_results_file_by_one_that_holds_less(fake_mnist, tmp_path, capsys):
    out = tmp_path / "mnist_quick.json"
    command = ["--gpu", "cpu", "--quick", "--models", "C", "--data-dir", fake_mnist, "--ckpt-dir", str(tmp_path / "ckpt"),
               "--out", str(out)]
    mnist.main(command + ["--eval-n", "40"])
    mnist.main(command + ["--eval-n", "40"])  # the same run again holds as much: it may replace the file
    written = json.loads(out.read_text())
    more_than_this_run = {  # what an earlier file holds -> the phrase the refusal names
        "more test images": (written, ["--eval-n", "20"], "more than 20 test images"),
        "a strong evaluation": (written | {"strong_eval": {"n_test": 10}}, [], "a strong evaluation"),
        "another model": (written | {"table": written["table"] | {"A": written["table"]["C"]}}, [], "models A"),
        "another seed": (written | {"settings": written["settings"] | {"seed": 7}}, [], "seeds 7"),
        "another experiment": (written | {"experiment": "svhn"}, [], "not a results file of mnist_quick"),
    }
    for case, (earlier, extra, phrase) in more_than_this_run.items():
        out.write_text(json.dumps(earlier))
        before = out.read_bytes()
        capsys.readouterr()
        code, err = run_main(mnist.main, command + ["--eval-n", "40"] + extra, capsys)
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, (case, err)
        assert out.read_bytes() == before, case
