"""The adversarial-network step pinned down: what it is made of, what make_step feeds it, its regulariser
against an independent float64 computation, D's batch norm during G's steps, and which parameters get
weight decay. Each test fails for a specific wrong implementation (named in its docstring)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import core
import mnist
import runner.settings
from test_training import mnist_batch, smooth_problem


def states(*objects):
    """Every tensor a module or an optimiser holds (parameters, buffers, momenta), in a fixed order."""
    out = []
    for obj in objects:
        if isinstance(obj, torch.optim.Optimizer):
            out += [v for state in obj.state_dict()["state"].values() for v in state.values() if torch.is_tensor(v)]
        else:
            out += list(obj.state_dict().values())
    return out


def assert_identical(a, b):
    sa, sb = states(*a), states(*b)
    assert len(sa) == len(sb) and len(sa) > 0
    for i, (u, v) in enumerate(zip(sa, sb)):
        assert torch.equal(u, v), f"tensor {i} differs by {(u.double() - v.double()).abs().max().item():.3g}"


def d2_problem(batch=8):
    torch.manual_seed(0)
    D, G = core.D2(), core.G1(k=4, channels=3)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return D, G, x, y


# ---------------------------------------------------------------- 1. the step as a composition
@pytest.mark.parametrize("hvp", ["fd", "exact"])
def test_adversarial_network_step_is_g_steps_generator_steps_then_the_d_step(hvp):
    """adversarial_network_step == g_steps x generator_step, discriminator_grads at the updated G, opt_D.step().
    Fails for a G step count off by one, lam or hvp not passed on, the D step taken at the old G."""
    D, G, x, y = d2_problem()
    opt_D = core.make_optimizer("sgd", core.decay_groups(D, 1e-3), 0.1, momentum=0.9)
    opt_G = core.make_optimizer("adam", G.parameters(), 0.01)
    D_ref, G_ref, opt_D_ref, opt_G_ref = copy.deepcopy((D, G, opt_D, opt_G))  # the copies' optimisers hold the copies
    eps, lam, gamma, h, g_steps = 8 / 256, 0.6, 0.3, 1e-3, 3

    g_in = G_ref.inputs(x, y)
    for _ in range(g_steps):
        core.generator_step(D_ref, G_ref, opt_G_ref, g_in, x, y, eps, lam)
    grads = core.discriminator_grads(D_ref, G_ref, g_in, x, y, eps, lam, gamma, h, hvp)[0]
    for p, g in zip(D_ref.parameters(), grads):
        p.grad = g
    opt_D_ref.step()

    core.adversarial_network_step(D, G, opt_D, opt_G, x, y, eps, lam=lam, gamma=gamma, h=h, g_steps=g_steps, hvp=hvp)
    assert_identical((D, G, opt_D, opt_G), (D_ref, G_ref, opt_D_ref, opt_G_ref))


MAKE_STEP_CASES = [  # gamma and lam away from their defaults, each sign of gamma, h from g_lr and given
    dict(gamma=0.3, lam=0.6, g_lr=0.01, fd_h=0.0, hvp="fd", g_steps=2),
    dict(gamma=-0.3, lam=1.4, g_lr=0.01, fd_h=0.0, hvp="fd", g_steps=3),
    dict(gamma=0.3, lam=0.6, g_lr=0.01, fd_h=0.004, hvp="fd", g_steps=2),
    dict(gamma=0.3, lam=0.6, g_lr=0.01, fd_h=0.0, hvp="exact", g_steps=2),
]


@pytest.mark.parametrize("changes", MAKE_STEP_CASES, ids=lambda c: f"gamma{c['gamma']}-lam{c['lam']}-h{c['fd_h']}-{c['hvp']}")
def test_make_step_passes_the_settings_through_with_their_signs(changes):
    """make_step's advnet step == adversarial_network_step called with the settings' eps, lam, gamma (its
    sign kept), h = g_lr / 10 (or fd_h), g_steps and hvp. Fails for a flipped or dropped gamma, lam or h."""
    settings = mnist.SETTINGS | runner.settings.QUICK_SETTINGS | changes
    torch.manual_seed(0)
    D, G = core.D1(), core.G1(k=4, channels=1)
    x, y = mnist_batch(16)
    step, modules = core.make_step("advnet", D, G, core.step_settings(settings))
    copies = copy.deepcopy((D, G, modules["opt_D"], modules["opt_G"]))
    h = settings["fd_h"] or settings["g_lr"] / 10
    step(x, y)
    core.adversarial_network_step(*copies, x, y, settings["eps"], lam=settings["lam"], gamma=settings["gamma"], h=h,
                                  g_steps=settings["g_steps"], hvp=settings["hvp"], precision=settings["precision"])
    assert_identical((D, G, modules["opt_D"], modules["opt_G"]), copies)


# ---------------------------------------------------------------- 1. the regulariser against float64 torch.func
def objective(D, G, x, y, eps, lam):
    """F(theta, phi) = CE(D(x), y) + lam CE(D(x + eps G(x)), y), written afresh with torch.func."""
    def F_(theta, phi):
        clean = F.cross_entropy(functional_call(D, theta, (x,)), y)
        adversarial = F.cross_entropy(functional_call(D, theta, (x + eps * functional_call(G, phi, (x,)),)), y)
        return clean + lam * adversarial
    return F_


def parameters(model):
    return {k: v.detach() for k, v in model.named_parameters()}


def independent_d_gradient(D, G, x, y, eps, lam, gamma):
    """grad_theta [F + (gamma/2) ||grad_phi F||^2] by nested torch.func.grad: no code of core's D step."""
    F_ = objective(D, G, x, y, eps, lam)

    def regularised(theta, phi):
        grad_phi = torch.func.grad(F_, argnums=1)(theta, phi)
        return F_(theta, phi) + gamma / 2 * sum((g ** 2).sum() for g in grad_phi.values())
    return torch.cat([g.flatten() for g in torch.func.grad(regularised)(parameters(D), parameters(G)).values()])


def core_d_gradient(D, G, x, y, eps, lam, gamma, h, hvp):
    return torch.cat([g.flatten() for g in core.discriminator_grads(D, G, x, x, y, eps, lam, gamma, h, hvp)[0]])


@pytest.mark.parametrize("lam, gamma", [(0.5, 3.0), (2.0, -1.0)])
def test_regulariser_at_lambda_not_one_matches_float64_torch_func(lam, gamma):
    """Both Hessian-vector products against an independent double backpropagation, at lam != 1 and either
    sign of gamma. Fails for lam dropped from the look-ahead (or from v), gamma's sign flipped or ignored."""
    D, G, x, y = smooth_problem()
    eps = 1.0  # the whole pixel range: G's coupling to D, and so the regulariser, is then a few % of the gradient
    expected = independent_d_gradient(D, G, x, y, eps, lam, gamma)
    expected_reg = expected - independent_d_gradient(D, G, x, y, eps, lam, 0.0)
    assert expected_reg.norm() > 0.05 * expected.norm(), "the regulariser must weigh in for the test to mean anything"
    plain = core_d_gradient(D, G, x, y, eps, lam, 0.0, 1e-6, "exact")
    for hvp, h, tol in (("exact", None, 1e-10), ("fd", 1e-6, 1e-4)):  # fd: O(h) truncation, rounding ~1e-16 / h
        measured = core_d_gradient(D, G, x, y, eps, lam, gamma, h, hvp)
        assert ((measured - plain) - expected_reg).norm() / expected_reg.norm() < tol, hvp
        assert (measured - expected).norm() / expected.norm() < tol, hvp


def squared_phi_gradient(D, G, x, y, eps, lam):
    phi = parameters(G)
    grad_phi = torch.func.grad(objective(D, G, x, y, eps, lam), argnums=1)(parameters(D), phi)
    return sum((g ** 2).sum() for g in grad_phi.values()).item()


@pytest.mark.parametrize("hvp", ["fd", "exact"])
def test_d_step_with_positive_gamma_lowers_the_squared_phi_gradient(hvp):
    """One D step (g_steps=0) with gamma > 0 leaves ||grad_phi F||^2 below a step with gamma = 0, and
    gamma < 0 (the authors' sign) above it. Fails for gamma's sign flipped or gamma ignored."""
    D0, G, x, y = smooth_problem()
    eps, lam, after = 0.3, 0.8, {}
    for gamma in (1.0, 0.0, -1.0):
        D = copy.deepcopy(D0)
        opt_D = core.make_optimizer("sgd", D.parameters(), 0.05, momentum=0.0)
        core.adversarial_network_step(D, G, opt_D, None, x, y, eps, lam=lam, gamma=gamma, h=1e-6, g_steps=0, hvp=hvp)
        after[gamma] = squared_phi_gradient(D, G, x, y, eps, lam)
    assert after[1.0] < after[0.0] < after[-1.0], after


# ---------------------------------------------------------------- 4. D's batch norm during G's steps
def bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_generator_steps_leave_d2s_batch_norm_statistics_alone():
    """G's steps run D in train mode (batch statistics) but must not move its running statistics or
    num_batches_tracked; the D step that follows updates them exactly twice (clean and adversarial batch).
    Fails for generator_step without bn_stats_frozen(D)."""
    D, G, x, y = d2_problem()
    opt_G = core.make_optimizer("adam", G.parameters(), 0.01)
    before = bn_buffers(D)
    assert before, "D2 must have batch norm for this test to mean anything"
    g_in = G.inputs(x, y)
    for _ in range(3):
        core.generator_step(D, G, opt_G, g_in, x, y, 8 / 256)
    after = bn_buffers(D)
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]

    opt_D = core.make_optimizer("sgd", core.decay_groups(D, 1e-4), 0.1)
    core.adversarial_network_step(D, G, opt_D, opt_G, x, y, 8 / 256, g_steps=3)
    counts = {v.item() for k, v in D.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counts == {2}, counts


# ---------------------------------------------------------------- 3. optimiser groups
def kernels_and_others(model):
    """Conv and linear weights vs everything else (biases, batch norm), read from the module types."""
    kernels, others = set(), set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
            (kernels if is_kernel else others).add(p)
    return kernels, others


@pytest.mark.parametrize("method", ["standard", "pgd", "advnet", "eat"])
@pytest.mark.parametrize("network", ["D1", "D2"])
def test_weight_decay_on_every_kernel_and_nothing_else(method, network):
    """Every conv/linear kernel of D decays at d_weight_decay; biases and batch norm do not, both in the
    optimiser's groups and in what one step with zero gradients does. Fails for decay on biases or BN."""
    settings = mnist.SETTINGS | runner.settings.QUICK_SETTINGS | dict(d_weight_decay=0.01, d_lr=0.5, d_momentum=0.0)
    torch.manual_seed(0)
    D = core.D1() if network == "D1" else core.D2()
    _, modules = core.make_step(method, D, core.G1(k=4, channels=1), core.step_settings(settings))
    opt_D = modules["opt_D"]
    kernels, others = kernels_and_others(D)
    assert kernels and others and len(kernels) + len(others) == len(list(D.parameters()))
    decay = {p: group["weight_decay"] for group in opt_D.param_groups for p in group["params"]}
    assert len(decay) == len(kernels) + len(others) == sum(len(g["params"]) for g in opt_D.param_groups)
    assert all(decay[p] == 0.01 for p in kernels) and all(decay[p] == 0 for p in others)

    before = {p: p.detach().clone() for p in D.parameters()}
    for p in D.parameters():
        p.grad = torch.zeros_like(p)
    opt_D.step()
    for p in kernels:
        assert torch.allclose(p, before[p] * (1 - 0.5 * 0.01), rtol=1e-6, atol=0)
    for p in others:
        assert torch.equal(p, before[p])
