"""evaluate.py re-scores a checkpoint the training scripts wrote: the same numbers on the same images,
RobustBench's model_info, and one-line errors for what it cannot score."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from runner.settings import QUICK_SETTINGS
from test_mnist_script import OFFLINE, assert_clean_error, quick_run, run  # noqa: F401 (quick_run: the session's quick models)

pytestmark = pytest.mark.slow  # every test here scores the quick models of a quick run (quick_run)


def evaluate(*args):
    env = os.environ | OFFLINE | {"PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--gpu", "cpu", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("model", ["B", "C"])
def test_rescoring_a_quick_checkpoint_gives_the_training_runs_numbers(model, quick_run, fake_mnist, tmp_path):
    out, ckpt, _ = quick_run
    with open(out) as f:
        run = json.load(f)
    result = evaluate(os.path.join(ckpt, f"{model}.pt"), "--dataset", "mnist", "--data-dir", fake_mnist,
                      "--eval-n", str(run["eval"]["n_test"]), "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    row, trained = report["table"]["model"], run["table"][model]
    assert report["eval"]["n_test"] == run["eval"]["n_test"] and report["method"] == run["models"][model]["method"]
    assert row["clean"] == trained["clean"] and row["fgs"] == trained["fgs"]  # no randomness in either
    assert abs(row["pgd"] - trained["pgd"]) <= 5.0  # PGD's random start draws differently here
    assert report["settings"]["eps"] == run["settings"]["eps"] and report["settings"]["pgd_steps"] == run["settings"]["pgd_steps"]
    assert report["provenance"]["command"].startswith("evaluate.py") and report["model"]["iters_done"] == run["settings"]["iters"]


def test_robustbench_model_info(quick_run, fake_mnist, tmp_path):
    _, ckpt, _ = quick_run
    result = evaluate(os.path.join(ckpt, "C.pt"), "--dataset", "mnist", "--data-dir", fake_mnist, "--eval-n", "30",
                      "--robustbench", "--set", "strong_steps=5", "--set", "square_queries=20", "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    info = json.loads((tmp_path / "eval_model_info.json").read_text())
    accuracy = report["strong_eval"]["models"]["model"]["accuracy"]
    assert info["threat_model"] == "Linf" and info["eps"] == "0.3" and info["dataset"] == "mnist"
    assert float(info["clean_acc"]) == accuracy["clean"] and float(info["autoattack_acc"]) == accuracy["autoattack"]
    assert float(info["autoattack_acc"]) <= float(info["clean_acc"])
    assert info["architecture"].startswith("D1") and "Adversarial Networks" in info["name"] and info["reported"] == "56.51"
    assert "generator_C" in report["strong_eval"]["attacks"]  # C's own generator attacks it
    assert "not the standard numbers" in info["footnote"] and "first 30 test images" in info["footnote"]


@pytest.mark.parametrize("make,fragment", [
    (lambda ckpt, tmp: (str(tmp / "none.pt"), "mnist"), "does not exist"),
    (lambda ckpt, tmp: (os.path.join(ckpt, "A.pt"), "cifar10"), "is --dataset right"),
    (lambda ckpt, tmp: (str(tmp / "junk.pt"), "mnist"), "unreadable"),
])
def test_what_cannot_be_scored_gets_one_line(make, fragment, quick_run, fake_mnist, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    path, dataset = make(quick_run[1], tmp_path)
    result = evaluate(path, "--dataset", dataset, "--data-dir", fake_mnist, "--out", str(tmp_path / "eval.json"))
    assert_clean_error(result, fragment)
    assert not (tmp_path / "eval.json").exists()


def cascade_states(folder):
    """AutoAttack's state files of whole cascades in `folder` (one per model scored), not the nested ones of
    a resumed cascade nor the warnings beside them."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()
            if re.fullmatch(r"autoattack_[0-9a-f]{16}\.json", p.name)}


@pytest.mark.parametrize("flag", ["--strong-eval", "--autoattack"])
def test_a_cascade_evaluate_ran_on_a_target_is_read_back_by_the_tables_strong_evaluation(flag, quick_run, fake_mnist,
                                                                                        tmp_path):
    """AutoAttack's state is named by the model's weights: the cascade evaluate.py ran on one finished target
    (with --strong-eval, or alone with --autoattack), with the script's scoring settings, is read back by the
    table's --strong-eval."""
    models = tmp_path / "models"
    shutil.copytree(quick_run[1], models, ignore=shutil.ignore_patterns("*.json", "*.lock"))  # no state of other tests
    scoring = ["--eval-n", "40", "--bn-eval", "batch"]
    as_quick = [f"--set={k}={QUICK_SETTINGS[k]}" for k in ("strong_steps", "strong_restarts", "square_queries")]
    result = evaluate(str(models / "B.pt"), "--dataset", "mnist", "--data-dir", fake_mnist, *scoring, flag, *as_quick,
                      "--out", str(tmp_path / "B.json"))
    assert result.returncode == 0, result.stderr
    of_B = cascade_states(models)
    assert len(of_B) == 1
    result = run("--quick", "--eval-only", "--data-dir", fake_mnist, "--ckpt-dir", str(models), "--out",
                 str(tmp_path / "table.json"), *scoring, "--strong-eval")
    assert result.returncode == 0, result.stderr
    after = cascade_states(models)
    assert len(after) == 3 and after.items() >= of_B.items()  # A's and C's cascades ran; B's was read, not written again
    table = json.loads((tmp_path / "table.json").read_text())["strong_eval"]
    report = json.loads((tmp_path / "B.json").read_text())
    alone = report["autoattack"] if flag == "--autoattack" else report["strong_eval"]
    assert table["n_test"] == alone["n_test"] == 40
    assert table["models"]["B"]["accuracy"]["autoattack"] == (
        alone["accuracy"] if flag == "--autoattack" else alone["models"]["model"]["accuracy"]["autoattack"])
    assert (flag == "--autoattack") == ("strong_eval" not in report)  # --autoattack runs nothing else strong


@pytest.mark.parametrize("flags,fragment", [
    (["--strong-eval"], "drop --autoattack"),
    # a state kept in batches the scripts' --strong-eval refuses would never be read back
    (["--bn-eval", "batch", "--set", "eval_batch=6000"], "set eval_batch to 5000 or fewer"),
])
def test_what_autoattack_alone_refuses_is_one_line(flags, fragment, quick_run, fake_mnist, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(quick_run[1], models, ignore=shutil.ignore_patterns("*.json", "*.lock"))
    result = evaluate(str(models / "B.pt"), "--dataset", "mnist", "--data-dir", fake_mnist, "--autoattack", *flags,
                      "--out", str(tmp_path / "eval.json"))
    assert_clean_error(result, fragment)
    assert not (tmp_path / "eval.json").exists() and not cascade_states(models)


@pytest.mark.parametrize("first,then,fragment", [
    (["--autoattack"], [], "AutoAttack's cascade (add --autoattack)"),
    (["--strong-eval"], ["--autoattack"], "a strong evaluation (add --strong-eval)"),
    (["--eval-n", "40"], ["--eval-n", "20"], "scores on more than 20 test images"),
])
def test_a_results_file_is_never_replaced_by_one_that_holds_less(first, then, fragment, quick_run, fake_mnist, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(quick_run[1], models, ignore=shutil.ignore_patterns("*.json", "*.lock"))
    out = tmp_path / "B.json"
    common = [str(models / "B.pt"), "--dataset", "mnist", "--data-dir", fake_mnist, "--out", str(out),
              *[f"--set={k}={QUICK_SETTINGS[k]}" for k in ("strong_steps", "strong_restarts", "square_queries")]]
    result = evaluate(*common, *(first if "--eval-n" in first else ["--eval-n", "30", *first]))
    assert result.returncode == 0, result.stderr
    kept = out.read_bytes()
    result = evaluate(*common, *(then if "--eval-n" in then else ["--eval-n", "30", *then]))
    assert_clean_error(result, fragment)
    assert out.read_bytes() == kept
