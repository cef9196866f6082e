"""The strong evaluation: every attack stays in the threat model, the worst case is the per-example
minimum, the masking checks fire on a model that masks its gradients and stay quiet on one that does
not, and --strong-eval runs end to end from the command line."""
import hashlib
import json
import logging
import pathlib
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyautoattack.square

import core
import runner.autoattack_suite
import runner.errors
import runner.evaluation
from conftest import RoundedInput, learnable_set
from test_mnist_script import quick_run, run  # noqa: F401 (quick_run: the session's quick models)

EPS = 0.1
MASKING_EPS = 0.2  # the tiny models' bright patches survive eps 0.1 even unmasked: no attack could tell them apart


def aa_settings(eps=EPS):
    return dict(eps=eps, seed=0, strong_steps=10, strong_restarts=2, square_queries=200)


def all_attacks(eps=EPS):
    return core.strong_attacks(eps, steps=10, restarts=2) | runner.autoattack_suite.attacks(aa_settings(eps))


def tiny_bn_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))


@pytest.mark.parametrize("attack", list(all_attacks()))
@pytest.mark.parametrize("bn", core.BN_MODES)
def test_strong_attack_respects_threat_model_and_leaves_model_untouched(attack, bn):
    torch.manual_seed(0)
    model = tiny_bn_model().train(bn == "running")  # scoring_mode must switch it either way, then give it back
    x, y = torch.rand(16, 1, 14, 14), torch.randint(0, 10, (16,))
    x[:4], x[4:8] = 0.0, 1.0  # pixels at the range's edges
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with core.scoring_mode([model], bn):
        assert model.training == (bn == "batch")
        x_adv = all_attacks()[attack](model, x, y)
        assert model.training == (bn == "batch")
    assert model.training == (bn == "running")
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and torch.isfinite(x_adv).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_restarts_keep_each_example_fooled_once_fooled():
    torch.manual_seed(0)
    model = tiny_bn_model().eval()
    x = torch.rand(256, 1, 14, 14)
    y = core.predict(model, x)  # all right on clean images: what the random starts flip is the restarts' doing
    fooled = lambda x_adv: core.predict(model, x_adv) != y
    torch.manual_seed(1)
    one = core.pgd(model, x, y, 0.3, 0.0, 1)  # alpha 0: each run is just its random start
    torch.manual_seed(1)
    five = core.pgd(model, x, y, 0.3, 0.0, 1, restarts=5)  # its first run is `one`
    assert not (fooled(one) & ~fooled(five)).any()
    assert fooled(five).sum() > fooled(one).sum()
    assert (five - x).abs().max() <= 0.3 + 1e-6


def test_cw_margin_is_positive_exactly_when_misclassified():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert core.cw_margin(logits, y).tolist() == [-2.0, 2.0]


# ------------------------------------------------------------------ the worst case, with known outcomes
class FlagReader(nn.Module):
    """A 1x3 image: pixel 0 encodes a class c, pixel 1 is a flag, pixel 2 an example's id. Predicts c while
    the flag stays near its clean value, c + 1 once an attack has raised it by eps."""

    def forward(self, x):
        c = (x[:, 0, 0, 0] * 10).floor().long()
        flipped = x[:, 0, 0, 1] > FLAG + EPS / 2
        logits = F.one_hot(torch.where(flipped, c + 1, c) % 10, 10).float()
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)  # on the input's graph, with a zero gradient


FLAG = 128 / 255
N_STUB = 40
FOOLED = {"fgs": {i for i in range(N_STUB) if i % 3 == 0}, "pgd_ce": {i for i in range(N_STUB) if i % 5 == 1},
          "pgd_cw": {i for i in range(N_STUB) if i % 7 == 2}}
FOOLED_BY_TRANSFER = {i for i in range(N_STUB) if i % 11 == 3}
WRONG_ON_CLEAN = {i for i in range(N_STUB) if i % 4 == 2}


def stub_data():
    ids = torch.arange(N_STUB)
    classes = ids % 10
    images = torch.stack([(classes * 255 + 128) // 10, torch.full_like(ids, 128), ids * 5], 1).view(N_STUB, 1, 1, 3)
    labels = torch.where(torch.tensor([i in WRONG_ON_CLEAN for i in range(N_STUB)]), (classes + 5) % 10, classes)
    return images.to(torch.uint8), labels


def raise_flag(fooled):
    """An attack that fools exactly the examples whose id is in `fooled` (it raises their flag by eps)."""
    def craft(x):
        ids = (x[:, 0, 0, 2] * 255 / 5).round().long()
        hit = torch.tensor([int(i) in fooled for i in ids])
        x_adv = x.clone()
        x_adv[hit, 0, 0, 1] += EPS
        return x_adv
    return craft


def test_robust_is_exactly_the_per_example_and_of_clean_every_attack_and_transfer():
    """Stub attacks with known per-example outcomes, over three batches: each attack's accuracy and `robust`
    are exact; robust is neither the minimum over attacks nor anything the eps sweep adds. Fails for a worst
    case that also counts the sweep (too low), that leaves out the transfers or an attack (too high)."""
    target, surrogate = FlagReader(), FlagReader()
    attacks = {name: (lambda fooled: lambda m, x, y: raise_flag(FOOLED_BY_TRANSFER if m is surrogate else fooled)(x))(f)
               for name, f in FOOLED.items()}
    images, labels = stub_data()
    result = core.strong_evaluation({"M": target}, images, labels, EPS, torch.device("cpu"), attacks, {"S'": surrogate},
                                    batch_size=16, sweep=(1.0,), sweep_steps=1)["M"]
    percent = lambda right: round(100.0 * len(right) / N_STUB, 2)
    right_clean = set(range(N_STUB)) - WRONG_ON_CLEAN
    assert result["clean"] == percent(right_clean)
    for name, fooled in FOOLED.items():
        assert result[name] == percent(right_clean - fooled), name
    assert result["transfer_S'"] == percent(right_clean - FOOLED_BY_TRANSFER)
    robust = right_clean - set().union(*FOOLED.values(), FOOLED_BY_TRANSFER)
    assert result["robust"] == percent(robust), result
    assert result["robust"] < min(result[k] for k in [*FOOLED, "transfer_S'"]), "the AND must differ from the minimum"
    assert result["eps_0.5"] < result["robust"], "the sweep's large eps must be able to lower robust for this to mean anything"


# ------------------------------------------------------------------ each masking check at its threshold
QUIET = {"clean": 90.0, "eps_0.5": 0.0, "fgs": 50.0, "pgd10": 45.0, "pgd_ce": 40.0, "pgd_cw": 41.0, "apgd_ce": 40.0,
         "square": 45.0, "transfer_A'": 60.0, "eps_0.05": 60.0, "eps_0.1": 40.0, "eps_0.2": 10.0,
         "zero_gradient_percent": 0.0, "robust": 38.0}  # eps_0.5 first: the curve must be sorted by eps, not read in order


def at_and_past(check, points, large, zero):
    """(changes at the check's threshold: no flag; changes just past it: a flag) for a QUIET result."""
    best = 40.0  # the best gradient attack of QUIET
    return {"iterative_beats_single_step": ({"pgd_ce": 50.0 + points}, {"pgd_ce": 50.01 + points}),
            "accuracy_falls_with_eps": ({"eps_0.1": 60.0 + points}, {"eps_0.1": 60.01 + points}),
            "large_eps_reaches_zero": ({"eps_0.5": large}, {"eps_0.5": large + 0.01}),
            "transfer_not_below_white_box": ({"transfer_A'": best - points}, {"transfer_A'": best - points - 0.01}),
            "gradient_free_not_better": ({"square": best - points}, {"square": best - points - 0.01}),
            "input_gradients_nonzero": ({"zero_gradient_percent": zero}, {"zero_gradient_percent": zero + 0.01})}[check]


CHECKS = ["iterative_beats_single_step", "accuracy_falls_with_eps", "large_eps_reaches_zero",
          "transfer_not_below_white_box", "gradient_free_not_better", "input_gradients_nonzero"]


@pytest.mark.parametrize("thresholds", [{}, dict(points=3.0, large_eps_accuracy=1.0, zero_gradient_percent=0.5)],
                         ids=["defaults", "given"])
@pytest.mark.parametrize("check", CHECKS)
def test_each_masking_check_fires_just_past_its_threshold_and_alone(check, thresholds):
    """Fails for a check that never fires, fires at its threshold, ignores its threshold argument, or fires
    for another check's reason."""
    limits = dict(points=2.0, large_eps_accuracy=5.0, zero_gradient_percent=1.0) | thresholds
    assert set(core.masking_checks(QUIET, **thresholds)) == set(CHECKS)
    assert not any(c["flag"] for c in core.masking_checks(QUIET, **thresholds).values())
    at, past = at_and_past(check, limits["points"], limits["large_eps_accuracy"], limits["zero_gradient_percent"])
    assert not any(c["flag"] for c in core.masking_checks(QUIET | at, **thresholds).values()), at
    flags = {name for name, c in core.masking_checks(QUIET | past, **thresholds).items() if c["flag"]}
    assert flags == {check}, (past, flags)


def test_gradient_free_check_is_quiet_without_square():
    result = {k: v for k, v in QUIET.items() if k != "square"} | {"pgd_ce": 40.0}
    assert not core.masking_checks(result)["gradient_free_not_better"]["flag"]


class Recorder:
    def __init__(self):
        self.updates = []

    def update(self, done, extra=None):
        self.updates.append((done, extra))


def test_progress_moves_within_a_batch_and_names_each_stage():
    """A strong evaluation of a few hundred images is one batch that can run for an hour: its count
    must move as the attacks finish, not stay at 0 until the end."""
    torch.manual_seed(0)
    models = {"M": tiny_bn_model().eval(), "N": tiny_bn_model().eval()}
    images, labels = torch.randint(0, 256, (40, 1, 14, 14), dtype=torch.uint8), torch.randint(0, 10, (40,))
    attacks = {"pgd_ce": lambda m, x, y: x, "fgs": lambda m, x, y: core.fgs(m, x, y, EPS)}
    progress = Recorder()
    core.strong_evaluation(models, images, labels, EPS, torch.device("cpu"), attacks, batch_size=500, sweep_steps=2,
                           progress=progress)
    done = [d for d, _ in progress.updates]
    assert done == sorted(done) and done[-1] == 40
    assert len({d for d in done if 0 < d < 40}) >= 4
    notes = [e for _, e in progress.updates if e]
    assert notes == [f"{m}: {stage}" for m in models for stage in ("pgd_ce", "fgs", "eps sweep")]


# ------------------------------------------------------------------ masking checks on tiny models
def trained(model, seed, steps=100):
    """`model` after `steps` Adam steps on 512 learnable images drawn with `seed`, in eval mode."""
    images, labels = learnable_set(512, seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model(core.to_float(images)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def trained_mlp(seed):
    torch.manual_seed(seed)
    return trained(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10)), seed)


@pytest.fixture(scope="module")
def strong_results(tmp_path_factory):
    """strong_evaluation's results on a plain and a gradient-masking model, each with AutoAttack's cascade
    (`autoattack`) and its warnings, as runner.evaluation.strong_eval_report adds them."""
    plain, surrogate = trained_mlp(0), trained_mlp(1)
    images, labels = learnable_set(100, 7)
    models = {"plain": plain, "masked": RoundedInput(plain)}
    torch.manual_seed(0)
    results = core.strong_evaluation(models, images, labels, MASKING_EPS, torch.device("cpu"), all_attacks(MASKING_EPS),
                                     {"S'": surrogate}, sweep_steps=10)
    settings = aa_settings(MASKING_EPS) | dict(bn_eval="running", eval_batch=500)  # batches as strong_evaluation's
    for name, model in models.items():
        results[name]["autoattack"], results[name]["warnings"] = runner.evaluation.autoattack_cascade(
            runner.autoattack_suite, model, images, labels, settings, torch.device("cpu"), tmp_path_factory.mktemp("aa"))
    return results


def test_worst_case_is_never_above_any_attack(strong_results):
    for result in strong_results.values():
        attacks = [k for k in result if not k.startswith("eps_") and k not in ("robust", "zero_gradient_percent",
                                                                            "autoattack", "warnings")]
        assert {"clean", "pgd_ce", "pgd_cw", "apgd_ce", "apgd_t", "fab_t", "square", "transfer_S'"} <= set(attacks)
        assert all(result["robust"] <= result[a] for a in attacks)


def test_cascade_is_never_above_any_of_its_attacks_alone(strong_results):
    for name, result in strong_results.items():
        assert result["autoattack"] < result["clean"], name
        assert all(result["autoattack"] <= result[a] for a in runner.autoattack_suite.NAMES), (name, result)


def test_cascade_records_the_zero_gradient_warning_of_the_masked_model_only(strong_results):
    assert not any("zero gradient" in w for w in strong_results["plain"]["warnings"]), strong_results["plain"]["warnings"]
    assert any("zero gradient" in w for w in strong_results["masked"]["warnings"]), strong_results["masked"]["warnings"]


def test_cascade_warns_of_probabilities_given_for_logits(tmp_path, capsys):
    model = nn.Sequential(trained_mlp(0), nn.Softmax(dim=1))
    images, labels = learnable_set(20, 7)
    _, warnings = runner.evaluation.autoattack_cascade(runner.autoattack_suite, model, images, labels, aa_settings() | dict(
        bn_eval="running", eval_batch=20), torch.device("cpu"), tmp_path)
    assert any("logits" in w for w in warnings), warnings
    assert "logits" not in capsys.readouterr().err  # its warnings go to the results, not among its progress lines


def autoattack_logger():
    "What reporting a cascade may change on AutoAttack's logger, and must leave as it was."
    logger = logging.getLogger("auto-attack")
    return logger.level, logger.propagate, list(logger.handlers)


def test_a_cascade_says_each_attack_on_stderr_and_leaves_autoattacks_logger_as_it_was(tmp_path, capsys):
    model = trained_mlp(0)
    images, labels = learnable_set(60, 7)
    before = autoattack_logger()
    runner.autoattack_suite.cascade(model, core.to_float(images), labels, aa_settings(), 10, tmp_path / "state.json")
    err = capsys.readouterr().err
    for attack in runner.autoattack_suite.NAMES.values():
        assert f"AutoAttack's cascade on 60 images: running {attack}" in err, err
    assert "AutoAttack's cascade on 60 images: robust accuracy after APGD-CE" in err, err
    assert autoattack_logger() == before


def test_interrupted_cascade_resumes_with_the_same_result(tmp_path, monkeypatch, capsys):
    model = trained_mlp(0)
    images, labels = learnable_set(60, 7)
    x, y = core.to_float(images), labels
    settings = aa_settings() | dict(square_queries=50)
    whole, _ = runner.autoattack_suite.cascade(model, x, y, settings, 10, tmp_path / "whole.json")
    square = pyautoattack.square.SquareAttack.perturb
    calls = []

    def interrupted(self, x, y=None):  # the power goes during Square's second batch
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return square(self, x, y)

    monkeypatch.setattr(pyautoattack.square.SquareAttack, "perturb", interrupted)
    before = autoattack_logger()
    with pytest.raises(KeyboardInterrupt):
        runner.autoattack_suite.cascade(model, x, y, settings, 10, tmp_path / "cut.json")
    assert autoattack_logger() == before
    assert runner.autoattack_suite.read_state(tmp_path / "cut.json")[1] == {"apgd-ce", "apgd-t", "fab-t"}
    monkeypatch.setattr(pyautoattack.square.SquareAttack, "perturb", square)
    capsys.readouterr()
    resumed, _ = runner.autoattack_suite.cascade(model, x, y, settings, 10, tmp_path / "cut.json")
    assert torch.equal(resumed, whole) and whole.any()
    standing = int(runner.autoattack_suite.read_state(tmp_path / "cut.json")[0].sum())
    err = capsys.readouterr().err
    assert f"resumed from cut.json: apgd-ce, apgd-t, fab-t done, {standing} of 60 images still standing" in err, err
    assert err.count("running square") == 1 and f"cascade on the {standing} images still standing: running square" in err, err
    assert f"AutoAttack's cascade: {int(resumed.sum())} of 60 images robust after all its attacks" in err, err


def test_a_cascade_cut_twice_in_one_attack_keeps_one_state_file_per_attack(tmp_path, monkeypatch):
    """Cut in APGD-T's first batch: the state keeps APGD-CE done (pyautoattack alone would not have
    saved that mark). Resumed and cut there again: the third run resumes from the first state without
    nesting a state for the same attack again, with the uninterrupted run's result."""
    model = trained_mlp(0)
    images, labels = learnable_set(60, 7)
    x, y = core.to_float(images), labels
    whole, _ = runner.autoattack_suite.cascade(model, x, y, aa_settings(), 10, tmp_path / "whole.json")
    targeted = pyautoattack.autopgd_base.APGDAttack_targeted.perturb

    def cut(self, x, y=None, x_init=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyautoattack.autopgd_base.APGDAttack_targeted, "perturb", cut)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            runner.autoattack_suite.cascade(model, x, y, aa_settings(), 10, tmp_path / "cut.json")
        assert runner.autoattack_suite.read_state(tmp_path / "cut.json")[1] == {"apgd-ce"}
    monkeypatch.setattr(pyautoattack.autopgd_base.APGDAttack_targeted, "perturb", targeted)
    resumed, _ = runner.autoattack_suite.cascade(model, x, y, aa_settings(), 10, tmp_path / "cut.json")
    assert torch.equal(resumed, whole) and whole.any()
    states = sorted(p.name for p in tmp_path.glob("cut*.json") if not p.name.endswith(".warnings.json"))
    assert states == ["cut.apgd-t.json", "cut.json"]


def test_cascade_state_is_never_written_in_place(tmp_path, monkeypatch):
    """pyautoattack opens its state file with "w": a kill or power cut then would leave it torn. Every
    write is a core.atomic_write (to a temporary name, fsynced, renamed) instead."""
    real_open, written, real_atomic = pathlib.Path.open, [], core.atomic_write

    def no_writes_in_place(self, mode="r", *args, **kwargs):
        assert not (self.suffix == ".json" and "w" in mode), f"{self} written in place"
        return real_open(self, mode, *args, **kwargs)

    def atomic_write(path, write):
        written.append(pathlib.Path(path))
        real_atomic(path, write)

    monkeypatch.setattr(pathlib.Path, "open", no_writes_in_place)
    monkeypatch.setattr(core, "atomic_write", atomic_write)
    images, labels = learnable_set(10, 7)
    runner.autoattack_suite.cascade(trained_mlp(0), core.to_float(images), labels, aa_settings(), 10, tmp_path / "state.json")
    assert runner.autoattack_suite.read_state(tmp_path / "state.json")[1] == set(runner.autoattack_suite.NAMES.values())
    assert {tmp_path / "state.json", tmp_path / "state.warnings.json"} <= set(written)


def test_a_state_cut_short_before_the_clean_pass_ended_starts_afresh(tmp_path):
    """The first state pyautoattack writes has no robust flags yet; cut there, it cannot be resumed from."""
    images, labels = learnable_set(10, 7)
    x, model = core.to_float(images), trained_mlp(0)
    whole, _ = runner.autoattack_suite.cascade(model, x, labels, aa_settings(), 10, tmp_path / "whole.json")
    cut = json.loads((tmp_path / "whole.json").read_text()) | {"_robust_flags": None, "_run_attacks": []}
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    again, _ = runner.autoattack_suite.cascade(model, x, labels, aa_settings(), 10, tmp_path / "cut.json")
    assert torch.equal(again, whole)


class ModeSwitching(nn.Module):
    """A model that puts itself in eval mode when called: the guard must notice the change."""

    def __init__(self):
        super().__init__()
        self.model = trained_mlp(0)

    def forward(self, x):
        self.eval()
        return self.model(x)


def test_a_run_that_changes_the_models_mode_is_an_error(tmp_path):
    model = ModeSwitching().train()
    images, labels = learnable_set(10, 7)
    with pytest.raises(RuntimeError, match="mode"):
        runner.autoattack_suite.attacks(aa_settings())["apgd_ce"](model, core.to_float(images), labels)


def test_masking_checks_fire_on_a_masked_model_only(strong_results):
    assert strong_results["plain"]["clean"] > 90 and strong_results["masked"]["clean"] > 90  # both really classify
    plain = core.masking_checks(strong_results["plain"])
    masked = core.masking_checks(strong_results["masked"])
    assert not any(check["flag"] for check in plain.values()), plain
    for fired in ("input_gradients_nonzero", "large_eps_reaches_zero", "gradient_free_not_better",
                  "transfer_not_below_white_box"):
        assert masked[fired]["flag"], (fired, masked[fired])


# ------------------------------------------------------------------ the command line
@pytest.mark.slow
def test_strong_eval_quick_end_to_end(quick_run, fake_mnist, tmp_path):
    _, ckpt, _ = quick_run  # the session's quick models: this run only evaluates
    out = str(tmp_path / "strong.json")
    result = run("--quick", "--data-dir", fake_mnist, "--out", out, "--ckpt-dir", ckpt,
                 "--strong-eval", "--bn-eval", "batch", "--eval-n", "40")
    assert result.returncode == 0, result.stderr
    assert "strong evaluation" in result.stdout and "masking flags of C" in result.stdout
    with open(out) as f:
        report = json.load(f)
    assert report["settings"]["test_n"] == 40 and report["settings"]["bn_eval"] == "batch"
    assert report["eval"]["n_test"] == 40 and report["eval"]["bn"] == "batch"
    assert set(report["eval"]["bn_comparison"]["C"]) == set(core.BN_MODES)
    strong = report["strong_eval"]
    assert strong["n_test"] == 40 and strong["bn"] == "batch" and set(strong["models"]) == {"A", "B", "C"}
    assert {"pgd_ce", "pgd_cw", "apgd_ce", "apgd_t", "fab_t", "square", "generator_C"} <= set(strong["attacks"])
    assert "not the standard numbers" in strong["autoattack"]["version"]  # --quick's 5 iterations, 20 queries
    assert report["provenance"]["versions"]["pyautoattack"] == pyautoattack.__version__
    for entry in strong["models"].values():
        accuracy = entry["accuracy"]
        scored = strong["attacks"] + [f"transfer_{s}" for s in ("A'", "B'", "C'")]
        assert all(accuracy["robust"] <= accuracy[a] for a in scored)
        assert all(accuracy["autoattack"] <= accuracy[a] for a in runner.autoattack_suite.NAMES)
        assert isinstance(entry["autoattack_warnings"], list)
        assert set(entry["checks"]) == {"iterative_beats_single_step", "accuracy_falls_with_eps", "large_eps_reaches_zero",
                                        "transfer_not_below_white_box", "gradient_free_not_better", "input_gradients_nonzero"}
    assert len(list(pathlib.Path(ckpt).glob("autoattack_*.json"))) >= 3  # AutoAttack's state, one per model


# ------------------------------------------------------------------ the strong evaluation, resumed chunk by chunk
CHUNK_EPS = 0.14  # FGS fools about half of the tiny model's images: a count that chunking could get wrong


def chunked_settings(eval_batch=25):
    return aa_settings(CHUNK_EPS) | dict(strong_steps=3, strong_restarts=1, bn_eval="running", eval_batch=eval_batch,
                                strong_n=0, test_n=0)


@pytest.fixture(scope="module")
def chunk_models():
    return {"A": trained_mlp(0)}, {"A'": trained_mlp(1)}


def recorded_strong_evaluation(monkeypatch, cut_at=None):
    """core.strong_evaluation as strong_eval_report calls it, each call's image count and seed recorded;
    the call numbered `cut_at` is interrupted, as by Ctrl-C or the end of a session."""
    whole, calls = core.strong_evaluation, []

    def recorded(models, images, *args, **kwargs):
        calls.append((len(images), torch.initial_seed()))
        if len(calls) == cut_at:
            raise KeyboardInterrupt
        time.sleep(0.06)  # a chunk of the tiny model can take under 0.05 s, which its seconds round to 0.0
        return whole(models, images, *args, **kwargs)

    monkeypatch.setattr(core, "strong_evaluation", recorded)
    return calls


def strong_report(models, state_dir, settings=None):
    targets, surrogates = models
    images, labels = learnable_set(60, 7)
    return runner.evaluation.strong_eval_report(targets | surrogates, None, settings or chunked_settings(), images, labels,
                                                torch.device("cpu"), None, state_dir)


def test_interrupted_strong_evaluation_resumes_at_its_chunk_with_the_numbers_of_an_uninterrupted_run(
        chunk_models, tmp_path, monkeypatch, capsys):
    calls = recorded_strong_evaluation(monkeypatch)
    whole = strong_report(chunk_models, tmp_path / "whole")
    assert [n for n, _ in calls] == [25, 25, 10] and whole["resumed_images"] == 0
    assert capsys.readouterr().err.count("strong evaluation 60/60") == 1  # the progress line ends once
    (state,) = (tmp_path / "whole").glob("strong_*.json")
    assert whole["chunk_seconds"] == round(sum(c["seconds"] for c in json.loads(state.read_text()).values()), 1) > 0
    seeds = [seed for _, seed in calls]
    calls = recorded_strong_evaluation(monkeypatch, cut_at=3)
    with pytest.raises(KeyboardInterrupt):
        strong_report(chunk_models, tmp_path / "cut")
    calls = recorded_strong_evaluation(monkeypatch)
    capsys.readouterr()
    resumed = strong_report(chunk_models, tmp_path / "cut")
    assert "50 of 60 images already scored" in capsys.readouterr().err
    assert calls == [(10, seeds[2])]  # only the chunk that was cut, with the seed it had in the uninterrupted run
    assert resumed["resumed_images"] == 50 and resumed["models"] == whole["models"]


def test_chunks_add_up_to_the_counts_of_one_pass_over_the_images(chunk_models, tmp_path):
    """The attacks without a random start (clean, FGS) and the zero-gradient share, whose counts do not
    depend on how the images are cut: chunked, they are what one pass over all 60 images gives."""
    targets, surrogates = chunk_models
    images, labels = learnable_set(60, 7)
    one_pass = core.strong_evaluation(targets, images, labels, CHUNK_EPS, torch.device("cpu"),
                                      core.strong_attacks(CHUNK_EPS, 3, 1),
                                      surrogates, sweep_steps=3)["A"]
    chunked = strong_report(chunk_models, tmp_path)["models"]["A"]["accuracy"]
    assert {k: chunked[k] for k in ("clean", "fgs", "zero_gradient_percent")} == \
           {k: one_pass[k] for k in ("clean", "fgs", "zero_gradient_percent")}
    assert 0 < chunked["fgs"] < chunked["clean"]


def test_a_state_of_other_weights_settings_or_code_is_never_read(chunk_models, tmp_path, monkeypatch, capsys):
    strong_report(chunk_models, tmp_path)
    targets, surrogates = chunk_models
    moved = {"A'": trained_mlp(1)}
    with torch.no_grad():
        next(moved["A'"].parameters())[0, 0] += 1.0
    calls = recorded_strong_evaluation(monkeypatch)
    capsys.readouterr()
    images, labels = learnable_set(60, 7)
    for seed in (0, 1):  # two generators: their attack, then their weights
        torch.manual_seed(seed)
        assert runner.evaluation.strong_eval_report(targets | surrogates, core.G1(k=2), chunked_settings(), images, labels,
                                                    torch.device("cpu"), None, tmp_path)["resumed_images"] == 0
    assert strong_report((targets, moved), tmp_path)["resumed_images"] == 0
    assert "scored afresh" in capsys.readouterr().err  # beside the state files of the evaluations before
    assert strong_report(chunk_models, tmp_path, chunked_settings(eval_batch=30))["resumed_images"] == 0
    assert strong_report(chunk_models, tmp_path, chunked_settings() | {"bn_eval": "batch"})["resumed_images"] == 0
    other_code = runner.evaluation.strong_eval_code(torch.device("cpu"), None)[:-1] + ["another AutoAttack"]
    monkeypatch.setattr(runner.evaluation, "strong_eval_code", lambda device, autoattack: other_code)
    assert strong_report(chunk_models, tmp_path)["resumed_images"] == 0
    assert len(calls) == 3 * 5 + 2 and len(list(tmp_path.glob("strong_*.json"))) == 7


def test_chunks_are_the_batches_of_batch_statistics_and_their_counts_stay_exact():
    settings = chunked_settings(eval_batch=6000)
    assert runner.evaluation.strong_chunk(settings) == runner.evaluation.EXACT_CHUNK
    with pytest.raises(runner.errors.UserError, match="eval_batch to 5000"):
        runner.evaluation.strong_chunk(settings | {"bn_eval": "batch"})  # a chunk of other statistics would score otherwise
    assert runner.evaluation.strong_chunk(chunked_settings() | {"bn_eval": "batch"}) == 25


def test_a_chunk_added_by_another_run_of_the_same_evaluation_is_kept_and_not_scored_again(
        chunk_models, tmp_path, monkeypatch):
    """Two runs of one evaluation at once (a requeued job beside the one it replaces): the other run adds
    the last chunk while this one scores the second; this one keeps it, and never scores it itself."""
    strong_report(chunk_models, tmp_path / "whole")
    (whole_state,) = (tmp_path / "whole").glob("strong_*.json")
    last = json.loads(whole_state.read_text())["50"]
    path, whole, calls = None, core.strong_evaluation, []

    def beside(models, images, *args, **kwargs):
        calls.append(len(images))
        if len(calls) == 2:
            (state,) = (tmp_path / "both").glob("strong_*.json")
            runner.evaluation.add_chunk(state, "50", last, runner.evaluation.Expected(
                {"0": 25, "25": 25, "50": 10}, {"A"}, {"clean"}))
        return whole(models, images, *args, **kwargs)

    monkeypatch.setattr(core, "strong_evaluation", beside)
    report = strong_report(chunk_models, tmp_path / "both")
    assert calls == [25, 25] and set(json.loads(next((tmp_path / "both").glob("strong_*.json")).read_text())) == {
        "0", "25", "50"}
    assert report["resumed_images"] == 10  # the chunk the other run scored
    assert report["models"] == strong_report(chunk_models, tmp_path / "whole")["models"]


@pytest.mark.parametrize("damage", [
    {"0": {"n": 25}},                                                        # a chunk without its counts
    {"7": {"n": 25, "seconds": 1.0, "counts": {"A": {"clean": 25}}}},        # a chunk this evaluation never cuts
    {"50": {"n": 25, "seconds": 1.0, "counts": {"A": {"clean": 10}}}},       # the last chunk at another size
    {"0": {"n": 25, "seconds": 1.0, "counts": {"A": {"clean": 999}}}},       # more images right than scored
    {"0": {"n": 25, "seconds": 1.0, "counts": {}}},                          # no models
    {"0": {"n": "25", "seconds": 1.0, "counts": {"A": {"clean": 25}}}},      # a count as text
    {"0": {"n": 25, "seconds": 1.0, "counts": [25]}},                        # counts not per model
    {"0": {"n": 25, "seconds": 1.0, "counts": {"A": {"clean": 25}}},         # chunks of other attacks
     "25": {"n": 25, "seconds": 1.0, "counts": {"A": {"clean": 25, "fgs": 3}}}},
    {"0": {"n": 25, "seconds": 1.0, "counts": {"A": {"clean": 25, "robust": 3}}}},  # none of this evaluation's attacks
    [1, 2],
])
def test_a_state_that_is_not_this_evaluations_chunks_is_an_error_before_any_attack_and_left_as_it_is(
        chunk_models, tmp_path, monkeypatch, damage):
    strong_report(chunk_models, tmp_path)
    state, = tmp_path.glob("strong_*.json")
    state.write_text(json.dumps(damage))
    calls = recorded_strong_evaluation(monkeypatch)
    with pytest.raises(runner.errors.UserError, match=state.name):
        strong_report(chunk_models, tmp_path)
    assert json.loads(state.read_text()) == damage and calls == []


def test_a_strong_state_that_is_not_json_is_an_error_and_left_as_it_is(chunk_models, tmp_path):
    strong_report(chunk_models, tmp_path)
    state, = tmp_path.glob("strong_*.json")
    state.write_text('{"0": {"n": 25')  # cut off mid-write by another program: ours write atomically
    with pytest.raises(runner.errors.UserError, match=state.name):
        strong_report(chunk_models, tmp_path)
    assert state.read_text() == '{"0": {"n": 25'


def test_the_attacking_code_is_named_by_the_sources_the_process_loaded():
    sources = [pathlib.Path(core.__file__), pathlib.Path(runner.evaluation.__file__),
               pathlib.Path(runner.autoattack_suite.__file__)]
    assert runner.evaluation.ATTACKING_CODE == hashlib.sha1(b"".join(p.read_bytes() for p in sources)).hexdigest()


def test_under_batch_statistics_each_chunk_is_one_batch_of_eval_batch_images(tmp_path):
    """Scored with batch statistics, an image's score depends on the batch it is scored in: chunked,
    the counts are those of one pass in batches of eval_batch (clean, FGS: no random start)."""
    torch.manual_seed(0)
    targets = {"A": trained(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                          nn.Linear(4 * 28 * 28, 10)), 0, steps=30)}
    images, labels = learnable_set(60, 7)
    settings = chunked_settings(eval_batch=20) | {"bn_eval": "batch"}
    chunked = runner.evaluation.strong_eval_report(targets, None, settings, images, labels, torch.device("cpu"), None,
                                                   tmp_path)["models"]["A"]["accuracy"]
    by_batch = {size: core.strong_evaluation(targets, images, labels, CHUNK_EPS, torch.device("cpu"),
                                             core.strong_attacks(CHUNK_EPS, 3, 1), bn="batch", batch_size=size,
                                             sweep_steps=3)["A"] for size in (20, 60)}
    assert {k: chunked[k] for k in ("clean", "fgs")} == {k: by_batch[20][k] for k in ("clean", "fgs")}
    assert {k: by_batch[20][k] for k in ("clean", "fgs")} != {k: by_batch[60][k] for k in ("clean", "fgs")}


def test_a_strong_evaluation_in_batches_it_cannot_keep_is_refused_before_training(fake_mnist, tmp_path):
    result = run("--quick", "--data-dir", fake_mnist, "--out", str(tmp_path / "r.json"), "--ckpt-dir", str(tmp_path / "ck"),
                 "--models", "A", "--strong-eval", "--bn-eval", "batch", "--set", "eval_batch=6000")
    assert result.returncode == 2 and "eval_batch to 5000" in result.stderr, result.stderr
    assert not list((tmp_path / "ck").glob("*.pt"))


def test_a_cascade_state_is_named_by_its_images_and_its_batch(tmp_path):
    model = trained_mlp(0)
    (x, y), (other_x, other_y) = (learnable_set(20, seed) for seed in (7, 8))
    name = lambda images, labels, bn="running", batch=10: runner.autoattack_suite.state_file(
        tmp_path, model, aa_settings() | {"eval_batch": batch}, images, labels, bn, "cpu")
    assert name(x, y) != name(other_x, other_y)  # as many images, other ones
    assert name(x, y) == name(x, y)
    for bn in core.BN_MODES:  # AutoAttack seeds each batch's random starts alike; with batch statistics the batch sets them too
        assert name(x, y, bn) != name(x, y, bn, batch=20)


def test_state_files_keep_the_names_they_were_first_written_under(monkeypatch):
    """A user's state files resume only while their names stay: the names below are those the strong
    evaluation's and AutoAttack's state files had before runner.files.state_path named them. Fails if
    anything that goes into a name, or its order, changes."""
    monkeypatch.setattr(torch, "__version__", "2.0.0")
    monkeypatch.setattr(runner.autoattack_suite, "package", lambda: type("Package", (), {"__version__": "0.2.0"}))
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.arange(12.).view(3, 4) / 10)
        model.bias.copy_(torch.tensor([0.5, -0.5, 0.0]))
    images, labels = torch.arange(8.).view(2, 1, 2, 2) / 8, torch.tensor([1, 2])
    settings = dict(eps=0.3, seed=0, bn_eval="batch", eval_batch=64, strong_steps=100, strong_restarts=5, square_queries=5000)
    strong = runner.evaluation.strong_state_file("/d", {"A": model, "A'": model}, settings, {"pgd": 1, "fgs": 2}, images,
                                                 labels, ["code", "2.0.0", "cpu", "0.2.0"])
    assert strong.name == "strong_f2117f090980d1bb.json"
    assert runner.autoattack_suite.state_file("/d", model, settings, images, labels, "batch", "cpu").name == \
        "autoattack_6091fd85394ebbda.json"
