"""CIFAR-10, paper Table 3: train A (standard), B (PGD adversarial training), C (adversarial networks)
with seed s, and the copies A', B', C' with seed s+1; evaluate white-box and black-box FGS/PGD;
write results/cifar10.json and print the table beside the paper's.

    python cifar10.py --gpu 0                      # the paper's protocol (200k iterations per model)
    python cifar10.py --gpu 0 --protocol authors   # the authors' code's settings, which made the paper's table
    python cifar10.py --gpu 0,1,2,3                # the six trainings spread over four GPUs, then evaluation
    python cifar10.py --quick                      # a smoke test of the whole pipeline
"""
import os

import core
import runner.autoattack_suite
import runner.data
import runner.errors
import runner.running
import runner.settings

# ======================================================================================= settings
SETTINGS = runner.settings.COMMON_SETTINGS | dict(   # the paper's CIFAR-10 settings; the shared ones are in runner/settings.py
    dataset="cifar10",       # what the models train on; each checkpoint records it
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
# --protocol authors: the defaults of the authors' CIFAR-10 code (GitHub whxbergkamp/RobustDL_GAN, cifar10/;
# files below relative to it), where they differ from the paper's above; with runner.settings.AUTHORS_SETTINGS.
# Their pixels are x/255 as ours (pixel_scale): adversarial_networks/inputs.py, get_input_cifar10,
# image = tf.cast(image, tf.float32)/255.
# B's and C's weight decay: the run scripts' defaults (1E-4, 1E-5), as every model here. Their README's
# commands pass --weight-decay=1E-5 to both (an earlier version of it passed 1E-4 to both); the paper's text
# says 1E-5. So B with 1e-5 is the README's B: `--set d_weight_decay=1e-5` (every model's: with --models "B,B'").
AUTHORS = dict(
    protocol_source="whxbergkamp/RobustDL_GAN cifar10/",
    g_net="authors",         # adversarial_networks/models/resnet18_2.py: generator, stride-2 convs to 2k and 4k
                             # (core.AuthorsG1); its resnet_v1 is D2
    augment_pad=2,           # adversarial_networks/train_*.py: resize_image_with_crop_or_pad(x, 32+4, 32+4), 2 px a side
    test_n=9984,             # adversarial_networks/run_attacks_black_box_cifar10.py: int(test_size/batch_size) batches of 64
    A=dict(                  # run_standard_cifar10.py + adversarial_networks/train_standard_cifar10.py: lr 0.1, x0.1 at 100k
        d_lr_drop2_at=0.75,  # elif batch_idx<150000: train_op2, else: train_op3 (optimizer3, learning_rate*0.01)
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4
    ),
    B=dict(                  # run_pgd_cifar10.py + adversarial_networks/train_pgd_cifar10.py: lr 0.1, x0.1 at 100k
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4 (their README's command: 1E-5, see above)
    ),
    C=dict(                  # run_gan_cifar10.py + adversarial_networks/train_gan_cifar10.py: D lr 0.1, x0.1 at 100k,
                             # wd 1e-5 ('--weight-decay', default=1E-5; their README's command too), G Adam 0.002 (0.5, 0.999)
        g_weight_decay=1e-5, # g_decay = weight_decay * 0.5 * sum(...), in g_grads and so in g_grads6
        fd_h=0.01,           # g_step_size = learning_rate/10, D's initial 0.1
    ),
    EAT=dict(                # run_eat_cifar10.py + adversarial_networks/train_eat_standard_cifar10.py: lr 0.1, x0.1 at 100k
        d_lr_drop2_at=0.75,  # elif batch_idx<150000 ... else: optimizer3 (learning_rate*0.01)
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4
    ),
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
    return runner.data.open_dataset(make, dataset.__name__, where, files, n_classes, image_shape=(3, 32, 32))


def load_data(data_dir):
    import torchvision
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    return load_cifar(torchvision.datasets.CIFAR10, data_dir, "cifar-10-batches-py", train_files, ["test_batch"],
                      "batches.meta", n_classes=10)


def build_D(settings):
    return core.D2(n_classes=settings["n_classes"], in_channels=3, input_scale=255 / settings["pixel_scale"])  # theirs too


def build_G(settings):
    net = core.AuthorsG1 if settings["g_net"] == "authors" else core.G1
    return net(k=settings["g_width"], channels=3, input_scale=255 / settings["pixel_scale"])


# ======================================================================================= run
configure = runner.running.configure_with("cifar10", SETTINGS, load_data, AUTHORS)


def main(argv=None):
    return runner.running.dataset_main(__doc__, __file__, configure, build_D, build_G, "cifar10", runner.autoattack_suite, argv)


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
