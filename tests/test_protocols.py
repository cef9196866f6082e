"""--protocol authors: each data set's resolved settings against the authors' files, every script end to
end on fake data, the pieces their code adds (D on every 5th minibatch, a fresh momentum buffer at the
drop, G's weight decay in the regulariser's direction, their networks), and protocols kept apart in
checkpoints and results while checkpoints older than the protocols still load."""
import json
import os
import signal

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cifar10
import cifar100
import core
import ensemble
import evaluate
import generators_study
import mnist
import over_training
import runner.checkpoints
import runner.cli
import runner.errors
import runner.provenance
import runner.settings
import runner.training
import svhn
from conftest import learnable_images, write_fake_mnist, write_fake_svhn
from test_training import smooth_problem

CPU = torch.device("cpu")
ROWS = {"A": "standard", "B": "pgd", "C": "advnet", "EAT": "eat"}

# ---------------------------------------------------------------- the authors' values, read from their files
# GitHub whxbergkamp/RobustDL_GAN; every file below is relative to the data set's folder (mnist/, svhn/,
# cifar10/); "run_*" are the argparse defaults of the scripts that launch each model, "train_*" the
# training files in adversarial_networks/. eps in [0, 1] units: theirs is in [-1, 1] units, twice ours.
EVERY_DATA_SET = dict(
    batch_size=64,           # run_*.py: '--batch-size', default=64
    iters=200_000,           # run_*.py: '--nsteps', default=200000 (minibatches: batch_idx)
    d_momentum=0.9,          # train_*.py: tf.train.MomentumOptimizer(..., momentum=0.9)
    d_fresh_momentum=True,   # train_*.py: each learning rate its own MomentumOptimizer (optimizer2, d_optimizer2, ...)
    d_lr_drop_factor=0.1,    # train_*.py: optimizer2 at learning_rate*0.1 (train_gan_*.py: learning_rate/10)
    gamma=-0.01,             # train_gan_*.py: g1 + g2 + gamma*(g2-g3)/float(g_step_size); run_gan_*.py: '--gamma', default=1E-2
    lam=1.0,                 # train_gan_*.py: d_loss = d_loss_real + d_loss_noise
    g_steps=5,               # train_gan_*.py: g_train_op ... g_train_op5 on each minibatch
    pgd_steps=10,            # run_*.py: '--pgd-iter', default=10
    pgd_alpha=0.0,           # train_pgd_*.py, black_box_*.py: step_size = epsilon*0.25 (0: eps / 4)
    pgd_train_clean=False,   # train_pgd_*.py: D's loss is the adversarial cross-entropy alone
    pgd_warmup_iters=0,      # train_pgd_*.py: one epsilon from the first step (MNIST's B departs: below)
    bn_eval="batch",         # black_box_*.py: get_discriminator(..., is_training=True)
    eval_batch=64,           # black_box_*.py: '--batch-size', default=64
    eat_bn="batch",          # ensemble_examples_wrapper*.py: the model built with is_training=True, batches of 64
    protocol="authors",
)
THEIRS = {
    "mnist": dict(
        common=dict(
            eps=0.3,            # run_*_mnist.py: '--epsilon', default=0.6
            train_from=5000,    # run_*_mnist.py: input_data.read_data_sets, tf.reshape(image, [55000, 28, 28, 1])
            test_n=9984,        # black_box_mnist.py: num_steps = int(test_size/batch_size), 156 x 64
            pixel_scale=255,    # the TF reader: numpy.multiply(images, 1.0 / 255.0)
            augment=False,      # no augmentation in mnist/
            d_net="paper",      # models/simple_cnn_mnist.py: discriminator is the paper's D1
            pgd_warmup_iters=1000,  # not theirs: ours, so that B does not die at the start (docs/protocols.md); B's
        ),                          # step alone reads it
        A=dict(d_lr=0.1, d_lr_drop_at=1.0, d_weight_decay=1e-4),   # run_standard_mnist.py: 0.1, '1E-4'; only train_op runs
        B=dict(d_lr=0.01, d_lr_drop_at=1.0, d_weight_decay=1e-4),  # run_pgd_mnist.py: 0.01, 1E-4; only train_op runs
        C=dict(d_lr=0.01,           # run_gan_mnist.py: '--learning-rate', default=0.01
               d_lr_drop_at=0.5,    # train_gan_mnist.py: if batch_idx<100000: ..._op else ..._op2
               d_every=5,           # train_gan_mnist.py: if batch_idx % 5 == 0: ... d_train_and_restore_op
               d_weight_decay=1e-5, g_weight_decay=1e-5,  # run_gan_mnist.py: '--weight-decay', default=1E-5, D and G
               g_opt="sgd", g_lr=0.01, g_momentum=0.9,    # train_gan_mnist.py: MomentumOptimizer(learning_rate=0.01, momentum=0.9)
               fd_h=0.001,          # train_gan_mnist.py: g_step_size = learning_rate/10
               g_net="authors",     # models/simple_cnn_mnist.py: generator
               g_width=64),         # run_gan_mnist.py: '--gf-dim', default=64
        EAT=dict(d_lr=0.1, d_lr_drop_at=0.5, d_weight_decay=1e-4),  # run_eat_mnist.py: 0.1, 1E-4; train_eat_standard_mnist.py:
    ),                                                              # if batch_idx<100000: train_op else train_op2
    "svhn": dict(
        common=dict(
            eps=0.05,           # run_*_svhn.py: '--epsilon', default=0.1
            pixel_scale=256,    # run_*_svhn.py: mat_content['X'].astype(np.float32)/256.0
            extra_n=80_000,     # run_*_svhn.py: idx = np.random.choice(531131, 80000)
            test_n=25984,       # run_attacks_black_box_svhn.py: int(num_test_examples/batch_size), 406 x 64
            augment=False,      # no augmentation in svhn/
            d_net="authors",    # models/resnet18.py: resnet_v1 (no BN-ReLU after the stem, one after the last stage)
        ),
        A=dict(d_lr=0.01, d_lr_drop_at=0.5, d_lr_drop2_at=1.0, d_weight_decay=1e-4),  # run_standard_svhn.py; train_standard_svhn.py
        B=dict(d_lr=0.01, d_lr_drop_at=0.5, d_lr_drop2_at=1.0, d_weight_decay=1e-4),  # run_pgd_svhn.py; train_pgd_svhn.py
        C=dict(d_lr=0.01, d_lr_drop_at=0.5, d_every=1,              # run_gan_svhn.py; train_gan_svhn.py: no % 5
               d_weight_decay=1e-4, g_weight_decay=1e-4,            # run_gan_svhn.py: '--weight-decay', default=1E-4
               g_opt="sgd", g_lr=0.01,                              # train_gan_svhn.py: MomentumOptimizer(learning_rate=0.01, ...)
               fd_h=0.001,                                          # g_step_size = learning_rate/10
               g_net="authors", g_width=64),                        # models/resnet18.py: generator; '--gf-dim', default=64
        EAT=dict(d_lr=0.01, d_lr_drop_at=0.5, d_weight_decay=1e-4),  # run_eat_svhn.py: '--learning-rate', default=0.01
    ),
    "cifar10": dict(
        common=dict(
            eps=8 / 256,        # run_*_cifar10.py: '--epsilon', default=0.0625 (# 0.0625=8/256*2)
            augment=True,       # train_*_cifar10.py: resize_image_with_crop_or_pad, random_crop, random_flip_left_right
            augment_pad=2,      # ... resize_image_with_crop_or_pad(x, 32+4, 32+4): 2 px a side
            pixel_scale=255,    # adversarial_networks/inputs.py, get_input_cifar10: tf.cast(image, tf.float32)/255.
            test_n=9984,        # run_attacks_black_box_cifar10.py: int(test_size/batch_size) x 64
            d_net="paper",      # models/resnet18_2.py: resnet_v1 is D2
            n_classes=10,
        ),
        A=dict(d_lr=0.1, d_lr_drop_at=0.5, d_lr_drop2_at=0.75, d_lr_drop2_factor=0.01,  # train_standard_cifar10.py:
               d_weight_decay=1e-4),   # batch_idx<100000, elif <150000 (optimizer2), else optimizer3 (learning_rate*0.01)
        B=dict(d_lr=0.1, d_lr_drop_at=0.5, d_lr_drop2_at=1.0, d_weight_decay=1e-4),  # run_pgd_cifar10.py; train_pgd_cifar10.py
                                        # ('--weight-decay', default=1E-4; their README's command passes 1E-5)
        C=dict(d_lr=0.1, d_lr_drop_at=0.5, d_lr_drop2_at=1.0, d_every=1,  # run_gan_cifar10.py: 0.1; train_gan_cifar10.py
               d_weight_decay=1e-5, g_weight_decay=1e-5,  # run_gan_cifar10.py: '--weight-decay', default=1E-5 (README: 1E-5)
               g_opt="adam", g_lr=0.002, g_beta1=0.5, g_beta2=0.999,  # AdamOptimizer(learning_rate=0.002, beta1=0.5, beta2=0.999)
               fd_h=0.01,                                 # g_step_size = learning_rate/10
               g_net="authors", g_width=64),              # models/resnet18_2.py: generator; '--gf-dim', default=64
        EAT=dict(d_lr=0.1, d_lr_drop_at=0.5, d_lr_drop2_at=0.75, d_lr_drop2_factor=0.01,  # run_eat_cifar10.py;
                 d_weight_decay=1e-4),                                                   # train_eat_standard_cifar10.py
    ),
}
# No authors' code: Fashion-MNIST takes MNIST's values (eps 0.1, the repository's), CIFAR-100 CIFAR-10's
THEIRS["fashion_mnist"] = THEIRS["mnist"] | {"common": THEIRS["mnist"]["common"] | {"eps": 0.1,
                                                                                   "pgd_warmup_iters": 0}}  # B trains at 0.1
THEIRS["cifar100"] = THEIRS["cifar10"] | {"common": THEIRS["cifar10"]["common"] | {"n_classes": 100}}
CONFIGURE = {"mnist": mnist.configure, "fashion_mnist": lambda args: mnist.configure(args, fashion=True),
             "svhn": svhn.configure, "cifar10": cifar10.configure, "cifar100": cifar100.configure}


def parse(*argv):
    return runner.cli.experiment_parser("").parse_args(list(argv))


@pytest.mark.parametrize("dataset", THEIRS)
def test_resolved_authors_settings_are_their_files(dataset):
    name, settings, _ = CONFIGURE[dataset](parse("--protocol", "authors"))
    assert name == f"{dataset}_authors" and settings["protocol"] == "authors"
    extrapolated = dataset in ("fashion_mnist", "cifar100")
    assert ("extrapolated" in settings["protocol_source"]) == extrapolated, settings["protocol_source"]
    theirs = THEIRS[dataset]
    for row, method in ROWS.items():
        model = runner.settings.model_settings(settings, method)
        expected = EVERY_DATA_SET | theirs["common"] | theirs[row]
        wrong = {k: (model[k], v) for k, v in expected.items() if model[k] != v}
        assert not wrong, f"{dataset} {row}: ours, theirs: {wrong}"


@pytest.mark.parametrize("dataset", THEIRS)
def test_the_paper_protocol_has_no_model_overrides(dataset):
    name, settings, _ = CONFIGURE[dataset](parse())
    assert name == dataset and settings["protocol"] == "paper" and settings["model_overrides"] == {}
    assert all(runner.settings.model_settings(settings, m) == {k: v for k, v in settings.items() if k != "model_overrides"}
               for m in ROWS.values())


def test_a_later_setting_is_every_models():
    _, settings, _ = mnist.configure(parse("--protocol", "authors", "--set", "d_lr=0.05", "--set", "d_every=2"))
    for method in ROWS.values():
        assert runner.settings.model_settings(settings, method)["d_lr"] == 0.05
    assert runner.settings.model_settings(settings, "advnet")["d_every"] == 2
    assert runner.settings.model_settings(settings, "advnet")["g_lr"] == 0.01  # what --set left alone stays C's own


@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize("dataset", THEIRS)
def test_the_authors_protocol_trains_every_model_in_float32(dataset, native_bf16, monkeypatch):
    monkeypatch.setattr(core, "native_bf16", lambda device: native_bf16)  # a CPU with AVX-512 BF16 or AMX, or without
    _, authors, _ = CONFIGURE[dataset](parse("--protocol", "authors"))
    for method in ROWS.values():
        precision = runner.settings.model_settings(authors, method)["precision"]
        assert precision == "float32" and core.amp_dtype(CPU, precision) is None, (method, precision)
    assert runner.provenance.provenance(CPU, "", authors["precision"])["precision"] == "float32"
    _, forced, _ = CONFIGURE[dataset](parse("--protocol", "authors", "--set", "precision=bf16"))
    assert {runner.settings.model_settings(forced, m)["precision"] for m in ROWS.values()} == {"bf16"}
    _, paper, _ = CONFIGURE[dataset](parse())
    assert paper["precision"] == "auto" and (core.amp_dtype(CPU, paper["precision"]) is torch.bfloat16) == native_bf16


def test_cifar10_b_with_their_readmes_weight_decay_is_a_set_away():
    """Their run_pgd_cifar10.py defaults to 1E-4 (the protocol's B); their README's command passes 1E-5, as
    the paper's text does: `--set d_weight_decay=1e-5` trains that B, differing from the protocol's in it alone."""
    _, default, _ = cifar10.configure(parse("--protocol", "authors"))
    _, variant, _ = cifar10.configure(parse("--protocol", "authors", "--set", "d_weight_decay=1e-5"))
    assert runner.settings.model_settings(variant, "pgd")["d_weight_decay"] == 1e-5
    theirs, readme = (json.loads(runner.settings.fingerprint(s, "pgd", 0)) for s in (default, variant))
    assert {k for k in theirs | readme if theirs.get(k) != readme.get(k)} == {"d_weight_decay"}


def test_learning_rate_drops_of_cifar10_a_counted_in_minibatches():
    _, settings, _ = cifar10.configure(parse("--protocol", "authors"))
    a = runner.settings.model_settings(settings, "standard")
    lr = {it: runner.settings.lr_at(it, a) for it in (0, 99_999, 100_000, 149_999, 150_000, 199_999)}
    assert lr == pytest.approx({0: 0.1, 99_999: 0.1, 100_000: 0.01, 149_999: 0.01, 150_000: 0.001, 199_999: 0.001})
    c = runner.settings.model_settings(settings, "advnet")
    assert runner.settings.lr_at(199_999, c) == pytest.approx(0.01)  # C: one drop only


# ---------------------------------------------------------------- fingerprints: protocols apart, old checkpoints still load
# What the code before the protocols wrote (commit 401b56e): the fingerprints of `mnist.py --quick`'s A
# and of `mnist.py --fashion --iters 1000 --set g_width=8`'s C (checkpoints/precision_study/float32/seed0/C.pt)
OLD_QUICK_A = ('{"augment": false, "batch_size": 16, "d_lr": 0.01, "d_lr_drop_at": 1.0, "d_lr_drop_factor": 0.1, '
               '"d_momentum": 0.9, "d_weight_decay": 0.001, "eps": 0.3, "fd_h": 0.0, "g_beta1": 0.5, "g_beta2": 0.999, '
               '"g_lr": 0.002, "g_momentum": 0.9, "g_opt": "adam", "g_steps": 5, "g_width": 4, "gamma": 0.01, "hvp": "fd", '
               '"iters": 10, "lam": 1.0, "pgd_alpha": 0.0, "pgd_steps": 5, "pgd_train_clean": false, "seed": 0, '
               '"method": "standard", "model_seed": 0}')
OLD_FASHION_C = ('{"augment": false, "batch_size": 64, "d_lr": 0.01, "d_lr_drop_at": 1.0, "d_lr_drop_factor": 0.1, '
                 '"d_momentum": 0.9, "d_weight_decay": 0.001, "eps": 0.1, "fd_h": 0.0, "g_beta1": 0.5, "g_beta2": 0.999, '
                 '"g_lr": 0.002, "g_momentum": 0.9, "g_opt": "adam", "g_steps": 5, "g_width": 8, "gamma": 0.01, '
                 '"hvp": "fd", "iters": 1000, "lam": 1.0, "pgd_alpha": 0.0, "pgd_steps": 10, "pgd_train_clean": false, '
                 '"seed": 0, "method": "advnet", "model_seed": 0}')


def test_paper_fingerprints_are_those_written_before_the_protocols():
    _, quick, _ = mnist.configure(parse("--quick"))
    assert runner.settings.fingerprint(quick, "standard", 0) == OLD_QUICK_A
    _, fashion, _ = mnist.configure(parse("--iters", "1000", "--set", "g_width=8"), fashion=True)
    assert runner.settings.fingerprint(fashion, "advnet", 0) == OLD_FASHION_C
    _, authors, _ = mnist.configure(parse("--quick", "--protocol", "authors"))
    assert json.loads(runner.settings.fingerprint(authors, "standard", 0))["protocol"] == "authors"


def tiny_mnist(n=64):
    y = torch.arange(n) % 10
    return torch.from_numpy(learnable_images(y.numpy())).unsqueeze(1), y


def train(path, settings, method="standard", hook=None):
    torch.manual_seed(0)
    images, labels = tiny_mnist()
    D, G = mnist.build_D(settings), mnist.build_G(runner.settings.model_settings(settings, method))
    batches = core.Batches(images, labels, settings["batch_size"], seed=0, device=CPU)
    source = batches if hook is None else (lambda it: hook(it, batches))
    return D, runner.training.train_model(method, method, 0, D, G, lambda: source, settings, CPU, str(path))


def interrupt_at(stop_it):
    def hook(it, batches):
        if it == stop_it:
            os.kill(os.getpid(), signal.SIGINT)
        return batches(it)
    return hook


def test_a_checkpoint_written_before_the_protocols_resumes_and_loads(tmp_path):
    _, settings, _ = mnist.configure(parse("--quick", "--set", "ckpt_minutes=0"))
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "A.pt", settings, hook=interrupt_at(4))
    ckpt = core.load_checkpoint(str(tmp_path / "A.pt"))
    ckpt["fingerprint"] = OLD_QUICK_A  # as the code before the protocols wrote it
    core.save_checkpoint(str(tmp_path / "A.pt"), ckpt)
    _, record = train(tmp_path / "A.pt", settings)
    assert record["iters_done"] == 10 and [s["from_iter"] for s in record["sessions"]] == [0, 5]
    args = evaluate.parse_args([str(tmp_path / "A.pt"), "--dataset", "mnist"])
    trained = json.loads(OLD_QUICK_A)
    method = trained.pop("method")
    trained.pop("model_seed")
    scored = evaluate.trained_settings(mnist, mnist.AUTHORS, trained, method, args)
    assert scored["protocol"] == "paper" and scored["bn_eval"] == "running" and scored["d_lr"] == 0.01


@pytest.mark.parametrize("method, override, own", [("pgd", "pgd_warmup_iters=0", 1000), ("advnet", "d_every=1", 5)])
def test_a_models_neutral_values_are_scored_as_trained_not_as_its_protocols_row(method, override, own):
    key, value = override.split("=")
    args = evaluate.parse_args(["C.pt", "--dataset", "mnist"])
    for argv, expected in ((["--set", override], int(value)), ([], own)):
        _, settings, _ = mnist.configure(parse("--protocol", "authors", *argv))
        trained = json.loads(runner.settings.fingerprint(settings, method, 0))
        trained.pop("method"), trained.pop("model_seed")
        assert evaluate.trained_settings(mnist, mnist.AUTHORS, trained, method, args)[key] == expected


def test_a_paper_protocol_b_trained_without_the_warmup_is_refused_and_loads_when_asked(tmp_path):
    _, without, _ = mnist.configure(parse("--quick", "--set", "pgd_warmup_iters=0"))
    _, default, _ = mnist.configure(parse("--quick"))
    path = tmp_path / "B.pt"
    train(path, without, "pgd")
    with pytest.raises(runner.errors.UserError, match="pgd_warmup_iters 0 against 1000"):
        runner.checkpoints.checked_checkpoint(str(path), default, "pgd", 0)
    assert runner.checkpoints.checked_checkpoint(str(path), without, "pgd", 0)["record"]["iters_done"] == without["iters"]
    trained = json.loads(runner.settings.fingerprint(without, "pgd", 0))
    trained.pop("method"), trained.pop("model_seed")
    args = evaluate.parse_args(["B.pt", "--dataset", "mnist"])
    assert evaluate.trained_settings(mnist, mnist.AUTHORS, trained, "pgd", args)["pgd_warmup_iters"] == 0


def test_a_checkpoint_of_one_protocol_never_resumes_under_the_other(tmp_path):
    _, paper, _ = mnist.configure(parse("--quick"))
    _, authors, _ = mnist.configure(parse("--quick", "--protocol", "authors"))
    for first, second in ((paper, authors), (authors, paper)):
        path = tmp_path / f"{first['protocol']}.pt"
        train(path, first)
        with pytest.raises(runner.errors.UserError, match="other settings"):
            train(path, second)


# ---------------------------------------------------------------- the loop: D on every 5th minibatch, fresh momentum
def counted_c_run(monkeypatch, tmp_path, settings, stop_it=None):
    """Trains C, counting G steps and D steps, and the iteration and D learning rate of each D step."""
    counts = {"g": 0, "d": []}
    step, g_step, d_grads = core.adversarial_network_step, core.generator_step, core.discriminator_grads
    now = {}

    def counting_step(D, G, opt_D, *args):
        now["lr"] = float(opt_D.param_groups[0]["lr"])
        return step(D, G, opt_D, *args)

    def counting_g(*args, **kwargs):
        counts["g"] += 1
        return g_step(*args, **kwargs)

    def counting_d(*args, **kwargs):
        counts["d"].append((now["it"], now["lr"]))
        return d_grads(*args, **kwargs)

    def hook(it, batches):
        now["it"] = it
        if it == stop_it:
            os.kill(os.getpid(), signal.SIGINT)
        return batches(it)
    with monkeypatch.context() as patch:
        patch.setattr(core, "adversarial_network_step", counting_step)
        patch.setattr(core, "generator_step", counting_g)
        patch.setattr(core, "discriminator_grads", counting_d)
        try:
            _, record = train(tmp_path / "C.pt", settings, "advnet", hook)
        except KeyboardInterrupt:
            record = None
    return counts, record


def test_d_steps_on_every_5th_minibatch_after_its_g_steps_and_across_a_resume(monkeypatch, tmp_path):
    _, settings, _ = mnist.configure(parse("--quick", "--protocol", "authors", "--iters", "23", "--set", "ckpt_minutes=0"))
    c = runner.settings.model_settings(settings, "advnet")
    assert c["d_every"] == 5 and c["d_lr_drop_at"] == 0.5 and c["d_lr"] == 0.01
    first, _ = counted_c_run(monkeypatch, tmp_path, settings, stop_it=12)  # stops after minibatch 12, resumes at 13
    second, record = counted_c_run(monkeypatch, tmp_path, settings)
    assert record["iters_done"] == 23 and [s["from_iter"] for s in record["sessions"]] == [0, 13]
    assert first["g"] + second["g"] == 5 * 23  # 5 G steps on every minibatch
    d_steps = first["d"] + second["d"]  # minibatches 0, 5, ..., 20; the drop at minibatch 11 = int(0.5 * 23)
    assert [it for it, _ in d_steps] == [0, 5, 10, 15, 20]
    assert [lr for _, lr in d_steps] == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001])


# ---------------------------------------------------------------- B's warm-up of its training radius (not theirs)
def test_warmup_eps_grows_linearly_to_eps_then_stays():
    assert [core.warmup_eps(0.3, it, 4) for it in range(6)] == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3, 0.3])
    assert core.warmup_eps(0.3, 0, 0) == 0.3
    for bad in ((8, 0, 4), (0.3, -1, 4), (0.3, 0, 2.5)):
        with pytest.raises(ValueError):
            core.warmup_eps(*bad)


def test_b_trains_at_the_warmups_radius_across_a_resume(monkeypatch, tmp_path):
    _, settings, _ = mnist.configure(parse("--quick", "--protocol", "authors", "--set", "pgd_warmup_iters=5",
                                           "--set", "ckpt_minutes=0", "--set", "log_every=2"))  # 10 iterations, 5 ramp
    radii, step = [], core.pgd_training_step

    def recording_step(D, opt_D, x, y, eps, alpha, *args):
        radii.append((eps, alpha))
        return step(D, opt_D, x, y, eps, alpha, *args)
    monkeypatch.setattr(core, "pgd_training_step", recording_step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "B.pt", settings, "pgd", interrupt_at(3))  # stops after minibatch 3, resumes at 4
    _, record = train(tmp_path / "B.pt", settings, "pgd")
    assert [s["from_iter"] for s in record["sessions"]] == [0, 4]
    eps = [0.06, 0.12, 0.18, 0.24, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    assert radii == pytest.approx([(e, e / 4) for e in eps])
    assert [h.get("eps") for h in record["history"]] == pytest.approx([0.12, 0.24, None, None, None])
    step, _ = core.make_step("pgd", mnist.build_D(settings), settings=core.step_settings(settings))
    with pytest.raises(ValueError, match="outside"):
        step(*tiny_mnist(4), eps=0.5)  # wider than the settings' 0.3


@pytest.mark.parametrize("protocol", ["paper", "authors"])
def test_the_warmup_is_mnists_b_alone_and_earlier_checkpoints_keep_their_fingerprints(protocol):
    _, mnists, _ = mnist.configure(parse("--protocol", protocol))
    _, everyone, _ = mnist.configure(parse("--protocol", protocol, "--set", "pgd_warmup_iters=100"))
    for method in ("standard", "advnet", "eat"):  # trained before the warm-up existed: they still load
        assert runner.settings.fingerprint(everyone, method, 0) == runner.settings.fingerprint(mnists, method, 0)
        assert "pgd_warmup_iters" not in runner.settings.fingerprint(mnists, method, 0)
    assert json.loads(runner.settings.fingerprint(mnists, "pgd", 0))["pgd_warmup_iters"] == 1000
    _, fashion, _ = mnist.configure(parse("--protocol", protocol), fashion=True)
    assert "pgd_warmup_iters" not in runner.settings.fingerprint(fashion, "pgd", 0)


def dead_d1(settings):
    """D1 with every ReLU of its second convolution dead and a zero output bias: 1/10 for every class."""
    D = core.D1()
    with torch.no_grad():
        D.conv2.bias.fill_(-100.0)
        D.fc.bias.zero_()
    return D


@pytest.mark.parametrize("dead", [True, False])
def test_a_model_stuck_at_chance_is_named_once(dead, monkeypatch, tmp_path, capsys):
    _, settings, _ = mnist.configure(parse("--quick", "--iters", "600", "--set", "log_every=100"))
    if dead:
        monkeypatch.setattr(mnist, "build_D", dead_d1)
    train(tmp_path / "A.pt", settings)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "sat at ln 10 = 2.303" in line]
    assert len(warnings) == (1 if dead else 0), warnings


def test_the_stuck_warning_asks_a_warmed_up_b_for_a_longer_warmup():
    def remedy(method, warmup):
        return runner.training.stuck_warning("B", method, 10, warmup).rpartition("afresh ")[2]
    assert remedy("pgd", 0) == "with its radius warmed up (--set pgd_warmup_iters=1000)"
    assert remedy("pgd", 1000) == "with a longer warm-up of its radius (--set pgd_warmup_iters=2000)"
    assert remedy("standard", 1000) == "with a smaller learning rate"


def test_stuck_needs_every_cross_entropy_at_chance_for_500_iterations():
    at_chance = [{"iter": i, "loss_clean": 2.30, "loss_adv": 2.305, "loss": 4.6} for i in range(100, 1001, 100)]
    assert runner.training.stuck_at_chance(at_chance, 10)
    assert not runner.training.stuck_at_chance(at_chance[:4], 10)  # 400 iterations
    assert not runner.training.stuck_at_chance(at_chance, 100)
    for at in (-1, -3):  # the last entry, or one before it within the 500 iterations
        moved = [dict(h) for h in at_chance]
        moved[at]["loss_adv"] = 2.1
        assert not runner.training.stuck_at_chance(moved, 10)
    svhn_frequencies = [{"iter": i, "loss": 2.236} for i in range(100, 601, 100)]  # a dead D's loss on SVHN's labels
    assert runner.training.stuck_at_chance(svhn_frequencies, 10)
    assert runner.training.stuck_at_chance([{"iter": 500, "loss": 2.3026}], 10)  # A reports its loss alone


def test_fresh_momentum_buffer_is_the_steps_gradient():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    opt = core.make_optimizer("sgd", [w], 0.1, momentum=0.9)
    for _ in range(3):
        w.grad = torch.randn(5)
        opt.step()
    core.reset_momentum(opt)
    before, w.grad = w.detach().clone(), torch.randn(5)
    opt.step()
    assert torch.allclose(w.detach(), before - 0.1 * w.grad, atol=1e-7)  # nothing of the earlier steps' momentum


@pytest.mark.parametrize("stop_it, resets", [(None, [3]), (2, [3]), (3, [])])
def test_momentum_is_reset_at_the_drop_only_not_at_a_resume(stop_it, resets, monkeypatch, tmp_path):
    """A run of 6 with D's drop at minibatch 3: uninterrupted, resumed exactly at the drop, resumed after it."""
    _, settings, _ = mnist.configure(parse("--quick", "--protocol", "authors", "--iters", "6",
                                           "--set", "d_lr_drop_at=0.5", "--set", "ckpt_minutes=0"))
    next_it, at, reset = [0], [], core.reset_momentum
    monkeypatch.setattr(core, "reset_momentum", lambda opt: (at.append(next_it[0]), reset(opt)))

    def hook(it, batches):
        next_it[0] = it + 1
        if it == stop_it:
            os.kill(os.getpid(), signal.SIGINT)
        return batches(it)
    if stop_it is not None:
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path / "A.pt", settings, hook=hook)
        next_it[0], stop_it = stop_it + 1, None
        at.clear()
    train(tmp_path / "A.pt", settings, hook=hook)
    assert at == resets


# ---------------------------------------------------------------- G's weight decay, in its optimiser and the regulariser
def test_g_weight_decay_enters_the_regularisers_direction():
    """As the authors' code: phi' = phi - h grad_phi(g_loss + g_decay), with g_loss = -CE_adv and g_decay =
    wd/2 times the squared kernels (not biases), and D's gradient is then built from CE_adv at phi'."""
    D, G, x, y = smooth_problem()
    eps, gamma, h, wd = 0.3, 1.0, 1e-3, 0.5
    ours = core.discriminator_grads(D, G, x, x, y, eps, gamma=gamma, h=h, g_weight_decay=wd)[0]
    without = core.discriminator_grads(D, G, x, x, y, eps, gamma=gamma, h=h)[0]

    d_params, g_named = list(D.parameters()), dict(G.named_parameters())
    ce = lambda phi: F.cross_entropy(D(x + eps * torch.func.functional_call(G, phi, (x,))), y)
    g_decay = wd / 2 * G.a.weight.pow(2).sum()  # SmoothG's one kernel; its bias is not decayed
    g_grads = torch.autograd.grad(-ce(g_named) + g_decay, list(g_named.values()))
    ahead = {name: p.detach() - h * g for (name, p), g in zip(g_named.items(), g_grads)}
    g_clean = torch.autograd.grad(F.cross_entropy(D(x), y), d_params)
    g_adv = torch.autograd.grad(ce(g_named), d_params)
    g_ahead = torch.autograd.grad(ce(ahead), d_params)
    theirs = [c + a + gamma * (b - a) / h for c, a, b in zip(g_clean, g_adv, g_ahead)]
    assert all(torch.allclose(o, t, rtol=1e-9, atol=1e-12) for o, t in zip(ours, theirs))
    assert max((o - w).abs().max() for o, w in zip(ours, without)) > 1e-3, "the decay must matter for the test to mean anything"


def test_g_weight_decay_in_the_exact_hessian_vector_product_too():
    D, G, x, y = smooth_problem()
    exact = core.discriminator_grads(D, G, x, x, y, 0.3, gamma=1.0, hvp="exact", g_weight_decay=0.5)[0]
    fd = core.discriminator_grads(D, G, x, x, y, 0.3, gamma=1.0, h=1e-6, g_weight_decay=0.5)[0]
    plain = core.discriminator_grads(D, G, x, x, y, 0.3, gamma=1.0, hvp="exact")[0]
    error = sum((a - b).norm() for a, b in zip(exact, fd)) / sum((a - b).norm() for a, b in zip(exact, plain))
    assert error < 1e-3, error


@pytest.mark.parametrize("g_opt", ["sgd", "adam"])
def test_g_weight_decay_decays_gs_kernels_only(g_opt):
    _, settings, _ = mnist.configure(parse("--quick", "--protocol", "authors"))
    c = runner.settings.model_settings(settings, "advnet") | {"g_opt": g_opt}
    D, G = mnist.build_D(c), mnist.build_G(c)
    opt_G = core.make_step("advnet", D, G, core.step_settings(c))[1]["opt_G"]
    decay = {id(p): group["weight_decay"] for group in opt_G.param_groups for p in group["params"]}
    assert all(decay[id(p)] == (1e-5 if p.dim() > 1 else 0.0) for p in G.parameters())
    _, paper, _ = mnist.configure(parse("--quick"))
    assert len(core.make_step("advnet", D, G, core.step_settings(paper))[1]["opt_G"].param_groups) == 1  # as in older checkpoints


# ---------------------------------------------------------------- their networks, their inputs, their EAT set
def test_their_mnist_generator_is_their_layers():
    """models/simple_cnn_mnist.py, generator: conv 5x5 s2 (ngf) - BN - ReLU, conv 5x5 s2 (2 ngf) - BN - ReLU,
    deconv 5x5 s2 (ngf, no bias) - BN - ReLU, deconv 5x5 s2 (c_dim, no bias) - tanh; BN eps 1e-3."""
    G = core.MnistG(k=64, channels=1)
    shapes = [tuple(p.shape) for p in G.parameters() if p.dim() > 1]
    assert shapes == [(64, 1, 5, 5), (128, 64, 5, 5), (128, 64, 5, 5), (64, 1, 5, 5)]  # ConvTranspose: (in, out, ...)
    biases = [m.bias is not None for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert biases == [True, True, False, False]
    assert [m.eps for m in G.modules() if isinstance(m, nn.BatchNorm2d)] == [1e-3] * 3
    out = G(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 1, 28, 28) and out.abs().max() <= 1


def test_their_svhn_d_and_g1():
    D = core.SvhnD()
    assert isinstance(D.features[0], nn.Conv2d) and isinstance(D.features[1], core.ResidualBlock)  # no BN-ReLU after the stem
    assert isinstance(D.features[-2], nn.BatchNorm2d) and isinstance(D.features[-1], nn.ReLU)  # one after the last stage
    assert D(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    G = core.AuthorsG1(k=4, channels=3)
    assert [m.out_channels for m in G.encoder.modules() if isinstance(m, nn.Conv2d)] == [4, 8, 16]  # k, 2k, 4k
    first = G.decoder.net[0]
    assert first.conv1.in_channels == 16 and isinstance(first.shortcut, nn.Sequential)  # projected, 4k -> 4k
    assert G(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_svhn_pixels_over_256_inside_the_networks():
    """Images and eps stay pixel/255, what every attack and RobustBench feed; the networks read pixel/256."""
    _, settings, _ = svhn.configure(parse("--quick", "--protocol", "authors"))
    torch.manual_seed(0)
    D = svhn.build_D(settings).eval()
    torch.manual_seed(0)
    D255 = svhn.build_D(settings | {"pixel_scale": 255}).eval()
    pixels = torch.randint(0, 256, (4, 3, 32, 32))
    with torch.no_grad():
        assert torch.allclose(D(pixels / 255.0), D255(pixels / 256.0), atol=1e-6)
        assert not torch.allclose(D(pixels / 255.0), D255(pixels / 255.0), atol=1e-4)


def test_eat_set_crafted_with_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    model.eval()
    images, labels = tiny_mnist(32)
    running_stats = model[1].running_mean.clone()
    craft = lambda bn: core.build_eat_set(model, images, labels, 0.2, CPU, batch_size=16, precision="float32", bn=bn)
    batch, running = craft("batch"), craft("running")
    assert not model.training and torch.equal(model[1].running_mean, running_stats)
    x = core.to_float(images[16:])
    with core.scoring_mode([model], "batch"):
        expected = core.fgs(model, x, core.predict(model, x), 0.2)  # the FGS quarter of the second batch of 16
    assert torch.allclose(batch[torch.arange(32 + 16, 64)], expected, atol=1e-3)
    assert not torch.allclose(running[torch.arange(32 + 16, 64)], expected, atol=1e-3)


def test_cifar10_crops_shift_by_2_pixels():
    _, settings, _ = cifar10.configure(parse("--quick", "--protocol", "authors"))
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[:, :, 16, 16] = 255
    torch.manual_seed(0)
    x, _ = runner.training.batch_maker(0, settings | {"batch_size": 64}, lambda: (images, torch.zeros(64, dtype=torch.long)), CPU)()(0)
    rows = x[:, 0].amax(2).argmax(1)  # the row of the one bright pixel of each image
    assert (rows - 16).abs().max() == 2


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("argv, fragment", [
    (["--set", "protocol=authors"], "--protocol"),
    (["--protocol", "authors", "--set", "cuda_graphs=true", "--set", "pgd_warmup_iters=0"], "d_every"),
    (["--set", "g_net=theirs"], "g_net"),
])
def test_bad_protocol_settings_are_one_line_errors(argv, fragment):
    with pytest.raises(runner.errors.UserError, match=fragment):
        mnist.configure(parse("--quick", *argv))


# ---------------------------------------------------------------- every script end to end: --quick --protocol authors
QUICK = ["--quick", "--protocol", "authors", "--gpu", "cpu", "--eval-n", "32"]


@pytest.fixture(scope="module")
def fake_mnist_55k_split(tmp_path_factory):
    """Fake MNIST and Fashion-MNIST files with the 5,000 images the TF reader holds out, and 256 more to train on."""
    root = str(tmp_path_factory.mktemp("mnist_tf_split"))
    for folder in ("MNIST", "FashionMNIST"):
        write_fake_mnist(root, folder, n_train=5256)
    return root


@pytest.fixture(scope="module")
def mnist_authors(fake_mnist_55k_split, shared_checkpoints, tmp_path_factory):
    out, ckpt = tmp_path_factory.mktemp("authors") / "mnist.json", os.path.join(shared_checkpoints, "mnist_authors_quick")
    mnist.main(QUICK + ["--data-dir", fake_mnist_55k_split, "--out", str(out), "--ckpt-dir", ckpt])
    return json.loads(out.read_text()), ckpt


def checkpoint(ckpt_dir, model):
    state = core.load_checkpoint(os.path.join(ckpt_dir, f"{model}.pt"))
    return state, json.loads(state["fingerprint"])


@pytest.mark.slow
def test_mnist_authors_quick(mnist_authors):
    report, ckpt = mnist_authors
    assert report["experiment"] == "mnist_authors_quick" and report["protocol"] == report["settings"]["protocol"] == "authors"
    assert set(report["table"]) == {"A", "B", "C"} and report["eval"]["bn"] == "batch"
    assert report["settings"]["model_overrides"]["C"]["d_every"] == 5
    for model in ("A", "B", "C", "A'", "B'", "C'"):
        assert checkpoint(ckpt, model)[1]["protocol"] == "authors"
    state, trained = checkpoint(ckpt, "C")
    assert trained["d_every"] == 5 and trained["g_net"] == "authors" and "net.0.weight" in state["G"]  # their MNIST G
    assert checkpoint(ckpt, "A")[1]["d_lr"] == 0.1


@pytest.mark.slow
def test_fashion_mnist_authors_quick_is_labelled_an_extrapolation(fake_mnist_55k_split, tmp_path):
    out = tmp_path / "fashion.json"
    mnist.main(QUICK + ["--fashion", "--models", "C", "--data-dir", fake_mnist_55k_split, "--out", str(out),
                        "--ckpt-dir", str(tmp_path / "ckpt")])
    report = json.loads(out.read_text())
    assert report["experiment"] == "fashion_mnist_authors_quick" and report["settings"]["eps"] == 0.1
    assert "extrapolated to Fashion-MNIST" in report["settings"]["protocol_source"] and set(report["table"]) == {"C"}


@pytest.mark.slow
def test_svhn_authors_quick(tmp_path, no_md5_check, shared_checkpoints):
    out, ckpt = tmp_path / "svhn.json", os.path.join(shared_checkpoints, "svhn_authors_quick")
    svhn.main(QUICK + ["--models", "A,C", "--data-dir", write_fake_svhn(str(tmp_path)), "--out", str(out), "--ckpt-dir", ckpt])
    report = json.loads(out.read_text())
    assert report["protocol"] == "authors" and set(report["table"]) == {"A", "C"} and report["settings"]["pixel_scale"] == 256
    assert "features.0.weight" in checkpoint(ckpt, "A")[0]["D"]  # their D: a bare stem conv
    assert checkpoint(ckpt, "C")[0]["G"]["encoder.2.0.weight"].shape[:2] == (16, 8)  # their G1: 2k -> 4k, k = 4


@pytest.fixture(scope="module")
def cifar10_authors(fake_cifar10, shared_checkpoints, tmp_path_factory):
    import torchvision.datasets.cifar
    check, torchvision.datasets.cifar.check_integrity = torchvision.datasets.cifar.check_integrity, lambda path, md5=None: os.path.isfile(path)
    try:
        out, ckpt = tmp_path_factory.mktemp("authors") / "cifar10.json", os.path.join(shared_checkpoints, "cifar10_authors_quick")
        cifar10.main(QUICK + ["--models", "A,B,C", "--data-dir", fake_cifar10, "--out", str(out), "--ckpt-dir", ckpt])
    finally:
        torchvision.datasets.cifar.check_integrity = check
    return json.loads(out.read_text()), ckpt


@pytest.mark.slow
def test_cifar10_authors_quick(cifar10_authors):
    report, ckpt = cifar10_authors
    assert report["experiment"] == "cifar10_authors_quick" and set(report["table"]) == {"A", "B", "C"}
    assert checkpoint(ckpt, "A")[1]["d_lr_drop2_at"] == 0.75 and checkpoint(ckpt, "C")[1]["augment_pad"] == 2


@pytest.mark.slow
def test_cifar100_authors_quick_is_labelled_an_extrapolation(tmp_path, no_md5_check):
    from conftest import write_fake_cifar
    out = tmp_path / "cifar100.json"
    cifar100.main(QUICK + ["--models", "C", "--data-dir", write_fake_cifar(str(tmp_path), 100), "--out", str(out),
                           "--ckpt-dir", str(tmp_path / "ckpt")])
    report = json.loads(out.read_text())
    assert report["experiment"] == "cifar100_authors_quick" and report["settings"]["n_classes"] == 100
    assert "extrapolated to CIFAR-100" in report["settings"]["protocol_source"]


@pytest.mark.slow
def test_generators_study_authors_quick(cifar10_authors, fake_cifar10, shared_checkpoints, tmp_path, no_md5_check):
    out = tmp_path / "generators.json"
    generators_study.main(QUICK + ["--data-dir", fake_cifar10, "--ckpt-dir", shared_checkpoints, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["experiment"] == "generators_authors_quick" and report["protocol"] == "authors"
    assert "Tables 5 and 6 have no authors' code" in report["settings"]["protocol_source"]
    assert report["table6"]["G1_k64"]["clean"] == cifar10_authors[0]["table"]["C"]["clean"]  # cifar10.py's C, reused


@pytest.mark.slow
def test_ensemble_authors_quick(mnist_authors, fake_mnist_55k_split, shared_checkpoints, tmp_path):
    out = tmp_path / "ensemble.json"
    args = QUICK + ["--datasets", "mnist", "--data-dir", fake_mnist_55k_split, "--ckpt-dir", shared_checkpoints]
    ensemble.main(args + ["--out", str(out)])
    report = json.loads(out.read_text())
    entry = report["datasets"]["mnist"]
    assert report["experiment"] == "ensemble_authors_quick" and report["protocol"] == "authors"
    assert entry["settings"]["eat_bn"] == "batch" and set(entry["table"]) == {"EAT", "C"}
    eat = checkpoint(mnist_authors[1], "EAT")[1]  # beside the data set's authors' models, which it reused
    assert eat["d_lr"] == 0.1 and eat["d_lr_drop_at"] == 0.5 and eat["eat_bn"] == "batch"
    (tmp_path / "paper.json").write_text(json.dumps({"experiment": "ensemble", "datasets": {}}))
    with pytest.raises(runner.errors.UserError, match="paper protocol"):
        ensemble.main(args + ["--out", str(tmp_path / "paper.json")])


@pytest.mark.slow
def test_evaluate_reads_the_protocol_from_the_checkpoint(mnist_authors, fake_mnist_55k_split, tmp_path, monkeypatch):
    _, ckpt = mnist_authors
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ckpt, "C.pt")
    report = evaluate.main([path, "--dataset", "mnist", "--gpu", "cpu", "--data-dir", fake_mnist_55k_split, "--eval-n", "32"])
    assert report["protocol"] == "authors" and report["eval"]["bn"] == "batch" and report["settings"]["eval_batch"] == 64
    assert report["settings"]["d_every"] == 5 and (tmp_path / "results" / "evaluate_mnist_C_authors.json").exists()
    with pytest.raises(runner.errors.UserError, match="authors protocol, not paper"):
        evaluate.main([path, "--dataset", "mnist", "--gpu", "cpu", "--protocol", "paper"])
    strong = {"autoattack": {"version": "standard"}, "bn": "batch", "n_test": 32,
              "models": {"model": {"accuracy": {"clean": 50.0, "autoattack": 10.0}, "autoattack_warnings": [], "checks": {}}}}
    info = evaluate.model_info(report | {"strong_eval": strong}, core.D1(), "mnist")
    assert "authors protocol" in info["footnote"] and "whxbergkamp/RobustDL_GAN mnist/" in info["footnote"]


@pytest.mark.slow
def test_over_training_scores_snapshots_under_their_protocol(fake_mnist_55k_split, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    mnist.main(QUICK + ["--models", "C", "--no-eval", "--set", "keep_every=5", "--data-dir", fake_mnist_55k_split,
                        "--ckpt-dir", ckpt])
    out = str(tmp_path / "over_training.json")
    report = over_training.main([os.path.join(ckpt, "C.pt"), "--dataset", "mnist", "--gpu", "cpu", "--quick",
                                 "--data-dir", fake_mnist_55k_split, "--eval-n", "16", "--out", out])
    assert report["protocol"] == "authors" and report["scoring"]["bn_eval"] == "batch"
    assert [e["iter"] for e in report["models"]["C"]["snapshots"]] == [5, 10]
    _, paper, _ = mnist.configure(parse("--quick"))
    train(tmp_path / "A.pt", paper)
    with pytest.raises(runner.errors.UserError, match="different protocols"):
        over_training.main([os.path.join(ckpt, "C.pt"), str(tmp_path / "A.pt"), "--dataset", "mnist", "--gpu", "cpu",
                            "--quick", "--data-dir", fake_mnist_55k_split, "--out", out])


@pytest.mark.slow
def test_notebook_names_the_protocol_beside_the_table(mnist_authors, tmp_path, monkeypatch):
    from test_notebook import executed_outputs
    (tmp_path / "mnist_authors_quick.json").write_text(json.dumps(mnist_authors[0]))
    text, _ = executed_outputs(str(tmp_path), monkeypatch)
    table = text.index("=== mnist: mnist_authors_quick.json")
    assert text.index("protocol: authors (the settings of the authors' code: whxbergkamp/RobustDL_GAN mnist/)", table) < \
        text.index("paper: Table 1", table)
    assert text.index("eps 0.3 (B's grown over its first 1000 minibatches), seeds", table) < text.index("paper: Table 1", table)
