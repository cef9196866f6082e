"""D's learning-rate schedule (lr_at and the rate the optimiser holds inside the loop), and resumes that
are bit-identical to an uninterrupted run: across the drop, with augmentation, with G2's noise input,
and for EAT, whose static set is rebuilt when a run resumes."""
import os
import signal

import pytest
import torch

import core
import mnist
import runner.settings
import runner.training
from conftest import learnable_images

SETTINGS = mnist.SETTINGS | dict(iters=8, g_width=4, g_steps=2, log_every=2, ckpt_minutes=0.0, batch_size=16, d_lr=0.05)


# ---------------------------------------------------------------- lr_at
@pytest.mark.parametrize("iters, drop_at, first_dropped", [(10, 0.5, 5), (7, 0.5, 3), (200_000, 0.5, 100_000),
                                                           (10, 0.0, 0), (10, 1.0, None)])
def test_lr_at_drops_from_the_fraction_of_the_run_on(iters, drop_at, first_dropped):
    settings = dict(d_lr=0.1, d_lr_drop_factor=0.1, d_lr_drop_at=drop_at, iters=iters)
    first = iters if first_dropped is None else first_dropped
    for it in {0, 1, first - 1, first, first + 1, iters - 1} & set(range(iters)):
        assert runner.settings.lr_at(it, settings) == pytest.approx(0.1 if it < first else 0.01), it


# ---------------------------------------------------------------- training with a spy on the optimiser's rate
def learnable_data(n=64):
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    return torch.from_numpy(learnable_images(y.numpy())).unsqueeze(1), y


@pytest.fixture
def rates(monkeypatch):
    """D's learning rate (every parameter group's) when each step starts, as the loop calls the step."""
    seen, make_step = [], core.make_step

    def spied(method, D, G, settings, *args, **kwargs):
        step, modules = make_step(method, D, G, settings, *args, **kwargs)

        def step_and_record(x, y):
            seen.append({round(float(g["lr"]), 6) for g in modules["opt_D"].param_groups})
            return step(x, y)
        return step_and_record, modules
    monkeypatch.setattr(core, "make_step", spied)
    return seen


def train(path, method, settings, make_data, build_G=lambda: core.G1(k=4, channels=1), stop_at=None):
    """train_model on `make_data()` (the training images and labels, made when the loop asks, as the
    scripts do); a SIGINT arrives during iteration `stop_at`."""
    torch.manual_seed(0)
    D, G = core.D1(), build_G()

    def make_batches():
        images, labels = make_data()
        batches = core.Batches(images, labels, settings["batch_size"], 0, torch.device("cpu"),
                               core.crop_flip if settings["augment"] else None)

        def source(it):
            if it == stop_at:
                os.kill(os.getpid(), signal.SIGINT)
            return batches(it)
        return source
    record = runner.training.train_model(method, method, 0, D, G, make_batches, settings, torch.device("cpu"), str(path))
    return D, G, record


def same_weights(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def interrupted_then_resumed(tmp_path, method, settings, make_data, stop_at, **kwargs):
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "m.pt", method, settings, make_data, stop_at=stop_at, **kwargs)
    assert core.load_checkpoint(str(tmp_path / "m.pt"))["record"]["iters_done"] == stop_at + 1
    return train(tmp_path / "m.pt", method, settings, make_data, **kwargs)


def test_the_optimiser_holds_lr_at_each_iteration_and_a_resume_across_the_drop_is_bit_identical(tmp_path, rates):
    """Fails for a drop one iteration off, a rate set only once, or a schedule counted from the session's start."""
    settings = SETTINGS | dict(d_lr_drop_at=0.5, d_lr_drop_factor=0.1)
    D_ref, G_ref, _ = train(tmp_path / "ref.pt", "advnet", settings, learnable_data)
    assert rates == [{0.05}] * 4 + [{0.005}] * 4, rates  # both parameter groups
    rates.clear()
    D, G, record = interrupted_then_resumed(tmp_path, "advnet", settings, learnable_data, stop_at=1)  # saved at 2
    assert [s["from_iter"] for s in record["sessions"]] == [0, 2]
    assert rates == [{0.05}] * 4 + [{0.005}] * 4, rates  # 2 before the interruption, 6 after the resume
    assert [h["lr"] for h in record["history"]] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    assert same_weights(D, D_ref) and same_weights(G, G_ref)


# ---------------------------------------------------------------- resume breadth
def eat_data():
    """The EAT set, built when the loop asks for the data (as ensemble.py builds it): a resumed run builds it again."""
    images, labels = learnable_data()
    with torch.random.fork_rng():  # the source model's initialisation must not reseed the loop's RNG
        torch.manual_seed(1)
        source = core.D1()
    return ensemble_eat_set(source, images, labels)


def ensemble_eat_set(model, images, labels):
    import ensemble
    return ensemble.build_eat_set(model, images, labels, SETTINGS | dict(eps=0.3, pgd_steps=2), torch.device("cpu"))


RESUMES = {
    "augmentation": ("advnet", dict(augment=True), learnable_data, lambda: core.G1(k=4, channels=1)),
    "G2 noise": ("advnet", {}, learnable_data, lambda: core.G2(k=4, channels=1, size=28)),
    "EAT": ("eat", dict(augment=True), lambda: (lambda s: (s, s.labels))(eat_data()), lambda: core.G1(k=4, channels=1)),
}


@pytest.mark.parametrize("case", RESUMES)
def test_interrupted_and_resumed_run_is_bit_identical(case, tmp_path):
    """Fails where a random draw (crop and flip, G2's noise, the EAT set's PGD starts) is not restored or
    is drawn anew from a state the checkpoint does not hold."""
    method, changes, make_data, build_G = RESUMES[case]
    settings = SETTINGS | changes
    D_ref, G_ref, _ = train(tmp_path / "ref.pt", method, settings, make_data, build_G)
    D, G, record = interrupted_then_resumed(tmp_path, method, settings, make_data, stop_at=4, build_G=build_G)
    assert record["iters_done"] == 8 and [s["from_iter"] for s in record["sessions"]] == [0, 5]
    assert same_weights(D, D_ref) and (method == "eat" or same_weights(G, G_ref))
