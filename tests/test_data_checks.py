"""Damaged data files (issue 21): each one stops the run with one line that names the file and what is
wrong with it, exit code 2, before anything is trained or written; "not on disk" only for missing files."""
import json
import os
import pickle

import numpy as np
import pytest

import cifar10
import mnist
import runner.errors
from conftest import write_fake_cifar, write_fake_mnist


def run_main(main, argv, capsys):
    """A script's main as `python script.py argv` runs it: (exit code, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        runner.errors.exit_on_error(lambda: main(argv))
    return stopped.value.code, capsys.readouterr().err


@pytest.fixture
def untouched(tmp_path):
    """experiment -> the --out and --ckpt-dir of a run that fails: a results file of `experiment`, which
    it must leave as it was, and a checkpoint folder it must not create."""
    out, ckpt = tmp_path / "results.json", tmp_path / "ckpt"
    text = None

    def argv(experiment="mnist_quick"):
        nonlocal text
        text = json.dumps({"experiment": experiment, "keep": True})
        out.write_text(text)
        return ["--out", str(out), "--ckpt-dir", str(ckpt)]

    yield argv
    assert text is None or out.read_text() == text, "a failed run overwrote the results"
    assert not ckpt.exists(), "a run with damaged data trained"


def one_line(code, err, *fragments):
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "not on disk" not in lines[0], lines[0]
    return lines[0]


def damaged_mnist(tmp_path, file, damage):
    raw = os.path.join(write_fake_mnist(str(tmp_path / "data")), "MNIST", "raw")
    path = os.path.join(raw, file)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(damage(data))
    return str(tmp_path / "data"), path


def mnist_main(argv):
    return mnist.main(["--gpu", "cpu", "--quick", "--models", "A"] + argv)


def test_truncated_images_file_is_named_not_called_missing(tmp_path, capsys, untouched):
    data, path = damaged_mnist(tmp_path, "train-images-idx3-ubyte", lambda b: b[:5000])
    line = one_line(*run_main(mnist_main, ["--data-dir", data] + untouched(), capsys), path, "truncated", "5,000")
    assert "200,720" in line  # what its header declares: 256 images of 28 x 28 and 16 bytes of header


def test_label_file_of_random_bytes_is_named(tmp_path, capsys, untouched):
    random_bytes = lambda b: np.random.default_rng(0).integers(0, 256, len(b), dtype=np.uint8).tobytes()
    data, path = damaged_mnist(tmp_path, "t10k-labels-idx1-ubyte", random_bytes)
    one_line(*run_main(mnist_main, ["--data-dir", data] + untouched(), capsys), path, "not an IDX file")


def test_label_out_of_range_is_named_before_training(tmp_path, capsys, untouched):
    def label_200(b):
        b[8 + 17] = 200  # the label of training image 17, after the 8-byte header
        return b
    data, path = damaged_mnist(tmp_path, "train-labels-idx1-ubyte", label_200)
    one_line(*run_main(mnist_main, ["--data-dir", data] + untouched(), capsys), path, "label 200", "image 17", "[0, 10)")


@pytest.mark.parametrize("md5", ["checked", "patched"])
def test_truncated_cifar_batch_is_named(md5, tmp_path, capsys, untouched, request):
    """With torchvision's MD5 check (which the real files pass and fake ones fail) or without it (fake
    files, as the issue tried): either way the truncated file is the one named."""
    if md5 == "patched":
        request.getfixturevalue("no_md5_check")
    root = write_fake_cifar(str(tmp_path / "data"), 10)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    argv = ["--gpu", "cpu", "--quick", "--models", "A", "--data-dir", root] + untouched("cifar10_quick")
    one_line(*run_main(cifar10.main, argv, capsys), path, "truncated")


PAYLOAD_RUNS = []


def payload():
    """What a pickle with code in it runs when it is loaded: counted here."""
    PAYLOAD_RUNS.append(1)
    return "not a batch"


class WithCode:
    def __reduce__(self):
        return payload, ()


def test_a_cifar_batch_with_code_in_it_is_named_and_its_code_not_run_again(tmp_path, no_md5_check):
    """torchvision unpickles CIFAR's batches, and so runs what one names; the diagnostic that follows
    its failure must not run it a second time, and names the file and what it names."""
    root = write_fake_cifar(str(tmp_path / "data"), 10)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "wb") as f:
        pickle.dump(WithCode(), f)
    PAYLOAD_RUNS.clear()
    with pytest.raises(runner.errors.UserError, match=r"data_batch_2 is unreadable .*names test_data_checks\.payload"):
        cifar10.load_data(root)
    assert len(PAYLOAD_RUNS) == 1  # torchvision's own load


def test_missing_file_is_still_not_on_disk_and_named(tmp_path):
    data, path = damaged_mnist(tmp_path, "t10k-images-idx3-ubyte", lambda b: b)
    os.remove(path)
    with pytest.raises(runner.errors.UserError, match="not on disk.*t10k-images-idx3-ubyte missing"):
        mnist.load_data(data, False)


def test_images_and_labels_of_different_counts_are_named(tmp_path):
    data, path = damaged_mnist(tmp_path, "t10k-labels-idx1-ubyte", lambda b: b[:4] + (250).to_bytes(4, "big") + b[8:258])
    with pytest.raises(runner.errors.UserError, match="250 test labels for the 256 images"):
        mnist.load_data(data, False)


def test_cifar_label_out_of_range_names_the_training_files(tmp_path, no_md5_check):
    import pickle
    root = write_fake_cifar(str(tmp_path), 10)
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch["labels"][5] = 10
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(runner.errors.UserError, match=r"data_batch_1.*data_batch_5.*label 10 .*image 85 .*\[0, 10\)"):
        cifar10.load_data(root)


def test_train_and_test_images_of_other_shapes_are_named(tmp_path):
    """A test file from another data set (here, 32 x 32 images) does not agree with the training set."""
    from conftest import write_idx
    data, path = damaged_mnist(tmp_path, "t10k-images-idx3-ubyte", lambda b: b)
    write_idx(path, np.zeros((256, 32, 32), np.uint8))
    with pytest.raises(runner.errors.UserError, match="t10k-images-idx3-ubyte.*1x32x32.*1x28x28"):
        mnist.load_data(data, False)
