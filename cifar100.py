"""CIFAR-100, paper Table 7 (appendix): CIFAR-10's protocol and networks, with 100 outputs.
Trains A, B, C (seed s) and A', B', C' (seed s+1), evaluates, writes results/cifar100.json.

    python cifar100.py --gpu 0
    python cifar100.py --quick
"""
import runner.autoattack_suite
import runner.errors
import runner.running
from cifar10 import build_D, build_G, load_cifar, AUTHORS as CIFAR10_AUTHORS, SETTINGS as CIFAR10_SETTINGS

# ======================================================================================= settings
SETTINGS = CIFAR10_SETTINGS | dict(   # identical to CIFAR-10 (paper appendix) but for the outputs
    dataset="cifar100",      # what the models train on; each checkpoint records it
    n_classes=100,           # D2's outputs
)
# --protocol authors: the authors have no CIFAR-100 code; their CIFAR-10 settings are applied
AUTHORS = CIFAR10_AUTHORS | dict(protocol_source="whxbergkamp/RobustDL_GAN cifar10/, extrapolated to CIFAR-100 "
                                                 "(the authors' CIFAR-100 code is not in the repository)")


# ======================================================================================= data
def load_data(data_dir):
    import torchvision
    return load_cifar(torchvision.datasets.CIFAR100, data_dir, "cifar-100-python", ["train"], ["test"], "meta", n_classes=100)


# ======================================================================================= run
configure = runner.running.configure_with("cifar100", SETTINGS, load_data, AUTHORS)


def main(argv=None):
    return runner.running.dataset_main(__doc__, __file__, configure, build_D, build_G, "cifar100", runner.autoattack_suite, argv)


if __name__ == "__main__":
    runner.errors.exit_on_error(main)
