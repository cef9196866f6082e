"""What a run says: its start banner, the projection of the whole run, timestamped progress lines in
a log, the final table's caption, and the one-line errors of the usual mistakes."""
import argparse
import io
import json

import pytest
import torch

import ablation_study
import core
import ensemble
import evaluate
import generators_study
import mnist
import runner.data
import runner.jobs
import runner.progress
import runner.reports
import runner.running
import runner.settings
import runner.training
from conftest import write_fake_cifar, write_fake_mnist
from runner.errors import UserError

CPU = torch.device("cpu")


def parse(*argv):
    parser = runner.cli.experiment_parser("")
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("native_bf16", [True, False])  # a CPU with AVX-512 BF16 or AMX, where "auto" is bf16, or without
def test_the_banner_says_device_precision_protocol_models_iterations_paths_and_smoke_test(native_bf16, monkeypatch):
    monkeypatch.setattr(core, "native_bf16", lambda device: native_bf16)
    args = parse("--quick", "--models", "A,C")
    _, settings, _ = mnist.configure(args)
    text = runner.running.banner("mnist_quick", settings, args, CPU, ["A", "C"], None, "ck/mnist_quick", "res/m.json")
    for fragment in ("cpu", f"training in {'bf16' if native_bf16 else 'float32'}", "paper protocol", "A, C",
                     "10 iterations each", "ck/mnist_quick", "res/m.json", "smoke test", "--protocol authors follows"):
        assert fragment in text, fragment
    full = parse("--iters", "700", "--protocol", "authors")
    _, settings, _ = mnist.configure(full)
    text = runner.running.banner("mnist_authors", settings, full, CPU, ["A"], None, "ck", "out.json")
    assert "authors protocol" in text and "700 iterations" in text and "smoke test" not in text
    assert "--protocol authors" not in text  # the hint is for a run that does not follow the authors' code


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def progress_lines(capsys, clock, *updates, **kwargs):
    progress = runner.progress.Progress(200_000, "A (standard)", clock=clock, **kwargs)
    for seconds, done in updates:
        clock.now += seconds
        progress.update(done)
    return capsys.readouterr().err.splitlines()


def test_the_run_is_projected_once_after_a_minute_and_past_a_day_on_a_cpu_names_quick_and_iters(capsys):
    # 1 it/s, 199,900 iterations of this model and 1,000,000 of the models after it: about 14 days
    lines = progress_lines(capsys, FakeClock(), (30, 30), (30, 60), (30, 90), (30, 120), later=1_000_000, on_cpu=True)
    projections = [line for line in lines if "projected" in line]
    assert len(projections) == 1, lines
    assert "13.9 days" in projections[0] and "past a day" in projections[0]
    assert "--quick" in projections[0] and "--iters" in projections[0]
    assert "(run 333:" in lines[-1]  # the ETA covers this model and the later ones: 1,199,880 s


def test_a_projection_within_a_day_or_on_a_gpu_gives_no_warning():
    assert "past a day" not in runner.progress.projection(3 * 3600, 10.0, "it", on_cpu=True)
    assert "past a day" not in runner.progress.projection(30 * 24 * 3600, 10.0, "it", on_cpu=False)


def test_progress_lines_in_a_log_carry_a_timestamp_and_on_a_terminal_do_not(capsys, monkeypatch):
    lines = progress_lines(capsys, FakeClock(), (31, 31))
    assert len(lines) == 1 and lines[0][:4].isdigit() and lines[0][10] == " " and lines[0][13] == ":"
    monkeypatch.setattr(runner.progress.sys.stderr, "isatty", lambda: True, raising=False)
    fake_tty = io.StringIO()
    fake_tty.isatty = lambda: True
    monkeypatch.setattr(runner.progress.sys, "stderr", fake_tty)
    progress = runner.progress.Progress(100, "A (standard)", clock=FakeClock())
    progress.update(100)
    assert fake_tty.getvalue().startswith("\rA (standard) 100/100")


def test_the_tables_caption_says_units_n_eps_protocol_and_smoke_test():
    caption = runner.reports.table_caption(100, 8 / 255, "authors", "batch", quick=True)
    for fragment in ("accuracy in percent", "n = 100", "8/255", "authors protocol", "batch", "smoke test"):
        assert fragment in caption, fragment
    assert "smoke test" not in runner.reports.table_caption(10000, 0.3, "paper", "running")
    assert "eps 0.3," in runner.reports.table_caption(10000, 0.3, "paper", "running")


def test_gpu_without_cuda_says_there_is_none_and_names_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as err:
        runner.jobs.parse_gpus("0")
    assert "no CUDA device" in str(err.value) and "--gpu cpu" in str(err.value) and "below" not in str(err.value)


def test_an_unknown_set_key_lists_only_settable_keys_and_the_closest():
    with pytest.raises(UserError) as err:
        runner.settings.apply_overrides(mnist.SETTINGS, ["itres=5"])
    message = str(err.value)
    assert "did you mean iters?" in message
    listed = message.split("settable: ")[1].split(", ")
    assert "d_lr" in listed and not {"protocol", "protocol_source", "model_overrides", "dataset"} & set(listed)


@pytest.mark.parametrize("pair,fragment", [("iters=many", "iters takes an integer, not 'many'"),
                                           ("eps=wide", "eps takes a number, not 'wide'"),
                                           ("compile=maybe", "compile takes true or false, not 'maybe'")])
def test_a_value_of_the_wrong_type_names_key_value_and_type(pair, fragment):
    with pytest.raises(UserError) as err:
        runner.settings.apply_overrides(mnist.SETTINGS, [pair])
    assert fragment in str(err.value)


def test_slurm_value_of_the_wrong_type_says_an_integer():
    with pytest.raises(UserError) as err:
        runner.jobs.parse_slurm("time=soon")
    assert "time takes an integer" in str(err.value)


def scored_settings(*sets):
    args = evaluate.parse_args(["C.pt", "--dataset", "mnist", *sets])
    _, settings, _ = mnist.configure(parse("--quick"))
    trained = json.loads(runner.settings.fingerprint(settings, "advnet", 0))
    method = trained.pop("method")
    trained.pop("model_seed")
    return evaluate.trained_settings(mnist, mnist.AUTHORS, trained, method, args)


def test_evaluate_set_honours_scoring_settings_and_refuses_training_ones():
    assert scored_settings("--set", "strong_n=7")["strong_n"] == 7
    with pytest.raises(UserError) as err:
        scored_settings("--set", "d_lr=0.5")
    assert "training setting" in str(err.value) and "strong_n" in str(err.value) and "d_lr," not in str(err.value)
    with pytest.raises(UserError) as err:
        scored_settings("--set", "strong_m=5")
    assert "did you mean strong_n?" in str(err.value)


def test_missing_data_that_cannot_be_downloaded_gives_the_cause_and_the_files_expected(tmp_path):
    def make(download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no route to host " + "x" * 500)
    files = {"train images": [str(tmp_path / "train-images-idx3-ubyte")]}
    with pytest.raises(UserError) as err:
        runner.data.open_dataset(make, "MNIST", f"put train-images-idx3-ubyte in {tmp_path}/", files, 10, (1, 28, 28))
    message = str(err.value)
    assert "RuntimeError: Error downloading" in message and "no route to host" in message
    assert f"put train-images-idx3-ubyte in {tmp_path}/" in message and len(message) < 500


class FirstModel(Exception):
    pass


@pytest.fixture
def first_model(monkeypatch):
    """What the first model a run prepares is told of the iterations that follow it (the ETA of the whole
    run); the run stops there."""
    seen = {}

    def record(name, *args, later=0, **kwargs):
        seen.update(name=name, later=later)
        raise FirstModel

    monkeypatch.setattr(runner.training, "prepare_model", record)
    return seen


def test_the_ensemble_eta_covers_every_model_of_every_data_set(first_model, tmp_path):
    data = write_fake_mnist(str(tmp_path / "data"))
    write_fake_mnist(data, "FashionMNIST")
    with pytest.raises(FirstModel):
        ensemble.main(["--gpu", "cpu", "--quick", "--datasets", "mnist,fashion_mnist", "--data-dir", data,
                       "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "ensemble.json")])
    quick = runner.settings.QUICK_SETTINGS["iters"]
    assert first_model == {"name": "A", "later": (5 + 6) * quick}  # MNIST's C, A', B', C' and EAT, then Fashion-MNIST's six


def test_the_generator_study_eta_covers_every_model_it_trains(first_model, tmp_path, no_md5_check):
    data = write_fake_cifar(str(tmp_path / "data"))
    with pytest.raises(FirstModel):
        generators_study.main(["--gpu", "cpu", "--quick", "--data-dir", data, "--ckpt-dir", str(tmp_path / "ckpt"),
                               "--out", str(tmp_path / "generators.json")])
    quick = runner.settings.QUICK_SETTINGS["iters"]
    assert first_model == {"name": "A", "later": (4 + 4 + 3) * quick}  # A', B, B', C; four generators; three co-trained Cs


def test_the_ablation_eta_covers_every_arm_and_seed_still_to_train(first_model, tmp_path):
    data = write_fake_mnist(str(tmp_path / "data"), "FashionMNIST")
    options = ["--gpu", "cpu", "--quick", "--data-dir", data, "--arms", "paper,d_every", "--seeds", "0,1",
               "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "ablation.json")]
    with pytest.raises(FirstModel):
        ablation_study.main(options)
    quick = runner.settings.QUICK_SETTINGS["iters"]
    assert first_model == {"name": "C paper seed 0", "later": 3 * quick}  # paper seed 1, d_every seeds 0 and 1
