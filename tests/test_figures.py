"""notebooks/figures.py: its 95% intervals, the command that redraws every figure the documents show, the
over-training study across seeds; and the notebook's printed output: intervals, no star against another data
set, one summary of every data set and protocol, no machine's path."""
import contextlib
import copy
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from conftest import ROOT

NOTEBOOKS = Path(ROOT) / "notebooks"
RESULTS = Path(ROOT) / "results"
sys.path.insert(0, str(NOTEBOOKS))
import figures  # noqa: E402  (notebooks/ is no package: the notebook imports it from its folder too)

T_975 = {2: 12.706204736174703, 3: 4.302652729749464}  # Student t 97.5% quantiles, 1 and 2 degrees of freedom, by n seeds


def run_notebook(results_dir, monkeypatch):
    """Every cell of notebooks/results.py run in this process as the kernel would (in notebooks/), figures
    drawn off screen; its printed text and its namespace. results_dir None: the notebook's default, results/."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    if results_dir is None:
        monkeypatch.delenv("RESULTS_DIR", raising=False)
    else:
        monkeypatch.setenv("RESULTS_DIR", str(results_dir))
    source = "\n".join(line for line in (NOTEBOOKS / "results.py").read_text().splitlines() if not line.startswith("# %"))
    namespace, text = {"__name__": "results_notebook"}, io.StringIO()
    with contextlib.redirect_stdout(text):
        exec(compile(source, "results.py", "exec"), namespace)
    plt.close("all")
    return text.getvalue(), namespace


def test_wilson_and_t_intervals_match_known_values():
    low, high = figures.wilson(50, 10)[1:3]  # 5 of 10: the textbook's 0.2366 to 0.7634
    assert (round(low, 2), round(high, 2)) == (23.66, 76.34)
    assert figures.wilson(0, 10)[1] == 0 and round(figures.wilson(0, 10)[2], 2) == 27.75
    # rounding at the ends: 0 of 9,984 gave a lower bound of -3e-18, printed "-0.00"; 5,000 of 5,000 one above 100
    assert figures.wilson(0.0, 9984).low == 0.0 and figures.wilson(100.0, 5000).high == 100.0
    assert math.isnan(figures.wilson(40, None).low) and figures.wilson(40, None).basis == "n unknown"
    interval = figures.over_seeds([10.0, 12.0, 14.0], 1000)  # sd 2 over 3 seeds
    assert interval.value == 12.0 and interval.basis.startswith("t over 3 seeds")
    assert interval.high - 12.0 == pytest.approx(T_975[3] * 2 / math.sqrt(3))
    assert figures.over_seeds([30.0], 200) == figures.wilson(30.0, 200)  # one seed: its images' interval


def test_seeds_that_agree_keep_the_uncertainty_of_their_test_images():
    """Two seeds with the same accuracy on the same 200 images: the t interval alone has zero width."""
    agreeing = figures.over_seeds([17.5, 17.5], 200)
    assert (agreeing.low, agreeing.high) == figures.wilson(17.5, 200)[1:3]
    close = figures.over_seeds([17.4, 17.6], 200)  # the t interval, 17.5 ± 1.3, is narrower than Wilson's
    assert (close.low, close.high) == figures.wilson(17.5, 200)[1:3]
    cell = figures.cell_interval(17.5, 200, {"mean": 17.5, "std": 0.0, "n": 2})  # a --seeds file's table cell
    assert (cell.low, cell.high) == figures.wilson(17.5, 200)[1:3]
    apart = figures.over_seeds([10.0, 25.0], 200)  # here the seeds' spread is the wider: t's, 17.5 ± 95
    assert apart.high == 100.0 and apart.low == 0.0


def test_an_interval_over_few_seeds_stays_within_0_and_100():
    wide = figures.over_seeds([86.3 - 1.2, 86.3 + 1.2], 1000)  # two seeds: t's factor is 12.7, so 86.3 ± 21.6
    assert wide.high == 100.0 and wide.low == pytest.approx(86.3 - T_975[2] * 1.2)
    low = figures.over_seeds([3.0, 9.0], 100)
    assert low.low == 0.0


def test_the_paper_is_compared_cell_by_cell_only_on_its_data_set_and_eps():
    assert figures.paper_table("mnist", 0.3).same
    assert not figures.paper_table("mnist", 0.1).same
    fashion = figures.paper_table("fashion_mnist", 0.1)
    assert not fashion.same and fashion.rows["C"]["clean"] == 99.34 and "not compared cell by cell" in fashion.caption


def image_paths(document):
    "The image paths a markdown document names, resolved from its folder."
    text = document.read_text(encoding="utf-8")
    named = re.findall(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)", text) + re.findall(r"<img[^>]*\bsrc=[\"']([^\"']+)", text)
    return {(document.parent / path).resolve() for path in named}


def test_every_figure_the_documents_show_is_one_the_command_writes():
    documents = [Path(ROOT) / "README.md", *sorted((Path(ROOT) / "docs").glob("*.md"))]
    shown = set().union(*map(image_paths, documents))
    written = {(NOTEBOOKS / "figures" / name).resolve() for name in figures.FIGURES}
    assert shown, "no figure found in the documents: the pattern is wrong"
    assert shown <= written, f"figures shown that `python notebooks/figures.py` does not write: {sorted(map(str, shown - written))}"


def test_the_command_redraws_every_figure_from_the_committed_results(tmp_path):
    run = subprocess.run([sys.executable, "notebooks/figures.py", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    for name in figures.FIGURES:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(figures.FIGURES)  # no partial file left


def test_the_command_names_a_figure_it_cannot_draw_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "notebooks/figures.py", "--results", str(tmp_path), "--out", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1
    assert "accuracy.png not drawn: fashion_mnist.json: missing" in run.stderr


@pytest.fixture
def seed_files(tmp_path):
    """results/over_training/: the committed study as paper seeds 0, 1 and 2 (seed s: every accuracy + 2s points)
    and as authors seed 0; beside them, the committed over_training.json (paper seed 0 again)."""
    committed = json.loads((RESULTS / "over_training.json").read_text())
    folder = tmp_path / "over_training"
    folder.mkdir()
    for protocol, seed in [("paper", 0), ("paper", 1), ("paper", 2), ("authors", 0)]:
        data = copy.deepcopy(committed) | {"protocol": protocol}
        for model in data["models"].values():
            model["seed"] = seed
            for snapshot in model["snapshots"]:
                for group in ("accuracy", "on_autoattack_images"):
                    snapshot[group] = {k: v + 2 * seed for k, v in snapshot[group].items()}
        (folder / f"{protocol}_seed{seed}.json").write_text(json.dumps(data))
    (tmp_path / "over_training.json").write_text(json.dumps(committed))
    return tmp_path, committed


def test_over_training_across_seeds_means_intervals_and_seeds_per_point(seed_files):
    folder, committed = seed_files
    runs, problems = figures.over_training_runs(folder)
    assert sorted(runs) == sorted((p, m, s) for p, s in [("paper", 0), ("paper", 1), ("paper", 2), ("authors", 0)]
                                  for m in ("B", "C"))
    assert problems == [f"over_training.json: {m} seed 0 left out: already read from over_training/paper_seed0.json"
                        for m in committed["models"]]
    across = figures.over_training_across_seeds(runs)
    first = committed["models"]["C"]["snapshots"][0]
    for key, group in [("clean", "accuracy"), ("pgd10", "accuracy"), ("autoattack", "on_autoattack_images")]:
        point = across[("paper", "C")][first["iter"]][key]
        values = [first[group][key] + 2 * s for s in (0, 1, 2)]  # sd 2 over 3 seeds
        n = first["autoattack_n" if key == "autoattack" else "n_test"]
        mean = sum(values) / 3
        assert point.seeds == [0, 1, 2] and point.interval.value == pytest.approx(mean)
        spread_high = mean + T_975[3] * 2 / math.sqrt(3)  # on 200 AutoAttack images, Wilson's is the wider
        assert point.interval.high == pytest.approx(min(100, max(spread_high, figures.wilson(mean, n).high)))
        alone = across[("authors", "C")][first["iter"]][key]  # one seed: Wilson on its own images
        assert alone.seeds == [0] and alone.interval == figures.wilson(first[group][key], n)


def test_a_seed_trained_with_other_settings_is_left_out_of_the_mean_and_named(seed_files):
    folder, _ = seed_files
    path = folder / "over_training" / "paper_seed2.json"
    data = json.loads(path.read_text())
    data["models"]["C"]["trained_settings"]["d_every"] = 5
    path.write_text(json.dumps(data))
    runs, problems = figures.over_training_runs(folder)
    assert ("paper", "C", 2) not in runs and ("paper", "B", 2) in runs
    assert "over_training/paper_seed2.json: C seed 2 left out: trained otherwise than over_training/paper_seed0.json " \
           "(d_every 5 against None)" in problems
    assert figures.over_training_across_seeds(runs)[("paper", "C")][1000]["clean"].seeds == [0, 1]


def test_a_seed_scored_on_other_images_is_left_out_of_the_mean_and_named(seed_files):
    folder, _ = seed_files
    path = folder / "over_training" / "paper_seed2.json"
    data = json.loads(path.read_text())
    data["scoring"]["strong_n"] = 500  # its AutoAttack on other images than the other seeds'
    path.write_text(json.dumps(data))
    runs, problems = figures.over_training_runs(folder)
    assert ("paper", "C", 2) not in runs and ("paper", "B", 2) not in runs and ("paper", "C", 1) in runs
    assert "over_training/paper_seed2.json: C seed 2 left out: scored otherwise than over_training/paper_seed0.json " \
           "(strong_n 500 against 200)" in problems
    assert figures.over_training_across_seeds(runs)[("paper", "C")][1000]["autoattack"].seeds == [0, 1]


def test_a_copy_scored_over_training_is_its_model_with_its_own_seed(seed_files):
    folder, _ = seed_files
    path = folder / "over_training" / "paper_seed1.json"
    data = json.loads(path.read_text())
    data["models"] = {"C'": data["models"]["C"]}  # Table 1's C' (seed 1), from the folder of C (seed 0)
    path.write_text(json.dumps(data))
    runs, problems = figures.over_training_runs(folder)
    assert not any("seed1" in line for line in problems) and runs[("paper", "C", 1)][0] == "over_training/paper_seed1.json"
    assert ("paper", "B", 1) not in runs and not any("'" in name for _, name, _ in runs)
    assert figures.over_training_across_seeds(runs)[("paper", "C")][1000]["clean"].seeds == [0, 1, 2]


def test_the_notebook_shows_the_study_on_mnist_apart_from_fashion_mnist(seed_files, monkeypatch):
    folder, _ = seed_files
    (folder / "over_training.json").unlink()
    (folder / "over_training").rename(folder / "over_training_mnist")
    path = folder / "over_training_mnist" / "paper_seed1.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"models": {"C'": json.loads(path.read_text())["models"]["C"]}}))
    text, _ = run_notebook(folder, monkeypatch)
    assert "no over-training results to show across seeds (over_training/*.json)" in text
    mnist = text[text.index("no AutoAttack on more images at the last snapshot and validation's pick (over_training/"):]
    c_paper = mnist[mnist.index("C, paper protocol: accuracy"):]
    assert re.search(r"\n +1000 .*   3: 0, 1, 2 \(t interval\)\n", c_paper)
    assert "no AutoAttack on more images at the last snapshot and validation's pick (over_training_mnist/" in mnist


def test_over_training_across_seeds_works_on_the_committed_files_and_in_the_figure(seed_files, tmp_path):
    runs, problems = figures.over_training_runs(RESULTS)
    assert problems == [] and runs[("paper", "C", 0)][0] == "over_training.json"  # seed 0 from the one-seed file
    folder, _ = seed_files
    run = subprocess.run([sys.executable, "notebooks/figures.py", "--results", str(folder), "--out", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "out" / "over_training_seeds.png").is_file(), run.stderr


def test_changes_across_seeds_run_from_the_first_to_the_last_snapshot_every_seed_scored_then_step_by_step(seed_files):
    folder, committed = seed_files
    path = folder / "over_training" / "paper_seed2.json"
    data = json.loads(path.read_text())
    data["models"]["C"]["snapshots"].pop()  # seed 2 stopped a snapshot early: its last is no shared one
    for snapshot in data["models"]["C"]["snapshots"][1:]:
        snapshot["accuracy"]["pgd10"] += 10  # seed 2 alone rises after its first snapshot
    path.write_text(json.dumps(data))
    changes = figures.changes_across_seeds(figures.over_training_runs(folder)[0])
    iters = [s["iter"] for s in committed["models"]["C"]["snapshots"]]
    steps = changes[("paper", "C")]
    assert [(c.start, c.end) for c in steps] == [(iters[0], iters[-2])] + list(zip(iters[:-2], iters[1:-1]))
    assert steps[0].seeds == [0, 1, 2]
    base = {s["iter"]: s["accuracy"]["pgd10"] for s in committed["models"]["C"]["snapshots"]}
    before, after = [base[iters[0]] + 2 * s for s in (0, 1, 2)], [base[iters[-2]] + 2 * s + 10 * (s == 2) for s in (0, 1, 2)]
    squares = sum((v - sum(vs) / 3) ** 2 for vs in (before, after) for v in vs)  # pooled over both snapshots: 4 df
    seeds_half = stats.t.ppf(0.975, 4) * math.sqrt(squares / 4) * math.sqrt(2 / 3)
    images_half = math.hypot(*[(w.high - w.low) / 2 for w in (figures.wilson(sum(vs) / 3, 1000) for vs in (before, after))])
    pgd = steps[0].scores["pgd10"]
    assert pgd.value == pytest.approx(sum(after) / 3 - sum(before) / 3) and seeds_half > images_half
    assert pgd.high - pgd.value == pytest.approx(seeds_half)
    alone = changes[("authors", "C")][0].scores["autoattack"]
    first, last = (committed["models"]["C"]["snapshots"][i]["on_autoattack_images"]["autoattack"] for i in (0, -1))
    assert alone.value == pytest.approx(last - first)  # one seed: its two snapshots' Wilson half-widths in quadrature
    assert alone.high - alone.value == pytest.approx(math.hypot(*[(w.high - w.low) / 2 for w in (
        figures.wilson(first, 200), figures.wilson(last, 200))]))


def test_changes_across_seeds_of_two_shared_snapshots_are_one_and_of_one_none(seed_files):
    folder, _ = seed_files
    for keep, expected in [(2, 1), (1, 0)]:
        path = folder / "over_training" / "authors_seed0.json"
        data = json.loads(path.read_text())
        data["models"]["C"]["snapshots"] = data["models"]["C"]["snapshots"][:keep]
        path.write_text(json.dumps(data))
        assert len(figures.changes_across_seeds(figures.over_training_runs(folder)[0])[("authors", "C")]) == expected


def test_the_notebook_tabulates_over_training_across_seeds(seed_files, monkeypatch):
    folder, committed = seed_files
    text, _ = run_notebook(folder, monkeypatch)
    first = committed["models"]["C"]["snapshots"][0]
    mean = first["accuracy"]["clean"] + 2
    half = T_975[3] * 2 / math.sqrt(3)
    assert f"C, paper protocol: accuracy (%) [95% interval]" in text and "C, authors protocol" in text
    assert f"{first['iter']:>10}{f'{mean:.1f} [{mean - half:.1f}, {mean + half:.1f}]':>22}" in text
    assert "3: 0, 1, 2 (t interval)" in text and "1: 0 (Wilson)" in text
    steps = figures.changes_across_seeds(figures.over_training_runs(folder)[0])[("paper", "C")]
    first = steps[0]
    assert "C, paper protocol: change (points) [95% interval], seeds 0, 1, 2" in text
    assert f"{f'{first.start}-{first.end}':>16}{figures.difference_text(first.scores['clean']):>22}" in text
    assert text.count("first to last") == 4  # B and C under each protocol


@pytest.fixture
def picked_files(tmp_path):
    """results/over_training/autoattack1000/: the committed paper seed 1 file as paper seeds 0, 1 and 2 (seed s:
    every accuracy + 2s points, validation's pick at iteration 1000 for seeds 0 and 1, at the last for seed 2),
    as authors seed 0, whose validation picks an iteration that was not scored, and as authors seed 1 (every
    accuracy + 6 points, validation's pick the last snapshot)."""
    committed = json.loads((RESULTS / "over_training" / "autoattack1000" / "paper_seed1.json").read_text())
    folder = tmp_path / "over_training" / "autoattack1000"
    folder.mkdir(parents=True)
    for protocol, seed, best in [("paper", 0, 1000), ("paper", 1, 1000), ("paper", 2, 5000), ("authors", 0, 3000),
                                 ("authors", 1, 5000)]:
        data = copy.deepcopy(committed) | {"protocol": protocol}
        model = data["models"]["C"]
        model["seed"], model["best_snapshot"]["iter"] = seed, best
        offset = 2 * seed + (4 if protocol == "authors" else 0)
        for snapshot in model["snapshots"]:
            snapshot["on_autoattack_images"] = {k: v + offset for k, v in snapshot["on_autoattack_images"].items()}
        (folder / f"{protocol}_seed{seed}.json").write_text(json.dumps(data))
    return tmp_path, {s["iter"]: s["on_autoattack_images"] for s in committed["models"]["C"]["snapshots"]}


def test_autoattack_on_more_images_is_averaged_over_seeds_at_the_last_snapshot_and_at_validations_pick(picked_files):
    folder, committed = picked_files
    runs, problems = figures.over_training_runs(folder, "over_training/autoattack1000/*.json", None)
    across, left_out = figures.picked_across_seeds(runs)
    assert problems == [] and left_out == [
        "over_training/autoattack1000/authors_seed0.json: C seed 0 left out: validation's pick, iteration 3000, was not scored"]
    assert sorted(across) == [("authors", "C", 1000), ("paper", "C", 1000)]
    picks = across[("paper", "C", 1000)]
    for which, iters in [("last", [5000, 5000, 5000]), ("validation's pick", [1000, 1000, 5000])]:
        for key, _ in figures.PICKED_SCORES:
            values = [committed[it][key] + 2 * seed for seed, it in enumerate(iters)]
            point = picks[which][key]
            assert point.seeds == [0, 1, 2] and point.iters == iters
            assert point.interval == figures.over_seeds(values, 1000) and point.values == values


def test_the_authors_protocol_is_compared_with_the_papers_on_the_seeds_spread_pooled_over_both(picked_files):
    folder, committed = picked_files
    files = folder / "over_training" / "autoattack1000"
    second = json.loads((files / "authors_seed1.json").read_text())  # authors seed 2: seed 1's accuracies + 2 points
    second["models"]["C"]["seed"] = 2
    for snapshot in second["models"]["C"]["snapshots"]:
        snapshot["on_autoattack_images"] = {k: v + 2 for k, v in snapshot["on_autoattack_images"].items()}
    (files / "authors_seed2.json").write_text(json.dumps(second))
    runs, _ = figures.over_training_runs(folder, "over_training/autoattack1000/*.json", None)
    apart = figures.protocols_apart(figures.picked_across_seeds(runs)[0])
    assert list(apart) == [("C", 1000)] and list(apart[("C", 1000)]) == figures.PICKS
    # last snapshot, every score: the authors' seeds at + 6 and + 8 against the paper's at + 0, 2, 4: 5 points
    # apart; squared deviations 2 and 8 pooled on 1 + 2 df
    t3, pooled = stats.t.ppf(0.975, 3), math.sqrt(10 / 3)
    for key, _ in figures.PICKED_SCORES:
        last = apart[("C", 1000)]["last"][key]
        assert last.value == pytest.approx(5.0) and last.high - last.value == pytest.approx(t3 * pooled * math.sqrt(1 / 2 + 1 / 3))
    # validation's pick: the authors' at 5000 (+ 6, + 8), the paper's at 1000, 1000, 5000 (+ 0, + 2, + 4)
    aa = {it: committed[it]["autoattack"] for it in (1000, 5000)}
    authors, paper = [aa[5000] + 6, aa[5000] + 8], [aa[1000], aa[1000] + 2, aa[5000] + 4]
    pick = apart[("C", 1000)]["validation's pick"]["autoattack"]
    assert pick == figures.difference(authors, paper, 1000, figures.pooled_spread({"authors": authors, "paper": paper}))
    assert pick.value == pytest.approx(aa[5000] + 7 - sum(paper) / 3)


def test_the_notebook_tabulates_autoattack_on_more_images(picked_files, monkeypatch):
    folder, committed = picked_files
    text, _ = run_notebook(folder, monkeypatch)
    assert "C, paper protocol, first 1000 test images: accuracy (%) [95% interval]" in text
    values = [committed[it]["autoattack"] + 2 * seed for seed, it in enumerate([1000, 1000, 5000])]
    pick = figures.interval_text(figures.over_seeds(values, 1000))
    assert re.search(rf"validation's pick .*{re.escape(pick)}   3: 0, 1, 2 \(t interval; 1000, 1000, 5000\)", text)
    apart = figures.interval_text(figures.Interval(4.0, *[4.0 + s * T_975[3] * 2 * math.sqrt(4 / 3) for s in (-1, 1)], ""))
    assert "C, the authors' protocol less the paper's, first 1000 test images" in text
    assert re.search(rf"last .*\+{re.escape(apart)} $", text, re.M)  # within 10 points of 0: no star
    assert "authors_seed0.json: C seed 0 left out: validation's pick, iteration 3000, was not scored" in text


ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|tmp|root|Users|mnt|data|var|opt|scratch)\b")


def test_the_notebook_names_no_machine_path_tracker_or_notes(monkeypatch):
    text, _ = run_notebook(None, monkeypatch)
    assert "over_training.py B.pt --dataset fashion_mnist" in text  # the header that once printed the checkpoint's path
    assert not ABSOLUTE_PATH.search(text), ABSOLUTE_PATH.search(text).group(0)
    for source in ("results.py", "figures.py", "results_files.py"):
        code = (NOTEBOOKS / source).read_text()
        assert not ABSOLUTE_PATH.search(code) and not re.search(r"\b(issue|tracker)s? ?#?\d", code, re.I), source
        assert "reproduction_notes" not in code and "shared/" not in code, source


def test_the_notebook_shows_intervals_and_a_summary_of_every_data_set_and_protocol(monkeypatch, tmp_path):
    text, _ = run_notebook(None, monkeypatch)
    fashion = text[text.index("=== fashion_mnist: fashion_mnist.json"):text.index("=== ensemble.json")]
    assert "not compared cell by cell" in fashion and " diff " not in fashion and "*" not in fashion
    assert "95% lo" in fashion and "95% hi" in fashion
    summary = text[text.index("data set "):text.index("accuracy (%) [95% interval]; n: test images")]
    assert re.search(r"fashion_mnist +0\.1 +paper +fashion_mnist\.json +C +5000 / 200 +87\.1 \[86\.1, 88\.0\] +"
                     r"38\.0 \[36\.7, 39\.4\] +29\.5 \[23\.6, 36\.2\]\n", summary)
    assert re.search(r"authors +protocol_check/fashion_mnist_authors\.json +C +2000 / - +82\.5 \[80\.8, 84\.1\]", summary)
    # a result on the paper's data set and eps stands beside the paper's cells; at another eps it does not
    report = json.loads((RESULTS / "fashion_mnist.json").read_text()) | {"experiment": "mnist"}
    (tmp_path / "mnist.json").write_text(json.dumps(report | {"settings": report["settings"] | {"eps": 0.3}}))
    (tmp_path / "mnist_authors.json").write_text(json.dumps(report | {"experiment": "mnist_authors", "protocol": "authors"}))
    text, _ = run_notebook(tmp_path, monkeypatch)
    assert re.search(r"mnist +0\.3 +paper +mnist\.json +A +5000 / 200 .*\] +99\.1 +0\.3\n", text)
    assert re.search(r"mnist +0\.1 +authors +mnist_authors\.json +A +5000 / 200 .*\]\n", text)
    assert re.search(r"\* \|ours - paper\| > 3 points: [1-9]\d* cells", text) and "   diff " in text


def test_a_table_on_the_papers_data_set_gives_each_difference_from_the_paper_its_interval(monkeypatch, tmp_path):
    report = json.loads((RESULTS / "fashion_mnist.json").read_text()) | {"experiment": "mnist"}
    (tmp_path / "mnist.json").write_text(json.dumps(report | {"settings": report["settings"] | {"eps": 0.3}}))
    text, _ = run_notebook(tmp_path, monkeypatch)
    table = text[text.index("=== mnist: mnist.json"):]
    rows = table.splitlines()
    c_paper = next(i for i, line in enumerate(rows) if line.startswith("C ")) + 3  # C: ours, 95% lo, 95% hi, paper
    n, ours = report["eval"]["n_test"], report["table"]["C"]["pgd"]
    half = lambda i: (i.high - i.low) / 2
    d = figures.paper_difference(figures.wilson(ours, n), 56.51, n)
    assert d.value == ours - 56.51
    assert half(d) == pytest.approx(math.hypot(half(figures.wilson(ours, n)), half(figures.wilson(56.51, n))))
    cells = lambda line: line.split()[-9:]  # the nine columns, pgd third
    assert rows[c_paper].split()[0] == "paper" and rows[c_paper + 1].split()[0] == "diff"
    assert cells(rows[c_paper + 1])[2] == f"{d.value:+.2f}*"
    assert (rows[c_paper + 2].split()[0], cells(rows[c_paper + 2])[2]) == ("Δ", f"{d.low:+.2f}")
    assert (rows[c_paper + 3].split()[0], cells(rows[c_paper + 3])[2]) == ("Δ", f"{d.high:+.2f}")
    paper = figures.PAPER["tables"]["mnist"]["rows"]
    compared = 9 * len(set(paper) & set(report["table"]))  # A, B and C (EAT is the ensemble's), every column
    far = sum(abs(report["table"][row][col] - value) > 3 for row in report["table"]
              for col, value in zip(figures.COLUMNS, paper[row]))
    assert f"> 3 points: {far} cells; within 3 points: {compared - far} of {compared}" in table


# ---------------------------------------------------------------- the ablation study
ABLATION_SCORES = {("paper", 0): (90.0, 50.0, 20.0, 17.0), ("paper", 1): (90.0, 50.0, 22.0, 17.0),
                   ("d_every", 0): (86.0, 55.0, 36.0, 33.0), ("d_every", 1): (86.0, 55.0, 38.0, 33.0),
                   ("g_net", 0): (90.0, 50.0, 21.0, 18.0)}  # one seed so far


def write_ablation_file(out):
    """A results file as tools/ablation_study.py writes it (its own merge), with made-up scores."""
    import ablation_study
    header = {"experiment": "ablation_study", "settings": {"iters": 2000, "seed": 0},
              "scoring": {"n_test": 1000, "autoattack_n": 500}, "provenance": {"command": "ablation_study.py"}}
    for (arm, seed), values in ABLATION_SCORES.items():
        entry = {"fingerprint": f"{arm}{seed}", "overrides": ablation_study.ARMS[arm],
                 "scores": dict(zip(["clean", "fgs", "pgd", "autoattack"], values))}
        ablation_study.merge(str(out), header, arm, seed, entry)
    return out


@pytest.fixture
def ablation_file(tmp_path):
    return write_ablation_file(tmp_path / "ablation_study.json")


def test_the_ablation_table_gives_each_arm_its_interval_over_seeds_and_its_difference_from_the_paper_arm(ablation_file):
    result = figures.one_result(ablation_file.parent, ablation_file.name)
    intervals = figures.ablation_intervals(result.data)
    # PGD: paper 20, 22; d_every 36, 38; g_net 21: squared deviations 2 + 2 + 0 on 1 + 1 + 0 df
    t2, pooled = stats.t.ppf(0.975, 2), math.sqrt(4 / 2)
    assert intervals["paper"]["pgd"] == figures.seeds_interval(21.0, pooled, 2, 1000, df=2)
    assert intervals["paper"]["pgd"].high - 21.0 == pytest.approx(t2 * pooled / math.sqrt(2))  # not 12.7 * sd / sqrt(2)
    g_net = intervals["g_net"]["pgd"]  # one seed: the seeds' spread the other arms show, not its images' alone
    assert g_net.high - 21.0 == pytest.approx(t2 * pooled) and g_net.high > figures.wilson(21.0, 1000).high
    agreeing, images = intervals["d_every"]["autoattack"], figures.wilson(33.0, 500)  # seeds that agree everywhere
    assert (agreeing.low, agreeing.high) == (images.low, images.high)  # Wilson's width, not none
    moved = figures.ablation_differences(result.data)
    assert set(moved) == {"d_every", "g_net"}
    pgd = moved["d_every"]["pgd"]
    assert pgd.value == pytest.approx(16.0) and pgd.high - pgd.value == pytest.approx(t2 * pooled * math.sqrt(1 / 2 + 1 / 2))
    assert pgd.low > 0  # each arm's own two seeds (t factor 12.7) would not tell 16 points from 0
    aa = moved["d_every"]["autoattack"]  # 33 against 17 on 500 images, no spread: the images' intervals in quadrature
    half = math.hypot(*[(w.high - w.low) / 2 for w in (figures.wilson(33.0, 500), figures.wilson(17.0, 500))])
    assert aa.value == pytest.approx(16.0) and aa.high - aa.value == pytest.approx(half) and aa.low > 0
    assert moved["g_net"]["autoattack"].low < 0 < moved["g_net"]["autoattack"].high
    without_paper = json.loads(ablation_file.read_text())
    del without_paper["runs"]["paper"]
    assert figures.ablation_differences(without_paper) == {}


def test_the_ablation_table_of_single_seeds_gives_each_arm_its_images_interval(tmp_path):
    data = json.loads(write_ablation_file(tmp_path / "ablation_study.json").read_text())
    data["runs"] = {arm: {"0": by_seed["0"]} for arm, by_seed in data["runs"].items()}
    intervals = figures.ablation_intervals(data)
    assert intervals["paper"]["pgd"] == figures.wilson(20.0, 1000)
    moved = figures.ablation_differences(data)["d_every"]["pgd"]
    half = math.hypot(*[(w.high - w.low) / 2 for w in (figures.wilson(36.0, 1000), figures.wilson(20.0, 1000))])
    assert moved.value == pytest.approx(16.0) and moved.high - moved.value == pytest.approx(half)


def test_the_ablation_figure_draws_every_arm(ablation_file):
    fig = figures.ablation_study(figures.one_result(ablation_file.parent, ablation_file.name))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["g_net (1)", "d_every (2)", "paper (2)"]
    figures.plt.close(fig)


@pytest.mark.parametrize("change,message", [(lambda d: d["runs"].update(paper={}), "'runs.paper' holds no seed's model"),
                                            (lambda d: d["runs"]["paper"]["0"]["scores"].pop("autoattack"),
                                             "missing key 'runs.paper.0.scores.autoattack'")])
def test_a_damaged_ablation_file_is_named_not_drawn(change, message, ablation_file):
    data = json.loads(ablation_file.read_text())
    change(data)
    ablation_file.write_text(json.dumps(data))
    results, problems = figures.load_all(ablation_file.parent, ablation_file.name)
    assert not results and problems == [f"ablation_study.json: not shown: {message}"]


def test_the_mnist_curve_sets_the_papers_clean_and_pgd_beside_ours_only_on_its_data_set_and_eps():
    import matplotlib
    matplotlib.use("Agg")
    runs, problems = figures.over_training_runs(RESULTS, "over_training_mnist/*.json", None)
    assert runs and problems == []
    across = figures.over_training_across_seeds(runs)

    def flat_lines(paper):
        fig = figures.over_training_seeds(across, "MNIST", paper)
        found = sorted(line.get_ydata()[0] for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == ":")
        figures.plt.close(fig)
        return found

    c = figures.PAPER["tables"]["mnist"]["rows"]["C"]  # clean, FGS, PGD, ...
    assert flat_lines(figures.paper_table("mnist", 0.3)) == sorted([c[0], c[2]] * len(across))  # in each protocol's panel
    assert flat_lines(figures.paper_table("fashion_mnist", 0.1)) == []  # the MNIST pattern, not a comparable number
    assert flat_lines(None) == []
