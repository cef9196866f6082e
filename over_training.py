"""Robust accuracy over training: every kept snapshot of one or more models scored on the same test
images, by the paper's attacks and by stronger ones, to see whether a model's robustness holds up
under a strong attack as training goes on. Writes results/over_training.json.

Train with snapshots (keep_every) and a validation split scored as training goes (val_n, eval_every),
then score the snapshots:

    python mnist.py --fashion --gpu cpu --models B,C --iters 5000 --set g_width=8 --no-eval \\
        --set keep_every=1000 --set eval_every=1000 --set val_n=1000 --ckpt-dir checkpoints/over_training
    python over_training.py checkpoints/over_training/B.pt checkpoints/over_training/C.pt --dataset fashion_mnist

Each snapshot that a checkpoint's record lists (<model>.iter<N>.pt beside it) is scored in IEEE float32,
batch norm as `bn_eval` says, on the first `test_n` test images (1000 unless --eval-n): clean, FGS,
PGD-10 (the paper's attack), PGD-CE with `strong_steps` steps and `strong_restarts` random restarts
(100 x 5) and, for a model trained with a generator (C), that generator's attack; and on the first
`strong_n` of them (200) clean and AutoAttack's standard cascade. The JSON is written after every
snapshot: the same command again scores only what is missing, and two processes scoring different
models into one file keep each other's entries.
"""
import argparse
import json
import os
import sys
import time

import torch

import autoattack_suite
import core
import evaluate
import experiment

SCORING = dict(test_n=1000, strong_n=200)  # over the trained settings; strong_steps=100, strong_restarts=5 and
                                           # square_queries=5000 (AutoAttack's standard) come from COMMON_SETTINGS
SCORING_KEYS = ["test_n", "strong_n", "strong_steps", "strong_restarts", "square_queries", "bn_eval"]
QUICK_SCORING = {k: experiment.QUICK_SETTINGS[k] for k in ("test_n", "strong_n", "strong_steps", "strong_restarts",
                                                           "square_queries")}
ATTACKS = ["clean", "fgs", "pgd10", "pgd_ce", "generator"]  # scored on the first test_n; then autoattack on strong_n


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="running checkpoints (e.g. checkpoints/over_training/C.pt) whose kept "
                   "snapshots are scored; the model is named by the file (C)")
    p.add_argument("--dataset", required=True, choices=list(evaluate.DATASETS), help="the data set they were trained on")
    p.add_argument("--gpu", default=None, help="CUDA device index or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--data-dir", default="data", help="where torchvision finds or downloads the data set")
    p.add_argument("--out", default=os.path.join("results", "over_training.json"), help="results JSON")
    p.add_argument("--eval-n", type=int, default=None, help=f"score the first N test images (setting test_n, default "
                   f"{SCORING['test_n']}; 0 = all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting, e.g. strong_n")
    p.add_argument("--quick", action="store_true", help="a pipeline check: scoring as --quick runs score (few images, "
                   "short attacks, AutoAttack reduced)")
    args = experiment.parse_cli(p, argv, __file__)
    args.scoring = QUICK_SCORING if args.quick else SCORING
    args.quick, args.iters, args.seed, args.bn_eval = False, None, None, None  # what resolve_settings asks of a training command
    return args


def model_settings(script, trained, args):
    """A checkpoint's training settings, with the scoring settings over them (the same for every model)."""
    return experiment.resolve_settings(script.SETTINGS | trained | args.scoring, args)


def snapshots(path, ckpt):
    """(iteration, path) of each snapshot the running checkpoint at `path` lists, each one checked to be
    of the same training run (its fingerprint)."""
    listed = ckpt["record"].get("snapshots", [])
    if not listed:
        raise experiment.UserError(f"{path} lists no kept snapshots: train it with --set keep_every=N")
    found = []
    for it in listed:
        snapshot = experiment.snapshot_path(path, it)
        if not os.path.exists(snapshot):
            raise experiment.UserError(f"{snapshot}, a snapshot {path} lists, is missing")
        if core.load_checkpoint(snapshot).get("fingerprint") != ckpt["fingerprint"]:
            raise experiment.UserError(f"{snapshot} was trained with other settings than {path}")
        found.append((it, snapshot))
    return found


def score_snapshot(script, path, settings, test_x, test_y, device):
    """One snapshot's accuracies in percent (ATTACKS on the first test_n images, AutoAttack's cascade on
    the first strong_n), the iteration read from the snapshot itself."""
    ckpt = evaluate.load(path)[0]
    D, G = evaluate.build(script, settings, ckpt, path, device)
    eps, n = settings["eps"], settings["test_n"] or len(test_x)
    m = min(settings["strong_n"] or n, n)
    attacks = {"clean": lambda model, x, y: x} | core.strong_attacks(eps, settings["strong_steps"], settings["strong_restarts"])
    if G is not None:
        attacks["generator"] = lambda model, x, y: core.generator_attack(G, x, y, eps)
    it = ckpt["record"]["iters_done"]
    entry, t0 = {"iter": it, "checkpoint": os.path.abspath(path), "n_test": n}, time.time()
    score = lambda craft, k: core.transfer_accuracy({"D": D}, lambda x, y: craft(D, x, y), test_x[:k], test_y[:k], eps,
                                                    device, settings["eval_batch"], "float32", settings["bn_eval"])["D"]
    with core.scoring_mode([G] if G is not None else []), core.full_precision(device):
        for name in [a for a in ATTACKS if a in attacks]:
            print(f"{os.path.basename(path)}: {name} on {n} images", file=sys.stderr, flush=True)
            torch.manual_seed(settings["seed"])  # PGD's random starts: the same for every snapshot
            entry[name] = score(attacks[name], n)
        entry |= {"autoattack_n": m, "autoattack_clean": score(attacks["clean"], m)}
    print(f"{os.path.basename(path)}: AutoAttack's cascade on {m} images", file=sys.stderr, flush=True)
    entry["autoattack"], entry["autoattack_warnings"] = experiment.autoattack_cascade(
        autoattack_suite, D, test_x[:m], test_y[:m], settings, device, os.path.dirname(os.path.abspath(path)))
    validation = [v for v in ckpt["record"].get("val_history", []) if v["iter"] == it]
    return entry | {"validation": validation[0] if validation else None, "seconds": round(time.time() - t0, 1)}


def earlier_scores(out, scoring):
    """The models of an earlier results file scored the same way (its entries are reused), else {}."""
    try:
        with open(out) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return {}
    return earlier.get("models", {}) if earlier.get("scoring") == scoring else {}


def reusable(earlier, name, fingerprint, it):
    model = earlier.get(name, {})
    found = [e for e in model.get("snapshots", []) if e["iter"] == it] if model.get("fingerprint") == fingerprint else []
    return found[0] if found else None


def write(out, report, mine):
    """The report with this process's models `mine` and what another process has written meanwhile of
    the others (scored the same way), read and written under the file's merge lock."""
    with experiment.merge_lock(out):
        others = {k: v for k, v in earlier_scores(out, report["scoring"]).items() if k not in mine}
        experiment.write_json(out, report | {"models": others | mine})


def format_curves(models):
    lines = []
    for name, model in models.items():
        keys = [k for k in ATTACKS + ["autoattack"] if k in model["snapshots"][0]]
        lines += [f"{name}: accuracy in percent ({', '.join(keys[:-1])} on the first {model['snapshots'][0]['n_test']}; "
                  f"autoattack on the first {model['snapshots'][0]['autoattack_n']})",
                  f"{'iteration':>10}" + "".join(f"{k:>11}" for k in keys) + f"{'val pgd':>11}"]
        for e in model["snapshots"]:
            val = e["validation"]["pgd"] if e["validation"] else "-"
            lines.append(f"{e['iter']:>10}" + "".join(f"{e[k]:>11.2f}" for k in keys) + f"{val:>11}")
        best = model["best_snapshot"]
        lines.append("best snapshot on validation PGD: " + (f"iteration {best['iter']}" if best else "none scored"))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    script, load_test, _ = evaluate.DATASETS[args.dataset]
    loaded = {os.path.splitext(os.path.basename(p))[0]: (p, *evaluate.load(p)) for p in args.checkpoints}
    if len(loaded) != len(args.checkpoints):
        raise experiment.UserError("two checkpoints share a name: score them into different --out files")
    settings = {name: model_settings(script, trained, args) for name, (_, _, trained, _, _) in loaded.items()}
    found = {name: snapshots(path, ckpt) for name, (path, ckpt, *_) in loaded.items()}
    device = experiment.pick_device(args.gpu)
    scoring = {"dataset": args.dataset} | {k: next(iter(settings.values()))[k] for k in SCORING_KEYS} | {
        "precision": "float32 (no autocast, no TF32)"}
    test_x, test_y = load_test(args)
    started = time.time()
    report = {"experiment": "over_training", "dataset": args.dataset, "scoring": scoring, "attacks": ATTACKS + ["autoattack"],
              "provenance": experiment.provenance(device, experiment.command_line(args), "float32"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    earlier, mine = earlier_scores(args.out, scoring), {}
    for name, (path, ckpt, trained, method, seed) in loaded.items():
        s = settings[name]
        mine[name] = {"checkpoint": os.path.abspath(path), "method": method, "seed": seed, "fingerprint": ckpt["fingerprint"],
                      "trained_settings": trained, "autoattack": experiment.autoattack_version(s),
                      "model": {k: v for k, v in ckpt["record"].items() if k != "history"},
                      "best_snapshot": ckpt["record"].get("best_snapshot"), "snapshots": []}
        for it, snapshot in found[name]:
            entry = reusable(earlier, name, ckpt["fingerprint"], it)
            mine[name]["snapshots"].append(entry or score_snapshot(script, snapshot, s, test_x, test_y, device))
            write(args.out, report | {"wall_seconds": round(time.time() - started, 1)}, mine)
    report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
    write(args.out, report, mine)
    print(format_curves(mine))
    print(f"results written to {args.out}")
    return report | {"models": mine}


if __name__ == "__main__":
    experiment.exit_on_error(main)
