# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# (docs/running.md has the options):
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
import os
import shlex
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import figures
from figures import COLORS, COLUMNS, PAPER, cell_interval, interval_text, paper_table, wilson
from results_files import DATASETS, PRECISION_SCORES, BadResult, load_all, quick_tag, runs_of

RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", "../results"))
SHOW_ALL_QUICK = "RESULTS_DIR" in os.environ  # a folder chosen on purpose is shown whole
COMMANDS = {"mnist": "python mnist.py", "fashion_mnist": "python mnist.py --fashion", "svhn": "python svhn.py",
            "cifar10": "python cifar10.py", "cifar100": "python cifar100.py", "ensemble": "python ensemble.py",
            "generators": "python generators_study.py"}
HIGHLIGHT = figures.CLOSE_POINTS  # accuracy points: larger differences from the paper are marked with *
plt.rcParams.update({"figure.dpi": 80, "font.size": 9})

# %% [markdown]
# ## Which results are here
#
# Each file is checked against its schema (docs/results-json.md) before anything is drawn: a file
# that is not valid JSON or lacks a key the notebook needs is named below with the reason, and skipped.
# The checks are in `results_files.py`, the figures and intervals in `figures.py`: `python notebooks/figures.py`
# redraws the figures the README and docs/ show with the same functions.

# %%
def hide_superseded_quick(results):
    "Smoke tests of experiments that have a full result of their protocol, unless RESULTS_DIR asks for everything."
    full = {(r.experiment, r.protocol) for r in results if not r.quick}
    hidden = [] if SHOW_ALL_QUICK else [r for r in results if r.quick and (r.experiment, r.protocol) in full]
    notes = [f"{r.file}: smoke test not shown ({r.experiment} has a full result, {r.protocol} protocol)" for r in hidden]
    return [r for r in results if r not in hidden], notes


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
# over_training.json, precision_study.json and ablation_study.json are not listed: studies of their own (docs/)
missing = [f"{name}.json ({COMMANDS[name]} --gpu 0)" for name in COMMANDS if not (RESULTS_DIR / f"{name}.json").exists()]
print(f"results folder: {RESULTS_DIR}" + ("" if RESULTS_DIR.is_dir() else " (does not exist)"))
print("shown:", ", ".join(r.file + (" (quick smoke test)" if r.quick else "") for r in shown) or "nothing")
print("missing:", ", ".join(missing) or "nothing")
for line in problems + hidden:
    print(line)


# %% [markdown]
# ## Summary: every data set and protocol beside the paper
#
# One row per model of every data-set result: the files above and those in sub-folders of the results
# folder (such as the comparison of the two protocols). Clean and the paper's white-box PGD (10 steps)
# are on the table's `n` test images; AutoAttack's standard cascade on the first images of `--strong-eval`
# (its own `n`). Each accuracy carries its 95% interval: Wilson's for `n` images; for a `--seeds` file,
# the mean over its seeds with a Student t interval over them (few seeds: the t interval widens, as it
# should), never narrower than Wilson's on the test images the seeds share. The paper's clean and PGD stand beside ours only on the paper's data set and ε; the paper has
# no AutoAttack. Fashion-MNIST is not in the paper: its paper cells are empty (the MNIST pattern is
# shown beside it in the next section).

# %%
SUMMARY_COLUMNS = ["data set", "eps", "protocol", "file", "model", "n (table / AutoAttack)", "clean", "PGD-10",
                   "AutoAttack", "paper clean", "paper PGD"]


def autoattack_interval(runs, name):
    "AutoAttack's accuracy of a model over the runs that scored it (mean over seeds), or None."
    strong = [run["strong_eval"] for run in runs if name in run.get("strong_eval", {}).get("models", {})]
    values = [s["models"][name]["accuracy"]["autoattack"] for s in strong if "autoattack" in s["models"][name]["accuracy"]]
    return figures.over_seeds(values, strong[0]["n_test"]) if values else None


def sample_sizes(data, runs):
    strong = {run["strong_eval"]["n_test"] for run in runs if "strong_eval" in run}
    images = f"{runs[0]['eval']['n_test']} / {'/'.join(map(str, strong)) or '-'}"
    return f"{len(runs)} seeds × {images}" if "runs" in data else images


def pgd_text(interval, run):
    steps = run["settings"].get("pgd_steps", 10)
    return interval_text(interval) + ("" if steps == 10 else f" (PGD-{steps})")


def summary_rows(result):
    "One row of SUMMARY_COLUMNS per model of a data-set or ensemble result."
    entries = list(result.data["datasets"].items()) if result.experiment == "ensemble" else [(result.experiment, result.data)]
    for dataset, data in entries:
        runs = list(data["runs"].values()) if "runs" in data else [data]
        eps = figures.run_eps(data)
        paper = paper_table(dataset, eps)
        for name, cells in figures.table_intervals(data).items():
            theirs = paper.rows.get(name, {}) if paper.same else {}
            autoattack = autoattack_interval(runs, name)
            yield [dataset, f"{eps:g}", result.protocol, result.file + (" (smoke test)" if result.quick else ""), name,
                   sample_sizes(data, runs), interval_text(cells["clean"]) if "clean" in cells else "-",
                   pgd_text(cells["pgd"], runs[0]) if "pgd" in cells else "-",
                   interval_text(autoattack) if autoattack else "-",
                   *(f"{theirs[c]:.1f}" if c in theirs else "" for c in ("clean", "pgd"))]


def print_summary(results):
    rows = [row for result in results for row in summary_rows(result)]
    if not rows:
        print("no data-set results to summarise")
        return
    widths = [max(len(str(row[i])) for row in rows + [SUMMARY_COLUMNS]) for i in range(len(SUMMARY_COLUMNS))]
    for row in [SUMMARY_COLUMNS] + rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip())
    print("accuracy (%) [95% interval]; n: test images (a --seeds file: seeds × images)")


in_subfolders, subfolder_problems = load_all(RESULTS_DIR, "*/*.json")
summarised = [r for r in shown + in_subfolders if r.experiment in DATASETS + ["ensemble"]]
print_summary(summarised)
# the per-seed over-training files are read in their own section
if subfolder_problems:
    print("in sub-folders, not summarised: " + "; ".join(p.replace(": not shown:", ":") for p in subfolder_problems))


# %% [markdown]
# ## Tables 1, 2, 3, 7 and Fashion-MNIST: ours beside the paper
#
# Per model: our accuracy with its 95% interval beneath (`95% lo`, `95% hi`: Wilson's for the `n_test`
# images), the paper's, and the difference ours − paper (`diff`), with `*` where it exceeds 3 points,
# and its 95% interval beneath (`Δ lo`, `Δ hi`: our half-width and that of the paper's Wilson interval on
# as many images, in quadrature); the last line counts the cells within 3 points. The
# difference is shown only on the paper's data set and ε. Fashion-MNIST is not in the paper: the
# paper's MNIST rows (ε 0.3) are printed beside ours as the pattern to expect, with no difference and
# no star. `-`: a column the run did not evaluate. The lines above each table give the protocol (the
# settings of the paper's text, or of the authors' code, which produced the paper's numbers) and the
# settings that produced ours. A run made with `--seeds` shows one settings line per seed, the mean over
# the seeds as ours, its sample standard deviation (`± sd`), and the 95% t interval over the n seeds
# (never narrower than Wilson's on the test images they share).

# %%
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
    warmup = run["settings"].get("model_overrides", {}).get("B", {}).get("pgd_warmup_iters",
                                                                          run["settings"].get("pgd_warmup_iters"))
    return (f"iterations {iters}" + (f" (done: {', '.join(unfinished)})" if unfinished else "")
            + f", eps {run['settings']['eps']:g}"
            + (f" (B's grown over its first {warmup} minibatches)" if warmup and {"B", "B'"} & set(run["models"]) else "")
            + f", seeds {seeds}, n_test {n_test}, device {prov['device']},"
            + f" git {commit}, wall time {format_seconds(run['wall_seconds'])}")


def seeds_text(seeds):
    return " ".join(f"{model}={seed}" for model, seed in seeds.items())


def value_cell(v):
    return f"{v:8.2f} "


def diff_cell(d):
    return f"{d:+8.2f}" + ("*" if abs(d) > HIGHLIGHT else " ")


def bound_cell(d):
    return f"{d:+8.2f} "


def format_cells(values, form):
    return "".join(f"{'-':>8} " if v is None else form(v) for v in values)


def comparison(ours, paper, columns, n_test, table_stats=None):
    """Each of our rows, its standard deviation over seeds (a --seeds file) and its 95% interval; then the
    paper's row, and ours - paper only where paper.same (the paper's data set and eps); rows in the paper's order."""
    order = list(paper.rows) + [row for row in ours if row not in paper.rows]
    rows = [row for row in order if row in ours]
    width = max(map(len, rows))

    def label(row, kind):
        return f"{row:<{width}}  {kind:<6}"

    lines, n_marked, n_compared = [label("", "") + "".join(f"{c:>8} " for c in columns)], 0, 0
    for row in rows:
        mine = [ours[row].get(c) for c in columns]
        cell_stats = (table_stats or {}).get(row, {})
        intervals = [None if v is None else cell_interval(v, n_test, cell_stats.get(c)) for v, c in zip(mine, columns)]
        lines.append(label(row, "ours") + format_cells(mine, value_cell))
        if cell_stats:
            lines.append(label("", "± sd") + format_cells([cell_stats.get(c, {}).get("std") for c in columns], value_cell))
        lines.append(label("", "95% lo") + format_cells([i and i.low for i in intervals], value_cell))
        lines.append(label("", "95% hi") + format_cells([i and i.high for i in intervals], value_cell))
        if row in paper.rows:
            theirs = [paper.rows[row].get(c) for c in columns]
            lines.append(label("", "paper") + format_cells(theirs, value_cell))
            if paper.same:
                diffs = [None if i is None or b is None else figures.paper_difference(i, b, n_test)
                         for i, b in zip(intervals, theirs)]
                n_compared += sum(d is not None for d in diffs)
                n_marked += sum(d is not None and abs(d.value) > HIGHLIGHT for d in diffs)
                lines.append(label("", "diff") + format_cells([d and d.value for d in diffs], diff_cell))
                lines.append(label("", "Δ lo") + format_cells([d and d.low for d in diffs], bound_cell))
                lines.append(label("", "Δ hi") + format_cells([d and d.high for d in diffs], bound_cell))
    if not paper.rows:
        lines.append("(no paper numbers to compare)")
    elif paper.same:
        lines.append(f"* |ours - paper| > {HIGHLIGHT:g} points: {n_marked} cells; within {HIGHLIGHT:g} points: "
                     f"{n_compared - n_marked} of {n_compared}; Δ lo, Δ hi: the 95% interval of diff, ours and the "
                     "paper's half-widths in quadrature")
    else:
        lines.append("not compared cell by cell: another data set or eps than the paper's")
    return "\n".join(line.rstrip() for line in lines)


def print_dataset(result):
    data = result.data
    paper = paper_table(result.experiment, figures.run_eps(data))
    runs = runs_of(result)
    print(f"\n=== {result.experiment}: {result.file}{quick_tag(result)}")
    for name, run in runs:
        print(protocol_text(run))
        print(settings_line(run, seeds_text(run["seeds"]), run["eval"]["n_test"]))
    if "runs" in data:
        print(f"ours: the mean over n = {figures.seed_counts(data)} seeds; ± sd: their sample standard deviation; "
              "95%: t interval over the seeds, never narrower than Wilson's on the images")
    print(paper.caption)
    print(comparison(data["table"], paper, COLUMNS, runs[0][1]["eval"]["n_test"], data.get("table_stats")))


dataset_results = [r for r in shown if r.experiment in DATASETS]
for_each(dataset_results, print_dataset, "no data-set results to show")


# %% [markdown]
# ## Accuracy per attack
#
# Bars: our accuracy per column for A, B, C, and EAT when the ensemble results cover the data set (a
# smoke test is only ever paired with a smoke test); whiskers: the 95% interval (Wilson's on the test
# images; a run made with `--seeds`: bars are the means over its n seeds, whiskers the t interval over
# them, never narrower than Wilson's). Black ticks: the paper's numbers on the same data set and ε; grey ticks: the paper's pattern on
# another data set or ε (Fashion-MNIST beside MNIST), not a target. `python notebooks/figures.py` draws
# the Fashion-MNIST figure the README shows with the same function.

# %%
for_each(dataset_results, lambda r: (figures.accuracy_bars(r, figures.ensemble_entry(shown, r)), plt.show()),
         "no data-set results to plot")


# %% [markdown]
# ## Table 4: ensemble adversarial training
#
# EAT is trained on a static set of adversarial examples crafted on A (FGS, PGD, least-likely-class
# FGS) plus the clean images; Table 4's adversarial-network rows are row C of Tables 1–3.

# %%
def print_ensemble(result):
    print(f"\n=== {result.file}{quick_tag(result)}")
    for dataset, entry in result.data["datasets"].items():
        paper = paper_table(dataset, entry["settings"]["eps"])
        table4 = paper._replace(rows={row: paper.rows[row] for row in ("EAT", "C") if row in paper.rows})
        print(f"\n--- {dataset}")
        print(protocol_text(entry))
        print(settings_line(entry, seeds_text(entry["seeds"]), entry["eval"]["n_test"]))
        print(paper.caption + ("; its EAT and C rows are Table 4's" if "EAT" in paper.rows else "; the paper has no EAT row for it"))
        print(comparison(entry["table"], table4, COLUMNS, entry["eval"]["n_test"]))


ensemble_results = [r for r in shown if r.experiment == "ensemble"]
for_each(ensemble_results, print_ensemble, "no ensemble results to show")

# %% [markdown]
# ## Is the robustness real? Strong attacks and gradient-masking checks
#
# Runs made with `--strong-eval` (docs/strong-evaluation.md). Per model: the paper's PGD-10 beside
# PGD-CE with 100 steps and 5 restarts, PGD on the CW margin, AutoAttack (its standard cascade, the
# number RobustBench reports; in results made before the cascade was run, the lowest accuracy of its
# four attacks alone, marked `*`), C's generator, the best transfer attack, and `robust`, the
# per-example worst case over every attack. AutoAttack's own checks' warnings are listed per model. A raised masking flag means the
# gradient attacks' numbers should not be trusted for that model. Below: accuracy against PGD's ε,
# which should fall to about 0, and model C's white-box accuracy with batch norm's running statistics
# (eval mode) against the authors' protocol, batch statistics. Every accuracy carries its 95% Wilson
# interval on the images it was measured on (`95% lo`, `95% hi` beneath each model; whiskers in the plot).

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
    cells = lambda values: "".join(f"{'-':>12}" if v is None else f"{v:>12.2f}" for v in values)
    print(f"{'model':<8}" + "".join(f"{c:>12}" for c in columns))
    for name, row in rows.items():
        intervals = [None if row[c] is None else wilson(row[c], strong["n_test"]) for c in columns]
        print(f"{name:<8}" + cells(row[c] for c in columns)
              + ("" if "autoattack" in strong["models"][name]["accuracy"] else "  * AutoAttack: lowest of its attacks alone"))
        print(f"{'  95% lo':<8}" + cells(i and i.low for i in intervals))
        print(f"{'  95% hi':<8}" + cells(i and i.high for i in intervals))
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
        sweep = sorted((float(k[4:]), wilson(v, strong["n_test"])) for k, v in m["accuracy"].items() if k.startswith("eps_"))
        ax.errorbar([eps for eps, _ in sweep], [i.value for _, i in sweep], yerr=figures.error_bars([i for _, i in sweep]),
                    marker=".", capsize=2, label=name, color=COLORS.get(name))
    ax.set(xlabel="PGD ε ([0, 1] units)", ylabel="accuracy (%), 95% Wilson", title=title, ylim=(0, 100))
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
            n = run["eval"]["n_test"]
            print(f"\nmodel C of {result.file} ({name}, {result.protocol} protocol), white box, by batch-norm mode"
                  f" (95% Wilson interval, n {n}):")
            for mode, row in modes.items():
                print(f"  {mode:<8}" + "   ".join(f"{k} {interval_text(wilson(v, n), 2)}" for k, v in row.items()))


# %% [markdown]
# ## Tables 5 and 6: other generators (CIFAR-10)
#
# Table 5: accuracy of the fixed models A, A', B, C on x + ε·G(x), for generators trained to attack A.
# Table 6: adversarial networks (D2) co-trained with each generator, attacked white-box and black-box
# (G1 k=64 is row C of Table 3).

# %%
def paper_table5(eps):
    spec = PAPER["generator_attack"]
    rows = {g: {target: values[i] for target, values in spec["targets"].items()} for i, g in enumerate(spec["generators"])}
    return figures.PaperRows(rows, spec["meaning"], spec["eps"] == eps)


def paper_table6(eps):
    spec = PAPER["generator_cotrain"]
    return figures.PaperRows({g: dict(zip(spec["columns"], values)) for g, values in spec["rows"].items()},
                             spec["meaning"], spec["eps"] == eps)


def print_generators(result):
    data = result.data
    print(f"\n=== {result.file}{quick_tag(result)}")
    print(protocol_text(data))
    print(settings_line(data, f"{data['settings']['seed']} (copies X': {data['settings']['seed'] + 1})", data["n_test"]))
    print("attacking generators trained with", ", ".join(f"{key} {value}" for key, value in data["attack_training"].items()))
    print(f"\nTable 5 (paper: {PAPER['generator_attack']['meaning']})")
    eps, n = data["settings"]["eps"], data["n_test"]
    print(comparison(data["table5"], paper_table5(eps), list(PAPER["generator_attack"]["targets"]), n))
    print("\nTable 6 (paper: co-trained adversarial networks)")
    print(comparison(data["table6"], paper_table6(eps), PAPER["generator_cotrain"]["columns"], n))


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
# loss they maximise, A's loss on x + ε·G(x). The training accuracies describe training (each point
# averages minibatches the model was changing on); they estimate no accuracy on unseen images, so
# they carry no interval: the test accuracies above and below do.

# %%
TRAINING_PANELS = [("loss", "training loss (its objective)", 1),  # history's accuracies are fractions
                   ("acc", "training accuracy (%)", 100),
                   ("acc_adv", "training accuracy, adversarial (%)", 100)]


def plot_curves(models, panels, title):
    "One panel per history key that some model logged; a model's copy X' dashed in its colour."
    panels = [(key, label, scale) for key, label, scale in panels if any(figures.curve(m, key, scale) for m in models.values())]
    if not panels:
        print(f"{title}: no training history")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3), squeeze=False)
    for ax, (key, label, scale) in zip(axes[0], panels):
        for name, model in models.items():
            if points := figures.curve(model, key, scale):
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
# `tools/over_training.py`: each kept snapshot of a model scored on the same test images. Solid lines: the
# first `test_n` images (clean, FGS, the paper's PGD-10, PGD-CE with 100 steps and 5 restarts, C's own
# generator); black: AutoAttack's standard cascade on the first `strong_n` of them. Dashed grey: PGD on
# the held-out validation split during training (`val_history`); dotted: the snapshot that scored
# best there. Bands: 95% Wilson intervals on each line's images. The table sets AutoAttack against
# PGD-10 on the same images, the gap that grows if a model looks robust only to the weaker attack. The
# header names the checkpoints by file name: where they lay on the machine that scored them is no part
# of the result.

# %%
def without_folders(command):
    "A command line with every absolute path cut to its last component (a file or folder name)."
    def short(word):
        flag, equals, value = word.rpartition("=")
        return f"{flag}{equals}{Path(value).name}" if value.startswith("/") else word
    return shlex.join(short(word) for word in shlex.split(command))


def print_over_training(result):
    print(f"\n=== {result.file}{quick_tag(result)}: {result.data['dataset']}, {result.protocol} protocol, "
          f"{without_folders(result.data['provenance']['command'])}")
    for name, model in result.data["models"].items():
        m = model["snapshots"][0]["autoattack_n"]
        print(f"{name} ({Path(model.get('checkpoint', '?')).name}, seed {model.get('seed', '?')}): "
              f"on the first {m} test images, accuracy (%) [95% Wilson interval]")
        print(f"{'iteration':>10}{'PGD-10':>22}{'AutoAttack':>22}{'gap':>8}")
        for e in model["snapshots"]:
            on, n = e["on_autoattack_images"], e["autoattack_n"]
            print(f"{e['iter']:>10}{interval_text(wilson(on['pgd10'], n)):>22}"
                  f"{interval_text(wilson(on['autoattack'], n)):>22}{on['pgd10'] - on['autoattack']:>8.1f}")
        best = model.get("best_snapshot")
        print("best snapshot on validation PGD: " + (f"iteration {best['iter']}" if best else "none scored"))


over_training_results = [r for r in shown if r.experiment == "over_training"]
for_each(over_training_results, lambda r: (print_over_training(r), figures.over_training(r), plt.show()),
         "no over-training results to show (docs/over-training.md)")


# %% [markdown]
# ### Over training, across seeds
#
# The same study repeated per protocol and seed writes `over_training/<protocol>_seed<s>.json` in the
# results folder; `over_training.json` counts as the seeds it holds that no such file has. Per
# (protocol, model) and snapshot: clean and PGD-10 on the first `n_test` test images, AutoAttack on the
# first `autoattack_n`; the mean over the seeds with its 95% t interval over them (k seeds, k − 1 degrees
# of freedom; the seeds share their test images, so the spread is that of training, and the interval is
# never narrower than Wilson's on those images; all intervals within 0 to 100); a point with one seed
# shows that run with its Wilson interval on its images. `seeds`: the seeds behind each point. A seed
# trained with other settings, or scored otherwise (other images or attacks), than the first one read of
# its protocol and model is left out, and named.
# Then the trend: from the first to the last snapshot that every seed scored, and each step between them,
# the change in the mean over the seeds, in points, with the interval of the ablation's differences:
# Student's t on the seeds' spread pooled over the two snapshots (2(k − 1) degrees of freedom), never
# narrower than the two means' Wilson half-widths in quadrature (the whole interval for one seed);
# *: the interval excludes 0.

# %%
def print_over_training_seeds(across):
    for (protocol, name), by_iter in sorted(across.items()):
        print(f"\n{name}, {protocol} protocol: accuracy (%) [95% interval]")
        print(f"{'iteration':>10}" + "".join(f"{label:>22}" for _, label, _, _ in figures.SEED_SCORES) + "   n seeds: which")
        for it, points in by_iter.items():
            seeds = points["clean"].seeds
            kind = "t interval" if len(seeds) > 1 else "Wilson"
            print(f"{it:>10}" + "".join(f"{interval_text(points[key].interval):>22}" for key, _, _, _ in figures.SEED_SCORES)
                  + f"   {len(seeds)}: {', '.join(map(str, seeds))} ({kind})")


def print_changes(changes):
    for (protocol, name), steps in sorted(changes.items()):
        if not steps:
            continue
        print(f"\n{name}, {protocol} protocol: change (points) [95% interval], seeds {', '.join(map(str, steps[0].seeds))}")
        print(f"{'iterations':>16}" + "".join(f"{label:>22}" for _, label, _, _ in figures.SEED_SCORES))
        for i, step in enumerate(steps):
            print(f"{f'{step.start}-{step.end}':>16}" + "".join(
                f"{figures.difference_text(step.scores[key]):>22}" for key, _, _, _ in figures.SEED_SCORES)
                  + ("   first to last" if i == 0 else ""))


def show_across_seeds(files, fallback=None, paper=None):
    """The over-training results in `files` (a pattern in the results folder), their means over seeds: table,
    changes and figure, with the paper's clean and PGD as dotted lines where `paper` is its table on the same
    data set."""
    runs, problems = figures.over_training_runs(RESULTS_DIR, files, fallback)
    for line in problems:
        print(line)
    if not runs:
        print(f"no over-training results to show across seeds ({files})")
        return
    across = figures.over_training_across_seeds(runs)
    print_over_training_seeds(across)
    print_changes(figures.changes_across_seeds(runs))
    figures.over_training_seeds(across, paper=paper)
    plt.show()


show_across_seeds("over_training/*.json", "over_training.json")


# %% [markdown]
# ### AutoAttack on more images, at the last snapshot and at validation's pick
#
# `tools/over_training.py … --snapshots last,best --set strong_n=1000` scores only those two snapshots,
# AutoAttack on the first 1000 test images; per protocol and seed into
# `over_training/autoattack1000/<protocol>_seed<s>.json`. Clean, PGD-10 and AutoAttack all on AutoAttack's
# images, the mean over the seeds with the interval of the table above. Validation may pick another
# iteration for each seed: `iterations` lists them. Then, where both protocols scored a model, the authors'
# mean less the paper's: Student's t on the seeds' spread pooled over the two protocols, never narrower
# than the two means' Wilson half-widths in quadrature (as the ablation's differences below).

# %%
def print_picked(across):
    for (protocol, name, n), by_pick in sorted(across.items()):
        print(f"\n{name}, {protocol} protocol, first {n} test images: accuracy (%) [95% interval]")
        print(f"{'snapshot':>18}" + "".join(f"{label:>22}" for _, label in figures.PICKED_SCORES)
              + "   n seeds: which (iterations)")
        for which, points in by_pick.items():
            clean = points["clean"]
            kind = "t interval" if len(clean.seeds) > 1 else "Wilson"
            print(f"{which:>18}" + "".join(f"{interval_text(points[key].interval):>22}" for key, _ in figures.PICKED_SCORES)
                  + f"   {len(clean.seeds)}: {', '.join(map(str, clean.seeds))} ({kind}; {', '.join(map(str, clean.iters))})")


def print_protocols_apart(apart):
    for (name, n), by_pick in sorted(apart.items()):
        print(f"\n{name}, the authors' protocol less the paper's, first {n} test images: points [95% interval];"
              " *: the interval excludes 0")
        print(f"{'snapshot':>18}" + "".join(f"{label:>22}" for _, label in figures.PICKED_SCORES))
        for which, by_key in by_pick.items():
            print(f"{which:>18}" + "".join(f"{figures.difference_text(by_key[key]):>22}" for key, _ in figures.PICKED_SCORES))


def show_picked(files):
    "AutoAttack on more images (`files`, a pattern in the results folder) at the last snapshot and validation's pick."
    runs, problems = figures.over_training_runs(RESULTS_DIR, files, None)
    picked, left_out = figures.picked_across_seeds(runs)
    for line in problems + left_out:
        print(line)
    if not picked:
        print(f"no AutoAttack on more images at the last snapshot and validation's pick ({files})")
        return
    print_picked(picked)
    print_protocols_apart(figures.protocols_apart(picked))


show_picked("over_training/autoattack1000/*.json")


# %% [markdown]
# ### Over training on MNIST
#
# The same study on the paper's own data set (ε = 0.3), under way: model C trained for 20,000
# minibatches with seeds 0, 1 and 2 under the authors' protocol (seeds 0 and 1 are Table 1's C and C';
# a copy such as C' counts as its model with its own seed) and with seeds 0 and 1 under the paper's
# text (G1 with k = 8, not the paper's 64), a snapshot every 4,000; scored as above into
# `over_training_mnist/<protocol>_seed<s>.json` and `over_training_mnist/autoattack1000/` (docs/mnist.md).
# Dotted lines: the paper's clean and PGD accuracy of C in Table 1, after 200,000 minibatches.

# %%
show_across_seeds("over_training_mnist/*.json", paper=paper_table("mnist", 0.3))
show_picked("over_training_mnist/autoattack1000/*.json")


# %% [markdown]
# ### Why AutoAttack takes more than PGD
#
# `tools/attack_gap.py`: one checkpoint attacked on its first `n_test` test images by PGD variants that
# each take one ingredient of APGD-CE (AutoAttack's first attack), all on the cross-entropy with
# `steps` steps from one random start, beside APGD-CE itself; scored as the checkpoint's protocol
# scores. `pgd`: fixed steps of 2.5 eps / steps; `pgd_keep_first`: the same, each image kept at the
# first iterate that fools the model; `pgd_eps4`: fixed steps of eps / 4; `pgd_halving`: steps from
# 2 eps, halved after every fifth of the run; `pgd_halving_momentum`: with APGD's momentum;
# `apgd_ce_among_clean`: APGD-CE's images, each scored in a batch of clean ones. In %, with 95% Wilson
# intervals (`zero_gradient_percent`: the images whose input gradient is exactly zero).

# %%
def print_attack_gap(result):
    data, n = result.data, result.data["n_test"]
    print(f"\n=== {result.file}: {data['dataset']}, {result.protocol} protocol, iteration {data['iteration']}, "
          f"eps {data['eps']:g}, {data['steps']} steps, the first {n} test images")
    for attack, value in data["accuracy"].items():
        print(f"{attack:>22}  " + (f"{value:.1f}" if attack == "zero_gradient_percent" else interval_text(wilson(value, n))))


def show_folder(experiment, show):
    """show(result) for each result of a study kept in its own sub-folder (named as the study); each file
    there that is not one is named in a line."""
    results, problems = load_all(RESULTS_DIR, f"{experiment}/*.json")
    for line in problems + [f"{r.file}: not shown: {r.experiment}'s result, not {experiment}'s" for r in results
                            if r.experiment != experiment]:
        print(line)
    for_each([r for r in results if r.experiment == experiment], show, f"no {experiment} result to show (docs/mnist.md)")


show_folder("attack_gap", print_attack_gap)


# %% [markdown]
# ### Does the first layer threshold the image?
#
# `tools/first_layer.py`: the first-layer filters of MNIST's network that read one pixel (at least
# `one_pixel_share` of their weights' magnitude on one weight), and the pixel value where each one's
# unit switches with the rest of its patch mid-gray, ± how far the rest can move the switch. An input
# gradient sees a switch only once it is crossed.

# %%
def print_first_layer(result):
    data, summary = result.data, result.data["summary"]
    print(f"\n=== {result.file}: {data['dataset']}, {result.protocol} protocol, {data.get('method', '?')}, iteration "
          f"{data['iteration']}, eps {summary['eps']:g}: {summary['one_pixel']} of {summary['filters']} filters read one pixel")
    switches = sorted((row for row in data["filters"] if "switch" in row), key=lambda row: row["switch"])
    for row in switches:
        print(f"  filter {row['filter']:>3}: on {row['on']} {row['switch']:.3f} ± {row['spread']:.3f}")


show_folder("first_layer", print_first_layer)


# %% [markdown]
# ## Mixed precision: does bf16 train the same model C?
#
# `tools/precision_study.py`: Fashion-MNIST model C (G1 k=8, 1000 iterations) trained with each seed in
# three arms: float32; bf16 autocast around forward passes only, its cast cache off (the training
# path now); and bf16 autocast around the whole step with its cache on, trained by the code before
# the fix (G's steps 2 to 5 of every minibatch saw step 1's weights). Every model scored in float32:
# clean, FGS, PGD-10 on the first `test_n` test images, AutoAttack's standard cascade on the first
# `strong_n`. `g_gain`: how much G's five steps raised D's adversarial loss on their minibatch, in the
# first and the last logging window of training. The table: mean ± sample standard deviation over the
# seeds, and beneath each arm the accuracies' 95% t intervals over its seeds. Below the table: the
# paper's columns crafted under bf16 autocast less the same in float32 (does the table's precision
# matter?); the figure: `g_gain` through training, and the accuracies with their t intervals.

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
        intervals = figures.precision_intervals(data, arm)
        print(f"{'  95% interval':<16}" + "".join(f"{figures.bounds_text(i):>18}" for i in intervals)
              + f"   ({intervals[0].basis})")
    for arm, description in data["arms"].items():
        print(f"  {arm}: {description}")
    print("\nthe paper's columns crafted under bf16 less in float32, points, per seed:")
    for arm, by_seed in data["bf16_table_minus_float32"].items():
        print(f"  {arm:<16}" + "; ".join(f"seed {seed}: " + ", ".join(f"{c} {v:+.2f}" for c, v in d.items())
                                         for seed, d in by_seed.items()))


precision_results = [r for r in shown if r.experiment == "precision_study"]
for_each(precision_results, lambda r: (print_precision_study(r), figures.precision_study(r), plt.show()),
         "no precision study to show (docs/precision.md)")


# %% [markdown]
# ## Which of the authors' settings carries C's robustness?
#
# `tools/ablation_study.py`: Fashion-MNIST model C under the paper's protocol (`paper`), and again with
# one of the authors' settings switched on at a time, then the five together (`all`); each arm with
# each seed, scored in float32: clean, FGS and PGD-10 on the first `n_test` test images, AutoAttack's
# standard cascade on the first `autoattack_n`. Per arm: the mean over its seeds with its 95% interval:
# Student's t on the seeds' spread pooled over the arms (it assumes every arm spreads alike across
# seeds), never narrower than Wilson's on the shared images; Wilson's alone while no arm has two seeds.
# Below it, each arm less the paper arm, in points, with its 95% interval on the same pooled spread
# (never narrower than the two Wilson half-widths in quadrature); `*` where it excludes 0: the
# setting moves that score.

# %%
def print_ablation_study(result):
    data, scoring = result.data, result.data["scoring"]
    intervals = figures.ablation_intervals(data)
    heads = [f"{label} (n {scoring[n_key]})" for _, label, n_key in figures.ABLATION_COLUMNS]
    print(f"\n=== {result.file}{quick_tag(result)}: model C, {data['settings']['iters']} iterations, seeds {data['seeds']}")
    print(f"{'arm':<15}{'seeds':<8}" + "".join(f"{h:>24}" for h in heads))
    for arm, by_key in intervals.items():
        print(f"{arm:<15}{','.join(data['runs'][arm]):<8}"
              + "".join(f"{interval_text(by_key[key]):>24}" for key, _, _ in figures.ABLATION_COLUMNS))
    moved = figures.ablation_differences(data)
    if moved:
        print("\nless the paper arm, points [95% interval]; *: the interval excludes 0")
        for arm, by_key in moved.items():
            print(f"{arm:<23}" + "".join(f"{figures.difference_text(by_key[key]):>24}" for key, _, _ in figures.ABLATION_COLUMNS))
    for arm, overrides in data["arms"].items():
        print(f"  {arm}: {overrides or 'the paper protocol'}")


ablation_results = [r for r in shown if r.experiment == "ablation_study"]
for_each(ablation_results, lambda r: (print_ablation_study(r), figures.ablation_study(r), plt.show()),
         "no ablation study to show (docs/over-training.md)")


# %% [markdown]
# ### D on every 5th minibatch, trained on
#
# The ablation's strongest setting alone, trained five times longer: the paper's C (Fashion-MNIST, G1
# with k = 8, float32) with D's step on every 5th minibatch only, to 10,000 minibatches, so that its D
# takes as many steps (2000) as the paper arm's does in 2000 minibatches; seeds 0 and 1, scored over
# training as above into `over_training_d_every/seed<s>.json` and `over_training_d_every/autoattack1000/`
# (docs/over-training.md). If its robustness falls as its D trains, D's steps are what count; if it
# stays above the paper arm's at as many D steps, G's 25 steps per D step keep a part of it.

# %%
show_across_seeds("over_training_d_every/*.json")
show_picked("over_training_d_every/autoattack1000/*.json")
