"""Trainings and evaluation as submitit jobs (local processes here; SLURM through stand-in commands),
requeue after preemption, and the statistics over --seeds."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

import core
import runner.jobs
import runner.reports
import runner.settings
from conftest import ROOT
from test_mnist_script import OFFLINE, assert_clean_error


def run(script, *args, env=None):
    env = (env or os.environ) | OFFLINE
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def job_ids(folder):
    return sorted(name.split("_")[0] for name in os.listdir(folder) if name.endswith("_result.pkl"))


def test_seed_statistics_match_a_hand_computation():
    tables = {0: {"A": {"clean": 90.0, "fgs": 10.0}}, 1: {"A": {"clean": 94.0, "fgs": 20.0}}, 2: {"A": {"clean": 98.0}}}
    stats = runner.reports.seed_statistics(tables)
    # clean: mean (90 + 94 + 98) / 3 = 94, std sqrt((16 + 0 + 16) / 2) = 4; fgs: mean 15, std sqrt((25 + 25) / 1)
    assert stats["A"]["clean"] == {"mean": 94.0, "std": 4.0, "n": 3}
    assert stats["A"]["fgs"]["mean"] == 15.0 and stats["A"]["fgs"]["n"] == 2
    assert stats["A"]["fgs"]["std"] == pytest.approx(7.0710678, abs=1e-6)
    assert runner.reports.seed_statistics({5: {"A": {"clean": 91.0}}})["A"]["clean"] == {"mean": 91.0, "std": None, "n": 1}


@pytest.fixture(scope="module")
def local_jobs_run(fake_mnist, tmp_path_factory):
    """mnist.py --quick, models A and A', seeds 0 and 1, as local submitit jobs on the CPU."""
    tmp = tmp_path_factory.mktemp("jobs")
    out, ckpt = str(tmp / "mnist.json"), str(tmp / "ckpt")
    result = run("mnist.py", "--gpu", "cpu", "--slurm", "cluster=local", "--quick", "--models", "A,A'", "--seeds", "0,1",
                 "--data-dir", fake_mnist, "--out", out, "--ckpt-dir", ckpt)
    assert result.returncode == 0, result.stderr
    with open(out) as f:
        return json.load(f), ckpt, result


@pytest.mark.slow
def test_local_jobs_train_in_separate_processes_then_evaluate(local_jobs_run):
    report, ckpt, result = local_jobs_run
    ids = job_ids(os.path.join(ckpt, "jobs"))
    assert len(set(ids)) == 5 and str(os.getpid()) not in ids  # 4 trainings and the evaluation, each its own process
    assert report["seed_list"] == [0, 1] and set(report["runs"]) == {"0", "1"}
    for seed, run_report in report["runs"].items():
        # the evaluation job trains nothing: had it started before the trainings ended, models would be missing
        assert run_report["seeds"] == {"A": int(seed), "A'": int(seed) + 1}
        assert all(m["iters_done"] == runner.settings.QUICK_SETTINGS["iters"] for m in run_report["models"].values())
        assert set(run_report["table"]["A"]) == {"clean", "fgs", "pgd", "fgs_A'", "pgd_A'"}
        assert os.path.exists(os.path.join(ckpt, f"seed{seed}", "A'.pt"))
    assert "results written" in result.stdout and "mean ± standard deviation" in result.stdout


@pytest.mark.slow
def test_seed_statistics_in_the_json_summarise_the_seeds_tables(local_jobs_run):
    report, _, _ = local_jobs_run
    for column, cell in report["table_stats"]["A"].items():
        values = [report["runs"][s]["table"]["A"][column] for s in ("0", "1")]
        assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(values) / 2)
        assert cell["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
        assert report["table"]["A"][column] == cell["mean"]


@pytest.mark.slow
def test_a_failed_training_stops_the_run_before_the_evaluation(fake_mnist, tmp_path):
    out = tmp_path / "mnist.json"
    result = run("mnist.py", "--gpu", "cpu", "--slurm", "cluster=local", "--quick", "--models", "A,A'", "--set", "d_lr=1e30",
                 "--data-dir", fake_mnist, "--out", str(out), "--ckpt-dir", str(tmp_path / "ckpt"))
    assert_clean_error(result, "training A seed 0 failed (A: loss became NaN", "log:")  # the UserError's own line, no class name
    assert not out.exists() and len(job_ids(tmp_path / "ckpt" / "jobs")) == 1  # neither A' (one CPU slot) nor the evaluation ran


def task_pid(job):
    """The training process of a local job (a child of submitit's controller process)."""
    pid = job._process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="needs Linux /proc")
def test_a_preempted_job_saves_requeues_and_resumes(fake_mnist, tmp_path):
    import submitit
    runner.jobs.use_repository_path()
    executor = submitit.LocalExecutor(str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=runner.jobs.LOCAL_TIMEOUT_MIN)
    ckpt = tmp_path / "ckpt" / "A.pt"
    job = executor.submit(runner.jobs.ScriptJob(os.path.join(ROOT, "mnist.py"), [
        "--gpu", "cpu", "--quick", "--iters", "300", "--set", "log_every=1", "--set", "ckpt_minutes=0", "--models", "A",
        "--no-eval", "--data-dir", fake_mnist, "--ckpt-dir", str(ckpt.parent)]))
    while not ckpt.exists():  # saved after every iteration: training has begun
        assert job.state == "RUNNING", job.stderr()
        time.sleep(0.05)
    os.kill(task_pid(job), signal.SIGUSR2)  # what SLURM sends before the time limit or at a preemption
    job.result()
    record = core.load_checkpoint(str(ckpt))["record"]
    starts = [s["from_iter"] for s in record["sessions"]]
    assert record["iters_done"] == 300 and len(starts) == 2 and 0 == starts[0] < starts[1] < 300, starts
    assert "this job is preempted" in job.stdout() and "Requeued job" in job.stdout()


@pytest.fixture
def stand_in_slurm(tmp_path):
    """sbatch and srun stand-ins: sbatch keeps each submission script and answers with a job id."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir(), kept.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(($(ls {kept} | wc -l) + 101))
cp "$1" {kept}/$n.sh
echo "Submitted batch job $n"
""")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    return os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, kept


def submitted_argv(folder, job_id):
    with open(os.path.join(folder, f"{job_id}_submitted.pkl"), "rb") as f:
        return pickle.load(f).function.argv


def test_slurm_gets_one_gpu_job_per_model_then_an_evaluation_after_them(stand_in_slurm, tmp_path):
    env, kept = stand_in_slurm
    ckpt = str(tmp_path / "ckpt")
    result = run("cifar10.py", "--slurm", "partition=gpu,time=240,mem=20G", "--quick", "--models", "A,C", "--ckpt-dir", ckpt,
                 env=env)
    assert result.returncode == 0, result.stderr
    scripts = {int(name[:-3]): (kept / name).read_text() for name in os.listdir(kept)}
    assert sorted(scripts) == [101, 102, 103]
    for text in scripts.values():
        assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=240" in text and "#SBATCH --gpus-per-node=1" in text
        assert "#SBATCH --mem=20G" in text and "#SBATCH --signal=USR2@" in text  # submitit's warning before the limit
    assert "--dependency" not in scripts[101] + scripts[102] and "#SBATCH --dependency=afterok:101:102" in scripts[103]
    jobs = os.path.join(ckpt, "jobs")
    assert submitted_argv(jobs, 101) == ["--quick", "--ckpt-dir", ckpt, "--gpu", "0", "--models", "A", "--no-eval"]
    assert submitted_argv(jobs, 103) == ["--quick", "--ckpt-dir", ckpt, "--gpu", "0", "--eval-only"]


def test_ensemble_is_submitted_as_one_job(stand_in_slurm, tmp_path):
    env, kept = stand_in_slurm
    result = run("ensemble.py", "--slurm", "", "--quick", "--datasets", "mnist", "--ckpt-dir", str(tmp_path / "c"), env=env)
    assert result.returncode == 0, result.stderr
    assert os.listdir(kept) == ["101.sh"] and "#SBATCH --gpus-per-node=1" in (kept / "101.sh").read_text()
    assert submitted_argv(tmp_path / "c" / "jobs", 101) == ["--quick", "--datasets", "mnist", "--ckpt-dir",
                                                            str(tmp_path / "c"), "--gpu", "0"]


def test_slurm_without_slurm_is_a_one_line_error(tmp_path):
    env = os.environ | {"PATH": os.path.dirname(sys.executable)}
    result = run("mnist.py", "--slurm", "partition=gpu", "--quick", "--ckpt-dir", str(tmp_path), env=env)
    assert_clean_error(result, "--slurm", "sbatch")


def test_bad_slurm_key_is_a_one_line_error(tmp_path):
    assert_clean_error(run("mnist.py", "--slurm", "partitoin=gpu", "--ckpt-dir", str(tmp_path)), "partitoin", "partition")
