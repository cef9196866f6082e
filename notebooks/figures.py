"""The notebook's figures and 95% intervals, and the command that redraws every figure the documents show:

    python notebooks/figures.py [--results results] [--out notebooks/figures]

from the results files, with the same functions the notebook (results.ipynb) draws with.
Intervals: Wilson's for one accuracy measured on n test images; for the mean over k >= 2 seeds,
Student's t interval over the seeds (k - 1 degrees of freedom), which stays honest with few seeds.
The seeds are scored on the same test images, so a t interval covers the spread of training, not the
sampling of the test images (the Wilson interval of one run shows that)."""
import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from results_files import NUMBER, BadResult, check_fields, load_all, need, quick_tag

PAPER = json.loads((Path(__file__).resolve().parent.parent / "paper_tables.json").read_text())
COLUMNS = PAPER["columns"]
COLORS = {"A": "C0", "B": "C1", "C": "C2", "EAT": "C3"}  # a model and its copy X' share a colour
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CLOSE_POINTS = 3.0  # a cell of ours this close to the paper's (same data set and eps) counts as within reach of it


class Interval(NamedTuple):
    value: float  # accuracy (%): one run's, or the mean over seeds
    low: float
    high: float
    basis: str    # how the interval was made, e.g. "Wilson, n 1000" or "t over 3 seeds"


def wilson(accuracy, n):
    "The 95% Wilson interval of an accuracy (%) measured on n images; low and high are nan when n is unknown."
    if not n:
        return Interval(accuracy, math.nan, math.nan, "n unknown")
    p, z2 = accuracy / 100, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the interval holds the accuracy and stays within [0, 100]: rounding at 0 and 100 % moves no bound past either
    low, high = max(0.0, min(accuracy, 100 * (centre - half))), min(100.0, max(accuracy, 100 * (centre + half)))
    return Interval(accuracy, low, high, f"Wilson, n {n:g}")


def t_interval(mean, std, seeds, df=None):
    """The 95% Student t interval of a mean (%) over `seeds` runs with sample standard deviation `std`,
    estimated with `df` degrees of freedom (default seeds - 1: from these runs alone)."""
    df = seeds - 1 if df is None else df
    half = stats.t.ppf(0.975, df) * std / math.sqrt(seeds)
    return Interval(mean, mean - half, mean + half, f"t over {seeds} seeds" + (f", spread on {df} df" if df != seeds - 1 else ""))


def over_seeds(accuracies, n):
    """The mean of one accuracy per seed with its t interval; with one seed, that run's Wilson interval on
    n images. The seeds share their test images, whose sampling the spread across seeds does not see:
    the interval is never narrower than the Wilson interval of the mean on those n images (two seeds
    that agree would otherwise claim no uncertainty at all), and stays within [0, 100]."""
    if len(accuracies) == 1:
        return wilson(accuracies[0], n)
    return seeds_interval(float(np.mean(accuracies)), float(np.std(accuracies, ddof=1)), len(accuracies), n)


def seeds_interval(mean, std, seeds, n, df=None):
    "over_seeds' interval from the seeds' mean and sample standard deviation (on df), on n shared test images."
    spread = t_interval(mean, std, seeds, df)
    images = wilson(mean, n)
    if math.isnan(images.low):
        return spread._replace(low=max(0.0, spread.low), high=min(100.0, spread.high))
    return Interval(spread.value, max(0.0, min(spread.low, images.low)), min(100.0, max(spread.high, images.high)),
                    f"{spread.basis}, no narrower than Wilson on n {n:g}")


def cell_interval(value, n, cell_stats=None):
    "A table cell's interval: over seeds where a --seeds file's statistics give two or more, else Wilson on n images."
    if cell_stats and cell_stats["n"] >= 2 and cell_stats["std"] is not None:
        return seeds_interval(cell_stats["mean"], cell_stats["std"], cell_stats["n"], n)
    return wilson(value, n)


def bounds_text(interval, digits=1):
    "[low, high], or why there are none."
    if math.isnan(interval.low):
        return f"[{interval.basis}]"
    return f"[{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def interval_text(interval, digits=1):
    return f"{interval.value:.{digits}f} {bounds_text(interval, digits)}"


def difference_text(interval):
    "A difference in points with its interval, and * where the interval excludes 0."
    return f"{interval.value:+.1f} {bounds_text(interval)}" + ("*" if interval.low > 0 or interval.high < 0 else " ")


def paper_difference(interval, theirs, n):
    """A cell of ours, its `interval` (cell_interval), less the paper's accuracy `theirs`, in points, with a
    95% interval: the two half-widths in quadrature, the paper's its Wilson's on as many test images as
    ours (it scored its whole test set, as large as ours to within a batch)."""
    half = math.hypot((interval.high - interval.low) / 2, (lambda w: (w.high - w.low) / 2)(wilson(theirs, n)))
    d = interval.value - theirs
    return Interval(d, d - half, d + half, "ours and the paper's half-widths in quadrature")


def error_bars(intervals):
    "matplotlib's yerr (distances below and above) of a list of Intervals (None: no bar)."
    below = [np.nan if i is None else i.value - i.low for i in intervals]
    above = [np.nan if i is None else i.high - i.value for i in intervals]
    return np.array([below, above])


class PaperRows(NamedTuple):
    rows: dict      # row -> column -> the paper's accuracy
    caption: str
    same: bool      # the same data set and eps as ours: compared cell by cell


def paper_table(dataset, eps):
    "The paper's rows for a data set; where the paper has none at this data set and eps, its MNIST rows as a pattern."
    same = dataset in PAPER["tables"] and PAPER["tables"][dataset]["eps"] == eps
    key = dataset if dataset in PAPER["tables"] else "mnist" if dataset == "fashion_mnist" else None
    if key is None:
        return PaperRows({}, "the paper has no table for this data set", False)
    table = PAPER["tables"][key]
    caption = f"paper: Table {table['table']} ({key}, eps {table['eps']:g})"
    if not same:
        caption += f"; ours: {dataset}, eps {eps:g}: the paper's pattern, not compared cell by cell"
    return PaperRows({row: dict(zip(COLUMNS, values)) for row, values in table["rows"].items()}, caption, same)


def ensemble_entry(results, result):
    "The ensemble run on the data set of a data-set result, of its protocol and kind (a smoke test pairs with a smoke test)."
    for other in results:
        if (other.experiment == "ensemble" and other.quick == result.quick and other.protocol == result.protocol
                and result.experiment in other.data["datasets"]):
            return other.data["datasets"][result.experiment]
    return None


def table_intervals(data):
    "row -> column -> Interval of a data-set file's table (over seeds for a --seeds file, else Wilson)."
    n, table_stats = data.get("eval", {}).get("n_test"), data.get("table_stats", {})
    if "runs" in data:  # the seeds' runs share their test set
        n = next(iter(data["runs"].values()))["eval"]["n_test"]
    return {row: {c: cell_interval(v, n, table_stats.get(row, {}).get(c)) for c, v in columns.items()}
            for row, columns in data["table"].items()}


def seed_counts(data):
    "The numbers of seeds behind the cells of a --seeds file, e.g. '3' (or '2/3' where some seed lacks a cell)."
    return "/".join(map(str, sorted({cell["n"] for cols in data["table_stats"].values() for cell in cols.values()})))


def run_eps(data):
    return (next(iter(data["runs"].values())) if "runs" in data else data)["settings"]["eps"]


def accuracy_bars(result, eat=None):
    "Bars: our accuracy per column of A, B, C (and EAT's run, if given), whiskers its 95% interval; ticks: the paper's."
    rows = table_intervals(result.data)
    if eat is not None and "EAT" in eat["table"]:
        rows["EAT"] = table_intervals(eat)["EAT"]
    paper = paper_table(result.experiment, run_eps(result.data))
    fig, ax = plt.subplots(figsize=(11, 3.4))
    x, width = np.arange(len(COLUMNS)), 0.8 / len(rows)
    paper_label = "paper" if paper.same else "paper's pattern (another data set or eps)"
    for i, (name, cells) in enumerate(rows.items()):
        offset = x + (i - (len(rows) - 1) / 2) * width
        intervals = [cells.get(c) for c in COLUMNS]
        ax.bar(offset, [np.nan if v is None else v.value for v in intervals], width, yerr=error_bars(intervals),
               capsize=2, label=name, color=COLORS.get(name))
        if name in paper.rows:
            ax.scatter(offset, [paper.rows[name][c] for c in COLUMNS], marker="_", s=120, zorder=3,
                       color="k" if paper.same else "grey", label=paper_label)
    ax.set(xticks=x, xticklabels=COLUMNS, ylim=(0, 100), ylabel="test accuracy (%)")
    bars = (f"bars: mean of n = {seed_counts(result.data)} seeds, whiskers 95% t interval" if "runs" in result.data
            else f"whiskers: 95% Wilson interval on its {result.data['eval']['n_test']:g} test images")
    ax.set_title(f"{result.file}{quick_tag(result)}, {result.protocol} protocol; {bars}\n{paper.caption}", fontsize=9)
    legend = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry for the paper
    ax.legend(legend.values(), legend.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def band(ax, iters, intervals, **style):
    "A line through the values and a shaded band over their 95% intervals."
    line, = ax.plot(iters, [i.value for i in intervals], marker=".", **style)
    ax.fill_between(iters, [i.low for i in intervals], [i.high for i in intervals], color=line.get_color(), alpha=0.15,
                    linewidth=0)
    return line


OVER_TRAINING_LINES = [("clean", "clean"), ("fgs", "FGS"), ("pgd10", "PGD-10 (paper's)"), ("pgd_ce", "PGD-CE 100×5"),
                       ("generator", "own generator")]


def validation_n(model):
    return model.get("model", {}).get("held_out", {}).get("val_n")


def over_training(result):
    "Each snapshot's accuracy per attack of each model, with 95% Wilson bands; validation PGD dashed; the best snapshot dotted."
    models = result.data["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.4), sharey=True, squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        snapshots = model["snapshots"]
        iters = [e["iter"] for e in snapshots]
        for key, label in OVER_TRAINING_LINES:
            if all(key in e["accuracy"] for e in snapshots):
                band(ax, iters, [wilson(e["accuracy"][key], e["n_test"]) for e in snapshots],
                     label=f"{label}, first {snapshots[0]['n_test']}")
        band(ax, iters, [wilson(e["on_autoattack_images"]["autoattack"], e["autoattack_n"]) for e in snapshots],
             color="black", label=f"AutoAttack, first {snapshots[0]['autoattack_n']}")
        validation = model.get("model", {}).get("val_history", [])
        if validation:
            n = validation_n(model)
            band(ax, [v["iter"] for v in validation], [wilson(v["pgd"], n) for v in validation], linestyle="--",
                 color="grey", label=f"PGD, validation split ({f'n {n}' if n else 'n unknown'})")
        if model.get("best_snapshot"):
            ax.axvline(model["best_snapshot"]["iter"], color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{name} ({model.get('method', '?')})", xlabel="iteration", ylim=(0, 100))
    axes[0][0].set_ylabel("accuracy (%), 95% Wilson band")
    lines = {label: line for ax in axes[0] for line, label in zip(*ax.get_legend_handles_labels())}  # C's generator too
    axes[0][-1].legend(lines.values(), lines.keys(), fontsize=7, loc="lower right")
    fig.suptitle(f"{result.file}{quick_tag(result)} ({result.protocol} protocol): {result.data['dataset']}")
    fig.tight_layout()
    return fig


PAPER_COLUMN = {"clean": "clean", "pgd10": "pgd"}  # our score -> the paper's column of it
SEED_SCORES = [("clean", "clean", "accuracy", "n_test"), ("pgd10", "PGD-10", "accuracy", "n_test"),
               ("autoattack", "AutoAttack", "on_autoattack_images", "autoattack_n")]


def over_training_runs(folder, files="over_training/*.json", fallback="over_training.json"):
    """(protocol, model, seed) -> (file, model entry) of every over-training result: the per-seed files
    (default over_training/<protocol>_seed<s>.json) first, then `fallback` for what they lack; and one
    line per file or model left out, among them a seed trained or scored otherwise than the first one read
    of its protocol and model (a mean over seeds is a mean over seeds alone). A copy (C', trained beside C with
    the next seed) counts as its model (C) with its own seed."""
    per_seed, problems = load_all(folder, files)
    single, more_problems = load_all(folder, fallback) if fallback else ([], [])
    runs, scorings = {}, {}
    for result in per_seed + single:
        if result.experiment != "over_training" or result.quick:
            problems.append(f"{result.file}: not an over-training result of a full run ({result.data['experiment']})")
            continue
        for name, model in result.data["models"].items():
            try:
                key = (result.protocol, name.rstrip("'"), need(model, "seed", NUMBER))
                scorings[result.file] = need(result.data, "scoring", dict)
                trained = apart(need(model, "trained_settings", dict), runs, key, lambda file, entry: entry["trained_settings"])
                scored = apart(scorings[result.file], runs, key, lambda file, entry: scorings[file])
            except BadResult as err:
                problems.append(f"{result.file}: model {name} left out: {err}")
                continue
            if key in runs:
                problems.append(f"{result.file}: {name} seed {key[2]} left out: already read from {runs[key][0]}")
            elif trained or scored:
                problems.append(f"{result.file}: {name} seed {key[2]} left out: "
                                + (f"trained otherwise than {trained}" if trained else f"scored otherwise than {scored}"))
            else:
                runs[key] = (result.file, model)
    return runs, problems + more_problems


def apart(settings, runs, key, settings_of):
    """How `settings`, less a seed, differ from those of the first seed read of the same protocol and model,
    as settings_of(file, model entry) gives them: a mean over seeds is over seeds alone, trained alike and
    scored on the same images by the same attacks."""
    first = next(((file, entry) for (protocol, name, _), (file, entry) in runs.items() if (protocol, name) == key[:2]), None)
    if first is None:
        return ""
    theirs = settings_of(*first)
    differ = [f"{k} {settings.get(k)} against {theirs.get(k)}" for k in sorted((set(settings) | set(theirs)) - {"seed"})
              if settings.get(k) != theirs.get(k)]
    return f"{first[0]} ({', '.join(differ)})" if differ else ""


class SeedPoint(NamedTuple):
    interval: Interval
    seeds: list  # the seeds behind the point


def over_training_across_seeds(runs):
    "(protocol, model) -> iteration -> score -> SeedPoint: per snapshot, the mean over seeds of clean, PGD-10, AutoAttack."
    scores = {}
    for (protocol, name, seed), (_, model) in sorted(runs.items(), key=lambda item: str(item[0])):
        for snapshot in model["snapshots"]:
            for key, _, group, n_key in SEED_SCORES:
                point = scores.setdefault((protocol, name), {}).setdefault(snapshot["iter"], {}).setdefault(key, [])
                point.append((seed, snapshot[group][key], snapshot[n_key]))
    return {curve_key: {it: {key: SeedPoint(over_seeds([v for _, v, _ in values], values[0][2]), [s for s, _, _ in values])
                             for key, values in by_score.items()}
                        for it, by_score in sorted(by_iter.items())}
            for curve_key, by_iter in scores.items()}


class Change(NamedTuple):
    start: int    # iterations
    end: int
    seeds: list
    scores: dict  # score key (SEED_SCORES) -> Interval of the change in the mean, in points


def changes_across_seeds(runs):
    """(protocol, model) -> [Change]: from the first to the last snapshot that every seed of it scored, then,
    where there are more than two, each step between consecutive ones; [] where the seeds share fewer than
    two. A change is the mean over the seeds at the later snapshot less that at the earlier, with
    `difference`'s interval on the seeds' spread pooled over the two snapshots, as the ablation's
    differences: two seeds then give 2 df, where the spread of their own changes would give 1 (t factor
    4.3, not 12.7). It treats the two snapshots' seeds as independent: wider than the paired interval
    where the seeds keep their order, narrower where they cross."""
    models = {}
    for (protocol, name, seed), (_, model) in sorted(runs.items(), key=lambda item: str(item[0])):
        models.setdefault((protocol, name), {})[seed] = {s["iter"]: s for s in model["snapshots"]}
    changes = {}
    for curve_key, by_seed in models.items():
        shared = sorted(set.intersection(*(set(snapshots) for snapshots in by_seed.values())))
        steps = [(shared[0], shared[-1])] if len(shared) > 1 else []
        steps += list(zip(shared, shared[1:])) if len(shared) > 2 else []
        changes[curve_key] = [Change(start, end, list(by_seed), {key: change(by_seed, start, end, key, group, n_key)
                                                                 for key, _, group, n_key in SEED_SCORES})
                              for start, end in steps]
    return changes


def change(by_seed, start, end, key, group, n_key):
    "One score's change in the mean over seeds from iteration start to end (by_seed: seed -> iteration -> snapshot)."
    before, after = ([snapshots[it][group][key] for snapshots in by_seed.values()] for it in (start, end))
    n = next(iter(by_seed.values()))[end][n_key]
    return difference(after, before, n, pooled_spread({"before": before, "after": after}))


def over_training_seeds(across, subject="", paper=None):
    """One panel per (protocol, model): clean, PGD-10 and AutoAttack per snapshot, mean over seeds with 95% band;
    n seeds per point; `subject` (the data set) opens the title. `paper` (a paper_table on the same data set
    and eps) adds each model's clean and PGD of the paper as dotted lines in the colour of ours."""
    fig, axes = plt.subplots(1, len(across), figsize=(4.5 * len(across), 3.4), sharex=True, sharey=True, squeeze=False)
    for ax, ((protocol, name), by_iter) in zip(axes[0], sorted(across.items())):
        iters = list(by_iter)
        for key, label, _, _ in SEED_SCORES:
            points = [by_iter[it][key] for it in iters]
            line = band(ax, iters, [p.interval for p in points], label=label, color="black" if key == "autoattack" else None)
            theirs = paper.rows.get(name, {}).get(PAPER_COLUMN.get(key)) if paper and paper.same else None
            if theirs is not None:
                ax.axhline(theirs, color=line.get_color(), linestyle=":", linewidth=1, label=f"{label}, the paper's")
        for it in iters:
            ax.annotate(f"{len(by_iter[it]['clean'].seeds)}", (it, 2), ha="center", fontsize=7, color="grey")
        ax.set(title=f"{name}, {protocol} protocol", xlabel="iteration, thousands (grey: n seeds)", ylim=(0, 100))
        ax.xaxis.set_major_formatter(lambda it, _: f"{it / 1000:g}")  # 5-digit iterations would run into each other
    axes[0][0].set_ylabel("accuracy (%): mean, 95% band")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)  # under the panels, over no curve
    title = (f"{subject + ', o' if subject else 'O'}ver training, across seeds: t interval over the seeds, no narrower "
             "than Wilson on the images; one seed: Wilson on its images")
    title = textwrap.fill(title, round(14 * fig.get_figwidth()))  # a narrow figure's title in lines, not cut off
    fig.suptitle(title, fontsize=9)
    legend_rows = math.ceil(len(labels) / 3)
    fig.set_figheight(fig.get_figheight() + 0.2 * legend_rows + 0.15 * title.count("\n"))
    fig.tight_layout(rect=(0, 0.06 * legend_rows, 1, 1))
    return fig


PICKS = ["last", "validation's pick"]
PICKED_SCORES = [("clean", "clean"), ("pgd10", "PGD-10"), ("autoattack", "AutoAttack")]  # all on AutoAttack's images


def picked_snapshots(model):
    "The last scored snapshot of one model and the one its validation picks, by PICKS."
    scored = {snapshot["iter"]: snapshot for snapshot in model["snapshots"]}
    best = need(model, "best_snapshot.iter", NUMBER)
    if best not in scored:
        raise BadResult(f"validation's pick, iteration {best}, was not scored")
    return dict(zip(PICKS, [scored[max(scored)], scored[best]]))


class PickedPoint(NamedTuple):
    interval: Interval
    seeds: list
    iters: list  # the snapshot's iteration, seed by seed
    values: list  # the accuracy, seed by seed


def picked_across_seeds(runs):
    """(protocol, model, n AutoAttack images) -> pick -> score -> PickedPoint: clean, PGD-10 and AutoAttack on
    AutoAttack's images at the last snapshot and at validation's pick, the mean over seeds (which may pick
    different iterations); and one line per model left out."""
    values, problems = {}, []
    for (protocol, name, seed), (file, model) in sorted(runs.items(), key=lambda item: str(item[0])):
        try:
            picked = picked_snapshots(model)
            for snapshot in picked.values():
                check_fields(snapshot, {f"on_autoattack_images.{key}": NUMBER for key, _ in PICKED_SCORES})
        except BadResult as err:
            problems.append(f"{file}: {name} seed {seed} left out: {err}")
            continue
        for which, snapshot in picked.items():
            by_score = values.setdefault((protocol, name, snapshot["autoattack_n"]), {}).setdefault(which, {})
            for key, _ in PICKED_SCORES:
                by_score.setdefault(key, []).append((seed, snapshot["iter"], snapshot["on_autoattack_images"][key]))
    return {(protocol, name, n): {which: {key: picked_point(seeds, n) for key, seeds in by_score.items()}
                                  for which, by_score in by_pick.items()}
            for (protocol, name, n), by_pick in values.items()}, problems


def picked_point(seeds, n):
    "A PickedPoint from (seed, iteration, accuracy) per seed, the accuracies on the same n images."
    ids, iters, values = map(list, zip(*seeds))
    return PickedPoint(over_seeds(values, n), ids, iters, values)


def protocols_apart(picked):
    """(model, n AutoAttack images) -> pick -> score -> the authors' protocol's mean over its seeds less the
    paper's, in points, with the interval of `difference` on the seeds' spread pooled over the two
    protocols; for each model that both protocols scored on n images."""
    apart = {}
    for (protocol, name, n), by_pick in picked.items():
        paper = picked.get(("paper", name, n))
        if protocol != "authors" or paper is None:
            continue
        for which, points in by_pick.items():
            for key, _ in PICKED_SCORES:
                ours, theirs = points[key].values, paper[which][key].values
                spread = pooled_spread({"authors": ours, "paper": theirs})
                apart.setdefault((name, n), {}).setdefault(which, {})[key] = difference(ours, theirs, n, spread)
    return apart


def curve(model, key, scale):
    "(iteration, value × scale) of one key of a training history."
    return [(p["iter"], p[key] * scale) for p in model["history"] if isinstance(p.get(key), NUMBER)]


PRECISION_ACCURACIES = [("clean", "clean"), ("fgs", "FGS"), ("pgd", "PGD-10"), ("autoattack", "AutoAttack")]


def precision_intervals(data, arm):
    "The accuracies of one arm of the precision study: mean over its seeds with their interval."
    settings, summary = data["settings"], data["summary"][arm]
    return [cell_interval(summary[key]["mean"], settings["strong_n" if key == "autoattack" else "test_n"], summary[key])
            for key, _ in PRECISION_ACCURACIES]


def precision_study(result):
    "G's five-step gain through training per arm and seed; the arms' accuracies, mean over seeds with 95% t interval."
    data = result.data
    fig, (gain, bars) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (arm, by_seed) in enumerate(data["runs"].items()):
        for j, run in enumerate(by_seed.values()):
            if points := curve(run["model"], "g_gain", 1):
                gain.plot(*zip(*points), color=f"C{i}", alpha=0.8, label=arm if j == 0 else None)
    gain.set(xlabel="iteration", ylabel="G's five-step loss gain (nats)")
    gain.legend(fontsize=7)
    x, width = np.arange(len(PRECISION_ACCURACIES)), 0.8 / len(data["summary"])
    for i, arm in enumerate(data["summary"]):
        intervals = precision_intervals(data, arm)
        bars.bar(x + (i - (len(data["summary"]) - 1) / 2) * width, [v.value for v in intervals], width,
                 yerr=error_bars(intervals), capsize=2, color=f"C{i}", label=arm)
    bars.set(xticks=x, xticklabels=[label for _, label in PRECISION_ACCURACIES], ylim=(0, 100),
             ylabel=f"accuracy (%): mean, 95% t interval")
    settings = data["settings"]
    fig.suptitle(f"{result.file}{quick_tag(result)}: model C, {settings['iters']} iterations, seeds {data['seeds']}; "
                 f"first {settings['test_n']} test images (AutoAttack: {settings['strong_n']})", fontsize=9)
    fig.tight_layout()
    return fig


ABLATION_COLUMNS = [("clean", "clean", "n_test"), ("fgs", "FGS", "n_test"), ("pgd", "PGD-10", "n_test"),
                    ("autoattack", "AutoAttack", "autoattack_n")]


def pooled_spread(by_arm):
    """The seeds' standard deviation pooled over the arms (each arm's squared deviations from its own
    mean, summed) and its degrees of freedom, the sum over arms of seeds - 1; (nan, 0) where no arm has
    two seeds. It assumes the seeds spread alike in every arm, and so lets two seeds an arm give a
    usable interval: eight arms of two seeds estimate the spread on 8 df (t factor 2.3), where each
    arm alone has 1 (t factor 12.7)."""
    df = sum(len(values) - 1 for values in by_arm.values())
    if not df:
        return math.nan, 0
    squares = sum(float(np.sum((np.asarray(values) - np.mean(values)) ** 2)) for values in by_arm.values())
    return math.sqrt(squares / df), df


def ablation_spreads(data):
    "score -> (arm -> the arm's accuracies, one per seed; pooled_spread of them)."
    spreads = {}
    for key, _, _ in ABLATION_COLUMNS:
        by_arm = {arm: [entry["scores"][key] for entry in by_seed.values()] for arm, by_seed in data["runs"].items()}
        spreads[key] = by_arm, pooled_spread(by_arm)
    return spreads


def ablation_intervals(data):
    """arm -> score -> the mean over the arm's seeds with its 95% interval: Student's t on the spread
    pooled over the arms, never narrower than Wilson's on the scoring's n images (seeds_interval);
    Wilson's alone while no arm has two seeds."""
    intervals, spreads = {arm: {} for arm in data["runs"]}, ablation_spreads(data)
    for key, _, n_key in ABLATION_COLUMNS:
        by_arm, (std, df) = spreads[key]
        n = data["scoring"][n_key]
        for arm, values in by_arm.items():
            mean = float(np.mean(values))
            intervals[arm][key] = seeds_interval(mean, std, len(values), n, df) if df else wilson(mean, n)
    return intervals


def ablation_differences(data):
    """arm -> score -> its mean less the paper arm's, in points, with the interval of `difference` on the
    seeds' spread pooled over all the arms; {} without the paper arm."""
    if "paper" not in data["runs"]:
        return {}
    moved, spreads = {arm: {} for arm in data["runs"] if arm != "paper"}, ablation_spreads(data)
    for key, _, n_key in ABLATION_COLUMNS:
        by_arm, spread = spreads[key]
        for arm in moved:
            moved[arm][key] = difference(by_arm[arm], by_arm["paper"], data["scoring"][n_key], spread)
    return moved


def difference(values, baseline, n, spread):
    """The mean of `values` less that of `baseline` (accuracies in %, one per seed, on the same n test
    images), in points, with a 95% interval: Student's t on `spread`, a pooled_spread (std, df), never
    narrower than the two means' Wilson half-widths in quadrature (as for independent test images: runs
    scored on the same images err together, which only narrows the true interval)."""
    (mean, base), (std, df) = (float(np.mean(values)), float(np.mean(baseline))), spread
    images = math.hypot(*[(w.high - w.low) / 2 for w in (wilson(mean, n), wilson(base, n))])
    seeds = stats.t.ppf(0.975, df) * std * math.sqrt(1 / len(values) + 1 / len(baseline)) if df else 0.0
    half, basis = max(images, seeds), (f"t, spread pooled on {df} df" if seeds > images else "Wilson, in quadrature")
    return Interval(mean - base, mean - base - half, mean - base + half, basis)


def ablation_study(result):
    "Per score, each arm's mean over its seeds with its 95% interval; the dashed line is the paper arm's mean."
    data, intervals = result.data, ablation_intervals(result.data)
    arms = list(intervals)[::-1]  # the paper arm on top
    fig, axes = plt.subplots(1, len(ABLATION_COLUMNS), figsize=(3.2 * len(ABLATION_COLUMNS), 0.45 * len(arms) + 1.4),
                             sharey=True)
    for ax, (key, label, n_key) in zip(axes, ABLATION_COLUMNS):
        points = [intervals[arm][key] for arm in arms]
        ax.errorbar([p.value for p in points], range(len(arms)), xerr=error_bars(points), fmt="o", capsize=2)
        if "paper" in intervals:
            ax.axvline(intervals["paper"][key].value, color="grey", linestyle="--", linewidth=0.8)
        ax.set(xlabel=f"{label} (%), n {data['scoring'][n_key]}", xlim=(0, 100))
    axes[0].set(yticks=range(len(arms)), yticklabels=[f"{arm} ({len(data['runs'][arm])})" for arm in arms])
    fig.suptitle(f"{result.file}{quick_tag(result)}: model C, {data['settings']['iters']} iterations; arm (n seeds): "
                 "mean over the seeds, 95% interval", fontsize=9)
    fig.tight_layout()
    return fig


def one_result(folder, name):
    "The checked result in the file `name` of the results folder."
    results, problems = load_all(folder, name)
    if not results:
        raise BadResult(problems[0] if problems else f"{name}: missing")
    return results[0]


def accuracy_figure(folder):
    result = one_result(folder, "fashion_mnist.json")
    ensemble = load_all(folder, "ensemble.json")[0]
    return accuracy_bars(result, ensemble_entry(ensemble, result))


def over_training_seeds_figure(folder, files="over_training/*.json", fallback="over_training.json", subject="", paper=None):
    runs, _ = over_training_runs(folder, files, fallback)
    if not runs:
        raise BadResult(f"no over-training result ({' or '.join(filter(None, [fallback, files]))})")
    return over_training_seeds(over_training_across_seeds(runs), subject, paper)


# file name -> how to draw it from a results folder: every figure README.md and docs/ show
FIGURES = {"accuracy.png": accuracy_figure,
           "over_training.png": lambda folder: over_training(one_result(folder, "over_training.json")),
           "over_training_seeds.png": lambda folder: over_training_seeds_figure(folder, subject="Fashion-MNIST, eps 0.1"),
           "over_training_mnist.png": lambda folder: over_training_seeds_figure(folder, "over_training_mnist/*.json", None,
                                                                               "MNIST, eps 0.3", paper_table("mnist", 0.3)),
           "precision_study.png": lambda folder: precision_study(one_result(folder, "precision_study.json")),
           "ablation_study.png": lambda folder: ablation_study(one_result(folder, "ablation_study.json"))}


def save(fig, path):
    "Written whole or not at all: a figure a reader has is never replaced by a half-written file, nor joined by one."
    partial = path.with_name(path.name + ".partial")
    try:
        fig.savefig(partial, format="png", dpi=100)
        os.replace(partial, path)
    except OSError as err:  # named for the figure the user asked for, not for the temporary file
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        plt.close(fig)
        partial.unlink(missing_ok=True)


def main(argv=None):
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Redraw every figure the README and docs/ show, from the results files.")
    parser.add_argument("--results", type=Path, default=here.parent / "results", help="the results folder (default: results/)")
    parser.add_argument("--out", type=Path, default=here / "figures", help="where the figures go (default: notebooks/figures/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)  # a file in its place, or no permission: one line (exit_on_error)
    failed = []
    for name, draw in FIGURES.items():
        try:
            save(draw(args.results), args.out / name)
            print(f"wrote {name}")
        except BadResult as err:
            failed.append(f"{name} not drawn: {err}")
    if failed:
        raise BadResult("; ".join(failed))  # the others are drawn


def exit_on_error(command):
    """runner.errors.exit_on_error, the repository's one way out, for the commands of notebooks/ (this
    file's main, tables.py's): one line and its exit status for what a user can fix, a BadResult
    included. runner/ is imported here, not at the top: the notebook, which imports this module, reads
    only the results files."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import runner.errors

    def run():
        try:
            command()
        except BadResult as err:
            raise runner.errors.UserError(str(err)) from None
    runner.errors.exit_on_error(run)


if __name__ == "__main__":
    exit_on_error(main)
