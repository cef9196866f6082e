"""Writing results files safely: the merge lock, atomic JSON writes, the names of resumable evaluations'
state files, folders checked writable before a run starts, and an OSError as one line of a message."""
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import pathlib
import tempfile

import core
from runner.errors import UserError, advice, failure

ATOMIC_SUFFIX = len(".tmp") + 12  # what core.atomic_write's temporary name adds to a file's: 6 random bytes in hex


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
    write_atomically(path, write)


def write_atomically(path, write):
    """core.atomic_write, whose failure (a full disk, say) is a UserError: atomic_write has kept what was there."""
    try:
        core.atomic_write(path, write)
    except OSError as err:
        raise UserError(f"{path} not written ({err.strerror or err}); what it held is kept, and so are the checkpoints: "
                        f"{advice(err)}, and run the same command again") from None


def state_path(state_dir, kind, description, tensors):
    """`state_dir`/<kind>_<16 hex digits>.json, where a resumable evaluation keeps what it has scored: named
    by a SHA-1 of `description` (JSON: settings, versions, code) and of the bytes of `tensors` (images,
    labels, weights), so that a run with another model, image or setting never reads another's file."""
    digest = hashlib.sha1(json.dumps(description).encode())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return pathlib.Path(state_dir) / f"{kind}_{digest.hexdigest()[:16]}.json"


def weights(models):
    """The tensors of `models` ({name: module}), in the order of their names: what names their state."""
    return [tensor for name in sorted(models) for tensor in models[name].state_dict().values()]


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
    problem = earlier and shape_problem(earlier)
    if problem:
        raise UserError(f"{out} is damaged ({problem}); move it away, or pass another --out")
    return earlier


SHAPES = ["settings", "eval", "table", "strong_eval", "runs", "models"]  # the objects a run's results may hold


def shape_problem(report):
    """What makes a results file's runs (the file, and each of its `runs`) of the wrong shape for a run to
    read and add to, or None: each of SHAPES it holds an object, each table's cells accuracies."""
    runs = report.get("runs")
    parts = [("", report)] + ([(f"runs.{seed}.", run) for seed, run in runs.items()] if isinstance(runs, dict) else [])
    for where, part in parts:
        if not isinstance(part, dict):
            return f"'{where[:-1]}' is not an object"
        wrong = [key for key in SHAPES if key in part and not isinstance(part[key], dict)]
        if wrong:
            return f"'{where}{wrong[0]}' is {json.dumps(part[wrong[0]])[:40]}, not an object"
        for row, cells in part.get("table", {}).items():
            value = out_of_range(cells, list(cells)) if isinstance(cells, dict) else "not a row of accuracies"
            if value:
                return f"'{where}table.{row}' holds {value}, not an accuracy in [0, 100]"
    return None


def check_results_file(out, experiment):
    """The results file `out` checked before any work: it can be written (check_out_file), and what it holds
    (if anything) is `experiment`'s own results (check_replaceable, whose parsed file it returns)."""
    check_out_file(out)
    return check_replaceable(out, experiment)


def check_out_file(out, option="--out", longer_by=0):
    """That the file `out` can be written atomically, tried before any work: not a folder, its name within
    the file system's limit with atomic_write's temporary suffix (and `longer_by` characters that a file
    named after it adds), in a folder that can be written (check_writable)."""
    if os.path.isdir(out):
        raise UserError(f"{option}: {out} is a folder; name a file, such as {os.path.join(out, 'results.json')}")
    check_writable(os.path.dirname(os.path.abspath(out)), option)
    check_name_length(out, option, ATOMIC_SUFFIX + longer_by)


def check_writable(folder, option):
    """That `folder` can be created and written to, tried now rather than at the first save: its names fit
    the file system, and its nearest existing ancestor is a folder that takes a file (a temporary one).
    Nothing is created or left behind."""
    check_name_length(folder, option)
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
                        f"({failure(err)}); {advice(err)}") from None


def check_name_length(path, option, suffix=0):
    """That each name in `path` fits its file system's limit (NAME_MAX, commonly 255 bytes), the last one
    with `suffix` more characters, as a writer will name it."""
    names = os.path.abspath(path).split(os.sep)[1:]
    limit = os.pathconf(nearest_folder(path), "PC_NAME_MAX")
    for i, name in enumerate(names):
        size = len(os.fsencode(name)) + (suffix if i == len(names) - 1 else 0)
        if size > limit:
            raise UserError(f"{option}: {path}: the name {name[:40]}... is {size} bytes with what a writer adds, over the "
                            f"file system's {limit}; choose a shorter name")


def nearest_folder(path):
    """The nearest folder of `path` that exists: itself, or one above it."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    return existing


def out_of_range(scores, names):
    """The first of `names` whose value in `scores` is no accuracy in percent (a finite number in [0, 100]),
    as `name=value`, or None: a results file merged into is checked where it enters."""
    for name in names:
        value = scores.get(name) if isinstance(scores, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value <= 100):
            return f"{name}={value}"
    return None


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
