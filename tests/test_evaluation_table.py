"""The paper's table (core.evaluate_table): each black-box column is crafted on its own surrogate and
scored on the target. Two surrogates with known answers: one whose input gradient is exactly zero (its
FGS leaves every image as it is, so fgs_Z' is the clean accuracy) and an exact copy of the target (its
FGS is the target's own, so fgs_T' is the white-box FGS accuracy)."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import core
from conftest import learnable_images

EPS = 0.1


class RoundedInput(nn.Module):
    """The model on its input rounded to 4 grey levels: torch.round's gradient is exactly zero."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


def learnable_set(n, seed):
    labels = np.random.default_rng(seed).integers(0, 10, n)
    return torch.from_numpy(learnable_images(labels, seed=seed)).unsqueeze(1), torch.from_numpy(labels)


def trained_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
    images, labels = learnable_set(256, 0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(core.to_float(images)), labels).backward()
        opt.step()
    return model.eval()


def test_black_box_columns_are_crafted_on_their_own_surrogate():
    """Fails if black-box examples are crafted on the target, or on another surrogate than the column names."""
    target = trained_mlp()
    surrogates = {"Z'": RoundedInput(copy.deepcopy(target)), "T'": copy.deepcopy(target)}
    images, labels = learnable_set(120, 1)
    table = core.evaluate_table({"M": target}, surrogates, images, labels, EPS, torch.device("cpu"), batch_size=50)["M"]
    assert table["clean"] > 80 and table["fgs"] < table["clean"] - 20, table  # FGS must hurt for this to mean anything
    assert table["fgs_Z'"] == table["clean"], table
    assert table["fgs_T'"] == table["fgs"], table
    assert set(table) == {"clean", "fgs", "pgd", "fgs_Z'", "pgd_Z'", "fgs_T'", "pgd_T'"}
