"""Writing results files safely: the merge lock, atomic JSON writes, folders checked writable before a
run starts, and an OSError as one line of a message."""
import contextlib
import errno
import fcntl
import json
import os
import tempfile

import core
from runner.errors import UserError, failure


@contextlib.contextmanager
def merge_lock(path):
    """An exclusive lock on `<path>.lock`, waited for, around reading a results file and writing it back
    with entries added: processes that merge into one file at once keep each other's entries."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_json(path, data):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    try:
        core.atomic_write(path, write)
    except OSError as err:  # a full disk, say: atomic_write has kept what was there
        raise UserError(f"{path} not written ({err.strerror or err}); what it held is kept, and so are the checkpoints: "
                        "free some space and run the same command again") from None


def check_replaceable(out, experiment):
    """That a results file a run would write over is one of `experiment`'s own (or absent), found before any
    work: another experiment's results or a user's own file at `out` is a UserError, never overwritten.
    Returns the parsed file, or None where there is none."""
    earlier = read_results(out)
    found = earlier.get("experiment") if isinstance(earlier, dict) else None
    if earlier is not None and found != experiment:
        held = f"results of {found}" if isinstance(found, str) else "no experiment's results"
        raise UserError(f"{out} is not a results file of {experiment} (it holds {held}); move it away, or pass "
                        "another --out")
    return earlier


def check_results_file(out, experiment):
    """The results file `out` checked before any work: its folder can be written, and what it holds (if
    anything) is `experiment`'s own results (check_replaceable, whose parsed file it returns)."""
    check_writable(os.path.dirname(os.path.abspath(out)), "--out")
    return check_replaceable(out, experiment)


def check_writable(folder, option):
    """That `folder` can be created and written to, tried now rather than at the first save: its nearest
    existing ancestor is a folder that takes a file (a temporary one). Nothing is created or left behind."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), existing)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{option}: {folder} cannot be {'written to' if os.path.isdir(folder) else 'created'} "
                        f"({failure(err)}); choose a folder you can write to") from None


def read_results(out):
    """The parsed JSON of a results file that a run merges into, or None where there is none yet; a file
    that does not read as JSON is a UserError (merged into, it would be replaced by less)."""
    if not os.path.exists(out):
        return None
    try:
        with open(out) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{out} is not readable JSON ({failure(err)}); move it away, or pass another --out") from None
