"""A fault at a command's Nth file write, for the fault matrix (tests/test_fault_matrix.py): with this
folder first on PYTHONPATH, Python imports this module before the command's own code. FAULT_AT_WRITE
says what happens at the Nth write: "enospc:N" (the disk fills: the temporary file gets a few bytes, then
the write fails with ENOSPC), "sigint:N" (Ctrl-C arrives as the write begins: a real SIGINT, so that
a handler the command installs sees it), or "count" (nothing; each write's target is appended to
FAULT_LOG, so a test knows how many writes a run makes). A write is a call of core.atomic_write,
through which every checkpoint and results file goes, or of matplotlib's Figure.savefig, through
which notebooks/figures.py draws; both are patched as their modules are first imported, so that the
command's import order is its own."""
import errno
import importlib.abc
import importlib.util
import os
import signal
import sys

FAULT = os.environ.get("FAULT_AT_WRITE", "")
KIND, _, AT = FAULT.partition(":")
writes_seen = 0
TORN = b"half a file"  # what a write that the full disk stops leaves in its temporary file


def at_write(path):
    """Called as each write begins: counts it, and makes the fault due at this one (returns "enospc"
    where the write must fail after tearing its temporary file)."""
    global writes_seen
    writes_seen += 1
    if KIND == "count":
        with open(os.environ["FAULT_LOG"], "a") as log:
            log.write(f"{path}\n")
    elif AT and writes_seen == int(AT):
        if KIND == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        return KIND
    return None


def torn(path):
    """A disk that fills: the first bytes reach `path`, then the write fails."""
    with open(path, "wb") as f:
        f.write(TORN)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def patch_core(core):
    atomic_write = core.atomic_write

    def faulty_atomic_write(path, write):
        return atomic_write(path, torn if at_write(path) == "enospc" else write)
    core.atomic_write = faulty_atomic_write  # save_checkpoint and runner.files look it up at each call


def patch_figure(figure):
    savefig = figure.Figure.savefig

    def faulty_savefig(self, fname, *args, **kwargs):
        if at_write(fname) == "enospc":
            torn(fname)
        return savefig(self, fname, *args, **kwargs)
    figure.Figure.savefig = faulty_savefig


PATCHES = {"core": patch_core, "matplotlib.figure": patch_figure}


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands each module of PATCHES to the other finders, and patches it once loaded."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            PATCHES[name](module)
        spec.loader.exec_module = exec_and_patch
        return spec


if KIND:
    if KIND == "sigint" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # a test run in the background inherits SIGINT ignored; a user's terminal delivers it
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.meta_path.insert(0, PatchOnImport())
