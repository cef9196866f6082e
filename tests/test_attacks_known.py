"""Attacks with known answers. On a two-class linear model the cross-entropy's input gradient, for label
y, is p_other * (w_other - w_y): its sign is sign(w_other - w_y) whatever the point, so every attack's
end point has a closed form."""
import pytest
import torch
import torch.nn as nn

import core

EPS = 0.1


def two_class_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.mul_(0.1)  # small logits: the softmax never saturates, so no gradient underflows to 0
    return model


def batch(n=32):
    """Pixels in [0, 1] with some at and near the range's ends, where the clamp to [0, 1] must act."""
    torch.manual_seed(1)
    x = torch.rand(n, 1, 8, 8)
    x[:4], x[4:8] = 0.0, 1.0
    x[8:12] = 0.03
    return x, torch.randint(0, 2, (n,))


def ascent_sign(model, y):
    """sign(w_other - w_y) per example, as an image."""
    w = model[1].weight.detach()
    return (w[1 - y] - w[y]).sign().view(-1, 1, 8, 8)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_with_enough_steps_ends_at_the_corner_of_the_ball(loss):
    """From any start in the ball, 8 steps of eps/4 reach the far face; 10 steps end exactly at
    clamp(x + eps * sign(w_other - w_y), 0, 1). Fails for descent instead of ascent, a missing or wrong
    projection, or gradients taken at the clean image's label-free loss."""
    model, (x, y) = two_class_linear(), batch()
    assert (ascent_sign(model, y) != 0).all(), "every pixel must have a direction for the corner to be unique"
    corner = (x + EPS * ascent_sign(model, y)).clamp(0, 1)
    torch.manual_seed(2)
    assert torch.equal(core.pgd(model, x, y, EPS, steps=10, loss=loss), corner)


def test_fgs_steps_eps_along_the_gradient_sign():
    """Fails for a step against the gradient, of another size, or without the clamp to [0, 1]."""
    model, (x, y) = two_class_linear(), batch()
    assert torch.equal(core.fgs(model, x, y, EPS), (x + EPS * ascent_sign(model, y)).clamp(0, 1))


def test_least_likely_step_moves_towards_the_least_likely_class():
    """x - eps * sign(grad CE(x, y_LL)): with two classes, y_LL is the class not predicted, and the step
    goes towards it. Fails for a step away from it, or towards the predicted class."""
    model, (x, _) = two_class_linear(), batch()
    predicted = core.predict(model, x)
    towards_least_likely = ascent_sign(model, predicted)  # the ascent direction of the predicted class's loss
    assert torch.equal(core.fgs_least_likely(model, x, EPS), (x + EPS * towards_least_likely).clamp(0, 1))


def test_pgd_default_step_is_a_quarter_of_eps():
    """With the same random start, one default step lands at the start plus eps/4 along the gradient sign
    (then projected). Fails for any other default step size."""
    model, (x, y) = two_class_linear(), batch()
    torch.manual_seed(3)
    start = core.pgd(model, x, y, EPS, alpha=0.0, steps=1)  # a zero step: the projected random start alone
    torch.manual_seed(3)
    one_step = core.pgd(model, x, y, EPS, steps=1)
    assert torch.equal(one_step, core.project(start + EPS / 4 * ascent_sign(model, y), x, EPS))
    assert not torch.equal(one_step, start)


def test_pgd_random_start_is_symmetric_and_fills_the_ball():
    """The start is uniform in [-eps, eps] per pixel: both signs equally often, both faces reached, the
    quarters of the interval equally filled. Fails for a one-sided start ([0, eps]) or a narrower one."""
    model = two_class_linear()
    x = torch.full((500, 1, 8, 8), 0.5)  # far from 0 and 1: no clamp
    torch.manual_seed(4)
    offsets = (core.pgd(model, x, torch.zeros(500, dtype=torch.long), EPS, alpha=0.0, steps=1) - x).flatten()
    n = len(offsets)  # 32,000 draws: a share's standard deviation is below 0.003
    assert offsets.abs().max() <= EPS + 1e-7
    assert offsets.min() < -0.99 * EPS and offsets.max() > 0.99 * EPS
    assert abs(offsets.mean().item()) < 0.01 * EPS
    edges = torch.linspace(-EPS, EPS, 5)
    shares = [((offsets >= a) & (offsets < b)).sum().item() / n for a, b in zip(edges, edges[1:])]
    assert all(abs(s - 0.25) < 0.015 for s in shares), shares
