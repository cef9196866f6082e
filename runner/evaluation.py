"""Evaluating the trained models: the paper's table in float32, and the strong evaluation (AutoAttack's
cascade)."""
import sys
import time

import torch

import core
from runner import reports
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
    torch.manual_seed(settings["seed"])
    t0 = time.time()
    with core.scoring_mode([generator] if generator is not None else []):  # G as trained, in eval mode
        results = core.strong_evaluation(targets, test_x[:n], test_y[:n], eps, device, attacks, surrogates,
                                    settings["bn_eval"], settings["eval_batch"], sweep_steps=settings["strong_steps"],
                                    progress=Progress(n, "strong evaluation", "img"))
    report = {"n_test": n, "bn": settings["bn_eval"], "attacks": list(attacks), "surrogates": list(surrogates),
              "precision": SCORING_PRECISION,
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
