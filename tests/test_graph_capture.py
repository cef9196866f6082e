"""What core.GraphedStep needs of a step's optimisers, and the graphed paths of bench.py (which
gpu_check.py times), run on the CPU with CUDA's graph machinery faked: a 'capture' runs the step once,
a 'replay' runs it again on the static inputs and copies its statistics into the static outputs. The
capture itself runs only on a GPU (tests/test_cuda.py, gpu_check.py)."""
import contextlib

import pytest
import torch

import bench
import core
import gpu_check
import mnist
import runner.settings
import runner.training

CPU = torch.device("cpu")


class FakeStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass


@pytest.fixture
def faked_graphs(monkeypatch):
    replays = []

    class FakeGraph:
        def replay(self):
            replays[-1]()

    capture = core.GraphedStep.capture

    def capture_and_replay_later(graphed, x, y):
        capture(graphed, x, y)

        def replay():
            for name, value in graphed.step(graphed.static_x, graphed.static_y).items():
                graphed.static_stats[name].copy_(value)
        replays.append(replay)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(core.GraphedStep, "capture", capture_and_replay_later)
    return replays


def test_a_capture_steps_adam_as_capturable_and_gives_each_group_its_flag_back(faked_graphs):
    """torch refuses to capture an Adam step unless its groups say capturable (its
    Optimizer._accelerator_graph_capture_health_check reads exactly this flag); fused Adam's kernels
    need no more. C's G steps with Adam on MNIST and CIFAR: without the flag, no C step could be graphed."""
    torch.manual_seed(0)
    settings = mnist.SETTINGS | runner.settings.QUICK_SETTINGS
    step, modules = core.make_step("advnet", mnist.build_D(settings), mnist.build_G(settings), core.step_settings(settings))
    optimizers = [m for m in modules.values() if isinstance(m, torch.optim.Optimizer)]
    adam = [g for opt in optimizers for g in opt.param_groups if "capturable" in g]
    assert adam and not any(g["capturable"] for g in adam), "the test needs an Adam built as training builds it"
    seen = []

    def recorded(x, y):
        seen.append([g["capturable"] for g in adam])
        return step(x, y)

    graphed = core.GraphedStep(recorded, CPU, warmup=0, optimizers=optimizers)
    graphed(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    assert seen[0] == [True] * len(adam), seen
    assert not any(g["capturable"] for g in adam), "a checkpoint saved later must not carry the flag"


def test_bench_graphed_paths_run_their_steps_through_a_graphed_step(faked_graphs):
    """The Python side of what gpu_check.py times on a GPU: a graphed step, and six graphed models in turn."""
    script, shape = bench.NETWORKS["mnist"]
    settings = bench.network_settings(script, True) | gpu_check.QUICK_NETWORKS
    timing = {"iters": 2, "warmup": 1}
    assert bench.measure("advnet", script, settings, shape, CPU, "graphed", timing)["it_per_s"] > 0
    assert len(faked_graphs) == 1
    assert bench.measure_concurrent(script, settings, shape, CPU, timing, "graphed", 1) > 0
    assert len(faked_graphs) == 1 + len(bench.SCRIPT_MODELS)


def test_a_graphed_b_runs_its_warmup_eagerly_and_captures_after_it(faked_graphs, monkeypatch):
    """A graph replays one fixed step; B's warm-up changes its radius every step, so those steps run as
    they are, and GraphedStep's warm-up and capture start with the first step without a radius."""
    monkeypatch.setattr(runner.training, "check_device", lambda settings, device: None)
    calls = []

    def recorded(x, y, **options):
        calls.append(options)
        return {"loss": x.sum()}

    graphed = runner.training.graphed_or_eager(recorded, {"cuda_graphs": True}, CPU)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for it in range(3):
        graphed(x, y, **runner.training.step_options("pgd", it, {"eps": 0.3, "pgd_warmup_iters": 3}))
    assert [c["eps"] for c in calls] == pytest.approx([0.1, 0.2, 0.3]) and not faked_graphs
    for _ in range(5):  # GraphedStep's 3 warm-up calls, the capture, a replay
        graphed(x, y)
    assert len(faked_graphs) == 1 and calls[3:] == [{}] * 6  # 3 warm-up calls, the capture, 2 replays
    with pytest.raises(ValueError, match="d_step"):  # C's alternating steps would never be graphed
        graphed(x, y, d_step=False)
