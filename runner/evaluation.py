"""Evaluating the trained models: the paper's table in float32, and the strong evaluation (AutoAttack's
cascade)."""
import hashlib
import json
import pathlib
import sys
import time

import torch

import core
from runner import reports
from runner.errors import UserError
from runner.files import write_json
from runner.progress import Progress


SCORING_PRECISION = "float32 (no core.autocast, no TF32)"  # every score, whatever `precision` trained in


def split_models(models):
    """(targets, surrogates): the models scored, and the seed copies (A', B', C') that attack them."""
    return {k: m for k, m in models.items() if "'" not in k}, {k: m for k, m in models.items() if "'" in k}


def evaluate_trained(models, settings, test_x, test_y, device):
    """The paper's 9-column table of the models (copies as surrogates), with BN as `bn_eval` says; model C,
    if present, is also scored white-box under both BN modes (`bn_comparison`). In IEEE float32, whatever
    `precision` trained in: crafted under bf16, a cell moved by up to 0.6 points (precision_study.py)."""
    n = min(settings["test_n"] or len(test_x), len(test_x))  # what is scored, not what was asked
    targets, surrogates = split_models(models)
    if not targets:
        return {}, {"n_test": 0, "seconds": 0.0, "note": "no finished target model (A, B or C)"}
    t0 = time.time()

    def score(chosen, against, bn, progress=None):
        with core.full_precision(device):
            return core.evaluate_table(chosen, against, test_x[:n], test_y[:n], settings["eps"], device, settings["eval_batch"],
                                       settings["pgd_steps"], settings["pgd_alpha"] or None, progress, bn, "float32")

    torch.manual_seed(settings["seed"])  # PGD's random start: the same numbers for the same run
    table = score(targets, surrogates, settings["bn_eval"], Progress(n, "evaluate", "img"))
    columns = ["clean", "fgs", "pgd"] + [f"{a}_{s}" for s in surrogates for a in ("fgs", "pgd")]
    evaluation = {"n_test": n, "columns": columns, "bn": settings["bn_eval"], "precision": SCORING_PRECISION}
    if "C" in targets:  # the table already holds C's white-box row in the chosen mode: only the other is scored
        white_box = {k: table["C"][k] for k in ("clean", "fgs", "pgd")}
        evaluation["bn_comparison"] = {"C": {bn: white_box if bn == settings["bn_eval"] else score({"C": targets["C"]}, {}, bn)["C"]
                                             for bn in core.BN_MODES}}
    return table, evaluation | {"seconds": round(time.time() - t0, 1)}


def strong_eval_report(models, generator, settings, test_x, test_y, device, autoattack=None, state_dir="checkpoints"):
    """--strong-eval: core.strong_evaluation of the target models (the seed copies attack by transfer;
    `generator`, C's G, attacks every model) with masking checks, as the results JSON's entry.
    `autoattack` (the module autoattack_suite, which needs a package beyond torch) adds AutoAttack's four
    attacks, each alone, and its standard cascade (`autoattack`, resumable from state files in `state_dir`)."""
    n = min(settings["strong_n"] or len(test_x), settings["test_n"] or len(test_x), len(test_x))
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
        results, resumed, attack_seconds = resumable_strong_evaluation(
            targets, surrogates, generator, attacks, test_x[:n], test_y[:n], settings, device, state_dir)
    report = {"n_test": n, "bn": settings["bn_eval"], "attacks": list(attacks), "surrogates": list(surrogates),
              "precision": SCORING_PRECISION, "resumed_images": resumed, "attack_seconds": attack_seconds,
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


EXACT_CHUNK = 5000  # a chunk's percentages, rounded to 0.01, give back its counts exactly below 10,000 images


def resumable_strong_evaluation(targets, surrogates, generator, attacks, images, labels, settings, device, state_dir):
    """core.strong_evaluation chunk by chunk (`eval_batch` images), each chunk's counts kept in a state
    file in `state_dir` as it ends, so that a run cut short (hours on a CPU) resumes at the chunk it was
    in, with the numbers an uninterrupted run gives: each chunk seeds its random starts by its position.
    Returns (percent per model and key, images read from the state file, seconds of attacks in all runs)."""
    n, chunk = len(images), min(settings["eval_batch"], EXACT_CHUNK)
    path = strong_state_file(state_dir, targets | surrogates | ({"G": generator} if generator is not None else {}),
                             settings, attacks, images[:n], labels[:n])
    state = read_strong_state(path)
    resumed = sum(done["n"] for done in state.values())
    progress = Progress(n, "strong evaluation", "img", start=resumed)
    for start in range(0, n, chunk):
        if str(start) not in state:
            t0 = time.time()
            torch.manual_seed(settings["seed"] + start)
            part = core.strong_evaluation(targets, images[start:start + chunk], labels[start:start + chunk], settings["eps"],
                                          device, attacks, surrogates, settings["bn_eval"], chunk,
                                          sweep_steps=settings["strong_steps"], progress=Shifted(progress, start))
            size = min(chunk, n - start)
            state[str(start)] = {"n": size, "seconds": round(time.time() - t0, 1),
                                 "counts": {m: {k: round(p * size / 100) for k, p in r.items()} for m, r in part.items()}}
            write_json(path, state)
        progress.update(min(start + chunk, n))
    totals = {}
    for done in state.values():
        for model, counts in done["counts"].items():
            for key, count in counts.items():
                totals.setdefault(model, {})[key] = totals.get(model, {}).get(key, 0) + count
    accuracy = {m: {k: round(100.0 * c / n, 2) for k, c in counts.items()} for m, counts in totals.items()}
    return accuracy, resumed, round(sum(done["seconds"] for done in state.values()), 1)


class Shifted:
    """A Progress seen from inside one chunk: its counts start at the chunk's first image."""

    def __init__(self, progress, offset):
        self.progress, self.offset = progress, offset

    def update(self, done, extra=None):
        self.progress.update(self.offset + done, extra)


def strong_state_file(state_dir, models, settings, attacks, images, labels):
    """Where the chunks of one strong evaluation are kept: named by everything that sets its numbers (the
    models' weights, the images, the attacks and their settings, the chunk size)."""
    keys = ("eps", "seed", "bn_eval", "eval_batch", "strong_steps", "strong_restarts", "square_queries")
    digest = hashlib.sha1(json.dumps([sorted(attacks), sorted(models), EXACT_CHUNK] + [settings[k] for k in keys]).encode())
    for tensor in [images, labels] + [t for name in sorted(models) for t in models[name].state_dict().values()]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return pathlib.Path(state_dir) / f"strong_{digest.hexdigest()[:16]}.json"


def read_strong_state(path):
    """The finished chunks of a strong evaluation's state file, {first image: chunk}; {} where there is
    no file, and an error naming the file where it cannot be read (it is never overwritten unread)."""
    try:
        with open(path) as f:
            state = json.load(f)
        if not all(isinstance(c, dict) and {"n", "seconds", "counts"} <= set(c) for c in state.values()):
            raise ValueError("a chunk lacks its n, seconds or counts")
        return state
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"the strong evaluation's state file {path} cannot be read ({err}); "
                        "move it away to score those images again") from err


AUTOATTACK_STANDARD = dict(strong_steps=100, square_queries=5000)  # the standard version's iterations and queries


def autoattack_version(settings):
    """What the `autoattack` number is: the standard version, or a reduced one (--quick) that says so."""
    reduced = {k: settings[k] for k, v in AUTOATTACK_STANDARD.items() if settings[k] != v}
    return {"version": "standard" if not reduced else f"standard with {reduced} (not the standard numbers)",
            "norm": "Linf", "eps": settings["eps"], "seed": settings["seed"]}


def autoattack_cascade(autoattack, model, images, labels, settings, device, state_dir):
    """AutoAttack's standard cascade on one model, scored as strong_evaluation scores: (accuracy in percent, warnings)."""
    x, y = core.to_float(images.to(device)), labels.to(device)
    state = autoattack.state_file(state_dir, model, settings, len(x), settings["bn_eval"])
    with core.scoring_mode([model], settings["bn_eval"]), core.full_precision(device):
        robust, warnings = autoattack.cascade(model, x, y, settings, settings["eval_batch"], state)
    return round(100.0 * robust.float().mean().item(), 2), warnings
