"""The command lines the experiment scripts and the arm-and-seed studies share, and the device of a single-process run."""
import argparse
import os
import sys

import core
from runner import jobs
from runner.errors import UserError
from runner.settings import METHODS, PROTOCOLS, SETTING_RANGES, in_range


def experiment_parser(description, models=True):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # job_argv rewrites options by their full names
    p.add_argument("--gpu", default=None, help="CUDA device index, a list such as 0,1,2,3 (one training job "
                   "per model, one GPU each), or cpu (default: GPU 0 if present, else cpu)")
    p.add_argument("--slurm", nargs="?", const="", default=None, metavar="KEY=VALUE,...",
                   help=f"submit the run to SLURM through submitit, one GPU per job; keys: {', '.join(jobs.SLURM_KEYS)}, "
                   "and cluster=local to run the same jobs as processes on this machine")
    p.add_argument("--data-dir", default="data", help="where torchvision finds or downloads the data set")
    p.add_argument("--out", default=None, help="results JSON (default: results/<experiment>.json)")
    p.add_argument("--ckpt-dir", default=None, help="checkpoints (default: checkpoints/<experiment>)")
    p.add_argument("--seed", type=int, default=None, help="seed s of A, B, C; A', B', C' use s+1")
    if models:
        p.add_argument("--models", default="A,B,C,A',B',C'", help="subset to train, e.g. A,C'")
    p.add_argument("--iters", type=int, default=None, help="iterations per model; the schedule scales with it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny schedule and test subset: a smoke test")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="paper: the settings of the paper's text "
                   "(default); authors: those of the authors' code, which made the paper's tables (README: Two protocols)")
    p.add_argument("--eval-n", type=int, default=None, help="score only the first N test images (setting test_n)")
    p.add_argument("--bn-eval", choices=core.BN_MODES, default=None, help="batch norm when scoring: running statistics "
                   "(eval mode, default) or batch statistics (the authors' protocol); C is reported both ways")
    p.add_argument("--strong-eval", action="store_true", help="also run the strong evaluation: PGD-100x5, PGD-CW, "
                   "AutoAttack, C's generator, the per-example worst case and gradient-masking checks")
    if models:
        p.add_argument("--seeds", default=None, help="repeat the run once per seed, e.g. 0,1,2 (the copies use s+1); "
                       "the JSON keeps each seed's table and the mean, standard deviation and n of every cell")
        p.add_argument("--no-eval", action="store_true", help="train only (e.g. to spread models over machines)")
        p.add_argument("--eval-only", action="store_true", help="train nothing: evaluate the finished checkpoints")
    return p


def parse_cli(parser, argv, script):
    """parse_args, remembering the command so that --gpu 0,1,... can start one process per GPU; a pair of
    options that would do nothing together is refused here, for every command that has them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "no_eval", False) and getattr(args, "eval_only", False):
        raise UserError("--no-eval trains only and --eval-only scores only: choose one")
    args.argv, args.script = argv, os.path.abspath(script)
    return args


def study_parser(description, arms, seeds):
    """The command line of a study that trains model C in several arms with several seeds and scores them
    (tools/precision_study.py, tools/ablation_study.py): the experiments' options but --models, which
    arms and seeds, and training or scoring only."""
    parser = experiment_parser(description, models=False)
    parser.add_argument("--arms", default=",".join(arms), help=f"arms to train and score, of {', '.join(arms)}")
    seed_list = ",".join(map(str, seeds))
    parser.add_argument("--seeds", default=seed_list, help=f"seeds of model C, e.g. {seed_list}")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--eval-only", action="store_true", help="train nothing: score the finished checkpoints")
    return parser


def parse_arms(text, arms):
    """--arms: a comma-separated list of some of `arms`."""
    chosen = [a for a in text.split(",") if a]
    if not chosen or any(a not in arms for a in chosen):
        raise UserError(f"--arms {text}: choose from {', '.join(arms)}")
    return chosen


def parse_models(text):
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m.rstrip("'") not in METHODS or m.count("'") > 1]
    if bad or not names:
        raise UserError(f"--models {text}: choose from A, B, C, A', B', C'")
    return names


def parse_seeds(text):
    """--seeds text -> list of distinct seeds, or None where the option is absent."""
    if text is None:
        return None
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or not all(in_range(s, SETTING_RANGES["seed"]) for s in seeds):
        raise UserError(f"--seeds {text}: give distinct integers in {SETTING_RANGES['seed']} such as 0,1,2")
    return seeds


def pick_device(gpu=None):
    """The one device of a single-process run (the first one listed)."""
    return jobs.parse_gpus(gpu)[0]
