"""bench.py is a benchmark, not a test: only check that --quick runs on the CPU and reports every step."""
import json

import pytest

import bench
import runner.settings


@pytest.mark.slow
def test_bench_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--gpu", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["steps"]) == {f"{n}/{s}" for n in bench.NETWORKS for s in bench.STEPS}
    paths = ["eager_fp32", "bf16", "channels_last", "bf16_channels_last"]  # no compile in --quick, no graphs on a CPU
    assert report["training_path"] in paths
    for row in report["steps"].values():
        assert row["gflop_per_step"] > 0 and row["aten_ops_per_step"] > 20
        assert row["host_syncs_per_step"] == {}, "a step that reads back to the host cannot be graph-captured"
        assert all(row[path]["it_per_s"] > 0 and row[path]["tflop_per_s"] > 0 for path in paths)
        assert "graphed" not in row and "compiled" not in row
    # a PGD step costs about (steps + 1) forward-backward passes of a standard step: the counter counts them all
    passes = runner.settings.QUICK_SETTINGS["pgd_steps"] + 1
    for network in bench.NETWORKS:
        steps = {s: report["steps"][f"{network}/{s}"] for s in ("pgd", "standard")}
        ratio = steps["pgd"]["gflop_per_step"] / steps["standard"]["gflop_per_step"]
        assert 0.45 * passes < ratio < 1.1 * passes, (ratio, passes)
        assert steps["pgd"]["aten_ops_per_step"] > 0.45 * passes * steps["standard"]["aten_ops_per_step"]
    assert set(report["projected_training_hours"]) == set(bench.FULL_RUNS)
    for hours in report["projected_training_hours"].values():
        assert hours["concurrent_graphed"] is None and all(hours[f"sequential_{p}"] > 0 for p in paths)
    for errors in report["regulariser_relative_error"].values():  # the float32 adversarial term: far closer to float64
        assert 0 < 10 * errors["float32_adversarial_term"] < errors["bf16_throughout"], errors
        # under bf16 autocast the adversarial term is IEEE float32: the regulariser is float32's to the bit on the CPU
        assert errors["float32_adversarial_term"] == errors["float32"], errors
    assert report["provenance"]["versions"]["torch"]
