"""The machinery of this repository's experiments: settings and their checks, the command line, the
resumable training loop, provenance, progress, the runner that trains a data set's six models and
evaluates them (once per seed with --seeds), and the jobs through submitit (SLURM, or one per GPU
here). The method itself (networks, attacks, training steps, evaluation) is in core.py; the layering
is scripts -> experiment -> core.

Errors the user can fix (bad input, missing data, a stale checkpoint) are UserErrors, which
`exit_on_error` prints as one line on stderr with exit code 2.
"""
import argparse
import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import submitit
import torch

import core

class UserError(Exception):
    """A problem the user can fix (bad input, missing data, stale checkpoint): shown as one line."""


def exit_on_error(main):
    """Runs `main()`; a UserError or an interruption becomes one line on stderr and a non-zero exit."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(f"\ninterrupted: {err or 'no checkpoint in progress'}; run the same command to resume", file=sys.stderr)
        sys.exit(130)


# =====================================================================================================
# Settings: one dict per script, checked overrides
# =====================================================================================================

# What every data set shares (paper section 3 and 4); each script's dict overrides what differs.
COMMON_SETTINGS = dict(
    seed=0,                  # seed s of A, B, C; the copies A', B', C' use s + 1
    batch_size=64,           # images per minibatch
    d_momentum=0.9,          # D: SGD momentum
    d_lr_drop_at=1.0,        # fraction of iters after which D's lr is multiplied by d_lr_drop_factor (1.0: never)
    d_lr_drop_factor=0.1,    # multiplier of D's lr after the drop
    g_width=64,              # G1's width k (channels k, 2k, 4k)
    g_momentum=0.9,          # G: momentum, when g_opt is sgd
    g_beta1=0.5,             # G: Adam beta1
    g_beta2=0.999,           # G: Adam beta2
    g_steps=5,               # G ascent steps per D step, on the same minibatch
    lam=1.0,                 # lambda: weight of the adversarial loss in F
    gamma=0.01,              # gradient-regulariser weight; negative = the sign of the authors' code
    fd_h=0.0,                # finite-difference step h; 0 = eta_G / 10 (paper)
    hvp="fd",                # regulariser's Hessian-vector product: fd (paper) or exact (double backprop)
    pgd_steps=10,            # PGD steps, in training (B) and evaluation
    pgd_alpha=0.0,           # PGD step size, [0, 1] units; 0 = eps / 4 (paper)
    pgd_train_clean=False,   # B trains on CE_adv only (authors' code); true adds CE_clean
    test_n=0,                # test images scored (the first n); 0 = the whole test set
    eval_batch=500,          # images per evaluation batch
    log_every=100,           # iterations between history entries (and NaN checks)
    ckpt_minutes=5.0,        # minutes between checkpoints
    augment=False,           # random pad-and-crop by up to 4 px and horizontal flip, on the device (CIFAR)
    precision="auto",        # forward passes: bf16 (autocast), float32, or auto (bf16 on CUDA, float32 on the CPU)
    compile=False,           # torch.compile D and G: a minute or two of compiling, then faster steps on a GPU
    cuda_graphs=False,       # capture each model's whole step as one CUDA graph and replay it (CUDA only; off until a GPU run justifies it)
    concurrent_models=False, # train a run's models at once, one iteration of each in turn, each on its own CUDA stream
    bn_eval="running",       # batch norm when scoring: running (eval mode) or batch (train-mode statistics, authors' code)
    strong_n=1000,           # --strong-eval: test images scored (the first n of those scored); 0 = all of them
    strong_steps=100,        # --strong-eval: steps of PGD-CE, PGD-CW, APGD and FAB
    strong_restarts=5,       # --strong-eval: random restarts of PGD-CE
    square_queries=5000,     # --strong-eval: queries of the Square attack (AutoAttack standard: 5000)
    eat_n=0,                 # ensemble.py: training images the EAT set is built from (the first n); 0 = all
)
# --quick: a pipeline check, not a result; small enough that ensemble.py and generators_study.py (which
# train 16 and 13 models) take under 3 minutes on a 2-core CPU
QUICK_SETTINGS = dict(iters=10, batch_size=16, g_width=4, test_n=100, log_every=5, pgd_steps=5,
                      strong_n=50, strong_steps=5, strong_restarts=2, square_queries=20, eat_n=64)

# The admissible values of every numeric setting, the common ones and the scripts' own: "(" and ")"
# exclude the end, "[" and "]" include it. Checked before anything is trained or written.
SETTING_RANGES = dict(
    seed="[0, inf)", batch_size="[1, inf)", iters="[1, inf)", eps="(0, 1]", n_classes="[2, inf)", extra_n="[0, inf)",
    d_lr="(0, inf)", d_momentum="[0, 1)", d_lr_drop_at="[0, 1]", d_lr_drop_factor="[0, 1]", d_weight_decay="[0, inf)",
    g_width="[1, inf)", g_lr="(0, inf)", g_momentum="[0, 1)", g_beta1="[0, 1)", g_beta2="[0, 1)", g_steps="[1, inf)",
    lam="[0, inf)", gamma="(-inf, inf)", fd_h="[0, inf)", pgd_steps="[1, inf)", pgd_alpha="[0, 1]", test_n="[0, inf)",
    eval_batch="[1, inf)", log_every="[1, inf)", ckpt_minutes="[0, inf)", strong_n="[0, inf)", strong_steps="[1, inf)",
    strong_restarts="[1, inf)", square_queries="[1, inf)", eat_n="[0, inf)",
)


def parse_value(key, text, default):
    """Parses `text` as the type of the setting's default; a wrong type is a UserError."""
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is float:
            return float(text)
        return kind(text)
    except ValueError:
        raise UserError(f"--set {key}={text}: expected a {kind.__name__} (the default is {default!r})") from None


def apply_overrides(settings, pairs):
    settings = dict(settings)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--set {pair}: write key=value")
        if key not in settings:
            raise UserError(f"--set {key}: unknown setting; known: {', '.join(sorted(settings))}")
        settings[key] = parse_value(key, text, settings[key])
    return settings


def resolve_settings(base, args, preset=None):
    """base <- preset (e.g. Fashion-MNIST) <- --quick <- --iters/--seed <- --set, each checked."""
    s = dict(base) | (preset or {})
    if args.quick:
        s |= QUICK_SETTINGS
    if args.iters is not None:
        s["iters"] = args.iters
    if args.seed is not None:
        s["seed"] = args.seed
    if args.eval_n is not None:
        s["test_n"] = args.eval_n
    if args.bn_eval is not None:
        s["bn_eval"] = args.bn_eval
    s = apply_overrides(s, args.set)
    check_ranges(s)
    if s["g_opt"] not in ("sgd", "adam"):
        raise UserError(f"g_opt must be sgd or adam, not {s['g_opt']!r}")
    if s["hvp"] not in ("fd", "exact"):
        raise UserError(f"hvp must be fd or exact, not {s['hvp']!r}")
    if s["compile"] and s["hvp"] == "exact":
        raise UserError("hvp=exact needs double backpropagation, which compiled networks do not support; drop compile")
    if s["compile"] and s["cuda_graphs"]:
        raise UserError("compile and cuda_graphs are two ways to cut the launches: set one of them")
    if s["precision"] not in core.PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(core.PRECISIONS)}, not {s['precision']!r}")
    if s["bn_eval"] not in core.BN_MODES:
        raise UserError(f"bn_eval must be one of {', '.join(core.BN_MODES)}, not {s['bn_eval']!r}")
    return s


def in_range(value, interval):
    """Whether `value` lies in `interval`, written as in SETTING_RANGES, e.g. "(0, 1]"."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def check_ranges(settings):
    """Every numeric setting within its SETTING_RANGES interval; one missing from the table is an error
    of this repository, so that no new setting goes unchecked."""
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key not in SETTING_RANGES:
            raise KeyError(f"setting {key} has no entry in experiment.SETTING_RANGES")
        if not in_range(value, SETTING_RANGES[key]):
            raise UserError(f"{key}={value} is outside its range {SETTING_RANGES[key]}")


RUNTIME_SETTINGS = {"test_n", "eval_batch", "log_every", "ckpt_minutes", "bn_eval", "strong_n", "strong_steps",
                    "strong_restarts", "square_queries", "compile", "precision",
                    "cuda_graphs", "concurrent_models"}


def fingerprint(settings, method, seed):
    kept = {k: v for k, v in sorted(settings.items()) if k not in RUNTIME_SETTINGS}
    if method != "eat" or not kept.get("eat_n"):  # eat_n=0, the whole set, is how EAT checkpoints older than it were made
        kept.pop("eat_n", None)
    return json.dumps(kept | {"method": method, "model_seed": seed})


def lr_at(it, settings):
    """D's learning rate: `d_lr`, times `d_lr_drop_factor` from the fraction `d_lr_drop_at` of the run on."""
    dropped = it >= int(settings["d_lr_drop_at"] * settings["iters"])
    return settings["d_lr"] * (settings["d_lr_drop_factor"] if dropped else 1.0)


# =====================================================================================================
# The command line and the devices
# =====================================================================================================

def experiment_parser(description, models=True):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # job_argv rewrites options by their full names
    p.add_argument("--gpu", default=None, help="CUDA device index, a list such as 0,1,2,3 (one training job "
                   "per model, one GPU each), or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--slurm", nargs="?", const="", default=None, metavar="KEY=VALUE,...",
                   help=f"submit the run to SLURM through submitit, one GPU per job; keys: {', '.join(SLURM_KEYS)}, "
                   "and cluster=local to run the same jobs as processes on this machine")
    p.add_argument("--data-dir", default="data", help="where torchvision finds or downloads the data set")
    p.add_argument("--out", default=None, help="results JSON (default: results/<experiment>.json)")
    p.add_argument("--ckpt-dir", default=None, help="checkpoints (default: checkpoints/<experiment>)")
    p.add_argument("--seed", type=int, default=None, help="seed s of A, B, C; A', B', C' use s+1")
    if models:
        p.add_argument("--models", default="A,B,C,A',B',C'", help="subset to train, e.g. A,C'")
    p.add_argument("--iters", type=int, default=None, help="iterations per model; the schedule scales with it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny schedule and test subset: a smoke test")
    p.add_argument("--eval-n", type=int, default=None, help="score only the first N test images (setting test_n)")
    p.add_argument("--bn-eval", choices=core.BN_MODES, default=None, help="batch norm when scoring: running statistics "
                   "(eval mode, default) or batch statistics (the authors' protocol); C is reported both ways")
    p.add_argument("--strong-eval", action="store_true", help="also run the strong evaluation: PGD-100x5, PGD-CW, "
                   "AutoAttack, C's generator, the per-example worst case and gradient-masking checks")
    if models:
        p.add_argument("--seeds", default=None, help="repeat the run once per seed, e.g. 0,1,2 (the copies use s+1); "
                       "the JSON keeps each seed's table and the mean, standard deviation and n of every cell")
        p.add_argument("--no-eval", action="store_true", help="train only (e.g. to spread models over machines)")
        p.add_argument("--eval-only", action="store_true", help="train nothing: evaluate the finished checkpoints")
    return p


def parse_cli(parser, argv, script):
    """parse_args, remembering the command so that --gpu 0,1,... can start one process per GPU."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv, args.script = argv, os.path.abspath(script)
    return args


def parse_models(text):
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m.rstrip("'") not in METHODS or m.count("'") > 1]
    if bad or not names:
        raise UserError(f"--models {text}: choose from A, B, C, A', B', C'")
    return names


def parse_seeds(text):
    """--seeds text -> list of distinct seeds, or None where the option is absent."""
    if text is None:
        return None
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text}: give distinct integers such as 0,1,2")
    return seeds


def parse_gpus(gpu):
    """`--gpu` text -> list of devices: None (GPU 0 if any, else CPU), "cpu", "N" or "N,M,..."."""
    if gpu is None:
        return [torch.device("cuda:0" if torch.cuda.is_available() else "cpu")]
    if str(gpu).lower() == "cpu":
        return [torch.device("cpu")]
    indices = str(gpu).split(",")
    if not all(i.strip().isdigit() for i in indices):
        raise UserError(f"--gpu {gpu}: give GPU indices such as 0 or 0,1,2,3, or cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    absent = [i for i in indices if int(i) >= count]
    if absent:
        raise UserError(f"--gpu {gpu}: this machine has {count} CUDA device(s); use --gpu cpu or indices below {count}")
    return [torch.device(f"cuda:{int(i)}") for i in indices]


def pick_device(gpu=None):
    """The one device of a single-process run (the first one listed)."""
    return parse_gpus(gpu)[0]


def open_dataset(make, name, where):
    """Calls `make(download)`: first from disk, then downloading; offline, a clear error says `where`."""
    try:
        return make(download=False)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    try:
        return make(download=True)
    except Exception as err:  # torchvision raises several types for a failed download
        raise UserError(f"{name} is not on disk and could not be downloaded ({type(err).__name__}); {where}") from None


# =====================================================================================================
# Provenance: what made a result
# =====================================================================================================

def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"


def read_git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, None


GIT_AT_START = read_git_commit()  # the code this process runs, though the checkout may move on during a long run


def command_line(args):
    """The command that produced a result, as the user typed it (from parse_cli's args)."""
    return " ".join([os.path.basename(args.script)] + args.argv)


def provenance(device, command, precision="auto"):
    commit, dirty = GIT_AT_START
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "cuda": torch.version.cuda}
    for package in ("torchvision", "pyautoattack"):  # used by the scripts and autoattack_suite; this file imports neither
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"versions": versions, "device": device_name(device), "precision": core.precision_name(device, precision),
            "git_commit": commit, "git_dirty": dirty,
            "command": command, "host": platform.node()}


def write_json(path, data):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    core.atomic_write(path, write)


# =====================================================================================================
# Progress and interruption
# =====================================================================================================

class Progress:
    """A dependency-free progress line: count, rate, ETA. Redrawn in place on a terminal, else a line
    every 30 s, so log files stay short."""

    def __init__(self, total, desc, unit="it", start=0):
        self.total, self.desc, self.unit, self.start = total, desc, unit, start
        self.t0 = self.last = time.time()
        self.tty = sys.stderr.isatty()
        self.extra = ""

    def update(self, done, extra=None):
        self.extra = extra if extra is not None else self.extra
        now = time.time()
        if done < self.total and now - self.last < (0.5 if self.tty else 30):
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        line = f"{self.desc} {done}/{self.total} {rate:.2f} {self.unit}/s ETA {format_seconds(eta)} {self.extra}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if done >= self.total and self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def format_seconds(s):
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop reads between iterations, so that a killed
    run saves a consistent checkpoint (never one taken halfway through a minimax step).

    In a submitit job the preemption signal (SLURM's warning before the time limit, or a preemption)
    is flagged too and, once the checkpoint is saved, handed to submitit's handler, which requeues the
    job; SIGTERM is left to submitit there, since SLURM sends it along with a preemption."""

    def __init__(self):
        self.raised = None

    def __enter__(self):
        self.saved = {}
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            preempt = preemption_signal()
            for sig in (signal.SIGINT, preempt) if preempt else (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        if self.raised is not None and self.raised == preemption_signal() and callable(self.saved[self.raised]):
            self.saved[self.raised](self.raised, None)  # submitit requeues the job and exits


def preemption_signal():
    """The signal by which submitit tells one of its jobs to checkpoint (USR2 unless SUBMITIT_PREEMPT_SIGNAL
    names another), or None outside a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


# =====================================================================================================
# Training a model: resumable, interruptible
# =====================================================================================================

METHODS = {"A": "standard", "B": "pgd", "C": "advnet"}
TABLE_COLUMNS = ["clean", "fgs", "pgd", "fgs_A'", "pgd_A'", "fgs_B'", "pgd_B'", "fgs_C'", "pgd_C'"]  # the paper's order


def restore(ckpt, path, fp, modules):
    if ckpt.get("fingerprint") != fp:
        raise UserError(f"checkpoint {path} was trained with other settings; delete it, or pass --ckpt-dir to keep both")
    try:
        for key, module in modules.items():
            module.load_state_dict(ckpt[key])
            if isinstance(module, torch.optim.Optimizer):  # its rate comes back as a float or a CPU tensor
                core.set_learning_rate(module, float(module.param_groups[0]["lr"]))
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(f"checkpoint {path} does not match this model ({type(err).__name__}); delete it to retrain") from None


def train_model(name, method, seed, D, G, make_batches, settings, device, ckpt_path, train=True):
    """Trains (or resumes, or skips if finished) one model; `train=False` only loads a checkpoint.
    Returns the model's record for the results JSON (iters_done < iters: unfinished). `make_batches()`
    gives the batch source (iteration -> (x, y)); it is called only if there is training to do.

    A checkpoint is written every `ckpt_minutes` at a logging boundary, at the end, and when the run
    is interrupted (SIGINT/SIGTERM, between iterations). A NaN/inf loss stops the run with the last
    good checkpoint kept."""
    with StopFlag() as stop:
        return run_in_turn({name: training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path,
                                               stop, train)}, device, streams=False)[name]


def training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path, stop, train=True):
    """train_model's work as a generator that yields after every iteration and returns the record, so
    that several models can be trained in turn; `stop` (a StopFlag) is shared by them."""
    s, fp = settings, fingerprint(settings, method, seed)
    step, modules = core.make_step(method, D, G, s)
    step = graphed_or_eager(step, s, device, [m for m in modules.values() if isinstance(m, torch.optim.Optimizer)])
    record = {"method": method, "iters_done": 0, "train_seconds": 0.0, "history": []}
    if os.path.exists(ckpt_path):
        try:
            ckpt = core.load_checkpoint(ckpt_path)
        except ValueError as err:
            raise UserError(f"{err}; delete it to retrain that model") from None
        restore(ckpt, ckpt_path, fp, modules)
        core.set_rng_state(ckpt["rng"], device)
        record = ckpt["record"]
        if record["iters_done"] >= s["iters"]:
            print(f"{name}: finished checkpoint found ({ckpt_path}), not retrained", file=sys.stderr)
    if record["iters_done"] >= s["iters"] or not train:
        return record

    def save():
        core.save_checkpoint(ckpt_path, {"fingerprint": fp, "record": record, "rng": core.rng_state(device),
                                         **{k: m.state_dict() for k, m in modules.items()}})

    batches = make_batches()
    start = record["iters_done"]
    commit, dirty = GIT_AT_START  # a model may be trained over several invocations: each one is recorded
    record.setdefault("sessions", []).append({"from_iter": start, "git_commit": commit, "git_dirty": dirty,
                                              "device": device_name(device), "precision": core.precision_name(device, s["precision"]),
                                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    progress = Progress(s["iters"], f"{name} ({method})", start=start)
    sums, count, t_start, t_saved, lr_now = {}, 0, time.time(), time.time(), None
    seconds_before = record["train_seconds"]
    for it in range(start, s["iters"]):
        if "opt_D" in modules and lr_at(it, s) != lr_now:
            lr_now = lr_at(it, s)
            core.set_learning_rate(modules["opt_D"], lr_now)
        x, y = batches(it)
        stats = step(x, y)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0) + v.float()
        count += 1
        last = it + 1 == s["iters"]
        if (it + 1) % s["log_every"] == 0 or last or stop.raised:
            means = {k: v.item() / count for k, v in sums.items()}  # the one host sync per interval
            if not all(math.isfinite(v) for v in means.values()):
                kept = f"last good checkpoint kept ({record['iters_done']} iterations)" if os.path.exists(ckpt_path) else "no checkpoint written"
                raise UserError(f"{name}: loss became NaN/inf before iteration {it + 1}; stopped, {kept}; "
                                f"try a smaller learning rate with --set")
            record["history"].append({"iter": it + 1, "lr": lr_at(it, s), **{k: round(v, 5) for k, v in means.items()}})
            record["iters_done"] = it + 1
            record["train_seconds"] = seconds_before + time.time() - t_start
            sums, count = {}, 0
            progress.update(it + 1, " ".join(f"{k}={v:.3f}" for k, v in means.items() if k in ("loss", "acc", "acc_adv")))
            if last or stop.raised or time.time() - t_saved >= 60 * s["ckpt_minutes"]:
                save()
                t_saved = time.time()
            if stop.raised:
                raise KeyboardInterrupt(f"{name}: stopped at iteration {it + 1}; checkpoint saved to {ckpt_path}")
        yield
    return record


def run_in_turn(runs, device, streams=True):
    """Drives training runs (name -> training_run) to their end, one iteration of each in turn and, on
    CUDA with `streams`, each on its own stream, so that the GPU works on several models' kernels at
    once. Returns name -> record. An interruption stops every run at its next iteration, each saving
    its checkpoint, before it is raised."""
    use_streams = streams and device.type == "cuda"
    own = {name: torch.cuda.Stream(device) for name in runs} if use_streams else {}
    for stream in own.values():
        stream.wait_stream(torch.cuda.current_stream(device))
    pending, records, interrupted = dict(runs), {}, None
    while pending:
        for name, run in list(pending.items()):
            with torch.cuda.stream(own[name]) if use_streams else contextlib.nullcontext():
                try:
                    next(run)
                    continue
                except StopIteration as done:
                    records[name] = done.value
                except KeyboardInterrupt as err:
                    interrupted = err
            del pending[name]
    for stream in own.values():  # evaluation, on the default stream, reads what the runs wrote
        torch.cuda.current_stream(device).wait_stream(stream)
    if interrupted:
        raise interrupted
    return records


def graphed_or_eager(step, settings, device, optimizers=()):
    """The step as the loop calls it: as it is (it applies its own precision), or captured as a CUDA
    graph (`cuda_graphs`) with the `optimizers` it steps."""
    if not settings["cuda_graphs"]:
        return step
    if device.type != "cuda":
        raise UserError("cuda_graphs=true needs a CUDA device; drop it on the CPU")
    graphed = core.GraphedStep(step, device, optimizers=optimizers)

    def replayed(x, y):
        try:
            return graphed(x, y)
        except RuntimeError as err:
            if graphed.graph is None or graphed.replays:  # a warm-up or a replay failed, not the capture
                raise
            raise UserError(f"cuda_graphs=true: the step could not be captured as a CUDA graph ({err}); "
                            "run without --set cuda_graphs=true") from None
    return replayed


def build_models(seed, settings, build_D, build_G, device):
    """D and G initialised from `seed`, on the device, compiled in place if `compile` (the state_dict
    keys, and so the checkpoints, stay those of eager models)."""
    torch.manual_seed(seed)
    D, G = core.to_device(build_D(settings), device), core.to_device(build_G(settings), device)
    if settings["compile"]:
        D.compile(), G.compile()
    return D, G


def batch_maker(seed, settings, data, device):
    """make_batches for train_model: `data()` gives the training (images, labels), asked for only when
    there is training to do."""
    def make_batches():
        images, labels = data()
        try:
            return core.Batches(images, labels, settings["batch_size"], seed, device,
                                core.crop_flip if settings["augment"] else None)
        except ValueError as err:  # a training set smaller than one batch
            raise UserError(str(err)) from None
    return make_batches


def prepare_model(name, method, seed, settings, build_D, build_G, data, device, ckpt_path, train=True):
    """Builds D and G with `seed`, then trains, resumes or just loads them (train_model). Returns (D, G, record)."""
    D, G = build_models(seed, settings, build_D, build_G, device)
    return D, G, train_model(name, method, seed, D, G, batch_maker(seed, settings, data, device), settings, device,
                             ckpt_path, train)


def prepare_models(specs, settings, build_D, build_G, data, device):
    """prepare_model for several models, specs: name -> (method, seed, ckpt_path, train). One after
    another or, with `concurrent_models`, all at once (run_in_turn): a batch-64 model leaves most of
    a GPU idle. Concurrent runs share the global RNG in turn, so they are not bitwise those of a
    sequential run (nor is a resumed one exact); each model keeps its own checkpoint. Returns
    name -> (D, G, record)."""
    if not settings["concurrent_models"]:
        return {name: prepare_model(name, method, seed, settings, build_D, build_G, data, device, path, train)
                for name, (method, seed, path, train) in specs.items()}
    built = {name: build_models(spec[1], settings, build_D, build_G, device) for name, spec in specs.items()}
    with StopFlag() as stop:
        runs = {name: training_run(name, method, seed, *built[name], batch_maker(seed, settings, data, device),
                                   settings, device, path, stop, train)
                for name, (method, seed, path, train) in specs.items()}
        records = run_in_turn(runs, device)
    return {name: (*built[name], records[name]) for name in specs}


# =====================================================================================================
# Running an experiment: train the six models, evaluate, write the results JSON
# =====================================================================================================

def configure_with(name, settings, load_data):
    """The configure(args) of a script whose data need only --data-dir: args -> (name, settings, load)."""
    def configure(args):
        resolved = resolve_settings(settings, args)
        return name + ("_quick" if args.quick else ""), resolved, lambda: load_data(args.data_dir)
    return configure


def dataset_main(doc, script, configure, build_D, build_G, paper_table, autoattack=None, argv=None):
    """The whole command of a data-set script: parse its command line, then run_experiment."""
    args = parse_cli(experiment_parser(doc), argv, script)
    name, settings, load = configure(args)
    return run_experiment(name, settings, args, load, build_D, build_G, paper_rows(paper_table), autoattack)


def run_experiment(name, settings, args, load_data, build_D, build_G, paper=None, autoattack=None):
    """Trains the chosen models (resumably), evaluates the 9-column table (and with --strong-eval the
    strong evaluation) and writes the results JSON; with --seeds, once per seed, and the JSON adds the
    mean, standard deviation and n of every cell. With --slurm or --gpu 0,1,... the trainings and the
    evaluation run as jobs instead (launch_experiment).

    `load_data()` gives (train_images, train_labels, test_images, test_labels): uint8 (N, C, H, W)
    and int64. Models outside --models are not trained, but their finished checkpoints are evaluated.
    `autoattack` (the module autoattack_suite) adds AutoAttack to --strong-eval."""
    seeds = parse_seeds(args.seeds)
    chosen = [] if args.eval_only else parse_models(args.models)
    ckpt_dir = args.ckpt_dir or os.path.join("checkpoints", name)
    if args.slurm is not None or len(parse_gpus(args.gpu)) > 1:
        return launch_experiment(args, seeds or [settings["seed"]], chosen, ckpt_dir)
    device = pick_device(args.gpu)
    out = args.out or os.path.join("results", f"{name}.json")
    data = load_data()
    started = time.time()
    runs = {seed: run_seed(name, settings | {"seed": seed}, args, data, build_D, build_G, device,
                           os.path.join(ckpt_dir, f"seed{seed}"), chosen, paper, autoattack)
            for seed in seeds} if seeds else {None: run_seed(name, settings, args, data, build_D, build_G, device,
                                                             ckpt_dir, chosen, paper, autoattack)}
    if args.no_eval:
        return runs
    if seeds:
        report = {"experiment": name, "settings": settings, "provenance": provenance(device, command_line(args), settings["precision"]),
                  "seed_list": seeds, "runs": {str(seed): run for seed, run in runs.items()}}
        report["table_stats"] = seed_statistics({seed: run["table"] for seed, run in runs.items()})
        report["table"] = {row: {col: cell["mean"] for col, cell in cols.items()} for row, cols in report["table_stats"].items()}
        report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
        print(format_statistics(report["table_stats"], paper))
    else:
        report = runs[None]
    write_json(out, report)
    print(f"results written to {out}")
    return report


def run_seed(name, settings, args, data, build_D, build_G, device, ckpt_dir, chosen, paper, autoattack):
    """One run of the experiment with settings["seed"]: trains the chosen models, and unless --no-eval
    evaluates them; returns that run's report (the results JSON of a single-seed run)."""
    train_x, train_y, test_x, test_y = data
    started = time.time()
    report = {"experiment": name, "settings": settings, "seeds": {}, "provenance": provenance(device, command_line(args), settings["precision"]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": {}}
    finished, generators, specs = {}, {}, {}
    for model_name in ["A", "B", "C", "A'", "B'", "C'"]:
        ckpt_path = os.path.join(ckpt_dir, f"{model_name}.pt")
        if model_name in chosen or os.path.exists(ckpt_path):
            specs[model_name] = (METHODS[model_name.rstrip("'")], settings["seed"] + model_name.count("'"), ckpt_path,
                                 model_name in chosen)
    prepared = prepare_models(specs, settings, build_D, build_G, lambda: (train_x, train_y), device)
    for model_name, (D, G, record) in prepared.items():
        if record["iters_done"] >= settings["iters"]:
            report["seeds"][model_name] = specs[model_name][1]
            report["models"][model_name] = record
            finished[model_name], generators[model_name] = D, G
    if args.no_eval:
        print(f"trained {', '.join(finished) or 'nothing'}; checkpoints in {ckpt_dir}; run without --no-eval to evaluate")
        return report
    report["table"], report["eval"] = evaluate_trained(finished, settings, test_x, test_y, device)
    print(f"seed {settings['seed']} (copies {settings['seed'] + 1})\n{format_table(report['table'], paper)}")
    if args.strong_eval:
        report["strong_eval"] = strong_eval_report(finished, generators.get("C"), settings, test_x, test_y, device,
                                                   autoattack, ckpt_dir)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["wall_seconds"] = round(time.time() - started, 1)
    return report


def seed_statistics(tables):
    """{seed: table} -> row -> column -> {mean, std, n} over the seeds whose table has that cell; std is
    the sample standard deviation (divisor n - 1), None where n is 1."""
    cells = {}
    for table in tables.values():
        for row, values in table.items():
            for column, value in values.items():
                cells.setdefault(row, {}).setdefault(column, []).append(value)
    return {row: {column: mean_std(values) for column, values in columns.items()} for row, columns in cells.items()}


def mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def format_statistics(stats, paper=None):
    """The across-seed table: mean ± standard deviation of every cell (n seeds), and the paper's rows where given."""
    cell = lambda c: f"{c['mean']:.2f}±{c['std']:.2f}" if c["std"] is not None else f"{c['mean']:.2f}"
    ns = sorted({c["n"] for cols in stats.values() for c in cols.values()})
    lines = [f"mean ± standard deviation over the seeds (n = {', '.join(map(str, ns))}), accuracy in percent",
             f"{'model':<8}" + "".join(f"{c:>14}" for c in TABLE_COLUMNS)]
    for row, cols in stats.items():
        lines.append(f"{row:<8}" + "".join(f"{cell(cols[c]):>14}" if c in cols else f"{'-':>14}" for c in TABLE_COLUMNS))
        if paper and row in paper:
            lines.append(f"{'  paper':<8}" + "".join(f"{v:>14.2f}" for v in paper[row]))
    return "\n".join(lines)


# =====================================================================================================
# Jobs through submitit: on a SLURM cluster (--slurm), or one process per GPU here (--gpu 0,1,...)
# =====================================================================================================

SLURM_KEYS = {  # --slurm key -> (submitit.SlurmExecutor parameter, type); each job also gets one GPU
    "partition": ("partition", str),             # SLURM partition
    "time": ("time", int),                       # minutes per job allocation; at the limit it is requeued and resumes
    "mem": ("mem", str),                         # host memory per job, SLURM's syntax (32G)
    "cpus": ("cpus_per_task", int),              # CPU cores per job
    "account": ("account", str),
    "qos": ("qos", str),
    "constraint": ("constraint", str),           # node features, e.g. a GPU type
    "requeues": ("max_num_timeout", int),        # how often a job may reach its time limit and be requeued
}
SLURM_DEFAULTS = dict(time=240, mem="32G", cpus_per_task=4, max_num_timeout=30)
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit; submitit's default is 2 minutes
LAUNCH_OPTIONS = ["--gpu", "--slurm", "--models", "--seeds", "--no-eval", "--eval-only"]


class ScriptJob(submitit.helpers.Checkpointable):
    """One job: a script's main() on a command line. Requeued after its time limit or a preemption, it
    runs the same command again, which resumes from the checkpoints (checkpoint() of Checkpointable)."""

    def __init__(self, script, argv):
        self.script, self.argv = script, list(argv)

    def __call__(self):
        # the jobs find this repository on their PYTHONPATH (use_repository_path)
        module = importlib.import_module(os.path.splitext(os.path.basename(self.script))[0])
        return module.main(self.argv)

    def __str__(self):
        return " ".join([os.path.basename(self.script)] + self.argv)


def parse_slurm(text):
    """--slurm's comma-separated key=value pairs -> ("slurm" or "local", {SlurmExecutor parameter: value})."""
    cluster, params = "slurm", dict(SLURM_DEFAULTS)
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if key == "cluster" and value in ("slurm", "local"):
            cluster = value
        elif not sep or key not in SLURM_KEYS:
            raise UserError(f"--slurm {pair}: write key=value with a key from {', '.join(SLURM_KEYS)}, or cluster=local")
        else:
            parameter, kind = SLURM_KEYS[key]
            try:
                params[parameter] = kind(value)
            except ValueError:
                raise UserError(f"--slurm {pair}: expected a {kind.__name__}") from None
    return cluster, params


def job_argv(argv, add):
    """The user's command line without the options that launch jobs or pick what each job does
    (LAUNCH_OPTIONS, with their values), then `add`."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in LAUNCH_OPTIONS:
            if i < len(argv) and not argv[i].startswith("-") and arg not in ("--no-eval", "--eval-only"):
                i += 1  # its value
        elif arg.split("=")[0] not in LAUNCH_OPTIONS:
            kept.append(arg)
    return kept + add


def use_repository_path():
    """Jobs unpickle ScriptJob and import the scripts by name: this folder goes on their PYTHONPATH
    (local jobs and sbatch inherit this process's environment)."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here] + [p for p in paths if p])


def jobs_on_cpu(args):
    """Whether the jobs are to run on the CPU: only where --gpu says cpu, since a SLURM login node
    without a GPU submits jobs that will have one."""
    return str(args.gpu).lower() == "cpu"


def job_gpu(args):
    """A job's --gpu: a job sees only its own GPU, as device 0."""
    return ["--gpu", "cpu" if jobs_on_cpu(args) else "0"]


def launch_experiment(args, seeds, chosen, ckpt_dir):
    """--slurm, or --gpu 0,1,...: one training job per model and seed (each on one GPU, resumable), then
    an evaluation job, which starts once every training has finished and writes the results JSON."""
    multi = args.seeds is not None
    trainings = [(f"{m} seed {s}", ScriptJob(args.script, job_argv(args.argv, job_gpu(args) + ["--models", m, "--no-eval"]
                                                                    + (["--seeds", str(s)] if multi else []))))
                 for s in seeds for m in chosen]
    evaluation = None if args.no_eval else ScriptJob(args.script, job_argv(args.argv, job_gpu(args) + ["--eval-only"]
                                                                             + (["--seeds", args.seeds] if multi else [])))
    return run_jobs(args, os.path.join(ckpt_dir, "jobs"), trainings, evaluation)


def launch_script(args, ckpt_root):
    """--slurm for a script that runs as one job (ensemble.py, generators_study.py)."""
    job = ScriptJob(args.script, job_argv(args.argv, job_gpu(args)))
    return run_jobs(args, os.path.join(ckpt_root, "jobs"), [], job)


def run_jobs(args, folder, trainings, evaluation):
    """The jobs on SLURM (submitted; this command returns) or on this machine (waited for); their logs
    and submitit's files go to `folder`, which all of them must see."""
    cluster, params = parse_slurm(args.slurm) if args.slurm is not None else ("local", {})
    use_repository_path()
    if cluster == "local":
        devices = parse_gpus(args.gpu)
        return run_local(folder, [d.index for d in devices] if devices[0].type == "cuda" else [None], trainings, evaluation)
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("--slurm: no SLURM on this machine (sbatch is not on PATH); run it on the cluster's login "
                        "node, or use --gpu 0,1,... to run the jobs here")
    return submit_slurm(folder, params, 0 if jobs_on_cpu(args) else 1, trainings, evaluation)


def submit_slurm(folder, params, gpus, trainings, evaluation):
    """Submits the trainings, then the evaluation with a dependency: SLURM starts it once all of them
    have ended well (a requeued training keeps its job id, so the evaluation waits for it too)."""
    executor = submitit.SlurmExecutor(folder, max_num_timeout=params.pop("max_num_timeout"))
    executor.update_parameters(**params, gpus_per_node=gpus)
    jobs = []
    for label, job in trainings:
        executor.update_parameters(job_name=f"train {label}")
        jobs.append(executor.submit(job))
        print(f"submitted training {label}: SLURM job {jobs[-1].job_id}")
    if evaluation is not None:
        executor.update_parameters(job_name="evaluate", additional_parameters={"dependency": "afterok:" + ":".join(
            j.job_id for j in jobs)} if jobs else {})
        jobs.append(executor.submit(evaluation))
        print(f"submitted {evaluation}: SLURM job {jobs[-1].job_id}" + (", after the trainings" if trainings else ""))
    print(f"logs in {folder}/; squeue --me to follow; the same command again resubmits what is unfinished")
    return [j.job_id for j in jobs]


def run_local(folder, gpus, trainings, evaluation):
    """Runs the jobs as processes on this machine, at most one per GPU at a time (each sees only its own:
    CUDA_VISIBLE_DEVICES), then the evaluation job once every training has succeeded. `gpus`: [None]
    for the CPU. Prints the evaluation job's output; returns its result."""
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    pending, running, failed = list(trainings), {}, []
    while running or (pending and not failed):  # after a failure, the running jobs end and nothing new starts
        for gpu in gpus:
            if gpu not in running and pending and not failed:
                label, job = pending.pop(0)
                running[gpu] = label, submit_local(executor, gpu, job)
                print(f"training {label}: local job {running[gpu][1].job_id}" + ("" if gpu is None else f" on GPU {gpu}")
                      + f", log {running[gpu][1].paths.stderr}", flush=True)
        time.sleep(0.5)
        for gpu, (label, job) in list(running.items()):
            if job.done():
                del running[gpu]
                failed += job_failure(f"training {label}", job)
    if failed:
        raise UserError("; ".join(failed) + "; rerun the same command to resume")
    if evaluation is None:
        return None
    job = submit_local(executor, gpus[0], evaluation)
    print(f"evaluation: local job {job.job_id}, log {job.paths.stderr}", flush=True)
    job.wait()
    failed = job_failure(str(evaluation), job)
    if failed:
        raise UserError(failed[0])
    print("".join(line for line in job.stdout().splitlines(keepends=True) if not line.startswith("submitit ")), end="")
    return job.result()


def submit_local(executor, gpu, job):
    executor.update_parameters(gpus_per_node=0 if gpu is None else 1, visible_gpus=() if gpu is None else [physical_gpu(gpu)])
    return executor.submit(job)


def physical_gpu(index):
    """The GPU that this process calls cuda:index, as CUDA_VISIBLE_DEVICES must name it for a child process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    ids = [v.strip() for v in visible.split(",")]
    if not ids[index].isdigit():
        raise UserError(f"CUDA_VISIBLE_DEVICES={visible} names GPUs by UUID; give their indices to run local jobs")
    return int(ids[index])


def job_failure(what, job):
    """[] for a job that succeeded, else one line: its error (a UserError's own line) and its log."""
    try:
        job.result()
        return []
    except submitit.core.utils.FailedJobError as err:  # its message: a header, the traceback and the logs, between rules
        parts = str(err).split("-" * 22)
        traceback = (parts[1] if len(parts) > 2 else str(err)).strip().splitlines()
        cause = traceback[-1].removeprefix("experiment.UserError: ") if traceback else "see its log"
    except submitit.core.utils.UncompletedJobError:
        cause = "stopped without a result"
    return [f"{what} failed ({cause}); log: {job.paths.stderr}"]


def split_models(models):
    """(targets, surrogates): the models scored, and the seed copies (A', B', C') that attack them."""
    return {k: m for k, m in models.items() if "'" not in k}, {k: m for k, m in models.items() if "'" in k}


def evaluate_trained(models, settings, test_x, test_y, device):
    """The paper's 9-column table of the models (copies as surrogates), with BN as `bn_eval` says; model C,
    if present, is also scored white-box under both BN modes (`bn_comparison`)."""
    n = settings["test_n"] or len(test_x)
    targets, surrogates = split_models(models)
    if not targets:
        return {}, {"n_test": 0, "seconds": 0.0, "note": "no finished target model (A, B or C)"}
    t0 = time.time()
    score = lambda chosen, against, bn, progress=None: core.evaluate_table(
        chosen, against, test_x[:n], test_y[:n], settings["eps"], device, settings["eval_batch"], settings["pgd_steps"],
        settings["pgd_alpha"] or None, progress, bn, settings["precision"])
    torch.manual_seed(settings["seed"])  # PGD's random start: the same numbers for the same run
    table = score(targets, surrogates, settings["bn_eval"], Progress(n, "evaluate", "img"))
    columns = ["clean", "fgs", "pgd"] + [f"{a}_{s}" for s in surrogates for a in ("fgs", "pgd")]
    evaluation = {"n_test": n, "columns": columns, "bn": settings["bn_eval"]}
    if "C" in targets:  # the table already holds C's white-box row in the chosen mode: only the other is scored
        white_box = {k: table["C"][k] for k in ("clean", "fgs", "pgd")}
        evaluation["bn_comparison"] = {"C": {bn: white_box if bn == settings["bn_eval"] else score({"C": targets["C"]}, {}, bn)["C"]
                                             for bn in core.BN_MODES}}
    return table, evaluation | {"seconds": round(time.time() - t0, 1)}


def strong_eval_report(models, generator, settings, test_x, test_y, device, autoattack=None, state_dir="checkpoints"):
    """--strong-eval: core.strong_evaluation of the target models (the seed copies attack by transfer;
    `generator`, C's G, attacks every model) with masking checks, as the results JSON's entry.
    `autoattack` (the module autoattack_suite, which needs a package beyond torch) adds AutoAttack's four
    attacks, each alone, and its standard cascade (`autoattack`, resumable from state files in `state_dir`)."""
    n = min(settings["strong_n"] or len(test_x), settings["test_n"] or len(test_x), len(test_x))
    targets, surrogates = split_models(models)
    if not targets:
        return {"n_test": 0, "models": {}, "note": "no finished target model to evaluate"}
    eps = settings["eps"]
    attacks = core.strong_attacks(eps, settings["strong_steps"], settings["strong_restarts"])
    attacks |= autoattack.attacks(settings) if autoattack else {}
    if generator is not None:
        attacks["generator_C"] = lambda m, x, y: core.generator_attack(generator, x, y, eps)
    torch.manual_seed(settings["seed"])
    t0 = time.time()
    with core.scoring_mode([generator] if generator is not None else []):  # G as trained, in eval mode
        results = core.strong_evaluation(targets, test_x[:n], test_y[:n], eps, device, attacks, surrogates,
                                    settings["bn_eval"], settings["eval_batch"], sweep_steps=settings["strong_steps"],
                                    progress=Progress(n, "strong evaluation", "img"))
    report = {"n_test": n, "bn": settings["bn_eval"], "attacks": list(attacks), "surrogates": list(surrogates),
              "precision": "float32 (no core.autocast, no TF32)",
              "models": {m: {"accuracy": r, "checks": core.masking_checks(r)} for m, r in results.items()}}
    if autoattack:
        report["autoattack"] = autoattack_version(settings)
        for name, model in targets.items():
            print(f"AutoAttack's cascade on {name} ({n} images)", file=sys.stderr)
            accuracy, warnings = autoattack_cascade(autoattack, model, test_x[:n], test_y[:n], settings, device, state_dir)
            report["models"][name]["accuracy"]["autoattack"] = accuracy
            report["models"][name]["autoattack_warnings"] = warnings
    report["seconds"] = round(time.time() - t0, 1)
    print(format_strong(report))
    return report


AUTOATTACK_STANDARD = dict(strong_steps=100, square_queries=5000)  # the standard version's iterations and queries


def autoattack_version(settings):
    """What the `autoattack` number is: the standard version, or a reduced one (--quick) that says so."""
    reduced = {k: settings[k] for k, v in AUTOATTACK_STANDARD.items() if settings[k] != v}
    return {"version": "standard" if not reduced else f"standard with {reduced} (not the standard numbers)",
            "norm": "Linf", "eps": settings["eps"], "seed": settings["seed"]}


def autoattack_cascade(autoattack, model, images, labels, settings, device, state_dir):
    """AutoAttack's standard cascade on one model, scored as strong_evaluation scores: (accuracy in percent, warnings)."""
    x, y = core.to_float(images.to(device)), labels.to(device)
    state = autoattack.state_file(state_dir, model, settings, len(x), settings["bn_eval"])
    with core.scoring_mode([model], settings["bn_eval"]), core.full_precision(device):
        robust, warnings = autoattack.cascade(model, x, y, settings, settings["eval_batch"], state)
    return round(100.0 * robust.float().mean().item(), 2), warnings


def format_strong(report):
    """The strong evaluation as text: one row per attack (accuracy in percent), then each model's masking flags."""
    models = report["models"]
    keys = list(next(iter(models.values()))["accuracy"])
    lines = [f"strong evaluation, first {report['n_test']} test images, BN {report['bn']}: accuracy in percent",
             f"{'attack':<22}" + "".join(f"{m:>9}" for m in models)]
    lines += [f"{k:<22}" + "".join(f"{r['accuracy'][k]:>9.2f}" for r in models.values()) for k in keys]
    for name, r in models.items():
        flags = [f"{c} ({v['why']})" for c, v in r["checks"].items() if v["flag"]]
        lines.append(f"masking flags of {name}: {'; '.join(flags) if flags else 'none'}")
        lines += [f"AutoAttack's warning on {name}: {w}" for w in r.get("autoattack_warnings", [])]
    return "\n".join(lines)


def format_table(table, paper=None):
    """Our accuracies, and the paper's beside them where given ({row: [values in column order]})."""
    width = max([8] + [len(row) + 1 for row in table])
    lines = [f"{'model':<{width}}" + "".join(f"{c:>9}" for c in TABLE_COLUMNS)]
    for row, values in table.items():
        lines.append(f"{row:<{width}}" + "".join(f"{values[c]:>9.2f}" if c in values else f"{'-':>9}" for c in TABLE_COLUMNS))
        if paper and row in paper:
            lines.append(f"{'  paper':<{width}}" + "".join(f"{v:>9.2f}" for v in paper[row]))
    return "\n".join(lines)


def paper_tables(section):
    """A section of paper_tables.json (kept beside this file), or None where the file is absent."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_tables.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)[section]


def paper_rows(table):
    """The paper's rows of one of its accuracy tables (e.g. "cifar10"), or None."""
    tables = paper_tables("tables")
    return tables[table]["rows"] if tables else None
