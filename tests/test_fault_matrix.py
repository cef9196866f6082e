"""Every entry point found in the tree (the top-level scripts, every tools/*.py, notebooks/figures.py and tables.py)
crossed with the faults a user meets at its doors: an --out that is a folder, that lies under a file,
whose name is too long once atomic_write's temporary suffix is added, or that is read-only, an --out
(or, for figures.py, a results file) of the wrong shape, and standard output closed early; and with the
faults that meet it at its writes, brought about in its own process (tests/faults/sitecustomize.py): a
disk that fills at each of its writes, and Ctrl-C at its first write. Each row runs the command as a user
does and asserts its exit status, one line on stderr naming the fault (after any progress lines) and no
traceback, and that every file there before is byte for byte the same; a write stopped leaves no torn
file and no temporary one, and the same command again ends well: after a closed stdout and the first
write's fault every command, and the training scripts, which resume, after the faults resumed_after
names. A new tool is a new row."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import mnist
from conftest import ROOT
from test_precision_study import fake_fashion  # noqa: F401 (a fixture: Fashion-MNIST for the studies)

pytestmark = pytest.mark.slow  # about 230 commands, each a few seconds


def entry_points():
    """Paths (from the root) of every command: the top-level scripts with a __main__ block, tools/*.py
    but the helper _root.py, and notebooks/figures.py and tables.py."""
    top = [os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")) if "__main__" in open(p).read()]
    tools = [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tools", "[!_]*.py"))]
    return sorted(top) + sorted(tools) + ["notebooks/figures.py", "notebooks/tables.py"]


ENTRY_POINTS = entry_points()
FIGURES = "notebooks/figures.py"
TABLES = "notebooks/tables.py"
PRINTS_ONLY = "tables.py writes no file: it prints a results file's table"
# what a command needs before it reaches its --out (a checkpoint to score, a results folder); all others run --quick
NEEDS = {"evaluate.py": lambda w: [w["ckpt"], "--dataset", "mnist", "--data-dir", w["data"]],
         "tools/over_training.py": lambda w: [w["ckpt"], "--dataset", "mnist", "--data-dir", w["data"]],
         "tools/attack_gap.py": lambda w: [w["ckpt"], "--dataset", "mnist", "--data-dir", w["data"]],
         "tools/first_layer.py": lambda w: [w["ckpt"], "--dataset", "mnist"],
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
    **{(TABLES, fault): PRINTS_ONLY for fault in ("out is a folder", "out under a file", "out read-only",
                                                  "out name too long with the temporary suffix")},
    (TABLES, "out of the wrong shape"): "tables.py has no --out; the results file it reads has the row below",
}


@pytest.fixture(scope="module")
def world(fake_mnist, fake_fashion, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """The files a user has: a checkpoint with a kept snapshot, a folder, a file, a results file of the
    wrong shape, a results folder; `root` holds them all, and is compared before and after each row. And
    the fake data sets (MNIST; Fashion-MNIST, for the studies)."""
    root = tmp_path_factory.mktemp("user")
    mnist.main(QUICK + ["--models", "A", "--no-eval", "--data-dir", fake_mnist, "--ckpt-dir", str(root / "ckpt"),
                        "--set", "keep_every=5"])
    (root / "folder").mkdir()
    (root / "a-file").write_text("the user's own file\n")
    (root / "wrong.json").write_text("[1, 2]\n")
    shutil.copytree(os.path.join(ROOT, "results"), root / "results")  # the committed results, one damaged
    committed = json.loads((root / "results" / "fashion_mnist.json").read_text())
    (root / "results" / "fashion_mnist.json").write_text(json.dumps(committed | {"table": [1]}))
    mnist_table = committed | {"experiment": "mnist", "settings": committed["settings"] | {"eps": 0.3}}
    (root / "mnist_table.json").write_text(json.dumps(mnist_table))  # a table tables.py sets beside the paper's
    read_only = unwritable_folder() or str(root / "read-only")
    if not unwritable_folder():
        os.mkdir(read_only, 0o555)
    return {"root": str(root), "ckpt": str(root / "ckpt" / "A.pt"), "data": fake_mnist, "fashion": fake_fashion,
            "folder": str(root / "folder"), "file": str(root / "a-file"), "wrong_shape": str(root / "wrong.json"),
            "results": str(root / "results"), "read_only": read_only, "mnist_table": str(root / "mnist_table.json")}


def tree(root):
    """path -> bytes of every file under `root`."""
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(root) for f in files
            if not f.endswith(".lock")}  # a lock file is emptied by its holder, by design


def run(entry, argv, cwd, stdout=subprocess.DEVNULL, fault=None):
    """The command as a user runs it; with `fault` ("enospc:N", "sigint:N" or "count"), tests/faults/sitecustomize.py
    brings it about at the Nth file write."""
    env = os.environ | {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    if fault:
        env |= {"PYTHONPATH": os.pathsep.join([FAULTS, ROOT]), "FAULT_AT_WRITE": fault, "FAULT_LOG": os.path.join(cwd, WRITES_LOG)}
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


def test_tables_names_a_results_file_of_the_wrong_shape_in_one_line(world, tmp_path):
    before = tree(world["root"])
    result = run(TABLES, [os.path.join(world["results"], "fashion_mnist.json")], cwd=str(tmp_path))
    assert_one_line(result, 2, "fashion_mnist.json: 'table' has the wrong type")
    assert tree(world["root"]) == before and os.listdir(tmp_path) == []


def figures_drawn():
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    import figures
    return figures.FIGURES


def closed_stdout():
    read, write = os.pipe()
    os.close(read)
    return write


FAULTS = os.path.join(ROOT, "tests", "faults")  # its sitecustomize.py brings a fault about at a command's Nth write
WRITES_LOG = "writes.log"
def scoring(w, user):
    """What the scoring tools need: the user's checkpoint, with its snapshots (kept/, see user_folder), and data."""
    return [os.path.join(user, "kept", "A.pt"), "--dataset", "mnist", "--data-dir", w["data"]]


# the command of each entry point that runs to its last write, every write into the folder `user`
WRITING = {"mnist.py": lambda w, user: QUICK + ["--models", "A", "--data-dir", w["data"], "--ckpt-dir", f"{user}/ckpt",
                                                 "--out", f"{user}/mnist.json"],
           "ensemble.py": lambda w, user: QUICK + ["--datasets", "mnist", "--data-dir", w["data"], "--ckpt-dir", f"{user}/ckpt",
                                                    "--out", f"{user}/ensemble.json"],
           "evaluate.py": lambda w, user: scoring(w, user) + ["--gpu", "cpu", "--out", f"{user}/evaluation.json"],
           "tools/over_training.py": lambda w, user: scoring(w, user) + QUICK + [
               "--eval-n", "32", "--set", "strong_n=8", "--out", f"{user}/over_training.json"],
           "tools/attack_gap.py": lambda w, user: scoring(w, user) + ["--gpu", "cpu", "--eval-n", "8",
                                                                      "--out", f"{user}/attack_gap.json"],
           "tools/first_layer.py": lambda w, user: [os.path.join(user, "kept", "A.pt"), "--dataset", "mnist",
                                                     "--out", f"{user}/first_layer.json"],
           "tools/ablation_study.py": lambda w, user: QUICK + ["--data-dir", w["fashion"], "--ckpt-dir", f"{user}/ckpt", "--arms",
                                                               "paper", "--seeds", "0", "--set", "g_steps=1", "--eval-n", "32",
                                                               "--set", "strong_n=16", "--out", f"{user}/ablation.json"],
           "tools/precision_study.py": lambda w, user: QUICK + ["--data-dir", w["fashion"], "--ckpt-dir", f"{user}/ckpt", "--arms",
                                                                "float32", "--seeds", "0", "--eval-n", "32", "--set", "strong_n=16",
                                                                "--out", f"{user}/precision.json"],
           "tools/bench.py": lambda w, user: QUICK + ["--set", "iters=1", "--set", "warmup=0", "--out", f"{user}/bench.json"],
           "tools/gpu_check.py": lambda w, user: QUICK + ["--set", "budget=1", "--out", f"{user}/gpu_check.json"],
           FIGURES: lambda w, user: ["--results", os.path.join(ROOT, "results"), "--out", f"{user}/figures"],
           TABLES: lambda w, user: [w["mnist_table"]]}
REFUSED_FAKE_DATA = ("its data set (SVHN, CIFAR) is checked against its MD5 sums, which fake files pass only within the "
                     "test's own process; it trains and writes through runner.running and core.atomic_write, as mnist.py does")
WRITE_FAULTS = {  # fault -> (FAULT_AT_WRITE's kind, the exit status, what the one line holds)
    "disk full at its first write": ("enospc", 2, ["error: ", "No space left on device", "free some space"]),
    "disk full at each later write": ("enospc", 2, ["error: ", "No space left on device", "free some space"]),
    "Ctrl-C at its first write": ("sigint", 130, ["interrupted: ", "run the same command to resume"])}
MD5_DATA = ("cifar10.py", "cifar100.py", "svhn.py", "generators_study.py")  # the entry points REFUSED_FAKE_DATA is about
NOT_APPLICABLE |= {(entry, fault): REFUSED_FAKE_DATA for entry in MD5_DATA for fault in WRITE_FAULTS}
NOT_APPLICABLE |= {(TABLES, fault): PRINTS_ONLY for fault in WRITE_FAULTS}
WRITE_ROWS = [(entry, fault) for entry in ENTRY_POINTS for fault in WRITE_FAULTS]
TRAINING = {"mnist.py", "ensemble.py", "tools/ablation_study.py", "tools/precision_study.py"}  # they resume what a fault kept
counted_writes = {}  # entry point -> the files a whole run of its WRITING command writes, in order


def fault_shim():
    """tests/faults/sitecustomize.py as a module (inert here: no FAULT_AT_WRITE in this process), for what it writes."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fault_shim", os.path.join(FAULTS, "sitecustomize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torn_or_left_behind(folder):
    """The files under `folder` that a failed write left torn under their own name, or left behind (a temporary file)."""
    torn = fault_shim().TORN
    return [path for path, data in tree(folder).items()
            if data == torn or ".tmp" in os.path.basename(path) or path.endswith(".partial")]


def user_folder(world, folder):
    """`folder`/user, holding the user's earlier files (a copy of the world's checkpoint folder) on first use."""
    user = os.path.join(folder, "user")
    if not os.path.exists(user):
        shutil.copytree(os.path.dirname(world["ckpt"]), os.path.join(user, "kept"))
    return user


def run_writing(entry, world, folder, fault=None):
    """The entry point's WRITING command, run in `folder` with its files in `folder`/user; its result."""
    return run(entry, WRITING[entry](world, user_folder(world, folder)), cwd=str(folder), fault=fault)


def run_again(entry, world, folder):
    """The same command without the fault: it ends well (it resumes what was kept); the files it wrote, in order."""
    log = os.path.join(folder, WRITES_LOG)
    if os.path.exists(log):
        os.remove(log)
    result = run_writing(entry, world, folder, fault="count")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    if not os.path.exists(log):
        return []  # it found everything done: nothing to write
    with open(log) as f:
        return f.read().splitlines()


def writes_of(entry, world, folder):
    """What a whole run of `entry` writes, in order: counted once, by the first-write row or here."""
    if entry not in counted_writes:
        counted_writes[entry] = run_again(entry, world, folder)
    return counted_writes[entry]


def resumed_after(writes):
    """The numbers (from 1) of the writes after whose fault a training script is also run again: the first
    into each folder but the first one's, and the last. The writes between are more of one kind (checkpoints,
    AutoAttack states), each resumed from as the first of its kind is; running again after every one would
    add minutes to this matrix and no new case."""
    firsts = {os.path.dirname(path): n for n, path in reversed(list(enumerate(writes, 1)))}
    return (set(firsts.values()) | {len(writes)}) - {1}


def assert_ends_with_one_line(result, status, fragments, at=None):
    """The exit status, no traceback, and after any progress lines one line that begins with fragments[0] and
    holds the others: the only one that says what stopped the command."""
    assert result.returncode == status and "Traceback" not in result.stderr, (at, result.stderr[-2000:])
    said = [line for line in result.stderr.splitlines() if line.startswith(("error", "interrupted", "stopped", "warning"))]
    assert len(said) == 1 and said[0] == result.stderr.strip().splitlines()[-1], (at, result.stderr[-2000:])
    assert said[0].startswith(fragments[0]) and all(fragment in said[0] for fragment in fragments), (at, said[0])


def assert_stops_at_the_write(entry, fault, at, world, folder):
    """The command with the fault at write `at`: one line naming its cause, the user's files unchanged,
    nothing torn or left behind."""
    kind, status, fragments = WRITE_FAULTS[fault]
    before = tree(world["root"]) | tree(user_folder(world, folder))
    assert_ends_with_one_line(run_writing(entry, world, folder, fault=f"{kind}:{at}"), status, fragments, at)
    after = tree(world["root"]) | tree(folder)
    assert {path: after.get(path) for path in before} == before and torn_or_left_behind(folder) == [], at


@pytest.mark.parametrize("entry,fault", WRITE_ROWS, ids=[f"{e}: {f}" for e, f in WRITE_ROWS])
def test_a_full_disk_or_ctrl_c_at_a_write_ends_as_one_line_and_leaves_every_file_whole(entry, fault, world, tmp_path):
    if (entry, fault) in NOT_APPLICABLE:
        pytest.skip(NOT_APPLICABLE[(entry, fault)])
    first = fault == "disk full at its first write"  # which leaves nothing to resume: run again, it counts a whole run's writes
    writes = [] if first or fault == "Ctrl-C at its first write" else writes_of(entry, world, tmp_path / "counted")
    due = range(2, len(writes) + 1) if writes else [1]
    if not due:
        pytest.skip(f"{entry} writes one file once: the first-write row is its only one")
    for at in due:
        assert_stops_at_the_write(entry, fault, at, world, tmp_path / f"write{at}")
        if first or (entry in TRAINING and at in resumed_after(writes)):  # the other commands only start again,
            again = run_again(entry, world, tmp_path / f"write{at}")       # as the first-write row shows
    if first:
        counted_writes[entry] = again


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_standard_output_closed_early_ends_as_one_line_and_the_same_command_ends_well(entry, world, tmp_path):
    if entry not in WRITING:
        pytest.skip(REFUSED_FAKE_DATA)
    folder = tmp_path / "closed"
    before = tree(world["root"]) | tree(user_folder(world, folder))
    write = closed_stdout()
    try:
        result = run(entry, WRITING[entry](world, user_folder(world, folder)), cwd=str(folder), stdout=write)
    finally:
        os.close(write)
    assert_ends_with_one_line(result, 141, ["stopped: ", "standard output was closed early"])
    after = tree(world["root"]) | tree(folder)
    assert {path: after.get(path) for path in before} == before and torn_or_left_behind(folder) == []
    run_again(entry, world, folder)  # what it had done is kept, or done again: nothing stands in the way


# where each entry point's own results file holds an accuracy that it reads back when it merges into the file
ACCURACY_IN_OUT = {"mnist.py": ["table", "A", "clean"], "ensemble.py": ["datasets", "mnist", "table", "C", "clean"],
                   "evaluate.py": ["table", "model", "clean"],
                   "tools/over_training.py": ["models", "A", "snapshots", 0, "accuracy", "clean"],
                   "tools/attack_gap.py": ["accuracy", "pgd"],
                   "tools/ablation_study.py": ["runs", "paper", "0", "scores", "clean"],
                   "tools/precision_study.py": ["runs", "float32", "0", "float32", "clean"]}
NO_ACCURACY_READ = "its results hold timings and verdicts, no accuracy that it reads back"
NOT_APPLICABLE |= {("tools/bench.py", "out with an accuracy"): NO_ACCURACY_READ,
                   ("tools/gpu_check.py", "out with an accuracy"): NO_ACCURACY_READ,
                   ("tools/first_layer.py", "out with an accuracy"): "its results hold the first layer's weights, read "
                                                                     "afresh from the checkpoint, no accuracy",
                   (FIGURES, "out with an accuracy"): "figures.py reads no --out; its results files have the row below",
                   (TABLES, "out with an accuracy"): PRINTS_ONLY}
NOT_APPLICABLE |= {(entry, "out with an accuracy"): REFUSED_FAKE_DATA for entry in MD5_DATA}
OUT_OF_RANGE = [150, float("inf"), -1]


def out_of(entry, world, user):
    """The --out of the entry point's WRITING command with its files in `user`."""
    argv = WRITING[entry](world, user)
    return argv[argv.index("--out") + 1]


def damaged(report, where, value):
    """`report` with the number at `where` (keys and indices) set to `value`."""
    report = json.loads(json.dumps(report))
    part = report
    for key in where[:-1]:
        part = part[key]
    part[where[-1]] = value
    return report


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_out_holding_an_accuracy_out_of_range_is_named_and_refused_and_kept(entry, world, tmp_path):
    if (entry, "out with an accuracy") in NOT_APPLICABLE:
        pytest.skip(NOT_APPLICABLE[(entry, "out with an accuracy")])
    run_again(entry, world, tmp_path / "whole")
    with open(out_of(entry, world, user_folder(world, tmp_path / "whole"))) as f:
        written = json.load(f)
    for value in OUT_OF_RANGE:
        folder = tmp_path / f"value{value}"
        user = user_folder(world, folder)
        damaged_out = out_of(entry, world, user)
        with open(damaged_out, "w") as f:
            json.dump(damaged(written, ACCURACY_IN_OUT[entry], value), f)
        before = tree(world["root"]) | tree(user)
        result = run_writing(entry, world, folder)
        assert_ends_with_one_line(result, 2, ["error: ", os.path.basename(damaged_out), f"{ACCURACY_IN_OUT[entry][-1]}={value}",
                                              "not an accuracy in [0, 100]"], value)
        assert tree(world["root"]) | tree(folder) == before, value  # nothing written, nothing trained


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_figures_names_a_results_file_with_an_accuracy_out_of_range_and_draws_the_others(value, world, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(os.path.join(ROOT, "results"), results)
    report = json.loads((results / "fashion_mnist.json").read_text())
    (results / "fashion_mnist.json").write_text(json.dumps(damaged(report, ["table", "A", "clean"], value)))
    result = run(FIGURES, ["--results", str(results), "--out", str(tmp_path / "figures")], cwd=str(tmp_path))
    assert_one_line(result, 2, f"accuracy.png not drawn: fashion_mnist.json: not shown: 'table.A.clean' is {value}, "
                               "not an accuracy in [0, 100]")
    assert sorted(os.listdir(tmp_path / "figures")) == sorted(set(figures_drawn()) - {"accuracy.png"})
