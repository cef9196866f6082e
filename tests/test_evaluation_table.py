"""The paper's table (core.evaluate_table): each black-box column is crafted on its own surrogate and
scored on the target. Two surrogates with known answers: one whose input gradient is exactly zero (its
FGS leaves every image as it is, so fgs_Z' is the clean accuracy) and an exact copy of the target (its
FGS is the target's own, so fgs_T' is the white-box FGS accuracy)."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import core
from conftest import RoundedInput, learnable_set

EPS = 0.1


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
