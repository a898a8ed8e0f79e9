"""bench.simulator end to end on a tiny workload: the baseline tree comes from git and both trees run clean."""

from pathlib import Path

from bench import simulator


def test_simulator_bench_runs_both_trees_and_reports_a_ratio(tmp_path: Path):
    base = simulator.base_tree("HEAD", tmp_path)
    assert base is not None and (base / "consensus" / "simulator.py").is_file()
    workloads = ((2, 4),)
    results = simulator.measure({"base": base, "current": simulator.ROOT}, 1, workloads)
    for name in ("base", "current"):
        (run,) = results[(name, 2, 4)]
        assert run["exit"] == 0 and run["violations"] == 0 and run["cpu"] > 0 and run["events"] > 100
    (line,) = simulator.report(results, workloads)
    assert "schedules/CPU s" in line and "speed ratio" in line


def test_an_unknown_ref_means_no_baseline(tmp_path: Path):
    assert simulator.base_tree("no-such-ref-xyz", tmp_path) is None
