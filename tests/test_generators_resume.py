"""generators_study.py resumes a run cut after its first generator, and runs again once finished: the
generators' checkpoints (G and opt_G, no D) are read as what they are."""
import errno
import json
import os

import pytest
import torch

import generators_study
import runner.checkpoints
import runner.errors
import runner.training


def generator_checkpoint(tmp_path):
    """A checkpoint as training a generator alone writes it: G and its optimiser, no D."""
    path = str(tmp_path / "G.pt")
    G = torch.nn.Linear(2, 2)
    torch.save({"fingerprint": json.dumps({"method": "generator", "model_seed": 0}), "record": {"iters_done": 3},
                "rng": {"cpu": torch.get_rng_state(), "cuda": None}, "dataset": "cifar10", "G": G.state_dict(),
                "opt_G": torch.optim.SGD(G.parameters(), 0.1).state_dict()}, path)
    return path


def test_a_generators_checkpoint_is_read_and_one_without_G_is_refused(tmp_path):
    path = generator_checkpoint(tmp_path)
    assert runner.checkpoints.read_checkpoint(path, "cifar10")["record"]["iters_done"] == 3
    ckpt = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "G"}, path)
    with pytest.raises(runner.errors.UserError, match="no weights of G"):
        runner.checkpoints.read_checkpoint(path, "cifar10")


class CutAfterFirstGenerator(Exception):
    pass


@pytest.mark.slow
def test_generators_study_resumes_after_a_cut_and_runs_again_once_finished(fake_cifar10, tmp_path, no_md5_check,
                                                                           monkeypatch, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "generators.json"
    command = ["--quick", "--gpu", "cpu", "--data-dir", fake_cifar10, "--ckpt-dir", str(ckpt), "--out", str(out)]
    prepare = runner.training.prepare_model

    def cut_after_first_generator(name, method, *args, **kwargs):
        model = prepare(name, method, *args, **kwargs)
        if method == "generator":
            raise CutAfterFirstGenerator
        return model

    monkeypatch.setattr(runner.training, "prepare_model", cut_after_first_generator)
    with pytest.raises(CutAfterFirstGenerator):
        generators_study.main(command)
    monkeypatch.setattr(runner.training, "prepare_model", prepare)
    study = ckpt / "generators_quick"
    assert sorted(os.listdir(study)) == ["G1_k8_vs_A.pt", "G1_k8_vs_A.pt.lock"] and not out.exists()

    first = generators_study.main(command)  # resumes: the first generator is loaded, the rest trained
    assert "G1_k8 vs A: finished checkpoint found" in capsys.readouterr().err
    again = generators_study.main(command)  # finished: every model loaded, none trained
    assert "C with G3_label: finished checkpoint found" in capsys.readouterr().err
    assert again["table5"] == first["table5"] and again["table6"] == first["table6"]
    assert set(first["models"]) == {f"{g}_vs_A" for g in generators_study.GENERATORS} | {
        f"C_{g}" for g in generators_study.GENERATORS}

    def disk_full(path, arrays):
        with open(path, "wb") as f:
            f.write(b"the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(generators_study, "save_npz", disk_full)  # a full disk at its first write
    kept = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path) if name.startswith("generators")}
    with pytest.raises(runner.errors.UserError, match=r"_examples.npz not written \(No space left on device\); what it "
                                                      r"held is kept.*: free some space"):
        generators_study.main(command)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path) if name.startswith("generators")} == kept
