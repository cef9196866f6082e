"""Evaluating the trained models: the paper's table in float32, and the strong evaluation (AutoAttack's
cascade)."""
import hashlib
import json
import math
import pathlib
import sys
import time
from typing import NamedTuple

import torch

import core
from runner import reports
from runner.errors import UserError, failure
from runner.files import merge_lock, out_of_range, state_path, weights, write_json
from runner.progress import Progress
from runner.provenance import device_name


SCORING_PRECISION = "float32 (no core.autocast, no TF32)"  # every score, whatever `precision` trained in


def split_models(models):
    """(targets, surrogates): the models scored, and the seed copies (A', B', C') that attack them."""
    return {k: m for k, m in models.items() if "'" not in k}, {k: m for k, m in models.items() if "'" in k}


def evaluate_trained(models, settings, test_x, test_y, device, state_dir=None):
    """The paper's 9-column table of the models (copies as surrogates), with BN as `bn_eval` says; model C,
    if present, is also scored white-box under both BN modes (`bn_comparison`). In IEEE float32, whatever
    `precision` trained in: crafted under bf16, a cell moved by up to 0.6 points (precision_study.py).
    With `state_dir`, the finished table is kept there in a state file named as the strong evaluation's
    (table_state_file), and a later run of the same evaluation reads it instead of scoring again: its
    `eval` then says `read_from` (the file, and when and on what device it was scored). Returns (table, eval)."""
    n = min(settings["test_n"] or len(test_x), len(test_x))  # what is scored, not what was asked
    targets, surrogates = split_models(models)
    if not targets:
        return {}, {"n_test": 0, "seconds": 0.0, "note": "no finished target model (A, B or C)"}
    columns = WHITE_BOX + [f"{a}_{s}" for s in surrogates for a in ("fgs", "pgd")]
    path = state_dir and table_state_file(state_dir, models, settings, test_x[:n], test_y[:n], device)
    expected = {"n_test": n, "columns": columns, "bn": settings["bn_eval"], "precision": SCORING_PRECISION}
    kept = path and read_kept_table(path, targets, expected)
    if kept:
        print(f"the table: read from {path}, where a run of this evaluation kept it on {kept['scored_at']}", file=sys.stderr)
        return kept["table"], kept["eval"] | {"read_from": {"file": path.name} | {k: kept[k] for k in ("scored_at", "device")}}
    table, scored = score_table(targets, surrogates, settings, test_x[:n], test_y[:n], device)
    evaluation = expected | scored
    if path:
        write_json(path, {"table": table, "eval": evaluation, "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "device": device_name(core.as_device(device))})
    return table, evaluation


def score_table(targets, surrogates, settings, images, labels, device):
    """evaluate_trained's scoring: (table, the eval entry's bn_comparison, where C is scored, and seconds)."""
    t0 = time.time()

    def score(chosen, against, bn, progress=None):
        with core.full_precision(device):
            return core.evaluate_table(chosen, against, images, labels, settings["eps"], device, settings["eval_batch"],
                                       settings["pgd_steps"], settings["pgd_alpha"] or None, progress, bn, "float32")

    torch.manual_seed(settings["seed"])  # PGD's random start: the same numbers for the same run
    table = score(targets, surrogates, settings["bn_eval"], Progress(len(images), "evaluate", "img"))
    evaluation = {}
    if "C" in targets:  # the table already holds C's white-box row in the chosen mode: only the other is scored
        white_box = {k: table["C"][k] for k in WHITE_BOX}
        evaluation["bn_comparison"] = {"C": {bn: white_box if bn == settings["bn_eval"] else score({"C": targets["C"]}, {}, bn)["C"]
                                             for bn in core.BN_MODES}}
    return table, evaluation | {"seconds": round(time.time() - t0, 1)}


TABLE_KEYS = ("eps", "seed", "bn_eval", "eval_batch", "pgd_steps", "pgd_alpha")  # the settings that set the table's numbers


def table_state_file(state_dir, models, settings, images, labels, device):
    """Where a finished table is kept: named by the models' weights (copies too), the images, the settings
    that set its numbers, the scoring code (ATTACKING_CODE), torch's version and the kind of device."""
    description = [sorted(models), ATTACKING_CODE, torch.__version__, core.as_device(device).type] + [
        settings[k] for k in TABLE_KEYS]
    return state_path(state_dir, "table", description, [images, labels] + weights(models))


def read_kept_table(path, targets, expected):
    """The table kept at `path` ({"table", "eval", "scored_at", "device"}), checked to be these targets'
    with the `expected` eval entry; None where there is none (read_state_file)."""
    return read_state_file(path, lambda kept: kept_table_problem(kept, targets, expected), "the table's state file",
                           "score the table again")


def read_state_file(path, problem_of, what, redone):
    """A resumable evaluation's state file, parsed; None where there is none, and an error naming the file
    where `problem_of` finds it is not this evaluation's (it is never overwritten unread)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        problem = failure(err)
    else:
        problem = problem_of(state)
    if problem:
        raise UserError(f"{what} {path} cannot be read ({problem}); move it away to {redone}")
    return state


WHITE_BOX = ["clean", "fgs", "pgd"]


def kept_table_problem(kept, targets, expected):
    """What makes a kept table other than this evaluation's, or None."""
    if not isinstance(kept, dict) or set(kept) != {"table", "eval", "scored_at", "device"} or not all(
            isinstance(kept[k], dict) for k in ("table", "eval")) or not all(isinstance(kept[k], str) for k in ("scored_at", "device")):
        return "not a table with its eval entry, when it was scored and on what device"
    return rows_problem(kept["table"], targets, expected["columns"]) or eval_problem(kept["eval"], kept["table"], expected)


def rows_problem(table, targets, columns):
    """What makes `table` other than the targets' accuracies in `columns`, or None."""
    if set(table) != set(targets):
        return f"rows {', '.join(sorted(table))}, not {', '.join(sorted(targets))}"
    for row, cells in table.items():
        missing = set(columns) ^ set(cells) if isinstance(cells, dict) else columns
        problem = f"columns {', '.join(sorted(missing))}" if missing else out_of_range(cells, columns)
        if problem:
            return f"row {row}: {problem}, where each of {', '.join(columns)} is an accuracy in [0, 100]"
    return None


def eval_problem(evaluation, table, expected):
    """What makes a kept eval entry other than `expected` with its seconds (and, where C is scored, C's
    bn_comparison, whose row in the table's mode is the table's), or None."""
    comparison = {"bn_comparison"} if "C" in table else set()
    if set(evaluation) != set(expected) | {"seconds"} | comparison or any(evaluation[k] != v for k, v in expected.items()):
        return f"its eval entry is not {json.dumps(expected)} with the seconds" + (" and C's bn_comparison" if comparison else "")
    seconds = evaluation["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds) and seconds >= 0):
        return f"seconds={seconds}"
    return bn_comparison_problem(evaluation["bn_comparison"], table, expected["bn"]) if comparison else None


def bn_comparison_problem(comparison, table, bn):
    """What makes `comparison` other than C's white-box row under each batch-norm mode, the one in `bn`
    being the table's, or None."""
    rows = comparison.get("C") if isinstance(comparison, dict) else None
    if (not isinstance(rows, dict) or set(rows) != set(core.BN_MODES)
            or any(not isinstance(r, dict) or rows_problem({"C": r}, {"C"}, WHITE_BOX) for r in rows.values())
            or rows[bn] != {k: table["C"][k] for k in WHITE_BOX}):
        return f"bn_comparison: not C's {', '.join(WHITE_BOX)} under {' and '.join(core.BN_MODES)}, as the table has them"
    return None


def strong_eval_report(models, generator, settings, test_x, test_y, device, autoattack, state_dir):
    """--strong-eval: core.strong_evaluation of the target models (the seed copies attack by transfer;
    `generator`, C's G, attacks every model) with masking checks, as the results JSON's entry.
    `autoattack` (the module autoattack_suite, which needs a package beyond torch) adds AutoAttack's four
    attacks, each alone, and its standard cascade (`autoattack`, or None for none). The other attacks and the
    cascade each resume from their state files in `state_dir` (resumable_strong_evaluation, autoattack_cascade)."""
    n = strong_images(settings, len(test_x))
    targets, surrogates = split_models(models)
    if not targets:
        return {"n_test": 0, "models": {}, "note": "no finished target model to evaluate"}
    eps = settings["eps"]
    attacks = core.strong_attacks(eps, settings["strong_steps"], settings["strong_restarts"])
    attacks |= autoattack.attacks(settings) if autoattack else {}
    if generator is not None:
        attacks["generator_C"] = lambda m, x, y: core.generator_attack(generator, x, y, eps)
    t0 = time.time()
    with core.scoring_mode([generator] if generator is not None else []):  # G as trained, in eval mode
        results, resumed, chunk_seconds = resumable_strong_evaluation(
            targets, surrogates, generator, attacks, test_x[:n], test_y[:n], settings, device, state_dir,
            strong_eval_code(device, autoattack))
    report = {"n_test": n, "bn": settings["bn_eval"], "attacks": list(attacks), "surrogates": list(surrogates),
              "precision": SCORING_PRECISION, "resumed_images": resumed, "chunk_seconds": chunk_seconds,
              "models": {m: {"accuracy": r, "checks": core.masking_checks(r)} for m, r in results.items()}}
    if autoattack:
        report["autoattack"] = autoattack_version(settings)
        for name, model in targets.items():
            print(f"AutoAttack's cascade on {name} ({n} images)", file=sys.stderr)
            accuracy, warnings = autoattack_cascade(autoattack, model, test_x[:n], test_y[:n], settings, device, state_dir)
            report["models"][name]["accuracy"]["autoattack"] = accuracy
            report["models"][name]["autoattack_warnings"] = warnings
    report["seconds"] = round(time.time() - t0, 1)
    print(reports.format_strong(report))
    return report


def strong_images(settings, available):
    """How many of the first test images the strong evaluation and AutoAttack's cascade score: strong_n,
    within test_n and the `available` images (0 means every one)."""
    return min(settings["strong_n"] or available, settings["test_n"] or available, available)


EXACT_CHUNK = 5000  # a chunk's percentages, rounded to 0.01, give back its counts exactly below 10,000 images


def strong_chunk(settings):
    """Images per chunk of the strong evaluation: `eval_batch`, which under bn_eval=batch is also the batch
    whose statistics each image is scored with, so that it cannot change without changing the numbers."""
    if settings["eval_batch"] <= EXACT_CHUNK:
        return settings["eval_batch"]
    if settings["bn_eval"] == "batch":
        raise UserError(f"--strong-eval scores with batch statistics (bn_eval=batch) in batches of eval_batch = "
                        f"{settings['eval_batch']} images, and keeps each batch's counts for a resumed run, which it "
                        f"can do for at most {EXACT_CHUNK}: set eval_batch to {EXACT_CHUNK} or fewer")
    return EXACT_CHUNK


def resumable_strong_evaluation(targets, surrogates, generator, attacks, images, labels, settings, device, state_dir,
                                code):
    """core.strong_evaluation chunk by chunk (strong_chunk), each chunk's counts added to a state file in
    `state_dir` as it ends, so that a run cut short (hours on a CPU) resumes at the chunk it was in, with
    the numbers an uninterrupted run gives: each chunk seeds its random starts by its position. `code`:
    what else sets the numbers (strong_eval_code). Returns (percent per model and key, the images this
    run did not score itself, seconds of all the chunks, in whichever runs scored them)."""
    n, chunk = len(images), strong_chunk(settings)
    sizes = {str(start): min(chunk, n - start) for start in range(0, n, chunk)}
    path = strong_state_file(state_dir, targets | surrogates | ({"G": generator} if generator is not None else {}),
                             settings, attacks, images, labels, code)
    expected = Expected(sizes, set(targets), {"clean", "robust"} | set(attacks) | {f"transfer_{s}" for s in surrogates})
    state = read_strong_state(path, expected)
    already = sum(done["n"] for done in state.values())
    said_resumed(path, already, n)
    progress = Progress(n, "strong evaluation", "img", start=already)
    scored_here = 0
    for start, size in sizes.items():
        if start not in state:
            scored_here += size
            t0, first = time.time(), int(start)
            torch.manual_seed(settings["seed"] + first)
            part = core.strong_evaluation(targets, images[first:first + size], labels[first:first + size], settings["eps"],
                                          device, attacks, surrogates, settings["bn_eval"], size,
                                          sweep_steps=settings["strong_steps"], progress=Shifted(progress, first))
            state = add_chunk(path, start, {"n": size, "seconds": round(time.time() - t0, 1), "counts": {
                m: {k: round(p * size / 100) for k, p in r.items()} for m, r in part.items()}}, expected)
    return percentages(state, targets, n), n - scored_here, round(sum(done["seconds"] for done in state.values()), 1)


def percentages(state, targets, n):
    """Percent per target and key over the `n` images of a finished state's chunks."""
    totals = {m: {} for m in targets}
    for done in state.values():
        for model, counts in done["counts"].items():
            for key, count in counts.items():
                totals[model][key] = totals[model].get(key, 0) + count
    return {m: {k: round(100.0 * c / n, 2) for k, c in counts.items()} for m, counts in totals.items()}


def said_resumed(path, resumed, n):
    """The line that says where a strong evaluation starts: from the images its state file holds, or
    afresh beside other evaluations' state files (whose models, settings or code differed)."""
    if resumed:
        print(f"strong evaluation: {resumed} of {n} images already scored, in {path}", file=sys.stderr)
        return
    others = sorted(p.name for p in path.parent.glob("strong_*.json") if p != path)
    if others:
        print(f"strong evaluation: scored afresh into {path.name}; {', '.join(others)} beside it hold evaluations of "
              "other models, images, settings or code (core.py, runner/evaluation.py, runner/autoattack_suite.py)",
              file=sys.stderr)


class Shifted:
    """A Progress seen from inside one chunk: its counts start at the chunk's first image."""

    def __init__(self, progress, offset):
        self.progress, self.offset = progress, offset

    def update(self, done, extra=None):
        self.progress.update(self.offset + done, extra)


def source_digest(paths):
    digest = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


# read as the process starts: a checkout pulled during hours of training must not name the old code's chunks
ATTACKING_CODE = source_digest([core.__file__, __file__, pathlib.Path(__file__).with_name("autoattack_suite.py")])


def strong_eval_code(device, autoattack):
    """What sets a strong evaluation's numbers beyond its models, images and settings: the code that
    attacks (core.py, this module, AutoAttack's glue, by their source as this process loaded it), the
    versions of torch and of AutoAttack, and the kind of device, so that no resumed run mixes chunks that
    these made otherwise."""
    return [ATTACKING_CODE, torch.__version__, core.as_device(device).type,
            autoattack.package().__version__ if autoattack else None]


def strong_state_file(state_dir, models, settings, attacks, images, labels, code):
    """Where the chunks of one strong evaluation are kept: named by everything that sets its numbers (the
    models' weights, the images, the attacks and their settings, the chunk size, the code)."""
    keys = ("eps", "seed", "bn_eval", "eval_batch", "strong_steps", "strong_restarts", "square_queries")
    return state_path(state_dir, "strong", [sorted(attacks), sorted(models), EXACT_CHUNK, code] + [settings[k] for k in keys],
                      [images, labels] + weights(models))


class Expected(NamedTuple):
    """What a strong evaluation's state file holds: its chunks (first image -> images), the target models,
    and the keys each model's counts carry at least (more: the eps sweep)."""
    sizes: dict
    models: set
    keys: set


def read_strong_state(path, expected):
    """The finished chunks in a strong evaluation's state file, {first image: chunk}, checked against what
    this evaluation would write there (`expected`); {} where there is no file (read_state_file)."""
    state = read_state_file(path, lambda state: strong_state_problem(state, expected),
                            "the strong evaluation's state file", "score those images again")
    return {} if state is None else state


def strong_state_problem(state, expected):
    """What makes a state file's content other than chunks of this evaluation, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    sizes, targets, keys = expected.sizes, expected.models, None
    for start, done in state.items():
        if start not in sizes:
            return f"a chunk from image {start!r}, where this evaluation cuts none"
        if not isinstance(done, dict) or done.get("n") != sizes[start]:
            return f"chunk {start}: not its {sizes[start]} images"
        seconds, counts = done.get("seconds"), done.get("counts")
        if not isinstance(seconds, (int, float)) or seconds < 0 or not isinstance(counts, dict) or set(counts) != set(targets):
            return f"chunk {start}: its seconds or its models ({', '.join(sorted(targets))}) are missing"
        for model, row in counts.items():
            if keys is None and isinstance(row, dict):
                keys = set(row)
            if not isinstance(row, dict) or set(row) != keys or not expected.keys <= keys or not all(
                    type(c) is int and 0 <= c <= sizes[start] for c in row.values()):
                return f"chunk {start}, model {model}: not a count of its images for each attack of the others"
    return None


def add_chunk(path, start, done, expected):
    """Adds a finished chunk to the state file, re-read under a lock, so that two runs of one evaluation
    (a requeued job beside the one it replaces) keep each other's chunks; returns the file's chunks. What
    it writes is checked as what it reads is."""
    with merge_lock(str(path)):
        state = read_strong_state(path, expected) | {start: done}
        problem = strong_state_problem(state, expected)
        if problem:
            raise UserError(f"the strong evaluation's state file {path} and the chunk just scored disagree ({problem}); "
                            "move the file away to score those images again")
        write_json(path, state)
    return state


AUTOATTACK_STANDARD = dict(strong_steps=100, square_queries=5000)  # the standard version's iterations and queries


def autoattack_version(settings):
    """What the `autoattack` number is: the standard version, or a reduced one (--quick) that says so."""
    reduced = {k: settings[k] for k, v in AUTOATTACK_STANDARD.items() if settings[k] != v}
    return {"version": "standard" if not reduced else f"standard with {reduced} (not the standard numbers)",
            "norm": "Linf", "eps": settings["eps"], "seed": settings["seed"]}


def autoattack_cascade(autoattack, model, images, labels, settings, device, state_dir):
    """AutoAttack's standard cascade on one model, scored as strong_evaluation scores: (accuracy in percent, warnings)."""
    state = autoattack.state_file(state_dir, model, settings, images, labels, settings["bn_eval"], device)
    x, y = core.to_float(images.to(device)), labels.to(device)
    with core.scoring_mode([model], settings["bn_eval"]), core.full_precision(device):
        robust, warnings = autoattack.cascade(model, x, y, settings, settings["eval_batch"], state)
    return round(100.0 * robust.float().mean().item(), 2), warnings
