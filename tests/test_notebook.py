"""notebooks/results.ipynb: committed without outputs, holding the cells of its source notebooks/results.py;
run by nbval (a cell that raises fails) on a real --quick result, on malformed results files, and on results/."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from test_figures import write_ablation_file
from test_mnist_script import OFFLINE

NOTEBOOKS = os.path.join(ROOT, "notebooks")
NOTEBOOK = os.path.join(NOTEBOOKS, "results.ipynb")


def read_notebook():
    with open(NOTEBOOK, encoding="utf-8") as f:
        return json.load(f)


def code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def environment(results_dir):
    env = {k: v for k, v in os.environ.items() if k != "RESULTS_DIR"} | OFFLINE
    if results_dir:
        env["RESULTS_DIR"] = results_dir
    return env


def run_nbval(results_dir=None):
    """nbval in its own pytest process, as a user would run it; every code cell must pass."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                             "-p", "no:cacheprovider", NOTEBOOK],
                            cwd=ROOT, env=environment(results_dir), capture_output=True, text=True, timeout=600)
    n_cells = len(code_cells(read_notebook()))
    assert result.returncode == 0 and f"{n_cells} passed" in result.stdout, result.stdout[-5000:] + result.stderr[-2000:]


def executed_outputs(results_dir, monkeypatch):
    """The notebook executed as nbconvert would (kernel in notebooks/): its outputs' text, and their types."""
    import nbformat
    from nbclient import NotebookClient
    monkeypatch.setenv("RESULTS_DIR", results_dir)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": NOTEBOOKS}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    return text, [output.output_type for output in outputs]


@pytest.fixture(scope="module")
def quick_results(fake_mnist, tmp_path_factory, shared_checkpoints):
    """A folder holding mnist_quick.json from a real `mnist.py --quick --strong-eval` run on fake MNIST
    files (reusing the session's quick models where another test trained them already)."""
    results, checkpoints = tmp_path_factory.mktemp("notebook_results"), os.path.join(shared_checkpoints, "mnist_quick")
    run = subprocess.run([sys.executable, "mnist.py", "--quick", "--strong-eval", "--gpu", "cpu", "--data-dir", fake_mnist,
                          "--out", str(results / "mnist_quick.json"), "--ckpt-dir", str(checkpoints)],
                         cwd=ROOT, env=environment(None), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return results


@pytest.fixture
def malformed_results(quick_results, tmp_path):
    """The quick result, a truncated JSON file, a valid one without its table, one whose strong
    evaluation lacks a model's checks, bench.py's file, and an ablation study's."""
    shutil.copy(quick_results / "mnist_quick.json", tmp_path)
    (tmp_path / "mnist.json").write_text('{"experiment": "mnist"')
    report = json.loads((quick_results / "mnist_quick.json").read_text())
    del report["strong_eval"]["models"]["B"]["checks"]
    (tmp_path / "svhn.json").write_text(json.dumps(report | {"experiment": "svhn"}))
    del report["table"]
    (tmp_path / "cifar10.json").write_text(json.dumps(report | {"experiment": "cifar10"}))
    (tmp_path / "bench.json").write_text(json.dumps({"experiment": "bench"}))  # beside the results, as committed
    write_ablation_file(tmp_path / "ablation_study.json")  # a well-formed one: its section runs
    (tmp_path / "attack_gap").mkdir()
    shutil.copy(os.path.join(ROOT, "results", "attack_gap", "mnist_authors_C.iter20000.json"), tmp_path / "attack_gap")
    gap = json.loads((tmp_path / "attack_gap" / "mnist_authors_C.iter20000.json").read_text())
    (tmp_path / "attack_gap" / "bad.json").write_text(json.dumps(gap | {"accuracy": gap["accuracy"] | {"pgd": 150}}))
    (tmp_path / "first_layer").mkdir()
    shutil.copy(os.path.join(ROOT, "results", "first_layer", "mnist_authors_B.json"), tmp_path / "first_layer")
    layer = json.loads((tmp_path / "first_layer" / "mnist_authors_B.json").read_text())
    torn = [layer["filters"][0] | {"switch": "0.3"}] + layer["filters"][1:]  # filter 0 of B reads one pixel
    (tmp_path / "first_layer" / "bad.json").write_text(json.dumps(layer | {"filters": torn}))
    return tmp_path


def test_committed_notebook_holds_the_cells_of_its_source_and_no_outputs():
    import jupytext
    cells = lambda notebook: [(cell["cell_type"], "".join(cell["source"])) for cell in notebook["cells"]]
    source = jupytext.read(os.path.join(NOTEBOOKS, "results.py"))
    assert cells(read_notebook()) == cells(source), "results.ipynb and results.py disagree: jupytext --sync notebooks/results.py"
    code = code_cells(read_notebook())
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)


@pytest.mark.slow
def test_nbval_on_a_real_quick_result(quick_results):
    run_nbval(str(quick_results))


@pytest.mark.slow
def test_nbval_on_malformed_results(malformed_results):
    run_nbval(str(malformed_results))


@pytest.mark.slow
def test_malformed_results_are_named_in_one_line_each(malformed_results, monkeypatch):
    text, kinds = executed_outputs(str(malformed_results), monkeypatch)
    assert "error" not in kinds and "Traceback" not in text
    assert "mnist.json: not shown: not valid JSON (Expecting" in text
    assert "cifar10.json: not shown: missing key 'table'" in text
    assert "svhn.json: not shown: missing key 'strong_eval.models.B.checks'" in text
    assert "bench.json: not shown: bench.py's speed measurements, not accuracies" in text
    assert "attack_gap/bad.json: not shown: 'accuracy.pgd' is 150, not an accuracy in [0, 100]" in text
    assert "pgd_halving  53.0 [46.1, 59.8]" in text  # the well-formed attack-gap file, with its Wilson interval
    assert "first_layer/bad.json: not shown: 'filters' item 0: 'switch' has the wrong type (str)" in text
    assert "iteration 20000, eps 0.3: 25 of 32 filters read one pixel" in text and "filter   7: on above 0.690 ± 0.009" in text
    assert "mnist_quick.json  [QUICK SMOKE TEST" in text and kinds.count("display_data") >= 3  # bars, eps sweep, curves
    assert "less the paper arm, points [95% interval]" in text and "+16.0 [10.7, 21.3]*" in text  # d_every's AutoAttack
    assert "masking flags of C: " in text and "model C of mnist_quick.json (mnist, paper protocol), white box, by batch-norm mode" in text


@pytest.mark.slow
def test_nbval_on_the_repository_results():
    run_nbval()


@pytest.mark.slow
def test_a_smoke_test_is_hidden_behind_a_full_result_unless_results_dir_is_set(quick_results, tmp_path, monkeypatch):
    shutil.copy(quick_results / "mnist_quick.json", tmp_path)
    report = json.loads((quick_results / "mnist_quick.json").read_text())
    (tmp_path / "mnist.json").write_text(json.dumps(report | {"experiment": "mnist"}))
    authors = report | {"experiment": "mnist_authors_quick", "protocol": "authors"}  # a full result of the paper's does not hide it
    (tmp_path / "mnist_authors_quick.json").write_text(json.dumps(authors))
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.syspath_prepend(NOTEBOOKS)  # as the kernel, which runs in notebooks/, imports figures.py
    namespace = {"__name__": "results_notebook"}
    for cell in code_cells(read_notebook()):  # up to the cell that loads the results
        exec("\n".join(line for line in "".join(cell["source"]).splitlines() if not line.startswith("%")), namespace)
        if "shown" in namespace:
            break
    assert [r.file for r in namespace["shown"]] == ["mnist.json", "mnist_quick.json", "mnist_authors_quick.json"]
    namespace["SHOW_ALL_QUICK"] = False  # as when the notebook reads results/
    shown, hidden = namespace["hide_superseded_quick"](namespace["loaded"])
    assert [r.file for r in shown] == ["mnist.json", "mnist_authors_quick.json"]
    assert hidden == ["mnist_quick.json: smoke test not shown (mnist has a full result, paper protocol)"]


@pytest.mark.slow
def test_a_seeds_result_shows_means_standard_deviations_and_n(fake_mnist, tmp_path, monkeypatch):
    """A real `mnist.py --quick --seeds 0,1` run (models A and A'): each seed's settings, the means, the
    standard deviations beneath them, and n."""
    out = tmp_path / "results" / "mnist_quick.json"
    run = subprocess.run([sys.executable, "mnist.py", "--quick", "--seeds", "0,1", "--models", "A,A'", "--gpu", "cpu",
                          "--data-dir", fake_mnist, "--out", str(out), "--ckpt-dir", str(tmp_path / "ckpt")],
                         cwd=ROOT, env=environment(None), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    text, kinds = executed_outputs(str(out.parent), monkeypatch)
    assert "error" not in kinds and "Traceback" not in text
    assert "seeds A=0 A'=1" in text and "seeds A=1 A'=2" in text and "the mean over n = 2 seeds" in text
    stats = json.loads(out.read_text())["table_stats"]["A"]
    means, stds = (" ".join(f"{stats[c][k]:8.2f}" for c in ("clean", "fgs", "pgd")) for k in ("mean", "std"))
    assert f"A  ours  {means}" in text and f"± sd  {stds}" in text
    assert kinds.count("display_data") >= 3  # the bars, and each seed's training curves
