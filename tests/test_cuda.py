"""The CUDA paths: bf16 autocast, channels_last, TF32 and compiled steps. Skipped without a GPU (CI has
none); run them where one is: python -m pytest -q tests/test_cuda.py."""
import pytest
import torch

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
