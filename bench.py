"""Speed of every training step: it/s, images/s, FLOPs and achieved TFLOP/s, eager float32 against the
optimised path (bf16 autocast and channels_last on CUDA, torch.compile'd networks), for the MNIST and
the CIFAR networks; projects the training time of each full experiment script; and measures the
regulariser's precision under bf16 (its finite difference against float64, with and without the
float32 adversarial term). A benchmark, not a test: it prints a table and writes results/bench.json
(device, versions, commit).

    python bench.py --gpu 0
    python bench.py --quick --gpu cpu      # a smoke run: --quick's small networks, 2 iterations, no compilation
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

import cifar10
import core
import experiment
import mnist

# ======================================================================================= settings
SETTINGS = dict(
    iters=20,                # timed iterations per step and path
    warmup=5,                # untimed iterations first (compilation, cuDNN autotuning)
    compile=True,            # the optimised path compiles D and G (torch.compile)
)
QUICK = dict(iters=2, warmup=1, compile=False)
NETWORKS = {  # name -> (script whose settings and networks are benchmarked, input shape)
    "mnist": (mnist, (1, 28, 28)),
    "cifar": (cifar10, (3, 32, 32)),
}
STEPS = {"standard": "standard", "pgd": "pgd", "advnet": "advnet", "eat": "eat"}  # bench name -> make_step method
FULL_RUNS = {"mnist.py": "mnist", "cifar10.py": "cifar", "svhn.py": "cifar", "cifar100.py": "cifar"}
MODELS_PER_METHOD = 2  # A and A', B and B', C and C'


# ======================================================================================= measuring
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_source(method, shape, batch_size, device):
    """A fixed random batch; for EAT, a batch read through a StaticAdversarialSet, as training reads it."""
    images = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    if method == "eat":
        deltas = torch.zeros((3, batch_size, *shape), dtype=torch.float16, device=device)
        data = core.StaticAdversarialSet(images, labels, deltas, 0.03)
        return core.Batches(data, data.labels, batch_size, 0, device)
    return core.Batches(images, labels, batch_size, 0, device)


def measure(method, script, settings, shape, device, optimised, bench):
    torch.manual_seed(0)
    D, G = script.build_D(settings), script.build_G(settings)
    D, G = (core.to_device(D, device), core.to_device(G, device)) if optimised else (D.to(device), G.to(device))
    if optimised and bench["compile"]:
        D.compile(), G.compile()
    step, _ = core.make_step(method, D, G, settings)
    batches = batch_source(method, shape, settings["batch_size"], device)
    precision = core.autocast(device) if optimised else contextlib.nullcontext()
    with precision:
        for it in range(bench["warmup"]):
            step(*batches(it))
        sync(device)
        t0 = time.perf_counter()
        for it in range(bench["iters"]):
            step(*batches(it))
        sync(device)
    seconds = (time.perf_counter() - t0) / bench["iters"]
    return {"it_per_s": round(1 / seconds, 3), "images_per_s": round(settings["batch_size"] / seconds, 1)}


class FlopCount(TorchDispatchMode):
    """PyTorch's FLOP formulas (torch.utils.flop_counter) summed over every op. FlopCounterMode itself
    tracks modules with hooks that break autograd.grad with respect to an input, as attacks use."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def count_flops(method, script, settings, shape, device):
    """FLOPs of one step: matmuls and convolutions, forward and backward."""
    torch.manual_seed(0)
    D, G = script.build_D(settings).to(device), script.build_G(settings).to(device)
    step, _ = core.make_step(method, D, G, settings)
    x, y = batch_source(method, shape, settings["batch_size"], device)(0)
    with FlopCount() as counter:
        step(x, y)
    return counter.total


def regulariser_errors(script, settings, shape, device):
    """Relative L2 error, against float64 on the same batch, of the regulariser's gradient
    (gamma/h)[grad F(phi + h v) - grad F(phi)] at the paper's h under bf16 autocast: as implemented
    (adversarial term in float32), and with core.full_precision lifted, as if that term ran in bf16
    (and TF32) like the rest."""
    torch.manual_seed(0)
    D, G = script.build_D(settings).to(device), script.build_G(settings).to(device)
    x = torch.rand(settings["batch_size"], *shape, device=device)
    y = torch.randint(0, 10, (settings["batch_size"],), device=device)
    h = core.fd_step(settings)

    def regulariser(D, G, x, precision):
        parts = []
        for gamma in (1.0, 0.0):
            with precision():
                grads = core.discriminator_grads(D, G, G.inputs(x, y), x, y, settings["eps"], 1.0, gamma, h, "fd")[0]
            parts.append(torch.cat([g.double().flatten() for g in grads]))
        return parts[0] - parts[1]

    def error(full_precision):
        kept, core.full_precision = core.full_precision, full_precision
        try:
            measured = regulariser(D, G, x, lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        finally:
            core.full_precision = kept
        return round(((measured - reference).norm() / reference.norm()).item(), 6)

    reference = regulariser(copy.deepcopy(D).double(), copy.deepcopy(G).double(), x.double(), contextlib.nullcontext)
    return {"float32_adversarial_term": error(core.full_precision),
            "bf16_throughout": error(lambda device: contextlib.nullcontext())}


def project(rows, network, path):
    """Hours to train the six models of one script at the paper's 200k iterations (2 each of standard,
    PGD, adversarial network)."""
    script = NETWORKS[network][0]
    seconds = sum(MODELS_PER_METHOD * script.SETTINGS["iters"] / rows[(network, m)][path]["it_per_s"]
                  for m in ("standard", "pgd", "advnet"))
    return round(seconds / 3600, 2)


# ======================================================================================= run
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default=None, help="CUDA device index, or cpu (default: GPU 0 if present)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few iterations, no compilation")
    parser.add_argument("--out", default=None, help="default: results/bench.json (results/bench_quick.json with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    args = parser.parse_args(argv)
    bench = experiment.apply_overrides(SETTINGS | (QUICK if args.quick else {}), args.set)
    device = experiment.pick_device(args.gpu)
    rows = {}
    for network, (script, shape) in NETWORKS.items():
        settings = script.SETTINGS | (experiment.QUICK_SETTINGS if args.quick else {})  # quick: small G and batch, 5-step PGD
        for name, method in STEPS.items():
            flops = count_flops(method, script, settings, shape, device)
            row = {"gflop_per_step": round(flops / 1e9, 2)}
            for path, optimised in (("eager_fp32", False), ("optimised", True)):
                row[path] = measure(method, script, settings, shape, device, optimised, bench)
                row[path]["tflop_per_s"] = round(flops * row[path]["it_per_s"] / 1e12, 3)
            row["speedup"] = round(row["optimised"]["it_per_s"] / row["eager_fp32"]["it_per_s"], 2)
            rows[(network, name)] = row
            print(f"{network:<6} {name:<9} {row['gflop_per_step']:>9.1f} GF/step | eager fp32 "
                  f"{row['eager_fp32']['it_per_s']:>8.2f} it/s | optimised {row['optimised']['it_per_s']:>8.2f} it/s "
                  f"({row['optimised']['tflop_per_s']:.3f} TFLOP/s) | x{row['speedup']}")
    precision = {}
    for network, (script, shape) in NETWORKS.items():
        settings = script.SETTINGS | (experiment.QUICK_SETTINGS if args.quick else {})
        precision[network] = regulariser_errors(script, settings, shape, device)
        print(f"{network:<6} regulariser gradient under bf16 autocast, relative error against float64: "
              f"{precision[network]['float32_adversarial_term']:.2e} as implemented (adversarial term in float32), "
              f"{precision[network]['bf16_throughout']:.2e} if it ran in bf16")
    projected = {script: {path: project(rows, network, path) for path in ("eager_fp32", "optimised")}
                 for script, network in FULL_RUNS.items()}
    for script, hours in projected.items():
        print(f"{script:<12} six models' training at the paper's 200k iterations: eager fp32 {hours['eager_fp32']} h, "
              f"optimised {hours['optimised']} h" + (" (quick: small networks, not the paper's)" if args.quick else ""))
    report = {"experiment": "bench" + ("_quick" if args.quick else ""), "bench_settings": bench, "cpu_threads": torch.get_num_threads(),
              "provenance": experiment.provenance(device, " ".join(["bench.py"] + (sys.argv[1:] if argv is None else list(argv)))),
              "steps": {f"{n}/{s}": r for (n, s), r in rows.items()}, "projected_training_hours": projected,
              "regulariser_relative_error": precision,
              "network_settings": {n: {k: s.SETTINGS[k] for k in ("batch_size", "g_width")} | (experiment.QUICK_SETTINGS if args.quick else {})
                                   for n, (s, _) in NETWORKS.items()}}
    out = args.out or os.path.join("results", "bench_quick.json" if args.quick else "bench.json")
    experiment.write_json(out, report)
    print(f"results written to {out}")
    return report


if __name__ == "__main__":
    experiment.exit_on_error(main)
