"""gpu_check.py, the one prepared GPU acceptance run: its --quick run on the CPU (every section, the CUDA-only
parts skipped with a note), its budget, and the verdicts and defaults it derives from measurements."""
import errno
import json
import os
import textwrap

import pytest
import torch

import core
import gpu_check
import runner.errors
import runner.files
import runner.training

CPU = torch.device("cpu")
CHECKS = {"generator_gain", "regulariser_mnist", "regulariser_cifar", "host_syncs", "graphed_losses", "concurrent_losses",
          "graphed_concurrent_losses", "evaluation_memory_cifar", "evaluation_memory_mnist", "pytest"}
SECTIONS = ["precision", "timings", "losses", "evaluation", "pytest"]


@pytest.mark.slow
def test_quick_run_on_the_cpu_writes_every_section_after_every_part(tmp_path, monkeypatch):
    written, write_json = [], runner.files.write_json
    monkeypatch.setattr(runner.files, "write_json", lambda path, data: (written.append(set(data)), write_json(path, data)))
    out = tmp_path / "gpu_check_quick.json"
    gpu_check.main(["--gpu", "cpu", "--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    for i, section in enumerate(SECTIONS):  # saved with each part done, before the next began
        assert any(section in keys and not set(SECTIONS[i + 1:]) & keys for keys in written), section
    assert report["provenance"]["device"].startswith("cpu") and report["provenance"]["git_commit"]
    assert set(report["verdicts"]) == CHECKS

    precision = report["precision"]  # run on the CPU under bf16, as CUDA's training path runs it
    assert {c: report["verdicts"][c]["verdict"] for c in ("generator_gain", "regulariser_mnist", "regulariser_cifar")} == \
        dict.fromkeys(("generator_gain", "regulariser_mnist", "regulariser_cifar"), "pass"), report["verdicts"]
    assert len(precision["generator_gain"]["bf16"]) == 5

    for name, row in report["timings"]["steps"].items():
        assert row["eager"]["it_per_s"] > 0 and row["graphed"] == {"skipped": gpu_check.CUDA_ONLY}, name
        assert row["host_syncs"]["aten_ops"] > 20 and row["host_syncs"]["aten_syncs"] == {}, name
    assert set(report["timings"]["steps"]) == {f"{n}/{m}" for n, methods in gpu_check.TIMED.items() for m in methods}
    for network in ("mnist", "cifar"):
        assert report["timings"]["concurrent"][network]["eager"]["round_seconds"] > 0
        losses = report["losses"][network]
        assert losses["graphed"] == {"skipped": gpu_check.CUDA_ONLY}
        assert set(losses["concurrent"]["models"]) == set(gpu_check.MODELS)
        assert losses["concurrent"]["models"]["A"]["match"], "A draws no random numbers: the same losses in turn"
        evaluated = report["evaluation"][network]
        assert evaluated["table"]["seconds"] > 0 and evaluated["table"]["peak_gib"] is None and "CPU" in evaluated["memory"]

    tests = report["pytest"]["tests"]  # every test collected; those that need CUDA skipped here, the others passed
    assert report["pytest"]["collected"] == len(tests) > 5
    skipped = [t for t in tests.values() if t["outcome"] == "skipped"]
    assert skipped and all("CUDA" in t["message"] for t in skipped)
    assert all(t["outcome"] in ("passed", "skipped") for t in tests.values())
    assert report["verdicts"]["pytest"]["verdict"] == "not run"
    assert (tmp_path / report["pytest"]["log"]).exists()

    hours = report["projection"]["scripts"]
    assert set(hours) == {"mnist.py", "svhn.py", "cifar10.py", "cifar100.py", "ensemble.py", "generators_study.py"}
    assert all(h["eager"]["total"] > 0 and h["graphed"] is None for h in hours.values())
    assert report["recommendation"]["cuda_graphs"]["default"] is False and "note" in report["recommendation"]


def test_a_spent_budget_skips_the_later_parts_and_measurements_with_a_note(tmp_path):
    run = gpu_check.Run(CPU, gpu_check.SETTINGS | {"budget": 0.5}, True, str(tmp_path / "check.json"), "test")

    def slow(run, result):
        result["first"] = run.attempt(lambda: {"done": True})
        while run.left() > 0:
            pass
        result["second"] = run.attempt(lambda: {"done": True})

    never = lambda run, result: pytest.fail("a part after the budget must not start")
    judge = lambda result, settings: {}
    gpu_check.run_parts(run, [("slow", slow, judge), ("later", never, judge)])
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["slow"]["first"] == {"done": True} and report["slow"]["second"] == {"skipped": gpu_check.SPENT}
    assert report["later"]["skipped"] == gpu_check.SPENT
    assert report["verdicts"]["later"]["verdict"] == "not run"


@pytest.mark.parametrize("error", [runner.errors.UserError("results.json not written (No space left on device)"),
                                   OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results.json")])
def test_a_failed_save_within_a_measurement_stops_the_run_and_is_not_recorded_as_the_measurement(error, tmp_path):
    run = gpu_check.Run(CPU, gpu_check.SETTINGS, True, str(tmp_path / "check.json"), "test")

    def saves(run, result):
        raise error
    assert run.attempt(lambda: 1 / 0)["error"].startswith("ZeroDivisionError")  # a failed measurement: noted, the run goes on
    with pytest.raises(type(error)):
        gpu_check.run_parts(run, [("saves", saves, lambda result, settings: {})])
    assert not (tmp_path / "check.json").exists()


def test_with_no_budget_the_file_still_has_every_section_and_keeps_the_defaults_off(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main(["--gpu", "cpu", "--quick", "--out", str(out), "--set", "budget=1e-9"])
    report = json.loads(out.read_text())
    assert all(report[s]["skipped"] == gpu_check.SPENT for s in SECTIONS)
    assert all(v is None for v in report["projection"]["all_scripts_hours"].values())
    assert report["recommendation"]["combination"] == "eager"
    assert not report["recommendation"]["cuda_graphs"]["default"] and not report["recommendation"]["concurrent_models"]["default"]


# ------------------------------------------------------------------------------- verdicts from made-up measurements
def losses_verdicts(failing=()):
    return {f"{c}_losses": {"verdict": "fail" if c in failing else "pass"} for c in gpu_check.COMBOS if c != "eager"}


@pytest.mark.parametrize("hours, failing, expected", [
    ({"eager": 100, "graphed": 50, "concurrent": 90, "graphed_concurrent": 48}, (), (True, False)),  # concurrency adds 4 %
    ({"eager": 100, "graphed": 60, "concurrent": 70, "graphed_concurrent": 30}, (), (True, True)),
    ({"eager": 100, "graphed": 120, "concurrent": 130, "graphed_concurrent": 125}, (), (False, False)),  # slower
    ({"eager": 100, "graphed": 50, "concurrent": 95, "graphed_concurrent": 40}, ("graphed", "graphed_concurrent"), (False, False)),
    ({"eager": 100, "graphed": 60, "concurrent": 70, "graphed_concurrent": 30}, ("graphed_concurrent",), (True, False)),
    ({"eager": 100, "graphed": 95, "concurrent": 80, "graphed_concurrent": 78}, (), (False, True)),  # graphs: 5 % only
    ({"eager": None, "graphed": 50, "concurrent": 60, "graphed_concurrent": 30}, (), (False, False)),  # no baseline
])
def test_a_setting_becomes_a_default_only_where_it_is_faster_and_its_losses_match(hours, failing, expected):
    recommended = gpu_check.recommend(hours, losses_verdicts(failing), speedup=1.1)
    assert (recommended["cuda_graphs"]["default"], recommended["concurrent_models"]["default"]) == expected, recommended


def test_losses_match_only_within_the_tolerance_and_a_flat_reference_is_called_uninformative():
    settings = gpu_check.SETTINGS | {"loss_window": 2, "loss_tolerance": 0.1}
    falling = [2.3, 2.0, 1.5, 1.0, 0.6, 0.3]
    reference = {"losses": {"A": falling, "B": [2.3] * 6}}
    close = gpu_check.compare(reference, {"losses": {"A": [v + 0.05 for v in falling], "B": [2.35] * 6}}, settings)
    assert close["match"] and close["informative"] == ["A"]
    learned_nothing = gpu_check.compare(reference, {"losses": {"A": [2.3] * 6, "B": [2.3] * 6}}, settings)
    assert not learned_nothing["match"] and not learned_nothing["models"]["A"]["match"] and learned_nothing["models"]["B"]["match"]
    assert gpu_check.compare({"error": "x"}, {"losses": {}}, settings)["match"] is None


ISSUE_18 = {"start": 0.0, "float32": [0.0101, 0.0253, 0.0515, 0.0815, 0.1184],  # issue 18's table
            "fixed": [0.0101, 0.0249, 0.0481, 0.0733, 0.1062], "stale": [0.0101, 0.0116, 0.0120, 0.0125, 0.0131]}


def test_the_gain_verdict_fails_issue_18s_stale_casts_and_passes_its_fix():
    probe = {"start": 0.0, "float32": ISSUE_18["float32"], "bf16": ISSUE_18["fixed"]}
    assert gpu_check.gain_verdict(probe | {"bf16_in_a_cached_region": ISSUE_18["fixed"]}, 0.15)[0] == "pass"
    verdict, why = gpu_check.gain_verdict(probe | {"bf16_in_a_cached_region": ISSUE_18["stale"]}, 0.15)
    assert verdict == "fail" and why.endswith("off: bf16_in_a_cached_region"), why
    flat = {"start": 0.1, "float32": [0.1] * 5, "bf16": [0.1] * 5, "bf16_in_a_cached_region": [0.1] * 5}
    assert gpu_check.gain_verdict(flat, 0.15)[0] == "fail"


def test_the_gain_probe_catches_the_autocast_cache_bug_when_it_is_back(monkeypatch):
    """core.autocast with its cast cache on, as before issue 18's fix: inside a caller's region the casts
    of G's weights outlive G's steps."""
    def cached(device, precision="auto"):
        dtype = core.amp_dtype(device, precision)
        return torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)

    monkeypatch.setattr(core, "autocast", cached)
    probe = gpu_check.generator_gain(CPU, gpu_check.QUICK["probe_batch"], gpu_check.QUICK["probe_fit"])
    verdict, why = gpu_check.gain_verdict(probe, gpu_check.SETTINGS["gain_tolerance"])
    assert verdict == "fail" and why.endswith("off: bf16_in_a_cached_region"), why


def test_regulariser_verdict_needs_float32s_own_error_and_far_below_bf16s():
    assert gpu_check.regulariser_verdict({"float32": 0.08, "float32_adversarial_term": 0.081, "bf16_throughout": 16})[0] == "pass"
    assert gpu_check.regulariser_verdict({"float32": 1e-4, "float32_adversarial_term": 0.05, "bf16_throughout": 5})[0] == "fail"


def test_memory_verdict_fails_an_evaluation_whose_peak_grows_with_its_batches():
    result = lambda one, all_, eat: {"eval_batch": 500, "memory": "torch.cuda.max_memory_allocated",
                                     "table_one_batch": {"peak_gib": one}, "table": {"peak_gib": all_, "images": 2000},
                                     "eat_set": {"peak_gib": eat}}
    assert gpu_check.memory_verdict(result(2.0, 2.02, 1.5))[0] == "pass"
    assert gpu_check.memory_verdict(result(2.0, 6.0, 1.5))[0] == "fail"
    assert gpu_check.memory_verdict(result(2.0, 2.0, 30.0))[0] == "fail"
    assert gpu_check.memory_verdict(result(None, None, None) | {"memory": "CPU"})[0] == "not run"


def test_pytest_outcomes_are_read_from_its_log_and_junit_report(tmp_path):
    log = textwrap.dedent("""\
        collected 3 items

        tests/test_cuda.py::test_a PASSED                                        [ 33%]
        tests/test_cuda.py::test_b[x-1] FAILED                                   [ 66%]
        """)
    xml = tmp_path / "report.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_cuda" name="test_a" time="1.5"/>'
                   '<testcase classname="tests.test_cuda" name="test_b[x-1]" time="2"><failure message="boom"/></testcase>'
                   '</testsuite></testsuites>')
    tests = gpu_check.verbose_outcomes(log) | gpu_check.junit_outcomes(str(xml))
    assert tests == {"test_a": {"outcome": "passed", "seconds": 1.5, "message": None},
                     "test_b[x-1]": {"outcome": "failed", "seconds": 2.0, "message": "boom"}}
    result = {"tests": tests, "collected": 3, "stopped": None}
    assert gpu_check.pytest_verdict(result)[0] == "fail"
    passed = {"test_a": {"outcome": "passed"}, "test_b[x-1]": {"outcome": "passed"}}
    assert gpu_check.pytest_verdict({"tests": passed, "collected": 3, "stopped": "stopped after 180 s"})[0] == "not run"
    assert gpu_check.pytest_verdict({"tests": passed, "collected": 2, "stopped": None})[0] == "pass"


def test_projection_adds_up_the_measured_steps_per_combination():
    rate = {"standard": 100.0, "pgd": 20.0, "advnet": 10.0, "eat": 100.0, "generator": 50.0}
    steps = {f"{n}/{m}": {"eager": {"it_per_s": r}, "graphed": {"it_per_s": 2 * r}} for n in ("mnist", "cifar") for m, r in rate.items()}
    concurrent = {n: {"eager": {"round_seconds": 0.1}, "graphed": {"round_seconds": 0.05}} for n in ("mnist", "cifar")}
    evaluation = {n: {"table": {"seconds_per_image": 0.001}, "eat_set": {"seconds_per_image": 0.0002}} for n in ("mnist", "cifar")}
    projected = gpu_check.project({"steps": steps, "concurrent": concurrent}, evaluation)
    iters = 200_000
    mnist_eager = (2 * iters * (1 / 100 + 1 / 20 + 1 / 10) + 0.001 * 10_000) / 3600
    assert projected["scripts"]["mnist.py"]["eager"]["total"] == pytest.approx(mnist_eager, abs=1e-3)
    assert projected["scripts"]["mnist.py"]["graphed_concurrent"]["train"] == pytest.approx(iters * 0.05 / 3600, abs=1e-3)
    assert projected["scripts"]["ensemble.py"]["concurrent"] == projected["scripts"]["ensemble.py"]["eager"]
    generators = (iters * (4 / 50 + 3 / 10) + 10) / 3600
    assert projected["scripts"]["generators_study.py"]["eager"]["total"] == pytest.approx(generators, abs=1e-3)
    del steps["cifar/generator"]["graphed"]
    assert gpu_check.project({"steps": steps, "concurrent": concurrent}, evaluation)["all_scripts_hours"]["graphed"] is None


def test_pytest_stopped_at_its_time_limit_leaves_its_log_and_a_note(tmp_path):
    """On a GPU the compiled tests may outlast pytest_seconds: the subprocess is interrupted, not waited for."""
    run = gpu_check.Run(CPU, gpu_check.SETTINGS | {"pytest_seconds": 2.0}, True, str(tmp_path / "check.json"), "test")
    result = {}
    gpu_check.pytest_part(run, result)
    assert result["stopped"] == "stopped after 2 s" and result["returncode"] is not None
    assert (tmp_path / result["log"]).exists()
    assert gpu_check.pytest_verdicts(result, run.settings)["pytest"]["verdict"] == "not run"


@pytest.mark.parametrize("network", ["mnist", "cifar"])
def test_the_loss_comparison_warms_b_up_over_a_fifth_then_compares_it_at_full_radius(network, monkeypatch, tmp_path):
    # a graphed B runs its warm-up eagerly: with the scripts' own warm-up (MNIST's 1,000 minibatches, far
    # beyond loss_iters) the comparison would set B's eager steps beside themselves
    given = []

    def prepare_models(specs, settings, *rest):
        given.append(settings)
        return {}
    monkeypatch.setattr(runner.training, "prepare_models", prepare_models)
    run = gpu_check.Run(CPU, gpu_check.SETTINGS, False, tmp_path / "gpu_check.json", "test")
    gpu_check.train_six(run, network, True, False, str(tmp_path))
    fifth = run.settings["loss_iters"] // 5
    assert fifth > 0 and "eps" in runner.training.step_options("pgd", fifth - 1, given[0])
    assert runner.training.step_options("pgd", fifth, given[0]) == {}
