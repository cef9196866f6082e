"""Reading checkpoints: each part checked where it enters, matched to the settings by fingerprint, and
restored into the models."""
import json
import os

import torch

import core
from runner.errors import UserError, failure
from runner.settings import NEUTRAL_SETTINGS, fingerprint


# What every checkpoint of this repository holds: (what, how to reach it, its type)
CHECKPOINT_PARTS = [("fingerprint", lambda c: c["fingerprint"], str),
                    ("method in its fingerprint", lambda c: json.loads(c["fingerprint"])["method"], str),
                    ("model_seed in its fingerprint", lambda c: json.loads(c["fingerprint"])["model_seed"], int),
                    ("record", lambda c: c["record"], dict), ("iters_done in its record", lambda c: c["record"]["iters_done"], int),
                    ("rng state", lambda c: c["rng"]["cpu"], torch.Tensor)]
TRAINED_ALONE = {"generator": "G"}  # the weights a method's checkpoint holds (core.make_step), where they are not D's


def weights_part(ckpt):
    """The part naming the weights a checkpoint must hold: G's for a generator trained alone (Table 5),
    D's for every other method."""
    net = TRAINED_ALONE.get(json.loads(ckpt["fingerprint"])["method"], "D")
    return f"weights of {net}", lambda c: c[net], dict


def checkpoint_problem(ckpt):
    """What makes `ckpt` (as torch.load gave it) no checkpoint of this repository, or None."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a checkpoint's dict"
    for what, part, kind in CHECKPOINT_PARTS:
        if not isinstance(reach(part, ckpt), kind):
            return f"it has no {what} of type {kind.__name__}"
    what, part, kind = weights_part(ckpt)  # the parts above are sound, so the method can be read
    return None if isinstance(reach(part, ckpt), kind) else f"it has no {what} of type {kind.__name__}"


def reach(part, ckpt):
    try:
        return part(ckpt)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def read_checkpoint(path, dataset=None):
    """The checkpoint at `path`, checked to be one this repository wrote (CHECKPOINT_PARTS) and, where
    `dataset` is given and the checkpoint names its own (older ones do not), of that data set."""
    try:
        ckpt = core.load_checkpoint(path)
    except ValueError as err:
        empty = os.path.getsize(path) == 0
        raise UserError(f"{f'checkpoint {path} is empty' if empty else err}; move it away, or delete it to train that "
                        "model afresh") from None
    problem = checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"{path} is not a checkpoint of this repository ({problem}); move it away, or delete it to "
                        "train that model afresh")
    broken = non_finite(ckpt)
    if broken:
        raise UserError(f"{path} holds weights that are not finite (NaN or inf, first in {broken}): a model that "
                        "cannot be scored or trained on; delete it to train that model afresh")
    if dataset and ckpt.get("dataset", dataset) != dataset:
        raise UserError(f"{path} holds a model trained on {ckpt['dataset']}, not {dataset}: is --dataset right? (a run "
                        f"of {dataset} needs a --ckpt-dir of its own)")
    return ckpt


def non_finite(ckpt):
    """The first of a checkpoint's weights (D's, G's) that holds a NaN or an infinity, as `D.<name>`, or None."""
    for net in ("D", "G"):
        for name, tensor in ckpt.get(net, {}).items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"{net}.{name}"
    return None


def checked_checkpoint(path, settings, method, seed):
    """read_checkpoint, of a model trained with `settings` (its fingerprint): one a run may resume or load."""
    ckpt = read_checkpoint(path, settings.get("dataset"))
    trained, expected = json.loads(ckpt["fingerprint"]), json.loads(fingerprint(settings, method, seed))
    unknown = sorted(set(trained) - set(expected) - set(settings))
    if unknown:
        raise UserError(f"checkpoint {path} was trained with settings this version does not know ({', '.join(unknown)}): "
                        "it comes from another version of this repository; resume it with that version, or pass "
                        "--ckpt-dir to train afresh")
    if trained != expected:
        value = lambda fp, k: fp.get(k, NEUTRAL_SETTINGS.get(k, "none"))  # left out: at its neutral value, or unset
        apart = [f"{k} {value(trained, k)} against {value(expected, k)}" for k in sorted(set(trained) | set(expected))
                 if value(trained, k) != value(expected, k)]
        raise UserError(f"checkpoint {path} was trained with other settings ({', '.join(apart)} here); delete it, "
                        "or pass --ckpt-dir to keep both")
    return ckpt


def restore(ckpt, path, modules):
    try:
        for key, module in modules.items():
            module.load_state_dict(ckpt[key])
            if isinstance(module, torch.optim.Optimizer):  # its rate comes back as a float or a CPU tensor
                core.set_learning_rate(module, float(module.param_groups[0]["lr"]))
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(f"checkpoint {path} does not match this model ({failure(err)}); delete it to retrain") from None


def kept_checkpoint(path):
    """What a run that stops on an error leaves for the next one to resume from, for its message."""
    if not os.path.exists(path):
        return "no checkpoint was written"
    return f"{path} keeps iteration {core.load_checkpoint(path)['record']['iters_done']}"
