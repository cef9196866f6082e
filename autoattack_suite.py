"""AutoAttack's standard suite (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square) from torchattacks, as
attack functions craft(model, x, y) -> x_adv for core.strong_evaluation; the experiment scripts pass
`attacks` (through experiment.py) for --strong-eval. Kept out of core.py, which needs only torch and numpy.

Each attack runs alone on every image (not AutoAttack's cascade on the images still standing), so that
the per-attack accuracies, which the masking checks compare, are those of the attack by itself; the
worst case over them is AutoAttack's robust accuracy (or below it: more attacks take part).

torchattacks' own AutoAttack passes 10 iterations to APGD and FAB; the original uses 100, and so do we
(`strong_steps`). Its package metadata pins requests 2.25, which would downgrade Jupyter; it never
imports requests, so install it with `pip install --no-deps torchattacks` (see the README).
"""
import torch

import experiment


def attacks(settings):
    """name -> craft(model, x, y) for the eps, steps and Square queries in `settings`."""
    try:
        import torchattacks
    except ImportError:
        raise experiment.UserError("--strong-eval runs AutoAttack through torchattacks, which is not installed: "
                             "pip install --no-deps torchattacks") from None
    eps, steps, seed = settings["eps"], settings["strong_steps"], settings["seed"]
    makers = {
        "apgd_ce": lambda m, n: torchattacks.APGD(m, eps=eps, steps=steps, loss="ce", seed=seed),
        "apgd_t": lambda m, n: torchattacks.APGDT(m, eps=eps, steps=steps, n_classes=n, seed=seed),
        "fab_t": lambda m, n: torchattacks.FAB(m, eps=eps, steps=steps, multi_targeted=True, n_classes=n, seed=seed),
        "square": lambda m, n: torchattacks.Square(m, eps=eps, n_queries=settings["square_queries"], seed=seed),
    }
    return {name: crafter(make) for name, make in makers.items()}


def crafter(make):
    def craft(model, x, y):
        with torch.no_grad():
            n_classes = model(x).shape[1]
        attack = make(model, n_classes)
        # Score the model in the mode it was given: torchattacks would otherwise switch it to eval mode
        # (core.scoring_mode has already frozen batch norm's running statistics).
        attack.set_model_training_mode(model.training, batchnorm_training=model.training)
        return attack(x, y).detach()
    return craft
