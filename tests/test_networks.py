import pytest
import torch

import core


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_d1_logits_shape(shape):
    assert core.D1(in_shape=shape, n_classes=10)(torch.rand(5, *shape)).shape == (5, 10)


@pytest.mark.parametrize("n_classes", [10, 100])
def test_d2_logits_shape(n_classes):
    assert core.D2(n_classes=n_classes)(torch.rand(3, 3, 32, 32)).shape == (3, n_classes)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_generators_give_bounded_image_shaped_perturbations(channels, size):
    x, y = torch.rand(4, channels, size, size), torch.randint(0, 10, (4,))
    for G in (core.G1(k=4, channels=channels), core.G2(k=4, channels=channels, size=size),
              core.G3(k=4, channels=channels, size=size)):
        out = G(G.inputs(x, y))
        assert out.shape == x.shape, type(G).__name__
        assert out.abs().max() <= 1


def test_generators_share_the_decoder_code():
    kinds = {type(G.decoder) for G in (core.G1(k=4), core.G2(k=4), core.G3(k=4))}
    assert kinds == {core.Decoder}


def test_d1_scales_input_to_signed_range():
    """The paper feeds [-1, 1] to its networks; our models take [0, 1] and rescale inside."""
    F = torch.nn.functional
    D, x = core.D1(), torch.rand(2, 1, 28, 28)
    h = F.max_pool2d(F.relu(D.conv1(2 * x - 1)), 2)
    h = F.max_pool2d(F.relu(D.conv2(h)), 2)
    assert torch.allclose(D(x), D.fc(h.flatten(1)))
