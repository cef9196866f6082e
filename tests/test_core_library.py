"""core.py as a library: copied alone into a fresh folder, used from its docstrings only. Images are
float in [0, 1] (uint8 converted, anything else refused), make_step's settings have the paper's defaults
and refuse unknown keys, steps compute in float32 unless asked, a generator's contract is checked and
enforced, devices may be strings, and bad arguments raise ValueError before any weight changes."""
import copy
import importlib.util
import os
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT, learnable_set

EPS = 0.1


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """core.py copied alone into an empty folder and imported from there, as a user would."""
    folder = tmp_path_factory.mktemp("fresh")
    shutil.copy(os.path.join(ROOT, "core.py"), folder)
    spec = importlib.util.spec_from_file_location("copied_core", folder / "core.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["copied_core"] = module  # a module's dataclasses and pickles look themselves up here
    spec.loader.exec_module(module)
    return module


def small_d(seed=0, batch_norm=False):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(28 * 28, 16)] + ([nn.BatchNorm1d(16)] if batch_norm else []) + [nn.ReLU(), nn.Linear(16, 10)]
    return nn.Sequential(*layers)


class ImageG(nn.Module):
    """A user's generator that reads the image; `scale` > 1 breaks the contract's [-1, 1]."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.conv, self.scale = nn.Conv2d(1, 1, 3, padding=1), scale

    def inputs(self, x, y):
        return x

    def forward(self, x):
        return self.scale * torch.tanh(self.conv(x))


def weights(*models):
    return [t.detach().clone() for m in models for t in m.state_dict().values()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


# ---------------------------------------------------------------- 1. one image convention
def test_float_images_score_as_their_uint8_source_and_are_left_untouched(core):
    images, labels = learnable_set(40, seed=1)
    floats = images.float() / 255
    kept = floats.clone()
    D = small_d()
    torch.manual_seed(0)
    from_uint8 = core.evaluate_table({"D": D}, {}, images, labels, EPS, "cpu", pgd_steps=2)
    torch.manual_seed(0)
    from_float = core.evaluate_table({"D": D}, {}, floats, labels, EPS, "cpu", pgd_steps=2)
    assert from_float == from_uint8
    assert torch.equal(floats, kept), "the caller's images were changed"
    assert core.transfer_accuracy({"D": D}, lambda x, y: x, floats, labels, EPS, "cpu") == \
        core.transfer_accuracy({"D": D}, lambda x, y: x, images, labels, EPS, "cpu")
    assert torch.equal(floats, kept)


@pytest.mark.parametrize("given, says", [(lambda x: x.float(), r"\[0, 255\]"), (lambda x: x.int(), "int32"),
                                         (lambda x: x.numpy(), "torch.from_numpy")])
def test_anything_but_uint8_or_floats_in_0_1_is_refused(core, given, says):
    images, labels = learnable_set(8, seed=2)
    bad = given(images)
    D = small_d()
    for call in (lambda: core.evaluate_table({"D": D}, {}, bad, labels, EPS, "cpu", pgd_steps=1),
                 lambda: core.transfer_accuracy({"D": D}, lambda x, y: x, bad, labels, EPS, "cpu"),
                 lambda: core.strong_evaluation({"D": D}, bad, labels, EPS, "cpu", {}, sweep=()),
                 lambda: core.pgd(D, bad, labels, EPS, steps=1),
                 lambda: core.Batches(bad, labels, 4, 0, "cpu")):
        with pytest.raises(ValueError, match=says):
            call()


def test_attacks_take_uint8_and_give_float_in_the_ball(core):
    images, labels = learnable_set(8, seed=3)
    x_adv = core.pgd(small_d(), images, labels, EPS, steps=2)
    core.check_threat_model(x_adv, images.float() / 255, EPS)


# ---------------------------------------------------------------- 2, 3, 4. settings, no G for A and B, float32
def test_settings_left_out_take_the_papers_values(core):
    D, G = small_d(), ImageG()
    x, y = core.to_float(learnable_set(16, seed=4)[0]), learnable_set(16, seed=4)[1]
    copies = copy.deepcopy((D, G))
    step, _ = core.make_step("advnet", D, G, {"eps": EPS})
    explicit, _ = core.make_step("advnet", *copies, core.PAPER_SETTINGS | {"eps": EPS, "fd_h": 0.002 / 10})
    torch.manual_seed(0)
    step(x, y)
    torch.manual_seed(0)
    explicit(x, y)
    assert same(weights(D, G), weights(*copies))


@pytest.mark.parametrize("settings, says", [({"eps": EPS, "gama": 0.1}, "'gama'.*'gamma'"),
                                            ({"eps": EPS, "pgd_alpah": 0.01}, "'pgd_alpha'"),
                                            ({"gamma": 0.1}, "eps"), ({"eps": 8}, "8/255"),
                                            ({"eps": EPS, "hvp": "exactt"}, "hvp"),
                                            ({"eps": EPS, "precision": "bf32"}, "precision")])
def test_unknown_missing_or_bad_settings_are_refused_before_any_change(core, settings, says):
    D, G = small_d(), ImageG()
    D.eval()
    before = weights(D, G)
    with pytest.raises(ValueError, match=says):
        core.make_step("advnet", D, G, settings)
    assert same(weights(D, G), before) and not D.training


@pytest.mark.parametrize("method", ["standard", "pgd"])
def test_models_a_and_b_need_no_generator(core, method):
    images, labels = learnable_set(16, seed=5)
    D = small_d()
    before = weights(D)
    step, modules = core.make_step(method, D, None, {"eps": EPS, "pgd_steps": 2})
    step(core.to_float(images), labels)
    assert set(modules) == {"D", "opt_D"} and not same(weights(D), before)


def test_steps_compute_in_float32_unless_asked(core, monkeypatch):
    """Even where "auto" would pick bf16, a step left at its default runs in float32."""
    monkeypatch.setattr(core, "native_bf16", lambda device: True)
    images, labels = learnable_set(16, seed=6)
    x = core.to_float(images)
    runs = {}
    for precision in (None, "float32", "bf16"):
        D = small_d()
        step, _ = core.make_step("standard", D, None, {"eps": EPS} | ({"precision": precision} if precision else {}))
        step(x, labels)
        runs[precision] = weights(D)
    assert same(runs[None], runs["float32"]) and not same(runs[None], runs["bf16"])
    direct = {}
    for precision in (None, "float32"):
        D = small_d()
        opt = core.make_optimizer("sgd", D.parameters(), 0.1)
        core.standard_step(D, opt, x, labels, *([precision] if precision else []))
        direct[precision] = weights(D)
    assert same(direct[None], direct["float32"])


# ---------------------------------------------------------------- 5. the generator contract
def test_a_generator_without_inputs_is_refused_by_name(core):
    class NoInputs(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    for method in ("advnet", "generator"):
        with pytest.raises(ValueError, match=r"inputs\(x, y\)"):
            core.make_step(method, small_d(), NoInputs(), {"eps": EPS})
    with pytest.raises(ValueError, match="generator"):
        core.make_step("advnet", small_d(), None, {"eps": EPS})


def test_a_generator_output_shaped_otherwise_than_the_images_is_refused_before_any_change(core):
    class OnePerImage(ImageG):
        def forward(self, x):
            return super().forward(x).mean((1, 2, 3), keepdim=True)  # (N, 1, 1, 1): would broadcast

    images, labels = learnable_set(8, seed=16)
    D, G = small_d(), OnePerImage()
    before = weights(D, G)
    step, _ = core.make_step("advnet", D, G, {"eps": EPS})
    with pytest.raises(ValueError, match="shape"):
        step(core.to_float(images), labels)
    assert same(weights(D, G), before)


def test_an_unbounded_generator_never_trains_d_outside_the_eps_ball(core):
    images, labels = learnable_set(16, seed=7)
    x = core.to_float(images)
    D, G = small_d(), ImageG(scale=6.0)
    seen = []
    D.register_forward_pre_hook(lambda module, args: seen.append((args[0].detach() - x).abs().max().item()))
    step, _ = core.make_step("advnet", D, G, {"eps": EPS, "g_steps": 2})
    step(x, labels)
    assert len(seen) > 2 and max(seen) <= EPS * (1 + 1e-6)


# ---------------------------------------------------------------- 6. devices as strings
def test_devices_may_be_strings(core):
    images, labels = learnable_set(16, seed=8)
    D = small_d()
    model = core.to_device(D, "cpu")
    x, y = core.Batches(images, labels, 8, 0, "cpu")(0)
    with core.autocast("cpu", "float32"), core.full_precision("cpu"):
        model(x)
    eat = core.build_eat_set(model, images, labels, EPS, "cpu", batch_size=8, pgd_steps=1)
    assert len(eat) == 4 * len(images)
    core.set_rng_state(core.rng_state("cpu"), "cpu")
    with pytest.raises(ValueError, match="device"):
        core.evaluate_table({"D": D}, {}, images, labels, EPS, "gpu")


# ---------------------------------------------------------------- 7. ValueError for bad arguments
def test_bad_attack_and_optimiser_arguments_raise_value_error(core):
    images, labels = learnable_set(8, seed=9)
    D = small_d()
    for kwargs in (dict(loss="l2"), dict(restarts=0), dict(steps=-1)):
        with pytest.raises(ValueError):
            core.pgd(D, images, labels, EPS, **kwargs)
    with pytest.raises(ValueError, match="no parameters"):
        core.make_optimizer("sgd", nn.Identity().parameters(), 0.1)
    with pytest.raises(ValueError, match="no parameters"):
        core.make_optimizer("adam", core.decay_groups(nn.Identity(), 1e-3), 0.1)


def test_strong_evaluation_with_own_attacks_and_a_surrogate_names_the_transfer_attack(core):
    images, labels = learnable_set(8, seed=10)
    D, other = small_d(0), small_d(1)
    mine = {"pgd5": lambda m, x, y: core.pgd(m, x, y, EPS, steps=5)}
    with pytest.raises(ValueError, match="transfer_attack"):
        core.strong_evaluation({"D": D}, images, labels, EPS, "cpu", mine, {"D'": other}, sweep=())
    result = core.strong_evaluation({"D": D}, images, labels, EPS, "cpu", mine, {"D'": other}, sweep=(),
                                    transfer_attack="pgd5")
    assert "transfer_D'" in result["D"]


def test_a_misspelt_hvp_fails_before_the_generator_steps(core):
    images, labels = learnable_set(8, seed=11)
    x = core.to_float(images)
    D, G = small_d(), ImageG()
    opt_D, opt_G = core.make_optimizer("sgd", D.parameters(), 0.1), core.make_optimizer("adam", G.parameters(), 0.01)
    before = weights(D, G)
    with pytest.raises(ValueError, match="hvp"):
        core.adversarial_network_step(D, G, opt_D, opt_G, x, labels, EPS, hvp="exactt")
    assert same(weights(D, G), before)


# ---------------------------------------------------------------- 8. one model's robust accuracy, masking checks
def test_robust_accuracy_scores_in_eval_mode_and_gives_the_mode_back(core):
    images, labels = learnable_set(32, seed=12)
    D = small_d(batch_norm=True)
    bn = D[2]
    bn.running_mean.fill_(3.0)  # running statistics far from any batch's: the two modes disagree
    D.train()
    kept = weights(D)
    torch.manual_seed(0)
    score = core.robust_accuracy(D, images, labels, EPS, batch_size=16)
    assert D.training and same(weights(D), kept)
    x, y = core.to_float(images), labels
    torch.manual_seed(0)
    D.eval()
    by_hand = sum((D(core.pgd(D, x[i:i + 16], y[i:i + 16], EPS)).argmax(1) == y[i:i + 16]).sum().item() for i in (0, 16))
    assert score == round(100.0 * by_hand / 32, 2)
    D.train()
    assert core.robust_accuracy(D, images, labels, 0.0, batch_size=16) != core.robust_accuracy(D, images, labels, 0.0, batch_size=16, bn="batch")


def test_masking_checks_read_what_strong_evaluation_gives_for_the_users_own_attacks(core):
    images, labels = learnable_set(16, seed=13)
    mine = {"pgd10": lambda m, x, y: core.pgd(m, x, y, EPS, steps=5)}
    result = core.strong_evaluation({"D": small_d()}, images, labels, EPS, "cpu", mine, sweep=(1.0,), sweep_steps=3)["D"]
    checks = core.masking_checks(result)
    assert "iterative_beats_single_step" not in checks  # neither FGS nor PGD-CE ran
    assert {"accuracy_falls_with_eps", "large_eps_reaches_zero", "transfer_not_below_white_box",
            "input_gradients_nonzero"} <= set(checks)
    failing = core.masking_checks(result | {"zero_gradient_percent": 50.0})
    assert failing["input_gradients_nonzero"]["flag"] and not checks["input_gradients_nonzero"]["flag"]


# ---------------------------------------------------------------- 9. the public API
def test_the_public_api_is_listed_and_documented(core):
    import inspect
    assert len(core.__all__) == len(set(core.__all__))
    for name in core.__all__:
        obj = getattr(core, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    for used in ("make_step", "PAPER_SETTINGS", "robust_accuracy", "pgd", "to_float", "save_checkpoint", "load_checkpoint"):
        assert used in core.__all__
    assert "format" in core.save_checkpoint.__doc__ and "set_rng_state" in core.save_checkpoint.__doc__


def test_a_checkpoint_saved_and_loaded_resumes_the_same_training(core, tmp_path):
    """Save, load into fresh models as save_checkpoint's docstring says, and the next step is the one an
    uninterrupted run would have taken."""
    images, labels = learnable_set(32, seed=14)
    settings = {"eps": EPS, "g_steps": 1}
    batches = core.Batches(images, labels, 8, 0, "cpu")
    torch.manual_seed(0)
    D, G = small_d(), ImageG()
    step, modules = core.make_step("advnet", D, G, settings)
    step(*batches(0))
    core.save_checkpoint(tmp_path / "c.pt", {"rng": core.rng_state("cpu"), **{k: m.state_dict() for k, m in modules.items()}})
    step(*batches(1))
    uninterrupted = weights(D, G)

    state = core.load_checkpoint(tmp_path / "c.pt")
    D2, G2 = small_d(seed=5), ImageG()
    step2, modules2 = core.make_step("advnet", D2, G2, settings)
    for name, module in modules2.items():
        module.load_state_dict(state[name])
        if isinstance(module, torch.optim.Optimizer):
            core.set_learning_rate(module, float(module.param_groups[0]["lr"]))
    core.set_rng_state(state["rng"], "cpu")
    step2(*batches(1))
    assert same(weights(D2, G2), uninterrupted)
    assert 0 <= core.robust_accuracy(D2, images, labels, EPS) <= 100


# ---------------------------------------------------------------- the user's page, run from a copy of core.py alone
def test_the_using_core_example_runs_from_a_copy_of_core_alone(tmp_path):
    """docs/using-core.md's example, on tiny data, in a folder that holds only core.py. Without the
    autoattack package (pyautoattack) its AutoAttack part is left out, and the rest still runs."""
    import re
    import subprocess
    with open(os.path.join(ROOT, "docs", "using-core.md"), encoding="utf-8") as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.DOTALL).group(1)
    sized = "ITERS, N_TEST = 2000, 1000"
    assert sized in code, "the example's size line changed: update this test's tiny sizes"
    code = code.replace(sized, "ITERS, N_TEST = 3, 16").replace("torch.rand(4096", "torch.rand(128").replace("(4096,)", "(128,)")
    try:
        import pyautoattack  # noqa: F401
        autoattack = True
    except ImportError:
        autoattack = False
        code = re.sub(r"# AutoAttack's standard version.*?\n\n", "", code, flags=re.DOTALL)
    shutil.copy(os.path.join(ROOT, "core.py"), tmp_path)
    (tmp_path / "example.py").write_text(code)
    run = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=os.environ | {"PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^clean [\d.]+ PGD-10 [\d.]+$", run.stdout, re.MULTILINE), run.stdout
    assert re.search(r"^AutoAttack [\d.]+$", run.stdout, re.MULTILINE) or not autoattack, run.stdout
    assert sorted(set(os.listdir(tmp_path)) - {"__pycache__"}) == ["core.py", "example.py", "model_c.pt"]


def test_batches_of_float64_images_are_float32(core):
    images, labels = learnable_set(16, seed=15)
    x, y = core.Batches(images.double() / 255, labels.int(), 8, 0, "cpu")(0)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
