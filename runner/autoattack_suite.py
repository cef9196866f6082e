"""AutoAttack (Croce & Hein 2020) for --strong-eval, from its official implementation (the package
pyautoattack, fra31/auto-attack's code). Kept out of core.py, which needs only torch and numpy.

- `cascade`: the standard version's robust accuracy, each attack run on the images the ones before
  it left standing; the headline number, as RobustBench reports it. Resumable: AutoAttack's state
  file (the images still standing, the attacks done) is kept under the checkpoints. It says on stderr
  which attack runs, each batch it perturbs and the accuracy after each attack (`Reported`).
- `attacks`: its four attacks (APGD-CE, APGD-T, FAB-T, Square) each alone on every image, as attack
  functions craft(model, x, y) -> x_adv for core.strong_evaluation, so that the masking checks
  compare what each one achieves by itself.

AutoAttack never sets the model's mode (the caller's core.scoring_mode does, with batch norm's
running statistics frozen); a run that changed it anyway is an error. It reseeds torch's global
generator: each run gets its own, so that the attacks after it draw what they would have drawn.
The warnings of its checks (randomised or dynamic defence, probabilities for logits, too many
target classes, zero gradients, Square stronger than the rest) are returned for the results JSON.
"""
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import pathlib

import torch

import core
from runner import files
from runner.errors import UserError
from runner.progress import stamped

NAMES = {"apgd_ce": "apgd-ce", "apgd_t": "apgd-t", "fab_t": "fab-t", "square": "square"}  # ours -> AutoAttack's, in its order


def package():
    try:
        import pyautoattack
    except ImportError:
        raise UserError("--strong-eval needs AutoAttack: pip install -r requirements.txt (package pyautoattack)") from None
    return pyautoattack


def standard(model, settings, device):
    """AutoAttack's standard Linf version at the settings' eps and seed, with `strong_steps` iterations
    of APGD and FAB and `square_queries` queries of Square (100 and 5000 in the standard version)."""
    aa = package().AutoAttack(model, norm="Linf", eps=settings["eps"], version="standard", device=device,
                              seed=settings["seed"])
    steps = settings["strong_steps"]
    for apgd in (aa.apgd, aa.apgd_targeted):  # its step-size schedule, derived from n_iter as APGDAttack.__init__ does
        apgd.n_iter = apgd.n_iter_orig = steps
        apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
    aa.fab.n_iter = steps
    aa.square.n_queries = settings["square_queries"]
    return aa


class Collected(logging.Handler):
    """AutoAttack's checks log their warnings on the "auto-attack" logger: gathered here, each once."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        if record.getMessage() not in self.messages:
            self.messages.append(record.getMessage())


class Reported(logging.Handler):
    """AutoAttack's own account of its progress (each attack as it starts, each batch it perturbs, the
    robust accuracy after each attack: its logger's debug lines) on stderr, each line timestamped and
    naming the images it was given, so that a cascade of an hour on a CPU says where it is. Its
    percentages are of those images: on a resumed cascade, of the images still standing."""

    def __init__(self, images):
        super().__init__(logging.DEBUG)
        self.images = images

    def emit(self, record):
        if record.levelno < logging.WARNING:  # its warnings are returned, and written to the results
            stamped(f"AutoAttack's cascade {self.images}: {record.getMessage()}")


@contextlib.contextmanager
def reported(images):
    """AutoAttack's debug lines through `Reported` while in the context, and only there: its logger's
    level, handlers and propagation are as they were afterwards, even after an interruption."""
    logger, handler = logging.getLogger("auto-attack"), Reported(images)
    before = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # a caller's own logging setup would print each debug line again
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


@contextlib.contextmanager
def guarded(model, device):
    """Collects AutoAttack's warnings, gives it its own random generator and checks it left the model's mode alone."""
    handler, logger, training = Collected(), logging.getLogger("auto-attack"), model.training
    logger.addHandler(handler)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield handler.messages
    finally:
        logger.removeHandler(handler)
    if model.training != training:
        raise RuntimeError("AutoAttack changed the model's train/eval mode")


@contextlib.contextmanager
def atomic_state_writes():
    """pyautoattack writes its state file in place (open "w"): a kill or a power cut mid-write would
    leave it torn. Within this context its writes go through core.atomic_write, with the same content,
    and none is skipped: pyautoattack skips the one marking an attack done when it saved the robust flags
    less than a minute before, so a cut in the next attack's first batch would lose the mark."""
    state_class = package().state.EvaluationState
    in_place = state_class.to_disk

    def to_disk(self, force=False):
        if self.path is None:
            return
        self._last_saved = datetime.datetime.now()
        state = dataclasses.asdict(self) | {"_run_attacks": list(self._run_attacks)}
        if self.robust_flags is not None:
            state["_robust_flags"] = self.robust_flags.cpu().tolist()
        core.atomic_write(self.path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(state, default=str)))

    state_class.to_disk = to_disk
    try:
        yield
    finally:
        state_class.to_disk = in_place


def run(aa, model, x, y, batch_size, state_path=None):
    """AutoAttack's run_standard_evaluation, guarded: (x_adv, warnings), x_adv checked against the threat model."""
    with guarded(model, x.device) as warnings, atomic_state_writes():
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state_path)
    core.check_threat_model(x_adv, x, aa.epsilon)
    return x_adv, warnings


def attacks(settings):
    """name -> craft(model, x, y): each of the standard version's attacks alone. Their checks' warnings
    are those the cascade records for the same model, so they are dropped here."""
    package()

    def crafter(name):
        def craft(model, x, y):
            aa = standard(model, settings, x.device)
            aa.attacks_to_run = [NAMES[name]]  # as AutoAttack's own run_standard_evaluation_individual
            return run(aa, model, x, y, len(x))[0]
        return craft

    return {name: crafter(name) for name in NAMES}


def state_file(state_dir, model, settings, images, labels, bn, device):
    """Where the cascade's state of this model (by its weights), these images (as given, before any
    conversion), settings and batch size (AutoAttack draws each batch's random starts from its seed, and
    with bn="batch" the batch sets the statistics too), device type and versions is kept."""
    description = [len(images), bn, package().__version__, torch.__version__, core.as_device(device).type] + [
        settings[k] for k in ("eps", "seed", "eval_batch", "strong_steps", "square_queries")]
    return files.state_path(state_dir, "autoattack", description, [images, labels] + files.weights({"model": model}))


def read_state(path):
    """(images still standing, attacks done) from AutoAttack's state file; None if there is none or it
    is unusable (written before the clean pass ended, or cut short by the interruption)."""
    try:
        with open(path) as f:
            state = json.load(f)
        return torch.tensor(state["_robust_flags"], dtype=torch.bool), set(state["_run_attacks"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


def cascade(model, x, y, settings, batch_size, state_path, left=tuple(NAMES.values())):
    """The cascade of the attacks `left` (the standard version's four) on (x, y): (per-example robust
    flags, warnings of AutoAttack's checks), resumed from AutoAttack's state file at `state_path`.

    pyautoattack 0.2.0 cannot resume from its state itself (run_standard_evaluation then returns a
    `y_adv` it never set), so the attacks not yet done run afresh on the images still standing, with
    a state file of their own; the warnings of each finished run are kept beside its state."""
    state_path = pathlib.Path(state_path)
    said = state_path.with_suffix(".warnings.json")
    state = read_state(state_path)
    if state is None or not state[1] & set(left):
        # unusable (cut before its clean pass ended) it would fail pyautoattack's read; cut before any of its
        # attacks ended, resuming it would only nest another state file for the same attacks
        state_path.unlink(missing_ok=True)
        os.makedirs(state_path.parent, exist_ok=True)
        aa = standard(model, settings, x.device)
        aa.attacks_to_run = list(left)
        resumed = tuple(left) != tuple(NAMES.values())  # a cascade resumed runs its attacks left on the images standing
        with reported(f"on the {len(x)} images still standing" if resumed else f"on {len(x)} images"):
            _, warnings = run(aa, model, x, y, batch_size, state_path)
        files.write_json(said, warnings)
        return read_state(state_path)[0].to(x.device), warnings
    flags, done = state
    flags, left = flags.to(x.device), [a for a in left if a not in done]
    warnings = json.loads(said.read_text()) if said.exists() else []
    standing = flags.nonzero().squeeze(1)
    if left and len(standing):
        stamped(f"AutoAttack's cascade resumed from {state_path.name}: {', '.join(a for a in NAMES.values() if a in done)} "
                f"done, {len(standing)} of {len(x)} images still standing")
        flags[standing], more = cascade(model, x[standing], y[standing], settings, batch_size,
                                        state_path.with_suffix(f".{left[0]}.json"), left)
        warnings += [w for w in more if w not in warnings]
        stamped(f"AutoAttack's cascade: {int(flags.sum())} of {len(x)} images robust after all its attacks")
    return flags, warnings
