"""MNIST, paper Table 1: train A (standard), B (PGD adversarial training), C (adversarial networks)
with seed s, and the copies A', B', C' with seed s+1; evaluate white-box and black-box FGS/PGD;
write results/mnist.json and print the table beside the paper's.

    python mnist.py --gpu 0                    # the paper's protocol (200k iterations per model)
    python mnist.py --gpu 0 --protocol authors # the authors' code's settings, which made the paper's table
    python mnist.py --quick                    # a smoke test of the whole pipeline, minutes on a CPU
    python mnist.py --fashion --iters 2000     # Fashion-MNIST, same protocol, eps 0.1

On MNIST, under both protocols, B's eps grows over its first 1,000 minibatches, which neither the paper
nor the authors' code does (docs/protocols.md).
"""
import os

import core
import runner.autoattack_suite
import runner.cli
import runner.data
import runner.errors
import runner.reports
import runner.running
import runner.settings

# ======================================================================================= settings
SETTINGS = runner.settings.COMMON_SETTINGS | dict(   # the paper's MNIST settings; the shared ones are in runner/settings.py
    dataset="mnist",         # what the models train on; each checkpoint records it (not a --set: see FASHION)
    eps=0.3,                 # L-inf radius of every attack and of G's output, [0, 1] pixel units
    iters=200_000,           # D updates per model (one minibatch each)
    d_lr=0.01,               # D: SGD learning rate
    d_weight_decay=1e-3,     # D: L2 on conv/linear kernels (paper; the authors' code uses 1e-5)
    g_opt="adam",            # G's optimiser, adam or sgd (the authors' MNIST code: sgd, lr 0.01)
    g_lr=0.002,              # G's learning rate eta_G
    train_from=0,            # the first training image used: images train_from ... 59,999 train
    pgd_warmup_iters=1000,   # not the paper's: B's eps grows linearly over its first 1,000 minibatches, because from
                             # eps = 0.3 at the first step D1 can die (every conv2 ReLU), as the authors' code does with
                             # some seeds (docs/protocols.md); B's setting alone (the other models' fingerprints omit it)
)
# --protocol authors: the defaults of the authors' MNIST code (GitHub whxbergkamp/RobustDL_GAN, mnist/; files
# below relative to it), where they differ from the paper's above; with runner.settings.AUTHORS_SETTINGS
AUTHORS = dict(
    protocol_source="whxbergkamp/RobustDL_GAN mnist/",
    g_net="authors",         # adversarial_networks/models/simple_cnn_mnist.py: generator (core.MnistG); D1 is their discriminator
    train_from=5000,         # run_gan_mnist.py: input_data.read_data_sets(...), image = tf.reshape(image, [55000, 28, 28, 1]):
                             # the TF tutorial reader's train split, images 5,000 to 59,999 (validation_size=5000)
    test_n=9984,             # black_box_mnist.py: num_steps = int(test_size/batch_size), 156 whole batches of 64
    A=dict(                  # run_standard_mnist.py + adversarial_networks/train_standard_mnist.py
        d_lr=0.1,            # '--learning-rate', default=0.1; only train_op runs (optimizer2 unused): no drop
        d_weight_decay=1e-4, # '--weight-decay', default='1E-4'
    ),
    B=dict(                  # run_pgd_mnist.py + adversarial_networks/train_pgd_mnist.py: lr 0.01 (the paper's), no drop;
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4       (their eps from the first step is not kept: SETTINGS)
    ),
    C=dict(                  # run_gan_mnist.py + adversarial_networks/train_gan_mnist.py
        d_every=5,           # if batch_idx % 5 == 0: ... d_train_and_restore_op (after g_train_op5): 25 G steps per D step
        d_lr_drop_at=0.5,    # if batch_idx<100000: d_train_and_restore_op, else ..._op2 (d_optimizer2, learning_rate/10)
        d_weight_decay=1e-5, # '--weight-decay', default=1E-5 (D and G)
        g_weight_decay=1e-5, # g_decay = weight_decay * 0.5 * sum(...), in g_grads and so in g_grads6
        g_opt="sgd",         # g_optimizer = tf.train.MomentumOptimizer(learning_rate=0.01, momentum=0.9)
        g_lr=0.01,           # ditto
        fd_h=0.001,          # g_step_size = learning_rate/10, D's initial 0.01 ('--learning-rate', default=0.01)
    ),
    EAT=dict(                # run_eat_mnist.py + adversarial_networks/train_eat_standard_mnist.py
        d_lr=0.1,            # '--learning-rate', default=0.1
        d_lr_drop_at=0.5,    # if batch_idx<100000: train_op, else: train_op2 (optimizer2, learning_rate*0.1)
        d_weight_decay=1e-4, # '--weight-decay', default=1E-4
    ),
)
# --fashion: Fashion-MNIST, at its usual radius, where B trains at eps from its first step (and the checkpoints
# trained so stay valid)
FASHION = dict(dataset="fashion_mnist", eps=0.1, pgd_warmup_iters=0)
# The authors have no Fashion-MNIST code: --fashion --protocol authors applies their MNIST settings
FASHION_AUTHORS = AUTHORS | dict(protocol_source="whxbergkamp/RobustDL_GAN mnist/, extrapolated to Fashion-MNIST "
                                                 "(the authors have no Fashion-MNIST code)")

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ======================================================================================= data
def load_data(data_dir, fashion):
    """MNIST or Fashion-MNIST as uint8 (N, 1, 28, 28) tensors, read (or downloaded) by torchvision."""
    import torchvision
    dataset = torchvision.datasets.FashionMNIST if fashion else torchvision.datasets.MNIST
    folder = os.path.join(data_dir, dataset.__name__, "raw")

    def make(download):
        train, test = (dataset(data_dir, train=t, download=download) for t in (True, False))
        return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets

    where = f"put the uncompressed files {', '.join(FILES)} in {folder}/"
    files = dict(zip(["train images", "train labels", "test images", "test labels"], ([os.path.join(folder, f)] for f in FILES)))
    return runner.data.open_dataset(make, dataset.__name__, where, files, n_classes=10, image_shape=(1, 28, 28))


def training_from(data, first, val_n=0):
    """The data with the training images before `first` left out (train_from); with `val_n`, the first
    `val_n` of those left out follow as a fifth item, the validation split of val_from=unused."""
    train_x, train_y, test_x, test_y = data
    if first >= len(train_x):
        raise runner.errors.UserError(f"train_from={first} leaves none of the {len(train_x)} training images")
    unused = [(train_x[:val_n], train_y[:val_n])] if val_n else []
    return train_x[first:], train_y[first:], test_x, test_y, *unused


def training_data(data_dir, fashion, settings):
    """load_data, less the images before train_from, with val_from=unused's validation split (training_from)."""
    val_n = settings["val_n"] if settings["val_from"] == "unused" else 0
    return training_from(load_data(data_dir, fashion), settings["train_from"], val_n)


def build_D(settings):
    return core.D1(in_shape=(1, 28, 28), n_classes=10, input_scale=255 / settings["pixel_scale"])  # D1 is the authors' too


def build_G(settings):
    net = core.MnistG if settings["g_net"] == "authors" else core.G1
    return net(k=settings["g_width"], channels=1, input_scale=255 / settings["pixel_scale"])


# ======================================================================================= run
def configure(args, fashion=False):
    """(name, settings, load) of the run that `args` (--protocol, --quick, --iters, --seed, --set, --data-dir) ask for."""
    settings = runner.settings.resolve_settings(SETTINGS, args, FASHION if fashion else None,
                                           FASHION_AUTHORS if fashion else AUTHORS)
    name = runner.settings.run_name("fashion_mnist" if fashion else "mnist", args)
    return name, settings, lambda: training_data(args.data_dir, fashion, settings)


def main(argv=None):
    parser = runner.cli.experiment_parser(__doc__)
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST instead of MNIST (eps 0.1 unless set)")
    args = runner.cli.parse_cli(parser, argv, __file__)
    name, settings, load = configure(args, args.fashion)
    if args.fashion:
        print("paper rows below are MNIST at eps 0.3: compare the pattern, not the numbers")
    return runner.running.run_experiment(name, settings, args, load, build_D, build_G, runner.reports.paper_rows("mnist"),
                               runner.autoattack_suite)


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
