"""Training models: the resumable, interruptible loop with its lock, and several models trained one
after another or concurrently."""
import contextlib
import fcntl
import math
import os
import platform
import sys
import time

import torch

import core
from runner.checkpoints import checked_checkpoint, kept_checkpoint, read_checkpoint, restore
from runner.errors import UserError, advice, failure
from runner.progress import Progress, StopFlag
from runner.provenance import GIT_AT_START, device_name
from runner.settings import RECORDED_APART, fingerprint, lr_at, model_settings
from runner.validation import held_out_split, keep_if_due, milestone, note_held_out, validate_if_due


def train_model(name, method, seed, D, G, make_batches, settings, device, ckpt_path, train=True, later=0):
    """Trains (or resumes, or skips if finished) one model; `train=False` only loads a checkpoint.
    Returns the model's record for the results JSON (iters_done < iters: unfinished). `make_batches()`
    gives the batch source (iteration -> (x, y)); it is called only if there is training to do.

    A checkpoint is written every `ckpt_minutes` at a logging boundary, at the end, and when the run
    is interrupted (SIGINT/SIGTERM, between iterations). A NaN/inf loss stops the run with the last
    good checkpoint kept. `later`: the iterations of the run's models still to train after this one,
    for the progress line's ETA of the whole run."""
    with StopFlag() as stop:
        return run_in_turn({name: training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path,
                                               stop, train, later)}, device, streams=False)[name]


def training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path, stop, train=True, later=0):
    """train_model's work as a generator that yields after every iteration and returns the record, so
    that several models can be trained in turn; `stop` (a StopFlag) is shared by them. With `train`,
    it holds the model's training_lock throughout."""
    with training_lock(ckpt_path, name) if train else contextlib.nullcontext():
        return (yield from locked_training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path, stop,
                                               train, later))


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


def locked_training_run(name, method, seed, D, G, make_batches, settings, device, ckpt_path, stop, train, later):
    s, fp = model_settings(settings, method), fingerprint(settings, method, seed)
    step, modules = core.make_step(method, D, G, core.step_settings(s))
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
            remedy = advice(err) if isinstance(err, OSError) else "free some space or make the folder writable"
            raise UserError(f"{name}: training reached iteration {record['iters_done']} of {s['iters']}, but {path} "
                            f"could not be saved ({failure(err)}); {kept_checkpoint(ckpt_path)}: {remedy}, and run "
                            "the same command to resume") from None

    batches = make_batches()
    note_held_out(record, batches, s)
    start = record["iters_done"]
    commit, dirty = GIT_AT_START  # a model may be trained over several invocations: each one is recorded
    record.setdefault("sessions", []).append({"from_iter": start, "git_commit": commit, "git_dirty": dirty,
                                              "device": device_name(device), "precision": core.precision_name(device, s["precision"]),
                                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    progress = Progress(s["iters"], f"{name} ({method})", start=start, later=later, on_cpu=device.type == "cpu")
    sums, counts, t_start, t_saved, lr_now, warned_stuck = {}, {}, time.time(), time.time(), None, False
    seconds_before, n_classes = record["train_seconds"], s.get("n_classes", 10)
    for it in range(start, s["iters"]):
        if "opt_D" in modules and lr_at(it, s) != lr_now:
            lr_now = lr_at(it, s)
            core.set_learning_rate(modules["opt_D"], lr_now)
            if s["d_fresh_momentum"] and it > 0 and lr_now != lr_at(it - 1, s):  # a drop here, not a resume
                core.reset_momentum(modules["opt_D"])
        x, y = batches(it)
        options = step_options(method, it, s)
        stats = step(x, y, **options)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0) + v.float()
            counts[k] = counts.get(k, 0) + 1
        last = it + 1 == s["iters"]
        if (it + 1) % s["log_every"] == 0 or last or stop.raised or milestone(it + 1, s):
            means = {k: v.item() / counts[k] for k, v in sums.items()}  # the one host sync per interval
            if not all(math.isfinite(v) for v in means.values()):
                raise UserError(f"{name}: loss became NaN/inf before iteration {it + 1}; stopped, {kept_checkpoint(ckpt_path)}; "
                                f"try a smaller learning rate with --set")
            entry = {"iter": it + 1, "lr": lr_at(it, s), **{k: round(v, 5) for k, v in means.items()}}
            if "eps" in options:  # B in its warm-up: the interval's last radius
                entry["eps"] = round(options["eps"], 5)
            record["history"].append(entry)
            record["iters_done"] = it + 1
            record["train_seconds"] = seconds_before + time.time() - t_start
            sums, counts = {}, {}
            progress.update(it + 1, " ".join(f"{k}={v:.3f}" for k, v in means.items() if k in ("loss", "acc", "acc_adv")))
            if not warned_stuck and stuck_at_chance(record["history"], n_classes):
                print(stuck_warning(name, method, n_classes, s["pgd_warmup_iters"]), file=sys.stderr)
                warned_stuck = True
            validate_if_due(name, method, D, G, batches, s, device, it + 1, record)
            if last or stop.raised or time.time() - t_saved >= 60 * s["ckpt_minutes"]:
                save()
                t_saved = time.time()
            keep_if_due(ckpt_path, s, it + 1, record, save)
            if stop.raised:
                raise KeyboardInterrupt(f"{name}: stopped at iteration {it + 1}; checkpoint saved to {ckpt_path}")
        yield
    return record


STUCK_ITERS = 500  # iterations a model's cross-entropies must sit at ln(n_classes) before it is called stuck


def stuck_at_chance(history, n_classes):
    """Whether every cross-entropy the training step reports (`cross_entropies`) has stayed between
    ln(n_classes) - 0.1 and ln(n_classes) + 0.01 over the last STUCK_ITERS iterations of `history`: the
    model gives every image the same probabilities. A network whose ReLUs have died still learns the
    class frequencies in its output bias, so its loss is their entropy, up to 0.07 under ln 10 (SVHN)."""
    if not history or history[-1]["iter"] < STUCK_ITERS:
        return False
    recent = [h for h in history if h["iter"] > history[-1]["iter"] - STUCK_ITERS]
    return all(-0.1 < ce - math.log(n_classes) < 0.01 for h in recent for ce in cross_entropies(h))


def cross_entropies(entry):
    """The cross-entropies of a history entry: the clean and adversarial ones where the step reports them
    apart (B, C), else its loss (A, EAT)."""
    return [entry[k] for k in ("loss_clean", "loss_adv") if k in entry] or [entry["loss"]]


def stuck_warning(name, method, n_classes, warmup):
    if method != "pgd":
        remedy = "with a smaller learning rate"
    elif warmup:
        remedy = f"with a longer warm-up of its radius (--set pgd_warmup_iters={2 * warmup})"
    else:
        remedy = "with its radius warmed up (--set pgd_warmup_iters=1000)"
    return (f"warning: {name}: its training cross-entropy has sat at ln {n_classes} = {math.log(n_classes):.3f} for "
            f"{STUCK_ITERS} iterations: it gives every image the same probabilities, as a network whose ReLUs have "
            f"all died does, and such a network rarely recovers. Stop it, and train it afresh {remedy}")


def step_options(method, it, s):
    """What iteration `it`'s step takes beyond its batch: with d_every > 1 (C), G steps on every minibatch
    and D only on every d_every-th; with pgd_warmup_iters (B), the warm-up's radius."""
    if method == "advnet" and s["d_every"] > 1:
        return {"d_step": it % s["d_every"] == 0}
    if method == "pgd" and it < s["pgd_warmup_iters"]:
        return {"eps": core.warmup_eps(s["eps"], it, s["pgd_warmup_iters"])}
    return {}


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
    graph (`cuda_graphs`) with the `optimizers` it steps. A graph replays one fixed step, so a call with
    B's warm-up radius (`eps`) runs eagerly; GraphedStep's own warm-up and capture start with the first
    call without it. C's alternating steps (`d_step`) are refused with cuda_graphs (check_model_settings)."""
    if not settings["cuda_graphs"]:
        return step
    check_device(settings, device)
    graphed = core.GraphedStep(step, device, optimizers=optimizers)

    def replayed(x, y, **options):
        if options.keys() - {"eps"}:
            raise ValueError(f"a graphed step cannot take {sorted(options.keys() - {'eps'})}")
        if options:
            return step(x, y, **options)
        try:
            return graphed(x, y)
        except RuntimeError as err:
            if graphed.graph is None or graphed.replays:  # a warm-up or a replay failed, not the capture
                raise
            raise UserError(f"cuda_graphs=true: the step could not be captured as a CUDA graph ({err}); "
                            "run without --set cuda_graphs=true") from None
    return replayed


def check_device(settings, device):
    """That the settings can train on `device`: cuda_graphs needs CUDA."""
    if settings["cuda_graphs"] and device.type != "cuda":
        raise UserError("cuda_graphs=true needs a CUDA device; drop it on the CPU")


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
    there is training to do, and with val_from=unused the validation split as a third item. With `val_n`,
    the batches carry that split, on the device, as `held_out` (else None): with val_from=training it is
    held out of the training images (held_out_split)."""
    def make_batches():
        images, labels, *unused = data()
        held_out, pad = None, settings["augment_pad"]
        if settings["val_n"] and settings["val_from"] == "unused":
            if not unused:
                raise UserError("val_from=unused: this command does not set aside the unused training images "
                                "(train_from) that the validation split would come from; use val_from=training")
            held_out = unused[0]
        elif settings["val_n"]:
            (images, labels), held_out = held_out_split(images, labels, settings["val_n"])
        try:
            batches = core.Batches(images, labels, settings["batch_size"], seed, device,
                                   (lambda x: core.crop_flip(x, pad)) if settings["augment"] else None)
        except ValueError as err:  # a training set smaller than one batch
            raise UserError(str(err)) from None
        batches.held_out = held_out and tuple(t.to(device) for t in held_out)
        return batches
    return make_batches


def prepare_model(name, method, seed, settings, build_D, build_G, data, device, ckpt_path, train=True, later=0):
    """Builds D and G with `seed`, then trains, resumes or just loads them (train_model). Returns (D, G, record)."""
    D, G = build_models(seed, settings, build_D, build_G, device)
    return D, G, train_model(name, method, seed, D, G, batch_maker(seed, settings, data, device), settings, device,
                             ckpt_path, train, later)


def model_iterations_left(method, path, train, settings):
    """The iterations one model, trained with `settings`, still has to train: all of them without a
    checkpoint at `path`, the rest with one, none when it is not to be trained."""
    if not train:
        return 0
    iters = model_settings(settings, method)["iters"]
    return max(iters - read_checkpoint(path)["record"]["iters_done"], 0) if os.path.exists(path) else iters


def iterations_left(specs, settings):
    """model_iterations_left of the models in `specs` (name -> (method, seed, ckpt_path, train)), all
    trained with `settings`: name -> count."""
    return {name: model_iterations_left(method, path, train, settings) for name, (method, _, path, train) in specs.items()}


def iterations_after_each(left, beyond=0):
    """name -> the iterations a run trains after that one, for its ETA: those of the names after it in
    `left` (name -> iterations, in the run's order), and `beyond`, what comes after them all."""
    counts = list(left.values())
    return {name: beyond + sum(counts[i + 1:]) for i, name in enumerate(left)}


def prepare_models(specs, settings, build_D, build_G, data, device, later=0):
    """prepare_model for several models, specs: name -> (method, seed, ckpt_path, train). One after
    another or, with `concurrent_models`, all at once (run_in_turn): a batch-64 model leaves most of
    a GPU idle. Concurrent runs share the global RNG in turn, so they are not bitwise those of a
    sequential run (nor is a resumed one exact); each model keeps its own checkpoint. `later`: the
    iterations the run will train after these models, for the ETA of the whole run. Returns
    name -> (D, G, record)."""
    if not settings["concurrent_models"]:
        after = iterations_after_each(iterations_left(specs, settings), later)
        return {name: prepare_model(name, method, seed, settings, build_D, build_G, data, device, path, train, after[name])
                for name, (method, seed, path, train) in specs.items()}
    built = {name: build_models(spec[1], settings, build_D, build_G, device) for name, spec in specs.items()}
    with StopFlag() as stop:
        runs = {name: training_run(name, method, seed, *built[name], batch_maker(seed, settings, data, device),
                                   settings, device, path, stop, train, later)
                for name, (method, seed, path, train) in specs.items()}
        records = run_in_turn(runs, device)
    return {name: (*built[name], records[name]) for name in specs}
