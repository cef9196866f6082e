"""Validation during training: the held-out split, its scores at `eval_every`, and the snapshots kept at
`keep_every`."""
import os
import sys
import time

import torch

import core
from runner.errors import UserError


def milestone(it, settings):
    """Whether iteration `it` (counted from 1) is one where the validation split is scored or a snapshot kept."""
    return any(settings[k] and it % settings[k] == 0 for k in ("eval_every", "keep_every"))


def note_held_out(record, batches, settings):
    """The record says which images the validation split holds: the results JSON carries it."""
    if getattr(batches, "held_out", None):
        drawn = {"seed": HELD_OUT_SEED} if settings["val_from"] == "training" else {"val_from": "unused"}
        record["held_out"] = {"val_n": len(batches.held_out[1]), **drawn, "train_n": len(batches.images)}


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
