# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Results: the paper's tables beside ours
#
# Wang & Yu, *A Direct Approach to Robust Deep Learning Using Adversarial Networks* (ICLR 2019),
# reproduced by this repository. Rows: **A** standard training, **B** PGD adversarial training,
# **C** adversarial networks (the paper's method), **EAT** ensemble adversarial training. Columns:
# test accuracy (%) on clean images, under white-box FGS and PGD, and under black-box FGS and PGD
# crafted on **X'** (model X trained again with another seed).
#
# The notebook reads every `results/*.json` (or every `*.json` in the folder named by the environment
# variable `RESULTS_DIR`, absolute or relative to `notebooks/`) and the paper's numbers from
# `paper_tables.json`; it writes nothing. To regenerate the results, from the repository root
# (the README has the options):
#
# | command | reproduces | writes |
# | --- | --- | --- |
# | `python mnist.py --gpu 0` | Table 1 (MNIST) | `results/mnist.json` |
# | `python mnist.py --fashion --gpu 0` | Fashion-MNIST (not in the paper) | `results/fashion_mnist.json` |
# | `python svhn.py --gpu 0` | Table 2 (SVHN) | `results/svhn.json` |
# | `python cifar10.py --gpu 0` | Table 3 (CIFAR-10) | `results/cifar10.json` |
# | `python cifar100.py --gpu 0` | Table 7 (CIFAR-100) | `results/cifar100.json` |
# | `python ensemble.py --gpu 0` | Table 4 (EAT) | `results/ensemble.json` |
# | `python generators_study.py --gpu 0` | Tables 5 and 6 (generators) | `results/generators.json` + `_examples.npz` |
#
# then run all cells. `--quick` runs write `*_quick.json`: smoke tests of the pipeline, not results.
# `--protocol authors` runs (the settings of the authors' code instead of the paper's text) write
# `*_authors.json`; every table names the protocol that produced it.
# They are shown, labelled as such, only when `RESULTS_DIR` is set or when the experiment has no full
# result. The committed notebook has no outputs. Its source is `notebooks/results.py`, the same cells as a
# script (jupytext's percent format): after editing either, `jupytext --sync notebooks/results.py` writes the other.

# %%
# %matplotlib inline
import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np

RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", "../results"))
SHOW_ALL_QUICK = "RESULTS_DIR" in os.environ  # a folder chosen on purpose is shown whole
PAPER = json.loads(Path("../paper_tables.json").read_text())
COLUMNS = PAPER["columns"]
DATASETS = ["mnist", "fashion_mnist", "svhn", "cifar10", "cifar100"]
COMMANDS = {"mnist": "python mnist.py", "fashion_mnist": "python mnist.py --fashion", "svhn": "python svhn.py",
            "cifar10": "python cifar10.py", "cifar100": "python cifar100.py", "ensemble": "python ensemble.py",
            "generators": "python generators_study.py"}
HIGHLIGHT = 3.0  # accuracy points: larger differences from the paper are marked with *
COLORS = {"A": "C0", "B": "C1", "C": "C2", "EAT": "C3"}  # a model and its copy X' share a colour
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})

# %% [markdown]
# ## Which results are here
#
# Each file is checked against the README's schema ("Results JSON") before anything is drawn: a file
# that is not valid JSON or lacks a key the notebook needs is named below with the reason, and skipped.

# %%
NUMBER = (int, float)
OPTIONAL_TEXT = (str, type(None))
RUN_FIELDS = {"settings.eps": NUMBER, "settings.iters": NUMBER, "provenance.device": str,
              "provenance.git_commit": OPTIONAL_TEXT, "provenance.git_dirty": (bool, type(None)),
              "wall_seconds": NUMBER, "models": dict}
DATASET_FIELDS = RUN_FIELDS | {"seeds": dict, "eval.n_test": NUMBER, "table": dict}
STRONG_FIELDS = {"n_test": NUMBER, "bn": str, "precision": str, "models": dict}
STRONG_ACCURACY = ["clean", "pgd10", "pgd_ce", "pgd_cw", "robust"]
STATS_FIELDS = {"mean": NUMBER, "std": (int, float, type(None)), "n": int}
GENERATOR_FIELDS = RUN_FIELDS | {"settings.seed": NUMBER, "attack_training": dict, "n_test": NUMBER,
                                 "table5": dict, "table6": dict, "examples": str}
OVER_TRAINING_FIELDS = {"dataset": str, "scoring.test_n": NUMBER, "scoring.strong_n": NUMBER, "provenance.command": str,
                        "models": dict}
PRECISION_FIELDS = {"settings.iters": NUMBER, "settings.test_n": NUMBER, "settings.strong_n": NUMBER, "seeds": list,
                    "arms": dict, "runs": dict, "summary": dict, "bf16_table_minus_float32": dict, "provenance.command": str}
PRECISION_SCORES = ["clean", "fgs", "pgd", "autoattack", "g_gain_first", "g_gain_last"]
SNAPSHOT_FIELDS = {"iter": NUMBER, "n_test": NUMBER, "autoattack_n": NUMBER, "accuracy.clean": NUMBER,
                   "accuracy.pgd10": NUMBER, "accuracy.pgd_ce": NUMBER, "on_autoattack_images.pgd10": NUMBER,
                   "on_autoattack_images.autoattack": NUMBER}


class BadResult(Exception):
    "Why a results file cannot be shown, in one line."


class Result(NamedTuple):
    file: str        # name in RESULTS_DIR
    experiment: str  # mnist ... cifar100, ensemble, generators, over_training, precision_study
    quick: bool      # a --quick smoke test
    data: dict
    protocol: str    # paper (the settings of the paper's text; files older than --protocol) or authors


def need(obj, dotted, types):
    "The value at a dotted key path, checked to be of `types`."
    value, keys = obj, dotted.split(".")
    for i, key in enumerate(keys):
        if not isinstance(value, dict):
            raise BadResult(f"'{'.'.join(keys[:i])}' is not an object" if i else "not a JSON object")
        if key not in value:
            raise BadResult(f"missing key '{'.'.join(keys[:i + 1])}'")
        value = value[key]
    if not isinstance(value, types):
        raise BadResult(f"'{dotted}' has the wrong type ({type(value).__name__})")
    return value


def check_fields(obj, fields, prefix=""):
    for dotted, types in fields.items():
        need(obj, prefix + dotted, types)


def check_table(obj, dotted):
    table = need(obj, dotted, dict)
    if not table:
        raise BadResult(f"'{dotted}' has no rows")
    for row, values in table.items():
        if not isinstance(values, dict) or not all(isinstance(v, NUMBER) for v in values.values()):
            raise BadResult(f"'{dotted}.{row}' is not a column -> accuracy mapping")


def check_models(obj, prefix):
    for name in need(obj, prefix + "models", dict):
        need(obj, f"{prefix}models.{name}.iters_done", NUMBER)
        history = need(obj, f"{prefix}models.{name}.history", list)
        if not all(isinstance(point, dict) and isinstance(point.get("iter"), NUMBER) for point in history):
            raise BadResult(f"'{prefix}models.{name}.history' has a point without a numeric 'iter'")


def check_strong(run):
    "The --strong-eval entry of one run, where it has one."
    if "strong_eval" not in run:
        return
    check_fields(run, STRONG_FIELDS, "strong_eval.")
    for name in run["strong_eval"]["models"]:
        check_fields(run, {f"{name}.accuracy.{key}": NUMBER for key in STRONG_ACCURACY}, "strong_eval.models.")
        for check in need(run, f"strong_eval.models.{name}.checks", dict):
            check_fields(run, {"flag": bool, "why": str}, f"strong_eval.models.{name}.checks.{check}.")


def check_dataset(data, prefix=""):
    check_fields(data, DATASET_FIELDS, prefix)
    check_table(data, prefix + "table")
    check_models(data, prefix)
    check_strong(need(data, prefix[:-1], dict) if prefix else data)  # prefix "datasets.<name>.": that entry


def check_dataset_file(data):
    "A data set's file: one run, or with --seeds one run per seed and the statistics of every cell."
    if "runs" not in data:
        return check_dataset(data)
    for seed in need(data, "runs", dict):
        check_dataset(data, f"runs.{seed}.")
    check_table(data, "table")
    for row, columns in need(data, "table_stats", dict).items():
        for column in columns:
            check_fields(data, STATS_FIELDS, f"table_stats.{row}.{column}.")


def check_ensemble(data):
    for name in need(data, "datasets", dict):
        check_dataset(data, f"datasets.{name}.")


def check_generators(data):
    check_fields(data, GENERATOR_FIELDS)
    check_table(data, "table5")
    check_table(data, "table6")
    check_models(data, "")
    check_strong(data)


def check_over_training(data):
    check_fields(data, OVER_TRAINING_FIELDS)
    for name in data["models"]:
        snapshots = need(data, f"models.{name}.snapshots", list)
        if not snapshots:
            raise BadResult(f"'models.{name}.snapshots' is empty")
        for i, entry in enumerate(snapshots):
            try:
                check_fields(entry, SNAPSHOT_FIELDS)
            except BadResult as err:
                raise BadResult(f"models.{name}.snapshots[{i}]: {err}") from None


def check_precision_study(data):
    check_fields(data, PRECISION_FIELDS)
    for arm, by_seed in data["runs"].items():
        for seed in by_seed:
            check_fields(data, {f"{s}": NUMBER for s in PRECISION_SCORES}, f"runs.{arm}.{seed}.float32.")
            check_models({"models": {seed: by_seed[seed]["model"]}}, "")
        for score in PRECISION_SCORES:
            check_fields(data, STATS_FIELDS, f"summary.{arm}.{score}.")


CHECKS = {**{name: check_dataset_file for name in DATASETS}, "ensemble": check_ensemble, "generators": check_generators,
          "over_training": check_over_training, "precision_study": check_precision_study}


def load_result(path):
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise BadResult(f"cannot be read ({err.strerror})") from None
    except ValueError as err:  # invalid JSON, or not UTF-8
        raise BadResult(f"not valid JSON ({err})") from None
    label = need(data, "experiment", str)
    experiment = label.removesuffix("_quick").removesuffix("_authors")
    if experiment == "bench":
        raise BadResult("bench.py's speed measurements, not accuracies (README: Measure speed)")
    if experiment not in CHECKS:
        raise BadResult(f"unknown experiment '{label}'")
    CHECKS[experiment](data)
    # ensemble.py and generators_study.py name only the file of a --quick run
    protocol = data.get("protocol", "paper")
    if not isinstance(protocol, str):
        raise BadResult("'protocol' is not a string")
    return Result(path.name, experiment, path.name.endswith("_quick.json") or label.endswith("_quick"), data, protocol)


def load_all(folder):
    "The readable results in display order, and one line per file that is not."
    results, problems = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            results.append(load_result(path))
        except BadResult as err:
            problems.append(f"{path.name}: not shown: {err}")
    order = DATASETS + ["ensemble", "generators", "over_training", "precision_study"]
    return sorted(results, key=lambda r: (order.index(r.experiment), r.protocol != "paper", r.quick, r.file)), problems


def runs_of(result):
    "(name, run) pairs: one per data set of the ensemble file, one per seed of a --seeds file, else the file."
    if result.experiment == "ensemble":
        return list(result.data["datasets"].items())
    if "runs" in result.data:
        return [(f"{result.experiment} seed {seed}", run) for seed, run in result.data["runs"].items()]
    return [(result.experiment, result.data)]


def hide_superseded_quick(results):
    "Smoke tests of experiments that have a full result of their protocol, unless RESULTS_DIR asks for everything."
    full = {(r.experiment, r.protocol) for r in results if not r.quick}
    hidden = [] if SHOW_ALL_QUICK else [r for r in results if r.quick and (r.experiment, r.protocol) in full]
    notes = [f"{r.file}: smoke test not shown ({r.experiment} has a full result, {r.protocol} protocol)" for r in hidden]
    return [r for r in results if r not in hidden], notes


def quick_tag(result):
    return "  [QUICK SMOKE TEST: a pipeline check, not a result]" if result.quick else ""


def protocol_text(run):
    "Which settings made a run: the paper's text, or the authors' code (and which of it, extrapolated or not)."
    settings = run["settings"]
    if settings.get("protocol", "paper") == "paper":
        return "protocol: paper (the settings of the paper's text)"
    return f"protocol: authors (the settings of the authors' code: {settings.get('protocol_source') or 'unnamed'})"


def for_each(results, show, none_line):
    "show(result) for each result, or none_line when there are none."
    for result in results:
        show(result)
    if not results:
        print(none_line)


loaded, problems = load_all(RESULTS_DIR)
shown, hidden = hide_superseded_quick(loaded)
# over_training.json and precision_study.json are not listed: studies of their own (README)
missing = [f"{name}.json ({COMMANDS[name]} --gpu 0)" for name in COMMANDS if not (RESULTS_DIR / f"{name}.json").exists()]
print(f"results folder: {RESULTS_DIR.resolve()}" + ("" if RESULTS_DIR.is_dir() else " (does not exist)"))
print("shown:", ", ".join(r.file + (" (quick smoke test)" if r.quick else "") for r in shown) or "nothing")
print("missing:", ", ".join(missing) or "nothing")
for line in problems + hidden:
    print(line)


# %% [markdown]
# ## Tables 1, 2, 3, 7 and Fashion-MNIST: ours beside the paper
#
# Per model: our accuracy, the paper's, and the difference ours − paper, with `*` where it exceeds 3
# points. `-`: a column the run did not evaluate. The lines above each table give the protocol (the
# settings of the paper's text, or of the authors' code, which produced the paper's numbers) and the
# settings that produced ours. A run made with `--seeds` shows one settings line per seed, the mean over the seeds
# as ours, with its sample standard deviation (`± sd`) beneath, and the number of seeds n. Fashion-MNIST
# is not in the paper: its rows are set against the paper's MNIST ones (another data set and ε), which
# shows the pattern, not a reproduction.

# %%
def paper_table(dataset):
    "The paper's rows for a data set ({row: {column: accuracy}}) and a caption saying what they are."
    key = "mnist" if dataset == "fashion_mnist" else dataset
    if key not in PAPER["tables"]:
        return {}, "the paper has no table for this data set"
    table = PAPER["tables"][key]
    caption = f"paper: Table {table['table']} ({key}, eps {table['eps']:g})"
    if dataset == "fashion_mnist":
        caption += "; Fashion-MNIST is not in the paper, so these are its MNIST rows: another data set and eps"
    return {row: dict(zip(COLUMNS, values)) for row, values in table["rows"].items()}, caption


def format_seconds(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def settings_line(run, seeds, n_test):
    "What produced a run's numbers: schedule, radius, seeds, test images, machine, code version, time."
    prov = run["provenance"]
    commit = (prov["git_commit"] or "unknown")[:10] + (" + uncommitted changes" if prov["git_dirty"] else "")
    iters = run["settings"]["iters"]
    unfinished = [f"{name} {m['iters_done']}" for name, m in run["models"].items() if m["iters_done"] != iters]
    return (f"iterations {iters}" + (f" (done: {', '.join(unfinished)})" if unfinished else "")
            + f", eps {run['settings']['eps']:g}, seeds {seeds}, n_test {n_test}, device {prov['device']},"
            + f" git {commit}, wall time {format_seconds(run['wall_seconds'])}")


def seeds_text(seeds):
    return " ".join(f"{model}={seed}" for model, seed in seeds.items())


def value_cell(v):
    return f"{v:8.2f} "


def diff_cell(d):
    return f"{d:+8.2f}" + ("*" if abs(d) > HIGHLIGHT else " ")


def format_cells(values, form):
    return "".join(f"{'-':>8} " if v is None else form(v) for v in values)


def comparison(ours, paper, columns, spread=None):
    "Each of our rows (and its standard deviation over seeds, if given), then the paper's and ours - paper where the paper has it; rows in the paper's order."
    order = list(paper) + [row for row in ours if row not in paper]
    rows = [row for row in order if row in ours]
    width = max(map(len, rows))

    def label(row, kind):
        return f"{row:<{width}}  {kind:<6}"

    lines, n_marked = [label("", "") + "".join(f"{c:>8} " for c in columns)], 0
    for row in rows:
        mine = [ours[row].get(c) for c in columns]
        lines.append(label(row, "ours") + format_cells(mine, value_cell))
        if spread and row in spread:
            lines.append(label("", "± sd") + format_cells([spread[row].get(c) for c in columns], value_cell))
        if row in paper:
            theirs = [paper[row].get(c) for c in columns]
            diffs = [None if a is None or b is None else a - b for a, b in zip(mine, theirs)]
            n_marked += sum(d is not None and abs(d) > HIGHLIGHT for d in diffs)
            lines.append(label("", "paper") + format_cells(theirs, value_cell))
            lines.append(label("", "diff") + format_cells(diffs, diff_cell))
    lines.append(f"* |ours - paper| > {HIGHLIGHT:g} points: {n_marked} cells" if paper else "(no paper numbers to compare)")
    return "\n".join(line.rstrip() for line in lines)


def spread_of(data):
    "row -> column -> standard deviation over the seeds (None for one seed) of a --seeds file, else None."
    stats = data.get("table_stats")
    return {row: {c: cell["std"] for c, cell in cols.items()} for row, cols in stats.items()} if stats else None


def seed_counts(data):
    "The numbers of seeds behind the cells of a --seeds file, e.g. '3' (or '2/3' where some seed lacks a cell)."
    return "/".join(map(str, sorted({cell["n"] for cols in data["table_stats"].values() for cell in cols.values()})))


def print_dataset(result):
    data = result.data
    paper, caption = paper_table(result.experiment)
    print(f"\n=== {result.experiment}: {result.file}{quick_tag(result)}")
    for name, run in runs_of(result):
        print(protocol_text(run))
        print(settings_line(run, seeds_text(run["seeds"]), run["eval"]["n_test"]))
    if "runs" in data:
        print(f"ours: the mean over n = {seed_counts(data)} seeds; ± sd: their sample standard deviation")
    print(caption)
    print(comparison(data["table"], paper, COLUMNS, spread_of(data)))


dataset_results = [r for r in shown if r.experiment in DATASETS]
for_each(dataset_results, print_dataset, "no data-set results to show")


# %% [markdown]
# ## Accuracy per attack
#
# Bars: our accuracy per column for A, B, C, and EAT when the ensemble results cover the data set (a
# smoke test is only ever paired with a smoke test). Black ticks: the paper's numbers. A run made with
# `--seeds`: bars are the means over its n seeds (the title says n), whiskers ± one standard deviation.

# %%
def eat_row(dataset, quick, protocol):
    for result in shown:
        if (result.experiment == "ensemble" and result.quick == quick and result.protocol == protocol
                and dataset in result.data["datasets"]):
            return result.data["datasets"][dataset]["table"].get("EAT")
    return None


def plot_accuracy_bars(result):
    rows, spread = dict(result.data["table"]), spread_of(result.data) or {}
    eat = eat_row(result.experiment, result.quick, result.protocol)
    if eat is not None:
        rows["EAT"] = eat
    paper, caption = paper_table(result.experiment)
    fig, ax = plt.subplots(figsize=(11, 3.2))
    x, width = np.arange(len(COLUMNS)), 0.8 / len(rows)
    for i, (name, values) in enumerate(rows.items()):
        offset = x + (i - (len(rows) - 1) / 2) * width
        errors = [spread[name].get(c) or np.nan for c in COLUMNS] if name in spread else None
        ax.bar(offset, [values.get(c, np.nan) for c in COLUMNS], width, yerr=errors, capsize=2, label=name,
               color=COLORS.get(name))
        if name in paper:
            ax.scatter(offset, [paper[name][c] for c in COLUMNS], marker="_", s=120, color="k", zorder=3, label="paper")
    ax.set(xticks=x, xticklabels=COLUMNS, ylim=(0, 100), ylabel="test accuracy (%)")
    seeds = f"; bars: mean of n = {seed_counts(result.data)} seeds, whiskers ± sd" if spread else ""
    ax.set_title(f"{result.file}{quick_tag(result)}{seeds}, {result.protocol} protocol\n{caption}", fontsize=9)
    legend = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one "paper" entry
    ax.legend(legend.values(), legend.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.show()


for_each(dataset_results, plot_accuracy_bars, "no data-set results to plot")


# %% [markdown]
# ## Table 4: ensemble adversarial training
#
# EAT is trained on a static set of adversarial examples crafted on A (FGS, PGD, least-likely-class
# FGS) plus the clean images; Table 4's adversarial-network rows are row C of Tables 1–3.

# %%
def print_ensemble(result):
    print(f"\n=== {result.file}{quick_tag(result)}")
    for dataset, entry in result.data["datasets"].items():
        paper, caption = paper_table(dataset)
        print(f"\n--- {dataset}")
        print(protocol_text(entry))
        print(settings_line(entry, seeds_text(entry["seeds"]), entry["eval"]["n_test"]))
        print(caption + ("; its EAT and C rows are Table 4's" if "EAT" in paper else "; the paper has no EAT row for it"))
        print(comparison(entry["table"], {row: paper[row] for row in ("EAT", "C") if row in paper}, COLUMNS))


ensemble_results = [r for r in shown if r.experiment == "ensemble"]
for_each(ensemble_results, print_ensemble, "no ensemble results to show")

# %% [markdown]
# ## Is the robustness real? Strong attacks and gradient-masking checks
#
# Runs made with `--strong-eval` (README, "Strong evaluation"). Per model: the paper's PGD-10 beside
# PGD-CE with 100 steps and 5 restarts, PGD on the CW margin, AutoAttack (its standard cascade, the
# number RobustBench reports; in results made before the cascade was run, the lowest accuracy of its
# four attacks alone, marked `*`), C's generator, the best transfer attack, and `robust`, the
# per-example worst case over every attack. AutoAttack's own checks' warnings are listed per model. A raised masking flag means the
# gradient attacks' numbers should not be trusted for that model. Below: accuracy against PGD's ε,
# which should fall to about 0, and model C's white-box accuracy with batch norm's running statistics
# (eval mode) against the authors' protocol, batch statistics.

# %%
AUTOATTACK = ["apgd_ce", "apgd_t", "fab_t", "square"]


def strong_runs():
    "(title, strong_eval) of each shown run made with --strong-eval."
    for result in shown:
        for name, run in runs_of(result):
            if "strong_eval" in run:
                yield f"{result.file}{quick_tag(result)}: {name}, {result.protocol} protocol", run["strong_eval"]


def strong_summary(accuracy):
    "The headline columns of one model: the paper's attack, the stronger ones, the worst case."
    transfers = [v for k, v in accuracy.items() if k.startswith("transfer_")]
    alone = [accuracy[a] for a in AUTOATTACK if a in accuracy]
    autoattack = accuracy.get("autoattack", min(alone) if alone else None)
    return {"clean": accuracy["clean"], "pgd10": accuracy["pgd10"], "pgd100x5": accuracy["pgd_ce"],
            "pgd_cw": accuracy["pgd_cw"], "autoattack": autoattack,
            "generator_C": accuracy.get("generator_C"), "transfer": min(transfers) if transfers else None,
            "robust": accuracy["robust"]}


def print_strong(title, strong):
    print(f"\n=== {title}: first {strong['n_test']} test images, batch norm {strong['bn']}, {strong['precision']}")
    rows = {name: strong_summary(m["accuracy"]) for name, m in strong["models"].items()}
    columns = list(next(iter(rows.values())))
    print(f"{'model':<8}" + "".join(f"{c:>12}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<8}" + "".join(f"{'-':>12}" if row[c] is None else f"{row[c]:>12.2f}" for c in columns)
              + ("" if "autoattack" in strong["models"][name]["accuracy"] else "  * AutoAttack: lowest of its attacks alone"))
    if "autoattack" in strong:
        print(f"AutoAttack: {strong['autoattack']['version']}")
    for name, m in strong["models"].items():
        raised = [f"{check} ({c['why']})" for check, c in m["checks"].items() if c["flag"]]
        print(f"masking flags of {name}: " + ("; ".join(raised) if raised else f"none of {len(m['checks'])}"))
        for warning in m.get("autoattack_warnings", []):
            print(f"AutoAttack's warning on {name}: {warning}")


def plot_eps_sweeps(title, strong):
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name, m in strong["models"].items():
        sweep = sorted((float(k[4:]), v) for k, v in m["accuracy"].items() if k.startswith("eps_"))
        ax.plot(*zip(*sweep), marker=".", label=name, color=COLORS.get(name))
    ax.set(xlabel="PGD ε ([0, 1] units)", ylabel="accuracy (%)", title=title, ylim=(0, 100))
    ax.legend(fontsize=7)
    plt.show()


strong = list(strong_runs())
for title, strong_eval in strong:
    print_strong(title, strong_eval)
    plot_eps_sweeps(title, strong_eval)
if not strong:
    print("no run made with --strong-eval")
for result in shown:
    for name, run in runs_of(result):
        modes = run.get("eval", {}).get("bn_comparison", {}).get("C")
        if modes:
            print(f"\nmodel C of {result.file} ({name}, {result.protocol} protocol), white box, by batch-norm mode:")
            for mode, row in modes.items():
                print(f"  {mode:<8}" + "".join(f"{k} {v:6.2f}   " for k, v in row.items()))


# %% [markdown]
# ## Tables 5 and 6: other generators (CIFAR-10)
#
# Table 5: accuracy of the fixed models A, A', B, C on x + ε·G(x), for generators trained to attack A.
# Table 6: adversarial networks (D2) co-trained with each generator, attacked white-box and black-box
# (G1 k=64 is row C of Table 3).

# %%
def paper_table5():
    spec = PAPER["generator_attack"]
    return {g: {target: values[i] for target, values in spec["targets"].items()} for i, g in enumerate(spec["generators"])}


def paper_table6():
    spec = PAPER["generator_cotrain"]
    return {g: dict(zip(spec["columns"], values)) for g, values in spec["rows"].items()}


def print_generators(result):
    data = result.data
    print(f"\n=== {result.file}{quick_tag(result)}")
    print(protocol_text(data))
    print(settings_line(data, f"{data['settings']['seed']} (copies X': {data['settings']['seed'] + 1})", data["n_test"]))
    print("attacking generators trained with", ", ".join(f"{key} {value}" for key, value in data["attack_training"].items()))
    print(f"\nTable 5 (paper: {PAPER['generator_attack']['meaning']})")
    print(comparison(data["table5"], paper_table5(), list(PAPER["generator_attack"]["targets"])))
    print("\nTable 6 (paper: co-trained adversarial networks)")
    print(comparison(data["table6"], paper_table6(), PAPER["generator_cotrain"]["columns"]))


generator_results = [r for r in shown if r.experiment == "generators"]
for_each(generator_results, print_generators, "no generator-study results to show")


# %% [markdown]
# ### What the generators do
#
# Per generator, a few test images: x; the perturbation ε·G(x) (before x + ε·G(x) is clipped to
# [0, 1]), rescaled for display as ε·G(x) / (2ε) + 0.5 (grey: none; black or full colour: ±ε);
# and x + ε·G(x), what the models are scored on.

# %%
def load_examples(result):
    "The arrays of the .npz named by the results file's 'examples' key (a path relative to its folder)."
    path = RESULTS_DIR / result.data["examples"]
    if not path.is_file():
        raise BadResult("missing")
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise BadResult(f"not a readable .npz ({err})") from None


def generator_names(arrays):
    "The paper's generators first, then any other that has examples."
    paper_order = PAPER["generator_attack"]["generators"]
    found = [key.removesuffix("_clean") for key in arrays if key.endswith("_clean")]
    return sorted(found, key=lambda g: paper_order.index(g) if g in paper_order else len(paper_order))


def example_triplet(arrays, name):
    "(clean, perturbation, perturbed) image batches (N, C, H, W) of one generator."
    keys = [f"{name}_{part}" for part in ("clean", "perturbation", "perturbed")]
    if any(key not in arrays for key in keys):
        raise BadResult(f"{name} needs the arrays {', '.join(keys)}")
    triplet = [arrays[key] for key in keys]
    shape = triplet[0].shape
    if len(shape) != 4 or shape[0] == 0 or shape[1] not in (1, 3) or any(a.shape != shape for a in triplet):
        raise BadResult(f"{', '.join(keys)} should be image batches (N, 1 or 3, H, W) of one shape")
    return triplet


def as_image(chw):
    hwc = np.clip(np.transpose(chw, (1, 2, 0)), 0, 1)
    return hwc[..., 0] if hwc.shape[-1] == 1 else hwc


def plot_examples(name, clean, perturbation, perturbed, eps, tag):
    rows = {"x": clean, "ε·G(x)\nrescaled": perturbation / (2 * eps) + 0.5, "x + ε·G(x)": perturbed}
    fig, axes = plt.subplots(3, len(clean), figsize=(0.9 * len(clean) + 1, 3), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for ax, image in zip(axes[r], images):
            ax.imshow(as_image(image), cmap="gray", vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center")
    fig.suptitle(f"{name}: max |ε·G(x)| = {np.abs(perturbation).max():.4f}, ε = {eps:g}{tag}")
    plt.show()


def show_examples(result):
    try:
        arrays = load_examples(result)
        for name in generator_names(arrays):
            plot_examples(name, *example_triplet(arrays, name), result.data["settings"]["eps"],
                          f"{quick_tag(result)}, {result.protocol} protocol")
    except BadResult as err:
        print(f"{result.data['examples']} (the examples of {result.file}): {err}")


for_each(generator_results, show_examples, "no generator examples to show")

# %% [markdown]
# ## Training curves
#
# Means over each logging window of the training minibatches. Loss: what the model minimises (A: on
# clean images; B: on PGD examples; C: clean plus perturbed; EAT: on its static set of clean and
# adversarial images). Training accuracy: on the clean images (EAT: its set; B logs none); adversarial:
# on the batch's adversarial examples (B: PGD; C: x + ε·G(x)).
# Dashed: the copies X' trained with the other seed. The attacking generators of Table 5 show the
# loss they maximise, A's loss on x + ε·G(x).

# %%
TRAINING_PANELS = [("loss", "training loss (its objective)", 1),  # history's accuracies are fractions
                   ("acc", "training accuracy (%)", 100),
                   ("acc_adv", "training accuracy, adversarial (%)", 100)]


def curve(model, key, scale):
    return [(p["iter"], p[key] * scale) for p in model["history"] if isinstance(p.get(key), NUMBER)]


def plot_curves(models, panels, title):
    "One panel per history key that some model logged; a model's copy X' dashed in its colour."
    panels = [(key, label, scale) for key, label, scale in panels if any(curve(m, key, scale) for m in models.values())]
    if not panels:
        print(f"{title}: no training history")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3), squeeze=False)
    for ax, (key, label, scale) in zip(axes[0], panels):
        for name, model in models.items():
            if points := curve(model, key, scale):
                ax.plot(*zip(*points), marker=".", label=name, color=COLORS.get(name.rstrip("'")),
                        linestyle="--" if name.endswith("'") else "-")
        ax.set(xlabel="iteration", ylabel=label)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def plot_result_curves(result):
    data, title = result.data, f"{result.file}{quick_tag(result)} ({result.protocol} protocol)"
    if result.experiment in DATASETS:
        for name, run in runs_of(result):
            plot_curves(run["models"], TRAINING_PANELS, title + (f": {name}" if "runs" in data else ""))
    elif result.experiment == "ensemble":
        for dataset, entry in data["datasets"].items():
            plot_curves(entry["models"], TRAINING_PANELS, f"{title}: {dataset}")
    elif result.experiment == "generators":
        attackers = {name: m for name, m in data["models"].items() if name.endswith("_vs_A")}
        cotrained = {name: m for name, m in data["models"].items() if name not in attackers}
        plot_curves(attackers, [("loss_adv", "A's loss on x + ε·G(x)", 1)], f"{title}: generators attacking A")
        plot_curves(cotrained, TRAINING_PANELS, f"{title}: D co-trained with each generator")


for_each(shown, plot_result_curves, "no training histories to plot")


# %% [markdown]
# ## Robust accuracy over training
#
# `over_training.py`: each kept snapshot of a model scored on the same test images. Solid lines: the
# first `test_n` images (clean, FGS, the paper's PGD-10, PGD-CE with 100 steps and 5 restarts, C's own
# generator); black: AutoAttack's standard cascade on the first `strong_n` of them. Dashed grey: PGD on
# the held-out validation split during training (`val_history`); dotted: the snapshot that scored
# best there. The table sets AutoAttack against PGD-10 on the same images, the gap that grows if a
# model looks robust only to the weaker attack.

# %%
OVER_TRAINING_LINES = [("clean", "clean"), ("fgs", "FGS"), ("pgd10", "PGD-10 (paper's)"), ("pgd_ce", "PGD-CE 100×5"),
                       ("generator", "own generator")]


def plot_over_training(result):
    models, title = result.data["models"], f"{result.file}{quick_tag(result)} ({result.protocol} protocol)"
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.2), sharey=True, squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        snapshots = model["snapshots"]
        iters = [e["iter"] for e in snapshots]
        for key, label in OVER_TRAINING_LINES:
            if all(key in e["accuracy"] for e in snapshots):
                ax.plot(iters, [e["accuracy"][key] for e in snapshots], marker=".",
                        label=f"{label}, first {snapshots[0]['n_test']}")
        ax.plot(iters, [e["on_autoattack_images"]["autoattack"] for e in snapshots], marker="o", color="black",
                label=f"AutoAttack, first {snapshots[0]['autoattack_n']}")
        validation = [(v["iter"], v["pgd"]) for v in model.get("model", {}).get("val_history", [])]
        if validation:
            ax.plot(*zip(*validation), linestyle="--", color="grey", label="PGD, validation split")
        if model.get("best_snapshot"):
            ax.axvline(model["best_snapshot"]["iter"], color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{name} ({model.get('method', '?')})", xlabel="iteration", ylim=(0, 100))
    axes[0][0].set_ylabel("accuracy (%)")
    lines = {label: line for ax in axes[0] for line, label in zip(*ax.get_legend_handles_labels())}  # C's generator too
    axes[0][-1].legend(lines.values(), lines.keys(), fontsize=7, loc="lower right")
    fig.suptitle(f"{title}: {result.data['dataset']}")
    fig.tight_layout()
    plt.show()


def print_over_training(result):
    print(f"\n=== {result.file}{quick_tag(result)}: {result.data['dataset']}, {result.protocol} protocol, "
          f"{result.data['provenance']['command']}")
    for name, model in result.data["models"].items():
        m = model["snapshots"][0]["autoattack_n"]
        print(f"{name}: on the first {m} test images, accuracy (%)")
        print(f"{'iteration':>10}{'PGD-10':>10}{'AutoAttack':>12}{'gap':>8}")
        for e in model["snapshots"]:
            on = e["on_autoattack_images"]
            print(f"{e['iter']:>10}{on['pgd10']:>10.2f}{on['autoattack']:>12.2f}{on['pgd10'] - on['autoattack']:>8.2f}")
        best = model.get("best_snapshot")
        print("best snapshot on validation PGD: " + (f"iteration {best['iter']}" if best else "none scored"))


over_training_results = [r for r in shown if r.experiment == "over_training"]
for_each(over_training_results, lambda r: (print_over_training(r), plot_over_training(r)),
         "no over-training results to show (README: Robust accuracy over training)")


# %% [markdown]
# ## Mixed precision: does bf16 train the same model C?
#
# `precision_study.py`: Fashion-MNIST model C (G1 k=8, 1000 iterations) trained with each seed in
# three arms: float32; bf16 autocast around forward passes only, its cast cache off (the training
# path now); and bf16 autocast around the whole step with its cache on, trained by the code before
# the fix (G's steps 2 to 5 of every minibatch saw step 1's weights). Every model scored in float32:
# clean, FGS, PGD-10 on the first `test_n` test images, AutoAttack's standard cascade on the first
# `strong_n`. `g_gain`: how much G's five steps raised D's adversarial loss on their minibatch, in the
# first and the last logging window of training. Below the table: the paper's columns crafted under
# bf16 autocast less the same in float32 (does the table's precision matter?), and `g_gain` through training.

# %%
def print_precision_study(result):
    data = result.data
    print(f"\n=== {result.file}{quick_tag(result)}: {data['settings']['iters']} iterations, seeds "
          f"{data['seeds']}, {data['settings']['test_n']} test images (AutoAttack: {data['settings']['strong_n']})")
    digits = lambda c: 3 if abs(c["mean"]) < 1 else 2  # the losses' gains are fractions, the accuracies percent
    cell = lambda c: f"{c['mean']:.{digits(c)}f}"
    spread = lambda c: f"±{c['std']:.{digits(c)}f}" if c["std"] is not None else ""
    print(f"{'arm':<16}" + "".join(f"{s:>18}" for s in PRECISION_SCORES))
    for arm, scores in data["summary"].items():
        print(f"{arm:<16}" + "".join(f"{cell(scores[s]) + spread(scores[s]):>18}" for s in PRECISION_SCORES))
    for arm, description in data["arms"].items():
        print(f"  {arm}: {description}")
    print("\nthe paper's columns crafted under bf16 less in float32, points, per seed:")
    for arm, by_seed in data["bf16_table_minus_float32"].items():
        print(f"  {arm:<16}" + "; ".join(f"seed {seed}: " + ", ".join(f"{c} {v:+.2f}" for c, v in d.items())
                                         for seed, d in by_seed.items()))


def plot_precision_study(result):
    fig, ax = plt.subplots(figsize=(5, 3))
    for i, (arm, by_seed) in enumerate(result.data["runs"].items()):
        for j, run in enumerate(by_seed.values()):
            points = curve(run["model"], "g_gain", 1)
            if points:
                ax.plot(*zip(*points), color=f"C{i}", alpha=0.8, label=arm if j == 0 else None)
    ax.set(xlabel="iteration", ylabel="G's five-step loss gain", title=f"{result.file}{quick_tag(result)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.show()


precision_results = [r for r in shown if r.experiment == "precision_study"]
for_each(precision_results, lambda r: (print_precision_study(r), plot_precision_study(r)),
         "no precision study to show (README: Precision: bf16 trains the same model C as float32)")
