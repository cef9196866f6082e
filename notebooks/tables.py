"""A data set's results file as a Markdown table beside the paper's, with the notebook's intervals (the
README's Table 1 has its layout):

    python notebooks/tables.py results/mnist_authors.json

It prints our table beside the paper's, cell by cell. There is a row for each column of the paper's table:
clean, FGS, PGD, then FGS and PGD crafted on each copy (A', B', C'). Where the file has `--strong-eval`'s
results, a last row gives AutoAttack's standard cascade, which the paper did not run. There is a column for
each model. Each cell holds three numbers:
- our accuracy with its 95% interval (Wilson's on the n test images, or across seeds for a --seeds file);
- the paper's accuracy;
- ours less the paper's, in points, with its 95% interval (figures.paper_difference). It is in bold where it
  exceeds 3 points.
A first line says how ours were made (protocol, minibatches per model, seeds); the last counts the cells
within 3 points. Refused, in one line: a file of another data set or eps than the paper's table (no cell
of it is comparable), and a --quick smoke test (not a result)."""
import argparse
from pathlib import Path
from typing import NamedTuple, Optional

import figures
from results_files import DATASETS, BadResult, load_result, need, runs_of

ATTACK_NAMES = {"clean": "clean", "fgs": "FGS", "pgd": "PGD"}


class Cell(NamedTuple):
    ours: figures.Interval
    paper: Optional[float] = None                  # None: the paper has no such number
    difference: Optional[figures.Interval] = None  # ours less the paper's, where the paper has the number


def column_label(column, pgd_steps):
    "clean, FGS, PGD-10, 'PGD-10 crafted on B'' ... for a column of the paper's table."
    attack, _, copy = column.partition("_")
    name = ATTACK_NAMES[attack] + (f"-{pgd_steps}" if attack == "pgd" else "")
    return f"{name} crafted on {copy}" if copy else name


def autoattack_row(result):
    """(model -> Cell of AutoAttack's standard cascade, the images it scored), or (None, None) where the file
    has no --strong-eval results. A --seeds file: the mean over its seeds, with their interval."""
    strong = [run.get("strong_eval", {}) for _, run in runs_of(result)]
    if not all("autoattack" in entry for entry in strong):
        return None, None
    models = [name for name in strong[0]["models"] if all(name in entry["models"] for entry in strong)]
    n = strong[0]["n_test"]
    return {name: Cell(figures.over_seeds([entry["models"][name]["accuracy"]["autoattack"] for entry in strong], n))
            for name in models}, n


def made_with(result):
    "How ours were made, in one line: protocol, minibatches per model, seeds."
    first = runs_of(result)[0][1]
    seeds = ", ".join(f"{model} {seed}" for model, seed in first["seeds"].items())
    return (f"Ours: `--protocol {result.protocol}`, {first['settings']['iters']:,} minibatches per model, "
            + (f"the mean over seeds {', '.join(result.data['runs'])}" if "runs" in result.data else f"seeds {seeds}")
            + ".")


def comparison(result):
    """(rows, models, n): rows is a list of (label, {model: Cell}), in the paper's column order; n, the test
    images of the table. Raises BadResult for a file that is not one of the paper's data sets at its eps."""
    if result.experiment not in DATASETS:
        raise BadResult(f"{result.experiment}'s results, not a data set's table")
    if result.quick:
        raise BadResult("a --quick smoke test, a check of the pipeline, not a result to set beside the paper's")
    data, eps = result.data, figures.run_eps(result.data)
    paper = figures.paper_table(result.experiment, eps)
    if not paper.same:
        raise BadResult(f"{result.experiment} at eps {eps:g}: {paper.caption}")
    intervals = figures.table_intervals(data)
    first = runs_of(result)[0][1]
    n, pgd_steps = first["eval"]["n_test"], need(first, "settings.pgd_steps", int)
    models = [row for row in paper.rows if row in intervals]
    rows = []
    for column in figures.COLUMNS:
        cells = {}
        for model in models:
            if column in intervals[model]:
                ours, theirs = intervals[model][column], paper.rows[model][column]
                cells[model] = Cell(ours, theirs, figures.paper_difference(ours, theirs, n))
        if cells:
            rows.append((column_label(column, pgd_steps), cells))
    autoattack, autoattack_n = autoattack_row(result)
    if autoattack:
        rows.append((f"AutoAttack (standard; not in the paper), first {autoattack_n:,} images", autoattack))
    return rows, models, n


def number(value):
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text.replace("-", "−")  # a difference that rounds to 0 has no sign


def signed(value):
    text = number(value)
    return text if text.startswith("−") else "+" + text


def cell_text(cell):
    text = f"{number(cell.ours.value)} [{number(cell.ours.low)}, {number(cell.ours.high)}]"
    if cell.paper is None:
        return text
    d = cell.difference
    difference = f"{signed(d.value)} [{signed(d.low)}, {signed(d.high)}]"
    far = abs(d.value) > figures.CLOSE_POINTS
    return f"{text}<br>paper {number(cell.paper)}<br>" + (f"**{difference}**" if far else difference)


def markdown(result):
    "The Markdown table of a result beside the paper's, and the line that counts the cells within 3 points."
    rows, models, n = comparison(result)
    lines = [made_with(result), "", "| | " + " | ".join(models) + " |", "| --- |" + " --- |" * len(models)]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cell_text(cells[m]) if m in cells else "–" for m in models) + " |")
    differences = [cell.difference for _, cells in rows for cell in cells.values() if cell.difference is not None]
    close = sum(abs(d.value) <= figures.CLOSE_POINTS for d in differences)
    lines += ["", f"Within {figures.CLOSE_POINTS:g} points of the paper: {close} of {len(differences)} cells "
                  f"({n:,} test images for the paper's columns)."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Print a data set's results file as a Markdown table beside the paper's, cell by cell.")
    parser.add_argument("result", type=Path, help="a data set's results file, e.g. results/mnist_authors.json")
    args = parser.parse_args(argv)
    try:
        print(markdown(load_result(args.result)))
    except BadResult as err:
        raise BadResult(f"{args.result}: {err}") from None


if __name__ == "__main__":
    figures.exit_on_error(main)
