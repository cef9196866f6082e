"""The experiment machinery: the resumable, interruptible training loop and the checkpoint fingerprint."""
import os
import signal

import pytest
import torch

import core
import mnist
import runner.errors
import runner.provenance
import runner.settings
import runner.training
from conftest import learnable_images


SETTINGS = mnist.SETTINGS | dict(iters=12, g_width=4, log_every=3, ckpt_minutes=0.0, batch_size=16)


def train(tmp_path, method, batches_hook=None):
    torch.manual_seed(0)
    D, G = core.D1(), core.G1(k=4, channels=1)
    y = torch.randint(0, 10, (64,))
    images = torch.from_numpy(learnable_images(y.numpy())).unsqueeze(1)
    batches = core.Batches(images, y, SETTINGS["batch_size"], seed=0, device=torch.device("cpu"))
    source = batches if batches_hook is None else (lambda it: batches_hook(it, batches))
    record = runner.training.train_model(method, method, 0, D, G, lambda: source, SETTINGS, torch.device("cpu"), str(tmp_path / f"{method}.pt"))
    return D, G, record


def same_weights(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("method", ["pgd", "advnet"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, method):
    D_ref, G_ref, ref = train(tmp_path / "ref", method)

    def interrupt(it, batches):  # a SIGINT arrives during iteration 7
        if it == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return batches(it)

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, method, interrupt)
    assert core.load_checkpoint(str(tmp_path / f"{method}.pt"))["record"]["iters_done"] == 8
    D, G, record = train(tmp_path, method)
    assert record["iters_done"] == 12 and [s["from_iter"] for s in record["sessions"]] == [0, 8]
    assert same_weights(D, D_ref) and (method != "advnet" or same_weights(G, G_ref))


def test_crashed_run_resumes_from_last_checkpoint_with_the_same_weights(tmp_path):
    D_ref, G_ref, _ = train(tmp_path / "ref", "advnet")

    def crash(it, batches):
        if it == 7:
            raise RuntimeError("power cut")
        return batches(it)

    with pytest.raises(RuntimeError):
        train(tmp_path, "advnet", crash)
    assert core.load_checkpoint(str(tmp_path / "advnet.pt"))["record"]["iters_done"] == 6
    D, G, _ = train(tmp_path, "advnet")
    assert same_weights(D, D_ref) and same_weights(G, G_ref)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(it, batches):
        x, y = batches(it)
        return (x * float("nan"), y) if it >= 7 else (x, y)

    with pytest.raises(runner.errors.UserError, match="NaN.*standard.pt keeps iteration 6"):
        train(tmp_path, "standard", poison)
    ckpt = core.load_checkpoint(str(tmp_path / "standard.pt"))
    assert ckpt["record"]["iters_done"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["D"].values())


def test_finished_model_is_not_retrained(tmp_path):
    _, _, first = train(tmp_path, "standard")
    poisoned = lambda it, batches: (_ for _ in ()).throw(AssertionError("trained again"))
    D, _, again = train(tmp_path, "standard", poisoned)
    assert again == first


def test_runtime_settings_do_not_invalidate_checkpoints():
    """Compiling, the BN mode of scoring and the evaluation's size do not change what a model learns."""
    s = mnist.SETTINGS | runner.settings.QUICK_SETTINGS
    same = s | {"compile": True, "bn_eval": "batch", "test_n": 7, "strong_n": 3}
    assert runner.settings.fingerprint(same, "advnet", 0) == runner.settings.fingerprint(s, "advnet", 0)
    assert runner.settings.fingerprint(s | {"eps": 0.2}, "advnet", 0) != runner.settings.fingerprint(s, "advnet", 0)


def test_cuda_graphs_on_the_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(runner.errors.UserError, match="cuda_graphs=true needs a CUDA device"):
        runner.training.graphed_or_eager(lambda x, y: {}, SETTINGS | {"cuda_graphs": True}, torch.device("cpu"))
    assert runner.settings.fingerprint(SETTINGS | {"cuda_graphs": True}, "advnet", 0) == runner.settings.fingerprint(SETTINGS, "advnet", 0)


# ---------------------------------------------------------------- several models trained at once
def prepare_two(tmp_path, concurrent, monkeypatch=None, batches_hook=None):
    """A (standard) and C (adversarial network, G1): neither draws from the global RNG, so training
    them in turn must give exactly what training them one after the other gives."""
    settings = SETTINGS | {"concurrent_models": concurrent, "augment": False}
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    images = torch.from_numpy(learnable_images(y.numpy())).unsqueeze(1)
    specs = {"A": ("standard", 0, str(tmp_path / "A.pt"), True), "C": ("advnet", 0, str(tmp_path / "C.pt"), True)}
    if batches_hook:
        real = runner.training.batch_maker
        monkeypatch.setattr(runner.training, "batch_maker", lambda *a: (lambda: batches_hook(real(*a)())))
    return runner.training.prepare_models(specs, settings, mnist.build_D, mnist.build_G, lambda: (images, y), torch.device("cpu"))


def test_models_trained_in_turn_equal_models_trained_one_after_another(tmp_path):
    one_by_one = prepare_two(tmp_path / "sequential", False)
    in_turn = prepare_two(tmp_path / "concurrent", True)
    for name in ("A", "C"):
        assert in_turn[name][2]["iters_done"] == SETTINGS["iters"]
        assert same_weights(in_turn[name][0], one_by_one[name][0]), name
    assert same_weights(in_turn["C"][1], one_by_one["C"][1])


def test_interrupted_concurrent_run_checkpoints_every_model_and_resumes(tmp_path, monkeypatch):
    def interrupt_at_7(batches):
        def source(it):
            if it == 7:
                os.kill(os.getpid(), signal.SIGINT)
            return batches(it)
        return source

    with pytest.raises(KeyboardInterrupt):
        prepare_two(tmp_path, True, monkeypatch, interrupt_at_7)
    saved = {name: core.load_checkpoint(str(tmp_path / f"{name}.pt"))["record"]["iters_done"] for name in ("A", "C")}
    assert saved == {"A": 8, "C": 8}, saved  # each finishes the iteration under way, then saves
    monkeypatch.undo()
    resumed = prepare_two(tmp_path, True)
    assert all(resumed[n][2]["iters_done"] == SETTINGS["iters"] for n in ("A", "C"))
    assert [s["from_iter"] for s in resumed["C"][2]["sessions"]] == [0, 8]


@pytest.mark.parametrize("value,interval,inside", [(0.3, "(0, 1]", True), (1.0, "(0, 1]", True), (0.0, "(0, 1]", False),
                                                   (-0.3, "(0, 1]", False), (0.0, "[0, inf)", True), (1.0, "[0, 1)", False),
                                                   (-5.0, "(-inf, inf)", True)])
def test_intervals_include_exactly_their_closed_ends(value, interval, inside):
    assert runner.settings.in_range(value, interval) == inside


def test_every_numeric_setting_of_every_script_has_a_range_its_default_meets():
    import cifar10, cifar100, svhn
    for script in (mnist, svhn, cifar10, cifar100):
        for settings in (script.SETTINGS, script.SETTINGS | runner.settings.QUICK_SETTINGS):
            runner.settings.check_ranges(settings)  # raises on a missing range or a default outside it
    with pytest.raises(runner.errors.UserError, match="eps=2"):
        runner.settings.check_ranges(mnist.SETTINGS | {"eps": 2})
    with pytest.raises(KeyError, match="unlisted"):
        runner.settings.check_ranges(mnist.SETTINGS | {"unlisted": 1})


def test_provenance_names_the_commit_the_process_started_from(monkeypatch):
    """A run lasts hours; commits made meanwhile in its checkout must not be credited with its later
    models or its results (the code it runs was read at its start)."""
    run = runner.provenance.subprocess.run

    def no_git_now(command, *args, **kwargs):
        assert command[0] != "git", "git read after the process started"
        return run(command, *args, **kwargs)
    monkeypatch.setattr(runner.provenance.subprocess, "run", no_git_now)
    prov = runner.provenance.provenance(torch.device("cpu"), "mnist.py --quick")
    assert (prov["git_commit"], prov["git_dirty"]) == runner.provenance.GIT_AT_START


@pytest.mark.parametrize("capability,threads,named", [("AVX2", 1, "AVX2, 1 thread"), ("AVX512", 2, "AVX512, 2 threads")])
def test_provenance_names_the_vector_instructions_and_threads_of_a_cpu(capability, threads, named, monkeypatch):
    """The same float32 run trains another model where torch's CPU kernels use other vector instructions
    (MNIST's A, seed 0: FGS 33.63 with AVX-512, 37.66 with AVX2) or split its sums over another number
    of threads: every result must say both. Fails if the device a result records leaves either out."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    device = runner.provenance.provenance(torch.device("cpu"), "mnist.py --quick")["device"]
    assert device.endswith(f", {named})")
