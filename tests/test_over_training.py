"""Robust accuracy over training: the held-out validation split, its periodic scoring (which must not
change training), kept snapshots across a resume, and the scoring of snapshots (over_training.py,
evaluate.py)."""
import copy
import json
import os

import pytest
import torch

import core
import evaluate
import mnist
import over_training
import runner.errors
import runner.settings
import runner.training
import runner.validation
from conftest import ROOT, learnable_images

# g_steps=1 and pgd_steps=3: what is tested does not depend on them, and the CPU time does
SETTINGS = mnist.SETTINGS | dict(iters=8, g_width=4, g_steps=1, pgd_steps=3, log_every=3, ckpt_minutes=0.0, batch_size=16,
                                 val_n=16, eval_every=2, keep_every=4)
CPU = torch.device("cpu")


def data(n=80):
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    return torch.from_numpy(learnable_images(y.numpy())).unsqueeze(1), y


def train(folder, method, settings=SETTINGS, batches_hook=None):
    """Model C (advnet) or B (pgd) from seed 0, as prepare_model trains them; with the global RNG's state
    at the end, since training draws from it (B's PGD starts)."""
    make = runner.training.batch_maker(0, settings, data, CPU)
    hooked = make if batches_hook is None else lambda: batches_hook(make())
    D, G = runner.training.build_models(0, settings, mnist.build_D, mnist.build_G, CPU)
    record = runner.training.train_model(method, method, 0, D, G, hooked, settings, CPU, str(folder / f"{method}.pt"))
    return D, G, record, torch.get_rng_state()


def same_weights(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def without_seconds(history):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """C trained without interruption, scored every 2 iterations, a snapshot kept every 4."""
    folder = tmp_path_factory.mktemp("reference")
    return folder, train(folder, "advnet")


# ---------------------------------------------------------------- periodic evaluation leaves training alone
@pytest.mark.parametrize("method", ["pgd", "advnet"])
def test_periodic_evaluation_leaves_training_bit_identical(method, reference, tmp_path):
    """B draws PGD starts from the global RNG in every step; C's G has batch norm, whose running statistics
    an evaluation in train mode would move. Neither may notice the validation scoring between steps."""
    D0, G0, plain, rng0 = train(tmp_path / "plain", method, SETTINGS | {"eval_every": 0, "keep_every": 0})
    D1, G1, scored, rng1 = reference[1] if method == "advnet" else train(tmp_path / "scored", method)
    assert [v["iter"] for v in scored["val_history"]] == [2, 4, 6, 8] and "val_history" not in plain
    assert all(set(v) >= {"clean", "fgs", "pgd", "seconds"} for v in scored["val_history"])
    assert all(("generator" in v) == (method == "advnet") for v in scored["val_history"])
    assert same_weights(D0, D1) and same_weights(G0, G1)
    assert torch.equal(rng0, rng1)  # so a run that goes on after it draws what it would have drawn
    assert D1.training and G1.training  # the loop's modes are given back


# ---------------------------------------------------------------- snapshots and history survive a resume
def test_resumed_run_keeps_its_snapshots_and_history_and_equals_an_uninterrupted_one(reference, tmp_path):
    ref_folder, (D_ref, G_ref, ref, _) = reference

    class CrashAt6:  # the process dies during iteration 6, after snapshot 4 (as kill -9 would)
        def __init__(self, batches):
            self.batches = batches

        def __getattr__(self, name):
            return getattr(self.batches, name)

        def __call__(self, it):
            if it == 5:
                raise RuntimeError("killed")
            return self.batches(it)

    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path, "advnet", batches_hook=CrashAt6)
    saved = core.load_checkpoint(str(tmp_path / "advnet.pt"))["record"]
    assert saved["iters_done"] == 4 and saved["snapshots"] == [4]
    before = (tmp_path / "advnet.iter4.pt").read_bytes()
    D, G, record, _ = train(tmp_path, "advnet")
    assert [s["from_iter"] for s in record["sessions"]] == [0, 4]
    assert same_weights(D, D_ref) and same_weights(G, G_ref)
    assert without_seconds(record["val_history"]) == without_seconds(ref["val_history"])
    assert record["snapshots"] == ref["snapshots"] == [4, 8] and record["best_snapshot"] == ref["best_snapshot"]
    assert (tmp_path / "advnet.iter4.pt").read_bytes() == before  # the resume left the earlier snapshot alone
    for it in (4, 8):
        mine, theirs = (core.load_checkpoint(str(folder / f"advnet.iter{it}.pt")) for folder in (tmp_path, ref_folder))
        assert mine["record"]["iters_done"] == it and all(torch.equal(mine["D"][k], v) for k, v in theirs["D"].items())
        assert [v["iter"] for v in mine["record"]["val_history"]] == list(range(2, it + 1, 2))


def test_best_snapshot_is_the_kept_one_with_the_highest_validation_pgd():
    record = {"snapshots": [4, 8], "val_history": [{"iter": i, "clean": 50.0, "pgd": p} for i, p in
                                                     [(2, 90.0), (4, 30.0), (6, 80.0), (8, 40.0)]]}
    assert runner.validation.best_snapshot(record) == {"iter": 8, "val_pgd": 40.0, "val_clean": 50.0}  # 2 and 6 were not kept
    assert runner.validation.best_snapshot({"snapshots": [4], "val_history": []}) is None


# ---------------------------------------------------------------- the held-out split
def test_held_out_split_never_overlaps_the_training_batches():
    n = 100
    ids = torch.arange(n)
    images = torch.stack([ids % 256, ids // 256], 1).to(torch.uint8).view(n, 1, 2, 1)  # each image says its index
    settings = SETTINGS | {"val_n": 20, "batch_size": 16, "augment": False}
    index = lambda x: {int(a) + 256 * int(b) for a, b in (x * 255).round().view(len(x), 2).tolist()}
    seen, held = set(), None
    for seed in (0, 1):  # A and its copy A' hold out the same images
        batches = runner.training.batch_maker(seed, settings, lambda: (images, ids), CPU)()
        held_x, held_y = batches.held_out
        assert held is None or held == set(held_y.tolist())
        held = set(held_y.tolist())
        assert index(core.to_float(held_x)) == held and len(held) == 20
        for it in range(3 * batches.per_epoch):  # three epochs, each its own permutation
            x, y = batches(it)
            assert index(x) == set(y.tolist())
            seen |= set(y.tolist())
    assert not seen & held and seen | held == set(range(n))
    with pytest.raises(runner.errors.UserError, match="val_n=100"):
        runner.training.batch_maker(0, settings | {"val_n": n}, lambda: (images, ids), CPU)()


def test_val_n_changes_the_fingerprint_and_the_evaluation_settings_do_not():
    s = mnist.SETTINGS | runner.settings.QUICK_SETTINGS
    before = json.loads(runner.settings.fingerprint(s, "advnet", 0))
    assert "val_n" not in before  # val_n=0: checkpoints trained before it existed stay valid
    assert runner.settings.fingerprint(s | {"eval_every": 5, "keep_every": 5}, "advnet", 0) == json.dumps(before)
    assert json.loads(runner.settings.fingerprint(s | {"val_n": 50}, "advnet", 0)) == before | {"val_n": 50}


def test_val_from_unused_scores_the_images_before_train_from_and_trains_as_without_a_split(tmp_path):
    images, labels = data(96)
    first = 32  # train_from: images 0 to 31 are never trained on, and the split is their first 16
    split = mnist.training_from((images, labels, images[:8], labels[:8]), first, val_n=16)
    assert torch.equal(split[4][0], images[:16]) and torch.equal(split[0], images[first:])
    unused = SETTINGS | {"val_from": "unused", "train_from": first}
    runs = {}
    for name, settings, given in (("split", unused, split), ("none", unused | {"val_n": 0, "eval_every": 0, "keep_every": 0},
                                                             split[:4])):
        make = runner.training.batch_maker(0, settings, lambda: (given[0], given[1], *given[4:]), CPU)
        D, G = runner.training.build_models(0, settings, mnist.build_D, mnist.build_G, CPU)
        record = runner.training.train_model("C", "advnet", 0, D, G, make, settings, CPU, str(tmp_path / f"{name}.pt"))
        runs[name] = (D, G, record)
    (D, G, record), (D0, G0, _) = runs["split"], runs["none"]
    assert record["held_out"] == {"val_n": 16, "val_from": "unused", "train_n": 64}
    assert [v["iter"] for v in record["val_history"]] == [2, 4, 6, 8]
    for a, b in ((D, D0), (G, G0)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # so its checkpoint is one of val_n=0, and the same model loads under either
    assert runner.settings.fingerprint(unused, "advnet", 0) == runner.settings.fingerprint(unused | {"val_n": 0}, "advnet", 0)
    assert "val_from" not in json.loads(runner.settings.fingerprint(SETTINGS, "advnet", 0))  # training: older checkpoints'
    with pytest.raises(runner.errors.UserError, match="does not set aside"):
        runner.training.batch_maker(0, unused, lambda: split[:2], CPU)()


class Args:
    quick, iters, seed, eval_n, bn_eval = False, None, None, None, None

    def __init__(self, *pairs):
        self.set = list(pairs)


@pytest.mark.parametrize("pairs,fragment", [(["eval_every=100"], "set val_n too"),
                                            (["eval_every=300", "val_n=500", "keep_every=1000"], "not a multiple"),
                                            (["val_n=-1"], "outside its range"),
                                            (["val_n=10", "val_from=unused"], "train_from=0"),
                                            (["val_n=6000", "val_from=unused", "train_from=5000"], "val_n=6000 is more"),
                                            (["val_from=test"], "val_from must be one of")])
def test_validation_settings_are_checked(pairs, fragment):
    with pytest.raises(runner.errors.UserError, match=fragment):
        runner.settings.resolve_settings(mnist.SETTINGS, Args(*pairs))
    runner.settings.resolve_settings(mnist.SETTINGS, Args("eval_every=500", "val_n=500", "keep_every=1000"))


# ---------------------------------------------------------------- scoring the snapshots
SCORING = ["--quick", "--gpu", "cpu", "--eval-n", "40", "--set", "strong_n=20"]


@pytest.fixture(scope="module")
def scored(fake_mnist, tmp_path_factory):
    """A quick C trained with a validation split and a snapshot every 5 iterations, and over_training.py's
    scores of its snapshots: (checkpoint folder, results file)."""
    folder = tmp_path_factory.mktemp("over_training")
    ckpt_dir, out = str(folder / "ckpt"), str(folder / "results" / "over_training_quick.json")
    mnist.main(["--quick", "--gpu", "cpu", "--data-dir", fake_mnist, "--ckpt-dir", ckpt_dir, "--models", "C", "--no-eval",
                "--set", "val_n=32", "--set", "eval_every=5", "--set", "keep_every=5", "--set", "g_steps=1"])
    over_training.main([os.path.join(ckpt_dir, "C.pt"), "--dataset", "mnist", "--data-dir", fake_mnist, "--out", out] + SCORING)
    return ckpt_dir, out


def test_every_snapshot_is_scored_and_named_by_its_own_iteration(scored, fake_mnist, tmp_path, monkeypatch):
    ckpt_dir, out = scored
    report = json.loads(open(out).read())
    assert report["experiment"] == "over_training_quick"
    assert report["scoring"]["test_n"] == 40 and report["scoring"]["strong_n"] == 20 and report["dataset"] == "mnist"
    model = report["models"]["C"]
    assert model["method"] == "advnet" and model["model"]["held_out"]["val_n"] == 32
    assert [e["iter"] for e in model["snapshots"]] == [5, 10]  # read from each snapshot, not from the running checkpoint
    assert model["best_snapshot"]["iter"] in (5, 10)
    for entry in model["snapshots"]:
        assert entry["checkpoint"].endswith(f"C.iter{entry['iter']}.pt") and entry["validation"]["iter"] == entry["iter"]
        assert set(entry["accuracy"]) == set(over_training.ATTACKS) and entry["autoattack_n"] == 20
        on_20 = entry["on_autoattack_images"]
        assert set(on_20) == set(over_training.ATTACKS + ["autoattack"]) and on_20["autoattack"] <= on_20["clean"]
    # evaluate.py scores a snapshot too, says which iteration it scored, and agrees on the deterministic columns,
    # on the first 40 images and on the first 20 (where AutoAttack is set against the other attacks)
    for n, key in (("40", "accuracy"), ("20", "on_autoattack_images")):
        first = evaluate.main([model["snapshots"][0]["checkpoint"], "--dataset", "mnist", "--gpu", "cpu", "--data-dir",
                               fake_mnist, "--eval-n", n, "--out", str(tmp_path / f"eval_{n}.json")])
        assert first["iteration"] == 5 and first["model"]["iters_done"] == 5
        assert {k: first["table"]["model"][k] for k in ("clean", "fgs")} == {k: model["snapshots"][0][key][k] for k in ("clean", "fgs")}
    # the same command again reuses what it scored
    monkeypatch.setattr(over_training, "score_snapshot", lambda *a: pytest.fail("scored again"))
    again = over_training.main([os.path.join(ckpt_dir, "C.pt"), "--dataset", "mnist", "--data-dir", fake_mnist, "--out", out]
                               + SCORING)
    assert again["models"]["C"]["snapshots"] == model["snapshots"]


def test_the_notebook_plots_each_attack_over_training_and_names_a_malformed_file(scored, tmp_path, monkeypatch, capsys):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    report = json.loads(open(scored[1]).read())
    for e in report["models"]["C"]["snapshots"]:  # PGD-10 on the first 40 apart from PGD-10 on the first 20, which the
        e["accuracy"]["pgd10"] += 1.0              # quick models give alike: the table must use the latter
    (tmp_path / "over_training_quick.json").write_text(json.dumps(report))
    broken = copy.deepcopy(report) | {"experiment": "over_training"}
    del broken["models"]["C"]["snapshots"][1]["on_autoattack_images"]["autoattack"]
    (tmp_path / "over_training.json").write_text(json.dumps(broken))
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    monkeypatch.chdir(os.path.join(ROOT, "notebooks"))
    monkeypatch.syspath_prepend(os.path.join(ROOT, "notebooks"))  # as the kernel has it: the notebook imports figures
    plt.close("all")
    namespace = {"__name__": "results_notebook"}
    for cell in json.load(open("results.ipynb"))["cells"]:
        if cell["cell_type"] == "code":  # as run_nbval runs them, less the magics
            exec("\n".join(line for line in "".join(cell["source"]).splitlines() if not line.startswith("%")), namespace)
    text = capsys.readouterr().out
    assert "over_training.json: not shown: models.C.snapshots[1]: missing key 'on_autoattack_images.autoattack'" in text
    model = report["models"]["C"]
    cell = lambda accuracy, n: namespace["interval_text"](namespace["wilson"](accuracy, n))
    for e in model["snapshots"]:  # the table: PGD-10 and AutoAttack on the same images with their intervals, and the gap
        on, n = e["on_autoattack_images"], e["autoattack_n"]
        assert f"{e['iter']:>10}{cell(on['pgd10'], n):>22}{cell(on['autoattack'], n):>22}{on['pgd10'] - on['autoattack']:>8.1f}" in text
    ours = [plt.figure(n) for n in plt.get_fignums() if "over_training_quick.json" in str(plt.figure(n).get_suptitle())]
    assert len(ours) == 1 and ours[0].axes[0].get_title() == "C (advnet)"
    lines = {line.get_label(): list(line.get_ydata()) for line in ours[0].axes[0].lines}
    for key, label in [("pgd10", "PGD-10 (paper's)"), ("pgd_ce", "PGD-CE 100×5"), ("generator", "own generator")]:
        assert lines[f"{label}, first 40"] == [e["accuracy"][key] for e in model["snapshots"]]
    assert lines["AutoAttack, first 20"] == [e["on_autoattack_images"]["autoattack"] for e in model["snapshots"]]
    validation = [values for label, values in lines.items() if label.startswith("PGD, validation split")]
    assert validation == [[v["pgd"] for v in model["model"]["val_history"]]]
    plt.close("all")


def test_some_snapshots_are_scored_on_request_and_the_others_kept(scored, fake_mnist, tmp_path, monkeypatch):
    ckpt_dir, out = scored
    command = [os.path.join(ckpt_dir, "C.pt"), "--dataset", "mnist", "--data-dir", fake_mnist]
    model = json.loads(open(out).read())["models"]["C"]
    best = model["best_snapshot"]["iter"]
    # AutoAttack on more images at the best snapshot alone, into a file of its own
    deeper = over_training.main(command + ["--out", str(tmp_path / "deep.json"), "--snapshots", "best"]
                                + SCORING[:-1] + ["strong_n=40"])
    assert [(e["iter"], e["autoattack_n"]) for e in deeper["models"]["C"]["snapshots"]] == [(best, 40)]
    # the latest snapshot again into the full file: reused, and the other snapshot's entry stays in the file
    copy_of_out = tmp_path / "over_training_quick.json"
    copy_of_out.write_text(open(out).read())
    monkeypatch.setattr(over_training, "score_snapshot", lambda *a: pytest.fail("scored again"))
    over_training.main(command + ["--out", str(copy_of_out), "--snapshots", "last"] + SCORING)
    assert json.loads(copy_of_out.read_text())["models"]["C"]["snapshots"] == model["snapshots"]
    with pytest.raises(runner.errors.UserError, match=r"'7' is not all, last, best or one of the iterations .* \(5, 10\)"):
        over_training.main(command + ["--out", str(copy_of_out), "--snapshots", "last,7"] + SCORING)


def test_a_pass_stopped_halfway_keeps_every_entry_the_file_held(scored, fake_mnist, tmp_path, monkeypatch):
    """--snapshots all over a file that holds the last snapshot's entry (a run of --snapshots last,best
    before it), stopped after it has scored the first: the file still holds the last one's."""
    ckpt_dir, out = scored
    report = json.loads(open(out).read())
    first, last = report["models"]["C"]["snapshots"]
    report["models"]["C"]["snapshots"] = [last]
    partial = tmp_path / "over_training_quick.json"
    partial.write_text(json.dumps(report))
    real_write = over_training.write

    def write_then_stop(*args):
        real_write(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(over_training, "score_snapshot", lambda *a: first)
    monkeypatch.setattr(over_training, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        over_training.main([os.path.join(ckpt_dir, "C.pt"), "--dataset", "mnist", "--data-dir", fake_mnist,
                            "--out", str(partial), "--snapshots", "all"] + SCORING)
    assert json.loads(partial.read_text())["models"]["C"]["snapshots"] == [first, last]


def test_a_checkpoint_without_snapshots_is_a_clear_error(reference, fake_mnist, tmp_path):
    folder, _ = reference
    state = core.load_checkpoint(str(folder / "advnet.pt"))
    state["record"]["snapshots"] = []
    torch.save(state, tmp_path / "C.pt")
    with pytest.raises(runner.errors.UserError, match="keep_every"):
        over_training.main([str(tmp_path / "C.pt"), "--dataset", "mnist", "--gpu", "cpu", "--data-dir", fake_mnist,
                            "--out", str(tmp_path / "out.json")])


def test_ensemble_refuses_a_split_it_cannot_hold_out_of_the_eat_set(fake_mnist, tmp_path):
    import ensemble
    with pytest.raises(runner.errors.UserError, match="EAT set"):
        ensemble.main(["--quick", "--gpu", "cpu", "--datasets", "mnist", "--data-dir", fake_mnist, "--set", "val_n=10",
                       "--ckpt-dir", str(tmp_path), "--out", str(tmp_path / "ensemble.json")])
    assert os.listdir(tmp_path) == []  # stopped before anything was trained
