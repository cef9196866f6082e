"""bench.py is a benchmark, not a test: only check that --quick runs on the CPU and reports every step."""
import json

import bench
import experiment


def test_bench_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--gpu", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["steps"]) == {f"{n}/{s}" for n in bench.NETWORKS for s in bench.STEPS}
    for row in report["steps"].values():
        assert row["gflop_per_step"] > 0
        assert all(row[path]["it_per_s"] > 0 and row[path]["tflop_per_s"] > 0 for path in ("eager_fp32", "optimised"))
    # a PGD step costs about (steps + 1) forward-backward passes of a standard step: the counter counts them all
    passes = experiment.QUICK_SETTINGS["pgd_steps"] + 1
    for network in bench.NETWORKS:
        ratio = report["steps"][f"{network}/pgd"]["gflop_per_step"] / report["steps"][f"{network}/standard"]["gflop_per_step"]
        assert 0.45 * passes < ratio < 1.1 * passes, (ratio, passes)
    assert set(report["projected_training_hours"]) == set(bench.FULL_RUNS)
    for errors in report["regulariser_relative_error"].values():  # the float32 adversarial term: far closer to float64
        assert 0 < 10 * errors["float32_adversarial_term"] < errors["bf16_throughout"], errors
    assert report["provenance"]["versions"]["torch"]
