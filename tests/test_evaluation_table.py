"""The paper's table (core.evaluate_table): each black-box column is crafted on its own surrogate and
scored on the target. Two surrogates with known answers: one whose input gradient is exactly zero (its
FGS leaves every image as it is, so fgs_Z' is the clean accuracy) and an exact copy of the target (its
FGS is the target's own, so fgs_T' is the white-box FGS accuracy)."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import core
import runner.errors
import runner.evaluation
import runner.provenance
import runner.settings
from conftest import RoundedInput, learnable_set

EPS = 0.1


def trained_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
    images, labels = learnable_set(256, 0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(core.to_float(images)), labels).backward()
        opt.step()
    return model.eval()


def test_black_box_columns_are_crafted_on_their_own_surrogate():
    """Fails if black-box examples are crafted on the target, or on another surrogate than the column names."""
    target = trained_mlp()
    surrogates = {"Z'": RoundedInput(copy.deepcopy(target)), "T'": copy.deepcopy(target)}
    images, labels = learnable_set(120, 1)
    table = core.evaluate_table({"M": target}, surrogates, images, labels, EPS, torch.device("cpu"), batch_size=50)["M"]
    assert table["clean"] > 80 and table["fgs"] < table["clean"] - 20, table  # FGS must hurt for this to mean anything
    assert table["fgs_Z'"] == table["clean"], table
    assert table["fgs_T'"] == table["fgs"], table
    assert set(table) == {"clean", "fgs", "pgd", "fgs_Z'", "pgd_Z'", "fgs_T'", "pgd_T'"}


class AutocastSpy(nn.Module):
    """The model, noting whether each of its forward passes ran under autocast."""

    def __init__(self, model):
        super().__init__()
        self.model, self.autocast_seen = model, []

    def forward(self, x):
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return self.model(x)


def test_the_paper_table_is_scored_in_float32_whatever_trained_in_bf16():
    """The table's attacks once ran in the training `precision` (bf16 autocast), which moved cells by up to
    0.6 points in precision_study.py. Fails if evaluate_trained scores under the training precision or
    inside a caller's autocast region."""
    spies = {"C": AutocastSpy(trained_mlp()), "C'": AutocastSpy(trained_mlp())}
    images, labels = learnable_set(40, 2)
    settings = runner.settings.COMMON_SETTINGS | {"eps": EPS, "test_n": 40, "precision": "bf16"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        table, evaluation = runner.evaluation.evaluate_trained(spies, settings, images, labels, torch.device("cpu"))
    seen = spies["C"].autocast_seen + spies["C'"].autocast_seen
    assert seen and not any(seen), f"{sum(seen)} of {len(seen)} forward passes ran under autocast"
    assert evaluation["precision"] == runner.evaluation.SCORING_PRECISION and set(table) == {"C"}


# ------------------------------------------------------------------ the table kept for a resumed --strong-eval
def kept_settings(**changes):
    return runner.settings.COMMON_SETTINGS | {"eps": EPS, "test_n": 40} | changes


def scored_tables(monkeypatch):
    """core.evaluate_table as evaluate_trained calls it, each call recorded."""
    whole, calls = core.evaluate_table, []

    def recorded(*args, **kwargs):
        calls.append(args[0])
        return whole(*args, **kwargs)

    monkeypatch.setattr(core, "evaluate_table", recorded)
    return calls


def test_a_rerun_reads_the_kept_table_and_scores_nothing(tmp_path, monkeypatch, capsys):
    """A --strong-eval cut short is run again; its table (the first tens of minutes on a CPU) must not be
    scored again. Fails if evaluate_trained scores again, or returns anything but the first run's table."""
    models, (images, labels) = {"C": trained_mlp(), "C'": trained_mlp()}, learnable_set(40, 2)
    calls = scored_tables(monkeypatch)
    first = runner.evaluation.evaluate_trained(models, kept_settings(), images, labels, "cpu", tmp_path)
    assert len(calls) == 2  # the table, and C under the other batch-norm mode
    calls.clear()
    table, evaluation = runner.evaluation.evaluate_trained(models, kept_settings(), images, labels, "cpu", tmp_path)
    assert calls == [] and "read from" in capsys.readouterr().err
    (kept,) = tmp_path.glob("table_*.json")
    scored = json.loads(kept.read_text())
    assert table == first[0] and evaluation == first[1] | {"read_from": {
        "file": kept.name, "scored_at": scored["scored_at"], "device": runner.provenance.device_name(torch.device("cpu"))}}


def changed_weights(model):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[1].bias[0] += 1e-3
    return changed


@pytest.mark.parametrize("change", ["weights of a copy", "labels", "images", "test_n"] + list(runner.evaluation.TABLE_KEYS))
def test_another_model_image_or_setting_scores_its_own_table(change, tmp_path, monkeypatch):
    """Fails if a kept table is read for other weights, images, labels or settings than it was scored with."""
    models, (images, labels), settings = {"C": trained_mlp(), "C'": trained_mlp()}, learnable_set(40, 2), kept_settings()
    runner.evaluation.evaluate_trained(models, settings, images, labels, "cpu", tmp_path)
    other = {"eps": 0.05, "seed": 1, "bn_eval": "batch", "eval_batch": 16, "pgd_steps": 3, "pgd_alpha": 0.02, "test_n": 39}
    if change == "weights of a copy":
        models = models | {"C'": changed_weights(models["C'"])}
    elif change in ("labels", "images"):
        images, labels = (images, (labels + 1) % 10) if change == "labels" else (images.flip(0), labels)
    else:
        settings = settings | {change: other[change]}
    calls = scored_tables(monkeypatch)
    runner.evaluation.evaluate_trained(models, settings, images, labels, "cpu", tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("table_*.json"))) == 2


def damaged_tables(good):
    """Kept tables that are not what the evaluation would have written, each in its own way."""
    table, evaluation, comparison = good["table"], good["eval"], good["eval"]["bn_comparison"]["C"]
    return ["{", json.dumps(good | {"table": {"C": table["C"] | {"pgd": 140.0}}}),
            json.dumps(good | {"table": {"A": table["C"]}}), json.dumps(good | {"eval": evaluation | {"n_test": 39}}),
            json.dumps(good | {"eval": evaluation | {"bn": "batch"}}), json.dumps({k: v for k, v in good.items() if k != "device"}),
            json.dumps(good | {"eval": {k: v for k, v in evaluation.items() if k != "precision"}}),
            json.dumps(good | {"eval": evaluation | {"seconds": -5}}),
            json.dumps(good | {"eval": evaluation | {"bn_comparison": {"C": comparison | {"batch": comparison["batch"] | {"clean": 900}}}}}),
            json.dumps(good | {"eval": evaluation | {"bn_comparison": {"C": comparison | {"running": comparison["batch"]}}}})]


def test_a_damaged_kept_table_is_an_error_naming_it_and_is_not_overwritten(tmp_path):
    models, (images, labels) = {"C": trained_mlp()}, learnable_set(40, 2)
    runner.evaluation.evaluate_trained(models, kept_settings(), images, labels, "cpu", tmp_path)
    (kept,) = tmp_path.glob("table_*.json")
    good = json.loads(kept.read_text())
    assert good["eval"]["bn_comparison"]["C"]["running"] != good["eval"]["bn_comparison"]["C"]["batch"]
    for damaged in damaged_tables(good):
        kept.write_text(damaged)
        with pytest.raises(runner.errors.UserError, match=kept.name):
            runner.evaluation.evaluate_trained(models, kept_settings(), images, labels, "cpu", tmp_path)
        assert kept.read_text() == damaged
    kept.write_text(json.dumps(good))
    runner.evaluation.evaluate_trained(models, kept_settings(), images, labels, "cpu", tmp_path)  # the good one reads
