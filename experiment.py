"""The machinery of this repository's experiments: settings and their checks, the command line, the
resumable training loop, provenance, progress, and the runner that trains a data set's six models and
evaluates them (once per seed with --seeds). The method itself (networks, attacks, training steps,
evaluation) is in core.py. Below this module, and importing none of it: jobs.py (where the work runs:
this process's device, or jobs through submitit, --slurm or --gpu 0,1,...), reports.py (the text
tables) and errors.py (UserError, printed as one line by exit_on_error). The layering is scripts ->
experiment -> jobs, reports, errors, core; tests/test_layout.py checks it.
"""
import argparse
import contextlib
import errno
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import submitit
import torch

import core
import jobs
import reports
from errors import UserError, exit_on_error  # noqa: F401 (the scripts use them as experiment.UserError and experiment.exit_on_error)


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
    d_lr_drop2_at=1.0,       # fraction of iters after which D's lr is d_lr * d_lr_drop2_factor (1.0: never)
    d_lr_drop2_factor=0.01,  # multiplier of d_lr (the initial lr) after the second drop
    d_fresh_momentum=False,  # D's momentum buffers start afresh at each drop of its lr (the authors' code: a new optimiser)
    d_every=1,               # C: D steps only on minibatches (iterations) whose index is a multiple of this, after their G steps
    d_net="paper",           # D's network: paper, or authors (their code's, where it differs: SVHN)
    g_net="paper",           # G's network: paper (G1), or authors (their code's: MNIST's small G; G1 to 2k, 4k for SVHN/CIFAR)
    pixel_scale=255,         # networks read images as pixel / pixel_scale (authors' SVHN: 256); images and eps stay pixel / 255
    g_width=64,              # G's width k (G1: channels k, 2k, 4k)
    g_weight_decay=0.0,      # G: L2 on conv/linear kernels, also in the regulariser's direction (the authors' code; paper: none)
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
    augment=False,           # random pad-and-crop by up to augment_pad px and horizontal flip, on the device (CIFAR)
    augment_pad=4,           # pixels of zero padding, and of the crop's largest shift, of `augment`
    precision="auto",        # training's forward passes: bf16 (autocast), float32, or auto (bf16 where the device has it
                             # natively: CUDA, CPUs with AVX-512 BF16 or AMX); scoring is always float32
    compile=False,           # torch.compile D and G: a minute or two of compiling, then faster steps on a GPU
    cuda_graphs=False,       # capture each model's whole step as one CUDA graph and replay it (CUDA only; off until a GPU run justifies it)
    concurrent_models=False, # train a run's models at once, one iteration of each in turn, each on its own CUDA stream
    bn_eval="running",       # batch norm when scoring: running (eval mode) or batch (train-mode statistics, authors' code)
    strong_n=1000,           # --strong-eval: test images scored (the first n of those scored); 0 = all of them
    strong_steps=100,        # --strong-eval: steps of PGD-CE, PGD-CW, APGD and FAB
    strong_restarts=5,       # --strong-eval: random restarts of PGD-CE
    square_queries=5000,     # --strong-eval: queries of the Square attack (AutoAttack standard: 5000)
    eat_n=0,                 # ensemble.py: training images the EAT set is built from (the first n); 0 = all
    val_n=0,                 # training images held out as a validation split (drawn by HELD_OUT_SEED, the same for every model); 0 = none
    eval_every=0,            # iterations between scorings of the validation split (clean, FGS, PGD; C: its generator), float32; 0 = never
    keep_every=0,            # iterations between kept checkpoints, <model>.iter<N>.pt beside the running one; 0 = none
    eat_bn="running",        # ensemble.py: batch norm of A while it crafts the EAT set: running, or batch (on minibatches of batch_size)
    protocol="paper",        # paper, or authors: set by --protocol, which resolves the settings (resolve_settings)
    protocol_source="",      # --protocol authors: the authors' code the values come from, and what is extrapolated
    model_overrides={},      # --protocol authors: row (A, B, C, EAT) -> that model's own settings (model_settings)
)
# --protocol authors: what the authors' code (GitHub whxbergkamp/RobustDL_GAN) does on every data set; each
# script's AUTHORS table adds its own values and each model's (see resolve_settings)
AUTHORS_SETTINGS = dict(
    gamma=-0.01,             # train_gan_*.py: d_grads_full = [g1 + g2 + gamma*(g2-g3)/float(g_step_size) ...] (the
                             # paper's sign reversed); run_gan_*.py: '--gamma', default=1E-2
    d_fresh_momentum=True,   # train_*.py: each lr is its own tf.train.MomentumOptimizer (d_optimizer2, optimizer2, ...)
    bn_eval="batch",         # black_box_*.py: get_discriminator(..., is_training=True), no moving averages saved
    eval_batch=64,           # black_box_*.py: '--batch-size', default=64
    eat_bn="batch",          # ensemble_examples_wrapper*.py: the model built with is_training=True, batches of 64
    precision="float32",     # their TF 1.10 code computes in float32 throughout; bf16 has been measured against
                             # float32 for C only (precision_study.py), so their protocol does not assume it for A, B, EAT
)
MODEL_ROWS = {"standard": "A", "pgd": "B", "advnet": "C", "eat": "EAT"}  # method -> its row in the tables and AUTHORS
# Settings added after checkpoints had been written: at these values, how those checkpoints were made, they
# are left out of the fingerprint, so that the older checkpoints still resume and load.
NEUTRAL_SETTINGS = dict(protocol="paper", d_lr_drop2_at=1.0, d_lr_drop2_factor=0.01, d_fresh_momentum=False, d_every=1,
                        d_net="paper", g_net="paper", pixel_scale=255, g_weight_decay=0.0, augment_pad=4,
                        eat_bn="running", train_from=0)
NETS = ("paper", "authors")
PROTOCOLS = ("paper", "authors")
# --quick: a pipeline check, not a result; small enough that ensemble.py and generators_study.py (which
# train 16 and 13 models) take under 3 minutes on a 2-core CPU
QUICK_SETTINGS = dict(iters=10, batch_size=16, g_width=4, test_n=100, log_every=5, pgd_steps=5,
                      strong_n=50, strong_steps=5, strong_restarts=2, square_queries=20, eat_n=64)

# The admissible values of every numeric setting, the common ones and the scripts' own: "(" and ")"
# exclude the end, "[" and "]" include it. Checked before anything is trained or written.
SETTING_RANGES = dict(
    seed="[0, 18446744073709551614]", batch_size="[1, inf)", iters="[1, inf)", eps="(0, 1]", n_classes="[2, inf)", extra_n="[0, inf)",
    d_lr="(0, inf)", d_momentum="[0, 1)", d_lr_drop_at="[0, 1]", d_lr_drop_factor="[0, 1]", d_weight_decay="[0, inf)",
    d_lr_drop2_at="[0, 1]", d_lr_drop2_factor="[0, 1]", d_every="[1, inf)", pixel_scale="[1, inf)", train_from="[0, inf)",
    g_width="[1, inf)", g_lr="(0, inf)", g_momentum="[0, 1)", g_beta1="[0, 1)", g_beta2="[0, 1)", g_steps="[1, inf)",
    g_weight_decay="[0, inf)", augment_pad="[0, inf)",
    lam="[0, inf)", gamma="(-inf, inf)", fd_h="[0, inf)", pgd_steps="[1, inf)", pgd_alpha="[0, 1]", test_n="[0, inf)",
    eval_batch="[1, inf)", log_every="[1, inf)", ckpt_minutes="[0, inf)", strong_n="[0, inf)", strong_steps="[1, inf)",
    strong_restarts="[1, inf)", square_queries="[1, inf)", eat_n="[0, inf)", val_n="[0, inf)", eval_every="[0, inf)",
    keep_every="[0, inf)",
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
        if key in ("protocol", "protocol_source", "model_overrides"):
            raise UserError(f"--set {key}: the protocol is chosen with --protocol {{{','.join(PROTOCOLS)}}}")
        if key == "dataset":
            raise UserError("--set dataset: the data set is the script's (mnist.py --fashion for Fashion-MNIST)")
        settings[key] = parse_value(key, text, settings[key])
    return settings


def resolve_settings(base, args, preset=None, authors=None):
    """base <- the protocol <- preset (e.g. Fashion-MNIST) <- --quick <- --iters/--seed <- --set, each checked.

    --protocol paper (the default) keeps `base`, the script's settings from the paper. --protocol authors
    adds AUTHORS_SETTINGS and the script's table of the authors' values, `authors`: its entries A, B, C
    and EAT hold one model's own values, kept in `model_overrides` for model_settings to apply. A value set
    by a later layer (the preset, --quick, --iters, ..., --set) is every model's."""
    protocol = getattr(args, "protocol", None) or "paper"
    s, own = dict(base), {}
    if protocol == "authors":
        if authors is None:
            raise UserError("--protocol authors: this command has no table of the authors' settings")
        s |= AUTHORS_SETTINGS | {k: v for k, v in authors.items() if k not in MODEL_ROWS.values()}
        own = {row: dict(authors[row]) for row in MODEL_ROWS.values() if row in authors}
    later = dict(preset or {}) | (QUICK_SETTINGS if args.quick else {})
    for key, value in (("iters", args.iters), ("seed", args.seed), ("test_n", args.eval_n), ("bn_eval", args.bn_eval)):
        if value is not None:
            later[key] = value
    s = apply_overrides(s | later | {"protocol": protocol}, args.set)
    later_keys = set(later) | {pair.partition("=")[0] for pair in args.set}
    s["model_overrides"] = {row: {k: v for k, v in values.items() if k not in later_keys} for row, values in own.items()}
    for method in ["generator", *MODEL_ROWS]:
        check_model_settings(model_settings(s, method))
    return s


def check_model_settings(s):
    """One model's settings: numbers within SETTING_RANGES, names among their choices, compatible switches."""
    check_ranges(s)
    if s["g_opt"] not in ("sgd", "adam"):
        raise UserError(f"g_opt must be sgd or adam, not {s['g_opt']!r}")
    if s["hvp"] not in ("fd", "exact"):
        raise UserError(f"hvp must be fd or exact, not {s['hvp']!r}")
    for key in ("d_net", "g_net"):
        if s[key] not in NETS:
            raise UserError(f"{key} must be one of {', '.join(NETS)}, not {s[key]!r}")
    if s["compile"] and s["hvp"] == "exact":
        raise UserError("hvp=exact needs double backpropagation, which compiled networks do not support; drop compile")
    if s["compile"] and s["cuda_graphs"]:
        raise UserError("compile and cuda_graphs are two ways to cut the launches: set one of them")
    if s["cuda_graphs"] and s["d_every"] > 1:
        raise UserError("d_every > 1 alternates two different steps, which one captured CUDA graph cannot replay: drop cuda_graphs")
    if s["precision"] not in core.PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(core.PRECISIONS)}, not {s['precision']!r}")
    for key in ("bn_eval", "eat_bn"):
        if s[key] not in core.BN_MODES:
            raise UserError(f"{key} must be one of {', '.join(core.BN_MODES)}, not {s[key]!r}")
    if s["eval_every"] and not s["val_n"]:
        raise UserError("eval_every needs a validation split held out of the training set: set val_n too (e.g. val_n=1000)")
    if s["eval_every"] and s["keep_every"] % s["eval_every"]:
        raise UserError(f"keep_every={s['keep_every']} is not a multiple of eval_every={s['eval_every']}: every kept "
                        "snapshot is scored on the validation split, so that the best one can be named")


def model_settings(settings, method):
    """The settings a model of `method` trains with: the common ones and its row's own (`model_overrides`)."""
    own = settings.get("model_overrides", {}).get(MODEL_ROWS.get(method), {})
    return {k: v for k, v in settings.items() if k != "model_overrides"} | own


def run_name(name, args):
    """The name of a run's results file and checkpoint folder: mnist, mnist_authors, mnist_authors_quick, ..."""
    return name + ("_authors" if getattr(args, "protocol", None) == "authors" else "") + ("_quick" if args.quick else "")


def in_range(value, interval):
    """Whether `value` lies in `interval`, written as in SETTING_RANGES, e.g. "(0, 1]"."""
    low, high = (number(end) for end in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def number(text):
    """An end of an interval: an int where it is one, exactly (a seed's 2**64 - 2 is no float), else a float."""
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else float(text)


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
                    "cuda_graphs", "concurrent_models", "eval_every", "keep_every", "protocol_source"}


# Recorded in a checkpoint beside its fingerprint, not in it: added later, it would have changed every fingerprint
RECORDED_APART = {"dataset"}


def fingerprint(settings, method, seed):
    """What a model's checkpoint must have been trained with to be resumed or loaded: its model_settings
    less the runtime ones and those RECORDED_APART, and less NEUTRAL_SETTINGS at their neutral values
    (the paper protocol's, which older checkpoints do not name). So a checkpoint of one protocol never
    resumes under the other."""
    kept = {k: v for k, v in sorted(model_settings(settings, method).items())
            if k not in RUNTIME_SETTINGS | RECORDED_APART and not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])}
    if method != "eat" or not kept.get("eat_n"):  # eat_n=0, the whole set, is how EAT checkpoints older than it were made
        kept.pop("eat_n", None)
    if method != "eat":
        kept.pop("eat_bn", None)
    if not kept.get("val_n"):  # nothing held out: how every checkpoint older than val_n was trained
        kept.pop("val_n", None)
    return json.dumps(kept | {"method": method, "model_seed": seed})


def lr_at(it, settings):
    """D's learning rate: `d_lr`, times `d_lr_drop_factor` from the fraction `d_lr_drop_at` of the run on,
    and `d_lr` times `d_lr_drop2_factor` from the fraction `d_lr_drop2_at` on."""
    s, at = settings, lambda fraction: int(fraction * settings["iters"])
    if it >= at(s.get("d_lr_drop2_at", NEUTRAL_SETTINGS["d_lr_drop2_at"])):
        return s["d_lr"] * s["d_lr_drop2_factor"]
    return s["d_lr"] * (s["d_lr_drop_factor"] if it >= at(s["d_lr_drop_at"]) else 1.0)


# =====================================================================================================
# The command line and the devices
# =====================================================================================================

def experiment_parser(description, models=True):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # job_argv rewrites options by their full names
    p.add_argument("--gpu", default=None, help="CUDA device index, a list such as 0,1,2,3 (one training job "
                   "per model, one GPU each), or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--slurm", nargs="?", const="", default=None, metavar="KEY=VALUE,...",
                   help=f"submit the run to SLURM through submitit, one GPU per job; keys: {', '.join(jobs.SLURM_KEYS)}, "
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
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="paper: the settings of the paper's text "
                   "(default); authors: those of the authors' code, which made the paper's tables (README: Two protocols)")
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
    if not seeds or len(set(seeds)) != len(seeds) or not all(in_range(s, SETTING_RANGES["seed"]) for s in seeds):
        raise UserError(f"--seeds {text}: give distinct integers in {SETTING_RANGES['seed']} such as 0,1,2")
    return seeds


def pick_device(gpu=None):
    """The one device of a single-process run (the first one listed)."""
    return jobs.parse_gpus(gpu)[0]


def open_dataset(make, name, where, files, n_classes, image_shape):
    """`make(download)` -> (train_images, train_labels, test_images, test_labels), as torchvision reads
    them from `files` (what -> [paths]: "train images", "train labels", "test images", "test labels",
    and any others it reads); downloaded where a file is missing (offline, a clear error says `where`).
    A damaged file, or data that fail check_dataset, is a UserError that names the file."""
    paths = list(dict.fromkeys(path for group in files.values() for path in group))
    missing = [os.path.basename(path) for path in paths if not os.path.isfile(path)]
    try:
        data = make(download=bool(missing))
    except Exception as err:  # torchvision raises several types for a failed download or a bad file
        if missing:
            raise UserError(f"{name} is not on disk ({', '.join(missing)} missing) and could not be downloaded "
                            f"({type(err).__name__}); {where}") from None
        raise UserError(damaged_file(name, paths, err)) from None
    check_dataset(name, data, files, n_classes, image_shape)
    return data


def damaged_file(name, paths, err):
    """The one line for data files that are all there but torchvision could not read: the first file
    that does not read as its format, else torchvision's own error."""
    for path in paths:
        problem = file_problem(path)
        if problem:
            return f"{name}: {path} is {problem}; replace it with the original file"
    return (f"{name}: torchvision could not read the files in {os.path.dirname(paths[0])} ({type(err).__name__}: "
            f"{' '.join(str(err).split())}), though each one reads as its format: one may be damaged inside, or from another release")


def file_problem(path):
    """What is wrong with one data file, read as its format says (MNIST's IDX by its name, SVHN's .mat,
    else CIFAR's pickle), or None."""
    try:
        if path.endswith("-ubyte"):
            return idx_problem(path)
        if path.endswith(".mat"):
            import scipy.io
            scipy.io.loadmat(path)
        else:
            import pickle
            with open(path, "rb") as f:
                pickle.load(f, encoding="latin1")
    except Exception as err:
        return f"unreadable ({type(err).__name__}: {' '.join(str(err).split())})"
    return None


def idx_problem(path):
    """MNIST's IDX format: bytes 0 0 8 d (unsigned bytes, d dimensions: the 3 or 1 of idx3 or idx1 in the
    name), d sizes as big-endian int32, then exactly their product of bytes. What is wrong, or None."""
    ndim = 3 if "-idx3-" in os.path.basename(path) else 1
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if not header:
        return "empty"
    if len(header) < 4 + 4 * ndim or header[:4] != bytes([0, 0, 8, ndim]):
        return (f"not an IDX file of {ndim}-dimensional unsigned bytes (it begins {header[:4].hex(' ')}, "
                f"not 00 00 08 0{ndim})")
    sizes = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected, size = len(header) + math.prod(sizes), os.path.getsize(path)
    if size != expected:
        return (f"{'truncated' if size < expected else 'too long'}: its header declares {' x '.join(map(str, sizes))} "
                f"bytes ({expected:,} with the header), but the file has {size:,}")
    return None


def check_dataset(name, data, files, n_classes, image_shape):
    """Each set's images are uint8 of `image_shape` (C, H, W) and as many as its labels, which lie in
    [0, n_classes): the training and test sets agree with each other and with the networks."""
    shape = lambda dims: "x".join(map(str, dims))
    for key, split, images, labels in (("train", "training", *data[:2]), ("test", "test", *data[2:])):
        in_images, in_labels = named(files[f"{key} images"]), named(files[f"{key} labels"])
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != tuple(image_shape) or not len(images):
            raise UserError(f"{name}: {in_images}: {len(images)} {split} images of {images.dtype}, {shape(images.shape[1:])}; "
                            f"expected uint8 images of {shape(image_shape)}")
        if len(labels) != len(images):
            raise UserError(f"{name}: {in_labels}: {len(labels)} {split} labels for the {len(images)} images of {in_images}")
        outside = ((labels < 0) | (labels >= n_classes)).nonzero()
        if len(outside):
            i = outside[0].item()
            raise UserError(f"{name}: {in_labels}: label {labels[i].item()} of {split} image {i} is outside "
                            f"[0, {n_classes}): the file is damaged; replace it with the original file")


def named(paths):
    """Data files as an error message names them: the path of one, or the names of several and their folder."""
    if len(paths) == 1:
        return paths[0]
    return f"{', '.join(os.path.basename(p) for p in paths)} (in {os.path.dirname(paths[0])})"


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


@contextlib.contextmanager
def merge_lock(path):
    """An exclusive lock on `<path>.lock`, waited for, around reading a results file and writing it back
    with entries added: processes that merge into one file at once keep each other's entries."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_json(path, data):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    try:
        core.atomic_write(path, write)
    except OSError as err:  # a full disk, say: atomic_write has kept what was there
        raise UserError(f"{path} not written ({err.strerror or err}); what it held is kept, and so are the checkpoints: "
                        "free some space and run the same command again") from None


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


# What every checkpoint of this repository holds: (what, how to reach it, its type)
CHECKPOINT_PARTS = [("fingerprint", lambda c: c["fingerprint"], str),
                    ("method in its fingerprint", lambda c: json.loads(c["fingerprint"])["method"], str),
                    ("model_seed in its fingerprint", lambda c: json.loads(c["fingerprint"])["model_seed"], int),
                    ("record", lambda c: c["record"], dict), ("iters_done in its record", lambda c: c["record"]["iters_done"], int),
                    ("rng state", lambda c: c["rng"]["cpu"], torch.Tensor), ("weights of D", lambda c: c["D"], dict)]


def checkpoint_problem(ckpt):
    """What makes `ckpt` (as torch.load gave it) no checkpoint of this repository, or None."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a checkpoint's dict"
    for what, part, kind in CHECKPOINT_PARTS:
        try:
            found = part(ckpt)
        except (KeyError, TypeError, ValueError, IndexError):
            found = None
        if not isinstance(found, kind):
            return f"it has no {what} of type {kind.__name__}"
    return None


def read_checkpoint(path, dataset=None):
    """The checkpoint at `path`, checked to be one this repository wrote (CHECKPOINT_PARTS) and, where
    `dataset` is given and the checkpoint names its own (older ones do not), of that data set."""
    try:
        ckpt = core.load_checkpoint(path)
    except ValueError as err:
        empty = os.path.getsize(path) == 0  # torch says only EOFError
        raise UserError(f"{f'checkpoint {path} is empty' if empty else err}; move it away, or delete it to train that "
                        "model afresh") from None
    problem = checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"{path} is not a checkpoint of this repository ({problem}); move it away, or delete it to "
                        "train that model afresh")
    if dataset and ckpt.get("dataset", dataset) != dataset:
        raise UserError(f"{path} holds a model trained on {ckpt['dataset']}, not {dataset}: is --dataset right? (a run "
                        f"of {dataset} needs a --ckpt-dir of its own)")
    return ckpt


def checked_checkpoint(path, settings, method, seed):
    """read_checkpoint, of a model trained with `settings` (its fingerprint): one a run may resume or load."""
    ckpt = read_checkpoint(path, settings.get("dataset"))
    if ckpt["fingerprint"] != fingerprint(settings, method, seed):
        raise UserError(f"checkpoint {path} was trained with other settings; delete it, or pass --ckpt-dir to keep both")
    return ckpt


def restore(ckpt, path, modules):
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
    that several models can be trained in turn; `stop` (a StopFlag) is shared by them. With `train`,
    it holds the model's training_lock throughout."""
    with training_lock(ckpt_path, name) if train else contextlib.nullcontext():
        return (yield from locked_training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path, stop,
                                               train))


@contextlib.contextmanager
def training_lock(ckpt_path, name):
    """An exclusive lock on `<ckpt_path>.lock`, so that two processes (a second terminal, a resubmitted
    job) never train one model into one checkpoint: the second stops with a line naming the holder,
    whose pid, host and start time the file holds. flock: the kernel releases it when the holder ends,
    however it ends (kill -9 too); NFS supports it. Where the folder is not writable, neither is the
    checkpoint, so there is nothing to guard."""
    path = ckpt_path + ".lock"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        lock = open(path, "a+")
    except OSError:
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = " ".join(lock.read().split()) or "one that has not yet written its name"
            raise UserError(f"{name}: {ckpt_path} is being trained by another process ({holder}); let it finish or "
                            "stop it, or give this run another --ckpt-dir") from None
        except OSError as err:  # a file system without locks
            print(f"warning: {path} cannot be locked ({err.strerror}); nothing stops another process from training "
                  f"{name} into the same checkpoint", file=sys.stderr)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {platform.node()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


def locked_training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path, stop, train):
    s, fp = model_settings(settings, method), fingerprint(settings, method, seed)
    step, modules = core.make_step(method, D, G, s)
    step = graphed_or_eager(step, s, device, [m for m in modules.values() if isinstance(m, torch.optim.Optimizer)])
    record = {"method": method, "iters_done": 0, "train_seconds": 0.0, "history": []}
    if os.path.exists(ckpt_path):
        ckpt = checked_checkpoint(ckpt_path, settings, method, seed)
        restore(ckpt, ckpt_path, modules)
        core.set_rng_state(ckpt["rng"], device)
        record = ckpt["record"]
        if record["iters_done"] >= s["iters"]:
            print(f"{name}: finished checkpoint found ({ckpt_path}), not retrained", file=sys.stderr)
    if record["iters_done"] >= s["iters"] or not train:
        return record

    recorded = {k: s[k] for k in RECORDED_APART if k in s}

    def save(path=ckpt_path):
        try:
            core.save_checkpoint(path, {"fingerprint": fp, "record": record, "rng": core.rng_state(device), **recorded,
                                        **{k: m.state_dict() for k, m in modules.items()}})
        except Exception as err:  # a full disk, a read-only folder (torch says RuntimeError): atomic_write has kept the last good checkpoint
            raise UserError(f"{name}: training reached iteration {record['iters_done']} of {s['iters']}, but {path} "
                            f"could not be saved ({failure(err)}); {kept_checkpoint(ckpt_path)}: free some space or make "
                            "the folder writable, and run the same command to resume") from None

    batches = make_batches()
    note_held_out(record, batches, s)
    start = record["iters_done"]
    commit, dirty = GIT_AT_START  # a model may be trained over several invocations: each one is recorded
    record.setdefault("sessions", []).append({"from_iter": start, "git_commit": commit, "git_dirty": dirty,
                                              "device": device_name(device), "precision": core.precision_name(device, s["precision"]),
                                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    progress = Progress(s["iters"], f"{name} ({method})", start=start)
    sums, counts, t_start, t_saved, lr_now = {}, {}, time.time(), time.time(), None
    seconds_before = record["train_seconds"]
    for it in range(start, s["iters"]):
        if "opt_D" in modules and lr_at(it, s) != lr_now:
            lr_now = lr_at(it, s)
            core.set_learning_rate(modules["opt_D"], lr_now)
            if s["d_fresh_momentum"] and it > 0 and lr_now != lr_at(it - 1, s):  # a drop here, not a resume
                core.reset_momentum(modules["opt_D"])
        x, y = batches(it)
        # d_every > 1 (C): G's steps on every minibatch, D's only on every d_every-th, counted in minibatches
        stats = step(x, y, d_step=it % s["d_every"] == 0) if method == "advnet" and s["d_every"] > 1 else step(x, y)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0) + v.float()
            counts[k] = counts.get(k, 0) + 1
        last = it + 1 == s["iters"]
        if (it + 1) % s["log_every"] == 0 or last or stop.raised or milestone(it + 1, s):
            means = {k: v.item() / counts[k] for k, v in sums.items()}  # the one host sync per interval
            if not all(math.isfinite(v) for v in means.values()):
                raise UserError(f"{name}: loss became NaN/inf before iteration {it + 1}; stopped, {kept_checkpoint(ckpt_path)}; "
                                f"try a smaller learning rate with --set")
            record["history"].append({"iter": it + 1, "lr": lr_at(it, s), **{k: round(v, 5) for k, v in means.items()}})
            record["iters_done"] = it + 1
            record["train_seconds"] = seconds_before + time.time() - t_start
            sums, counts = {}, {}
            progress.update(it + 1, " ".join(f"{k}={v:.3f}" for k, v in means.items() if k in ("loss", "acc", "acc_adv")))
            validate_if_due(name, method, D, G, batches, s, device, it + 1, record)
            if last or stop.raised or time.time() - t_saved >= 60 * s["ckpt_minutes"]:
                save()
                t_saved = time.time()
            keep_if_due(ckpt_path, s, it + 1, record, save)
            if stop.raised:
                raise KeyboardInterrupt(f"{name}: stopped at iteration {it + 1}; checkpoint saved to {ckpt_path}")
        yield
    return record


def milestone(it, settings):
    """Whether iteration `it` (counted from 1) is one where the validation split is scored or a snapshot kept."""
    return any(settings[k] and it % settings[k] == 0 for k in ("eval_every", "keep_every"))


def note_held_out(record, batches, settings):
    """The record says which images training did not see: the results JSON carries it."""
    if getattr(batches, "held_out", None):
        record["held_out"] = {"val_n": len(batches.held_out[1]), "seed": HELD_OUT_SEED, "train_n": len(batches.images)}


def validate_if_due(name, method, D, G, batches, settings, device, it, record):
    """At every `eval_every` iterations, the validation scores of the model as it is (`validate`) join
    `record["val_history"]`; G's attack only where G is trained with D (C). A generator trained
    against a fixed D (method "generator") leaves D as it was: nothing to score."""
    if not settings["eval_every"] or it % settings["eval_every"] or method == "generator":
        return
    if getattr(batches, "held_out", None) is None:
        raise ValueError("eval_every: the batches hold no validation split (make them with batch_maker and val_n)")
    scores = validate(D, G if method == "advnet" else None, batches.held_out, settings, device)
    record.setdefault("val_history", []).append({"iter": it, **scores})
    print(f"{name}: validation at iteration {it}, {len(batches.held_out[1])} images: "
          + ", ".join(f"{k} {v}" for k, v in scores.items() if k != "seconds") + f" ({scores['seconds']} s)", file=sys.stderr)


def validate(D, G, held_out, settings, device):
    """Accuracy in percent of D on the held-out (images, labels): clean, FGS and PGD (`pgd_steps`), and
    under G's attack where G is given, in IEEE float32, batch norm as `bn_eval` says for D and in eval
    mode for G; `seconds` it took. Training goes on as if it had not run: the attacks draw their random
    starts from the global RNG seeded afresh with the run's seed (the same scores for the same weights,
    in a resumed run too), and its state is given back, as scoring_mode gives back modes and BN statistics."""
    s, (images, labels) = settings, held_out
    saved, t0 = core.rng_state(device), time.time()
    try:
        torch.manual_seed(s["seed"])
        with core.full_precision(device):
            scores = core.evaluate_table({"D": D}, {}, images, labels, s["eps"], device, s["eval_batch"], s["pgd_steps"],
                                         s["pgd_alpha"] or None, bn=s["bn_eval"], precision="float32")["D"]
            if G is not None:
                with core.scoring_mode([G]):
                    scores["generator"] = core.transfer_accuracy(
                        {"D": D}, lambda x, y: core.generator_attack(G, x, y, s["eps"]), images, labels, s["eps"], device,
                        s["eval_batch"], "float32", s["bn_eval"])["D"]
    finally:
        core.set_rng_state(saved, device)
    return scores | {"seconds": round(time.time() - t0, 2)}


def snapshot_path(ckpt_path, it):
    """Where the checkpoint `ckpt_path` as it was at iteration `it` is kept: C.pt -> C.iter1000.pt."""
    stem, ext = os.path.splitext(ckpt_path)
    return f"{stem}.iter{it}{ext}"


def keep_if_due(ckpt_path, settings, it, record, save):
    """At every `keep_every` iterations, the checkpoint is also kept as snapshot_path(ckpt_path, it), which
    nothing removes (a run resumed from before it writes the same one again). The snapshot is written
    before the running checkpoint that lists it in `record["snapshots"]`, so that a run killed between
    the two writes redoes both."""
    if not settings["keep_every"] or it % settings["keep_every"]:
        return
    if it not in record.setdefault("snapshots", []):
        record["snapshots"].append(it)
    record["best_snapshot"] = best_snapshot(record)
    save(snapshot_path(ckpt_path, it))
    save()


def best_snapshot(record):
    """The kept snapshot with the highest validation PGD accuracy (the earliest among equals), or None
    where no snapshot was scored: {iter, val_pgd, val_clean}."""
    scores = {v["iter"]: v for v in record.get("val_history", [])}
    scored = [scores[it] for it in record.get("snapshots", []) if it in scores]
    if not scored:
        return None
    best = max(scored, key=lambda v: v["pgd"])
    return {"iter": best["iter"], "val_pgd": best["pgd"], "val_clean": best["clean"]}


def failure(err):
    """An exception as one line of a message: an OSError's own words, else its type and text."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def kept_checkpoint(path):
    """What a run that stops on an error leaves for the next one to resume from, for its message."""
    if not os.path.exists(path):
        return "no checkpoint was written"
    return f"{path} keeps iteration {core.load_checkpoint(path)['record']['iters_done']}"


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


HELD_OUT_SEED = 2019  # draws the validation split: one split for every model and seed, the copies included


def held_out_split(images, labels, n):
    """((training images, labels), (held-out images, labels)): `n` images drawn by HELD_OUT_SEED are
    held out, the rest kept in their order."""
    if not isinstance(images, torch.Tensor):
        raise UserError("val_n holds out images of a data set's training images, not of a derived training set (EAT's)")
    if n >= len(images):
        raise UserError(f"val_n={n} would hold out all {len(images)} training images")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    held, kept = order[:n].sort().values, order[n:].sort().values
    return (images[kept], labels[kept]), (images[held], labels[held])


def batch_maker(seed, settings, data, device):
    """make_batches for train_model: `data()` gives the training (images, labels), asked for only when
    there is training to do. With `val_n`, those images are held out (held_out_split) and the batches
    carry them, on the device, as `held_out` (else None)."""
    def make_batches():
        images, labels = data()
        held_out, pad = None, settings["augment_pad"]
        if settings["val_n"]:
            (images, labels), held_out = held_out_split(images, labels, settings["val_n"])
        try:
            batches = core.Batches(images, labels, settings["batch_size"], seed, device,
                                   (lambda x: core.crop_flip(x, pad)) if settings["augment"] else None)
        except ValueError as err:  # a training set smaller than one batch
            raise UserError(str(err)) from None
        batches.held_out = held_out and tuple(t.to(device) for t in held_out)
        return batches
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

def configure_with(name, settings, load_data, authors=None):
    """The configure(args) of a script whose data need only --data-dir: args -> (name, settings, load)."""
    def configure(args):
        resolved = resolve_settings(settings, args, authors=authors)
        return run_name(name, args), resolved, lambda: load_data(args.data_dir)
    return configure


def dataset_main(doc, script, configure, build_D, build_G, paper_table, autoattack=None, argv=None):
    """The whole command of a data-set script: parse its command line, then run_experiment."""
    args = parse_cli(experiment_parser(doc), argv, script)
    name, settings, load = configure(args)
    return run_experiment(name, settings, args, load, build_D, build_G, reports.paper_rows(paper_table), autoattack)


def run_experiment(name, settings, args, load_data, build_D, build_G, paper=None, autoattack=None):
    """Trains the chosen models (resumably), evaluates the 9-column table (and with --strong-eval the
    strong evaluation) and writes the results JSON; with --seeds, once per seed, and the JSON adds the
    mean, standard deviation and n of every cell. With --slurm or --gpu 0,1,... the trainings and the
    evaluation run as jobs instead (jobs.launch_experiment).

    `load_data()` gives (train_images, train_labels, test_images, test_labels): uint8 (N, C, H, W)
    and int64. Models outside --models are not trained, but their finished checkpoints are evaluated.
    `autoattack` (the module autoattack_suite) adds AutoAttack to --strong-eval."""
    seeds = parse_seeds(args.seeds)
    chosen = [] if args.eval_only else parse_models(args.models)
    ckpt_dir = args.ckpt_dir or os.path.join("checkpoints", name)
    out = args.out or os.path.join("results", f"{name}.json")
    check_run(settings, args, seeds, chosen, ckpt_dir, out)
    if args.slurm is not None or len(jobs.parse_gpus(args.gpu)) > 1:
        return jobs.launch_experiment(args, seeds or [settings["seed"]], chosen, ckpt_dir)
    device = pick_device(args.gpu)
    data = load_data()
    started = time.time()
    runs = {seed: run_seed(name, settings | {"seed": seed}, args, data, build_D, build_G, device,
                           os.path.join(ckpt_dir, f"seed{seed}"), chosen, paper, autoattack)
            for seed in seeds} if seeds else {None: run_seed(name, settings, args, data, build_D, build_G, device,
                                                             ckpt_dir, chosen, paper, autoattack)}
    if args.no_eval:
        return runs
    if seeds:
        report = {"experiment": name, "protocol": settings["protocol"], "settings": settings,
                  "provenance": provenance(device, command_line(args), settings["precision"]), "seed_list": seeds, "runs": {str(seed): run for seed, run in runs.items()}}
        report["table_stats"] = reports.seed_statistics({seed: run["table"] for seed, run in runs.items()})
        report["table"] = {row: {col: cell["mean"] for col, cell in cols.items()} for row, cols in report["table_stats"].items()}
        report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
        print(reports.format_statistics(report["table_stats"], paper))
    else:
        report = runs[None]
    write_json(out, report)
    print(f"results written to {out}")
    return report


def check_run(settings, args, seeds, chosen, ckpt_dir, out):
    """What a run will read and write, checked before it trains or scores anything: every checkpoint it
    will load (checked_checkpoint), a target model (A, B or C) to evaluate unless --no-eval, and the
    folders it writes to. So a mistake costs no training, and a run with nothing to score keeps `out`."""
    for seed in seeds or [None]:
        s, folder = (settings, ckpt_dir) if seed is None else (settings | {"seed": seed}, os.path.join(ckpt_dir, f"seed{seed}"))
        specs = model_specs(s, folder, chosen)
        finished = [name for name, (method, model_seed, path, _) in specs.items() if os.path.exists(path) and
                    checked_checkpoint(path, s, method, model_seed)["record"]["iters_done"] >= model_settings(s, method)["iters"]]
        if not args.no_eval and not {"A", "B", "C"} & set(chosen + finished):
            raise UserError(f"nothing to evaluate: {folder} holds no finished checkpoint of A, B or C"
                            + ("" if args.eval_only else ", and --models trains none of them")
                            + f" (is --ckpt-dir right?); {out} is left as it is")
    if not args.eval_only or args.strong_eval:  # the strong evaluation keeps AutoAttack's state beside the checkpoints
        check_writable(ckpt_dir, "--ckpt-dir")
    if not args.no_eval:
        check_writable(os.path.dirname(os.path.abspath(out)), "--out")


def check_writable(folder, option):
    """That `folder` can be created and written to, tried now rather than at the first save: its nearest
    existing ancestor is a folder that takes a file (a temporary one). Nothing is created or left behind."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), existing)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{option}: {folder} cannot be {'written to' if os.path.isdir(folder) else 'created'} "
                        f"({failure(err)}); choose a folder you can write to") from None


def model_specs(settings, ckpt_dir, chosen):
    """The models a run prepares, those `chosen` to train and those with a checkpoint in `ckpt_dir`:
    name -> (method, seed, checkpoint path, whether to train it)."""
    specs = {}
    for model_name in ["A", "B", "C", "A'", "B'", "C'"]:
        ckpt_path = os.path.join(ckpt_dir, f"{model_name}.pt")
        if model_name in chosen or os.path.exists(ckpt_path):
            specs[model_name] = (METHODS[model_name.rstrip("'")], settings["seed"] + model_name.count("'"), ckpt_path,
                                 model_name in chosen)
    return specs


def run_seed(name, settings, args, data, build_D, build_G, device, ckpt_dir, chosen, paper, autoattack):
    """One run of the experiment with settings["seed"]: trains the chosen models, and unless --no-eval
    evaluates them; returns that run's report (the results JSON of a single-seed run)."""
    train_x, train_y, test_x, test_y = data
    started = time.time()
    report = {"experiment": name, "protocol": settings["protocol"], "settings": settings, "seeds": {},
              "provenance": provenance(device, command_line(args), settings["precision"]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": {}}
    finished, generators, specs = {}, {}, model_specs(settings, ckpt_dir, chosen)
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
    print(f"seed {settings['seed']} (copies {settings['seed'] + 1}), {settings['protocol']} protocol\n"
          f"{reports.format_table(report['table'], paper)}")
    if args.strong_eval:
        report["strong_eval"] = strong_eval_report(finished, generators.get("C"), settings, test_x, test_y, device,
                                                   autoattack, ckpt_dir)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["wall_seconds"] = round(time.time() - started, 1)
    return report


# =====================================================================================================
# Evaluating the trained models: the paper's table, and the strong evaluation
# =====================================================================================================

SCORING_PRECISION = "float32 (no core.autocast, no TF32)"  # every score, whatever `precision` trained in


def split_models(models):
    """(targets, surrogates): the models scored, and the seed copies (A', B', C') that attack them."""
    return {k: m for k, m in models.items() if "'" not in k}, {k: m for k, m in models.items() if "'" in k}


def evaluate_trained(models, settings, test_x, test_y, device):
    """The paper's 9-column table of the models (copies as surrogates), with BN as `bn_eval` says; model C,
    if present, is also scored white-box under both BN modes (`bn_comparison`). In IEEE float32, whatever
    `precision` trained in: crafted under bf16, a cell moved by up to 0.6 points (precision_study.py)."""
    n = min(settings["test_n"] or len(test_x), len(test_x))  # what is scored, not what was asked
    targets, surrogates = split_models(models)
    if not targets:
        return {}, {"n_test": 0, "seconds": 0.0, "note": "no finished target model (A, B or C)"}
    t0 = time.time()

    def score(chosen, against, bn, progress=None):
        with core.full_precision(device):
            return core.evaluate_table(chosen, against, test_x[:n], test_y[:n], settings["eps"], device, settings["eval_batch"],
                                       settings["pgd_steps"], settings["pgd_alpha"] or None, progress, bn, "float32")

    torch.manual_seed(settings["seed"])  # PGD's random start: the same numbers for the same run
    table = score(targets, surrogates, settings["bn_eval"], Progress(n, "evaluate", "img"))
    columns = ["clean", "fgs", "pgd"] + [f"{a}_{s}" for s in surrogates for a in ("fgs", "pgd")]
    evaluation = {"n_test": n, "columns": columns, "bn": settings["bn_eval"], "precision": SCORING_PRECISION}
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
              "precision": SCORING_PRECISION,
              "models": {m: {"accuracy": r, "checks": core.masking_checks(r)} for m, r in results.items()}}
    if autoattack:
        report["autoattack"] = autoattack_version(settings)
        for name, model in targets.items():
            print(f"AutoAttack's cascade on {name} ({n} images)", file=sys.stderr)
            accuracy, warnings = autoattack_cascade(autoattack, model, test_x[:n], test_y[:n], settings, device, state_dir)
            report["models"][name]["accuracy"]["autoattack"] = accuracy
            report["models"][name]["autoattack_warnings"] = warnings
    report["seconds"] = round(time.time() - t0, 1)
    print(reports.format_strong(report))
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
