import time

import pytest

from consensus.simulator import main, run_seed


def _search(nodes: int, seeds: range) -> list[str]:
    failures = []
    for s in seeds:
        err, _ = run_seed(s, nodes)
        if err:
            failures.append(f"seed {s}: {err}  (replay: python -m consensus.simulator --seed {s} --nodes {nodes})")
    return failures


def test_simulator_4_nodes_few_hundred_seeds():
    t0 = time.perf_counter()
    assert _search(4, range(250)) == []
    assert time.perf_counter() - t0 < 120


def test_simulator_7_nodes_some_seeds():
    assert _search(7, range(40)) == []


def test_replay_of_one_seed_is_deterministic(capsys):
    a = run_seed(17, 4)
    b = run_seed(17, 4)
    assert a[0] is None and a[1]["steps"] == b[1]["steps"] and a[1]["height"] == b[1]["height"]
    assert main(["--seed", "17", "--nodes", "4", "--quiet"]) == 0
    assert "seed 17: ok" in capsys.readouterr().out


def test_search_prints_the_summary(capsys):
    assert main(["--seeds", "3", "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    assert "seeds run: 3" in out and "violations: 0" in out and "schedules/s" in out


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_simulator_soak_4_nodes():
    assert _search(4, range(1000, 6000)) == []


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_simulator_soak_7_nodes():
    assert _search(7, range(1000, 2500)) == []
