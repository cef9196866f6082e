"""Where a run's work goes: this process's devices (--gpu), or jobs through submitit, on a SLURM
cluster (--slurm) or one process per GPU here (--gpu 0,1,...). A job runs a script's main() on a
command line (ScriptJob), so it resumes from the checkpoints when it is requeued; the training loop's
side of a requeue (saving at the preemption signal) is runner.progress.StopFlag. runner.running.run_experiment
launches a data-set script's jobs, ensemble.py and generators_study.py themselves as one job
(launch_script). This module imports only runner/errors.py of this repository."""
import importlib
import os
import shutil
import time

import submitit
import torch

from runner.errors import UserError, kind_name


def parse_gpus(gpu):
    """`--gpu` text -> list of devices: None (GPU 0 if any, else CPU), "cpu", "N" or "N,M,..."."""
    if gpu is None:
        return [torch.device("cuda:0" if torch.cuda.is_available() else "cpu")]
    if str(gpu).lower() == "cpu":
        return [torch.device("cpu")]
    indices = str(gpu).split(",")
    if not all(i.strip().isdigit() for i in indices):
        raise UserError(f"--gpu {gpu}: give GPU indices such as 0 or 0,1,2,3, or cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        raise UserError(f"--gpu {gpu}: torch sees no CUDA device on this machine; run on the CPU with --gpu cpu "
                        "(or leave --gpu out)")
    absent = [i for i in indices if int(i) >= count]
    if absent:
        raise UserError(f"--gpu {gpu}: this machine has {count} CUDA device{'s' if count > 1 else ''}, "
                        f"{'0' if count == 1 else f'0 to {count - 1}'}; no device {', '.join(absent)}")
    return [torch.device(f"cuda:{int(i)}") for i in indices]


SLURM_KEYS = {  # --slurm key -> (submitit.SlurmExecutor parameter, type); each job also gets one GPU
    "partition": ("partition", str),             # SLURM partition
    "time": ("time", int),                       # minutes per job allocation; at the limit it is requeued and resumes
    "mem": ("mem", str),                         # host memory per job, SLURM's syntax (32G)
    "cpus": ("cpus_per_task", int),              # CPU cores per job
    "account": ("account", str),
    "qos": ("qos", str),
    "constraint": ("constraint", str),           # node features, e.g. a GPU type
    "requeues": ("max_num_timeout", int),        # how often a job may reach its time limit and be requeued
}
SLURM_DEFAULTS = dict(time=240, mem="32G", cpus_per_task=4, max_num_timeout=30)
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit; submitit's default is 2 minutes
LAUNCH_OPTIONS = ["--gpu", "--slurm", "--models", "--seeds", "--no-eval", "--eval-only"]


class ScriptJob(submitit.helpers.Checkpointable):
    """One job: a script's main() on a command line. Requeued after its time limit or a preemption, it
    runs the same command again, which resumes from the checkpoints (checkpoint() of Checkpointable)."""

    def __init__(self, script, argv):
        self.script, self.argv = script, list(argv)

    def __call__(self):
        # the jobs find this repository on their PYTHONPATH (use_repository_path)
        module = importlib.import_module(os.path.splitext(os.path.basename(self.script))[0])
        return module.main(self.argv)

    def __str__(self):
        return " ".join([os.path.basename(self.script)] + self.argv)


def parse_slurm(text):
    """--slurm's comma-separated key=value pairs -> ("slurm" or "local", {SlurmExecutor parameter: value})."""
    cluster, params = "slurm", dict(SLURM_DEFAULTS)
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if key == "cluster" and value in ("slurm", "local"):
            cluster = value
        elif not sep or key not in SLURM_KEYS:
            raise UserError(f"--slurm {pair}: write key=value with a key from {', '.join(SLURM_KEYS)}, or cluster=local")
        else:
            parameter, kind = SLURM_KEYS[key]
            try:
                params[parameter] = kind(value)
            except ValueError:
                raise UserError(f"--slurm {pair}: {key} takes {kind_name(kind)}") from None
    return cluster, params


def job_argv(argv, add):
    """The user's command line without the options that launch jobs or pick what each job does
    (LAUNCH_OPTIONS, with their values), then `add`."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in LAUNCH_OPTIONS:
            if i < len(argv) and not argv[i].startswith("-") and arg not in ("--no-eval", "--eval-only"):
                i += 1  # its value
        elif arg.split("=")[0] not in LAUNCH_OPTIONS:
            kept.append(arg)
    return kept + add


def use_repository_path():
    """Jobs unpickle ScriptJob and import the scripts by name: the repository's root goes on their PYTHONPATH
    (local jobs and sbatch inherit this process's environment)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here] + [p for p in paths if p])


def jobs_on_cpu(args):
    """Whether the jobs are to run on the CPU: only where --gpu says cpu, since a SLURM login node
    without a GPU submits jobs that will have one."""
    return str(args.gpu).lower() == "cpu"


def job_gpu(args):
    """A job's --gpu: a job sees only its own GPU, as device 0."""
    return ["--gpu", "cpu" if jobs_on_cpu(args) else "0"]


def launch_experiment(args, seeds, chosen, ckpt_dir):
    """--slurm, or --gpu 0,1,...: one training job per model and seed (each on one GPU, resumable), then
    an evaluation job, which starts once every training has finished and writes the results JSON."""
    multi = args.seeds is not None
    trainings = [(f"{m} seed {s}", ScriptJob(args.script, job_argv(args.argv, job_gpu(args) + ["--models", m, "--no-eval"]
                                                                    + (["--seeds", str(s)] if multi else []))))
                 for s in seeds for m in chosen]
    evaluation = None if args.no_eval else ScriptJob(args.script, job_argv(args.argv, job_gpu(args) + ["--eval-only"]
                                                                             + (["--seeds", args.seeds] if multi else [])))
    return run_jobs(args, os.path.join(ckpt_dir, "jobs"), trainings, evaluation)


def launch_script(args, ckpt_root):
    """--slurm for a script that runs as one job (ensemble.py, generators_study.py)."""
    job = ScriptJob(args.script, job_argv(args.argv, job_gpu(args)))
    return run_jobs(args, os.path.join(ckpt_root, "jobs"), [], job)


def run_jobs(args, folder, trainings, evaluation):
    """The jobs on SLURM (submitted; this command returns) or on this machine (waited for); their logs
    and submitit's files go to `folder`, which all of them must see."""
    cluster, params = parse_slurm(args.slurm) if args.slurm is not None else ("local", {})
    use_repository_path()
    if cluster == "local":
        devices = parse_gpus(args.gpu)
        return run_local(folder, [d.index for d in devices] if devices[0].type == "cuda" else [None], trainings, evaluation)
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("--slurm: no SLURM on this machine (sbatch is not on PATH); run it on the cluster's login "
                        "node, or use --gpu 0,1,... to run the jobs here")
    return submit_slurm(folder, params, 0 if jobs_on_cpu(args) else 1, trainings, evaluation)


def submit_slurm(folder, params, gpus, trainings, evaluation):
    """Submits the trainings, then the evaluation with a dependency: SLURM starts it once all of them
    have ended well (a requeued training keeps its job id, so the evaluation waits for it too)."""
    executor = submitit.SlurmExecutor(folder, max_num_timeout=params.pop("max_num_timeout"))
    executor.update_parameters(**params, gpus_per_node=gpus)
    jobs = []
    for label, job in trainings:
        executor.update_parameters(job_name=f"train {label}")
        jobs.append(executor.submit(job))
        print(f"submitted training {label}: SLURM job {jobs[-1].job_id}")
    if evaluation is not None:
        executor.update_parameters(job_name="evaluate", additional_parameters={"dependency": "afterok:" + ":".join(
            j.job_id for j in jobs)} if jobs else {})
        jobs.append(executor.submit(evaluation))
        print(f"submitted {evaluation}: SLURM job {jobs[-1].job_id}" + (", after the trainings" if trainings else ""))
    print(f"logs in {folder}/; squeue --me to follow; the same command again resubmits what is unfinished")
    return [j.job_id for j in jobs]


def run_local(folder, gpus, trainings, evaluation):
    """Runs the jobs as processes on this machine, at most one per GPU at a time (each sees only its own:
    CUDA_VISIBLE_DEVICES), then the evaluation job once every training has succeeded. `gpus`: [None]
    for the CPU. Prints the evaluation job's output; returns its result."""
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    pending, running, failed = list(trainings), {}, []
    while running or (pending and not failed):  # after a failure, the running jobs end and nothing new starts
        for gpu in gpus:
            if gpu not in running and pending and not failed:
                label, job = pending.pop(0)
                running[gpu] = label, submit_local(executor, gpu, job)
                print(f"training {label}: local job {running[gpu][1].job_id}" + ("" if gpu is None else f" on GPU {gpu}")
                      + f", log {running[gpu][1].paths.stderr}", flush=True)
        time.sleep(0.5)
        for gpu, (label, job) in list(running.items()):
            if job.done():
                del running[gpu]
                failed += job_failure(f"training {label}", job)
    if failed:
        raise UserError("; ".join(failed) + "; rerun the same command to resume")
    if evaluation is None:
        return None
    job = submit_local(executor, gpus[0], evaluation)
    print(f"evaluation: local job {job.job_id}, log {job.paths.stderr}", flush=True)
    job.wait()
    failed = job_failure(str(evaluation), job)
    if failed:
        raise UserError(failed[0])
    print("".join(line for line in job.stdout().splitlines(keepends=True) if not line.startswith("submitit ")), end="")
    return job.result()


def submit_local(executor, gpu, job):
    executor.update_parameters(gpus_per_node=0 if gpu is None else 1, visible_gpus=() if gpu is None else [physical_gpu(gpu)])
    return executor.submit(job)


def physical_gpu(index):
    """The GPU that this process calls cuda:index, as CUDA_VISIBLE_DEVICES must name it for a child process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    ids = [v.strip() for v in visible.split(",")]
    if not ids[index].isdigit():
        raise UserError(f"CUDA_VISIBLE_DEVICES={visible} names GPUs by UUID; give their indices to run local jobs")
    return int(ids[index])


def job_failure(what, job):
    """[] for a job that succeeded, else one line: its error (a UserError's own line) and its log."""
    try:
        job.result()
        return []
    except submitit.core.utils.FailedJobError as err:  # its message: a header, the traceback and the logs, between rules
        parts = str(err).split("-" * 22)
        traceback = (parts[1] if len(parts) > 2 else str(err)).strip().splitlines()
        user_error = f"{UserError.__module__}.{UserError.__name__}: "  # the class as the job's traceback names it
        cause = traceback[-1].removeprefix(user_error) if traceback else "see its log"
    except submitit.core.utils.UncompletedJobError:
        cause = "stopped without a result"
    return [f"{what} failed ({cause}); log: {job.paths.stderr}"]
