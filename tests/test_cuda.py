"""The CUDA paths: bf16 autocast, channels_last, TF32, compiled and graph-captured steps. Skipped without a GPU (CI has
none); run them where one is: python -m pytest -q tests/test_cuda.py."""
import os
import signal

import pytest
import torch

import cifar10
import core
import experiment
import mnist
from test_training import mnist_batch, regulariser_gradient

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_regulariser_under_the_training_autocast_matches_float64():
    device = torch.device("cuda:0")
    torch.manual_seed(0)
    D, G = core.to_device(core.D1(), device), core.to_device(core.G1(k=4, channels=1), device)
    x, y = (t.to(device) for t in mnist_batch())
    reference = regulariser_gradient(D.double(), G.double(), x.double(), y, torch.autocast("cuda", enabled=False))
    D, G = D.float(), G.float()
    measured = regulariser_gradient(D, G, x, y, core.autocast(device))
    assert ((measured.double() - reference).norm() / reference.norm()) < 1e-2


@cuda
@pytest.mark.parametrize("method", ["standard", "pgd", "advnet"])
@pytest.mark.parametrize("compiled", [False, True])
def test_training_steps_run_on_cuda(method, compiled, tmp_path):
    device = torch.device("cuda:0")
    settings = mnist.SETTINGS | experiment.QUICK_SETTINGS | dict(iters=6, log_every=3, compile=compiled)
    images, labels = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (256,))
    _, _, record = experiment.prepare_model("m", method, 0, settings, mnist.build_D, mnist.build_G, lambda: (images, labels),
                                      device, str(tmp_path / "m.pt"))
    assert record["iters_done"] == 6 and all(h["loss"] == h["loss"] for h in record["history"])


def fixed_data_run(tmp_path, method, graphs, iters=50):
    """Trains on 64 fixed images (one batch repeated) so eager and graphed runs see the same data."""
    device = torch.device("cuda:0")
    settings = cifar10.SETTINGS | experiment.QUICK_SETTINGS | dict(iters=iters, log_every=10, batch_size=64,
                                                                    augment=False, cuda_graphs=graphs)
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (64,))
    return experiment.prepare_model("m", method, 0, settings, cifar10.build_D, cifar10.build_G,
                                    lambda: (images, labels), device, str(tmp_path / f"{method}_{graphs}.pt"))


@cuda
@pytest.mark.parametrize("method", ["standard", "pgd", "advnet"])
def test_graphed_training_follows_eager_training(method, tmp_path):
    eager = fixed_data_run(tmp_path, method, False)[2]["history"]
    graphed = fixed_data_run(tmp_path, method, True)[2]["history"]
    for e, g in zip(eager, graphed):  # bf16 rounding and the random starts differ; the losses must agree
        assert abs(e["loss"] - g["loss"]) < 0.1 * max(1.0, abs(e["loss"])), (e, g)
    assert graphed[-1]["loss"] < graphed[0]["loss"] + 0.1


@cuda
def test_graph_trained_model_resumes_after_an_interruption(tmp_path):
    device = torch.device("cuda:0")
    settings = cifar10.SETTINGS | experiment.QUICK_SETTINGS | dict(iters=20, log_every=5, augment=False, cuda_graphs=True)
    images, labels = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (128,))
    batches = core.Batches(images, labels, settings["batch_size"], 0, device)

    def interrupt_at_12(it):
        if it == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return batches(it)

    def train(source):
        torch.manual_seed(0)
        D, G = core.to_device(cifar10.build_D(settings), device), core.to_device(cifar10.build_G(settings), device)
        return experiment.train_model("C", "advnet", 0, D, G, lambda: source, settings, device, str(tmp_path / "C.pt"))

    with pytest.raises(KeyboardInterrupt):
        train(interrupt_at_12)
    assert core.load_checkpoint(str(tmp_path / "C.pt"))["record"]["iters_done"] == 13
    record = train(batches)
    assert record["iters_done"] == 20 and [s["from_iter"] for s in record["sessions"]] == [0, 13]
    assert all(h["loss"] == h["loss"] for h in record["history"])


@cuda
def test_regulariser_inside_a_cuda_graph_equals_eager():
    device = torch.device("cuda:0")
    torch.manual_seed(0)
    D, G = core.to_device(core.D2(), device), core.to_device(core.G1(k=8, channels=3), device)
    x, y = torch.rand(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)

    def regulariser(x, y):
        parts = [torch.cat([g.flatten() for g in core.discriminator_grads(D, G, x, x, y, 8 / 256, gamma=gamma, h=2e-4)[0]])
                 for gamma in (0.01, 0.0)]
        return {"reg": parts[0] - parts[1]}

    with core.autocast(device):
        eager = regulariser(x, y)["reg"].clone()
    graphed = core.GraphedStep(regulariser, device, warmup=1)
    graphed(x, y)
    replayed = graphed(x, y)["reg"]
    assert graphed.replays == 1
    assert ((replayed - eager).norm() / eager.norm()) < 1e-4
