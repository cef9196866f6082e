"""Which of the authors' settings makes C robust? Fashion-MNIST model C under the paper's protocol, and
again with one of the authors' settings switched on at a time (ARMS), then with the five together.
Each arm is trained with each seed, then scored in IEEE float32 on the same test images: clean, FGS
and PGD-10 on the first `test_n`, AutoAttack's standard cascade on the first `strong_n`. After each
model is scored its entry joins the results file (results/ablation_study.json) under the file's merge
lock, so that processes with different --arms or --seeds fill one file; an entry already there for the
same model (its fingerprint) is reused, not scored again. The file holds a summary per arm over its
seeds and each arm's difference from the paper arm. Run from the repository's root:

    OMP_NUM_THREADS=1 python tools/ablation_study.py --gpu cpu --data-dir data --seeds 0 &   # one process
    OMP_NUM_THREADS=1 python tools/ablation_study.py --gpu cpu --data-dir data --seeds 1 &   # per seed
    python tools/ablation_study.py --gpu cpu --data-dir data --eval-only                      # the table so far

The models' seeds are --seeds; the settings' `seed` (--seed) seeds the scoring's random draws (PGD's
starts, AutoAttack's), the same for every model. A model is resumable: the same command goes on.
"""
import json
import os
import time

import torch

import _root  # noqa: F401 (first: the repository's root on sys.path, for the imports below)
import core
import mnist
import runner.autoattack_suite
import runner.cli
import runner.errors
import runner.evaluation
import runner.files
import runner.provenance
import runner.reports
import runner.settings
import runner.training

# ======================================================================================= settings
SETTINGS = mnist.SETTINGS | mnist.FASHION | dict(  # Fashion-MNIST, eps 0.1, the paper's MNIST protocol otherwise
    iters=2000,              # minibatches per model (D steps on each, or on every d_every-th)
    g_width=8,               # G1's width k, as the committed Fashion-MNIST runs
    val_n=1000,              # training images held out as the validation split: the over-training study's
    eval_every=1000,         # iterations between scorings of that split (clean, FGS, PGD, G's attack)
    precision="float32",     # training's forward passes, as the authors' code computed
    test_n=1000,             # test images scored clean, by FGS and by PGD-10 (the first n), in IEEE float32
    strong_n=500,            # of those, the first n attacked by AutoAttack's standard cascade
)
QUICK = dict(val_n=32, eval_every=5)  # --quick: a split and a validation that its 10 iterations on a few images allow
# arm -> its settings over the paper protocol's: the authors' values (mnist.AUTHORS["C"] and
# runner.settings.AUTHORS_SETTINGS cite their lines), files of GitHub whxbergkamp/RobustDL_GAN mnist/
ARMS = {
    "paper": {},
    "d_every": dict(d_every=5),                            # train_gan_mnist.py: if batch_idx % 5 == 0: d_train_and_restore_op
    "g_optimiser": dict(g_opt="sgd", g_lr=0.01),           # train_gan_mnist.py: g_optimizer = MomentumOptimizer(0.01, 0.9);
                                                           # h = eta_G / 10 = 0.001 (fd_h 0), their g_step_size = 0.01/10
    "d_drop": dict(d_lr_drop_at=0.5, d_fresh_momentum=True),  # train_gan_mnist.py: batch_idx < 100000 of 200000, then
                                                           # d_train_and_restore_op2, a new MomentumOptimizer at lr/10
    "weight_decays": dict(d_weight_decay=1e-5, g_weight_decay=1e-5),  # run_gan_mnist.py: '--weight-decay', default=1E-5,
                                                           # in D's loss and G's (train_gan_mnist.py: g_decay)
    "g_net": dict(g_net="authors", g_width=64),            # models/simple_cnn_mnist.py: generator, k=64 (core.MnistG)
    "gamma_sign": dict(gamma=-0.01),                       # train_gan_mnist.py: g1 + g2 + gamma*(g2-g3)/g_step_size,
                                                           # the paper's sign reversed; not one of "all"'s five
}
TOGETHER = ["d_every", "g_optimiser", "d_drop", "weight_decays", "g_net"]
ARMS["all"] = {key: value for arm in TOGETHER for key, value in ARMS[arm].items()}
SEEDS = [0, 1]
SCORES = ["clean", "fgs", "pgd", "autoattack"]  # accuracy in percent; autoattack on the first strong_n only


def checkpoint(ckpt_dir, arm, seed):
    return os.path.join(ckpt_dir, arm, f"seed{seed}", "C.pt")


def arm_settings(settings, arm):
    """The settings model C of `arm` trains with, checked as the project checks a model's settings."""
    unknown = set(ARMS[arm]) - set(settings)
    if unknown:
        raise KeyError(f"arm {arm} overrides {sorted(unknown)}, which are not settings")
    overridden = settings | ARMS[arm]
    runner.settings.check_model_settings(runner.settings.model_settings(overridden, "advnet"))
    return overridden


def scoring_of(settings, n_test_images):
    """How every model of the study is scored: the same for each entry of one results file."""
    n = settings["test_n"] or n_test_images
    return {"n_test": n, "autoattack_n": min(settings["strong_n"] or n, n), "eps": settings["eps"],
            "pgd_steps": settings["pgd_steps"], "pgd_alpha": settings["pgd_alpha"] or settings["eps"] / 4,
            "bn": settings["bn_eval"], "precision": runner.evaluation.SCORING_PRECISION,
            "autoattack": runner.evaluation.autoattack_version(settings)}


def score(D, settings, scoring, test_x, test_y, device, state_dir):
    """D's accuracy in percent, clean, FGS and PGD on the first n_test images and AutoAttack's cascade on
    the first autoattack_n, in IEEE float32; and AutoAttack's warnings."""
    n, m = scoring["n_test"], scoring["autoattack_n"]
    torch.manual_seed(settings["seed"])  # PGD's random start: the same draws for every model
    with core.full_precision(device):
        scores = core.evaluate_table({"C": D}, {}, test_x[:n], test_y[:n], settings["eps"], device, settings["eval_batch"],
                                     settings["pgd_steps"], scoring["pgd_alpha"], None, settings["bn_eval"], "float32")["C"]
    scores["autoattack"], warnings = runner.evaluation.autoattack_cascade(runner.autoattack_suite, D, test_x[:m], test_y[:m], settings,
                                                                   device, state_dir)
    return scores, warnings


# ======================================================================================= the results file
def earlier_runs(out, name, settings, scoring):
    """arm -> seed -> entry of the results file `out` ({} where there is none yet), checked to be this
    study's (earlier_file), made with these settings (but how often checkpoints are saved) and scored this way."""
    earlier = earlier_file(out, name)
    if earlier is None:
        return {}
    differing = sorted(k for k in settings.keys() & earlier["settings"].keys()
                       if k != "ckpt_minutes" and settings[k] != earlier["settings"][k])
    differing += ["scoring"] if earlier["scoring"] != scoring else []
    if differing:
        raise runner.errors.UserError(f"{out} was made with other settings ({', '.join(differing)}): run with the same "
                                   "settings, or pass another --out")
    return earlier["runs"]


def earlier_file(out, name):
    """The parsed results file `out`, or None where there is none yet, checked where it enters to be this
    study's and of its shape (shape_problem): the check that needs no data, made before they are loaded."""
    earlier = runner.files.read_results(out)
    if earlier is None:
        return None
    found = earlier.get("experiment") if isinstance(earlier, dict) else None
    if found != name:
        raise runner.errors.UserError(f"{out} is not a results file of {name} (it holds {found or 'something else'}): "
                                   "pass another --out")
    problem = shape_problem(earlier)
    if problem:
        raise runner.errors.UserError(f"{out} is damaged ({problem}): move it away, or pass another --out")
    return earlier


def shape_problem(report):
    """What keeps a results file from this tool's shape (its settings, scoring and arm -> seed -> entry with
    scores, each an accuracy in [0, 100]), or None."""
    if not all(isinstance(report.get(key), dict) for key in ("settings", "scoring", "runs")):
        return "not settings, scoring and runs, each an object"
    for arm, by_seed in report["runs"].items():
        if not isinstance(by_seed, dict):
            return f"'runs.{arm}' is not an object of seeds"
        for seed, entry in by_seed.items():
            if not (isinstance(entry, dict) and {"fingerprint", "scores"} <= set(entry)):
                return f"'runs.{arm}.{seed}' is not an entry with a fingerprint and scores"
            wrong = runner.files.out_of_range(entry["scores"], SCORES)
            if wrong:
                return f"'runs.{arm}.{seed}.scores' holds {wrong}, not an accuracy in [0, 100]"
    return None


def reusable(runs, arm, seed, fingerprint):
    """The entry of the same model already in the file, or None."""
    entry = runs.get(arm, {}).get(str(seed))
    return entry if entry and entry["fingerprint"] == fingerprint else None


def summary(runs):
    """arm -> score -> mean, std (runner.reports.mean_std, n seeds), and the lowest and highest over the seeds."""
    table = {}
    for arm, by_seed in runs.items():
        values = {s: [entry["scores"][s] for entry in by_seed.values()] for s in SCORES}
        table[arm] = {s: runner.reports.mean_std(v) | {"low": min(v), "high": max(v)} for s, v in values.items()}
    return table


def minus_paper(stats):
    """arm -> score -> its mean less the paper arm's, in points; {} until the paper arm is scored."""
    if "paper" not in stats:
        return {}
    return {arm: {s: round(cols[s]["mean"] - stats["paper"][s]["mean"], 2) for s in SCORES}
            for arm, cols in stats.items() if arm != "paper"}


def merge(out, header, arm, seed, entry):
    """Adds one (arm, seed) entry to the results file, under its merge lock, keeping every other entry
    there (another process's too), and writes the summary of them all. Returns the file's report."""
    with runner.files.merge_lock(out):
        runs = earlier_runs(out, header["experiment"], header["settings"], header["scoring"])
        runs.setdefault(arm, {})[str(seed)] = entry
        order = [a for a in ARMS if a in runs] + [a for a in runs if a not in ARMS]  # an arm since renamed stays
        runs = {a: dict(sorted(runs[a].items(), key=lambda item: int(item[0]))) for a in order}
        stats = summary(runs)
        report = header | {"arms": {a: next(iter(runs[a].values()))["overrides"] for a in runs},
                           "seeds": sorted({int(s) for by_seed in runs.values() for s in by_seed}),
                           "runs": runs, "summary": stats, "minus_paper": minus_paper(stats),
                           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        runner.files.write_json(out, report)
    return report


def format_summary(report):
    scoring = report["scoring"]
    heads = {"clean": "clean", "fgs": "FGS", "pgd": f"PGD-{scoring['pgd_steps']}", "autoattack": "AutoAttack"}
    cell = lambda c: f"{c['mean']:.2f} ({c['low']:.2f}-{c['high']:.2f})"
    lines = [f"accuracy in percent, mean over the seeds (lowest-highest); eps {scoring['eps']}; clean, FGS and PGD on the "
             f"first {scoring['n_test']} test images, AutoAttack ({scoring['autoattack']['version']}) on the first "
             f"{scoring['autoattack_n']}; scored in float32",
             f"{'arm':<15}{'seeds':<8}" + "".join(f"{heads[s]:>22}" for s in SCORES)]
    for arm, cols in report["summary"].items():
        seeds = ",".join(report["runs"][arm])
        lines.append(f"{arm:<15}{seeds:<8}" + "".join(f"{cell(cols[s]):>22}" for s in SCORES))
    return "\n".join(lines)


# ======================================================================================= run
def iterations_to_train(work, trained_with, args, settings, scoring):
    """(arm, seed) -> the iterations that model still has to train, in the run's order, for the ETA of the
    whole run: none for a model already scored into --out, nor for any with --eval-only."""
    scored = {} if args.no_eval else earlier_runs(args.out, args.name, settings, scoring)

    def left(arm, seed):
        fingerprint = runner.settings.fingerprint(trained_with[arm], "advnet", seed)
        if reusable(scored, arm, seed, fingerprint):
            return 0
        return runner.training.model_iterations_left("advnet", checkpoint(args.ckpt_dir, arm, seed), not args.eval_only,
                                                     trained_with[arm])
    return {(arm, seed): left(arm, seed) for arm, seed in work}


def parse_args(argv):
    args = runner.cli.parse_cli(runner.cli.study_parser(__doc__, ARMS, SEEDS), argv, __file__)
    args.arm_list = runner.cli.parse_arms(args.arms, ARMS)
    args.seed_list = runner.cli.parse_seeds(args.seeds)
    args.name = "ablation_study" + ("_quick" if args.quick else "")
    args.ckpt_dir = args.ckpt_dir or os.path.join("checkpoints", args.name)
    args.out = args.out or os.path.join("results", f"{args.name}.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = runner.settings.resolve_settings(SETTINGS, args, QUICK if args.quick else None)
    trained_with = {arm: arm_settings(settings, arm) for arm in args.arm_list}
    runner.files.check_writable(args.ckpt_dir, "--ckpt-dir")  # before the data and the trainings, not after
    if not args.no_eval:
        runner.files.check_out_file(args.out)
        earlier_file(args.out, args.name)
    device = runner.cli.pick_device(args.gpu)
    train_x, train_y, test_x, test_y, *unused = mnist.training_data(args.data_dir, True, settings)
    scoring = scoring_of(settings, len(test_x))
    header = {"experiment": args.name, "settings": settings, "scoring": scoring,
              "provenance": runner.provenance.provenance(device, runner.provenance.command_line(args), settings["precision"])}
    if not args.no_eval:
        earlier_runs(args.out, args.name, settings, scoring)  # a file it cannot add to stops it before any training
    work = [(arm, seed) for arm in args.arm_list for seed in args.seed_list]
    later = runner.training.iterations_after_each(iterations_to_train(work, trained_with, args, settings, scoring))
    for i, (arm, seed) in enumerate(work, 1):
        fingerprint, label = runner.settings.fingerprint(trained_with[arm], "advnet", seed), f"[{i}/{len(work)}] {arm} seed {seed}"
        if not args.no_eval and reusable(earlier_runs(args.out, args.name, settings, scoring), arm, seed, fingerprint):
            print(f"{label}: already scored in {args.out}, reused", flush=True)
            continue
        path = checkpoint(args.ckpt_dir, arm, seed)
        D, _, record = runner.training.prepare_model(f"C {arm} seed {seed}", "advnet", seed, trained_with[arm], mnist.build_D,
                                                mnist.build_G, lambda: (train_x, train_y, *unused), device, path, not args.eval_only,
                                                later=later[arm, seed])
        if record["iters_done"] < settings["iters"]:
            print(f"{label}: {record['iters_done']} of {settings['iters']} iterations in {path}, not scored", flush=True)
            continue
        if args.no_eval:
            print(f"{label}: trained ({path})", flush=True)
            continue
        t0 = time.time()
        scores, warnings = score(D, settings, scoring, test_x, test_y, device, os.path.dirname(path))
        entry = {"arm": arm, "seed": seed, "overrides": ARMS[arm], "checkpoint": path, "fingerprint": fingerprint,
                 "scores": scores, "autoattack_warnings": warnings, "train_seconds": round(record["train_seconds"], 1),
                 "score_seconds": round(time.time() - t0, 1), "provenance": header["provenance"],
                 "model": {k: v for k, v in record.items() if k != "history"}}
        merge(args.out, header, arm, seed, entry)
        print(f"{label}: " + ", ".join(f"{s} {scores[s]:.2f}" for s in SCORES) + f" -> {args.out}", flush=True)
    if args.no_eval:
        return None
    if not os.path.exists(args.out):
        print(f"nothing scored yet into {args.out}")
        return None
    with open(args.out) as f:
        report = json.load(f)
    print(format_summary(report))
    return report


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
