"""CIFAR-10, paper Table 3: train A (standard), B (PGD adversarial training), C (adversarial networks)
with seed s, and the copies A', B', C' with seed s+1; evaluate white-box and black-box FGS/PGD;
write results/cifar10.json and print the table beside the paper's.

    python cifar10.py --gpu 0           # the paper's protocol (200k iterations per model)
    python cifar10.py --gpu 0,1,2,3     # the six trainings spread over four GPUs, then evaluation
    python cifar10.py --quick           # a smoke test of the whole pipeline
"""
import os

import autoattack_suite
import core
import experiment

# ======================================================================================= settings
SETTINGS = experiment.COMMON_SETTINGS | dict(   # the paper's CIFAR-10 settings; the shared ones are in experiment.py
    eps=8 / 256,             # L-inf radius of every attack and of G's output, [0, 1] pixel units
    iters=200_000,           # D updates per model (one minibatch each)
    n_classes=10,            # D2's outputs
    d_lr=0.1,                # D: SGD learning rate ...
    d_lr_drop_at=0.5,        # ... times d_lr_drop_factor (0.1) after this fraction of iters (100k of 200k)
    d_weight_decay=1e-5,     # D: L2 on conv/linear kernels
    g_opt="adam",            # G's optimiser
    g_lr=0.002,              # G's learning rate eta_G (Adam, betas 0.5, 0.999)
    augment=True,            # random pad-and-crop by up to 4 px and horizontal flip, before G sees the image
)


# ======================================================================================= data
def load_cifar(dataset, data_dir, folder, train_files, test_files, meta, n_classes):
    """CIFAR-10 or CIFAR-100 (torchvision class `dataset`) as uint8 (N, 3, 32, 32) tensors and labels."""
    import torch

    def make(download):
        train, test = (dataset(data_dir, train=t, download=download) for t in (True, False))
        return core.from_hwc(train.data), torch.tensor(train.targets), core.from_hwc(test.data), torch.tensor(test.targets)

    names = train_files + test_files + [meta]
    where = f"put {', '.join(names)} (from the python version's archive) in {os.path.join(data_dir, folder)}/"
    paths = lambda names: [os.path.join(data_dir, folder, name) for name in names]
    files = {"train images": paths(train_files), "train labels": paths(train_files), "test images": paths(test_files),
             "test labels": paths(test_files), "metadata": paths([meta])}
    return experiment.open_dataset(make, dataset.__name__, where, files, n_classes, image_shape=(3, 32, 32))


def load_data(data_dir):
    import torchvision
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    return load_cifar(torchvision.datasets.CIFAR10, data_dir, "cifar-10-batches-py", train_files, ["test_batch"],
                      "batches.meta", n_classes=10)


def build_D(settings):
    return core.D2(n_classes=settings["n_classes"], in_channels=3)


def build_G(settings):
    return core.G1(k=settings["g_width"], channels=3)


# ======================================================================================= run
configure = experiment.configure_with("cifar10", SETTINGS, load_data)


def main(argv=None):
    return experiment.dataset_main(__doc__, __file__, configure, build_D, build_G, "cifar10", autoattack_suite, argv)


if __name__ == "__main__":
    experiment.exit_on_error(main)
