"""What each generator reads (paper Table 5): G3 the label as a one-hot marking exactly its class, for
every class; G2 Gaussian noise drawn afresh for every batch, in training and as an attack; G1 (and the
authors' G1 and MNIST generator) the image, and nothing else."""
import pytest
import torch

import core
import mnist
import runner.settings

CPU = torch.device("cpu")


@pytest.mark.parametrize("n_classes", [10, 100])
def test_g3_one_hot_marks_exactly_the_labels_class_for_every_class(n_classes):
    """Fails for a one-hot shifted by a class (which leaves one class reading no class at all)."""
    G = core.G3(k=2, channels=3, size=8, n_classes=n_classes)
    labels = torch.randperm(n_classes, generator=torch.Generator().manual_seed(0)).repeat(2)
    onehot = G.inputs(torch.rand(len(labels), 3, 8, 8), labels)
    assert onehot.dtype == torch.float32 and torch.equal(onehot, torch.eye(n_classes)[labels])


def test_g3_reads_the_label_and_not_the_image():
    """Each class its own perturbation; the same class the same one whatever the image."""
    torch.manual_seed(0)
    G = core.G3(k=2, channels=3, size=8).eval()
    labels = torch.arange(10)
    out = G(G.inputs(torch.rand(10, 3, 8, 8), labels))
    assert torch.equal(out, G(G.inputs(torch.rand(10, 3, 8, 8), labels)))
    assert (out[:, None] != out[None]).flatten(2).any(2).sum() == 10 * 9, "two classes share a perturbation"


def test_g2_noise_is_fresh_standard_normal_for_every_call_and_blind_to_the_batch():
    """100 x 4k(size/4)^2 = 12800 draws a call: mean within 0.05 of 0 (sd 0.009), sd within 0.05 of 1.
    Two calls on the same batch share no value: noise drawn once and reused fails."""
    torch.manual_seed(0)
    G = core.G2(k=8, channels=3, size=8)
    x, y = torch.rand(100, 3, 8, 8), torch.arange(100) % 10
    z1, z2 = G.inputs(x, y), G.inputs(x, y)
    assert z1.shape == (100, 4 * 8 * 2 * 2)
    for z in (z1, z2):
        assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    assert not (z1 == z2).any(), "the same noise twice"
    assert len(z1.unique(dim=0)) == 100, "two images of a batch share their noise"


def recording_inputs(G):
    """G.inputs, recording what it gives."""
    drawn, inputs = [], G.inputs

    def record(x, y):
        drawn.append(inputs(x, y))
        return drawn[-1]
    G.inputs = record
    return drawn


@pytest.mark.parametrize("method", ["generator", "advnet"])
def test_training_draws_g2_noise_afresh_for_every_batch(method):
    """The training step (G against a fixed D, and the method's step) asks G for its input on every
    batch, and G2 gives new noise each time: a step that drew its noise once would train G on one z."""
    torch.manual_seed(0)
    D = core.D1()
    G = core.G2(k=2, channels=1, size=28)
    drawn = recording_inputs(G)
    settings = mnist.SETTINGS | runner.settings.QUICK_SETTINGS | dict(g_steps=1, precision="float32")
    step, _ = core.make_step(method, D, G, core.step_settings(settings))
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    for _ in range(3):
        step(x, y)
    assert len(drawn) == 3, f"{len(drawn)} draws of G's input for 3 batches"
    assert not (drawn[0] == drawn[1]).any() and not (drawn[1] == drawn[2]).any()


def test_g2_as_an_attack_draws_new_noise_for_every_batch():
    torch.manual_seed(0)
    G = core.G2(k=2, channels=1, size=8).eval()
    x = torch.rand(4, 1, 8, 8) * 0.5 + 0.25
    first, second = core.generator_attack(G, x, None, 0.1), core.generator_attack(G, x, None, 0.1)
    assert (first != second).flatten(1).any(1).all(), "an image attacked twice alike"


@pytest.mark.parametrize("make", [lambda: core.G1(k=2, channels=1), lambda: core.AuthorsG1(k=2, channels=1),
                                  lambda: core.MnistG(k=2, channels=1)], ids=["G1", "AuthorsG1", "MnistG"])
def test_image_generators_read_the_image_and_not_the_label(make):
    """Each image its own perturbation, which the label does not change: a generator fed zeros, noise
    or the label instead of the image fails."""
    torch.manual_seed(0)
    G = make().eval()
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(G.inputs(x, torch.arange(6)), x)
    out = G(G.inputs(x, torch.arange(6)))
    assert torch.equal(out, G(G.inputs(x, torch.arange(6).flip(0))))
    # each image alone gives its own perturbation: no batch statistics. Not bit for bit: a convolution's
    # kernel may change with the batch size, which moves the last bits and nothing more
    torch.testing.assert_close(out[:3], G(G.inputs(x[:3], torch.arange(3))), rtol=0, atol=1e-5)
    assert (out[:, None] != out[None]).flatten(2).any(2).sum() == 6 * 5, "two images share a perturbation"
