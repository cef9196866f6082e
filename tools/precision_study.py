"""Does bf16 autocast train the same model C as float32? Fashion-MNIST model C (G1 k=8, 1000
iterations) with each seed in three arms: float32; bf16 (autocast around forward passes only, its
cast cache off); and bf16 with the cast-cache bug, trained by the code before its fix (see README:
those checkpoints come from a scratch checkout, since this code keeps no switch for the bug).
Every model is scored in float32 on the same test images (clean, FGS, PGD-10) and with AutoAttack's
standard cascade on the first `strong_n`, and the paper's three columns again with their attacks
crafted under bf16 autocast, as CUDA's tables were. G's five-step loss gain (`g_gain`) comes from
each model's training history. Writes results/precision_study.json.

    python tools/precision_study.py --gpu cpu --data-dir data                  # train both arms, score all three
    python tools/precision_study.py --gpu cpu --arms bf16 --seeds 1,2 --no-eval   # spread trainings over processes
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
    iters=1000,              # D updates per model: the committed Fashion-MNIST runs' reduced CPU schedule
    g_width=8,               # G1's width k, as those runs
    test_n=1000,             # test images scored (clean, FGS, PGD-10), the first n
    strong_n=200,            # of those, the first n attacked by AutoAttack's standard cascade
)
ARMS = {  # name -> (precision it trains in, or None: trained by the code before the fix, what it is)
    "float32": ("float32", "float32 throughout"),
    "bf16": ("bf16", "bf16 autocast around forward passes and losses, cast cache off (core.autocast)"),
    "bf16_cache_bug": (None, "bf16 autocast around the whole step with its cast cache on: the code before the "
                             "fix, as CUDA ran it (G's steps 2 to 5 of a minibatch saw step 1's weights)"),
}
SEEDS = [0, 1, 2]
SCORES = ["clean", "fgs", "pgd", "autoattack", "g_gain_first", "g_gain_last", "train_seconds"]


def checkpoint(ckpt_dir, arm, seed):
    return os.path.join(ckpt_dir, arm, f"seed{seed}", "C.pt")


def g_gains(record):
    """G's five-step loss gain over the first and the last logging window of training."""
    gains = [h["g_gain"] for h in record["history"] if "g_gain" in h]
    return {"g_gain_first": gains[0], "g_gain_last": gains[-1]} if gains else {}


def score(D, settings, test_x, test_y, device, state_dir):
    """The paper's white-box columns in float32 and under bf16 autocast, and AutoAttack's cascade in float32."""
    n, eps = settings["test_n"], settings["eps"]
    scored = {}
    for precision in ("float32", "bf16"):
        torch.manual_seed(settings["seed"])  # PGD's random start: the same draws for every model
        scored[precision] = core.evaluate_table({"C": D}, {}, test_x[:n], test_y[:n], eps, device, settings["eval_batch"],
                                                settings["pgd_steps"], None, None, "running", precision)["C"]
    strong = settings["strong_n"]
    scored["float32"]["autoattack"] = runner.evaluation.autoattack_cascade(runner.autoattack_suite, D, test_x[:strong], test_y[:strong],
                                                                    settings, device, state_dir)[0]
    return scored


def earlier_runs(earlier, out, settings):
    """arm -> seed -> run of the results file at `out` (parsed: `earlier`; {} where there is none), which
    this command adds to: checked where it enters to be made with these settings, each run's scores
    accuracies in [0, 100]. Else a UserError: merged into, the file would mix two studies, or lose them."""
    if earlier is None:
        return {}
    theirs, mine = earlier.get("settings"), json.loads(json.dumps(settings))  # as JSON has them
    differing = sorted(k for k in mine.keys() & theirs.keys() if k != "ckpt_minutes" and mine[k] != theirs[k]) \
        if isinstance(theirs, dict) else ["all"]
    if differing:
        raise runner.errors.UserError(f"{out} holds a study made with other settings ({', '.join(differing)}): run with "
                                      "the same settings, or pass another --out")
    runs = earlier.get("runs")
    if not isinstance(runs, dict) or not all(isinstance(by_seed, dict) for by_seed in runs.values()):
        raise runner.errors.UserError(f"{out} is damaged (its runs are not arm -> seed -> run): move it away, or pass "
                                      "another --out")
    for arm, by_seed in runs.items():
        if arm not in ARMS:
            raise runner.errors.UserError(f"{out} holds an arm this version does not know ({arm}): pass another --out")
        for seed, run in by_seed.items():
            problem = run_problem(run)
            if problem:
                raise runner.errors.UserError(f"{out} is damaged ({arm} seed {seed}: {problem}): move it away, or pass "
                                              "another --out")
    return runs


def run_problem(run):
    """What makes one entry of the file no run this tool scored, or None."""
    if not isinstance(run, dict) or not isinstance(run.get("bf16_table"), dict):
        return "not a scored run"
    wrong = runner.files.out_of_range(run.get("float32"), SCORES[:4])
    return wrong and f"{wrong} is not an accuracy in [0, 100]"


def joined(earlier, runs):
    """The runs of the file with this command's over them, arms in ARMS's order and seeds in theirs."""
    arms = [a for a in ARMS if a in earlier or a in runs]  # earlier_runs refused any other
    return {a: dict(sorted((earlier.get(a, {}) | runs.get(a, {})).items(), key=lambda item: int(item[0]))) for a in arms}


def summary(runs):
    """arm -> score -> mean, std (runner.reports.mean_std), n, and the lowest and highest over the seeds."""
    table = {}
    for arm, by_seed in runs.items():
        values = {s: [r["float32"][s] for r in by_seed.values() if s in r["float32"]] for s in SCORES}
        table[arm] = {s: runner.reports.mean_std(v) | {"low": min(v), "high": max(v)} for s, v in values.items() if v}
    return table


def within_spread(stats, arm, reference="float32"):
    """Per score: does `arm`'s mean lie within the reference arm's seeds (their lowest to highest)?"""
    return {s: stats[reference][s]["low"] <= stats[arm][s]["mean"] <= stats[reference][s]["high"]
            for s in stats[arm] if s in stats[reference]}


def table_differences(runs):
    """arm -> seed -> column -> the paper's column crafted under bf16 autocast less in float32, in points."""
    return {arm: {seed: {c: round(r["bf16_table"][c] - r["float32"][c], 2) for c in ("clean", "fgs", "pgd")}
                  for seed, r in by_seed.items()} for arm, by_seed in runs.items()}


def format_summary(stats):
    cell = lambda c: f"{c['mean']:.2f}" + (f"±{c['std']:.2f}" if c["std"] is not None else "")
    lines = [f"{'arm':<16}" + "".join(f"{s:>16}" for s in SCORES)]
    lines += [f"{arm:<16}" + "".join(f"{cell(cols[s]) if s in cols else '-':>16}" for s in SCORES) for arm, cols in stats.items()]
    return "mean ± standard deviation over the seeds; accuracy in percent, scored in float32\n" + "\n".join(lines)


def main(argv=None):
    args = runner.cli.parse_cli(runner.cli.study_parser(__doc__, ARMS, SEEDS), argv, __file__)
    settings = runner.settings.resolve_settings(SETTINGS, args)
    arms = runner.cli.parse_arms(args.arms, ARMS)
    seeds = runner.cli.parse_seeds(args.seeds)
    name = "precision_study" + ("_quick" if args.quick else "")
    ckpt_dir = args.ckpt_dir or os.path.join("checkpoints", name)
    out = args.out or os.path.join("results", f"{name}.json")
    runner.files.check_writable(ckpt_dir, "--ckpt-dir")  # before the trainings, not after them
    earlier_runs(runner.files.check_results_file(out, name), out, settings)  # one it cannot add to stops it now
    device = runner.cli.pick_device(args.gpu)
    train_x, train_y, test_x, test_y = mnist.load_data(args.data_dir, fashion=True)
    started = time.time()
    models = {}
    for arm in arms:
        precision = ARMS[arm][0]
        for seed in seeds:
            path = checkpoint(ckpt_dir, arm, seed)
            if precision is None and not os.path.exists(path):
                print(f"{arm} seed {seed}: no checkpoint at {path} (trained by the code before the fix; see README)")
                continue
            trains = precision is not None and not args.eval_only
            # the bug arm was trained by `mnist.py --seed s`, whose settings name that seed; it labels the
            # run only (D, G and the batch order come from the model seed there as here)
            trained_with = settings | {"precision": precision or "bf16"} | ({} if precision else {"seed": seed})
            D, _, record = runner.training.prepare_model(f"C {arm} seed {seed}", "advnet", seed, trained_with,
                                                    mnist.build_D, mnist.build_G, lambda: (train_x, train_y), device, path, trains)
            if record["iters_done"] >= settings["iters"]:
                models[(arm, seed)] = D, record
    if args.no_eval:
        return None
    runs = {arm: {} for arm in arms if any(key[0] == arm for key in models)}
    for (arm, seed), (D, record) in models.items():
        print(f"scoring {arm} seed {seed}")
        scored = score(D, settings, test_x, test_y, device, os.path.dirname(checkpoint(ckpt_dir, arm, seed)))
        runs[arm][str(seed)] = {"checkpoint": checkpoint(ckpt_dir, arm, seed), "float32": scored["float32"] | g_gains(record)
                                | {"train_seconds": round(record["train_seconds"], 1)}, "bf16_table": scored["bf16"],
                                "model": record}
    with runner.files.merge_lock(out):  # the seeds and arms another command scored into the file stay
        runs = joined(earlier_runs(runner.files.read_results(out), out, settings), runs)
        stats = summary(runs)
        report = {"experiment": name, "settings": settings, "arms": {a: ARMS[a][1] for a in runs},
                  "seeds": sorted({int(seed) for by_seed in runs.values() for seed in by_seed}),
                  "provenance": runner.provenance.provenance(device, runner.provenance.command_line(args), "float32"),
                  "scoring": {"n_test": settings["test_n"], "autoattack_n": settings["strong_n"],
                              "autoattack": runner.evaluation.autoattack_version(settings)},
                  "runs": runs, "summary": stats, "bf16_table_minus_float32": table_differences(runs)}
        if "float32" in stats:
            report["within_float32_spread"] = {arm: within_spread(stats, arm) for arm in stats if arm != "float32"}
        report |= {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(time.time() - started, 1)}
        runner.files.write_json(out, report)
    print(format_summary(stats))
    print(f"results written to {out}")
    return report


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
