import contextlib
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bench
import core
from conftest import learnable_images


# ---------------------------------------------------------------- the regulariser's Hessian-vector product
class SmoothD(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


class SmoothG(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)

    def inputs(self, x, y):
        return x

    def forward(self, x):
        return torch.tanh(self.a(x.flatten(1))).view_as(x)


def smooth_problem():
    torch.manual_seed(0)
    D, G = SmoothD().double(), SmoothG().double()
    x, y = torch.rand(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    return D, G, x, y


def regulariser_part(D, G, x, y, h, hvp):
    """gamma * H v alone: the difference between the regularised and the plain D gradient."""
    with_reg = core.discriminator_grads(D, G, x, x, y, eps=0.3, gamma=1.0, h=h, hvp=hvp)[0]
    plain = core.discriminator_grads(D, G, x, x, y, eps=0.3, gamma=0.0, h=h, hvp="exact")[0]
    return torch.cat([(a - b).flatten() for a, b in zip(with_reg, plain)])


def test_finite_difference_regulariser_converges_to_exact_double_backprop():
    D, G, x, y = smooth_problem()
    exact = regulariser_part(D, G, x, y, h=None, hvp="exact")
    assert exact.norm() > 1e-6, "the regulariser must be non-trivial for the test to mean anything"
    errors = [((regulariser_part(D, G, x, y, h, "fd") - exact).norm() / exact.norm()).item() for h in (1e-1, 1e-3, 1e-5)]
    assert errors[0] > errors[1] > errors[2], errors  # O(h) convergence
    assert errors[2] < 1e-4, errors


def test_negative_gamma_flips_the_regulariser():
    D, G, x, y = smooth_problem()
    plain = core.discriminator_grads(D, G, x, x, y, 0.3, gamma=0.0, h=1e-4)[0]
    plus = core.discriminator_grads(D, G, x, x, y, 0.3, gamma=0.5, h=1e-4)[0]
    minus = core.discriminator_grads(D, G, x, x, y, 0.3, gamma=-0.5, h=1e-4)[0]
    for p, a, b in zip(plain, plus, minus):
        assert torch.allclose(a - p, p - b, atol=1e-10)


def regulariser_gradient(D, G, x, y, precision):
    """(gamma/h) [grad F(phi + h v) - grad F(phi)] on the paper's networks and h, under `precision`."""
    parts = []
    for gamma in (0.01, 0.0):
        with precision:
            parts.append(torch.cat([g.flatten() for g in core.discriminator_grads(D, G, x, x, y, 0.3, gamma=gamma, h=2e-4)[0]]))
    return parts[0] - parts[1]


def test_regulariser_survives_bf16_autocast():
    """Under bf16 the two gradients of the finite difference would round to (nearly) the same numbers and
    their difference, divided by h, would be noise; the adversarial term runs in float32 whatever the
    autocast around it, so the regulariser is that of float32."""
    torch.manual_seed(0)
    D, G = core.D1(), core.G1(k=4, channels=1)
    x, y = mnist_batch()
    fp32 = regulariser_gradient(D, G, x, y, contextlib.nullcontext())
    bf16 = regulariser_gradient(D, G, x, y, torch.autocast("cpu", dtype=torch.bfloat16))
    assert fp32.norm() > 0
    assert (bf16 - fp32).norm() / fp32.norm() < 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16), core.full_precision(torch.device("cpu")):
        assert D(x).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu") is False


# ---------------------------------------------------------------- the minimax step on real networks
def mnist_batch(n=32):
    torch.manual_seed(0)
    y = torch.randint(0, 10, (n,))
    return core.to_float(torch.from_numpy(learnable_images(y.numpy())).unsqueeze(1)), y


def tiny_pair():
    torch.manual_seed(0)
    return core.D1(), core.G1(k=4, channels=1)


def adv_loss(D, G, x, y, eps=0.3):
    with torch.no_grad(), core.bn_stats_frozen(D, G):
        return F.cross_entropy(D(x + eps * G(x)), y).item()


def test_generator_steps_raise_the_adversarial_loss_and_leave_d_alone():
    D, G = tiny_pair()
    x, y = mnist_batch()
    opt_G = torch.optim.Adam(G.parameters(), 0.002, betas=(0.5, 0.999))
    d_before = copy.deepcopy(D.state_dict())
    before = adv_loss(D, G, x, y)
    for _ in range(5):
        core.generator_step(D, G, opt_G, x, x, y, eps=0.3)
    assert adv_loss(D, G, x, y) > before
    assert all(p.grad is None for p in D.parameters()), "G steps must not compute D's gradients"
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in d_before.items())


def test_d_steps_lower_d_loss():
    D, G = tiny_pair()
    x, y = mnist_batch()
    opt_D = torch.optim.SGD(D.parameters(), 0.01, momentum=0.9)
    opt_G = torch.optim.Adam(G.parameters(), 0.002)
    loss = lambda: core.discriminator_grads(D, G, x, x, y, 0.3)[3].item() + adv_loss(D, G, x, y)
    before = loss()
    for _ in range(10):
        core.adversarial_network_step(D, G, opt_D, opt_G, x, y, 0.3, g_steps=0, h=2e-4)
    assert loss() < before


@pytest.mark.parametrize("hvp", ["fd", "exact"])
def test_regulariser_passes_do_not_move_batchnorm_statistics(hvp):
    torch.manual_seed(0)
    D, G = core.D2(), core.G1(k=4, channels=3)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    g_params = copy.deepcopy(dict(G.named_parameters()))
    core.discriminator_grads(D, G, x, x, y, 8 / 256, hvp=hvp)
    bn = lambda model: {m.num_batches_tracked.item() for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert bn(D) == {2}, "only the clean and the adversarial forward pass may update D's statistics"
    assert bn(G) == {1}, "the finite difference's pass at phi + h v must not update G's statistics"
    assert all(torch.equal(p, g_params[k]) for k, p in G.named_parameters()), "G must be left at phi"


# ---------------------------------------------------------------- steps a CUDA graph can capture
STEPS = [("standard", "G1", {}), ("pgd", "G1", {}), ("advnet", "G1", {}), ("advnet", "G1", {"hvp": "exact"}),
         ("eat", "G1", {}), ("generator", "G1", {}), ("generator", "G2", {}), ("generator", "G3", {}),
         ("advnet", "G3", {"g_opt": "sgd"})]


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("method, generator, changes", STEPS)
def test_a_training_step_and_its_batch_read_nothing_back_to_the_host(method, generator, changes, precision):
    settings = dict(eps=8 / 256, g_opt="adam", g_lr=0.002, g_momentum=0.9, g_beta1=0.5, g_beta2=0.999, d_lr=0.1,
                    d_momentum=0.9, d_weight_decay=1e-5, lam=1.0, gamma=0.01, fd_h=0.0, g_steps=2, hvp="fd",
                    pgd_alpha=0.0, pgd_steps=2, pgd_train_clean=False, precision=precision) | changes
    torch.manual_seed(0)
    D = core.D2()
    G = {"G1": core.G1(k=4, channels=3), "G2": core.G2(k=4), "G3": core.G3(k=4)}[generator]
    images, labels = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (32,))
    data = (core.StaticAdversarialSet(images, labels, torch.zeros((3, 32, 3, 32, 32), dtype=torch.float16), 0.03)
            if method == "eat" else images)
    batches = core.Batches(data, labels.repeat(len(data) // 32), 8, 0, torch.device("cpu"), core.crop_flip)
    step, _ = core.make_step(method, D, G, core.step_settings(settings))
    step(*batches(0))  # optimiser state is created on the first step
    with bench.StepCount() as counted:  # the batch's read too: with graphs it happens every iteration
        stats = step(*batches(1))
    assert counted.ops > 50, "the counter must see the step"
    assert counted.syncs == {}, counted.syncs
    assert all(torch.isfinite(v) for v in stats.values())


def test_learning_rate_changes_in_place_and_takes_effect():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = core.make_optimizer("sgd", model.parameters(), 0.1)
    rate = opt.param_groups[0]["lr"]
    core.set_learning_rate(opt, 0.0)
    assert opt.param_groups[0]["lr"] is rate and rate.item() == 0.0, "a captured graph reads this very tensor"
    before = copy.deepcopy(model.state_dict())
    F.cross_entropy(model(torch.rand(3, 4)), torch.tensor([0, 1, 0])).backward()
    opt.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "lr 0 must leave the weights"


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimiser_state_of_the_earlier_unfused_optimisers_still_loads(kind):
    """Checkpoints written before the fused optimisers hold a float rate and CPU step counters."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    old = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9) if kind == "sgd" else torch.optim.Adam(model.parameters(), 0.002)
    F.cross_entropy(model(torch.rand(3, 4)), torch.tensor([0, 1, 0])).backward()
    old.step()
    new = core.make_optimizer(kind, model.parameters(), 0.5)
    new.load_state_dict(copy.deepcopy(old.state_dict()))
    core.set_learning_rate(new, float(new.param_groups[0]["lr"]))
    assert isinstance(new.param_groups[0]["lr"], torch.Tensor) and new.param_groups[0]["lr"].item() == pytest.approx(old.param_groups[0]["lr"])
    new.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
