"""Robust accuracy over training: every kept snapshot of one or more models scored on the same test
images, by the paper's attacks and by stronger ones, to see whether a model's robustness holds up
under a strong attack as training goes on. Writes results/over_training.json.

Train with snapshots (keep_every) and a validation split scored as training goes (val_n, eval_every),
then score the snapshots:

    python mnist.py --fashion --gpu cpu --models B,C --iters 5000 --set g_width=8 --no-eval \\
        --set keep_every=1000 --set eval_every=1000 --set val_n=1000 --ckpt-dir checkpoints/over_training
    python tools/over_training.py checkpoints/over_training/B.pt checkpoints/over_training/C.pt --dataset fashion_mnist

Each snapshot that a checkpoint's record lists (<model>.iter<N>.pt beside it) is scored in IEEE float32,
batch norm as `bn_eval` says, on the first `test_n` test images (1000 unless --eval-n): clean, FGS,
PGD-10 (the paper's attack), PGD-CE with `strong_steps` steps and `strong_restarts` random restarts
(100 x 5) and, for a model trained with a generator (C), that generator's attack; on the first
`strong_n` of them (200), AutoAttack's standard cascade, beside the other attacks' accuracy on those
same images (each image is attacked once; the accuracies are counted over both). The JSON is written after every
snapshot: the same command again scores only what is missing, and two processes scoring different
models into one file keep each other's entries; a file scored another way is refused (give another --out).
`--snapshots last,best` scores only the latest snapshot and validation's pick, e.g. with --set strong_n=1000
into another --out for AutoAttack on more images where it matters; entries already in the file stay.
"""
import argparse
import os
import sys
import time

import torch

import _root  # noqa: F401 (first: the repository's root on sys.path, for the imports below)
import core
import evaluate
import runner.autoattack_suite
import runner.checkpoints
import runner.cli
import runner.errors
import runner.evaluation
import runner.files
import runner.provenance
import runner.settings
import runner.validation

SCORING = dict(test_n=1000, strong_n=200)  # over the trained settings; strong_steps=100, strong_restarts=5 and
                                           # square_queries=5000 (AutoAttack's standard) come from COMMON_SETTINGS
SCORING_KEYS = ["test_n", "strong_n", "strong_steps", "strong_restarts", "square_queries", "bn_eval"]
QUICK_SCORING = {k: runner.settings.QUICK_SETTINGS[k] for k in ("test_n", "strong_n", "strong_steps", "strong_restarts",
                                                           "square_queries")}
ATTACKS = ["clean", "fgs", "pgd10", "pgd_ce", "generator"]  # scored on the first test_n; then autoattack on strong_n


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="running checkpoints (e.g. checkpoints/over_training/C.pt) whose kept "
                   "snapshots are scored; the model is named by the file (C)")
    p.add_argument("--dataset", required=True, choices=list(evaluate.DATASETS), help="the data set they were trained on")
    p.add_argument("--gpu", default=None, help="CUDA device index or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--data-dir", default="data", help="where torchvision finds or downloads the data set")
    p.add_argument("--out", default=None, help="results JSON (default results/over_training.json, with --quick "
                   "results/over_training_quick.json)")
    p.add_argument("--eval-n", type=int, default=None, help=f"score the first N test images (setting test_n, default "
                   f"{SCORING['test_n']}; 0 = all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting, e.g. strong_n")
    p.add_argument("--snapshots", default="all", help="which kept snapshots to score: all, or a comma list of "
                   "iterations and the words last (the latest) and best (validation's pick), e.g. last,best with "
                   "--set strong_n=1000 for AutoAttack on more images there")
    p.add_argument("--quick", action="store_true", help="a pipeline check: scoring as --quick runs score (few images, "
                   "short attacks, AutoAttack reduced)")
    args = runner.cli.parse_cli(p, argv, __file__)
    args.scoring, args.name = (QUICK_SCORING, "over_training_quick") if args.quick else (SCORING, "over_training")
    args.out = args.out or os.path.join("results", f"{args.name}.json")
    return evaluate.scoring_command(args, bn_eval=None)  # --quick chose the scoring above; it trains nothing


def model_settings(script, authors, trained, method, args):
    """A checkpoint's training settings under its protocol, with the scoring settings over them (the same for every model)."""
    return evaluate.trained_settings(script, authors, trained, method, args, args.scoring)


def snapshots(path, ckpt, dataset):
    """(iteration, path) of each snapshot the running checkpoint at `path` lists, each one checked to be
    a checkpoint of `dataset` and of the same training run (its fingerprint)."""
    listed = ckpt["record"].get("snapshots", [])
    if not listed:
        raise runner.errors.UserError(f"{path} lists no kept snapshots: train it with --set keep_every=N")
    found = []
    for it in listed:
        snapshot = runner.validation.snapshot_path(path, it)
        if not os.path.exists(snapshot):
            raise runner.errors.UserError(f"{snapshot}, a snapshot {path} lists, is missing")
        if runner.checkpoints.read_checkpoint(snapshot, dataset)["fingerprint"] != ckpt["fingerprint"]:
            raise runner.errors.UserError(f"{snapshot} was trained with other settings than {path}")
        found.append((it, snapshot))
    return found


def chosen(found, ckpt, path, choice):
    """The (iteration, path) pairs of `found` that --snapshots names, each named one checked to be there."""
    if choice == "all":
        return found
    listed, wanted = dict(found), set()
    words = [w.strip() for w in choice.split(",") if w.strip()]
    if not words:
        raise runner.errors.UserError(f"--snapshots {choice!r} names no snapshot: give all, last, best or iterations")
    for word in words:
        if word == "last":
            wanted.add(max(listed))
        elif word == "best":
            best = ckpt["record"].get("best_snapshot")
            if not best:
                raise runner.errors.UserError(f"{path} has no best snapshot: train it with --set val_n=N --set eval_every=N")
            wanted.add(best["iter"])
        elif word.isdigit() and int(word) in listed:
            wanted.add(int(word))
        else:
            raise runner.errors.UserError(f"--snapshots {choice}: {word!r} is not all, last, best or one of the "
                                          f"iterations {path} kept ({', '.join(map(str, sorted(listed)))})")
    return [(it, listed[it]) for it in sorted(wanted)]


def correct(D, craft, images, labels, eps, device, batch_size):
    """Per image, whether D classifies craft(D, x, y) right; crafted per batch, threat model checked."""
    right = []
    for start in range(0, len(images), batch_size):
        x = core.to_float(images[start:start + batch_size].to(device))
        y = labels[start:start + batch_size].to(device)
        x_adv = craft(D, x, y)
        core.check_threat_model(x_adv, x, eps)
        right.append(core.predict(D, x_adv) == y)
    return torch.cat(right)


def percent(right):
    return round(100.0 * right.float().mean().item(), 2)


def score_snapshot(script, path, settings, test_x, test_y, device):
    """One snapshot's accuracies in percent: ATTACKS on the first test_n images (`accuracy`), and the
    same attacks with AutoAttack's cascade on the first strong_n of them (`on_autoattack_images`), so
    that AutoAttack is set against the others on the same images. The iteration is the snapshot's own."""
    ckpt = evaluate.load(path, settings["dataset"])[0]
    D, G = evaluate.build(script, settings, ckpt, path, device)
    eps, n = settings["eps"], min(settings["test_n"] or len(test_x), len(test_x))  # what is scored, not what was asked
    m = min(settings["strong_n"] or n, n)
    attacks = {"clean": lambda model, x, y: x} | core.strong_attacks(eps, settings["strong_steps"], settings["strong_restarts"])
    if G is not None:
        attacks["generator"] = lambda model, x, y: core.generator_attack(G, x, y, eps)
    it, t0, right = ckpt["record"]["iters_done"], time.time(), {}
    with core.scoring_mode([D], settings["bn_eval"]), core.scoring_mode([G] if G is not None else []), \
            core.full_precision(device):
        for name in [a for a in ATTACKS if a in attacks]:
            print(f"{os.path.basename(path)}: {name} on {n} images", file=sys.stderr, flush=True)
            torch.manual_seed(settings["seed"])  # PGD's random starts: the same for every snapshot
            right[name] = correct(D, attacks[name], test_x[:n], test_y[:n], eps, device, settings["eval_batch"])
    print(f"{os.path.basename(path)}: AutoAttack's cascade on {m} images", file=sys.stderr, flush=True)
    autoattack, warnings = runner.evaluation.autoattack_cascade(runner.autoattack_suite, D, test_x[:m], test_y[:m], settings, device,
                                                         os.path.dirname(os.path.abspath(path)))
    validation = [v for v in ckpt["record"].get("val_history", []) if v["iter"] == it]
    return {"iter": it, "checkpoint": os.path.abspath(path), "n_test": n,
            "accuracy": {k: percent(r) for k, r in right.items()}, "autoattack_n": m,
            "on_autoattack_images": {k: percent(r[:m]) for k, r in right.items()} | {"autoattack": autoattack},
            "autoattack_warnings": warnings, "validation": validation[0] if validation else None,
            "seconds": round(time.time() - t0, 1)}


def earlier_scores(out, scoring, protocol):
    """The models of the results file `out` ({} where there is none), whose entries are reused and kept.
    A file that is not over_training.py's, or that was scored another way or under another protocol, is
    a UserError: merged into, it would lose its entries, or mix two ways of scoring."""
    earlier = runner.files.read_results(out)
    if earlier is None:
        return {}
    problem = results_problem(earlier)
    if problem:
        raise runner.errors.UserError(f"{out} is not a results file of over_training.py ({problem}); move it away, or "
                                   "pass another --out")
    theirs = earlier["scoring"] | {"protocol": earlier.get("protocol", "paper")}  # none: the paper's
    differs = [f"{k} {theirs.get(k)} there, {v} here" for k, v in (scoring | {"protocol": protocol}).items()
               if theirs.get(k) != v]
    if differs:
        raise runner.errors.UserError(f"{out} holds scores made another way ({'; '.join(differs)}): pass another --out "
                                   "to keep both")
    return earlier["models"]


def results_problem(report):
    """What makes `report` (a parsed JSON) no results file of this script, or None."""
    if not isinstance(report, dict) or not isinstance(report.get("scoring"), dict) or not isinstance(report.get("models"), dict):
        return "it has no scoring and models objects"
    for name, model in report["models"].items():
        entries = model.get("snapshots") if isinstance(model, dict) else None
        if not (isinstance(entries, list) and isinstance(model.get("fingerprint"), str)
                and all(isinstance(e, dict) and isinstance(e.get("iter"), int) for e in entries)):
            return f"its entry {name} is not a model's scored snapshots"
        for e in entries:
            accuracy = e.get("accuracy")
            wrong = runner.files.out_of_range(accuracy, list(accuracy) if isinstance(accuracy, dict) and accuracy else ["clean"])
            if wrong:
                return f"its entry {name} at iteration {e['iter']} holds {wrong}, not an accuracy in [0, 100]"
    return None


def entries_of(earlier, name, fingerprint):
    """The scored snapshots that the file holds of this model, trained as it was (the same fingerprint)."""
    model = earlier.get(name, {})
    return model.get("snapshots", []) if model.get("fingerprint") == fingerprint else []


def reusable(earlier, name, fingerprint, it):
    found = [e for e in entries_of(earlier, name, fingerprint) if e["iter"] == it]
    return found[0] if found else None


def write(out, report, mine):
    """The report with this process's models `mine` and what another process has written meanwhile of
    the others (scored the same way), read and written under the file's merge lock."""
    with runner.files.merge_lock(out):
        others = {k: v for k, v in earlier_scores(out, report["scoring"], report["protocol"]).items() if k not in mine}
        runner.files.write_json(out, report | {"models": others | mine})


def format_curves(models):
    lines = []
    for name, model in models.items():
        first = model["snapshots"][0]
        keys = list(first["on_autoattack_images"])
        lines += [f"{name}: accuracy in percent on the first {first['autoattack_n']} test images (on the first "
                  f"{first['n_test']} in brackets); validation PGD on the held-out split",
                  f"{'iteration':>10}" + "".join(f"{k:>18}" for k in keys) + f"{'validation pgd':>16}"]
        for e in model["snapshots"]:
            cells = [f"{e['on_autoattack_images'][k]:.2f}" + (f" ({e['accuracy'][k]:.2f})" if k in e["accuracy"] else "")
                     for k in keys]
            val = e["validation"]["pgd"] if e["validation"] else "-"
            lines.append(f"{e['iter']:>10}" + "".join(f"{c:>18}" for c in cells) + f"{val:>16}")
        best = model["best_snapshot"]
        lines.append("best snapshot on validation PGD: " + (f"iteration {best['iter']}" if best else "none scored"))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    script, load_test, _, authors = evaluate.DATASETS[args.dataset]
    loaded = {os.path.splitext(os.path.basename(p))[0]: (p, *evaluate.load(p, args.dataset)) for p in args.checkpoints}
    if len(loaded) != len(args.checkpoints):
        raise runner.errors.UserError("two checkpoints share a name: score them into different --out files")
    settings = {name: model_settings(script, authors, trained, method, args) for name, (_, _, trained, method, _) in loaded.items()}
    if len({s["protocol"] for s in settings.values()}) > 1:  # each protocol scores its own way (batch norm, batch size)
        raise runner.errors.UserError("the checkpoints were trained under different protocols: score each protocol's into its own --out")
    found = {name: chosen(snapshots(path, ckpt, args.dataset), ckpt, path, args.snapshots)
             for name, (path, ckpt, *_) in loaded.items()}
    device = runner.cli.pick_device(args.gpu)
    scoring = {"dataset": args.dataset} | {k: next(iter(settings.values()))[k] for k in SCORING_KEYS} | {
        "precision": runner.evaluation.SCORING_PRECISION}
    protocol = next(iter(settings.values()))["protocol"]
    runner.files.check_out_file(args.out)
    for path in args.checkpoints:
        runner.files.check_writable(os.path.dirname(os.path.abspath(path)), evaluate.AUTOATTACK_STATE)
    earlier = earlier_scores(args.out, scoring, protocol)
    test_x, test_y = load_test(args)
    started = time.time()
    provenance = runner.provenance.provenance(device, runner.provenance.command_line(args), "float32")
    report = {"experiment": args.name, "protocol": protocol, "dataset": args.dataset,
              "scoring": scoring, "attacks": ATTACKS + ["autoattack"],
              "provenance": provenance, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    mine = {}
    for name, (path, ckpt, trained, method, seed) in loaded.items():
        s = settings[name]
        mine[name] = {"checkpoint": os.path.abspath(path), "method": method, "seed": seed, "fingerprint": ckpt["fingerprint"],
                      "provenance": provenance,  # the file's own is its last writer's: another process may score other models
                      "trained_settings": trained, "autoattack": runner.evaluation.autoattack_version(s),
                      "model": {k: v for k, v in ckpt["record"].items() if k != "history"},
                      "best_snapshot": ckpt["record"].get("best_snapshot"),
                      # every entry the file holds stays in it while this pass goes: one stopped halfway loses none
                      "snapshots": entries_of(earlier, name, ckpt["fingerprint"])}
        for it, snapshot in found[name]:
            entry = reusable(earlier, name, ckpt["fingerprint"], it) or score_snapshot(script, snapshot, s, test_x, test_y, device)
            others = [e for e in mine[name]["snapshots"] if e["iter"] != it]
            mine[name]["snapshots"] = sorted(others + [entry], key=lambda e: e["iter"])
            write(args.out, report | {"wall_seconds": round(time.time() - started, 1)}, mine)
    report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
    write(args.out, report, mine)
    print(format_curves(mine))
    print(f"results written to {args.out}")
    return report | {"models": mine}


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
