"""Provenance: what made a result (the code's commit, the packages, the device, the command)."""
import importlib.metadata
import os
import platform
import subprocess

import numpy as np
import torch

import core


def device_name(device):
    """The GPU's name, or the CPU's architecture, the vector instructions torch's kernels use there
    (AVX2, AVX512, ...) and torch's thread count: a float32 run rounds otherwise, and so trains another
    model, on a CPU with other kernels or split over another number of threads (docs/mnist.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return (f"cpu ({platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{threads} thread{'s' if threads > 1 else ''})")


def read_git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, None


GIT_AT_START = read_git_commit()  # the code this process runs, though the checkout may move on during a long run


def command_line(args):
    """The command that produced a result, as the user typed it (from parse_cli's args)."""
    return " ".join([os.path.basename(args.script)] + args.argv)


def provenance(device, command, precision="auto"):
    commit, dirty = GIT_AT_START
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "cuda": torch.version.cuda}
    for package in ("torchvision", "pyautoattack"):  # used by the scripts and autoattack_suite; this file imports neither
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"versions": versions, "device": device_name(device), "precision": core.precision_name(device, precision),
            "git_commit": commit, "git_dirty": dirty,
            "command": command, "host": platform.node()}
