"""MNIST, paper Table 1: train A (standard), B (PGD adversarial training), C (adversarial networks)
with seed s, and the copies A', B', C' with seed s+1; evaluate white-box and black-box FGS/PGD;
write results/mnist.json and print the table beside the paper's.

    python mnist.py --gpu 0                 # the paper's protocol (200k iterations per model)
    python mnist.py --quick                 # a smoke test of the whole pipeline, minutes on a CPU
    python mnist.py --fashion --iters 2000  # Fashion-MNIST, same protocol, eps 0.1
"""
import os

import autoattack_suite
import core
import experiment
import reports

# ======================================================================================= settings
SETTINGS = experiment.COMMON_SETTINGS | dict(   # the paper's MNIST settings; the shared ones are in experiment.py
    eps=0.3,                 # L-inf radius of every attack and of G's output, [0, 1] pixel units
    iters=200_000,           # D updates per model (one minibatch each)
    d_lr=0.01,               # D: SGD learning rate
    d_weight_decay=1e-3,     # D: L2 on conv/linear kernels (paper; the authors' code uses 1e-5)
    g_opt="adam",            # G's optimiser, adam or sgd (the authors' MNIST code: sgd, lr 0.01)
    g_lr=0.002,              # G's learning rate eta_G
)
FASHION = dict(eps=0.1)      # --fashion: the usual Fashion-MNIST radius

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
    return experiment.open_dataset(make, dataset.__name__, where, files, n_classes=10, image_shape=(1, 28, 28))


def build_D(settings):
    return core.D1(in_shape=(1, 28, 28), n_classes=10)


def build_G(settings):
    return core.G1(k=settings["g_width"], channels=1)


# ======================================================================================= run
def configure(args, fashion=False):
    """(name, settings, load) of the run that `args` (--quick, --iters, --seed, --set, --data-dir) ask for."""
    settings = experiment.resolve_settings(SETTINGS, args, FASHION if fashion else None)
    name = ("fashion_mnist" if fashion else "mnist") + ("_quick" if args.quick else "")
    return name, settings, lambda: load_data(args.data_dir, fashion)


def main(argv=None):
    parser = experiment.experiment_parser(__doc__)
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST instead of MNIST (eps 0.1 unless set)")
    args = experiment.parse_cli(parser, argv, __file__)
    name, settings, load = configure(args, args.fashion)
    if args.fashion:
        print("paper rows below are MNIST at eps 0.3: compare the pattern, not the numbers")
    return experiment.run_experiment(name, settings, args, load, build_D, build_G, reports.paper_rows("mnist"),
                               autoattack_suite)


if __name__ == "__main__":
    experiment.exit_on_error(main)
