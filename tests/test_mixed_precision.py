"""bf16 autocast as the training and evaluation paths apply it (core.autocast), on the CPU: bf16 has
the same number format there as on CUDA, so these tests check the CUDA path's numerics too.

The bug they guard against: autocast's cast cache kept each weight's bf16 copy for the whole region,
so with the step inside one region G's steps 2 to 5 ran with step 1's weights. The steps are run with
nothing around them, inside an autocast region that is off (float32 code around them), and inside a
caller's bf16 region with the cache on (the code before the fix opened one around every step).
Within any enclosing region autocast's cache outlives the steps' own regions: only a cache that is off
keeps the steps right there."""
import contextlib
import copy
import functools

import pytest
import torch
import torch.nn.functional as F

import core
import mnist
import runner.training

CPU = torch.device("cpu")
EPS = 0.1
ENCLOSING = {"nothing": contextlib.nullcontext, "autocast off": lambda: core.autocast(CPU, "float32"),
             "bf16 autocast, cache on": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@functools.lru_cache
def fitted_state():
    torch.manual_seed(0)
    D, G = core.D1(), core.G1(k=8, channels=1)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9)
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(D(x), y).backward()
        opt.step()
    return D, G, x, y


def fitted_pair():
    """D1 fitted to one random batch (so that G has a loss to raise) and a fresh G1 k=8: the issue's probe."""
    return copy.deepcopy(fitted_state())


def float32_adversarial_loss(D, G, x, y):
    with torch.no_grad(), core.autocast(CPU, "float32"), core.bn_stats_frozen(G):
        return F.cross_entropy(D(x + EPS * G(x)), y).item()


def generator_losses(precision, enclosing="nothing", steps=5):
    """D's float32 loss on x + eps*G(x) after each of G's steps, taken in `precision` inside the
    `enclosing` region."""
    D, G, x, y = fitted_pair()
    opt_G = core.make_optimizer("adam", G.parameters(), 0.002, betas=(0.5, 0.999))
    losses = []
    with ENCLOSING[enclosing]():
        for _ in range(steps):
            core.generator_step(D, G, opt_G, x, x, y, EPS, precision=precision)
            losses.append(float32_adversarial_loss(D, G, x, y))
    return losses


def test_autocast_casts_a_weight_afresh_after_it_changes():
    layer, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    with core.autocast(CPU, "bf16"):
        before = layer(x)
        with torch.no_grad():
            layer.weight.add_(1)
        after = layer(x)
    assert before.dtype == torch.bfloat16 and not torch.equal(before, after)


@pytest.mark.parametrize("enclosing", ENCLOSING)
def test_each_generator_step_sees_the_one_before(enclosing):
    """Five G steps under bf16 raise D's loss as much as five float32 steps (within 15 % of the gain;
    with stale casts the gain was 6 % of float32's) and every step raises it further."""
    float32 = generator_losses("float32")
    bf16 = generator_losses("bf16", enclosing)
    start = float32_adversarial_loss(*fitted_pair())
    gain32, gain16 = float32[-1] - start, bf16[-1] - start
    assert gain32 > 0.05, float32  # the probe is informative: float32 steps raise the loss
    assert abs(gain16 - gain32) < 0.15 * gain32, (float32, bf16)
    assert all(b > a for a, b in zip(bf16, bf16[1:])), bf16


def c_step(precision, enclosing="nothing"):
    """One whole C step (5 G steps, D's regularised step) run as the training loop runs it: the change
    it makes to D's logits on the batch (eval mode), and its statistics."""
    D, G, x, y = fitted_pair()
    settings = mnist.SETTINGS | {"eps": EPS, "g_width": 8, "precision": precision}
    D_before = copy.deepcopy(D).eval()
    step, _ = core.make_step("advnet", D, G, core.step_settings(settings))
    step = runner.training.graphed_or_eager(step, settings, CPU)
    with ENCLOSING[enclosing]():
        stats = step(x, y)
    with torch.no_grad():
        return D.eval()(x) - D_before(x), stats


def relative_error(measured, reference):
    return ((measured - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("enclosing", ENCLOSING)
def test_a_c_step_under_bf16_moves_d_and_g_as_float32_does(enclosing):
    """D's update, seen in its logits, is within 30 % of float32's (bf16: 10 %; with stale casts, 74 %),
    and G's five steps raise D's loss as much (g_gain within 15 %; with stale casts, 8 % of float32's).
    G's parameters themselves are no measure: Adam's first steps are nearly sign steps, so rounding
    flips the many components whose gradient is near zero, and G's update is 60 % off float32's."""
    d32, stats32 = c_step("float32")
    d16, stats16 = c_step("bf16", enclosing)
    assert relative_error(d16, d32) < 0.3
    gain32, gain16 = stats32["g_gain"].item(), stats16["g_gain"].item()
    assert gain32 > 0.05 and abs(gain16 - gain32) < 0.15 * gain32, (gain32, gain16)


def test_a_long_attack_under_autocast_keeps_no_iterate_alive():
    """A model whose first layer reads the input directly: with autocast's cache on, each PGD iterate
    (a leaf that requires grad) and its bf16 cast stay alive until the region ends, about 1.2 GB here.
    The attacks' region, core.autocast, must hold on to none of them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10)).eval()
    x, y = torch.rand(1000, 3, 32, 32), torch.randint(0, 10, (1000,))
    iterate_bytes = x.numel() * (4 + 2)
    with core.autocast(CPU, "bf16"):
        core.pgd(model, x, y, 8 / 256, steps=2)  # the allocator's first requests
        before = rss_bytes()
        core.pgd(model, x, y, 8 / 256, steps=50)
        grown = rss_bytes() - before
    assert grown < 10 * iterate_bytes, f"{grown / 1e6:.0f} MB still held after the attack"


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_in_bf16_wherever_the_device_has_it_natively(monkeypatch, native):
    """precision_study.py found bf16's C within float32's seed range, so "auto" is bf16 on CUDA and on CPUs
    with native bf16, and float32 only where bf16 would be emulated (slower than float32)."""
    monkeypatch.setattr(core, "native_bf16", lambda device: device.type == "cuda" or native)
    assert core.amp_dtype(CPU) == (torch.bfloat16 if native else None)
    assert core.amp_dtype(torch.device("cuda")) == torch.bfloat16
    assert core.amp_dtype(CPU, "float32") is None and core.amp_dtype(CPU, "bf16") == torch.bfloat16
    assert core.precision_name(CPU) == ("bf16 autocast" if native else "float32")
