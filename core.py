"""Adversarial networks for robust deep learning (Wang & Yu, ICLR 2019): the method.

A generator G maps an image to a perturbation eps * tanh(.) and a classifier D learns on clean and
perturbed images while G maximises D's loss, with a gradient regulariser on D (paper, section 3).
This file holds the networks, the attacks, the training steps, evaluation (the paper's and a strong
one) and checkpoints. It needs only torch and numpy and imports nothing else of this repository:
copy it alone. This repository's experiment machinery (settings, command line, the resumable
training loop, provenance) is the package runner/, which imports this file.

Conventions: images are float tensors in [0, 1], (N, C, H, W); public functions also take uint8 (0-255)
and convert it, never changing the caller's tensor, and refuse anything else (`to_float`). Labels are
integer tensors; devices a torch.device or a string. eps is in [0, 1] units (8/255, not 8). Models take
[0, 1] images and return logits (the networks here scale their input to [-1, 1] inside). Attacks are
pure functions that leave a model's batch-norm statistics, train/eval mode and parameter gradients as
they found them, and use the model in the mode it is in; `robust_accuracy` and the evaluation functions
score in eval mode. Everything computes in float32 unless asked for "bf16" or "auto" (`autocast`).
Long loops take an optional `progress`, any object with update(done, extra=None). Bad arguments raise
ValueError. `__all__` lists the public API; the other names are helpers.

Training: `make_step(method, D, G, settings)` with `PAPER_SETTINGS`'s keys; the generator contract is
`check_generator`'s; checkpoints are `save_checkpoint`'s.
"""
import contextlib
import difflib
import itertools
import math
import numbers
import os
import pickle

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

__all__ = [
    # devices and precision
    "PRECISIONS", "as_device", "autocast", "full_precision", "amp_dtype", "precision_name", "to_device",
    # data
    "to_float", "Batches", "from_hwc", "crop_flip",
    # networks: the paper's D and G (appendix), the authors' variants
    "D1", "D2", "SvhnD", "G1", "G2", "G3", "AuthorsG1", "MnistG",
    # modes
    "BN_MODES", "scoring_mode", "bn_stats_frozen",
    # attacks
    "fgs", "fgs_least_likely", "pgd", "predict", "generator_attack", "project", "check_threat_model", "cw_margin",
    # training
    "PAPER_SETTINGS", "METHODS", "make_step", "step_settings", "check_generator", "perturbed", "standard_step",
    "pgd_training_step", "warmup_eps", "generator_step", "discriminator_grads", "adversarial_network_step", "make_optimizer",
    "decay_groups", "set_learning_rate", "reset_momentum", "GraphedStep", "StaticAdversarialSet", "build_eat_set",
    # evaluation
    "robust_accuracy", "evaluate_table", "transfer_accuracy", "strong_attacks", "strong_evaluation", "masking_checks",
    # checkpoints
    "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "atomic_write",
]


# =====================================================================================================
# Device and precision: the one place that decides them
# =====================================================================================================

PRECISIONS = ("auto", "float32", "bf16")


def as_device(device):
    """`device` as a torch.device; every function that takes a device takes a torch.device or a string
    ("cpu", "cuda", "cuda:1")."""
    try:
        return torch.device(device)
    except (TypeError, RuntimeError):
        raise ValueError(f"device must be a torch.device or a string such as 'cpu' or 'cuda:0', not {device!r}") from None


def native_bf16(device):
    """Whether `device` computes in bf16 natively: CUDA, or a CPU with AVX-512 BF16 or AMX (elsewhere
    the CPU emulates bf16, slower than float32)."""
    if as_device(device).type == "cuda":
        return True
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def amp_dtype(device, precision="auto"):
    """The dtype autocast gives forward passes on `device`: torch.bfloat16, or None for float32 (with
    `precision` left out: what "auto" picks there; everything else in this file defaults to float32).
    "auto" is bf16 wherever the device computes it natively (its wide exponent needs no loss scaling):
    CUDA, and CPUs with AVX-512 BF16 or AMX, where a Fashion-MNIST C trained in bf16 matched float32's
    over three seeds (README, "Mixed precision"); float32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    return torch.bfloat16 if bf16 else None


def precision_name(device, precision="auto"):
    """What forward passes in `precision` compute in on `device`, for a run's provenance (left out: "auto")."""
    return "bf16 autocast" if amp_dtype(device, precision) else "float32"


def autocast(device, precision="float32"):
    """The region of forward passes and their losses in `precision`, whatever region encloses it: bf16
    autocast, or autocast off for float32. Backward passes and optimiser steps run in
    `autocast(device, "float32")`, so that each backward op keeps its forward op's dtype (autocast
    recasts the backward of a float32 matmul to bf16) and a step taken inside a caller's autocast region
    is the same step. Optimiser steps are left outside these regions.

    The cast cache is off. With it, autocast casts each weight once per region and reuses that cast
    after an in-place optimiser update (G's steps 2 to 5 of a minibatch ran with step 1's weights), and
    keeps a cast of every attack iterate, a leaf that requires grad, until the region ends."""
    device, dtype = as_device(device), amp_dtype(device, precision)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def fp32_switches():
    """(owner, attribute, value) triples that make float32 matmuls and convolutions IEEE, each with the
    switches it inherits from when it says "none". Where torch has the fp32_precision API, only it is
    used: touching the legacy allow_tf32 flags in a program that set the new API raises, while the new
    API reads whichever one the program used. CPU (mkldnn) included: a program may ask for bf16 there."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision"):
        return [(b.cuda.matmul, "fp32_precision", "ieee", [b]), (b.cudnn.conv, "fp32_precision", "ieee", [b.cudnn, b]),
                (b.mkldnn.matmul, "fp32_precision", "ieee", [b.mkldnn, b]),
                (b.mkldnn.conv, "fp32_precision", "ieee", [b.mkldnn, b])]
    return [(b.cuda.matmul, "allow_tf32", False, []), (b.cudnn, "allow_tf32", False, [])]


def reduced_precision(owner, name, value, parents):
    """Whether a switch lets float32 math round more than IEEE: its own setting, else the first parent's
    that is not "none". Only those are switched: flipping one that is already full precision costs
    oneDNN its cached primitives (it halved the CPU's adversarial-network step)."""
    for setting in [getattr(owner, name)] + [getattr(parent, name) for parent in parents]:
        if setting != "none":
            return setting != value
    return False


@contextlib.contextmanager
def full_precision(device):
    """IEEE float32 inside the block, whatever encloses it: autocast off and no TF32 or bf16 for float32
    math (cuDNN convolutions use TF32 by default); every switch changed gets back exactly the value it
    had. For the regulariser's finite difference, whose two gradients differ by far less than bf16 or
    TF32 rounding (bench.py measures it), and for the strong evaluation."""
    device = as_device(device)
    switched = [(owner, name, value, getattr(owner, name)) for owner, name, value, parents in fp32_switches()
                if reduced_precision(owner, name, value, parents)]
    try:
        for owner, name, value, _ in switched:
            setattr(owner, name, value)
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        for owner, name, _, saved in switched:
            setattr(owner, name, saved)


def to_device(model, device):
    """The model on `device`, channels_last on CUDA. On the CPU channels_last slowed the CIFAR
    adversarial-network step, the one that dominates training, in bench.py's measurement."""
    device = as_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


# =====================================================================================================
# Data helpers: whole data sets live on the training device as uint8; batches are cut there
# =====================================================================================================

class Batches:
    """Minibatches of an image tensor (N, C, H, W), uint8 or float in [0, 1], or of a StaticAdversarialSet,
    held on `device`; calling it with an iteration gives (float images in [0, 1], int64 labels).

    The batch of iteration `it` depends only on (seed, it): epoch e is the permutation drawn from
    seed and e, so a resumed run sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, images, labels, batch_size, seed, device, augment=None):
        if not isinstance(images, StaticAdversarialSet) and getattr(images, "dtype", None) != torch.uint8:
            images = to_float(images)  # refuses what is not images in [0, 1] before any training
        labels, device = as_labels(labels), as_device(device)
        if len(images) < batch_size:
            raise ValueError(f"the training set has {len(images)} images, fewer than one batch of {batch_size}")
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.per_epoch = len(images) // batch_size  # the last partial batch is dropped: static shapes
        self._epoch, self._order = None, None

    def __call__(self, it):
        epoch, pos = divmod(it, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.images), generator=gen).to(self.labels.device)
            self._epoch = epoch
        idx = self._order[pos * self.batch_size:(pos + 1) * self.batch_size]
        x = self.images[idx]
        x = to_float(x) if x.dtype == torch.uint8 else x
        return (self.augment(x) if self.augment else x), self.labels[idx]


def from_hwc(array):
    """A (N, H, W, C) uint8 array (CIFAR's layout) as a (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def to_float(images, what="images"):
    """`images` as float32 in [0, 1], the convention of every public function: uint8 (0-255) divided by
    255 into a new tensor, floating point checked to lie in [0, 1] (float32 is returned as it is). Never
    changes the caller's tensor. ValueError for anything else: other dtypes, values outside [0, 1] or
    NaN, numpy arrays (convert them on purpose, with torch.from_numpy)."""
    if not isinstance(images, torch.Tensor):
        hint = " (convert it with torch.from_numpy)" if isinstance(images, np.ndarray) else ""
        raise ValueError(f"{what} must be a torch tensor of floats in [0, 1] or of uint8, not {type(images).__name__}{hint}")
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise ValueError(f"{what} must be floats in [0, 1] or uint8 (0-255), not {images.dtype}")
    if images.numel():
        low, high = torch.aminmax(images.detach())
        if not (low >= 0 and high <= 1):  # NaN fails both
            raise ValueError(f"{what} must lie in [0, 1] (uint8 0-255 is converted), but these span "
                             f"[{low.item():.4g}, {high.item():.4g}]")
    return images.float()


def as_labels(labels):
    """Class labels as an int64 tensor; ValueError for a numpy array or floats."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a torch tensor of integers, not {kind}")
    return labels.long()


def crop_flip(x, pad=4):
    """CIFAR augmentation on the device, per image: zero-pad by `pad`, crop back at a random offset,
    flip left-right with probability 1/2. Draws from the global RNG, which checkpoints save."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (n, 1), device=x.device) for _ in range(2))
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(n, device=x.device) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(3), cols)
    return padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


# =====================================================================================================
# Networks (paper appendix, Figures 2-4), and where the authors' code builds others, theirs beside them
# (GitHub whxbergkamp/RobustDL_GAN). Inputs in [0, 1], scaled to [-1, 1] inside.
# =====================================================================================================

def signed(x, scale=1.0):
    """[0, 1] images as the network reads them, in [-1, 1]. `scale` rescales them first: the authors
    read SVHN as pixel / 256 (scale 255/256), while our images, and so every attack's eps, stay pixel / 255."""
    return x * (2 * scale) - 1


class D1(nn.Module):
    """MNIST CNN: conv5x5(32)-pool-conv5x5(64)-pool-FC, ReLU, no batch norm."""

    def __init__(self, in_shape=(1, 28, 28), n_classes=10, input_scale=1.0):
        super().__init__()
        c, h, w = in_shape
        self.input_scale = input_scale
        self.conv1 = nn.Conv2d(c, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc = nn.Linear(64 * (h // 4) * (w // 4), n_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(signed(x, self.input_scale))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class ResidualBlock(nn.Module):
    """Figure 2: conv-BN-ReLU-conv-BN plus the shortcut, then ReLU; a 1x1 conv+BN shortcut when asked."""

    def __init__(self, c_in, c_out, stride=1, project=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        needs_projection = project or stride != 1 or c_in != c_out
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if needs_projection else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def conv_bn_relu(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def resnet20_stages():
    """D2's 3 stages x 3 blocks (16/32/64 channels, strides 1/2/2); the first block of every stage has a
    projection shortcut, as in the authors' code."""
    layers, c_in = [], 16
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        layers += [ResidualBlock(c_in, c_out, stride, project=True), ResidualBlock(c_out, c_out), ResidualBlock(c_out, c_out)]
        c_in = c_out
    return layers


class D2(nn.Module):
    """ResNet-20 style: conv(16)-BN-ReLU, 3 stages x 3 blocks (16/32/64, strides 1/2/2), global avg pool, FC.
    The authors' CIFAR-10 D (cifar10/adversarial_networks/models/resnet18_2.py, resnet_v1) is this one."""

    def __init__(self, n_classes=10, in_channels=3, input_scale=1.0):
        super().__init__()
        self.input_scale = input_scale
        self.features = nn.Sequential(conv_bn_relu(in_channels, 16), *resnet20_stages())
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.fc(self.features(signed(x, self.input_scale)).mean((2, 3)))


class SvhnD(nn.Module):
    """The authors' SVHN D (svhn/adversarial_networks/models/resnet18.py, resnet_v1): D2 without BN-ReLU
    after the stem conv, and with a BN-ReLU after the last stage."""

    def __init__(self, n_classes=10, in_channels=3, input_scale=1.0):
        super().__init__()
        self.input_scale = input_scale
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), *resnet20_stages(),
                                      nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.fc(self.features(signed(x, self.input_scale)).mean((2, 3)))


class Decoder(nn.Module):
    """The part all generators share: 6 residual blocks at 4k channels, two stride-2 deconvs, conv, tanh.
    Upsamples by 4: 7x7 -> 28x28 for MNIST, 8x8 -> 32x32 for SVHN/CIFAR."""

    def __init__(self, c_in, k, channels, project_first=False):
        super().__init__()
        blocks = [ResidualBlock(c_in, 4 * k, project=project_first)] + [ResidualBlock(4 * k, 4 * k) for _ in range(5)]
        self.net = nn.Sequential(
            *blocks,
            nn.ConvTranspose2d(4 * k, 2 * k, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm2d(2 * k), nn.ReLU(),
            nn.ConvTranspose2d(2 * k, k, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm2d(k), nn.ReLU(),
            nn.Conv2d(k, channels, 3, 1, 1), nn.Tanh())

    def forward(self, h):
        return self.net(h)


class G1(nn.Module):
    """Encoder-decoder on the image: conv(k), stride-2 convs to k and 2k, then the shared decoder.
    `inputs(x, y)` gives what the generator reads; forward maps it to a perturbation in [-1, 1]."""

    def __init__(self, k=64, channels=1, input_scale=1.0):
        super().__init__()
        self.input_scale = input_scale
        self.encoder = nn.Sequential(conv_bn_relu(channels, k), conv_bn_relu(k, k, 2), conv_bn_relu(k, 2 * k, 2))
        self.decoder = Decoder(2 * k, k, channels)

    def inputs(self, x, y):
        return x

    def forward(self, x):
        return self.decoder(self.encoder(signed(x, self.input_scale)))


class AuthorsG1(nn.Module):
    """G1 as the authors' SVHN and CIFAR-10 code builds it (generator in svhn/.../models/resnet18.py and
    cifar10/.../models/resnet18_2.py): the stride-2 convs go to 2k and 4k channels, not k and 2k, so
    the 6 blocks read 4k channels, the first through a 1x1 projection all the same."""

    def __init__(self, k=64, channels=3, input_scale=1.0):
        super().__init__()
        self.input_scale = input_scale
        self.encoder = nn.Sequential(conv_bn_relu(channels, k), conv_bn_relu(k, 2 * k, 2), conv_bn_relu(2 * k, 4 * k, 2))
        self.decoder = Decoder(4 * k, k, channels, project_first=True)

    def inputs(self, x, y):
        return x

    def forward(self, x):
        return self.decoder(self.encoder(signed(x, self.input_scale)))


class MnistG(nn.Module):
    """The authors' MNIST generator (mnist/adversarial_networks/models/simple_cnn_mnist.py, generator),
    smaller than G1: 5x5 stride-2 convs to k and 2k channels (28 -> 14 -> 7), 5x5 stride-2 transposed
    convs back to k and to the image (no bias), BN-ReLU after all but the last (TF's BN eps, 1e-3), tanh."""

    def __init__(self, k=64, channels=1, input_scale=1.0):
        super().__init__()
        self.input_scale = input_scale
        bn_relu = lambda c: (nn.BatchNorm2d(c, eps=1e-3), nn.ReLU())
        self.net = nn.Sequential(
            nn.Conv2d(channels, k, 5, 2, 2), *bn_relu(k), nn.Conv2d(k, 2 * k, 5, 2, 2), *bn_relu(2 * k),
            nn.ConvTranspose2d(2 * k, k, 5, 2, 2, output_padding=1, bias=False), *bn_relu(k),
            nn.ConvTranspose2d(k, channels, 5, 2, 2, output_padding=1, bias=False), nn.Tanh())

    def inputs(self, x, y):
        return x

    def forward(self, x):
        return self.net(signed(x, self.input_scale))


class G2(nn.Module):
    """Decoder from Gaussian noise z in R^(4k * (size/4)^2); the image is never seen."""

    def __init__(self, k=64, channels=3, size=32):
        super().__init__()
        self.shape = (4 * k, size // 4, size // 4)
        self.decoder = Decoder(4 * k, k, channels)

    def inputs(self, x, y):
        return torch.randn(len(x), math.prod(self.shape), device=x.device)

    def forward(self, z):
        return self.decoder(z.view(-1, *self.shape))


class G3(nn.Module):
    """Decoder from the one-hot label: FC to 4k * (size/4)^2, reshape, shared decoder."""

    def __init__(self, k=64, channels=3, size=32, n_classes=10):
        super().__init__()
        self.shape, self.n_classes = (4 * k, size // 4, size // 4), n_classes
        self.fc = nn.Linear(n_classes, math.prod(self.shape))
        self.decoder = Decoder(4 * k, k, channels)

    def inputs(self, x, y):
        # a comparison, not F.one_hot, which reads the labels' range back to the host on the CPU
        return (y[:, None] == torch.arange(self.n_classes, device=y.device)).float()

    def forward(self, onehot):
        return self.decoder(self.fc(onehot).view(-1, *self.shape))


@contextlib.contextmanager
def bn_stats_frozen(*models):
    """Batch norm keeps its mode (train: batch statistics) but its running statistics are not updated.

    Extra forward passes (attacks, G steps, the regulariser's second pass) must not move D's running
    averages: those should describe the batches D is trained on, nothing else."""
    layers = [m for model in models for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in layers]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, keep in zip(layers, saved):
            m.track_running_stats = keep


BN_MODES = ("running", "batch")


@contextlib.contextmanager
def scoring_mode(models, bn="running"):
    """How models are scored: bn="running" is eval mode (running statistics); bn="batch" is the
    authors' protocol, train mode (each batch normalised by its own statistics) with the running
    statistics left untouched. Each model gets its own mode back."""
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, not {bn!r}")
    modes = [m.training for m in models]
    for m in models:
        m.train(bn == "batch")
    try:
        with bn_stats_frozen(*models):
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


# =====================================================================================================
# Attacks: pure functions on [0, 1] images. One PGD serves training and evaluation. Each uses the model
# in the mode it is in (train mode: batch norm normalises by the batch's statistics, without updating the
# running ones): put it in eval mode first (model.eval(), or scoring_mode), or score with robust_accuracy.
# =====================================================================================================

def cw_margin(logits, y):
    """Carlini-Wagner margin per example, max_{j != y} z_j - z_y: positive once x is misclassified.
    Unlike cross-entropy it does not saturate on confident logits, so its gradient does not vanish there."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(1) - true


LOSSES = {"ce": lambda logits, y: F.cross_entropy(logits, y, reduction="sum"),
          "cw": lambda logits, y: cw_margin(logits, y).sum()}


def input_grad(model, x, y, loss="ce"):
    """Gradient of the summed loss ("ce" or "cw") with respect to the input only (parameter grads
    untouched). The forward pass runs in whatever autocast encloses the attack, the backward pass never."""
    x = x.detach().requires_grad_(True)
    with bn_stats_frozen(model):
        value = LOSSES[loss](model(x), y)
    with autocast(x.device, "float32"):
        return torch.autograd.grad(value, x)[0]


@torch.no_grad()
def predict(model, x):
    """The model's predicted classes for the batch `x`, in its current mode, running statistics untouched."""
    with bn_stats_frozen(model):
        return model(x).argmax(1)


@torch.no_grad()
def least_likely(model, x):
    """The class the model finds least likely for each image of `x`."""
    with bn_stats_frozen(model):
        return model(x).argmin(1)


def check_eps(eps):
    if not isinstance(eps, numbers.Real) or not 0 <= eps <= 1:
        raise ValueError(f"eps is an L-inf radius in [0, 1] pixel units (8/255, not 8), not {eps!r}")


def attack_input(x, eps):
    check_eps(eps)
    return to_float(x, "x")


def fgs(model, x, y, eps):
    """Fast gradient sign (Eq. 6) on a batch x (float in [0, 1], or uint8), the model in its current mode.
    Pass `predict(model, x)` as y to avoid label leakage."""
    x = attack_input(x, eps)
    with torch.enable_grad():
        step = eps * input_grad(model, x, y).sign()
    return (x + step).clamp(0, 1).detach()


def fgs_least_likely(model, x, eps):
    """One step towards the least likely class (Eq. 8), the model in its current mode."""
    x = attack_input(x, eps)
    with torch.enable_grad():
        step = eps * input_grad(model, x, least_likely(model, x)).sign()
    return (x - step).clamp(0, 1).detach()


def project(x_adv, x, eps):
    """x_adv projected onto the L-inf eps-ball around x and onto [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def pgd(model, x, y, eps, alpha=None, steps=10, loss="ce", restarts=1):
    """PGD (Eq. 7) on a batch x (float in [0, 1], or uint8) with labels y: uniform start in the eps-ball,
    `steps` signed steps of `alpha` (default eps/4) up the loss ("ce", or "cw": the CW margin),
    projection onto the eps-ball and [0, 1] after the start and after every step. With restarts, each
    example keeps the first run that misclassifies it. The model is used in its current mode (see the
    section's head); returns float images in [0, 1]."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, not {loss!r}")
    if not isinstance(restarts, numbers.Integral) or restarts < 1 or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"pgd needs restarts >= 1 and steps >= 0 (integers), not restarts={restarts!r}, steps={steps!r}")
    return pgd_unchecked(model, attack_input(x, eps), y, eps, alpha, steps, loss, restarts)


def pgd_unchecked(model, x, y, eps, alpha=None, steps=10, loss="ce", restarts=1):
    """pgd without its checks of the arguments, which read the batch back to the host: for training steps."""
    alpha = eps / 4 if alpha is None else alpha
    for run in range(restarts):
        x_adv = project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
        with torch.enable_grad():
            for _ in range(steps):
                x_adv = project(x_adv + alpha * input_grad(model, x_adv, y, loss).sign(), x, eps)
        if run == 0:
            best = x_adv
        else:
            still_right = (predict(model, best) == y)[:, None, None, None]
            best = torch.where(still_right, x_adv, best)
    return best.detach()


@torch.no_grad()
def generator_attack(G, x, y, eps):
    """A trained generator used as an attack: x + eps*G(.), projected onto the eps-ball and [0, 1] (under
    bf16 autocast, eps * G rounds up to 0.1 % past eps). Uses G in its current mode."""
    return project(x + eps * G(G.inputs(x, y)).float(), x, eps)


def check_threat_model(x_adv, x, eps, tol=1e-6):
    """Scores only inputs inside the threat model: finite, in [0, 1], within eps of the clean image."""
    if not torch.isfinite(x_adv).all():
        raise ValueError("adversarial batch holds NaN or inf")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise ValueError("adversarial batch leaves the [0, 1] pixel range")
    dist = (x_adv - x).abs().max().item()
    if dist > eps + tol:
        raise ValueError(f"adversarial batch is {dist:.6f} from its source in L-inf, above eps={eps}")


# =====================================================================================================
# Training steps: one function each; each returns detached per-batch statistics (no host sync)
# =====================================================================================================

def correct(logits, y):
    return (logits.argmax(1) == y).float().mean()


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g


def standard_step(D, opt_D, x, y, precision="float32"):
    """One SGD step of D on CE(D(x), y) (model A, and EAT on its static set); returns its loss and accuracy."""
    with autocast(x.device, precision):
        logits = D(x)
        loss = F.cross_entropy(logits, y)
    opt_D.zero_grad(set_to_none=True)
    with autocast(x.device, "float32"):
        loss.backward()
    opt_D.step()
    return {"loss": loss.detach(), "acc": correct(logits, y).detach()}


def pgd_training_step(D, opt_D, x, y, eps, alpha=None, steps=10, with_clean=False, precision="float32"):
    """Madry et al.: train on PGD examples only (the authors' code); `with_clean` adds the clean loss.
    The examples are crafted in the step's precision."""
    with autocast(x.device, precision):
        x_adv = pgd_unchecked(D, x, y, eps, alpha, steps)
        logits_adv = D(x_adv)
        loss = F.cross_entropy(logits_adv, y)
        stats = {"loss_adv": loss.detach(), "acc_adv": correct(logits_adv, y).detach()}
        if with_clean:
            logits = D(x)
            loss_clean = F.cross_entropy(logits, y)
            loss = loss + loss_clean
            stats.update(loss_clean=loss_clean.detach(), acc=correct(logits, y).detach())
    opt_D.zero_grad(set_to_none=True)
    with autocast(x.device, "float32"):
        loss.backward()
    opt_D.step()
    stats["loss"] = loss.detach()
    return stats


def warmup_eps(eps, it, warmup_iters):
    """B's training radius at iteration `it` (counted from 0) of a linear warm-up over its first
    `warmup_iters` iterations: eps * (it + 1) / warmup_iters, then eps. PGD training at MNIST's eps = 0.3
    from the first step can turn D1 into a constant classifier: within about 50 steps nearly every ReLU
    of its second convolution is dead and the loss sits at ln 10. The authors' TensorFlow code does this
    too; with some seeds it recovers after a few hundred steps, with others not (ours stayed dead for
    2,000). Pass the result to B's step: step(x, y, eps=warmup_eps(eps, it, n)) (not to a GraphedStep,
    which replays one radius)."""
    check_eps(eps)
    if not all(isinstance(n, numbers.Integral) and n >= 0 for n in (it, warmup_iters)):
        raise ValueError(f"warmup_eps needs integers it >= 0 and warmup_iters >= 0, not {it!r} and {warmup_iters!r}")
    return eps if it + 1 >= warmup_iters else eps * (it + 1) / warmup_iters


def perturbed(x, g_out, eps):
    """x + eps * G's output, the output clamped to the generator contract's [-1, 1], so that D trains within
    eps of x in L-inf whatever a custom G returns (a tanh output, the paper's, passes unchanged, gradient
    included). Pixels are not clipped to [0, 1]: the paper trains D on x + eps * G(x) as it is. An output
    shaped otherwise than x, which would broadcast, raises ValueError."""
    if g_out.shape != x.shape:
        raise ValueError(f"G's output has shape {tuple(g_out.shape)}, its images {tuple(x.shape)}: the generator "
                         "contract wants one perturbation per image, shaped like it")
    return x + eps * g_out.clamp(-1, 1)


def generator_step(D, G, opt_G, g_in, x, y, eps, lam=1.0, precision="float32"):
    """One gradient-ascent step of G on lam * CE(D(x + eps*G), y); D's parameter grads are not computed.
    Returns the loss before the step."""
    with autocast(x.device, precision), bn_stats_frozen(D):
        loss_adv = F.cross_entropy(D(perturbed(x, G(g_in), eps)), y)
    g_params = list(G.parameters())
    with autocast(x.device, "float32"):
        set_grads(g_params, torch.autograd.grad(-lam * loss_adv, g_params))
    opt_G.step()
    return loss_adv.detach()


def ascent_direction(G, v, g_weight_decay=0.0):
    """G's plain ascent direction v = grad_phi F, less G's weight decay on its kernels: the authors' code
    steps along the gradient of G's whole loss, decay included (train_gan_*.py: g_grads6 of g_loss6 + g_decay)."""
    if not g_weight_decay:
        return list(v)
    return [vi - g_weight_decay * p.detach() if p.dim() > 1 else vi for p, vi in zip(G.parameters(), v)]


HVPS = ("fd", "exact")


def check_hvp(hvp):
    if hvp not in HVPS:
        raise ValueError(f"hvp must be one of {HVPS}, not {hvp!r}")


def discriminator_grads(D, G, g_in, x, y, eps, lam=1.0, gamma=0.01, h=1e-3, hvp="fd", precision="float32",
                        g_weight_decay=0.0):
    """Gradient of F + (gamma/2)||grad_phi F||^2 with respect to D's parameters (paper Eq. 5).

    F = CE(D(x), y) + lam * CE(D(x + eps*G(x)), y). Only the adversarial term depends on phi, so the
    Hessian-vector product needs only it: hvp="fd" uses the paper's finite difference
    [grad_theta F(phi + h v) - grad_theta F(phi)] / h with v = grad_phi F (one plain ascent step of G);
    hvp="exact" differentiates ||grad_phi F||^2 by double backpropagation. A negative gamma gives the
    sign of the authors' code; `g_weight_decay` takes G's weight decay into v, as their code does
    (`ascent_direction`). Only the clean term runs in `precision`: the adversarial term runs in
    full float32, as the two gradients of the difference are too close for bf16. Returns (grads, logits_clean,
    logits_adv, loss_clean, loss_adv).
    """
    check_hvp(hvp)
    d_params, g_params = list(D.parameters()), list(G.parameters())
    with autocast(x.device, precision):
        logits = D(x)
        loss_clean = F.cross_entropy(logits, y)
    with autocast(x.device, "float32"):
        g_clean = torch.autograd.grad(loss_clean, d_params)
    with full_precision(x.device):  # the adversarial term and its regulariser, forward and backward
        logits_adv = D(perturbed(x, G(g_in), eps))
        loss_adv = F.cross_entropy(logits_adv, y)
        if hvp == "exact":
            v = ascent_direction(G, torch.autograd.grad(lam * loss_adv, g_params, create_graph=True), g_weight_decay)
            regulariser = 0.5 * sum(vi.pow(2).sum() for vi in v)
            g_reg = torch.autograd.grad(lam * loss_adv + gamma * regulariser, d_params)
        else:
            both = torch.autograd.grad(lam * loss_adv, d_params + g_params)
            g_adv, v = both[:len(d_params)], ascent_direction(G, both[len(d_params):], g_weight_decay)
            phi_ahead = {name: p.detach() + h * vi for (name, p), vi in zip(G.named_parameters(), v)}
            with bn_stats_frozen(D, G):
                loss_ahead = F.cross_entropy(D(perturbed(x, functional_call(G, phi_ahead, (g_in,)), eps)), y)
            g_ahead = torch.autograd.grad(lam * loss_ahead, d_params)
            g_reg = [ga + (gamma / h) * (gh - ga) for ga, gh in zip(g_adv, g_ahead)]
    grads = [gc + gr for gc, gr in zip(g_clean, g_reg)]
    return grads, logits.detach(), logits_adv.detach(), loss_clean.detach(), loss_adv.detach()


def adversarial_network_step(D, G, opt_D, opt_G, x, y, eps, lam=1.0, gamma=0.01, h=1e-3, g_steps=5, hvp="fd",
                             precision="float32", g_weight_decay=0.0, d_step=True):
    """The method (paper section 3.2): `g_steps` ascent steps of G on this minibatch, then one D step
    at the updated G on the regularised objective. `g_gain`: how much G's steps raised D's adversarial
    loss on this minibatch (after the last step, in float32, less before the first). Without `d_step`,
    only G's steps, and no statistics: the authors' MNIST code steps D on every 5th minibatch only."""
    check_hvp(hvp)  # before G's steps change its weights
    g_in = G.inputs(x, y)
    before = [generator_step(D, G, opt_G, g_in, x, y, eps, lam, precision) for _ in range(g_steps)]
    if not d_step:
        return {}
    grads, logits, logits_adv, loss_clean, loss_adv = discriminator_grads(D, G, g_in, x, y, eps, lam, gamma, h, hvp,
                                                                          precision, g_weight_decay)
    set_grads(list(D.parameters()), grads)
    opt_D.step()
    stats = {"loss": loss_clean + lam * loss_adv, "loss_clean": loss_clean, "loss_adv": loss_adv,
             "acc": correct(logits, y), "acc_adv": correct(logits_adv, y)}
    return stats | ({"g_gain": loss_adv - before[0]} if before else {})


def decay_groups(model, weight_decay):
    """Weight decay on conv/linear kernels only, as the authors' code: not on biases or batch norm."""
    kernels = [p for p in model.parameters() if p.dim() > 1]
    others = [p for p in model.parameters() if p.dim() <= 1]
    return [{"params": kernels, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(kind, params, lr, momentum=0.9, betas=(0.5, 0.999)):
    """SGD with momentum or Adam in their fused form, with the learning rate as a tensor on the
    parameters' device: a step then reads no value back to the host (Adam's step counters stay on the
    device), so it can be captured in a CUDA graph, and `set_learning_rate` changes the rate in place."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {kind!r}")
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    if not tensors:
        raise ValueError("the optimiser has no parameters to train: the model has none")
    lr = torch.tensor(float(lr), device=tensors[0].device)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


def reset_momentum(optimizer):
    """A fresh momentum buffer, as the authors' code gets from the new optimiser it switches to when D's
    rate drops: SGD's buffers are zeroed in place (a captured CUDA graph keeps reading them), so the next
    step's buffer is that step's gradient alone, as on a first step."""
    for state in optimizer.state.values():
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"].zero_()


def set_learning_rate(optimizer, lr):
    """Every group's rate becomes `lr`, in place where it is already a tensor on the group's device (a
    captured graph keeps reading that tensor); a rate loaded from a checkpoint becomes one."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        if isinstance(group["lr"], torch.Tensor) and group["lr"].device == device:
            group["lr"].fill_(lr)
        else:
            group["lr"] = torch.tensor(float(lr), device=device)


# make_step's settings, at the paper's values (its MNIST ones where data sets differ; SVHN and CIFAR-10 in
# brackets). A key left out takes the value here; eps has none. Units: eps and pgd_alpha in [0, 1] pixels.
PAPER_SETTINGS = dict(
    eps=None,               # required: L-inf radius of G's perturbation and of PGD (MNIST 0.3 [SVHN 0.05, CIFAR-10 8/256])
    precision="float32",    # forward passes: "float32", "bf16" (autocast), or "auto" (bf16 where native: see amp_dtype)
    d_lr=0.01,              # D: SGD learning rate [0.01, 0.1]
    d_momentum=0.9,         # D: SGD momentum
    d_weight_decay=1e-3,    # D: L2 on conv/linear kernels only [1e-5, 1e-5]
    g_opt="adam",           # G's optimiser: "adam" or "sgd" (momentum g_momentum) [sgd, adam]
    g_lr=0.002,             # G's learning rate eta_G [0.01, 0.002]
    g_momentum=0.9,         # G: momentum, when g_opt is "sgd"
    g_beta1=0.5,            # G: Adam's beta1
    g_beta2=0.999,          # G: Adam's beta2
    g_weight_decay=0.0,     # G: L2 on kernels, in its optimiser and in the regulariser's direction (authors' code; paper: 0)
    g_steps=5,              # C: G's ascent steps per minibatch, before D's step
    lam=1.0,                # C: lambda, the weight of the adversarial loss in F
    gamma=0.01,             # C: weight of the gradient regulariser (gamma/2)||grad_phi F||^2; negative: the authors' sign
    fd_h=None,              # C: the regulariser's finite-difference step h; None (or 0) derives it: eta_G / 10 (paper)
    hvp="fd",               # C: the regulariser's Hessian-vector product: "fd" (paper) or "exact" (double backprop)
    pgd_steps=10,           # B: PGD steps in training
    pgd_alpha=None,         # B: PGD step size; None (or 0) derives it: eps / 4
    pgd_train_clean=False,  # B: add the clean loss to PGD's (the authors' code trains on PGD examples only)
)
METHODS = ("standard", "pgd", "advnet", "eat", "generator")


def step_settings(settings):
    """The entries of `settings` that make_step reads, for a dict that holds other settings too (an
    experiment's); the others are dropped unchecked."""
    return {key: value for key, value in settings.items() if key in PAPER_SETTINGS}


def checked_settings(settings):
    """PAPER_SETTINGS updated by `settings`, checked: ValueError for an unknown key (naming the closest
    valid one), a missing eps, or a value out of its range."""
    for key in settings:
        if key not in PAPER_SETTINGS:
            close = difflib.get_close_matches(key, PAPER_SETTINGS, 1)
            hint = f"did you mean {close[0]!r}?" if close else f"the settings are {', '.join(PAPER_SETTINGS)}"
            raise ValueError(f"unknown setting {key!r}: {hint}")
    s = PAPER_SETTINGS | dict(settings)
    if s["eps"] is None:
        raise ValueError("settings need eps, the L-inf radius in [0, 1] pixel units (the paper: 0.3 on MNIST)")
    check_eps(s["eps"])
    choices = {"precision": PRECISIONS, "g_opt": OPTIMIZERS, "hvp": HVPS}
    for key, allowed in choices.items():
        if s[key] not in allowed:
            raise ValueError(f"setting {key} must be one of {allowed}, not {s[key]!r}")
    for key in ("g_steps", "pgd_steps"):
        if not isinstance(s[key], numbers.Integral) or s[key] < 0:
            raise ValueError(f"setting {key} must be an integer >= 0, not {s[key]!r}")
    for key in ("d_lr", "g_lr", "fd_h", "pgd_alpha", "d_weight_decay", "g_weight_decay"):
        if s[key] is not None and not s[key] >= 0:
            raise ValueError(f"setting {key} must be >= 0, not {s[key]!r}")
    return s


def fd_step(settings):
    """The finite-difference step h; the paper sets h = eta_G / 10 (`fd_h` None or 0 means that)."""
    return settings["fd_h"] or settings["g_lr"] / 10


def check_generator(G):
    """The generator contract: G is an nn.Module with `G.inputs(x, y)`, what it reads for the batch x
    (float images in [0, 1]) and labels y (the image, noise, a one-hot label...), and `G(G.inputs(x, y))`
    is a perturbation shaped like x with values in [-1, 1] (tanh), scaled by eps in training
    (`perturbed` clamps it there)."""
    if not isinstance(G, nn.Module):
        raise ValueError(f"this method needs a generator G, an nn.Module, not {type(G).__name__}")
    if not callable(getattr(G, "inputs", None)):
        raise ValueError(f"the generator {type(G).__name__} has no method inputs(x, y): give it one that returns what "
                         "its forward reads (for G(x), `def inputs(self, x, y): return x`)")


def make_step(method, D, G=None, settings=None):
    """Returns step(x, y) -> stats and the modules a checkpoint holds, and puts D and G in train mode
    (score them in eval mode: robust_accuracy, scoring_mode). x: float images in [0, 1] (Batches gives
    them), y: int64 labels. `settings`: PAPER_SETTINGS's keys, each one left out at the paper's value;
    eps is required. The steps compute their forward passes in `settings["precision"]` (see `autocast`).

    standard, pgd, advnet: models A, B, C (A and B need no G). eat: standard training on a static
    adversarial set (the batches hold it). generator: G alone, by gradient ascent against the fixed D
    (paper Table 5). C's step takes `d_step=False` for G's steps alone; B's takes `eps=`, one step's
    radius up to settings' eps, for a warm-up (`warmup_eps`; PGD's step size is then eps / 4 unless
    `pgd_alpha` is set). G must meet `check_generator`'s contract. Every argument is checked before any
    weight changes."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {METHODS}")
    s = checked_settings(settings or {})
    if method in ("advnet", "generator"):
        check_generator(G)
    make_opt_G = lambda: make_optimizer(s["g_opt"], decay_groups(G, s["g_weight_decay"]) if s["g_weight_decay"]
                                        else G.parameters(),  # one group as before: older checkpoints load
                                        s["g_lr"], s["g_momentum"], (s["g_beta1"], s["g_beta2"]))
    D.train(method != "generator")
    if G is not None:
        G.train()
    if method == "generator":
        opt_G = make_opt_G()
        return (lambda x, y: {"loss_adv": generator_step(D, G, opt_G, G.inputs(x, y), x, y, s["eps"],
                                                         precision=s["precision"])}), \
            {"G": G, "opt_G": opt_G}
    opt_D = make_optimizer("sgd", decay_groups(D, s["d_weight_decay"]), s["d_lr"], s["d_momentum"])
    if method in ("standard", "eat"):
        return (lambda x, y: standard_step(D, opt_D, x, y, s["precision"])), {"D": D, "opt_D": opt_D}
    if method == "pgd":
        def pgd_step(x, y, eps=None):  # eps: this step's radius, for a warm-up (warmup_eps); alpha follows it
            eps = s["eps"] if eps is None else eps
            if not 0 < eps <= s["eps"]:
                raise ValueError(f"B's step: eps={eps!r} is outside (0, {s['eps']}], the settings' radius")
            alpha = s["pgd_alpha"] or eps / 4
            return pgd_training_step(D, opt_D, x, y, eps, alpha, s["pgd_steps"], s["pgd_train_clean"], s["precision"])
        return pgd_step, {"D": D, "opt_D": opt_D}
    if method == "advnet":
        opt_G = make_opt_G()
        return (lambda x, y, d_step=True: adversarial_network_step(D, G, opt_D, opt_G, x, y, s["eps"], s["lam"], s["gamma"],
                                                                   fd_step(s), s["g_steps"], s["hvp"], s["precision"],
                                                                   s["g_weight_decay"], d_step)), \
            {"D": D, "G": G, "opt_D": opt_D, "opt_G": opt_G}


class GraphedStep:
    """A training step captured once as a CUDA graph and replayed: one launch per iteration instead of
    thousands (a CIFAR adversarial-network step dispatches about 3,600 operators), following PyTorch's
    whole-network capture recipe. The step must read nothing back to the host (the steps above don't),
    its `optimizers` must keep their step counts and learning rates on the device (`make_optimizer`),
    and learning rates must change in place (`set_learning_rate`). The step applies its own precision:
    `autocast`'s cast cache is off, as a capture needs (a cached cast would outlive the captured region).

    Calling it runs the step eagerly on a side stream for the first `warmup` calls (cuDNN autotuning,
    optimiser state, lazy initialisation), captures it on the next call's batch, and from then on
    copies each batch into the static inputs and replays. It returns the step's statistics as static
    tensors, overwritten by the next call: accumulate them on the device and read them rarely."""

    def __init__(self, step, device, warmup=3, optimizers=()):
        self.step, self.device, self.warmup, self.optimizers = step, device, warmup, list(optimizers)
        self.graph, self.calls, self.replays = None, 0, 0

    def __call__(self, x, y):
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                stats = self.step(x, y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return stats
        if self.graph is None:
            self.capture(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        self.replays += 1
        return self.static_stats

    def capture(self, x, y):
        self.static_x, self.static_y = x.clone(), y.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), capturable(self.optimizers), torch.cuda.graph(self.graph):
            self.static_stats = self.step(self.static_x, self.static_y)


@contextlib.contextmanager
def capturable(optimizers):
    """The optimisers' groups say `capturable` inside the block, and get their own flag back after it.
    torch refuses to capture an Adam step whose groups do not say so, although the fused kernels
    (`make_optimizer`) read their step counts and learning rate from the device either way. Only for
    the capture: replays run no Python, a checkpoint would carry the flag on, and torch warns about
    every eager step of a capturable optimiser."""
    groups = [group for optimizer in optimizers for group in optimizer.param_groups if "capturable" in group]
    saved = [group["capturable"] for group in groups]
    for group in groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group, flag in zip(groups, saved):
            group["capturable"] = flag


class StaticAdversarialSet:
    """Ensemble adversarial training's static set: each clean image and K stored perturbations of it,
    (K + 1) * N images indexed like a tensor. Perturbations are kept as float16 differences beside the
    uint8 images (a quarter of the memory of float32 images) and projected back onto the eps-ball and
    [0, 1] when read, so every image is within eps of its source however float16 rounded."""

    def __init__(self, images, labels, deltas, eps):
        self.images, self.source_labels, self.deltas, self.eps = images, labels, deltas, eps
        self.labels = labels.repeat(1 + len(deltas))

    def __len__(self):
        return len(self.images) * (1 + len(self.deltas))

    def to(self, device):
        return StaticAdversarialSet(self.images.to(device), self.source_labels.to(device), self.deltas.to(device), self.eps)

    def __getitem__(self, idx):
        kind, source = idx // len(self.images), idx % len(self.images)
        x = to_float(self.images[source])
        # a gather and a mask rather than boolean indexing, which would wait for the GPU every batch
        delta = self.deltas[(kind - 1).clamp(min=0), source].float() * (kind > 0).view(-1, *[1] * (x.dim() - 1))
        return project(x + delta, x, self.eps)


EAT_KINDS = ["clean", "fgs_predicted", "pgd", "fgs_least_likely"]


def build_eat_set(model, images, labels, eps, device, batch_size=500, pgd_steps=10, pgd_alpha=None, progress=None,
                  precision="float32", bn="running"):
    """From one fixed (undefended) model: FGS with its predicted label (no label leakage), PGD with the
    true label, and the least-likely-class step (Eq. 8), beside the clean images; built on the device,
    the attacks' forward passes in `precision`, the model in `scoring_mode(bn)` (the authors crafted
    with batch statistics, on batches of 64)."""
    labels, device = scored_set(images, labels, device)
    deltas = torch.empty((3, *images.shape), dtype=torch.float16, device=device)
    with scoring_mode([model], bn), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            x, y = to_float(images[part].to(device)), labels[part].to(device)
            crafted = [fgs(model, x, predict(model, x), eps), pgd(model, x, y, eps, pgd_alpha, pgd_steps),
                       fgs_least_likely(model, x, eps)]
            for k, x_adv in enumerate(crafted):
                check_threat_model(x_adv, x, eps)
                deltas[k, part] = (x_adv - x).half()
            if progress:
                progress.update(min(start + batch_size, len(images)))
    return StaticAdversarialSet(images.to(device), labels.to(device), deltas, eps)


# =====================================================================================================
# Evaluation: the paper's 9 columns over the whole (or first n) test images, batched
# =====================================================================================================

def scored_set(images, labels, device):
    """(labels, device) of a set to score, checked: the images themselves are checked batch by batch
    (`to_float`), so that a uint8 set is never converted whole."""
    if not isinstance(images, torch.Tensor):
        to_float(images)  # its ValueError names what was given
    labels = as_labels(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return labels, as_device(device)


def attack_batches(surrogate, x, y, eps, pgd_steps, pgd_alpha):
    """FGS and PGD examples crafted on `surrogate` (true labels, as the paper), threat model checked."""
    crafted = {"fgs": fgs(surrogate, x, y, eps), "pgd": pgd(surrogate, x, y, eps, pgd_alpha, pgd_steps)}
    for x_adv in crafted.values():
        check_threat_model(x_adv, x, eps)
    return crafted


def evaluate_table(targets, surrogates, images, labels, eps, device, batch_size=500, pgd_steps=10, pgd_alpha=None,
                   progress=None, bn="running", precision="float32"):
    """Accuracy in percent of each target: clean, white-box FGS/PGD, and black-box FGS/PGD crafted on
    each surrogate (keys "fgs_A'", ...). Black-box examples are crafted once per surrogate and batch
    and scored on every target. Models are scored in `scoring_mode(bn)` and given their own mode back;
    forward passes run in `precision` (float32 by default: under bf16 a cell moved by up to 0.6 points)."""
    hits = {t: {} for t in targets}

    def score(target, column, x_in, y):
        with torch.no_grad():
            hit = (targets[target](x_in).argmax(1) == y).sum()
        hits[target][column] = hits[target].get(column, 0) + hit

    labels, device = scored_set(images, labels, device)
    models = list(targets.values()) + list(surrogates.values())
    with scoring_mode(models, bn), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            x = to_float(images[start:start + batch_size].to(device))
            y = labels[start:start + batch_size].to(device)
            for name, model in targets.items():
                score(name, "clean", x, y)
                for attack, x_adv in attack_batches(model, x, y, eps, pgd_steps, pgd_alpha).items():
                    score(name, attack, x_adv, y)
            for s_name, surrogate in surrogates.items():
                for attack, x_adv in attack_batches(surrogate, x, y, eps, pgd_steps, pgd_alpha).items():
                    for name in targets:
                        score(name, f"{attack}_{s_name}", x_adv, y)
            if progress:
                progress.update(min(start + batch_size, len(images)))
    return {t: {c: round(100.0 * int(n) / len(images), 2) for c, n in cols.items()} for t, cols in hits.items()}


def transfer_accuracy(targets, craft, images, labels, eps, device, batch_size=500, precision="float32", bn="running"):
    """Accuracy in percent of each target on `craft(x, y)`, crafted once per batch (threat model
    checked) and scored on every target, all in `scoring_mode(bn)`, forward passes in `precision`."""
    labels, device = scored_set(images, labels, device)
    hits = dict.fromkeys(targets, 0)
    with scoring_mode(list(targets.values()), bn), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            x = to_float(images[start:start + batch_size].to(device))
            y = labels[start:start + batch_size].to(device)
            x_adv = craft(x, y)
            check_threat_model(x_adv, x, eps)
            with torch.no_grad():
                for name, model in targets.items():
                    hits[name] = hits[name] + (model(x_adv).argmax(1) == y).sum()
    return {name: round(100.0 * int(n) / len(images), 2) for name, n in hits.items()}


def robust_accuracy(model, images, labels, eps, attack=None, device=None, batch_size=500, bn="running",
                    precision="float32"):
    """One model's accuracy in percent on `attack(model, x, y)` of each batch (default PGD-10 with steps of
    eps/4; strong_attacks(eps) gives stronger ones; eps=0 with the default gives clean accuracy), every
    adversarial batch checked against the threat model. Scored in eval mode (bn="running"; "batch" for
    train-mode statistics), the model's own mode given back. images: float in [0, 1] or uint8, (N, C, H, W);
    device: where to score, by default the model's."""
    attack = attack or (lambda m, x, y: pgd(m, x, y, eps))
    device = device or next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    return transfer_accuracy({"model": model}, lambda x, y: attack(model, x, y), images, labels, eps, device,
                             batch_size, precision, bn)["model"]


# =====================================================================================================
# Strong evaluation (beyond the paper): long and restarted attacks, the per-example worst case over
# all of them, and checks for gradient masking (Athalye et al. 2018; Carlini et al. 2019)
# =====================================================================================================

def strong_attacks(eps, steps=100, restarts=5):
    """name -> craft(model, x, y) -> x_adv: the paper's FGS and PGD-10, then PGD with `steps` steps
    and `restarts` random restarts on cross-entropy, and PGD on the CW margin. The long runs take steps
    of 2.5 * eps / steps (Madry et al.): the walk can cross the ball 2.5 times."""
    alpha = 2.5 * eps / steps
    return {"fgs": lambda m, x, y: fgs(m, x, y, eps),
            "pgd10": lambda m, x, y: pgd(m, x, y, eps),
            "pgd_ce": lambda m, x, y: pgd(m, x, y, eps, alpha, steps, "ce", restarts),
            "pgd_cw": lambda m, x, y: pgd(m, x, y, eps, alpha, steps, "cw")}


GRADIENT_ATTACKS = ("fgs", "pgd10", "pgd_ce", "pgd_cw", "apgd_ce", "apgd_t", "fab_t")
LARGE_EPS = 0.5  # half the pixel range: every image can reach mid-grey, so no classifier should survive it


def zero_gradient(model, x, y):
    """Per example: is the input gradient of the cross-entropy exactly zero (a sign of masking)?"""
    with torch.enable_grad():
        return input_grad(model, x, y).flatten(1).abs().amax(1) == 0


def strong_evaluation(models, images, labels, eps, device, attacks, surrogates=None, bn="running", batch_size=500,
                      sweep=(0.25, 0.5, 1.0, 2.0), sweep_steps=100, progress=None, transfer_attack="pgd_ce"):
    """Per model, in percent: accuracy under each of `attacks` (name -> craft(model, x, y); strong_attacks
    gives the usual ones), under transfer from each surrogate (`attacks[transfer_attack]`, by default the
    strongest PGD, crafted on the surrogate), the per-example worst case
    over all of them (`robust`), PGD accuracy at eps * each of `sweep` and at LARGE_EPS ("eps_0.3"),
    and the share of examples whose input gradient is exactly zero (`zero_gradient_percent`). Runs in
    full float32 whatever autocast encloses it: bf16 rounding can flatten the small gradients that
    long attacks follow. Every adversarial batch is checked against the threat model before scoring."""
    surrogates = surrogates or {}
    if surrogates and transfer_attack not in attacks:
        raise ValueError(f"transfer from surrogates crafts with attacks[{transfer_attack!r}], which `attacks` lacks: "
                         f"name one of {list(attacks)} as transfer_attack")
    labels, device = scored_set(images, labels, device)
    sweep_eps = sorted({round(eps * f, 6) for f in sweep} | {LARGE_EPS})
    counts = {name: {} for name in models}
    per_model = len(attacks) + 1  # a batch's stages per model: each attack, then the eps sweep
    stages = len(models) * per_model

    def add(name, key, hits):
        counts[name][key] = counts[name].get(key, 0) + int(hits.sum())

    def report(start, n, stage, note):
        """Counts a batch's finished stages as that share of its images: one batch can take an hour."""
        if progress:
            progress.update(start + n * stage // stages, note)

    def crafted(name, model, x, y, start, first_stage):
        """Each attack's batch, crafted when asked for; the progress line names the attack under way."""
        for k, (attack, craft) in enumerate(attacks.items()):
            report(start, len(x), first_stage + k, f"{name}: {attack}")
            yield attack, craft(model, x, y)

    with scoring_mode(list(models.values()) + list(surrogates.values()), bn), full_precision(device):
        for start in range(0, len(images), batch_size):
            x = to_float(images[start:start + batch_size].to(device))
            y = labels[start:start + batch_size].to(device)
            transfers = {f"transfer_{s}": attacks[transfer_attack](sm, x, y) for s, sm in surrogates.items()}
            for x_adv in transfers.values():
                check_threat_model(x_adv, x, eps)
            for m, (name, model) in enumerate(models.items()):
                right = predict(model, x) == y
                robust = right.clone()
                add(name, "clean", right)
                first_stage = m * per_model
                for attack, x_adv in itertools.chain(crafted(name, model, x, y, start, first_stage), transfers.items()):
                    check_threat_model(x_adv, x, eps)
                    right = predict(model, x_adv) == y
                    robust &= right
                    add(name, attack, right)
                add(name, "robust", robust)
                report(start, len(x), first_stage + len(attacks), f"{name}: eps sweep")
                for e in sweep_eps:
                    add(name, f"eps_{e:g}", predict(model, pgd(model, x, y, e, 2.5 * e / sweep_steps, sweep_steps)) == y)
                add(name, "zero_gradient_percent", zero_gradient(model, x, y))
            if progress:
                progress.update(min(start + batch_size, len(images)))
    return {name: {key: round(100.0 * n / len(images), 2) for key, n in c.items()} for name, c in counts.items()}


def masking_checks(result, points=2.0, large_eps_accuracy=5.0, zero_gradient_percent=1.0):
    """Gradient-masking checks on one model's `strong_evaluation` result (percent), each {"flag", "why"}.
    Each check is named for what a sound defence shows; `flag` is True when the result FAILS it, a reason
    to distrust the gradient attacks' numbers. `points`: accuracy slack, in percent. A check whose
    numbers the result lacks is left out (say, FGS against PGD-CE when `attacks` held neither); the
    gradient-free check reads "square", which an AutoAttack suite adds, and says "not run" without it.

    iterative_beats_single_step: PGD-CE's accuracy is not above FGS's. accuracy_falls_with_eps: the eps
    sweep never rises. large_eps_reaches_zero: at most `large_eps_accuracy` at the sweep's largest eps.
    transfer_not_below_white_box: no transfer attack beats the best white-box gradient attack.
    gradient_free_not_better: neither does Square. input_gradients_nonzero: at most
    `zero_gradient_percent` of the examples have an all-zero input gradient."""
    acc = result
    gradient = [acc[a] for a in GRADIENT_ATTACKS if a in acc]
    curve = sorted((float(k[4:]), v) for k, v in acc.items() if k.startswith("eps_"))
    rises = [f"{a:g}->{b:g}: {u} -> {v}" for (a, u), (b, v) in zip(curve, curve[1:]) if v > u + points]
    transfers = {k: v for k, v in acc.items() if k.startswith("transfer_")}
    checks = {}
    if "pgd_ce" in acc and "fgs" in acc:
        checks["iterative_beats_single_step"] = (acc["pgd_ce"] > acc["fgs"] + points, f"PGD-CE {acc['pgd_ce']} vs FGS {acc['fgs']}")
    if curve:
        checks["accuracy_falls_with_eps"] = (bool(rises), "rises: " + "; ".join(rises) if rises else "non-increasing")
        checks["large_eps_reaches_zero"] = (curve[-1][1] > large_eps_accuracy, f"{curve[-1][1]} at eps {curve[-1][0]:g}")
    if gradient:
        best = min(gradient)
        checks["transfer_not_below_white_box"] = (any(v < best - points for v in transfers.values()),
                                                  f"transfer {transfers} vs best white-box {best}")
        checks["gradient_free_not_better"] = ("square" in acc and acc["square"] < best - points,
                                              f"Square {acc.get('square', 'not run')} vs best gradient attack {best}")
    if "zero_gradient_percent" in acc:
        checks["input_gradients_nonzero"] = (acc["zero_gradient_percent"] > zero_gradient_percent,
                                             f"{acc['zero_gradient_percent']}% of examples have an all-zero input gradient")
    return {name: {"flag": bool(flag), "why": why} for name, (flag, why) in checks.items()}


# =====================================================================================================
# Checkpoints and files: atomic writes, safe loads
# =====================================================================================================

def atomic_write(path, write):
    """`write(tmp_path)`, then rename: neither a killed run nor a power cut leaves a half-written file
    under `path`. The file's bytes reach the disk before the rename and the rename before this returns
    (fsync of each), else a crash could leave the new name on an empty file. The temporary name is
    random, so that writers on several machines of a shared file system never share one (pids do)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.urandom(6).hex()}"
    try:
        write(tmp)
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    sync_folder(folder)


def sync_folder(folder):
    """fsync of a folder, which makes a rename in it durable (POSIX; elsewhere a folder cannot be opened)."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path, state):
    """Writes `state`, a dict of tensors and plain data (numbers, strings, lists, dicts), to `path` with
    torch.save, atomically (`atomic_write`); `load_checkpoint` reads it back, on the CPU, refusing pickled code.

    The format, as this repository's scripts write it: {"D": D.state_dict(), "opt_D": ..., and "G",
    "opt_G" where the method has them (make_step's modules, by their names), "rng": rng_state(device),
    "record": the run's progress and history, "fingerprint": its settings}. To resume: each module's
    load_state_dict(state[name]), then set_learning_rate(opt, float(opt.param_groups[0]["lr"])) for each
    optimiser (a loaded rate is a CPU tensor; the steps read it on the device), then
    set_rng_state(state["rng"], device). To score: D.load_state_dict(state["D"]) into the same network."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path):
    """A checkpoint's tensors and plain data, never pickled code; ValueError if the file is unusable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, foreign file: all mean "unusable"
        raise ValueError(f"checkpoint {path} is unreadable: {unreadable_cause(err)}") from None


def unreadable_cause(err):
    """What torch.load's failure means for a user, in a few words: torch's own messages run to paragraphs,
    and for pickled code they suggest loading it with weights_only=False, which would run that code."""
    if isinstance(err, EOFError):
        return "empty or cut short"
    if isinstance(err, pickle.UnpicklingError):
        return "it holds something other than tensors and plain data (damaged, or pickled code, which is never run)"
    if "zip archive" in str(err):
        return "not a whole torch file (cut short, or damaged)"
    return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'no detail'}"


def rng_state(device):
    """The global RNG states a checkpoint keeps (the CPU's, and `device`'s if it is CUDA), for set_rng_state."""
    device = as_device(device)
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device):
    """Restores what rng_state saved: a resumed run then draws what an uninterrupted one would have."""
    device = as_device(device)
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
