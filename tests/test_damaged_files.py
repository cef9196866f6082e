"""Every kind of file the project reads, damaged every way (empty, truncated, random bytes, valid but of
the wrong type, valid but of another data set, protocol or width), and the other mistakes a user makes at
the door (a folder that cannot be written, a seed torch cannot take, a checkpoint folder with nothing to
score): each one stops its command with one line and exit code 2, before anything is trained or scored,
and leaves every file that was there byte for byte as it was."""
import json
import errno
import os
import shutil

import numpy as np
import pytest
import torch

import core
import ensemble
import evaluate
import generators_study
import mnist
import over_training
import precision_study
import bench
import gpu_check
import runner.files
from conftest import write_fake_cifar, write_fake_mnist, write_idx
from test_data_checks import run_main

QUICK_A = ["--gpu", "cpu", "--quick", "--models", "A"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A user's folder: fake MNIST and Fashion-MNIST, a --quick model A with snapshots at 5 and 10, the same
    model trained on Fashion-MNIST (at MNIST's eps: the same fingerprint), under the authors' protocol and
    with another width, a copy A', over_training.py's results on A, an ensemble results file and a results file."""
    root = tmp_path_factory.mktemp("user")
    data = write_fake_mnist(str(root / "data"))
    write_fake_mnist(data, "FashionMNIST")
    for folder, extra in (("ckpt", []), ("fashion", ["--fashion", "--set", "eps=0.3"]),
                          ("authors", ["--protocol", "authors", "--set", "train_from=0"]), ("width", ["--set", "g_width=8"])):
        mnist.main(QUICK_A + ["--no-eval", "--set", "keep_every=5", "--data-dir", data, "--ckpt-dir", str(root / folder)] + extra)
    mnist.main(["--gpu", "cpu", "--quick", "--models", "A'", "--no-eval", "--data-dir", data, "--ckpt-dir", str(root / "copy")])
    (root / "results").mkdir()
    over_training.main([str(root / "ckpt" / "A.pt"), "--dataset", "mnist", "--gpu", "cpu", "--data-dir", data, "--quick",
                        "--eval-n", "20", "--set", "strong_n=10", "--out", str(root / "results" / "over_training.json")])
    runner.files.write_json(str(root / "results" / "ensemble.json"), {"experiment": "ensemble_quick", "protocol": "paper",
                                                                     "datasets": {"svhn": {"table": {"EAT": {"clean": 90.0}}}}})
    (root / "results" / "mnist.json").write_text('{"experiment": "mnist_quick", "keep": true}')
    return root


@pytest.fixture
def user(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "user")
    return tmp_path / "user"


def files_under(root):
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def refused(main, argv, root, capsys, *fragments, trained=False):
    """`main(argv)` stops with one line naming `fragments`, exit code 2, and every file under `root` as it was;
    at the door, before anything is done (its only output), unless it `trained` first (progress lines above)."""
    before = files_under(root)
    code, err = run_main(main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, (code, err)
    assert len(lines) == 1 or trained and not any(line.startswith("error") for line in lines[:-1]), err
    for fragment in fragments:
        assert str(fragment) in lines[-1], lines[-1]
    changed = [str(path) for path, content in before.items() if not path.exists() or path.read_bytes() != content]
    assert not changed, f"changed: {changed}"
    return lines[-1]


# ---------------------------------------------------------------- the commands that read each kind of file
def train(user):
    return mnist.main, QUICK_A + ["--data-dir", str(user / "data"), "--ckpt-dir", str(user / "ckpt"),
                                  "--out", str(user / "results" / "mnist.json")]


def train_afresh(user):
    """Training A into a new folder, where a later model's checkpoint (B's) is damaged: found before A trains."""
    main, argv = train(user)
    argv[argv.index("--ckpt-dir") + 1] = str(user / "fresh")
    return main, argv


def eval_only(user):
    return mnist.main, ["--gpu", "cpu", "--quick", "--eval-only", "--data-dir", str(user / "data"),
                        "--ckpt-dir", str(user / "ckpt"), "--out", str(user / "results" / "mnist.json")]


def score(user, *extra):
    return evaluate.main, [str(user / "ckpt" / "A.pt"), "--dataset", "mnist", "--gpu", "cpu", "--data-dir",
                           str(user / "data"), "--out", str(user / "results" / "evaluate.json"), *extra]


def over(user):
    return over_training.main, [str(user / "ckpt" / "A.pt"), "--dataset", "mnist", "--gpu", "cpu", "--quick", "--eval-n",
                                "20", "--set", "strong_n=10", "--data-dir", str(user / "data"),
                                "--out", str(user / "results" / "over_training.json")]


def eat(user):
    return ensemble.main, ["--gpu", "cpu", "--quick", "--datasets", "mnist", "--data-dir", str(user / "data"),
                           "--ckpt-dir", str(user / "ensemble"), "--out", str(user / "results" / "ensemble.json")]


# ---------------------------------------------------------------- the damages
def emptied(path, user):
    path.write_bytes(b"")


def truncated(path, user):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def random_bytes(path, user):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def bare_tensor(path, user):
    torch.save(torch.ones(3), path)


def dict_of_other_things(path, user):
    torch.save({"fingerprint": "{}", "weights": torch.ones(3)}, path)


def replaced_by(folder):
    """The file of the same name from another training run (another data set, protocol or width)."""
    def replace(path, user):
        shutil.copyfile(user / folder / path.name, path)
    return replace


def from_a_newer_version(path, user):
    """The checkpoint as a later version would write it: a setting this version does not know in its fingerprint."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["fingerprint"] = json.dumps(json.loads(ckpt["fingerprint"]) | {"setting_of_later": 1})
    torch.save(ckpt, path)


def json_of(data):
    def write(path, user):
        path.write_text(json.dumps(data))
    return write


def edited(change):
    """The file's JSON with one thing changed: valid, of the right kind, but made another way."""
    def edit(path, user):
        report = json.loads(path.read_text())
        change(report)
        path.write_text(json.dumps(report))
    return edit


def another_dataset_images(path, user):
    write_idx(path, np.zeros((256, 32, 32), np.uint8))  # a valid IDX file of 32 x 32 images: another data set's


def another_dataset_labels(path, user):
    write_idx(path, np.arange(256) % 100)  # a valid IDX file of 100 classes' labels


def labels_for_images(path, user):
    shutil.copyfile(path.parent / "train-labels-idx1-ubyte", path)


BROKEN = [(emptied, "empty"), (truncated, "not a whole torch file"), (random_bytes, "unreadable: "), (bare_tensor, "holds a Tensor"),
          (dict_of_other_things, "no method in its fingerprint")]
RAW = "data/MNIST/raw/"

ROWS = [
    # data files, read by every data-set script
    *[pytest.param(train, RAW + "train-images-idx3-ubyte", damage, [word], id=f"data-images-{damage.__name__}")
      for damage, word in ((emptied, "empty"), (truncated, "truncated"), (random_bytes, "not an IDX file"),
                           (labels_for_images, "not an IDX file of 3-dimensional"),
                           (another_dataset_images, "expected uint8 images of 1x28x28"))],
    pytest.param(train, RAW + "t10k-labels-idx1-ubyte", another_dataset_labels, ["outside [0, 10)"], id="data-labels-100-classes"),
    # a checkpoint, resumed by training, loaded by --eval-only, scored by evaluate.py and over_training.py
    *[pytest.param(reader, "ckpt/A.pt", damage, [word], id=f"checkpoint-{reader.__name__}-{damage.__name__}")
      for reader in (train, eval_only, score, over) for damage, word in BROKEN],
    *[pytest.param(reader, "ckpt/A.pt", replaced_by("fashion"), ["trained on fashion_mnist, not mnist"],
                   id=f"checkpoint-{reader.__name__}-another-dataset") for reader in (train, eval_only, score, over)],
    *[pytest.param(reader, "ckpt/A.pt", replaced_by(other), ["trained with other settings", apart],
                   id=f"checkpoint-{reader.__name__}-another-{other}")
      for reader in (train, eval_only) for other, apart in (("authors", "protocol authors against paper"),
                                                            ("width", "g_width 8 against 4"))],
    *[pytest.param(reader, "ckpt/A.pt", from_a_newer_version, ["does not know (setting_of_later)", "another version"],
                   id=f"checkpoint-{reader.__name__}-newer-version") for reader in (train, eval_only)],
    pytest.param(lambda user: score(user, "--protocol", "paper"), "ckpt/A.pt", replaced_by("authors"),
                 ["trained under the authors protocol"], id="checkpoint-score-another-protocol"),
    pytest.param(train_afresh, "fresh/B.pt", bare_tensor, ["holds a Tensor"], id="checkpoint-of-a-later-model-train"),
    pytest.param(eat, "ensemble/mnist_quick/C.pt", bare_tensor, ["holds a Tensor"], id="checkpoint-of-a-later-model-ensemble"),
    # a kept snapshot, scored by over_training.py
    *[pytest.param(over, "ckpt/A.iter5.pt", damage, [word], id=f"snapshot-{damage.__name__}") for damage, word in BROKEN],
    pytest.param(over, "ckpt/A.iter5.pt", replaced_by("fashion"), ["trained on fashion_mnist"], id="snapshot-another-dataset"),
    pytest.param(over, "ckpt/A.iter5.pt", replaced_by("width"), ["trained with other settings"], id="snapshot-another-width"),
    # the results files merged into
    *[pytest.param(reader, f"results/{name}.json", damage, [word], id=f"results-{name}-{damage.__name__}")
      for reader, name in ((eat, "ensemble"), (over, "over_training"))
      for damage, word in ((emptied, "not readable JSON"), (truncated, "not readable JSON"), (random_bytes, "not readable JSON"),
                           (json_of([1, 2]), "is not"), (json_of({"datasets": [], "models": [], "scoring": []}), "is not"))],
    pytest.param(eat, "results/ensemble.json", edited(lambda r: r.update(protocol="authors")), ["authors protocol"],
                 id="results-ensemble-another-protocol"),
    pytest.param(over, "results/over_training.json", edited(lambda r: r.update(protocol="authors")),
                 ["protocol authors there, paper here"], id="results-over_training-another-protocol"),
    pytest.param(over, "results/over_training.json", edited(lambda r: r["scoring"].update(dataset="fashion_mnist")),
                 ["dataset fashion_mnist there, mnist here"], id="results-over_training-another-dataset"),
    pytest.param(over, "results/over_training.json", edited(lambda r: r["scoring"].update(test_n=1000)),
                 ["test_n 1000 there, 20 here"], id="results-over_training-scored-another-way"),
]


@pytest.mark.parametrize("reader,target,damage,fragments", ROWS)
def test_a_damaged_file_is_one_line_and_loses_nothing(reader, target, damage, fragments, user, capsys):
    path = user / target
    path.parent.mkdir(parents=True, exist_ok=True)
    damage(path, user)
    main, argv = reader(user)
    refused(main, argv, user, capsys, path, *fragments)


# ---------------------------------------------------------------- folders, values, nothing to score
@pytest.mark.parametrize("reader,option", [(train, "--out"), (train, "--ckpt-dir"), (score, "--out"), (over, "--out"),
                                           (eat, "--out"), (eat, "--ckpt-dir")])
def test_a_folder_that_cannot_be_created_is_found_at_the_door(reader, option, user, capsys):
    main, argv = reader(user)
    blocked = user / "results" / "mnist.json" / "under_a_file"  # a folder inside a file: root cannot create it either
    where = argv.index(option) + 1
    argv[where] = str(blocked / os.path.basename(argv[where])) if option == "--out" else str(blocked)
    refused(main, argv, user, capsys, option, "cannot be created")


@pytest.mark.parametrize("study", [generators_study, precision_study])
@pytest.mark.parametrize("option", ["--out", "--ckpt-dir"])
def test_the_studies_find_a_folder_that_cannot_be_created_at_the_door(study, option, user, capsys):
    blocked = user / "results" / "mnist.json" / "under_a_file"  # the data are not there either: the door comes first
    argv = ["--quick", "--gpu", "cpu", "--data-dir", str(user / "no_data"),
            option, str(blocked / "out.json") if option == "--out" else str(blocked)]
    refused(study.main, argv, user, capsys, option, "cannot be created")


def out_of(command):
    """`command` writing its results to the file that the test passes."""
    def with_out(user, out):
        main, argv = command(user)
        argv[argv.index("--out") + 1] = str(out)
        return main, argv
    return with_out


def tool(main, data=True):
    """A study or tool writing its results to the file that the test passes; no data: the door comes first."""
    def with_out(user, out):
        return main, ["--gpu", "cpu", "--quick", "--out", str(out)] + (["--data-dir", str(user / "no_data")] if data else [])
    return with_out


WRITERS = [pytest.param(out_of(train), id="train"), pytest.param(out_of(eval_only), id="eval-only"),
           pytest.param(out_of(score), id="evaluate"),
           pytest.param(tool(generators_study.main), id="generators_study"),
           pytest.param(tool(precision_study.main), id="precision_study"), pytest.param(tool(bench.main, data=False), id="bench"),
           pytest.param(tool(gpu_check.main, data=False), id="gpu_check")]


@pytest.mark.parametrize("held,word", [('{"my": "notes"}', "no experiment's results"), ("[1, 2]", "no experiment's results"),
                                       ('{"experiment": "over_training"}', "results of over_training")],
                         ids=["a-user-file", "a-list", "another-experiment"])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_file_of_something_else_at_out_is_never_written_over(writer, held, word, user, capsys):
    out = user / "results" / "notes.json"
    out.write_text(held)
    main, argv = writer(user, out)
    refused(main, argv, user, capsys, out, "is not a results file of", word)


@pytest.mark.parametrize("held", ['{"my": "notes"}', "[1, 2]", "not json"])
def test_a_file_of_something_else_where_robustbench_writes_is_never_written_over(held, user, capsys):
    main, argv = score(user, "--robustbench")
    info = user / "results" / "evaluate_model_info.json"
    info.write_text(held)
    refused(main, argv, user, capsys, info)


@pytest.mark.parametrize("extra,fragment", [(["--seed", str(2 ** 64)], "seed=18446744073709551616 is outside"),
                                            (["--seed", str(2 ** 64 - 1)], "outside"),  # its copies' seed would be 2**64
                                            (["--seeds", f"0,{2 ** 70}"], "--seeds"), (["--seeds", "-1"], "--seeds")])
def test_a_seed_torch_cannot_take_is_refused_at_the_door(extra, fragment, user, capsys):
    main, argv = train(user)
    refused(main, argv + extra, user, capsys, fragment)


@pytest.mark.parametrize("keep", [None, "copy/A'.pt", "ckpt/A.iter5.pt"], ids=["typo", "only-a-copy", "only-a-snapshot"])
def test_eval_only_with_nothing_to_score_keeps_the_results(keep, user, capsys):
    """The multi-machine path: --eval-only on a --ckpt-dir with a typo, or one without A, B or C."""
    folder = user / "elsewhere"
    if keep:
        folder.mkdir()
        shutil.copy(user / keep, folder)
    main, argv = eval_only(user)
    argv[argv.index("--ckpt-dir") + 1] = str(folder)
    refused(main, argv, user, capsys, "nothing to evaluate", folder, "mnist.json is left as it is")


def second_save_fails(user, monkeypatch, error):
    """Training A into a fresh folder, its checkpoint saved at every logging step, where the second save
    raises error(path): (main, argv, the folder)."""
    main, argv = train(user)
    ckpt = user / "fresh"
    argv[argv.index("--ckpt-dir") + 1] = str(ckpt)
    real_save = torch.save

    def fails_second_time(state, path):
        if (ckpt / "A.pt").exists():
            raise error(path)
        real_save(state, path)

    monkeypatch.setattr(torch, "save", fails_second_time)
    return main, argv + ["--set", "ckpt_minutes=0"], ckpt


def test_a_failed_save_of_any_kind_keeps_the_last_good_checkpoint(user, monkeypatch, capsys):
    """torch.save into a read-only or vanished folder raises RuntimeError, not OSError."""
    main, argv, ckpt = second_save_fails(user, monkeypatch, lambda path: RuntimeError(f"File {path} cannot be opened."))
    line = refused(main, argv, user, capsys, "RuntimeError: File", "cannot be opened",
                   f"{ckpt / 'A.pt'} keeps iteration 5", "reached iteration 10 of 10", trained=True)
    assert "make the folder writable" in line
    assert sorted(os.listdir(ckpt)) == ["A.pt", "A.pt.lock"]  # no temporary file left


@pytest.mark.parametrize("code,remedy", [(errno.ENOSPC, "free some space"), (errno.EROFS, "choose a place on a writable one"),
                                         (errno.ENAMETOOLONG, "choose a shorter name")])
def test_a_checkpoint_that_cannot_be_saved_is_told_what_its_cause_asks(user, monkeypatch, capsys, code, remedy):
    main, argv, ckpt = second_save_fails(user, monkeypatch, lambda path: OSError(code, os.strerror(code), str(path)))
    line = refused(main, argv, user, capsys, os.strerror(code),
                   f"{ckpt / 'A.pt'} keeps iteration 5", f"{remedy}, and run the same command to resume", trained=True)
    assert (remedy == "free some space") == ("free some space" in line)


# ---------------------------------------------------------------- what is recorded
def test_the_json_records_the_images_scored_not_those_asked(user):
    main, argv = score(user, "--eval-n", "100000")
    report = main(argv)
    assert report["eval"]["n_test"] == 256  # the fake test set's size
    assert report["settings"]["dataset"] == "mnist"


def test_a_checkpoint_written_before_the_data_set_was_recorded_loads_resumes_and_scores(user, monkeypatch):
    """A checkpoint as commit 714a854 wrote them (no dataset key) resumes with the fingerprint it has,
    is scored by evaluate.py, and gains the data set at its next save."""
    ckpt = user / "old"
    argv = QUICK_A + ["--no-eval", "--data-dir", str(user / "data"), "--ckpt-dir", str(ckpt), "--set", "ckpt_minutes=0"]
    real_save = core.save_checkpoint

    def stop_after_first_save(path, state):  # the checkpoint at iteration 5, written without the dataset key
        real_save(path, {k: v for k, v in state.items() if k != "dataset"})
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "save_checkpoint", stop_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(argv)
    monkeypatch.undo()
    old = core.load_checkpoint(str(ckpt / "A.pt"))
    assert "dataset" not in old and old["record"]["iters_done"] == 5
    assert "dataset" not in json.loads(old["fingerprint"])  # 714a854 had no such setting: its fingerprints stay valid
    scored = evaluate.main([str(ckpt / "A.pt"), "--dataset", "mnist", "--gpu", "cpu", "--data-dir", str(user / "data"),
                            "--eval-n", "20", "--out", str(user / "results" / "old.json")])
    assert scored["iteration"] == 5
    mnist.main(argv)
    resumed = core.load_checkpoint(str(ckpt / "A.pt"))
    assert resumed["fingerprint"] == old["fingerprint"] and resumed["dataset"] == "mnist"
    assert resumed["record"]["iters_done"] == 10 and [s["from_iter"] for s in resumed["record"]["sessions"]] == [0, 5]


def test_an_old_checkpoint_of_fewer_classes_than_the_test_set_is_refused(tmp_path, no_md5_check, capsys):
    """A checkpoint too old to name its data set, scored on a data set of the same shapes but more classes
    (CIFAR-10's on CIFAR-100): caught by its outputs, not an IndexError."""
    data = write_fake_cifar(write_fake_cifar(str(tmp_path / "data"), 10), 100)
    import cifar10
    cifar10.main(QUICK_A + ["--no-eval", "--iters", "2", "--data-dir", data, "--ckpt-dir", str(tmp_path / "ckpt")])
    path = tmp_path / "ckpt" / "A.pt"
    core.save_checkpoint(str(path), {k: v for k, v in core.load_checkpoint(str(path)).items() if k != "dataset"})
    capsys.readouterr()  # the training's progress
    refused(evaluate.main, [str(path), "--dataset", "cifar100", "--gpu", "cpu", "--data-dir", data, "--eval-n", "20",
                            "--out", str(tmp_path / "eval.json")], tmp_path, capsys, path, "scores 10 classes",
            "is --dataset right")
