"""ensemble.py and generators_study.py end to end on fake data; the EAT set; a generator's attack."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import core
import ensemble
import generators_study
import runner.errors
import runner.settings
import runner.training
from conftest import COLUMNS, learnable_images

EPS = 0.2


def tiny_trained_model(images, labels):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = core.to_float(images)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return model


def learnable_set(n=256):
    torch.manual_seed(1)
    labels = torch.randint(0, 10, (n,))
    return torch.from_numpy(learnable_images(labels.numpy())).unsqueeze(1), labels


def test_eat_set_has_four_times_the_images_with_their_labels_within_eps():
    images, labels = learnable_set()
    model = tiny_trained_model(images, labels)
    eat = core.build_eat_set(model, images, labels, EPS, torch.device("cpu"), batch_size=100)
    n = len(images)
    assert len(eat) == 4 * n and torch.equal(eat.labels, labels.repeat(4))
    everything = eat[torch.arange(4 * n)]
    sources = core.to_float(images).repeat(4, 1, 1, 1)
    assert torch.equal(everything[:n], sources[:n]), "the first quarter is the clean set"
    distance = (everything - sources).abs().flatten(1).amax(1)
    assert distance.max() <= EPS + 1e-6 and everything.min() >= 0 and everything.max() <= 1
    assert (distance[n:] > EPS / 2).all(), "every adversarial copy is actually perturbed"


def signed_gradient_step(model, x, labels, eps):
    """x + eps * sign(grad_x CE(model(x), labels)), clamped to [0, 1]: written here, not taken from core."""
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(nn.functional.cross_entropy(model(x), labels, reduction="sum"), x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def test_each_quarter_of_the_eat_set_is_its_own_attack_image_for_image():
    """From a model that is wrong on about a third of the images: FGS with the model's predicted label (not
    the true one: no label leaking), PGD with the true label, the step towards the least likely class.
    Fails for the FGS quarter crafted with true labels, PGD with predicted labels, the least-likely step
    reversed, or the quarters in another order."""
    images, labels = learnable_set(128)
    model = tiny_trained_model(images, labels)
    true = torch.where(torch.arange(128) % 3 == 0, (labels + 1) % 10, labels)  # the model learned `labels`
    x = core.to_float(images)
    predicted = model(x).argmax(1)
    assert 0.25 < (predicted != true).float().mean() < 0.4
    torch.manual_seed(5)
    eat = core.build_eat_set(model, images, true, EPS, torch.device("cpu"), batch_size=128, pgd_steps=3,
                             precision="float32")  # as `expected` is crafted, on CPUs with native bf16 too
    torch.manual_seed(5)  # the PGD quarter's random start: the first draw, as in build_eat_set's one batch
    pgd = core.pgd(model, x, true, EPS, steps=3)
    expected = {"clean": x, "fgs_predicted": signed_gradient_step(model, x, predicted, EPS), "pgd": pgd,
                "fgs_least_likely": signed_gradient_step(model, x, model(x).argmin(1), -EPS)}
    assert list(expected) == core.EAT_KINDS
    leaked = signed_gradient_step(model, x, true, EPS)
    assert (leaked != expected["fgs_predicted"]).flatten(1).any(1).sum() > 30, "true labels must make a difference"
    stored = eat[torch.arange(4 * 128)]
    assert torch.equal(eat.labels, true.repeat(4))
    for k, kind in enumerate(core.EAT_KINDS):  # stored as float16 differences: 0.2 * 2^-11 = 1e-4 at most
        assert torch.allclose(stored[k * 128:(k + 1) * 128], expected[kind], atol=2e-4, rtol=0), kind


def test_batches_read_the_eat_set():
    images, labels = learnable_set(64)
    model = tiny_trained_model(images, labels)
    eat = core.build_eat_set(model, images, labels, EPS, torch.device("cpu"))
    x, y = core.Batches(eat, eat.labels, 32, seed=0, device=torch.device("cpu"))(3)
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (32,)


def test_generator_trained_against_a_fixed_model_lowers_its_accuracy(tmp_path):
    images, labels = learnable_set()
    model = tiny_trained_model(images, labels)
    settings = runner.settings.COMMON_SETTINGS | dict(eps=EPS, iters=40, batch_size=32, g_width=4, g_opt="adam", g_lr=0.01,
                                           d_lr=0.0, d_weight_decay=0.0, log_every=10, ckpt_minutes=0.0)
    _, G, record = runner.training.prepare_model("G vs model", "generator", 0, settings, lambda s: model,
                                      lambda s: core.G1(k=4, channels=1), lambda: (images, labels),
                                      torch.device("cpu"), str(tmp_path / "g.pt"))
    assert record["iters_done"] == 40
    attack = lambda x, y: core.generator_attack(G.eval(), x, y, EPS)
    before = core.transfer_accuracy({"m": model}, lambda x, y: x, images, labels, EPS, torch.device("cpu"))["m"]
    after = core.transfer_accuracy({"m": model}, attack, images, labels, EPS, torch.device("cpu"))["m"]
    assert before > 90 and after < before - 30, (before, after)


@pytest.mark.slow
def test_ensemble_quick_run(fake_mnist, shared_checkpoints, tmp_path, capsys):
    out = tmp_path / "ensemble.json"
    args = ["--quick", "--gpu", "cpu", "--datasets", "mnist", "--data-dir", fake_mnist, "--ckpt-dir", shared_checkpoints]
    ensemble.main(args + ["--out", str(out)])
    said = capsys.readouterr().out  # the banner: what it will train, where things go, that it is a smoke test
    for fragment in ("mnist_quick: paper protocol on cpu", "A, C, A', B', C' (10 iterations each)", "EAT set", str(out),
                     "smoke test"):
        assert fragment in said, fragment
    entry = json.loads(out.read_text())["datasets"]["mnist"]
    assert set(entry["table"]) == {"EAT", "C"} and all(set(r) == set(COLUMNS) for r in entry["table"].values())
    eat_n = runner.settings.QUICK_SETTINGS["eat_n"]  # of the 256 fake training images
    assert 0 < eat_n < 256 and entry["settings"]["eat_n"] == eat_n
    assert entry["eat_set"]["n_images"] == 4 * eat_n and entry["eat_set"]["kinds"][0] == "clean"
    assert entry["models"]["EAT"]["method"] == "eat" and entry["eval"]["n_test"] == runner.settings.QUICK_SETTINGS["test_n"]
    assert entry["provenance"]["command"].startswith("ensemble.py")


def test_ensemble_rejects_unknown_datasets():
    with pytest.raises(runner.errors.UserError, match="--datasets"):
        ensemble.main(["--quick", "--gpu", "cpu", "--datasets", "imagenet"])


@pytest.mark.slow
def test_generators_quick_run(fake_cifar10, shared_checkpoints, tmp_path, no_md5_check, capsys):
    out = tmp_path / "generators.json"
    generators_study.main(["--quick", "--gpu", "cpu", "--data-dir", fake_cifar10, "--ckpt-dir", shared_checkpoints,
                           "--out", str(out)])
    said = capsys.readouterr().out
    for fragment in ("generators_quick: paper protocol on cpu", "A, A', B, B', C (10 iterations each)", "G3_label",
                     str(out), "smoke test"):
        assert fragment in said, fragment
    report = json.loads(out.read_text())
    names = list(generators_study.GENERATORS)
    assert list(report["table5"]) == names and all(set(r) == {"A", "A'", "B", "C"} for r in report["table5"].values())
    assert set(report["table6"]) == set(names)
    assert all(set(r) == set(COLUMNS[:7]) for r in report["table6"].values())
    examples = np.load(tmp_path / report["examples"])
    for name in names:
        clean, delta, perturbed = (examples[f"{name}_{k}"] for k in ("clean", "perturbation", "perturbed"))
        assert clean.shape == (generators_study.N_EXAMPLES, 3, 32, 32)
        assert np.abs(delta).max() <= report["settings"]["eps"] + 1e-6
        assert np.allclose(np.clip(clean + delta, 0, 1), perturbed, atol=1e-6)
