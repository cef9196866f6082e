"""SVHN, paper Table 2: train A (standard), B (PGD adversarial training), C (adversarial networks)
with seed s, and the copies A', B', C' with seed s+1, on the training set plus 80k images drawn from
`extra`; evaluate white-box and black-box FGS/PGD; write results/svhn.json beside the paper's table.

    python svhn.py --gpu 0                      # the paper's protocol (200k iterations per model)
    python svhn.py --gpu 0 --protocol authors   # the authors' code's settings, which made the paper's table
    python svhn.py --quick                      # a smoke test of the whole pipeline
"""
import os

import torch

import core
import runner.autoattack_suite
import runner.data
import runner.errors
import runner.running
import runner.settings

# ======================================================================================= settings
SETTINGS = runner.settings.COMMON_SETTINGS | dict(   # the paper's SVHN settings; the shared ones are in runner/settings.py
    dataset="svhn",          # what the models train on; each checkpoint records it
    eps=0.05,                # L-inf radius of every attack and of G's output, [0, 1] pixel units
    iters=200_000,           # D updates per model (one minibatch each)
    n_classes=10,            # D2's outputs
    extra_n=80_000,          # images drawn (with replacement, as the authors) from `extra` with the run's seed
    d_lr=0.01,               # D: SGD learning rate ...
    d_lr_drop_at=0.5,        # ... times d_lr_drop_factor (0.1) after this fraction of iters (100k of 200k)
    d_weight_decay=1e-5,     # D: L2 on conv/linear kernels
    g_opt="sgd",             # G's optimiser: SGD, momentum 0.9
    g_lr=0.01,               # G's learning rate eta_G
)
# --protocol authors: the defaults of the authors' SVHN code (GitHub whxbergkamp/RobustDL_GAN, svhn/; files
# below relative to it), where they differ from the paper's above; with runner.settings.AUTHORS_SETTINGS
AUTHORS = dict(
    protocol_source="whxbergkamp/RobustDL_GAN svhn/",
    pixel_scale=256,         # run_*_svhn.py: mat_content['X'].astype(np.float32)/256.0 (train, extra and test)
    d_net="authors",         # adversarial_networks/models/resnet18.py: resnet_v1, no BN-ReLU after the stem conv and
                             # one after the last stage (core.SvhnD)
    g_net="authors",         # resnet18.py: generator, stride-2 convs to filters=ngf*mult*2, 2k and 4k (core.AuthorsG1)
    test_n=25984,            # adversarial_networks/run_attacks_black_box_svhn.py: num_steps = int(num_test_examples/batch_size),
                             # 406 whole batches of 64 of the 26,032 test images
    A=dict(                  # run_standard_svhn.py + adversarial_networks/train_standard_svhn.py: lr 0.01, x0.1 at
        d_weight_decay=1e-4, # 100k (the paper's); '--weight-decay', default=1E-4
    ),
    B=dict(                  # run_pgd_svhn.py + adversarial_networks/train_pgd_svhn.py: lr 0.01, x0.1 at 100k
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4
    ),
    C=dict(                  # run_gan_svhn.py + adversarial_networks/train_gan_svhn.py: D lr 0.01, x0.1 at 100k, G
                             # tf.train.MomentumOptimizer(learning_rate=0.01, momentum=0.9) (the paper's)
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4 (D and G)
        g_weight_decay=1e-4, # g_decay = weight_decay * 0.5 * sum(...), in g_grads and so in g_grads6
        fd_h=0.001,          # g_step_size = learning_rate/10, D's initial 0.01
    ),
    EAT=dict(                # run_eat_svhn.py + adversarial_networks/train_eat_standard_svhn.py: lr 0.01
        d_weight_decay=1e-4, # ('--learning-rate', default=0.01), x0.1 at 100k; '--weight-decay', default=1E-4
    ),
)


# ======================================================================================= data
def extra_subset(n_extra, n, seed):
    """Indices of the `extra` images added to the training set: the same for the same seed."""
    return torch.randint(n_extra, (n,), generator=torch.Generator().manual_seed(seed))


def load_data(data_dir, extra_n, seed):
    """SVHN train + `extra_n` images of extra, and test, as uint8 (N, 3, 32, 32) tensors (label 0 is digit 0)."""
    import torchvision
    root = os.path.join(data_dir, "SVHN")
    splits = ["train", "test"] + (["extra"] if extra_n else [])

    def make(download):
        sets = {s: torchvision.datasets.SVHN(root, split=s, download=download) for s in splits}
        images = {s: torch.from_numpy(d.data) for s, d in sets.items()}
        labels = {s: torch.from_numpy(d.labels) for s, d in sets.items()}
        if extra_n:
            pick = extra_subset(len(labels["extra"]), extra_n, seed)
            images["train"] = torch.cat([images["train"], images["extra"][pick]])
            labels["train"] = torch.cat([labels["train"], labels["extra"][pick]])
        return images["train"], labels["train"], images["test"], labels["test"]

    where = f"put {', '.join(f'{s}_32x32.mat' for s in splits)} in {root}/"
    paths = lambda names: [os.path.join(root, f"{name}_32x32.mat") for name in names]
    train = paths(["train"] + (["extra"] if extra_n else []))
    files = {"train images": train, "train labels": train, "test images": paths(["test"]), "test labels": paths(["test"])}
    return runner.data.open_dataset(make, "SVHN", where, files, n_classes=10, image_shape=(3, 32, 32))


def build_D(settings):
    net = core.SvhnD if settings["d_net"] == "authors" else core.D2
    return net(n_classes=settings["n_classes"], in_channels=3, input_scale=255 / settings["pixel_scale"])


def build_G(settings):
    net = core.AuthorsG1 if settings["g_net"] == "authors" else core.G1
    return net(k=settings["g_width"], channels=3, input_scale=255 / settings["pixel_scale"])


# ======================================================================================= run
def configure(args):
    """(name, settings, load) of the run that `args` (--protocol, --quick, --iters, --seed, --set, --data-dir) ask for."""
    settings = runner.settings.resolve_settings(SETTINGS, args, authors=AUTHORS)
    return runner.settings.run_name("svhn", args), settings, lambda: load_data(args.data_dir, settings["extra_n"], settings["seed"])


def main(argv=None):
    return runner.running.dataset_main(__doc__, __file__, configure, build_D, build_G, "svhn", runner.autoattack_suite, argv)


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
