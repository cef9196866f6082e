"""The results files the notebook and figures.py read: each checked against its schema
(docs/results-json.md) where it enters, so that a file that is not valid JSON or lacks a key is named with the
reason and skipped, never drawn."""
import json
import math
from typing import NamedTuple

DATASETS = ["mnist", "fashion_mnist", "svhn", "cifar10", "cifar100"]
NUMBER = (int, float)
OPTIONAL_TEXT = (str, type(None))


class Accuracy:
    "The type `need` checks a percentage as: a finite number in [0, 100] (JSON may say Infinity or NaN)."


RUN_FIELDS = {"settings.eps": NUMBER, "settings.iters": NUMBER, "provenance.device": str,
              "provenance.git_commit": OPTIONAL_TEXT, "provenance.git_dirty": (bool, type(None)),
              "wall_seconds": NUMBER, "models": dict}
DATASET_FIELDS = RUN_FIELDS | {"seeds": dict, "eval.n_test": NUMBER, "table": dict}
STRONG_FIELDS = {"n_test": NUMBER, "bn": str, "precision": str, "models": dict}
STRONG_ACCURACY = ["clean", "pgd10", "pgd_ce", "pgd_cw", "robust"]
STATS_FIELDS = {"mean": NUMBER, "std": (int, float, type(None)), "n": int}
GENERATOR_FIELDS = RUN_FIELDS | {"settings.seed": NUMBER, "attack_training": dict, "n_test": NUMBER,
                                 "table5": dict, "table6": dict, "examples": str}
OVER_TRAINING_FIELDS = {"dataset": str, "scoring.test_n": NUMBER, "scoring.strong_n": NUMBER, "provenance.command": str,
                        "models": dict}
PRECISION_FIELDS = {"settings.iters": NUMBER, "settings.test_n": NUMBER, "settings.strong_n": NUMBER, "seeds": list,
                    "arms": dict, "runs": dict, "summary": dict, "bf16_table_minus_float32": dict, "provenance.command": str}
PRECISION_SCORES = ["clean", "fgs", "pgd", "autoattack", "g_gain_first", "g_gain_last"]
PRECISION_KINDS = {s: Accuracy for s in PRECISION_SCORES[:4]} | {s: NUMBER for s in PRECISION_SCORES[4:]}  # gains: points
ABLATION_FIELDS = {"settings.iters": NUMBER, "scoring.n_test": NUMBER, "scoring.autoattack_n": NUMBER, "seeds": list,
                   "arms": dict, "runs": dict, "provenance.command": str}
ABLATION_SCORES = ["clean", "fgs", "pgd", "autoattack"]
ATTACK_GAP_FIELDS = {"dataset": str, "iteration": NUMBER, "n_test": NUMBER, "eps": NUMBER, "steps": NUMBER,
                     "accuracy": dict, "provenance.command": str}
FIRST_LAYER_FIELDS = {"dataset": str, "iteration": NUMBER, "one_pixel_share": NUMBER, "summary.filters": NUMBER,
                      "summary.one_pixel": NUMBER, "summary.eps": NUMBER, "filters": list, "provenance.command": str}
SWITCH_FIELDS = {"filter": NUMBER, "share": NUMBER, "switch": NUMBER, "on": str, "spread": NUMBER}
SNAPSHOT_FIELDS = {"iter": NUMBER, "n_test": NUMBER, "autoattack_n": NUMBER, "accuracy.clean": Accuracy,
                   "accuracy.pgd10": Accuracy, "accuracy.pgd_ce": Accuracy, "on_autoattack_images.pgd10": Accuracy,
                   "on_autoattack_images.autoattack": Accuracy}


class BadResult(Exception):
    "Why a results file cannot be shown, in one line."


class Result(NamedTuple):
    file: str        # name in RESULTS_DIR
    experiment: str  # mnist ... cifar100, ensemble, generators, over_training, precision_study, ablation_study
    quick: bool      # a --quick smoke test
    data: dict
    protocol: str    # paper (the settings of the paper's text; files older than --protocol) or authors


def need(obj, dotted, types):
    "The value at a dotted key path, checked to be of `types` (Accuracy: a percentage)."
    value, keys = obj, dotted.split(".")
    for i, key in enumerate(keys):
        if not isinstance(value, dict):
            raise BadResult(f"'{'.'.join(keys[:i])}' is not an object" if i else "not a JSON object")
        if key not in value:
            raise BadResult(f"missing key '{'.'.join(keys[:i + 1])}'")
        value = value[key]
    if not isinstance(value, NUMBER if types is Accuracy else types):
        raise BadResult(f"'{dotted}' has the wrong type ({type(value).__name__})")
    if types is Accuracy and not (math.isfinite(value) and 0 <= value <= 100):
        raise BadResult(f"'{dotted}' is {value}, not an accuracy in [0, 100]")
    return value


def check_fields(obj, fields, prefix=""):
    for dotted, types in fields.items():
        need(obj, prefix + dotted, types)


def check_table(obj, dotted):
    table = need(obj, dotted, dict)
    if not table:
        raise BadResult(f"'{dotted}' has no rows")
    for row, values in table.items():
        if not isinstance(values, dict):
            raise BadResult(f"'{dotted}.{row}' is not a column -> accuracy mapping")
        check_fields(obj, {f"{row}.{column}": Accuracy for column in values}, dotted + ".")


def check_models(obj, prefix):
    for name in need(obj, prefix + "models", dict):
        need(obj, f"{prefix}models.{name}.iters_done", NUMBER)
        history = need(obj, f"{prefix}models.{name}.history", list)
        if not all(isinstance(point, dict) and isinstance(point.get("iter"), NUMBER) for point in history):
            raise BadResult(f"'{prefix}models.{name}.history' has a point without a numeric 'iter'")


def check_strong(run):
    "The --strong-eval entry of one run, where it has one."
    if "strong_eval" not in run:
        return
    check_fields(run, STRONG_FIELDS, "strong_eval.")
    for name in run["strong_eval"]["models"]:
        check_fields(run, {f"{name}.accuracy.{key}": Accuracy for key in STRONG_ACCURACY}, "strong_eval.models.")
        for check in need(run, f"strong_eval.models.{name}.checks", dict):
            check_fields(run, {"flag": bool, "why": str}, f"strong_eval.models.{name}.checks.{check}.")


def check_dataset(data, prefix=""):
    check_fields(data, DATASET_FIELDS, prefix)
    check_table(data, prefix + "table")
    check_models(data, prefix)
    check_strong(need(data, prefix[:-1], dict) if prefix else data)  # prefix "datasets.<name>.": that entry


def check_dataset_file(data):
    "A data set's file: one run, or with --seeds one run per seed and the statistics of every cell."
    if "runs" not in data:
        return check_dataset(data)
    for seed in need(data, "runs", dict):
        check_dataset(data, f"runs.{seed}.")
    check_table(data, "table")
    for row, columns in need(data, "table_stats", dict).items():
        for column in columns:
            check_fields(data, STATS_FIELDS | {"mean": Accuracy}, f"table_stats.{row}.{column}.")


def check_ensemble(data):
    for name in need(data, "datasets", dict):
        check_dataset(data, f"datasets.{name}.")


def check_generators(data):
    check_fields(data, GENERATOR_FIELDS)
    check_table(data, "table5")
    check_table(data, "table6")
    check_models(data, "")
    check_strong(data)


def check_over_training(data):
    check_fields(data, OVER_TRAINING_FIELDS)
    for name in data["models"]:
        snapshots = need(data, f"models.{name}.snapshots", list)
        if not snapshots:
            raise BadResult(f"'models.{name}.snapshots' is empty")
        for i, entry in enumerate(snapshots):
            try:
                check_fields(entry, SNAPSHOT_FIELDS)
            except BadResult as err:
                raise BadResult(f"models.{name}.snapshots[{i}]: {err}") from None


def check_precision_study(data):
    check_fields(data, PRECISION_FIELDS)
    for arm, by_seed in data["runs"].items():
        for seed in by_seed:
            check_fields(data, PRECISION_KINDS, f"runs.{arm}.{seed}.float32.")
            check_models({"models": {seed: by_seed[seed]["model"]}}, "")
        for score in PRECISION_SCORES:
            check_fields(data, STATS_FIELDS, f"summary.{arm}.{score}.")


def check_ablation_study(data):
    check_fields(data, ABLATION_FIELDS)
    for arm, by_seed in data["runs"].items():
        if not isinstance(by_seed, dict) or not by_seed:
            raise BadResult(f"'runs.{arm}' holds no seed's model")
        for seed in by_seed:
            check_fields(data, {s: Accuracy for s in ABLATION_SCORES}, f"runs.{arm}.{seed}.scores.")


def check_attack_gap(data):
    check_fields(data, ATTACK_GAP_FIELDS)
    if not data["accuracy"]:
        raise BadResult("'accuracy' is empty")
    check_fields(data, {name: Accuracy for name in data["accuracy"]}, "accuracy.")


def check_first_layer(data):
    check_fields(data, FIRST_LAYER_FIELDS)
    for k, row in enumerate(data["filters"]):
        if not isinstance(row, dict):
            raise BadResult(f"'filters' item {k} is not an object")
        if "switch" in row:
            try:
                check_fields(row, SWITCH_FIELDS)
            except BadResult as err:
                raise BadResult(f"'filters' item {k}: {err}") from None


CHECKS = {**{name: check_dataset_file for name in DATASETS}, "ensemble": check_ensemble, "generators": check_generators,
          "over_training": check_over_training, "precision_study": check_precision_study,
          "ablation_study": check_ablation_study, "attack_gap": check_attack_gap,
          "first_layer": check_first_layer}


def load_result(path, name=None):
    "The checked result in a file, named `name` (its path in the results folder; default: the file's name)."
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise BadResult(f"cannot be read ({err.strerror})") from None
    except ValueError as err:  # invalid JSON, or not UTF-8
        raise BadResult(f"not valid JSON ({err})") from None
    label = need(data, "experiment", str)
    experiment = label.removesuffix("_quick").removesuffix("_authors")
    if experiment == "bench":
        raise BadResult("bench.py's speed measurements, not accuracies (docs/speed-and-gpu.md)")
    if experiment not in CHECKS:
        raise BadResult(f"unknown experiment '{label}'")
    CHECKS[experiment](data)
    # ensemble.py and generators_study.py name only the file of a --quick run
    protocol = data.get("protocol", "paper")
    if not isinstance(protocol, str):
        raise BadResult("'protocol' is not a string")
    return Result(name or path.name, experiment, path.name.endswith("_quick.json") or label.endswith("_quick"), data, protocol)


def load_all(folder, pattern="*.json"):
    "The readable results in display order, and one line per file that is not; files named by their path in `folder`."
    results, problems = [], []
    for path in sorted(folder.glob(pattern)):
        name = path.relative_to(folder).as_posix()
        try:
            results.append(load_result(path, name))
        except BadResult as err:
            problems.append(f"{name}: not shown: {err}")
    order = DATASETS + ["ensemble", "generators", "over_training", "precision_study", "ablation_study", "attack_gap", "first_layer"]
    return sorted(results, key=lambda r: (order.index(r.experiment), r.protocol != "paper", r.quick, r.file)), problems


def runs_of(result):
    "(name, run) pairs: one per data set of the ensemble file, one per seed of a --seeds file, else the file."
    if result.experiment == "ensemble":
        return list(result.data["datasets"].items())
    if "runs" in result.data:
        return [(f"{result.experiment} seed {seed}", run) for seed, run in result.data["runs"].items()]
    return [(result.experiment, result.data)]


def quick_tag(result):
    return "  [QUICK SMOKE TEST: a pipeline check, not a result]" if result.quick else ""
