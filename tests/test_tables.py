"""notebooks/tables.py: the Markdown table of a data set beside the paper's, cell by cell, with the
notebook's intervals, and the count of cells within 3 points."""
import copy
import json
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

PAPER_A = dict(zip(figures.COLUMNS, figures.PAPER["tables"]["mnist"]["rows"]["A"]))


def mnist_run():
    """The committed Fashion-MNIST run (n 5,000, AutoAttack on 200) relabelled as MNIST at eps 0.3, with
    A's clean accuracy 2.98 points below the paper's and its FGS 3.02 below: one cell within 3 points, one not."""
    run = json.loads((Path(ROOT) / "results" / "fashion_mnist.json").read_text())
    run["experiment"], run["settings"]["eps"] = "mnist", 0.3
    run["table"]["A"]["clean"] = round(PAPER_A["clean"] - 2.98, 2)
    run["table"]["A"]["fgs"] = round(PAPER_A["fgs"] - 3.02, 2)
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


def test_each_cell_holds_ours_with_its_interval_the_papers_and_the_difference_with_its_interval(tmp_path):
    run = mnist_run()
    table = cells(tables.markdown(tables.load_result(write(tmp_path, run))))
    n = run["eval"]["n_test"]
    ours = figures.wilson(run["table"]["B"]["pgd"], n)
    paper = figures.PAPER["tables"]["mnist"]["rows"]["B"][2]
    difference = figures.paper_difference(ours, paper, n)
    expected = [ours.value, ours.low, ours.high, paper, difference.value, difference.low, difference.high]
    assert numbers(table["PGD-10"]["B"]) == pytest.approx(expected, abs=0.005)
    assert difference.value < 0 and "**" in table["PGD-10"]["B"]  # 25.8 points below the paper's: marked
    assert list(table) == ["clean", "FGS", "PGD-10", "FGS crafted on A'", "PGD-10 crafted on A'", "FGS crafted on B'",
                           "PGD-10 crafted on B'", "FGS crafted on C'", "PGD-10 crafted on C'",
                           "AutoAttack (standard; not in the paper), first 200 images"]


def test_the_cells_within_3_points_are_counted_and_the_others_marked(tmp_path):
    markdown = tables.markdown(tables.load_result(write(tmp_path, mnist_run())))
    table = cells(markdown)
    assert "**" not in table["clean"]["A"] and "**" in table["FGS"]["A"]
    within = sum(abs(numbers(text)[4]) <= 3 for row, by_model in table.items() if not row.startswith("AutoAttack")
                 for text in by_model.values())
    assert within == 2  # A's clean (2.98 below) and PGD-10 crafted on A' (1.36 below); A's FGS, 3.02 below, is not
    assert "Within 3 points of the paper: 2 of 27 cells (5,000 test images" in markdown


def test_autoattack_has_our_interval_alone_and_over_seeds_the_mean_with_their_interval(tmp_path):
    run = mnist_run()
    table = cells(tables.markdown(tables.load_result(write(tmp_path, run))))
    aa = run["strong_eval"]["models"]["C"]["accuracy"]["autoattack"]
    wilson = figures.wilson(aa, run["strong_eval"]["n_test"])
    assert numbers(table["AutoAttack (standard; not in the paper), first 200 images"]["C"]) == pytest.approx(
        [wilson.value, wilson.low, wilson.high], abs=0.005)

    second = copy.deepcopy(run)
    second["strong_eval"]["models"]["C"]["accuracy"]["autoattack"] = aa + 4.0
    stats = {row: {c: {"mean": v, "std": 0.0, "n": 2} for c, v in cols.items()} for row, cols in run["table"].items()}
    seeds = {"experiment": "mnist", "runs": {"0": run, "1": second}, "table": run["table"], "table_stats": stats}
    table = cells(tables.markdown(tables.load_result(write(tmp_path, seeds, "mnist_seeds.json"))))
    mean = figures.over_seeds([aa, aa + 4.0], run["strong_eval"]["n_test"])
    assert numbers(table["AutoAttack (standard; not in the paper), first 200 images"]["C"]) == pytest.approx(
        [mean.value, mean.low, mean.high], abs=0.005)


def test_a_file_of_another_data_set_or_eps_is_refused_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "notebooks/tables.py", "results/fashion_mnist.json"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "fashion_mnist.json: fashion_mnist at eps 0.1" in run.stderr
    printed = subprocess.run([sys.executable, "notebooks/tables.py", str(write(tmp_path, mnist_run()))], cwd=ROOT,
                             capture_output=True, text=True)
    assert printed.returncode == 0 and printed.stdout.startswith("| | A | B | C |")
