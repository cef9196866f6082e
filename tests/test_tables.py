"""notebooks/tables.py: the Markdown table of a data set beside the paper's, cell by cell, with the
notebook's intervals, and the count of cells within 3 points."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOKS = Path(ROOT) / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))
import figures  # noqa: E402  (notebooks/ is no package)
import tables  # noqa: E402

PAPER = {row: dict(zip(figures.COLUMNS, values)) for row, values in figures.PAPER["tables"]["mnist"]["rows"].items()}


def mnist_run():
    """The committed Fashion-MNIST run's file (n 5,000, AutoAttack on 200) relabelled as MNIST at eps 0.3,
    every cell 10 points from the paper's, except A's clean accuracy, 2.98 points below it, and A's FGS,
    3.02 below: one cell within 3 points of 27."""
    run = json.loads((Path(ROOT) / "results" / "fashion_mnist.json").read_text())
    run["experiment"], run["settings"]["eps"] = "mnist", 0.3
    run["table"] = {row: {c: round(v - 10 if v >= 50 else v + 10, 2) for c, v in PAPER[row].items()} for row in "ABC"}
    run["table"]["A"]["clean"] = round(PAPER["A"]["clean"] - 2.98, 2)
    run["table"]["A"]["fgs"] = round(PAPER["A"]["fgs"] - 3.02, 2)
    return run


def write(tmp_path, data, name="mnist_authors.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def cells(markdown):
    "row label -> model -> the cell's text, from the printed table."
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    models = [m.strip() for m in lines[0].strip("|").split("|")][1:]
    rows = {}
    for line in lines[2:]:
        label, *texts = [t.strip() for t in line.strip("|").split("|")]
        rows[label] = dict(zip(models, texts))
    return rows


def numbers(text):
    return [float(x.replace("−", "-")) for x in re.findall(r"[+−-]?\d+\.\d+", text)]


AUTOATTACK_ROW = "AutoAttack (standard; not in the paper), first 200 images"


def test_each_cell_holds_ours_with_its_interval_the_papers_and_the_difference_with_its_interval(tmp_path):
    run = mnist_run()
    markdown = tables.markdown(tables.load_result(write(tmp_path, run)))
    table, n = cells(markdown), run["eval"]["n_test"]
    ours = figures.wilson(run["table"]["B"]["pgd"], n)
    difference = figures.paper_difference(ours, PAPER["B"]["pgd"], n)
    expected = [ours.value, ours.low, ours.high, PAPER["B"]["pgd"], difference.value, difference.low, difference.high]
    assert numbers(table["PGD-10"]["B"]) == pytest.approx(expected, abs=0.005)
    assert list(table) == ["clean", "FGS", "PGD-10", "FGS crafted on A'", "PGD-10 crafted on A'", "FGS crafted on B'",
                           "PGD-10 crafted on B'", "FGS crafted on C'", "PGD-10 crafted on C'", AUTOATTACK_ROW]
    assert markdown.startswith("Ours: `--protocol paper`, 1,000 minibatches per model, seeds A 0, B 0, C 0, A' 1")


def test_the_cells_within_3_points_are_counted_and_the_others_marked(tmp_path):
    markdown = tables.markdown(tables.load_result(write(tmp_path, mnist_run())))
    table = cells(markdown)
    assert "**" not in table["clean"]["A"]  # 2.98 points below the paper's
    assert "**" in table["FGS"]["A"] and "**" in table["PGD-10"]["B"]  # 3.02 below; 10 below
    assert "Within 3 points of the paper: 1 of 27 cells (5,000 test images" in markdown


def test_over_seeds_a_cell_and_autoattack_are_the_mean_with_the_seeds_interval(tmp_path):
    run = mnist_run()
    table = cells(tables.markdown(tables.load_result(write(tmp_path, run))))
    aa, n_aa = run["strong_eval"]["models"]["C"]["accuracy"]["autoattack"], run["strong_eval"]["n_test"]
    alone = figures.wilson(aa, n_aa)
    assert numbers(table[AUTOATTACK_ROW]["C"]) == pytest.approx([alone.value, alone.low, alone.high], abs=0.005)

    second = copy.deepcopy(run)
    second["strong_eval"]["models"]["C"]["accuracy"]["autoattack"] = aa + 4.0
    stats = {row: {c: {"mean": v, "std": 0.0, "n": 2} for c, v in cols.items()} for row, cols in run["table"].items()}
    stats["B"]["pgd"]["std"] = 6.0  # two seeds 12 points apart: t's interval, far wider than Wilson's on 5,000 images
    seeds = {"experiment": "mnist", "runs": {"0": run, "1": second}, "table": run["table"], "table_stats": stats}
    table = cells(tables.markdown(tables.load_result(write(tmp_path, seeds, "mnist_seeds.json"))))
    mean = figures.over_seeds([aa, aa + 4.0], n_aa)
    assert numbers(table[AUTOATTACK_ROW]["C"]) == pytest.approx([mean.value, mean.low, mean.high], abs=0.005)
    spread = figures.seeds_interval(run["table"]["B"]["pgd"], 6.0, 2, run["eval"]["n_test"])
    assert spread.high - spread.low > 50
    assert numbers(table["PGD-10"]["B"])[:3] == pytest.approx([spread.value, spread.low, spread.high], abs=0.005)


def refusal(path):
    run = subprocess.run([sys.executable, "notebooks/tables.py", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    return run.stderr


def test_a_file_not_comparable_with_the_papers_table_is_refused_in_one_line(tmp_path):
    assert "fashion_mnist.json: fashion_mnist at eps 0.1" in refusal("results/fashion_mnist.json")
    other_eps = mnist_run()
    other_eps["settings"]["eps"] = 0.1
    assert "mnist at eps 0.1" in refusal(write(tmp_path, other_eps))
    assert "smoke test" in refusal(write(tmp_path, mnist_run() | {"experiment": "mnist_quick"}))
    assert "over_training's results, not a data set's table" in refusal("results/over_training_mnist/authors_seed0.json")
    printed = subprocess.run([sys.executable, "notebooks/tables.py", str(write(tmp_path, mnist_run()))], cwd=ROOT,
                             capture_output=True, text=True)
    assert printed.returncode == 0 and "| | A | B | C |" in printed.stdout


def test_an_output_that_cannot_show_the_minus_sign_ends_as_one_line(tmp_path):
    run = subprocess.run([sys.executable, "notebooks/tables.py", str(write(tmp_path, mnist_run()))], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ | {"PYTHONIOENCODING": "ascii"})
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert "encoding (ascii) cannot show '\\u2212'" in run.stderr and "PYTHONIOENCODING=utf-8" in run.stderr


def test_a_difference_that_rounds_to_zero_has_one_sign():
    assert [tables.signed(v) for v in (-0.004, -0.0, 0.0, -1.5, 2.0)] == ["+0.00", "+0.00", "+0.00", "−1.50", "+2.00"]
