"""One prepared acceptance run of what this repository claims about CUDA: one process, a time budget
that ends it well inside 8 minutes on an H200, every finding written to results/gpu_check.json as
soon as it is made (the pytest log beside it), a short verdict printed per check.

    python tools/gpu_check.py --gpu 0
    python tools/gpu_check.py --gpu cpu --quick    # the same code at tiny sizes on the CPU (the test suite runs it)

Its parts, in this order; once the budget is spent, every later part (and every later measurement
within one) is skipped with a note, and a part that fails is recorded with its error:
  precision   G's five-step loss gain on a fixed batch under the training path's bf16 autocast, alone and
              inside a caller's autocast region, against IEEE float32 (the autocast-cache regression);
              the regulariser's relative error against float64, and float32's own (bench.py)
  timings     every step the scripts train, eager along the training path and captured as a CUDA graph,
              a few hundred iterations after warm-up, with its host syncs; the six models of a data-set
              script at once, eager and graphed (bench.py's machinery)
  losses      the six models of a script, 50 iterations on the same data: graphed, concurrent and both,
              each against the same models trained one after another eagerly
  evaluation  peak memory and time of the 9-column evaluation of six models and of an EAT set, on 2000 images
  pytest      tests/test_cuda.py in a subprocess, each test's outcome
Then, from whatever was measured: every script's projected time, a verdict per check, and the defaults
of cuda_graphs and concurrent_models that the numbers justify (on only where faster and losses match).
"""
import argparse
import contextlib
import copy
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ElementTree

import torch
import torch.nn.functional as F

import _root  # first: the repository's root on sys.path, for the imports below
import bench
import cifar10
import cifar100
import core
import mnist
import runner.cli
import runner.errors
import runner.evaluation
import runner.files
import runner.jobs
import runner.provenance
import runner.settings
import runner.training
import svhn

# ======================================================================================= settings
SETTINGS = dict(
    budget=330.0,            # seconds for all parts; a part, or a measurement within one, starts only while some are left
    iters=200,               # timed iterations per step and path, after the warm-up
    warmup=20,               # untimed iterations first: cuDNN autotuning; a graphed step is captured after them
    rounds=50,               # timed rounds of the six concurrent models (one iteration of each), after the warm-up
    loss_iters=50,           # iterations of each model in the loss comparison
    loss_window=10,          # iterations per compared mean loss
    loss_tolerance=0.1,      # two mean losses agree within this fraction of max(1, |reference|) (as tests/test_cuda.py)
    eval_n=2000,             # test images of the measured evaluation
    pytest_seconds=180.0,    # tests/test_cuda.py is stopped after this long
    probe_batch=64,          # the precision probe's one batch (MNIST-shaped, random)
    probe_fit=50,            # SGD steps that fit D to it, so that G has a loss to raise
    gain_tolerance=0.15,     # bf16's five-step gain within this fraction of float32's (as tests/test_mixed_precision.py)
    speedup=1.1,             # a setting becomes a default only where it makes all scripts together this much faster
)
QUICK = dict(iters=1, warmup=1, rounds=1, loss_iters=2, loss_window=1, eval_n=8, probe_batch=16, probe_fit=20)
QUICK_NETWORKS = dict(batch_size=8, g_width=2, pgd_steps=2, eval_batch=4)  # on top of runner.settings.QUICK_SETTINGS
TIMED = {"mnist": ["standard", "pgd", "advnet", "eat"],                  # every step a script trains, per network
         "cifar": ["standard", "pgd", "advnet", "eat", "generator"]}
COMBOS = {  # name -> (cuda_graphs, concurrent_models): how a data-set script's six models can train
    "eager": (False, False), "graphed": (True, False), "concurrent": (False, True), "graphed_concurrent": (True, True)}
MODELS = {"A": 0, "A'": 1, "B": 0, "B'": 1, "C": 0, "C'": 1}  # the six models of a data-set script and their seed offsets
CUDA_ONLY = "CUDA only: not run on the CPU"
SPENT = "skipped: the time budget was spent"
PROBE_EPS = 0.1
ROOT = _root.ROOT


# ======================================================================================= the run
class Run:
    """What every part shares: the device, the settings, the budget, and the report, which is written
    (atomically) after every measurement."""

    def __init__(self, device, settings, quick, out, command):
        self.device, self.settings, self.quick, self.out = device, settings, quick, out
        self.cuda = device.type == "cuda"
        self.networks = {network: bench.network_settings(script, quick) | (QUICK_NETWORKS if quick else {})
                         for network, (script, _) in bench.NETWORKS.items()}
        self.deadline = time.monotonic() + settings["budget"]
        self.report = {"experiment": "gpu_check" + ("_quick" if quick else ""), "settings": settings,
                       "network_settings": {n: {k: s[k] for k in ("batch_size", "g_width", "pgd_steps", "eval_batch")}
                                            for n, s in self.networks.items()},
                       "provenance": runner.provenance.provenance(device, command), "device": device_info(device),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def left(self):
        return self.deadline - time.monotonic()

    def save(self):
        runner.files.write_json(self.out, self.report)

    def attempt(self, work):
        """work() -> dict, unless the budget is spent (a note) or it raises (its error)."""
        if self.left() <= 0:
            return {"skipped": SPENT}
        try:
            result = work()
        except Exception as err:  # one failed measurement must not cost the others; a full disk at a save stops them all
            if runner.errors.for_the_user(err):
                raise
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        return result

    def timing(self):
        return {"iters": self.settings["iters"], "warmup": self.settings["warmup"]}


def device_info(device):
    if device.type != "cuda":
        return {"type": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version()}


# ======================================================================================= precision
def precision(run, result):
    result["generator_gain"] = run.attempt(lambda: generator_gain(run.device, run.settings["probe_batch"],
                                                                  run.settings["probe_fit"]))
    run.save()
    result["regulariser_relative_error"] = {}
    for network, (script, shape) in bench.NETWORKS.items():
        result["regulariser_relative_error"][network] = run.attempt(
            lambda: bench.regulariser_errors(script, run.networks[network], shape, run.device))
        run.save()


def generator_gain(device, batch, fit_steps, steps=5):
    """Issue 18's probe: D1 fitted to one random batch, a fresh G1 k=8, eps 0.1. D's loss on x + eps*G(x)
    (in IEEE float32) before and after each of G's steps, the steps taken in IEEE float32, under the
    training path's bf16 autocast, and under it inside a caller's bf16 autocast region with its cast
    cache on. With stale casts (the bug) the bf16 gain was 8 % of float32's."""
    torch.manual_seed(0)
    D, G = core.to_device(core.D1(), device), core.to_device(core.G1(k=8, channels=1), device)
    x, y = torch.rand(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)
    fit = torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9)
    with core.full_precision(device):
        for _ in range(fit_steps):
            fit.zero_grad()
            F.cross_entropy(D(x), y).backward()
            fit.step()

    def adversarial_loss(G):
        with torch.no_grad(), core.full_precision(device), core.bn_stats_frozen(G):
            return F.cross_entropy(D(x + PROBE_EPS * G(x)), y)

    def arm(precision, region):
        g = copy.deepcopy(G)
        opt_G = core.make_optimizer("adam", g.parameters(), 0.002, betas=(0.5, 0.999))
        after = []
        with region:
            for _ in range(steps):
                core.generator_step(D, g, opt_G, x, x, y, PROBE_EPS, precision=precision)
                after.append(adversarial_loss(g))
        return [round(v.item(), 6) for v in after]

    return {"batch": batch, "fit_steps": fit_steps, "start": round(adversarial_loss(G).item(), 6),
            "float32": arm("float32", core.full_precision(device)),
            "bf16": arm("bf16", contextlib.nullcontext()),
            "bf16_in_a_cached_region": arm("bf16", torch.autocast(device.type, dtype=torch.bfloat16))}


def gain_verdict(probe, tolerance):
    """Each bf16 arm: every step raises the loss, and the five-step gain is within `tolerance` of
    float32's, whose steps must raise the loss too (else the probe says nothing)."""
    rises = lambda losses: all(b > a for a, b in zip([probe["start"]] + losses, losses))
    gain32 = probe["float32"][-1] - probe["start"]
    if not rises(probe["float32"]):
        return "fail", f"uninformative: float32's steps do not each raise the loss ({probe['float32']})"
    failed, notes = [], []
    for arm in ("bf16", "bf16_in_a_cached_region"):
        gain = probe[arm][-1] - probe["start"]
        notes.append(f"{arm} {gain:.4g} ({gain / gain32:.0%})")
        if abs(gain - gain32) > tolerance * gain32 or not rises(probe[arm]):
            failed.append(arm)
    why = f"five-step gain: float32 {gain32:.4g}, " + ", ".join(notes) + f"; tolerance {tolerance:.0%}"
    return ("fail", why + f"; off: {', '.join(failed)}") if failed else ("pass", why)


def regulariser_verdict(errors):
    """As implemented (bf16 autocast, adversarial term in IEEE float32) the error is float32's own, up to
    kernels whose sums run in another order (within 2x, or 1e-3), and far below bf16's."""
    implemented, floor, bf16 = errors["float32_adversarial_term"], errors["float32"], errors["bf16_throughout"]
    ok = implemented <= max(2 * floor, 1e-3) and 10 * implemented < bf16
    return ("pass" if ok else "fail"), f"as implemented {implemented:.3g}, float32 {floor:.3g}, bf16 throughout {bf16:.3g}"


def precision_verdicts(result, settings):
    verdicts = {"generator_gain": measured_verdict(result.get("generator_gain"),
                                                   lambda p: gain_verdict(p, settings["gain_tolerance"]))}
    for network, errors in result.get("regulariser_relative_error", {}).items():
        verdicts[f"regulariser_{network}"] = measured_verdict(errors, regulariser_verdict)
    return verdicts


def measured_verdict(result, judge):
    """judge(result) -> (verdict, why), or "not run" with the note or error of a measurement that did not happen."""
    if result is None:
        return {"verdict": "not run", "why": "not reached"}
    if "skipped" in result or "error" in result:
        return {"verdict": "not run" if "skipped" in result else "fail", "why": result.get("skipped") or result["error"]}
    verdict, why = judge(result)
    return {"verdict": verdict, "why": why}


# ======================================================================================= timings
def timings(run, result):
    """bench.measure of every step a script trains, eager along the training path and graphed (CUDA),
    its host syncs, and bench.measure_concurrent of each data-set script's six models."""
    paths = {"eager": bench.training_path(run.device), "graphed": "graphed"}
    result |= {"paths": paths, "steps": {}, "concurrent": {}}
    for network, methods in TIMED.items():
        script, shape = bench.NETWORKS[network]
        settings = run.networks[network]
        for method in methods:
            row = result["steps"][f"{network}/{method}"] = {}
            row["host_syncs"] = run.attempt(lambda: host_syncs(method, script, settings, shape, run.device))
            for name, path in paths.items():
                row[name] = run.attempt(lambda: bench.measure(method, script, settings, shape, run.device, path,
                                                              run.timing())) if run.cuda or name == "eager" else {"skipped": CUDA_ONLY}
                run.save()
        for name, path in paths.items():
            result["concurrent"].setdefault(network, {})[name] = run.attempt(
                lambda: {"round_seconds": round(bench.measure_concurrent(script, settings, shape, run.device, run.timing(),
                                                                         path, run.settings["rounds"]), 6)}
            ) if run.cuda or name == "eager" else {"skipped": CUDA_ONLY}
            run.save()


def host_syncs(method, script, settings, shape, device):
    """What one eager step reads back to the host: aten's reads (bench.StepCount, any device) and, on
    CUDA, every synchronising call its sync debug mode reports (blocking copies too), batch read included."""
    counted = bench.count_step(method, script, settings, shape, device)
    result = {"aten_ops": counted.ops, "aten_syncs": counted.syncs, "cuda_sync_warnings": None}
    if device.type == "cuda":
        step, batches = bench.runnable_step(method, script, settings, shape, device, bench.training_path(device), 0)
        step(*batches(0))
        bench.sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(*batches(1))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        result["cuda_sync_warnings"] = sum("synchroniz" in str(w.message).lower() for w in caught)
    return result


def timing_verdicts(result, settings):
    rows = result.get("steps", {})
    counts = {name: row["host_syncs"] for name, row in rows.items() if "aten_ops" in row.get("host_syncs", {})}
    if not counts:
        return {"host_syncs": {"verdict": "not run", "why": "no step counted"}}
    syncing = {name: c for name, c in counts.items() if c["aten_syncs"] or c["cuda_sync_warnings"]}
    cuda_checked = all(c["cuda_sync_warnings"] is not None for c in counts.values())
    why = (f"{len(counts)} of {len(rows)} steps counted" + ("" if cuda_checked else " by aten only (CUDA's sync debug mode: CUDA only)")
           + (f"; syncs in {syncing}" if syncing else "; none reads back to the host"))
    return {"host_syncs": {"verdict": "fail" if syncing else "pass", "why": why}}


def step_lines(result):
    lines = []
    for name, row in result.get("steps", {}).items():
        cells = {p: row.get(p, {}).get("it_per_s") for p in ("eager", "graphed")}
        text = "  ".join(f"{p} {v:.4g} it/s" if v else f"{p} {short(row.get(p))}" for p, v in cells.items())
        lines.append(f"  {name:<16} {text}" + (f"  (graphed {cells['graphed'] / cells['eager']:.2f}x)"
                                                 if cells["eager"] and cells["graphed"] else ""))
    for network, paths in result.get("concurrent", {}).items():
        lines.append(f"  {network} six models at once: " + ", ".join(
            f"{p} {v['round_seconds'] * 1e3:.4g} ms per round" if "round_seconds" in v else f"{p} {short(v)}"
            for p, v in paths.items()))
    return lines


def short(result):
    if not result:
        return "not measured"
    return (result.get("skipped") or result.get("error", "")).splitlines()[0][:80]


# ======================================================================================= losses
def losses(run, result):
    """The six models of each network's script trained `loss_iters` iterations from the same weights
    on the same data (one fixed batch, which they can learn, no augmentation) along every combination of
    cuda_graphs and concurrent_models, each compared with eager training one model after another. B warms
    its radius up over the first fifth, which it trains eagerly, so its switch to the graph is compared too."""
    with tempfile.TemporaryDirectory() as folder:
        for network in bench.NETWORKS:
            runs = result[network] = {}
            for combo, (graphs, concurrent) in COMBOS.items():
                if graphs and not run.cuda:
                    runs[combo] = {"skipped": CUDA_ONLY}
                    continue
                runs[combo] = run.attempt(lambda: {"losses": train_six(run, network, graphs, concurrent,
                                                                        os.path.join(folder, f"{network}_{combo}"))})
                if combo != "eager":
                    runs[combo] |= compare(runs["eager"], runs[combo], run.settings)
                run.save()


def train_six(run, network, graphs, concurrent, folder):
    """name -> the loss of every iteration (the training loop's history, logged every iteration)."""
    script, shape = bench.NETWORKS[network]
    settings = run.networks[network] | dict(iters=run.settings["loss_iters"], log_every=1, augment=False,
                                            pgd_warmup_iters=run.settings["loss_iters"] // 5,
                                            cuda_graphs=graphs, concurrent_models=concurrent)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (settings["batch_size"], *shape), dtype=torch.uint8)
    labels = torch.randint(0, 10, (settings["batch_size"],))
    specs = {name: (runner.settings.METHODS[name.rstrip("'")], settings["seed"] + offset, os.path.join(folder, f"{name}.pt"), True)
             for name, offset in MODELS.items()}
    trained = runner.training.prepare_models(specs, settings, script.build_D, script.build_G, lambda: (images, labels),
                                        run.device)
    return {name: [h["loss"] for h in record["history"]] for name, (_, _, record) in trained.items()}


def compare(reference, candidate, settings):
    """Per model, the mean loss of every `loss_window` iterations of both runs. They match where every
    pair agrees within loss_tolerance * max(1, |reference|); informative where the reference moved by
    more than that, so that a run that learned nothing would not match it."""
    if "losses" not in reference or "losses" not in candidate:
        return {"match": None, "note": "no eager reference" if "losses" not in reference else "not measured"}
    window, tolerance = settings["loss_window"], settings["loss_tolerance"]
    means = lambda values: [sum(values[i:i + window]) / len(values[i:i + window]) for i in range(0, len(values), window)]
    models = {}
    for name, ref in reference["losses"].items():
        r, c = means(ref), means(candidate["losses"][name])
        bound = [tolerance * max(1.0, abs(v)) for v in r]
        models[name] = {"reference": [round(v, 4) for v in r], "candidate": [round(v, 4) for v in c],
                        "match": len(r) == len(c) and all(abs(a - b) <= t for a, b, t in zip(r, c, bound)),
                        "informative": max(r) - min(r) > max(bound)}
    return {"match": all(m["match"] for m in models.values()), "models": models,
            "informative": [name for name, m in models.items() if m["informative"]]}


def loss_verdicts(result, settings):
    verdicts = {}
    for combo in COMBOS:
        if combo == "eager":
            continue
        runs = {network: result[network].get(combo) for network in bench.NETWORKS if network in result}
        missing = {n: short(r) for n, r in runs.items() if not r or r.get("match") is None}
        if missing or not runs:
            verdicts[f"{combo}_losses"] = {"verdict": "not run", "why": "; ".join(f"{n}: {w}" for n, w in missing.items())
                                           or "not reached"}
            continue
        differ = {n: [m for m, v in r["models"].items() if not v["match"]] for n, r in runs.items() if not r["match"]}
        why = "; ".join(f"{n}: informative for {', '.join(r['informative']) or 'none'}" for n, r in runs.items())
        verdicts[f"{combo}_losses"] = {"verdict": "fail" if differ else "pass",
                                       "why": (f"differ for {differ}; " if differ else "all six models agree; ") + why}
    return verdicts


# ======================================================================================= evaluation
EVALUATED = ("cifar", "mnist")


def evaluation(run, result):
    """Per network: the 9-column evaluation (runner.evaluation.evaluate_trained: three targets, three
    surrogates, C's second BN mode) of six fresh models on one batch and on `eval_n` images, and the EAT
    set built from A on them; seconds and, on CUDA, peak memory (torch.cuda.max_memory_allocated)."""
    for network in EVALUATED:
        result[network] = run.attempt(lambda: measure_evaluation(run, network))
        run.save()


def measure_evaluation(run, network):
    script, shape = bench.NETWORKS[network]
    n = run.settings["eval_n"]
    settings = run.networks[network]
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    models = {name: runner.training.build_models(seed, settings, script.build_D, script.build_G, run.device)[0]
              for seed, name in enumerate(MODELS)}

    def measured(work, count):
        if run.cuda:
            bench.sync(run.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(run.device)
        t0 = time.perf_counter()
        work()
        bench.sync(run.device)
        seconds = time.perf_counter() - t0
        peak = round(torch.cuda.max_memory_allocated(run.device) / 2**30, 3) if run.cuda else None
        return {"images": count, "seconds": round(seconds, 3), "seconds_per_image": seconds / count, "peak_gib": peak}

    score = lambda count: runner.evaluation.evaluate_trained(models, settings | {"test_n": count}, images, labels, run.device)
    batch = min(settings["eval_batch"], n)
    return {"eval_batch": batch,
            "memory": "torch.cuda.max_memory_allocated" if run.cuda else "not measured on the CPU (null): CUDA's allocator statistics",
            "table_one_batch": measured(lambda: score(batch), batch), "table": measured(lambda: score(n), n),
            "eat_set": measured(lambda: core.build_eat_set(models["A"], images, labels, settings["eps"], run.device, batch,
                                                           settings["pgd_steps"], settings["pgd_alpha"] or None,
                                                           precision=settings["precision"]), n)}


FITS_GIB = 20.0  # a 24 GB card, less what CUDA's context and the data sets take


def memory_verdict(result):
    """The evaluation's peak does not grow with its number of batches (no attack iterate outlives its
    batch) and fits a 24 GB card."""
    if result["table"]["peak_gib"] is None:
        return "not run", result["memory"]
    peaks = {k: result[k]["peak_gib"] for k in ("table_one_batch", "table", "eat_set")}
    grows = peaks["table"] > 1.05 * peaks["table_one_batch"] + 1 / 16
    ok = not grows and max(peaks.values()) < FITS_GIB
    return ("pass" if ok else "fail"), (f"peak GiB {peaks} on {result['table']['images']} images in batches of {result['eval_batch']}"
                                        + ("; it grows with the batches" if grows else ""))


def evaluation_verdicts(result, settings):
    return {f"evaluation_memory_{network}": measured_verdict(result.get(network), memory_verdict) for network in EVALUATED}


# ======================================================================================= pytest
def pytest_part(run, result):
    """tests/test_cuda.py in a subprocess that sees only this run's GPU (none with --gpu cpu), stopped
    after `pytest_seconds` or what is left of the budget; its log goes beside the JSON."""
    log = os.path.splitext(run.out)[0] + "_pytest.log"
    xml = os.path.splitext(run.out)[0] + "_pytest.xml"
    visible = str(runner.jobs.physical_gpu(run.device.index)) if run.cuda else ""
    command = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-v", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    limit = max(1.0, min(run.settings["pytest_seconds"], run.left()))
    stopped = None
    if run.cuda:
        torch.cuda.empty_cache()  # the memory this process holds on to, for the tests' process
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   env=os.environ | {"CUDA_VISIBLE_DEVICES": visible})
        try:
            process.wait(limit)
        except subprocess.TimeoutExpired:
            stopped = f"stopped after {limit:.0f} s"
            process.send_signal(signal.SIGINT)  # pytest ends the test under way and writes its report
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    with open(log) as f:
        text = f.read()
    tests = verbose_outcomes(text)
    if os.path.exists(xml):
        tests |= junit_outcomes(xml)
        os.remove(xml)
    collected = re.search(r"collected (\d+) items?", text)
    result |= {"command": " ".join(["python"] + command[1:4]), "log": os.path.basename(log), "returncode": process.returncode,
               "stopped": stopped, "collected": int(collected.group(1)) if collected else None, "tests": tests}


OUTCOMES = ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS")


def verbose_outcomes(text):
    """test name -> {"outcome"} from pytest -v's lines, which it prints as each test ends."""
    found = re.findall(r"^tests/test_cuda\.py::(\S+) (" + "|".join(OUTCOMES) + r")", text, re.MULTILINE)
    return {name: {"outcome": outcome.lower()} for name, outcome in found}


def junit_outcomes(path):
    """test name -> {"outcome", "seconds", "message"} from pytest's JUnit XML."""
    tests = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = {"failure": "failed"}.get(kind, kind), found.get("message")
                break
        tests[case.get("name")] = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 2), "message": message}
    return tests


def pytest_verdict(result):
    outcomes = [t["outcome"] for t in result["tests"].values()]
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    why = f"{counts} of {result['collected']} collected" + (f"; {result['stopped']}" if result["stopped"] else "")
    if counts.get("failed") or counts.get("error"):
        return "fail", why
    if not outcomes or counts.get("passed", 0) < (result["collected"] or 0):
        return "not run", why
    return "pass", why


def pytest_verdicts(result, settings):
    return {"pytest": measured_verdict(result if "tests" in result else None, pytest_verdict)}


# ======================================================================================= projection
DATASET_SCRIPTS = {"mnist.py": (mnist, "mnist", 10_000), "svhn.py": (svhn, "cifar", 26_032),  # module, network, test images
                   "cifar10.py": (cifar10, "cifar", 10_000), "cifar100.py": (cifar100, "cifar", 10_000)}
EAT_DATASETS = {"mnist": (mnist, "mnist", 60_000, 10_000), "svhn": (svhn, "cifar", 73_257 + 80_000, 26_032),
                "cifar10": (cifar10, "cifar", 50_000, 10_000)}  # ensemble.py's default: training and test images
GENERATOR_RUNS = {"generator": 4, "advnet": 3}  # generators_study.py: Table 5's attackers against A, Table 6's co-trained C


def project(timings, evaluation):
    """Hours of every script at the paper's iterations, per combination of cuda_graphs and
    concurrent_models, from the measured steps and evaluations (None where one is missing): training,
    the 9-column evaluation of the whole test set, and ensemble.py's EAT sets. ensemble.py and
    generators_study.py reuse the data-set scripts' models and train one model at a time."""
    steps, concurrent = timings.get("steps", {}), timings.get("concurrent", {})
    per_image = lambda network, key: (evaluation.get(network) or {}).get(key, {}).get("seconds_per_image")

    def train(network, counts, iters, graphs, concurrent_models=False):
        path = "graphed" if graphs else "eager"
        if concurrent_models:
            rounds = concurrent.get(network, {}).get(path, {}).get("round_seconds")
            return None if rounds is None else iters * rounds
        rates = [steps.get(f"{network}/{method}", {}).get(path, {}).get("it_per_s") for method in counts]
        return None if None in rates else sum(n * iters / rate for n, rate in zip(counts.values(), rates))

    def seconds(script, graphs, concurrent_models):
        if script in DATASET_SCRIPTS:
            module, network, test_images = DATASET_SCRIPTS[script]
            return {"train": train(network, {"standard": 2, "pgd": 2, "advnet": 2}, module.SETTINGS["iters"], graphs,
                                   concurrent_models),
                    "evaluate": scaled(per_image(network, "table"), test_images)}
        if script == "ensemble.py":
            parts = [(train(network, {"eat": 1}, module.SETTINGS["iters"], graphs), scaled(per_image(network, "table"), test),
                      scaled(per_image(network, "eat_set"), images))
                     for module, network, images, test in EAT_DATASETS.values()]
            return dict(zip(("train", "evaluate", "eat_set"), (none_or_sum(column) for column in zip(*parts))))
        return {"train": train("cifar", GENERATOR_RUNS, cifar10.SETTINGS["iters"], graphs),
                "evaluate": scaled(per_image("cifar", "table"), 10_000)}

    scripts = list(DATASET_SCRIPTS) + ["ensemble.py", "generators_study.py"]
    hours = {script: {combo: hours_of(seconds(script, *flags)) for combo, flags in COMBOS.items()} for script in scripts}
    total = {combo: none_or_sum(h[combo] and h[combo]["total"] for h in hours.values()) for combo in COMBOS}
    total = {combo: None if h is None else round(h, 3) for combo, h in total.items()}
    return {"scripts": hours, "all_scripts_hours": total,
            "how": "training: the paper's iterations at the measured it/s (concurrent: the measured rounds of the six "
                   "models); ensemble.py and generators_study.py train one model at a time, so concurrency does not "
                   "change them, and their generators are timed as G1 k=64's; evaluation: the measured seconds per "
                   "image of six models' 9-column table times the test set (ensemble.py scores five: an upper bound); "
                   "ensemble.py's EAT sets: the measured seconds per image times the training set"}


def scaled(seconds_per_image, images):
    return None if seconds_per_image is None else seconds_per_image * images


def none_or_sum(values):
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def hours_of(seconds):
    """Seconds per part -> hours per part and in total, or None where a part was not measured."""
    if any(v is None for v in seconds.values()):
        return None
    hours = {k: round(v / 3600, 3) for k, v in seconds.items()}
    return hours | {"total": round(sum(seconds.values()) / 3600, 3)}


# ======================================================================================= recommendation
def recommend(total_hours, loss_verdicts, speedup):
    """The defaults of cuda_graphs and concurrent_models: the fastest combination whose losses matched
    eager training's and in which each setting turned on pays for itself, making all scripts together
    at least `speedup` times faster than the same combination without it. Without eager's hours: both off."""
    matched = {combo: combo == "eager" or loss_verdicts.get(f"{combo}_losses", {}).get("verdict") == "pass"
               for combo in COMBOS}
    usable = {c: total_hours[c] for c in COMBOS if total_hours.get(c) is not None and matched[c]}
    below = lambda a, b: a != b and all(x <= y for x, y in zip(COMBOS[a], COMBOS[b]))  # a turns on fewer settings
    justified = [c for c in usable if all(usable[s] >= speedup * usable[c] for s in usable if below(s, c))]
    best = min(justified, key=usable.get) if "eager" in usable else "eager"
    reasons = {}
    for setting, index in (("cuda_graphs", 0), ("concurrent_models", 1)):
        alone = next(c for c, flags in COMBOS.items() if flags[index] and not flags[1 - index])
        gain = (total_hours["eager"] / total_hours[alone]) if total_hours.get("eager") and total_hours.get(alone) else None
        reasons[setting] = {"default": COMBOS[best][index],
                            "why": (f"{alone}: all scripts {gain:.2f}x as fast as eager" if gain else f"{alone}: not timed")
                            + f", losses {'match' if matched[alone] else 'not shown to match'}"
                            + f"; the combination chosen: {best}"}
    return {"combination": best, "all_scripts_hours": {c: total_hours.get(c) for c in COMBOS}, **reasons,
            "rule": f"fastest combination whose losses match, each setting in it at least {speedup}x faster"}


# ======================================================================================= main
PARTS = [("precision", precision, precision_verdicts), ("timings", timings, timing_verdicts),
         ("losses", losses, loss_verdicts), ("evaluation", evaluation, evaluation_verdicts),
         ("pytest", pytest_part, pytest_verdicts)]


def run_parts(run, parts):
    """Each part in turn, filling its section of the report, or the section says why it was skipped
    or where it failed; verdicts printed and the report written after each."""
    run.report["verdicts"] = {}
    for name, part, judge in parts:
        t0 = time.perf_counter()
        result = run.report[name] = {}
        result |= run.attempt(lambda: part(run, result) or {})  # a note or an error beside what was measured
        result["seconds"] = round(time.perf_counter() - t0, 1)
        verdicts = {name: {"verdict": "not run", "why": result["skipped"]}} if "skipped" in result else judge(result, run.settings)
        if "error" in result:
            verdicts[name] = {"verdict": "fail", "why": short(result)}
        run.report["verdicts"] |= verdicts
        print(f"{name} ({run.report[name]['seconds']:.0f} s, {max(run.left(), 0):.0f} s of the budget left)", flush=True)
        if name == "timings":
            print("\n".join(step_lines(run.report[name])))
        for check, v in verdicts.items():
            print(f"  {check:<28} {v['verdict']:<8} {v['why']}", flush=True)
        run.save()


def main(argv=None):
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default=None, help="CUDA device index, or cpu (default: GPU 0 if present)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations: a check of this script")
    parser.add_argument("--out", default=None, help="default: results/gpu_check.json (results/gpu_check_quick.json with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    settings = runner.settings.apply_overrides(SETTINGS | (QUICK if args.quick else {}), args.set)
    bad = [k for k, v in settings.items() if v <= 0]
    if bad:
        raise runner.errors.UserError(f"{', '.join(bad)} must be positive")
    device = runner.cli.pick_device(args.gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    name = "gpu_check" + ("_quick" if args.quick else "")
    out = args.out or os.path.join("results", f"{name}.json")
    runner.files.check_results_file(out, name)  # before the budget is spent, not after
    run = Run(device, settings, args.quick, out, " ".join(["gpu_check.py"] + argv))
    print(f"gpu_check on {run.report['provenance']['device']}: budget {settings['budget']:.0f} s; writing {out}", flush=True)
    run_parts(run, PARTS)
    run.report["projection"] = project(run.report["timings"], run.report["evaluation"])
    run.report["recommendation"] = recommend(run.report["projection"]["all_scripts_hours"], run.report["verdicts"],
                                             settings["speedup"])
    if not run.cuda or args.quick:
        run.report["recommendation"]["note"] = "not a basis for the defaults: only a full run on a GPU is"
    run.report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.perf_counter() - started, 1)}
    run.save()
    print("projected hours, all scripts:", ", ".join(f"{c} {h}" for c, h in run.report["projection"]["all_scripts_hours"].items())
          + (" (--quick: tiny networks, not a projection)" if args.quick else ""))
    for setting in ("cuda_graphs", "concurrent_models"):
        r = run.report["recommendation"][setting]
        print(f"recommended default {setting}={str(r['default']).lower()}: {r['why']}"
              + (f" ({run.report['recommendation']['note']})" if "note" in run.report["recommendation"] else ""))
    print(f"results written to {out} in {run.report['wall_seconds']:.0f} s")
    return run.report


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
