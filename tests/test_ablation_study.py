"""tools/ablation_study.py on a fake Fashion-MNIST (--quick): each arm trains C with the authors' values
of its settings and nothing else changed, "all" is the five together, processes filling one results
file keep each other's entries, a model already scored is not scored again, and user errors are one line."""
import argparse
import json
import os
import subprocess
import sys

import pytest

import ablation_study
import core
import mnist
import runner.errors
import runner.settings
import runner.training
from conftest import ROOT
from test_precision_study import fake_fashion  # noqa: F401 (the module's fake Fashion-MNIST)

TOOL = os.path.join(ROOT, "tools", "ablation_study.py")

# what each arm switches on, as the issue lists the authors' settings; "all" is the first five
SWITCHED = {"paper": set(), "d_every": {"d_every"}, "g_optimiser": {"g_opt", "g_lr"},
            "d_drop": {"d_lr_drop_at", "d_fresh_momentum"}, "weight_decays": {"d_weight_decay", "g_weight_decay"},
            "g_net": {"g_net", "g_width"}, "gamma_sign": {"gamma"}}
FIVE = ["d_every", "g_optimiser", "d_drop", "weight_decays", "g_net"]
NO_FLAGS = argparse.Namespace(quick=False, iters=None, seed=None, eval_n=None, bn_eval=None, set=[], protocol="authors")
# model C's settings under --fashion --protocol authors: the values the project's table takes from the authors' code
AUTHORS_C = runner.settings.model_settings(runner.settings.resolve_settings(mnist.SETTINGS, NO_FLAGS, mnist.FASHION,
                                                                  mnist.FASHION_AUTHORS), "advnet")


def options(data, ckpt, *more):
    # g_steps=1: what is tested does not depend on G's steps per minibatch, and the CPU time does
    return ["--quick", "--gpu", "cpu", "--data-dir", data, "--ckpt-dir", str(ckpt), "--set", "g_steps=1",
            "--eval-n", "32", "--set", "strong_n=16", "--seeds", "0", *more]


@pytest.fixture(scope="module")
def trained(fake_fashion, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """Every arm's C with seed 0, trained (not scored) into one checkpoint folder; its fingerprints."""
    ckpt = tmp_path_factory.mktemp("ablation_checkpoints")
    ablation_study.main(options(fake_fashion, ckpt, "--no-eval"))
    fingerprints = {arm: json.loads(core.load_checkpoint(ablation_study.checkpoint(ckpt, arm, 0))["fingerprint"])
                    for arm in ablation_study.ARMS}
    return fake_fashion, ckpt, fingerprints


def changed(fingerprint, paper):
    """The settings a trained model's fingerprint holds otherwise than the paper arm's, with its values."""
    return {k: fingerprint.get(k) for k in fingerprint.keys() | paper.keys() if fingerprint.get(k) != paper.get(k)}


@pytest.mark.slow
@pytest.mark.parametrize("arm", list(SWITCHED))
def test_each_arm_trains_with_the_authors_values_of_its_settings_and_no_other_change(arm, trained):
    fingerprints = trained[2]
    switched = changed(fingerprints[arm], fingerprints["paper"])
    assert switched == {k: AUTHORS_C[k] for k in SWITCHED[arm]}
    if "g_lr" in switched:  # the finite-difference step h follows eta_G / 10 (fd_h 0), and is then theirs
        assert fingerprints[arm]["fd_h"] == 0 and switched["g_lr"] / 10 == pytest.approx(AUTHORS_C["fd_h"])


@pytest.mark.slow
def test_the_all_arm_is_the_five_settings_together(trained):
    fingerprints = trained[2]
    together = {}
    for arm in FIVE:
        together |= changed(fingerprints[arm], fingerprints["paper"])
    assert changed(fingerprints["all"], fingerprints["paper"]) == together
    assert "gamma" not in together


@pytest.mark.slow
def test_two_processes_with_different_arms_fill_one_file(trained, tmp_path, monkeypatch):
    """The second run adds its arm; and an entry that another process writes while this one scores is kept."""
    data, ckpt, _ = trained
    out = str(tmp_path / "ablation.json")
    ablation_study.main(options(data, ckpt, "--arms", "paper", "--out", out))
    real_score = ablation_study.score

    def score_while_another_process_writes(*args):
        monkeypatch.setattr(ablation_study, "score", real_score)
        ablation_study.main(options(data, ckpt, "--arms", "g_net", "--out", out))
        return real_score(*args)

    monkeypatch.setattr(ablation_study, "score", score_while_another_process_writes)
    report = ablation_study.main(options(data, ckpt, "--arms", "d_every", "--out", out))
    assert list(report["runs"]) == ["paper", "d_every", "g_net"] and report["seeds"] == [0]
    assert report["arms"] == {arm: ablation_study.ARMS[arm] for arm in ("paper", "d_every", "g_net")}
    pgd = {arm: report["runs"][arm]["0"]["scores"]["pgd"] for arm in report["runs"]}
    assert report["minus_paper"]["g_net"]["pgd"] == round(pgd["g_net"] - pgd["paper"], 2)
    assert report["summary"]["d_every"]["pgd"] == {"mean": pgd["d_every"], "std": None, "n": 1, "low": pgd["d_every"],
                                                   "high": pgd["d_every"]}
    assert json.loads(open(out).read()) == report


@pytest.mark.slow
def test_a_second_identical_run_trains_and_scores_nothing_and_a_changed_model_is_rescored(trained, tmp_path, monkeypatch):
    data, ckpt, _ = trained
    out = tmp_path / "ablation.json"
    run = options(data, ckpt, "--arms", "paper,gamma_sign", "--out", str(out))
    first = ablation_study.main(run)

    def forbidden(*args):
        raise AssertionError("a model already in the results file was loaded or scored again")

    with monkeypatch.context() as patched:
        patched.setattr(runner.training, "prepare_model", forbidden)
        patched.setattr(ablation_study, "score", forbidden)
        assert ablation_study.main(run)["runs"] == first["runs"]
    stale = json.loads(out.read_text())
    stale["runs"]["gamma_sign"]["0"]["fingerprint"] = "another model's"
    out.write_text(json.dumps(stale))
    scored, real_score = [], ablation_study.score
    monkeypatch.setattr(ablation_study, "score", lambda *args: scored.append(1) or real_score(*args))
    again = ablation_study.main(run)
    assert len(scored) == 1 and again["runs"]["paper"] == first["runs"]["paper"]
    assert again["runs"]["gamma_sign"]["0"]["fingerprint"] == first["runs"]["gamma_sign"]["0"]["fingerprint"]


def test_val_from_unused_takes_the_split_from_the_images_before_train_from(fake_fashion, tmp_path):  # noqa: F811
    # the split comes as a fifth item of mnist.training_data: a study that unpacked four could not run with it
    ablation_study.main(options(fake_fashion, tmp_path, "--arms", "paper", "--no-eval", "--set", "train_from=40",
                                "--set", "val_from=unused"))
    record = core.load_checkpoint(ablation_study.checkpoint(tmp_path, "paper", 0))["record"]
    assert record["held_out"] == {"val_n": 32, "val_from": "unused", "train_n": 256 - 40}


def test_an_unknown_arm_is_one_line_and_exit_2():
    run = subprocess.run([sys.executable, TOOL, "--arms", "paper,bogus"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: --arms paper,bogus: choose from paper, d_every")


@pytest.mark.parametrize("content, message", [("{not json", "not readable JSON"),
                                              ('{"experiment": "precision_study", "runs": {}}', "holds precision_study")])
def test_a_results_file_of_another_shape_is_refused_before_training(content, message, fake_fashion, tmp_path):  # noqa: F811
    out = tmp_path / "other.json"
    out.write_text(content)
    with pytest.raises(runner.errors.UserError, match=message):
        ablation_study.main(options(fake_fashion, tmp_path / "ckpt", "--out", str(out)))
    assert not (tmp_path / "ckpt").exists() and out.read_text() == content


@pytest.mark.slow
def test_a_results_file_scored_otherwise_is_refused(trained, tmp_path):
    data, ckpt, _ = trained
    out = str(tmp_path / "ablation.json")
    ablation_study.main(options(data, ckpt, "--arms", "paper", "--out", out))
    with pytest.raises(runner.errors.UserError, match=r"other settings \(test_n, scoring\)"):
        ablation_study.main(options(data, ckpt, "--arms", "paper", "--out", out, "--eval-n", "16"))


@pytest.mark.parametrize("overrides, error", [({"d_evry": 5}, KeyError), ({"d_every": 0}, runner.errors.UserError)])
def test_an_arm_overrides_only_settings_and_within_their_ranges(overrides, error, fake_fashion, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(ablation_study.ARMS, "faulty", overrides)
    with pytest.raises(error, match="not settings|outside its range"):
        ablation_study.main(options(fake_fashion, tmp_path, "--arms", "faulty"))
