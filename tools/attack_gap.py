"""Where AutoAttack's margin over PGD comes from, for one checkpoint: PGD variants that each take one
ingredient of APGD-CE (AutoAttack's first attack), beside APGD-CE itself, on the first n test images,
scored as the checkpoint's protocol scores (its batch norm and batch size), in float32.

    python tools/attack_gap.py checkpoints/mnist_authors/C.pt --dataset mnist --data-dir data/ --gpu cpu

Every attack ascends the cross-entropy for `strong_steps` (100) steps from one uniform random start:
  pgd                  the strong evaluation's PGD-CE with one start: fixed steps of 2.5 eps / steps
  pgd_keep_first       the same, each image kept at the first iterate that fools the model (APGD's bookkeeping)
  pgd_eps4             fixed steps of eps / 4 (the paper's PGD-10 step), 100 of them
  pgd_halving          steps of 2 eps (APGD's first), halved after every fifth of the run
  pgd_halving_momentum the same with APGD's momentum (a quarter of the last move carried on)
  apgd_ce              AutoAttack's APGD-CE (pyautoattack), one restart
  apgd_ce_among_clean  APGD-CE's images, each scored in its batch with the batch's other images clean:
                       where batch norm scores with batch statistics, whether the attack works through them
and `zero_gradient_percent`, the images whose input gradient is exactly zero. The JSON (default
results/attack_gap/<dataset>_<checkpoint name>.json) is written after every attack: the same command
again scores only what is missing.
"""
import argparse
import os
import sys
import time

import torch

import _root  # noqa: F401 (first: the repository's root on sys.path, for the imports below)
import core
import evaluate
import over_training
import runner.autoattack_suite
import runner.cli
import runner.errors
import runner.files
import runner.provenance

SCORING = dict(test_n=200)  # images; strong_steps (100) comes from the checkpoint's settings
APGD_MOMENTUM = 0.25        # APGD's x + 0.75 (z - x) + 0.25 (x - x_previous) (Croce & Hein, 2020)
PHASES = 5                  # pgd_halving: five equal parts of the run, each with half the step of the one before


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a classifier's .pt checkpoint (A, B, C, a snapshot such as C.iter20000.pt)")
    p.add_argument("--dataset", required=True, choices=list(evaluate.DATASETS), help="the data set it was trained on")
    p.add_argument("--gpu", default=None, help="CUDA device index or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--data-dir", default="data", help="where torchvision finds or downloads the data set")
    p.add_argument("--eval-n", type=int, default=None, help=f"attack the first N test images (default {SCORING['test_n']})")
    p.add_argument("--out", default=None, help="results JSON (default results/attack_gap/<dataset>_<checkpoint name>.json)")
    args = runner.cli.parse_cli(p, argv, __file__)
    if args.eval_n is not None and args.eval_n < 1:
        raise runner.errors.UserError(f"--eval-n {args.eval_n}: attack at least one image")
    return evaluate.scoring_command(args, set=[], bn_eval=None)


def halving(eps, steps):
    "pgd_halving's step at step k: 2 eps, halved after every fifth of the run."
    fifth = max(1, steps // PHASES)
    return lambda k: 2 * eps / 2 ** (k // fifth)


def pgd_variant(model, x, y, eps, steps, step, momentum=0.0, keep_first=False):
    """PGD on the cross-entropy from a uniform start, with step(k) at step k, `momentum` of the last move
    carried on (APGD's form; none on the first step) and, with keep_first, each image kept at the first
    iterate the model misclassifies. A pure function, as core.pgd: the model in the mode it is in."""
    x_adv = core.project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    previous, kept = x_adv, x_adv.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with torch.enable_grad():  # as core.pgd: an attack called under no_grad still needs its input gradients
        for k in range(steps):
            z = core.project(x_adv + step(k) * core.input_grad(model, x_adv, y).sign(), x, eps)
            m = momentum if k else 0.0
            previous, x_adv = x_adv, core.project(x_adv + (1 - m) * (z - x_adv) + m * (x_adv - previous), x, eps)
            if keep_first:
                first = (core.predict(model, x_adv) != y) & ~fooled
                kept[first], fooled = x_adv[first], fooled | first
    return torch.where(fooled[:, None, None, None], kept, x_adv).detach()


def apgd_ce(model, x, y, eps, steps, seed):
    """AutoAttack's APGD-CE with one restart; it calls the model itself, so batch norm's running statistics
    are held here, and it seeds the global generator, so that runs on a generator of its own."""
    attack = runner.autoattack_suite.package().autopgd_base.APGDAttack(
        model, norm="Linf", eps=eps, n_iter=steps, n_restarts=1, loss="ce", seed=seed, device=x.device)
    with core.bn_stats_frozen(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return attack.perturb(x, y).detach()


def attacks(eps, steps, seed):
    fixed = 2.5 * eps / steps
    return {"pgd": lambda m, x, y: core.pgd(m, x, y, eps, fixed, steps),
            "pgd_keep_first": lambda m, x, y: pgd_variant(m, x, y, eps, steps, lambda k: fixed, keep_first=True),
            "pgd_eps4": lambda m, x, y: pgd_variant(m, x, y, eps, steps, lambda k: eps / 4),
            "pgd_halving": lambda m, x, y: pgd_variant(m, x, y, eps, steps, halving(eps, steps)),
            "pgd_halving_momentum": lambda m, x, y: pgd_variant(m, x, y, eps, steps, halving(eps, steps), APGD_MOMENTUM),
            "apgd_ce": lambda m, x, y: apgd_ce(m, x, y, eps, steps, seed)}


def among_clean(model, x_adv, x, y, batch_size):
    """Per image: is x_adv[i] classified right when scored in its batch of x (the clean images) with only
    itself replaced? With batch statistics, an attack that works by shifting them fails here."""
    right = []
    for i in range(len(x)):
        start = i // batch_size * batch_size
        batch = x[start:start + batch_size].clone()
        batch[i - start] = x_adv[i]
        right.append(core.predict(model, batch)[i - start] == y[i])
    return torch.stack(right)


def keeping(craft, kept):
    "craft, each batch it crafts also appended to `kept` (APGD-CE's images, scored again among clean ones)."
    def craft_and_keep(model, x, y):
        kept.append(craft(model, x, y))
        return kept[-1]
    return craft_and_keep


SAME = ["experiment", "fingerprint", "iteration", "n_test", "eps", "steps", "eval_batch", "bn_eval"]  # what a reused file must share


def earlier_scores(out, report):
    """What `out` already holds of the attacks `report` describes (None where there is no file). A file of
    another tool, another snapshot of the run (they share its fingerprint), or scored another way is a
    UserError naming what differs: merged into, it would be relabelled or replaced by less."""
    earlier = runner.files.read_results(out)
    if earlier is None:
        return None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("accuracy"), dict):
        raise runner.errors.UserError(f"{out} is not a results file of attack_gap.py: pass another --out")
    wrong = runner.files.out_of_range(earlier["accuracy"], list(earlier["accuracy"]))
    if wrong:
        raise runner.errors.UserError(f"{out} holds {wrong}, not an accuracy in [0, 100]: move it away, or pass another --out")
    differs = [f"{key} {earlier.get(key)!r} there, {report[key]!r} here" for key in SAME if earlier.get(key) != report[key]]
    if differs:
        raise runner.errors.UserError(f"{out} holds other scores ({'; '.join(differs)}): pass another --out")
    return earlier


def main(argv=None):
    args = parse_args(argv)
    script, load_test, _, authors = evaluate.DATASETS[args.dataset]
    ckpt, trained, method, seed = evaluate.load(args.checkpoint, args.dataset)
    settings = evaluate.trained_settings(script, authors, trained, method, args, SCORING)
    device = runner.cli.pick_device(args.gpu)
    D, _ = evaluate.build(script, settings, ckpt, args.checkpoint, device)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0]
    out = args.out or os.path.join("results", "attack_gap", f"{args.dataset}_{name}.json")
    runner.files.check_out_file(out)
    test_x, test_y = load_test(args)
    n = min(args.eval_n or settings["test_n"], len(test_x))
    x, y = core.to_float(test_x[:n].to(device)), test_y[:n].to(device)
    eps, steps, batch = settings["eps"], settings["strong_steps"], settings["eval_batch"]
    report = {"experiment": "attack_gap", "checkpoint": os.path.abspath(args.checkpoint), "dataset": args.dataset,
              "protocol": settings["protocol"], "method": method, "seed": seed, "fingerprint": ckpt["fingerprint"],
              "iteration": ckpt["record"]["iters_done"], "n_test": n, "eps": eps, "steps": steps, "eval_batch": batch,
              "bn_eval": settings["bn_eval"], "provenance": runner.provenance.provenance(
                  device, runner.provenance.command_line(args), "float32")}
    earlier = earlier_scores(out, report) or {}
    accuracy, report["seconds"] = earlier.get("accuracy", {}), earlier.get("seconds", {})
    with core.scoring_mode([D], settings["bn_eval"]), core.full_precision(device):
        if "zero_gradient_percent" not in accuracy:
            zero = torch.cat([core.zero_gradient(D, x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)])
            accuracy["zero_gradient_percent"] = over_training.percent(zero)
            runner.files.write_json(out, report | {"accuracy": accuracy})
        for attack, craft in attacks(eps, steps, settings["seed"]).items():
            if attack in accuracy and (attack != "apgd_ce" or "apgd_ce_among_clean" in accuracy):
                continue
            print(f"{name}: {attack} on {n} images", file=sys.stderr, flush=True)
            t0 = time.time()
            torch.manual_seed(settings["seed"])
            crafted = []
            scored = keeping(craft, crafted) if attack == "apgd_ce" else craft
            accuracy[attack] = over_training.percent(over_training.correct(D, scored, x, y, eps, device, batch))
            if attack == "apgd_ce":
                accuracy["apgd_ce_among_clean"] = over_training.percent(among_clean(D, torch.cat(crafted), x, y, batch))
            report["seconds"][attack] = round(time.time() - t0, 1)
            runner.files.write_json(out, report | {"accuracy": accuracy})  # a file already whole is not written again
    print(f"{name} (iteration {report['iteration']}), accuracy in percent on the first {n} test images, "
          f"eps {eps:g}, {steps} steps:")
    for attack, value in accuracy.items():
        print(f"{attack:>22} {value:6.2f}")
    print(f"results written to {out}")
    return report | {"accuracy": accuracy}


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
