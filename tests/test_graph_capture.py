"""What core.GraphedStep needs of a step's optimisers, checked on the CPU with CUDA's graph machinery
faked: the capture itself runs only on a GPU (tests/test_cuda.py)."""
import contextlib

import torch

import core
import experiment
import mnist

CPU = torch.device("cpu")


class RecordedGraph:
    """Stands in for torch.cuda.CUDAGraph: the 'capture' runs the step eagerly, replays do nothing."""

    def replay(self):
        pass


def test_a_capture_steps_adam_as_capturable_and_gives_each_group_its_flag_back(monkeypatch):
    """torch refuses to capture an Adam step unless its groups say capturable (its
    Optimizer._accelerator_graph_capture_health_check reads exactly this flag); fused Adam's kernels
    need no more. C's G steps with Adam on MNIST and CIFAR: without the flag, no C step could be graphed."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    torch.manual_seed(0)
    settings = mnist.SETTINGS | experiment.QUICK_SETTINGS
    step, modules = core.make_step("advnet", mnist.build_D(settings), mnist.build_G(settings), settings)
    optimizers = [m for m in modules.values() if isinstance(m, torch.optim.Optimizer)]
    adam = [g for opt in optimizers for g in opt.param_groups if "capturable" in g]
    assert adam and not any(g["capturable"] for g in adam), "the test needs an Adam built as training builds it"
    seen = []

    def recorded(x, y):
        seen.append([g["capturable"] for g in adam])
        return step(x, y)

    graphed = core.GraphedStep(recorded, CPU, warmup=0, optimizers=optimizers)
    graphed(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    assert seen == [[True] * len(adam)], seen
    assert not any(g["capturable"] for g in adam), "a checkpoint saved later must not carry the flag"
