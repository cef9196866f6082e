import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import core
from conftest import learnable_images

EPS = 0.1


def tiny_bn_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


ATTACKS = {
    "fgs": lambda m, x, y: core.fgs(m, x, y, EPS),
    "fgs_predicted": lambda m, x, y: core.fgs(m, x, core.predict(m, x), EPS),
    "fgs_least_likely": lambda m, x, y: core.fgs_least_likely(m, x, EPS),
    "pgd": lambda m, x, y: core.pgd(m, x, y, EPS),
    "pgd_big_steps": lambda m, x, y: core.pgd(m, x, y, EPS, alpha=3 * EPS, steps=3),
}


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("training", [True, False])
def test_attack_respects_threat_model_and_leaves_model_untouched(attack, training):
    torch.manual_seed(0)
    model = tiny_bn_model().train(training)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    x[:4] = 0.0  # pixels at the range's edges: the projection must keep them inside
    x[4:8] = 1.0
    before = bn_state(model)
    x_adv = ATTACKS[attack](model, x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and torch.isfinite(x_adv).all()
    assert (x_adv != x).any()
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    after = bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "batch-norm statistics moved"
    core.check_threat_model(x_adv, x, EPS)


def test_fgs_on_linear_model_equals_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    W = model[1].weight
    x, y = torch.rand(8, 1, 28, 28) * 0.8 + 0.1, torch.randint(0, 10, (8,))
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        grad = (p - F.one_hot(y, 10).float()) @ W  # d CE / d x for logits W x + b
    expected = (x + EPS * grad.sign().view_as(x)).clamp(0, 1)
    assert torch.allclose(core.fgs(model, x, y, EPS), expected)


def trained_tiny_model():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (512,))
    x = core.to_float(torch.from_numpy(learnable_images(labels.numpy())).unsqueeze(1))
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    return model, x, labels


def test_pgd_beats_fgs_beats_clean_in_loss():
    model, x, y = trained_tiny_model()
    loss = {name: F.cross_entropy(model(x_in), y).item() for name, x_in in
            {"clean": x, "fgs": core.fgs(model, x, y, EPS), "pgd": core.pgd(model, x, y, EPS)}.items()}
    assert loss["clean"] < 0.1, "the tiny model must have learned the task for this test to mean anything"
    assert loss["pgd"] > loss["fgs"] > loss["clean"], loss


def test_least_likely_step_raises_least_likely_probability():
    model, x, _ = trained_tiny_model()
    ll = core.least_likely(model, x)
    prob = lambda x_in: F.softmax(model(x_in), 1).gather(1, ll[:, None]).mean().item()
    assert prob(core.fgs_least_likely(model, x, EPS)) > prob(x)


@pytest.mark.parametrize("make_bad,message", [
    (lambda x: x + 2 * EPS, "eps"),
    (lambda x: x.clone().fill_(float("nan")), "NaN"),
    (lambda x: x - 1.0, "range"),
])
def test_threat_model_check_rejects_bad_inputs(make_bad, message):
    x = torch.rand(4, 1, 28, 28) * 0.5 + 0.25
    with pytest.raises(ValueError, match=message):
        core.check_threat_model(make_bad(x), x, EPS)
