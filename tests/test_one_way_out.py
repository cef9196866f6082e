"""The one way out of every entry point (runner.errors.exit_on_error) and what is checked before any
work: each failure a user can fix or did ends as one line with advice from its cause; a checkpoint
with weights that are not finite, or from another version, is named; results files read or merged
into are checked where they enter, and a tool that merges only adds."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import evaluate
import mnist
import over_training
import precision_study
import runner.errors
import runner.files
from conftest import ROOT
from test_data_checks import run_main
from test_precision_study import fake_fashion  # noqa: F401 (a fixture)

sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import figures  # noqa: E402  (notebooks/ is no package: the notebook imports it from its folder too)
from results_files import BadResult, load_result  # noqa: E402


def exit_of(error, capsys):
    """(exit status, stderr) of an entry point whose main raises `error`."""
    def main():
        raise error
    with pytest.raises(SystemExit) as stopped:
        runner.errors.exit_on_error(main)
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize("code,advice", [(errno.ENOSPC, "free some space"), (errno.ENAMETOOLONG, "choose a shorter name"),
                                         (errno.EACCES, "check its permissions"), (errno.EPERM, "not immutable"),
                                         (errno.EROFS, "read-only: choose a place on a writable one"),
                                         (errno.ENOTDIR, "a file stands where a folder should be")])
def test_a_failed_file_operation_ends_as_one_line_with_advice_from_its_cause(code, advice, capsys):
    status, err = exit_of(OSError(code, os.strerror(code), "results/x.json"), capsys)
    assert status == 2 and err.startswith(f"error: results/x.json: {os.strerror(code)}; ") and advice in err
    assert len(err.splitlines()) == 1


def test_an_os_error_of_another_cause_is_a_bug_and_keeps_its_traceback():
    def main():
        raise OSError(errno.EBADF, "Bad file descriptor")
    with pytest.raises(OSError):
        runner.errors.exit_on_error(main)


def test_ctrl_c_outside_training_says_no_checkpoint_was_in_progress(capsys):
    status, err = exit_of(KeyboardInterrupt(), capsys)
    assert status == 130 and err.strip() == "interrupted: no checkpoint in progress; run the same command to resume"
    status, err = exit_of(KeyboardInterrupt("C: stopped at iteration 5; checkpoint saved to c.pt"), capsys)
    assert err.strip().startswith("interrupted: C: stopped at iteration 5;")


def test_output_in_an_encoding_that_cannot_show_a_character_ends_as_one_line(capsys):
    """The standard streams' own codec refusing a character is the user's terminal setting: one line that
    names the character and says what to set. pytest's capture writes UTF-8, whose codec refuses a lone surrogate."""
    status, err = exit_of(UnicodeEncodeError("utf-8", "a \ud800", 2, 3, "surrogates not allowed"), capsys)
    assert status == 2 and err.splitlines() == [
        "error: the output's encoding (utf-8) cannot show '\\ud800', which this command prints; set PYTHONIOENCODING=utf-8"]


def test_an_encoding_error_of_another_codec_is_a_bug_and_keeps_its_traceback():
    def main():
        "\u2212".encode("ascii")  # not the output's codec (UTF-8 under pytest's capture): text encoded by the code itself
    with pytest.raises(UnicodeEncodeError):
        runner.errors.exit_on_error(main)


def run_on_closed_stdout(argv):
    """A command whose standard output is a pipe nobody reads any more (`| head -1` once it has its line)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, *argv], stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=os.environ | {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}, timeout=300)
    finally:
        os.close(write)


def test_output_closed_early_ends_as_one_line_and_keeps_what_was_written(tmp_path):
    """figures.py prints a line per figure: it stops at the closed pipe, the figures it wrote whole."""
    result = run_on_closed_stdout(["notebooks/figures.py", "--out", str(tmp_path)])
    assert result.returncode == 141 and result.stderr.startswith("stopped: standard output was closed early"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    written = list(tmp_path.iterdir())
    assert written and all(p.name in figures.FIGURES and p.read_bytes()[:4] == b"\x89PNG" for p in written)


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_an_out_whose_temporary_name_would_be_too_long_is_refused_before_any_work(out_dir):
    limit = os.pathconf(out_dir, "PC_NAME_MAX")
    fits = out_dir / ("x" * (limit - runner.files.ATOMIC_SUFFIX - 5) + ".json")
    runner.files.check_out_file(str(fits))
    too_long = out_dir / ("x" * (limit - 5) + ".json")  # the name itself fits; with ".tmp" and 12 hex digits it does not
    with pytest.raises(runner.errors.UserError, match="^--out: .* bytes with what a writer adds, over the file system's"):
        runner.files.check_out_file(str(too_long))
    with pytest.raises(runner.errors.UserError, match="^--ckpt-dir: .*choose a shorter name"):
        runner.files.check_writable(str(out_dir / ("y" * (limit + 1)) / "ckpt"), "--ckpt-dir")
    with pytest.raises(runner.errors.UserError, match="is a folder; name a file"):
        runner.files.check_out_file(str(out_dir))
    assert list(out_dir.iterdir()) == []


def test_a_failed_results_write_gives_advice_from_its_cause(out_dir, monkeypatch):
    out = out_dir / "r.json"
    out.write_text("{}")

    def refused(path, write):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
    monkeypatch.setattr(runner.files.core, "atomic_write", refused)
    with pytest.raises(runner.errors.UserError) as err:
        runner.files.write_json(str(out), {"experiment": "x"})
    assert "not immutable" in str(err.value) and "free some space" not in str(err.value) and out.read_text() == "{}"


def test_a_figure_that_cannot_be_written_leaves_no_partial_file(out_dir, monkeypatch):
    def full(self, path, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    import matplotlib.figure
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    (out_dir / "accuracy.png").write_bytes(b"the reader's figure")
    with pytest.raises(OSError) as err:
        figures.save(figures.plt.figure(), out_dir / "accuracy.png")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out_dir / "accuracy.png")  # not the .partial
    assert [p.name for p in out_dir.iterdir()] == ["accuracy.png"] and (out_dir / "accuracy.png").read_bytes() == b"the reader's figure"


def test_the_tools_settings_and_pairs_of_options_that_mean_nothing_are_refused_before_any_work(capsys):
    for iters in ("0", "-1"):
        with pytest.raises(runner.errors.UserError, match=f"--set iters={iters} \\(at least 1\\)"):
            bench.main(["--quick", "--gpu", "cpu", "--set", f"iters={iters}"])
    with pytest.raises(runner.errors.UserError, match="warmup=-1 \\(at least 0\\)"):
        bench.main(["--quick", "--gpu", "cpu", "--set", "warmup=-1"])
    code, err = run_main(mnist.main, ["--quick", "--gpu", "cpu", "--no-eval", "--eval-only"], capsys)
    assert code == 2 and err.strip() == "error: --no-eval trains only and --eval-only scores only: choose one"
    with pytest.raises(runner.errors.UserError, match="names no snapshot"):
        over_training.chosen([(5, "C.iter5.pt")], {"record": {}}, "C.pt", ",")


@pytest.fixture(scope="module")
def quick_A(fake_mnist, tmp_path_factory):
    """Model A of a --quick run, with a snapshot kept every 5 iterations."""
    ckpt = tmp_path_factory.mktemp("quick_A")
    mnist.main(["--quick", "--gpu", "cpu", "--models", "A", "--no-eval", "--data-dir", fake_mnist, "--ckpt-dir", str(ckpt),
                "--set", "keep_every=5"])
    return ckpt / "A.pt"


def altered(quick_A, tmp_path, change):
    ckpt = torch.load(quick_A, weights_only=True)
    change(ckpt)
    path = tmp_path / "A.pt"
    torch.save(ckpt, path)
    return str(path)


def test_a_checkpoint_whose_weights_are_not_finite_is_not_scored(quick_A, fake_mnist, tmp_path, capsys):
    def poisoned(ckpt):
        ckpt["D"][next(iter(ckpt["D"]))].view(-1)[0] = float("nan")
    code, err = run_main(evaluate.main, [altered(quick_A, tmp_path, poisoned), "--dataset", "mnist", "--gpu", "cpu",
                                         "--data-dir", fake_mnist, "--out", str(tmp_path / "e.json")], capsys)
    assert code == 2 and "holds weights that are not finite (NaN or inf, first in D." in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.json").exists()


def test_a_checkpoint_from_a_newer_version_is_named_with_the_key_it_does_not_know(quick_A, fake_mnist, tmp_path, capsys):
    def newer(ckpt):
        ckpt["fingerprint"] = json.dumps(json.loads(ckpt["fingerprint"]) | {"d_lr_warmup": 100})
    code, err = run_main(evaluate.main, [altered(quick_A, tmp_path, newer), "--dataset", "mnist", "--gpu", "cpu",
                                         "--data-dir", fake_mnist, "--out", str(tmp_path / "e.json")], capsys)
    assert code == 2 and "settings this version does not know (d_lr_warmup)" in err and "another version" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("value", [100.5, -1, float("inf"), float("nan")])
def test_a_results_file_with_an_accuracy_outside_0_to_100_is_named_and_skipped(value, tmp_path):
    data = json.loads((Path(ROOT) / "results" / "ablation_study.json").read_text())
    arm, by_seed = next(iter(data["runs"].items()))
    next(iter(by_seed.values()))["scores"]["pgd"] = value
    path = tmp_path / "ablation_study.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadResult, match=rf"'runs\.{arm}\.\d+\.scores\.pgd' is {value}, not an accuracy in \[0, 100\]"):
        load_result(path)
    result = subprocess.run([sys.executable, "notebooks/figures.py", "--results", str(tmp_path), "--out", str(tmp_path / "f")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert "ablation_study.png not drawn: ablation_study.json: not shown: 'runs." in result.stderr


def test_a_results_table_with_an_infinite_accuracy_is_refused_where_it_enters(tmp_path):
    data = json.loads((Path(ROOT) / "results" / "fashion_mnist.json").read_text())
    data["table"]["C"]["pgd"] = float("inf")
    path = tmp_path / "fashion_mnist.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadResult, match=r"'table\.C\.pgd' is inf"):
        load_result(path)


def fake_scores(D, settings, test_x, test_y, device, state_dir):
    """Scores that name the model's first weight, so that each seed's entry is its own."""
    first = next(D.parameters()).detach().flatten()[0].item() % 1
    columns = {"clean": 50 + first, "fgs": 40.0, "pgd": 30.0}
    return {"float32": columns | {"autoattack": 20.0}, "bf16": dict(columns)}


@pytest.mark.slow
def test_precision_study_run_for_another_seed_adds_it_to_the_file(fake_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_study, "score", fake_scores)  # the scoring is tested in test_precision_study.py
    out = tmp_path / "study.json"
    common = ["--quick", "--gpu", "cpu", "--data-dir", fake_fashion, "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(out),
              "--arms", "float32"]
    precision_study.main(common + ["--seeds", "0"])
    first = json.loads(out.read_text())["runs"]["float32"]["0"]
    precision_study.main(common + ["--seeds", "1"])
    report = json.loads(out.read_text())
    assert report["runs"]["float32"]["0"] == first and set(report["runs"]["float32"]) == {"0", "1"}
    assert report["seeds"] == [0, 1] and report["summary"]["float32"]["clean"]["n"] == 2
    damaged = json.loads(out.read_text())
    damaged["runs"]["float32"]["0"]["float32"]["pgd"] = 101.0
    out.write_text(json.dumps(damaged))
    with pytest.raises(runner.errors.UserError, match=r"is damaged \(float32 seed 0: pgd=101.0 is not an accuracy"):
        precision_study.main(common + ["--seeds", "2"])
    assert json.loads(out.read_text()) == damaged


@pytest.mark.parametrize("damage", [{"eval": None}, {"table": {"A": {"clean": 120.0}}}, {"runs": {"0": {"eval": []}}}])
def test_a_results_file_of_the_wrong_shape_is_named_before_training_and_kept(damage, fake_mnist, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"experiment": "mnist_quick", "settings": {"seed": 0}} | damage))
    before = out.read_bytes()
    code, err = run_main(mnist.main, ["--quick", "--gpu", "cpu", "--models", "A", "--data-dir", fake_mnist, "--ckpt-dir",
                                      str(tmp_path / "ckpt"), "--out", str(out)], capsys)
    assert code == 2 and err.startswith(f"error: {out} is damaged (") and len(err.splitlines()) == 1, err
    assert out.read_bytes() == before and not (tmp_path / "ckpt").exists()


def test_the_strong_evaluations_state_beside_a_checkpoint_on_a_read_only_file_system_is_refused_before_scoring(
        quick_A, fake_mnist, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    shutil.copy(quick_A, folder / "A.pt")
    taken = runner.files.tempfile.TemporaryFile

    def read_only_there(dir=None, **kwargs):  # the probe of a writable folder meets a read-only file system
        if os.path.samefile(dir, folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
        return taken(dir=dir, **kwargs)
    monkeypatch.setattr(runner.files.tempfile, "TemporaryFile", read_only_there)
    code, err = run_main(evaluate.main, [str(folder / "A.pt"), "--dataset", "mnist", "--gpu", "cpu", "--strong-eval",
                                         "--data-dir", fake_mnist, "--out", str(tmp_path / "e.json")], capsys)
    assert code == 2 and "the strong evaluation keeps its state there" in err and "read-only: choose a place" in err, err
    assert len(err.splitlines()) == 1 and "scoring" not in capsys.readouterr().out and not (tmp_path / "e.json").exists()


def test_the_studies_refuse_to_add_to_a_file_whose_accuracies_are_out_of_range(tmp_path):
    import ablation_study
    ablation = json.loads((Path(ROOT) / "results" / "ablation_study.json").read_text())
    next(iter(next(iter(ablation["runs"].values())).values()))["scores"]["autoattack"] = float("inf")
    out = tmp_path / "ablation.json"
    out.write_text(json.dumps(ablation))
    with pytest.raises(runner.errors.UserError, match="is damaged .* accuracy in \\[0, 100\\]"):
        ablation_study.earlier_file(str(out), ablation["experiment"])
    scored = json.loads((Path(ROOT) / "results" / "over_training.json").read_text())
    next(iter(scored["models"].values()))["snapshots"][0]["accuracy"]["pgd10"] = -3.0
    out = tmp_path / "over_training.json"
    out.write_text(json.dumps(scored))
    with pytest.raises(runner.errors.UserError, match="holds pgd10=-3.0, not an accuracy in \\[0, 100\\]"):
        over_training.earlier_scores(str(out), scored["scoring"], scored.get("protocol", "paper"))
