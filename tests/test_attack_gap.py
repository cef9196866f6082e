"""tools/attack_gap.py: the PGD variants that each take one ingredient of APGD-CE, the scoring of an
attack's images among clean ones, and the results file that only ever gains."""
import json

import pytest
import torch
import torch.nn as nn

import attack_gap
import runner.errors
from test_mnist_script import quick_run  # noqa: F401 (the session's quick models)


class Window(nn.Module):
    """One-pixel images; class 1 wins only where the pixel lies within `r` of `c`, and the cross-entropy of
    class 0 rises toward c: a fixed-step ascent oscillates across c, fooled on every other step."""

    def __init__(self, c=0.5, r=0.051, height=100.0):
        super().__init__()
        self.c, self.r, self.height = c, r, height

    def forward(self, x):
        v = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(v), self.height * (self.r ** 2 - (v - self.c) ** 2)], 1)


class AboveBatchMean(nn.Module):
    "Class 1 where an image's mean lies above its batch's: a model scored with batch statistics."

    def forward(self, x):
        v = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(v), v - v.mean()], 1)


def fooled_at_end(model, keep_first, steps):
    torch.manual_seed(0)
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.zeros(1, dtype=torch.long)
    x_adv = attack_gap.pgd_variant(model, x, y, 0.5, steps, lambda k: 0.1, keep_first=keep_first)
    return bool(model(x_adv).argmax(1) != y)


def test_keep_first_keeps_the_iterate_that_fooled_the_model():
    model = Window()
    assert [fooled_at_end(model, False, s) for s in (20, 21)].count(True) == 1  # the last iterate: fooled on one parity
    assert fooled_at_end(model, True, 20) and fooled_at_end(model, True, 21)


def test_halving_halves_after_every_fifth_of_the_run():
    step = attack_gap.halving(0.3, 100)
    assert [step(k) for k in (0, 19, 20, 39, 40, 99)] == pytest.approx([0.6, 0.6, 0.3, 0.3, 0.15, 0.6 / 16])


def test_momentum_carries_a_quarter_of_the_last_move():
    # a linear model: every step's sign is +1, so z - x_adv is the step (until the ball's edge) and the
    # last move carries on: 0.1, then 0.75 * 0.1 + 0.25 * 0.1 = 0.1 (no change) with a constant step, and
    # 0.75 * 0.05 + 0.25 * 0.1 = 0.0625 once the step halves
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
    x, y = torch.full((1, 1, 1, 1), 0.2), torch.zeros(1, dtype=torch.long)
    torch.manual_seed(0)
    start = attack_gap.pgd_variant(model, x, y, 0.5, 0, lambda k: 0.0)
    torch.manual_seed(0)
    x_adv = attack_gap.pgd_variant(model, x, y, 0.5, 2, lambda k: 0.1 if k == 0 else 0.05, momentum=0.25)
    assert x_adv.item() == pytest.approx(start.item() + 0.1 + 0.0625)


def test_among_clean_replaces_only_the_image_scored():
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).view(6, 1, 1, 1)
    x_adv = torch.tensor([0.35, 0.25, 0.0, 0.0, 0.9, 0.0]).view(6, 1, 1, 1)
    y = torch.ones(6, dtype=torch.long)
    # batches of 4 and 2: image 1 (0.25) lies below the mean of 0.1, 0.3, 0.4 and itself, though above
    # that of its batch of attacked images (0.35, 0.25, 0, 0)
    right = attack_gap.among_clean(AboveBatchMean(), x_adv, x, y, 4)
    assert right.tolist() == [True, False, False, False, True, False]


def test_pure_and_within_the_threat_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).train()
    stats = [t.clone() for t in (model[1].running_mean, model[1].running_var)]
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for name, craft in attack_gap.attacks(0.3, 4, 0).items():
        rng = torch.get_rng_state()
        with torch.no_grad():  # an attack needs no caller's grad mode
            x_adv = craft(model, x, y)
        assert name != "apgd_ce" or torch.equal(torch.get_rng_state(), rng), "APGD-CE seeded the global generator"
        assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1, name
        assert model.training and torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1]), name
        assert all(p.grad is None for p in model.parameters()), name


def test_a_results_file_of_another_snapshot_checkpoint_or_tool_is_refused(tmp_path):
    out = tmp_path / "gap.json"
    report = {"experiment": "attack_gap", "fingerprint": "f", "iteration": 4000, "n_test": 200, "eps": 0.3, "steps": 100,
              "eval_batch": 64, "bn_eval": "batch"}
    out.write_text(json.dumps(report | {"accuracy": {"pgd": 50.0}}))
    assert attack_gap.earlier_scores(str(out), report)["accuracy"] == {"pgd": 50.0}
    # another snapshot of the same run shares its fingerprint: only the iteration tells them apart
    for key, value in (("iteration", 20000), ("fingerprint", "g"), ("n_test", 100), ("experiment", "over_training")):
        with pytest.raises(runner.errors.UserError, match=f"{key} .* there, .* here"):
            attack_gap.earlier_scores(str(out), report | {key: value})
    assert attack_gap.earlier_scores(str(tmp_path / "none.json"), report) is None


@pytest.mark.slow
def test_a_second_run_scores_only_what_is_missing(quick_run, fake_mnist, tmp_path, capsys):
    _, ckpt, _ = quick_run
    out = tmp_path / "gap.json"
    args = [f"{ckpt}/C.pt", "--dataset", "mnist", "--data-dir", fake_mnist, "--gpu", "cpu", "--eval-n", "8", "--out", str(out)]
    first = attack_gap.main(args)
    assert set(first["accuracy"]) == {"zero_gradient_percent", *attack_gap.attacks(0.3, 1, 0), "apgd_ce_among_clean"}
    kept = json.loads(out.read_text())
    del kept["accuracy"]["pgd_halving"]
    out.write_text(json.dumps(kept))
    capsys.readouterr()
    second = attack_gap.main(args)
    assert [line for line in capsys.readouterr().err.splitlines() if " on 8 images" in line] == ["C: pgd_halving on 8 images"]
    assert second["accuracy"] == first["accuracy"] and set(second["seconds"]) == set(first["seconds"])
    stamp = out.stat().st_mtime_ns
    attack_gap.main(args)  # everything scored: the file, and the provenance of who scored it, stay as they are
    assert out.stat().st_mtime_ns == stamp
