"""Every entry point found in the tree (the top-level scripts, every tools/*.py, notebooks/figures.py)
crossed with the faults a user meets at its doors: an --out that is a folder, that lies under a file,
whose name is too long once atomic_write's temporary suffix is added, or that is read-only, an --out
(or, for figures.py, a results file) of the wrong shape, and standard output closed early. Each row
runs the command as a user does and asserts its exit status, one line on stderr naming the fault and
no traceback, and that every file there before is byte for byte the same. A new tool is a new row."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import mnist
from conftest import ROOT

pytestmark = pytest.mark.slow  # about 60 commands, each a few seconds


def entry_points():
    """Paths (from the root) of every command: the top-level scripts with a __main__ block, tools/*.py
    but the helper _root.py, and notebooks/figures.py."""
    top = [os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")) if "__main__" in open(p).read()]
    tools = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tools", "[!_]*.py"))]
    return sorted(top) + sorted(tools) + ["notebooks/figures.py"]


ENTRY_POINTS = entry_points()
FIGURES = "notebooks/figures.py"
# what a command needs before it reaches its --out (a checkpoint to score, a results folder); all others run --quick
NEEDS = {"evaluate.py": lambda w: [w["ckpt"], "--dataset", "mnist", "--data-dir", w["data"]],
         "tools/over_training.py": lambda w: [w["ckpt"], "--dataset", "mnist", "--data-dir", w["data"]],
         FIGURES: lambda w: ["--results", w["results"]]}
QUICK = ["--quick", "--gpu", "cpu"]


def unwritable_folder():
    """A folder that refuses new files to this user: sysfs refuses them even to root."""
    return "/sys/kernel" if os.geteuid() == 0 else None


def out_values(w):
    """fault -> the --out it gives, and the text the one line must hold."""
    limit = os.pathconf(w["root"], "PC_NAME_MAX")
    return {"out is a folder": (w["folder"], "is a folder"),
            "out under a file": (os.path.join(w["file"], "r.json"), "a file stands where a folder should be"),
            "out name too long with the temporary suffix": (os.path.join(w["root"], "x" * (limit - 5) + ".json"),
                                                             "choose a shorter name"),
            "out read-only": (os.path.join(w["read_only"], "r"), w["read_only"]),
            "out of the wrong shape": (w["wrong_shape"], w["wrong_shape"])}


NOT_APPLICABLE = {  # (entry point, fault) -> why the row does not apply
    (FIGURES, "out is a folder"): "figures.py's --out is a folder by design",
    (FIGURES, "out name too long with the temporary suffix"): "figures.py writes fixed short names inside its --out "
                                                              "folder; the folder's own name is checked by mkdir",
    (FIGURES, "out of the wrong shape"): "figures.py reads no --out; its results files have the row below",
}


@pytest.fixture(scope="module")
def world(fake_mnist, tmp_path_factory):
    """The files a user has: a checkpoint with a kept snapshot, a folder, a file, a results file of the
    wrong shape, a results folder; `root` holds them all, and is compared before and after each row."""
    root = tmp_path_factory.mktemp("user")
    mnist.main(QUICK + ["--models", "A", "--no-eval", "--data-dir", fake_mnist, "--ckpt-dir", str(root / "ckpt"),
                        "--set", "keep_every=5"])
    (root / "folder").mkdir()
    (root / "a-file").write_text("the user's own file\n")
    (root / "wrong.json").write_text("[1, 2]\n")
    shutil.copytree(os.path.join(ROOT, "results"), root / "results")  # the committed results, one damaged
    damaged = json.loads((root / "results" / "fashion_mnist.json").read_text()) | {"table": [1]}
    (root / "results" / "fashion_mnist.json").write_text(json.dumps(damaged))
    read_only = unwritable_folder() or str(root / "read-only")
    if not unwritable_folder():
        os.mkdir(read_only, 0o555)
    return {"root": str(root), "ckpt": str(root / "ckpt" / "A.pt"), "data": fake_mnist, "folder": str(root / "folder"),
            "file": str(root / "a-file"), "wrong_shape": str(root / "wrong.json"), "results": str(root / "results"),
            "read_only": read_only}


def tree(root):
    """path -> bytes of every file under `root`."""
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(root) for f in files
            if not f.endswith(".lock")}  # a lock file is emptied by its holder, by design


def run(entry, argv, cwd, stdout=subprocess.DEVNULL):
    env = os.environ | {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, entry), *argv], cwd=cwd, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=300)


def assert_one_line(result, status, fragment):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


ROWS = [(entry, fault) for entry in ENTRY_POINTS for fault in out_values({"root": "/", "folder": "", "file": "",
                                                                          "read_only": "", "wrong_shape": ""})]


@pytest.mark.parametrize("entry,fault", ROWS, ids=[f"{e}: {f}" for e, f in ROWS])
def test_a_bad_out_ends_as_one_line_before_any_work_and_changes_nothing(entry, fault, world, tmp_path):
    if (entry, fault) in NOT_APPLICABLE:
        pytest.skip(NOT_APPLICABLE[(entry, fault)])
    out, fragment = out_values(world)[fault]
    before = tree(world["root"])
    result = run(entry, NEEDS.get(entry, lambda w: QUICK)(world) + ["--out", out], cwd=str(tmp_path))
    assert_one_line(result, 2, fragment)
    assert tree(world["root"]) == before and os.listdir(tmp_path) == []  # nothing changed, nothing begun


def test_figures_names_a_results_file_of_the_wrong_shape_and_draws_the_others(world, tmp_path):
    before = tree(world["root"])
    result = run(FIGURES, ["--results", world["results"], "--out", str(tmp_path / "figures")], cwd=str(tmp_path))
    assert_one_line(result, 2, "accuracy.png not drawn: fashion_mnist.json: not shown: 'table' has the wrong type")
    assert tree(world["root"]) == before
    assert sorted(os.listdir(tmp_path / "figures")) == sorted(set(figures_drawn()) - {"accuracy.png"})


def figures_drawn():
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    import figures
    return figures.FIGURES


def closed_stdout():
    read, write = os.pipe()
    os.close(read)
    return write


# what reaches its first line on stdout before any long work, with the fake data; the other commands print
# only after training or scoring (their way out is the same exit_on_error, which the rows above hold them to)
FIRST_LINE_SOON = {"mnist.py": lambda w: QUICK + ["--models", "A", "--data-dir", w["data"], "--ckpt-dir", w["root"] + "/ckpt2"],
                   "evaluate.py": NEEDS["evaluate.py"],
                   "tools/gpu_check.py": lambda w: QUICK + ["--set", "budget=1"],
                   FIGURES: lambda w: ["--results", os.path.join(ROOT, "results")]}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_standard_output_closed_early_ends_as_one_line(entry, world, tmp_path):
    if entry not in FIRST_LINE_SOON:
        pytest.skip("its first line on stdout comes only after training or scoring")
    before = tree(world["ckpt"].rsplit("/", 1)[0])
    write = closed_stdout()
    try:
        result = run(entry, FIRST_LINE_SOON[entry](world) + ["--out", str(tmp_path / "out")], cwd=str(tmp_path), stdout=write)
    finally:
        os.close(write)
    assert_one_line(result, 141, "standard output was closed early")
    assert tree(world["ckpt"].rsplit("/", 1)[0]) == before
