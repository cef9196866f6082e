"""Every place that scores an input crafted elsewhere scores only what the threat model allows: within
eps of its clean image in L-inf and in [0, 1], also where float16 or bfloat16 storage rounds a
perturbation past eps. The EAT set and a generator used as an attack project what they give; the
scoring functions (transfer, the paper's table with its black-box columns, the strong evaluation,
the runner's validation, the over-training curves, AutoAttack's cascade) refuse a batch that leaves
the threat model: each guard is made to fire here, and a guard that does not fire fails its test."""
import pytest
import torch
import torch.nn as nn

import core
import over_training
import runner.settings
import runner.validation

CPU = torch.device("cpu")
EPS = 0.3  # float16(0.3) = 0.30004883 and bfloat16(0.3) = 0.30078125: both round past eps
BF16_ABOVE_ONE = 1.0078125  # the bfloat16 number after 1: a generator's tanh that rounds up


def test_the_chosen_eps_rounds_past_itself_in_half_precision():
    assert torch.tensor(EPS).half().float() > EPS + 1e-6 and torch.tensor(EPS).bfloat16().float() > EPS + 1e-6


def uint8_images(n=64, seed=0):
    """Random 1x8x8 uint8 images with black and white pixels in each, so perturbations leave [0, 1] too."""
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    images[:, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    return images, torch.arange(n) % 10


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def assert_within_threat_model(x_adv, x, eps=EPS):
    assert x_adv.min() >= 0 and x_adv.max() <= 1, "leaves [0, 1]"
    assert (x_adv - x).abs().max() <= eps + 1e-6, f"{(x_adv - x).abs().max().item():.7f} from its clean image"


def away_from_grey(x):
    """The signs of a perturbation that pushes each pixel away from mid-grey: out of [0, 1] wherever it can."""
    return torch.where(x < 0.5, -1.0, 1.0)


# ----------------------------------------------------------------------------------- the EAT set

def test_static_set_projects_float16_deltas_that_round_past_eps_and_out_of_range():
    """Stored float16 differences of +-eps read back as +-0.30004883, and push black and white pixels
    out of [0, 1]: read, every image is within eps of its source and in [0, 1], and still moved by eps
    where the pixel range leaves room."""
    images, labels = uint8_images()
    x = core.to_float(images)
    deltas = torch.stack([EPS * away_from_grey(x), -EPS * away_from_grey(x), EPS * torch.ones_like(x)]).half()
    assert (deltas.float().abs() > EPS + 1e-6).all()
    eat = core.StaticAdversarialSet(images, labels, deltas, EPS)
    read = eat[torch.arange(len(eat))]
    sources = x.repeat(4, 1, 1, 1)
    assert_within_threat_model(read, sources)
    assert torch.equal(read[:len(x)], x), "the first quarter is the clean set"
    inward = -EPS * away_from_grey(x)  # towards grey: never clipped by the pixel range
    assert torch.allclose(read[2 * len(x):3 * len(x)] - x, inward, atol=1e-6), "projected onto the ball, not shrunk"


def test_eat_set_built_at_an_eps_that_rounds_up_in_float16_stays_within_eps():
    """FGS steps of exactly +-eps, stored as float16: without the projection on reading they lie
    0.30004883 from their sources."""
    images, labels = uint8_images()
    eat = core.build_eat_set(linear_model(), images, labels, EPS, CPU, batch_size=32, pgd_steps=2, precision="float32")
    read = eat[torch.arange(len(eat))]
    assert_within_threat_model(read, core.to_float(images).repeat(4, 1, 1, 1))


def overshooting_fgs(model, x, y, eps=EPS):
    """A step of 2 * eps towards grey: never clipped back into the ball by the pixel range."""
    return (x - 2 * eps * away_from_grey(x)).clamp(0, 1)


def test_eat_set_refuses_an_attack_that_leaves_the_ball(monkeypatch):
    images, labels = uint8_images()
    monkeypatch.setattr(core, "fgs", overshooting_fgs)
    with pytest.raises(ValueError, match="eps"):
        core.build_eat_set(linear_model(), images, labels, EPS, CPU, batch_size=32, pgd_steps=1)


# --------------------------------------------------------------------- a generator as an attack

class RoundedUpGenerator(nn.Module):
    """A generator whose output, +-1 in bfloat16 arithmetic, rounded to +-1.0078125 (as eps * tanh under
    bf16 can round past eps): each pixel pushed away from grey, out of [0, 1] where it can."""

    def inputs(self, x, y):
        return x

    def forward(self, x):
        return (BF16_ABOVE_ONE * away_from_grey(x)).bfloat16()


def percent_right_when_pushed(model, images, labels):
    """The model's accuracy in percent, rounded as the scorers round it, on x + eps * away_from_grey(x) in [0, 1]."""
    x = core.to_float(images)
    return round(100 * (model((x + EPS * away_from_grey(x)).clamp(0, 1)).argmax(1) == labels).float().mean().item(), 2)


def test_generator_attack_projects_an_output_that_rounds_past_one():
    x = core.to_float(uint8_images()[0])
    x_adv = core.generator_attack(RoundedUpGenerator(), x, None, EPS)
    assert_within_threat_model(x_adv, x)
    assert torch.equal(x_adv, (x + EPS * away_from_grey(x)).clamp(0, 1)), "x + eps * sign(G), clipped to [0, 1]"


def test_generator_scored_by_transfer_is_scored_on_the_projected_batch():
    """Table 5's scoring: the generator's attack is scored (not refused), on x + eps * sign(G) in [0, 1]."""
    images, labels = uint8_images()
    model = linear_model()
    G = RoundedUpGenerator()
    score = core.transfer_accuracy({"m": model}, lambda x, y: core.generator_attack(G, x, y, EPS), images, labels, EPS, CPU)
    assert score["m"] == percent_right_when_pushed(model, images, labels)


# ------------------------------------------------------------------------- transfer (Table 5)

@pytest.mark.parametrize("craft,message", [
    (lambda x, y: overshooting_fgs(None, x, y), "eps"),
    (lambda x, y: (x - (EPS * away_from_grey(x)).bfloat16().float()).clamp(0, 1), "eps"),  # eps stored in bf16
    (lambda x, y: (x - (EPS * away_from_grey(x)).half().float()).clamp(0, 1), "eps"),  # eps stored in float16
    (lambda x, y: x + EPS * away_from_grey(x), "range"),  # unclipped: past 0 and 1
    (lambda x, y: x + float("nan"), "NaN"),
], ids=["twice_eps", "bf16_perturbation", "float16_perturbation", "unclipped", "nan"])
def test_transfer_refuses_a_crafted_batch_outside_the_threat_model(craft, message):
    images, labels = uint8_images()
    with pytest.raises(ValueError, match=message):
        core.transfer_accuracy({"m": linear_model()}, craft, images, labels, EPS, CPU, batch_size=32)


# -------------------------------------------------- the paper's table: white-box and black-box columns

def overshooting_on(victim, attack):
    """`attack` as it is, but on `victim` it steps 2 * eps."""
    def craft(model, x, *args, **kwargs):
        return overshooting_fgs(model, x, None) if model is victim else attack(model, x, *args, **kwargs)
    return craft


@pytest.mark.parametrize("attack", ["fgs", "pgd"])
@pytest.mark.parametrize("crafted_on", ["target", "surrogate"])
def test_evaluation_table_refuses_an_attack_batch_outside_the_ball(monkeypatch, attack, crafted_on):
    """The black-box columns' batches (crafted on a surrogate) are checked as the white-box ones are."""
    images, labels = uint8_images(32)
    target, surrogate = linear_model(0), linear_model(1)
    monkeypatch.setattr(core, attack, overshooting_on(target if crafted_on == "target" else surrogate, getattr(core, attack)))
    with pytest.raises(ValueError, match="eps"):
        core.evaluate_table({"A": target}, {"A'": surrogate}, images, labels, EPS, CPU, pgd_steps=1)


# ------------------------------------------------------------------------- the strong evaluation

@pytest.mark.parametrize("crafted_on", ["target", "surrogate"])
def test_strong_evaluation_refuses_an_attack_or_transfer_batch_outside_the_ball(crafted_on):
    images, labels = uint8_images(32)
    target, surrogate = linear_model(0), linear_model(1)
    attacks = core.strong_attacks(EPS, steps=2, restarts=1)
    victim = target if crafted_on == "target" else surrogate
    attacks["pgd_ce"] = overshooting_on(victim, lambda m, x, y: core.pgd(m, x, y, EPS, steps=1))
    with pytest.raises(ValueError, match="eps"):
        core.strong_evaluation({"A": target}, images, labels, EPS, CPU, attacks, {"A'": surrogate}, sweep=(1.0,),
                               sweep_steps=1)


# --------------------------------------------------------------------------- the runner's scorers

VALIDATION = runner.settings.COMMON_SETTINGS | dict(eps=EPS, seed=0, eval_batch=32, pgd_steps=1, pgd_alpha=0.0, bn_eval="running")


def test_validation_scores_a_rounded_up_generator_on_the_projected_batch():
    """runner.validation.validate's generator column (C's G during training) through the same guards."""
    images, labels = uint8_images()
    D = linear_model()
    scores = runner.validation.validate(D, RoundedUpGenerator(), (images, labels), VALIDATION, CPU)
    assert scores["generator"] == percent_right_when_pushed(D, images, labels)


def test_over_training_scoring_refuses_a_batch_outside_the_ball():
    images, labels = uint8_images()
    with pytest.raises(ValueError, match="eps"):
        over_training.correct(linear_model(), overshooting_fgs, images, labels, EPS, CPU, 32)


def test_autoattack_cascade_output_is_checked_against_the_threat_model():
    """autoattack_suite.run scores what AutoAttack hands back only inside the threat model."""
    pytest.importorskip("pyautoattack")
    import runner.autoattack_suite

    class OvershootingAutoAttack:
        epsilon = EPS

        def run_standard_evaluation(self, x, y, batch_size, state_path=None):
            return overshooting_fgs(None, x, y), None

    x = core.to_float(uint8_images(8)[0])
    with pytest.raises(ValueError, match="eps"):
        runner.autoattack_suite.run(OvershootingAutoAttack(), linear_model(), x, torch.zeros(8, dtype=torch.long), 8)


# --------------------------------------------- one crafted batch, scored on every target alike

def random_in_ball(x, y):
    return (x + EPS * torch.empty_like(x).uniform_(-1, 1)).clamp(0, 1)


def test_transfer_crafts_once_per_batch_and_scores_every_target_on_it():
    """With a random craft (G2's noise), two copies of one model score alike only if they see one batch."""
    images, labels = uint8_images(64)
    calls = []

    def craft(x, y):
        calls.append(len(x))
        return random_in_ball(x, y)
    model = linear_model()
    torch.manual_seed(0)
    scores = core.transfer_accuracy({"m": model, "same_m": model}, craft, images, labels, EPS, CPU, batch_size=16)
    assert calls == [16] * 4
    assert scores["m"] == scores["same_m"]


def test_black_box_batches_are_crafted_once_per_surrogate_and_batch(monkeypatch):
    """evaluate_table: a surrogate's PGD (random start) runs once per batch, whatever the number of targets,
    and two copies of one target score alike on it."""
    images, labels = uint8_images(64)
    target, surrogate = linear_model(0), linear_model(1)
    on_surrogate, pgd = [], core.pgd

    def counted_pgd(model, *args, **kwargs):
        on_surrogate.extend([1] if model is surrogate else [])
        return pgd(model, *args, **kwargs)
    monkeypatch.setattr(core, "pgd", counted_pgd)
    torch.manual_seed(0)
    table = core.evaluate_table({"A": target, "same_A": target}, {"A'": surrogate}, images, labels, EPS, CPU,
                                batch_size=16, pgd_steps=1)
    assert len(on_surrogate) == 4
    assert table["A"]["pgd_A'"] == table["same_A"]["pgd_A'"]


class ModeRecordingGenerator(RoundedUpGenerator):
    def forward(self, x):
        self.modes = getattr(self, "modes", []) + [self.training]
        return super().forward(x)


def test_validation_scores_the_generator_in_eval_mode_and_gives_its_mode_back():
    images, labels = uint8_images()
    G = ModeRecordingGenerator().train()
    runner.validation.validate(linear_model(), G, (images, labels), VALIDATION, CPU)
    assert G.modes == [False, False] and G.training
