"""MNIST, paper Table 1: train A (standard), B (PGD adversarial training), C (adversarial networks)
with seed s, and the copies A', B', C' with seed s+1; evaluate white-box and black-box FGS/PGD;
write results/mnist.json and print the table beside the paper's.

    python mnist.py --gpu 0                 # the paper's protocol (200k iterations per model)
    python mnist.py --quick                 # a smoke test of the whole pipeline, minutes on a CPU
    python mnist.py --fashion --iters 2000  # Fashion-MNIST, same protocol, eps 0.1
"""
import json
import os

import core

# ======================================================================================= settings
SETTINGS = dict(
    seed=0,                  # seed s of A, B, C; the copies A', B', C' use s + 1
    eps=0.3,                 # L-inf radius of every attack and of G's output, [0, 1] pixel units
    iters=200_000,           # D updates per model (one minibatch each)
    batch_size=64,           # images per minibatch
    d_lr=0.01,               # D: SGD learning rate
    d_momentum=0.9,          # D: SGD momentum
    d_weight_decay=1e-3,     # D: L2 on conv/linear kernels (paper; the authors' code uses 1e-5)
    d_lr_drop_at=1.0,        # fraction of iters after which D's lr is multiplied by d_lr_drop_factor (1.0: never)
    d_lr_drop_factor=0.1,    # multiplier of D's lr after the drop
    g_width=64,              # G1's width k (channels: k, 2k, 4k)
    g_opt="adam",            # G's optimiser, adam or sgd (the authors' MNIST code: sgd lr 0.01)
    g_lr=0.002,              # G's learning rate eta_G
    g_momentum=0.9,          # G: momentum, when g_opt is sgd
    g_beta1=0.5,             # G: Adam beta1
    g_beta2=0.999,           # G: Adam beta2
    g_steps=5,               # G ascent steps per D step, on the same minibatch
    lam=1.0,                 # lambda: weight of the adversarial loss in F
    gamma=0.01,              # gradient-regulariser weight; negative = the sign of the authors' code
    fd_h=0.0,                # finite-difference step h; 0 = eta_G / 10 (paper)
    hvp="fd",                # regulariser's Hessian-vector product: fd (paper) or exact (double backprop)
    pgd_steps=10,            # PGD steps, in training (B) and evaluation
    pgd_alpha=0.0,           # PGD step size, [0, 1] units; 0 = eps / 4 (paper)
    pgd_train_clean=False,   # B trains on CE_adv only (authors' code); true adds CE_clean
    test_n=0,                # test images scored; 0 = the whole test set
    eval_batch=500,          # images per evaluation batch
    log_every=100,           # iterations between history entries (and NaN checks)
    ckpt_minutes=5.0,        # minutes between checkpoints
)
QUICK = dict(iters=30, g_width=4, test_n=200, log_every=10)   # a pipeline check, not a result
FASHION = dict(eps=0.1)                                        # --fashion: the usual Fashion-MNIST radius

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
    return core.open_dataset(make, dataset.__name__, where)


def build_D(settings):
    return core.D1(in_shape=(1, 28, 28), n_classes=10)


def build_G(settings):
    return core.G1(k=settings["g_width"], channels=1)


def paper_rows():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_tables.json")) as f:
        return json.load(f)["tables"]["mnist"]["rows"]


# ======================================================================================= run
def main(argv=None):
    parser = core.experiment_parser(__doc__)
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST instead of MNIST (eps 0.1 unless set)")
    args = parser.parse_args(argv)
    settings = core.resolve_settings(SETTINGS, args, QUICK, FASHION if args.fashion else None)
    name = ("fashion_mnist" if args.fashion else "mnist") + ("_quick" if args.quick else "")
    core.pick_device(args.gpu)  # a bad --gpu fails before the data set is read
    data = load_data(args.data_dir, args.fashion)
    if args.fashion:
        print("paper rows below are MNIST at eps 0.3: compare the pattern, not the numbers")
    return core.run_experiment(name, settings, args, data, build_D, build_G, paper_rows())


if __name__ == "__main__":
    core.exit_on_error(main)
