"""Settings: the dicts every script shares, the protocols' tables, checked overrides and ranges, the
fingerprint that matches a checkpoint to its settings, and the learning-rate schedule."""
import difflib
import json

import core
from runner.errors import UserError, kind_name


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
    pgd_warmup_iters=0,      # B: iterations over which its training radius grows linearly from eps/n to eps (0: none)
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
    val_n=0,                 # images of a validation split, the same for every model (and seed); 0 = none
    val_from="training",     # where they come from: training (drawn by HELD_OUT_SEED from the training images, which
                             # lose them), or unused (the first val_n of the train_from images no model trains on:
                             # training is then that of val_n=0, and the split is not in the fingerprint)
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
                        eat_bn="running", train_from=0, val_from="training", pgd_warmup_iters=0)
NETS = ("paper", "authors")
PROTOCOLS = ("paper", "authors")
VAL_FROM = ("training", "unused")
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
    lam="[0, inf)", gamma="(-inf, inf)", fd_h="[0, inf)", pgd_steps="[1, inf)", pgd_alpha="[0, 1]", pgd_warmup_iters="[0, inf)",
    test_n="[0, inf)", eval_batch="[1, inf)", log_every="[1, inf)", ckpt_minutes="[0, inf)", strong_n="[0, inf)",
    strong_steps="[1, inf)", strong_restarts="[1, inf)", square_queries="[1, inf)", eat_n="[0, inf)", val_n="[0, inf)",
    eval_every="[0, inf)", keep_every="[0, inf)",
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
        raise UserError(f"--set {key}={text}: {key} takes {kind_name(kind)}, not {text!r} "
                        f"(the default is {default!r})") from None


# Settings that --set does not change, and what does
FIXED_SETTINGS = {key: f"the protocol is chosen with --protocol {{{','.join(PROTOCOLS)}}}"
                  for key in ("protocol", "protocol_source", "model_overrides")}
FIXED_SETTINGS["dataset"] = "the data set is the script's (mnist.py --fashion for Fashion-MNIST)"


def apply_overrides(settings, pairs, settable=None, why_not=""):
    """`settings` with --set's key=value `pairs` applied, each checked: a key among `settable` (default:
    every setting but FIXED_SETTINGS), a value of its default's type. A known key outside `settable` is
    refused with `why_not`."""
    settings = dict(settings)
    settable = sorted(settable or set(settings) - set(FIXED_SETTINGS))
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UserError(f"--set {pair}: write key=value")
        if key in FIXED_SETTINGS:
            raise UserError(f"--set {key}: {FIXED_SETTINGS[key]}")
        if key not in settable:
            raise UserError(unsettable(key, settable, why_not if key in settings else "unknown setting"))
        settings[key] = parse_value(key, text, settings[key])
    return settings


def unsettable(key, settable, why):
    """The line that refuses --set `key`: why, the closest settable key, and every settable one."""
    close = difflib.get_close_matches(key, settable, n=1)
    return (f"--set {key}: {why}; " + (f"did you mean {close[0]}? " if close else "")
            + f"settable: {', '.join(settable)}")


def resolve_settings(base, args, preset=None, authors=None, settable=None, why_not=""):
    """base <- the protocol <- preset (e.g. Fashion-MNIST) <- --quick <- --iters/--seed <- --set, each checked.

    --protocol paper (the default) keeps `base`, the script's settings from the paper. --protocol authors
    adds AUTHORS_SETTINGS and the script's table of the authors' values, `authors`: its entries A, B, C
    and EAT hold one model's own values, kept in `model_overrides` for model_settings to apply. A value set
    by a later layer (the preset, --quick, --iters, ..., --set) is every model's. `settable` and `why_not`
    narrow --set (apply_overrides)."""
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
    s = apply_overrides(s | later | {"protocol": protocol}, args.set, settable, why_not)
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
    if s["val_from"] not in VAL_FROM:
        raise UserError(f"val_from must be one of {', '.join(VAL_FROM)}, not {s['val_from']!r}")
    if s["val_from"] == "unused" and s["val_n"] > s.get("train_from", 0):
        raise UserError(f"val_from=unused takes the validation split from the first train_from={s.get('train_from', 0)} "
                        f"training images, which no model trains on: val_n={s['val_n']} is more than those")
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
            raise KeyError(f"setting {key} has no entry in SETTING_RANGES")
        if not in_range(value, SETTING_RANGES[key]):
            raise UserError(f"{key}={value} is outside its range {SETTING_RANGES[key]}")


RUNTIME_SETTINGS = {"test_n", "eval_batch", "log_every", "ckpt_minutes", "bn_eval", "strong_n", "strong_steps",
                    "strong_restarts", "square_queries", "compile", "precision",
                    "cuda_graphs", "concurrent_models", "eval_every", "keep_every", "protocol_source"}


# Recorded in a checkpoint beside its fingerprint, not in it: added later, it would have changed every fingerprint
RECORDED_APART = {"dataset"}


METHOD_ONLY = {"eat_bn": "eat", "pgd_warmup_iters": "pgd"}  # settings that only one method's fingerprint names


def unnamed_neutral(trained, method):
    """The NEUTRAL_SETTINGS a fingerprint's settings `trained` leave out because its `method` model was
    trained at their neutral value (not those a fingerprint leaves out at any value: the other methods'
    METHOD_ONLY and the validation split's val_from)."""
    return {k: v for k, v in NEUTRAL_SETTINGS.items()
            if k not in trained and METHOD_ONLY.get(k, method) == method and k != "val_from"}


def fingerprint(settings, method, seed):
    """What a model's checkpoint must have been trained with to be resumed or loaded: its model_settings
    less the runtime ones and those RECORDED_APART, and less NEUTRAL_SETTINGS at their neutral values
    (the paper protocol's, which older checkpoints do not name). So a checkpoint of one protocol never
    resumes under the other."""
    kept = {k: v for k, v in sorted(model_settings(settings, method).items())
            if k not in RUNTIME_SETTINGS | RECORDED_APART and not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])}
    if method != "eat" or not kept.get("eat_n"):  # eat_n=0, the whole set, is how EAT checkpoints older than it were made
        kept.pop("eat_n", None)
    for key, only in METHOD_ONLY.items():
        if method != only:
            kept.pop(key, None)
    if not kept.get("val_n") or kept.get("val_from") == "unused":  # training as every checkpoint older than val_n
        kept.pop("val_n", None), kept.pop("val_from", None)
    return json.dumps(kept | {"method": method, "model_seed": seed})


def lr_at(it, settings):
    """D's learning rate: `d_lr`, times `d_lr_drop_factor` from the fraction `d_lr_drop_at` of the run on,
    and `d_lr` times `d_lr_drop2_factor` from the fraction `d_lr_drop2_at` on."""
    s, at = settings, lambda fraction: int(fraction * settings["iters"])
    if it >= at(s.get("d_lr_drop2_at", NEUTRAL_SETTINGS["d_lr_drop2_at"])):
        return s["d_lr"] * s["d_lr_drop2_factor"]
    return s["d_lr"] * (s["d_lr_drop_factor"] if it >= at(s["d_lr_drop_at"]) else 1.0)


METHODS = {"A": "standard", "B": "pgd", "C": "advnet"}
