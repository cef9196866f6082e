"""Speed of every training step, for the MNIST and the CIFAR networks: it/s, images/s, FLOPs, achieved
TFLOP/s, and the aten operators and host syncs one step dispatches, along several paths: eager float32,
bf16 autocast, channels_last, both (what training uses on CUDA), torch.compile'd networks, and the
whole step captured as a CUDA graph (CUDA only). On CUDA it also replays the six models of a data-set
script concurrently, each on its own stream. It projects each full script's training time, sequential
and concurrent, and measures the regulariser's precision under bf16 (its finite difference against
float64, with and without the float32 adversarial term). A benchmark, not a test: it prints a table
and writes results/bench.json (device, versions, commit).

    python tools/bench.py --gpu 0
    python tools/bench.py --quick --gpu cpu      # a smoke run: --quick's small networks, 2 iterations, no compilation
"""
import argparse
import contextlib
import copy
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import _root  # noqa: F401 (first: the repository's root on sys.path, for the imports below)
import cifar10
import core
import mnist
import runner.cli
import runner.errors
import runner.files
import runner.provenance
import runner.settings
import runner.training

# ======================================================================================= settings
SETTINGS = dict(
    iters=20,                # timed iterations per step and path
    warmup=5,                # untimed iterations first (compilation, cuDNN autotuning, graph capture)
    compile=True,            # also measure the compiled path (torch.compile of D and G)
)
QUICK = dict(iters=2, warmup=1, compile=False)
LEAST = dict(iters=1, warmup=0)  # each count's smallest value: a rate needs one timed iteration
NETWORKS = {  # name -> (script whose settings and networks are benchmarked, input shape)
    "mnist": (mnist, (1, 28, 28)),
    "cifar": (cifar10, (3, 32, 32)),
}
STEPS = ["standard", "pgd", "advnet", "eat"]  # make_step methods
PATHS = {  # how a step runs; the first one is the baseline of the speedups
    "eager_fp32": dict(bf16=False, channels_last=False),
    "bf16": dict(bf16=True, channels_last=False),
    "channels_last": dict(bf16=False, channels_last=True),
    "bf16_channels_last": dict(bf16=True, channels_last=True),
    "compiled": dict(bf16=True, channels_last=True, compile=True),
    "graphed": dict(bf16=True, channels_last=True, graphs=True),
}
FULL_RUNS = {"mnist.py": "mnist", "cifar10.py": "cifar", "svhn.py": "cifar", "cifar100.py": "cifar"}
SCRIPT_MODELS = ["standard", "standard", "pgd", "pgd", "advnet", "advnet"]  # A, A', B, B', C, C'


def training_path(device):
    """The path the training loop takes on `device` by default (precision auto, core.to_device)."""
    if device.type == "cuda":
        return "bf16_channels_last"
    return "bf16" if core.amp_dtype(device) else "eager_fp32"


def paths_for(device, bench):
    return [p for p, flags in PATHS.items() if (not flags.get("graphs") or device.type == "cuda")
            and (not flags.get("compile") or bench["compile"])]


# ======================================================================================= measuring
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BATCHES_PER_EPOCH = 50  # core.Batches draws each epoch's order on the host and copies it over, which waits for the GPU:
                        # once in 781 iterations on CIFAR, so a benchmark of one batch per epoch would time a wait per step


def batch_source(method, shape, batch_size, device):
    """Random batches drawn as training draws them; for EAT, read through a StaticAdversarialSet."""
    n = BATCHES_PER_EPOCH * batch_size
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    if method == "eat":
        deltas = torch.zeros((3, n, *shape), dtype=torch.float16, device=device)
        data = core.StaticAdversarialSet(images, labels, deltas, 0.03)
        return core.Batches(data, data.labels, batch_size, 0, device)
    return core.Batches(images, labels, batch_size, 0, device)


def runnable_step(method, script, settings, shape, device, path, warmup):
    """(step(x, y) -> stats as the path runs it, batches) for a freshly built model."""
    flags = PATHS[path]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as core.to_device sets it for training
    D, G = script.build_D(settings), script.build_G(settings)
    layout = torch.channels_last if flags["channels_last"] else torch.contiguous_format
    D, G = D.to(device, memory_format=layout), G.to(device, memory_format=layout)
    if flags.get("compile"):
        D.compile(), G.compile()
    step, modules = core.make_step(method, D, G, core.step_settings(settings) | {"precision": "bf16" if flags["bf16"] else "float32"})
    batches = batch_source(method, shape, settings["batch_size"], device)
    if flags.get("graphs"):
        optimizers = [m for m in modules.values() if isinstance(m, torch.optim.Optimizer)]
        return core.GraphedStep(step, device, warmup, optimizers), batches
    return step, batches


def measure(method, script, settings, shape, device, path, bench):
    torch.manual_seed(0)
    run, batches = runnable_step(method, script, settings, shape, device, path, bench["warmup"])
    for it in range(bench["warmup"] + 1):  # + 1: a graphed step is captured on the call after its warmup
        run(*batches(it))
    sync(device)
    t0 = time.perf_counter()
    for it in range(bench["iters"]):
        run(*batches(it))
    sync(device)
    seconds = (time.perf_counter() - t0) / bench["iters"]
    return {"it_per_s": round(1 / seconds, 3), "images_per_s": round(settings["batch_size"] / seconds, 1)}


def measure_concurrent(script, settings, shape, device, bench, path="graphed", timed_rounds=None):
    """Seconds per round of the script's six models, each a step along `path` driven by the training
    loop's runner.training.run_in_turn, each on its own CUDA stream: one iteration of every model per round.
    `timed_rounds` rounds are timed (default: bench["iters"])."""
    torch.manual_seed(0)
    timed_rounds = timed_rounds or bench["iters"]
    runs = [runnable_step(method, script, settings, shape, device, path, bench["warmup"]) for method in SCRIPT_MODELS]

    def iterations(run, batches, first, count):
        for it in range(first, first + count):
            run(*batches(it))
            yield

    def rounds(first, count):
        runner.training.run_in_turn({i: iterations(*run, first, count) for i, run in enumerate(runs)}, device)

    rounds(0, bench["warmup"] + 1)
    sync(device)
    t0 = time.perf_counter()
    rounds(bench["warmup"] + 1, timed_rounds)
    sync(device)
    return (time.perf_counter() - t0) / timed_rounds


HOST_SYNCS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero"}  # read a value back


class StepCount(TorchDispatchMode):
    """Counts every aten operator dispatched, the host syncs among them (on a GPU each waits for the
    device; a CUDA graph cannot hold one), and their FLOPs by PyTorch's formulas (torch.utils.flop_counter).
    FlopCounterMode itself tracks modules with hooks that break autograd.grad with respect to an input,
    as attacks use."""

    def __init__(self):
        super().__init__()
        self.flops, self.ops, self.syncs = 0, 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        name = func._schema.name
        if name in HOST_SYNCS:
            self.syncs[name] = self.syncs.get(name, 0) + 1
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **(kwargs or {}), out_val=out)
        return out


def count_step(method, script, settings, shape, device):
    """FLOPs (matmuls and convolutions, forward and backward), aten operators and host syncs of one
    step, after a first step has created the optimisers' state."""
    torch.manual_seed(0)
    D, G = script.build_D(settings).to(device), script.build_G(settings).to(device)
    step, _ = core.make_step(method, D, G, core.step_settings(settings))
    batches = batch_source(method, shape, settings["batch_size"], device)
    step(*batches(0))
    with StepCount() as counter:
        step(*batches(1))
    return counter


def regulariser_errors(script, settings, shape, device):
    """Relative L2 error, against float64 on the same batch, of the regulariser's gradient
    (gamma/h)[grad F(phi + h v) - grad F(phi)] at the paper's h: in float32 (float32's own error at this
    h, the floor), and under bf16 autocast as implemented (adversarial term in IEEE float32) and with
    core.full_precision lifted, as if that term ran in bf16 (and TF32) like the rest."""
    torch.manual_seed(0)
    D, G = core.to_device(script.build_D(settings), device), core.to_device(script.build_G(settings), device)
    x = torch.rand(settings["batch_size"], *shape, device=device)
    y = torch.randint(0, 10, (settings["batch_size"],), device=device)
    h = core.fd_step(settings)

    def regulariser(D, G, x, precision):
        """The regulariser's gradient in `precision`; inside a bf16 region, so that lifting
        core.full_precision leaves the adversarial term in bf16 too."""
        parts = []
        for gamma in (1.0, 0.0):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                grads = core.discriminator_grads(D, G, G.inputs(x, y), x, y, settings["eps"], 1.0, gamma, h, "fd",
                                                 precision)[0]
            parts.append(torch.cat([g.double().flatten() for g in grads]))
        return parts[0] - parts[1]

    def error(precision, full_precision=core.full_precision):
        kept, core.full_precision = core.full_precision, full_precision
        try:
            measured = regulariser(D, G, x, precision)
        finally:
            core.full_precision = kept
        return round(((measured - reference).norm() / reference.norm()).item(), 6)

    reference = regulariser(copy.deepcopy(D).double(), copy.deepcopy(G).double(), x.double(), "float32")
    return {"float32": error("float32"), "float32_adversarial_term": error("bf16"),
            "bf16_throughout": error("bf16", lambda device: contextlib.nullcontext())}


def project(rows, network, path):
    """Hours to train the six models of one script one after another at the paper's 200k iterations."""
    script = NETWORKS[network][0]
    seconds = sum(script.SETTINGS["iters"] / rows[(network, m)][path]["it_per_s"] for m in SCRIPT_MODELS)
    return round(seconds / 3600, 2)


# ======================================================================================= run
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default=None, help="CUDA device index, or cpu (default: GPU 0 if present)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few iterations, no compilation")
    parser.add_argument("--out", default=None, help="default: results/bench.json (results/bench_quick.json with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    args = parser.parse_args(argv)
    bench = runner.settings.apply_overrides(SETTINGS | (QUICK if args.quick else {}), args.set)
    low = [f"{key}={bench[key]} (at least {least})" for key, least in LEAST.items() if bench[key] < least]
    if low:
        raise runner.errors.UserError(f"--set {', '.join(low)}")
    name = "bench" + ("_quick" if args.quick else "")
    out = args.out or os.path.join("results", f"{name}.json")
    runner.files.check_results_file(out, name)  # before the measurements, not after
    device = runner.cli.pick_device(args.gpu)
    paths = paths_for(device, bench)
    rows, concurrent = {}, {}
    for network, (script, shape) in NETWORKS.items():
        settings = network_settings(script, args.quick)
        for method in STEPS:
            counted = count_step(method, script, settings, shape, device)
            row = {"gflop_per_step": round(counted.flops / 1e9, 2), "aten_ops_per_step": counted.ops,
                   "host_syncs_per_step": counted.syncs}
            for path in paths:
                row[path] = measure(method, script, settings, shape, device, path, bench)
                row[path]["tflop_per_s"] = round(counted.flops * row[path]["it_per_s"] / 1e12, 3)
                row[path]["speedup"] = round(row[path]["it_per_s"] / row[paths[0]]["it_per_s"], 2)
            rows[(network, method)] = row
            print(f"{network:<6} {method:<9} {row['gflop_per_step']:>8.1f} GF {counted.ops:>6} ops "
                  f"{sum(counted.syncs.values()):>4} syncs | " + " | ".join(f"{p} {row[p]['it_per_s']:.2f} it/s" for p in paths))
        if device.type == "cuda":
            concurrent[network] = round(measure_concurrent(script, settings, shape, device, bench), 5)
            print(f"{network:<6} six graphed models on six streams: {concurrent[network] * 1e3:.1f} ms per round")
    precision = {}
    for network, (script, shape) in NETWORKS.items():
        precision[network] = regulariser_errors(script, network_settings(script, args.quick), shape, device)
        print(f"{network:<6} regulariser gradient under bf16 autocast, relative error against float64: "
              f"{precision[network]['float32_adversarial_term']:.2e} as implemented (adversarial term in float32), "
              f"{precision[network]['bf16_throughout']:.2e} if it ran in bf16")
    projected = {}
    for script_name, network in FULL_RUNS.items():
        iters = NETWORKS[network][0].SETTINGS["iters"]
        projected[script_name] = {f"sequential_{p}": project(rows, network, p) for p in paths}
        projected[script_name]["concurrent_graphed"] = round(iters * concurrent[network] / 3600, 2) if concurrent else None
        print(f"{script_name:<12} six models at the paper's 200k iterations, hours: " +
              ", ".join(f"{k} {v}" for k, v in projected[script_name].items()) + (" (quick: small networks)" if args.quick else ""))
    report = {"experiment": name, "bench_settings": bench,
              "cpu_threads": torch.get_num_threads(), "training_path": training_path(device),
              "provenance": runner.provenance.provenance(device, " ".join(["bench.py"] + (sys.argv[1:] if argv is None else list(argv)))),
              "steps": {f"{n}/{s}": r for (n, s), r in rows.items()}, "concurrent_round_seconds": concurrent or None,
              "projected_training_hours": projected, "regulariser_relative_error": precision,
              "network_settings": {n: {k: network_settings(s, args.quick)[k] for k in ("batch_size", "g_width")}
                                   for n, (s, _) in NETWORKS.items()}}
    runner.files.write_json(out, report)
    print(f"results written to {out}")
    return report


def network_settings(script, quick):
    return script.SETTINGS | (runner.settings.QUICK_SETTINGS if quick else {})  # quick: small G and batch, 5-step PGD


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
