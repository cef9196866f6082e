"""A checkpoint that carries pickled code is refused on load and nothing in it runs: by core's loader,
and so by evaluate's and the training runner's, which read every checkpoint through it. The code
here would create a marker file; the test asserts the load fails and the file never appears."""
import json

import pytest
import torch

import core
import evaluate
import mnist
import runner.errors
import runner.settings
import runner.training


class CreatesMarker:
    """Unpickled, calls open(marker, "w"): a file that appears only if the pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def armed_checkpoint(tmp_path):
    """A checkpoint with what a real one holds (fingerprint, record, weights) and pickled code beside it."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "C.pt"
    fingerprint = json.dumps({"method": "advnet", "model_seed": 0})
    core.save_checkpoint(str(path), {"fingerprint": fingerprint, "record": {"iters_done": 5},
                                     "D": {"w": torch.zeros(2)}, "payload": CreatesMarker(marker)})
    assert not marker.exists()
    return path, marker


def test_core_refuses_a_checkpoint_that_carries_code(armed_checkpoint):
    path, marker = armed_checkpoint
    with pytest.raises(ValueError, match="unreadable: .*pickled code, which is never run"):
        core.load_checkpoint(str(path))
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_evaluate_refuses_a_checkpoint_that_carries_code(armed_checkpoint):
    path, marker = armed_checkpoint
    with pytest.raises(runner.errors.UserError, match="unreadable"):
        evaluate.load(str(path), "mnist")
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_training_refuses_to_resume_from_a_checkpoint_that_carries_code(armed_checkpoint):
    path, marker = armed_checkpoint
    settings = mnist.SETTINGS | runner.settings.QUICK_SETTINGS
    data = lambda: (torch.zeros(64, 1, 28, 28, dtype=torch.uint8), torch.arange(64) % 10)
    with pytest.raises(runner.errors.UserError, match="unreadable"):
        runner.training.prepare_model("C", "advnet", 0, settings, mnist.build_D, mnist.build_G, data, torch.device("cpu"), str(path))
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_the_same_checkpoint_without_code_loads(tmp_path):
    """The refusal is for the code: tensors, strings, numbers and dicts load."""
    state = {"fingerprint": "{}", "record": {"iters_done": 5, "history": [{"loss": 1.5}]}, "D": {"w": torch.arange(3.0)}}
    core.save_checkpoint(str(tmp_path / "plain.pt"), state)
    loaded = core.load_checkpoint(str(tmp_path / "plain.pt"))
    assert loaded["record"] == state["record"] and torch.equal(loaded["D"]["w"], state["D"]["w"])
