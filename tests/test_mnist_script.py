"""mnist.py end to end on fake files in torchvision's format, and each bad input's one-line error."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, check_quick_schema

OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def run(*args, cwd=ROOT):
    env = os.environ | OFFLINE | {"PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, "mnist.py"), "--gpu", "cpu", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def quick_run(fake_mnist, tmp_path_factory, shared_checkpoints):
    out, ckpt = str(tmp_path_factory.mktemp("quick") / "mnist.json"), os.path.join(shared_checkpoints, "mnist_quick")
    result = run("--quick", "--data-dir", fake_mnist, "--out", out, "--ckpt-dir", ckpt)
    assert result.returncode == 0, result.stderr
    return out, ckpt, result


@pytest.mark.slow
def test_quick_run_writes_a_schema_valid_json(quick_run):
    out, _, result = quick_run
    with open(out) as f:
        report = json.load(f)
    check_quick_schema(report, "mnist_quick")
    assert "paper" in result.stdout and "results written" in result.stdout


@pytest.mark.slow
def test_rerun_skips_finished_models(quick_run, fake_mnist):
    out, ckpt, _ = quick_run
    with open(out) as f:
        first = json.load(f)
    result = run("--quick", "--data-dir", fake_mnist, "--out", out, "--ckpt-dir", ckpt)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("not retrained") == 6
    with open(out) as f:
        again = json.load(f)
    assert again["models"] == first["models"] and again["table"] == first["table"]


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def kept_results(path, experiment):
    """A results file of `experiment` at `path` (one the run would merge into): the text an error must leave."""
    text = json.dumps({"experiment": experiment, "keep": True})
    path.write_text(text)
    return text


@pytest.fixture
def sentinel(tmp_path):
    """A results file of the quick MNIST run that an error must leave as it was."""
    path = tmp_path / "results.json"
    text = kept_results(path, "mnist_quick")
    yield str(path)
    assert path.read_text() == text, "a failed run overwrote the results"


def test_missing_data_offline_says_which_files_go_where(tmp_path, sentinel):
    result = run("--quick", "--data-dir", str(tmp_path / "empty"), "--out", sentinel)
    assert_clean_error(result, "train-images-idx3-ubyte", os.path.join(str(tmp_path / "empty"), "MNIST", "raw"))


def test_fashion_missing_data_names_its_folder(tmp_path):
    out = tmp_path / "results.json"
    text = kept_results(out, "fashion_mnist_quick")
    result = run("--quick", "--fashion", "--data-dir", str(tmp_path), "--out", str(out))
    assert_clean_error(result, os.path.join("FashionMNIST", "raw"))
    assert out.read_text() == text, "a failed run overwrote the results"


@pytest.mark.parametrize("args,fragment", [
    (["--gpu", "99"], "--gpu 99"),
    (["--set", "no_such_key=1"], "unknown setting"),
    (["--set", "iters=many"], "iters takes an integer, not 'many'"),
    (["--set", "eps"], "key=value"),
    (["--set", "hvp=magic"], "hvp"),
    (["--models", "A,Z"], "--models"),
    (["--set", "compile=true", "--set", "hvp=exact"], "double backpropagation"),
    (["--eval-n", "-5"], "test_n"),
    (["--set", "bn_eval=both"], "bn_eval"),
    (["--set", "compile=true", "--set", "cuda_graphs=true"], "compile and cuda_graphs"),
    (["--gpu", "cpu", "--set", "cuda_graphs=true"], "needs a CUDA device"),
])
def test_bad_command_line_gets_one_line_error(args, fragment, fake_mnist, sentinel):
    assert_clean_error(run("--quick", "--data-dir", fake_mnist, "--out", sentinel, *args), fragment)


@pytest.mark.parametrize("setting", ["eps=-0.3", "eps=1.5", "d_lr=0", "d_lr_drop_at=1.5", "g_beta1=1", "strong_n=-1",
                                     "square_queries=0", "pgd_steps=0", "eat_n=-2", "log_every=0"])
def test_setting_out_of_range_stops_before_training(setting, fake_mnist, tmp_path, sentinel):
    ckpt = tmp_path / "ckpt"
    result = run("--quick", "--data-dir", fake_mnist, "--out", sentinel, "--ckpt-dir", str(ckpt), "--set", setting)
    assert_clean_error(result, setting.split("=")[0], "outside its range")
    assert not ckpt.exists()


def test_corrupt_checkpoint_is_reported(fake_mnist, tmp_path, sentinel):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "A.pt").write_bytes(b"not a checkpoint")
    result = run("--quick", "--data-dir", fake_mnist, "--out", sentinel, "--ckpt-dir", str(tmp_path / "ckpt"))
    assert_clean_error(result, "A.pt", "unreadable")


@pytest.mark.slow
def test_checkpoint_from_other_settings_or_model_is_reported(quick_run, fake_mnist, tmp_path, sentinel):
    _, ckpt, _ = quick_run
    result = run("--quick", "--data-dir", fake_mnist, "--out", sentinel, "--ckpt-dir", ckpt, "--set", "d_lr=0.5")
    assert_clean_error(result, "other settings")
    state = torch.load(os.path.join(ckpt, "A.pt"), weights_only=True)
    state["D"]["fc.weight"] = state["D"]["fc.weight"][:5]  # right settings, wrong shapes
    (tmp_path / "ckpt").mkdir()
    torch.save(state, tmp_path / "ckpt" / "A.pt")
    result = run("--quick", "--data-dir", fake_mnist, "--out", sentinel, "--ckpt-dir", str(tmp_path / "ckpt"),
                 "--models", "A")
    assert_clean_error(result, "does not match")


@pytest.mark.slow
def test_diverging_training_stops_with_a_clear_error(fake_mnist, tmp_path, sentinel):
    result = run("--quick", "--data-dir", fake_mnist, "--out", sentinel, "--ckpt-dir", str(tmp_path / "ckpt"),
                 "--models", "A", "--set", "d_lr=1e30")
    assert_clean_error(result, "NaN")
