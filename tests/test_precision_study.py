"""precision_study.py end to end on a fake Fashion-MNIST: both arms it trains, the bug arm read from
checkpoints it did not train, every score and the summary."""
import json
import os

import pytest

import core
import precision_study
from conftest import write_fake_mnist


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory):
    return write_fake_mnist(str(tmp_path_factory.mktemp("data")), "FashionMNIST")


@pytest.mark.slow
def test_the_study_trains_two_arms_scores_three_and_summarises(fake_fashion, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "study.json"
    common = ["--quick", "--gpu", "cpu", "--data-dir", fake_fashion, "--ckpt-dir", str(ckpt), "--seeds", "0,1",
              "--eval-n", "32", "--set", "strong_n=16"]
    precision_study.main(common + ["--arms", "float32,bf16", "--no-eval"])
    for seed in (0, 1):  # stands in for checkpoints trained by the code before the fix, with `mnist.py --seed s`
        trained = core.load_checkpoint(ckpt / "bf16" / f"seed{seed}" / "C.pt")
        trained["fingerprint"] = json.dumps(json.loads(trained["fingerprint"]) | {"seed": seed})
        os.makedirs(ckpt / "bf16_cache_bug" / f"seed{seed}")
        core.save_checkpoint(str(ckpt / "bf16_cache_bug" / f"seed{seed}" / "C.pt"), trained)
    precision_study.main(common + ["--eval-only", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"float32", "bf16", "bf16_cache_bug"} and report["seeds"] == [0, 1]
    bf16 = report["runs"]["bf16"]
    assert bf16["0"]["model"]["sessions"][0]["precision"] == "bf16 autocast"
    assert report["runs"]["float32"]["1"]["model"]["sessions"][0]["precision"] == "float32"
    for arm, by_seed in report["runs"].items():
        for seed, run in by_seed.items():
            assert set(precision_study.SCORES) <= set(run["float32"])
            assert report["bf16_table_minus_float32"][arm][seed]["pgd"] == round(run["bf16_table"]["pgd"] - run["float32"]["pgd"], 2)
    # the bug arm's copies score exactly as the arm they were copied from
    assert report["runs"]["bf16_cache_bug"]["0"]["float32"] == bf16["0"]["float32"]
    pgd = [r["float32"]["pgd"] for r in report["runs"]["float32"].values()]
    assert report["summary"]["float32"]["pgd"]["mean"] == pytest.approx(sum(pgd) / 2)
    assert (report["summary"]["float32"]["pgd"]["low"], report["summary"]["float32"]["pgd"]["high"]) == (min(pgd), max(pgd))
    assert report["within_float32_spread"]["bf16_cache_bug"] == report["within_float32_spread"]["bf16"]
