import time

import pytest

from consensus.sim import mutants
from consensus.sim.core import Simulation
from consensus.simulator import main, run_seed


def _search(nodes: int, seeds) -> list[str]:
    failures = []
    for s in seeds:
        err, _ = run_seed(s, nodes)
        if err:
            failures.append(f"seed {s}: {err}  (replay: python -m consensus.simulator --seed {s} --nodes {nodes})")
    return failures


def test_simulator_4_nodes_some_seeds():
    t0 = time.perf_counter()
    assert _search(4, range(40)) == []
    assert time.perf_counter() - t0 < 120


def test_simulator_5_and_7_nodes_few_seeds():
    assert _search(5, range(1, 3)) == []
    assert _search(7, range(1, 2)) == []


def test_twins_seeds_enumerate_distinct_scenarios_and_pass():
    """Seeds 3, 7, 11, ... are Twins scenarios: f members run two replicas with the same key, and each seed
    is a different (twin member, partition per phase) combination of the systematic enumeration."""
    seen = set()
    for index in range(200):
        twins, phases = Simulation.twins_scenario(index, 4, 1)
        seen.add((tuple(twins), tuple(p for p, _ in phases)))
    assert len(seen) == 200
    sims = [Simulation(s, 4) for s in (3, 7, 11)]
    assert all(s.twins and len(s.nodes) == 5 for s in sims)
    assert _search(4, (3, 7, 11)) == []


def test_replay_of_one_seed_is_deterministic(capsys):
    a = run_seed(17, 4)
    b = run_seed(17, 4)
    assert a[0] is None and a[1]["steps"] == b[1]["steps"] and a[1]["height"] == b[1]["height"]
    assert main(["--seed", "17", "--nodes", "4", "--quiet"]) == 0
    assert "seed 17: ok" in capsys.readouterr().out


def test_search_prints_the_summary(capsys):
    assert main(["--seeds", "2", "--start", "1", "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    assert "seeds run: 2" in out and "violations: 0" in out and "schedules/s" in out


def test_planted_bugs_are_caught_in_a_copy_of_the_code():
    """The mutation check end to end on two cheap mutants: applied to a copy, caught by the oracle's own
    quorum checks at the first seed, and the real code passes that seed."""
    cache: dict = {}
    by_name = {mu.name: mu for mu in mutants.MUTANTS}
    for name in ("quorum_2f", "checkpoint_stable_f_plus_1"):
        res = mutants.hunt(by_name[name], 4, 5, cache)
        assert res["status"] == "caught", (name, res)


def test_a_mutant_whose_anchor_moved_reports_stale_anchor():
    stale = mutants.Mutant("stale", "an anchor that is not in the code",
                           (("replica.py", "this text is not in replica.py", "x"),))
    assert mutants.hunt(stale, 4, 1, {})["status"] == "stale anchor"


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_simulator_soak_4_and_5_nodes():
    assert _search(4, range(1000, 3000)) == []
    assert _search(5, range(1000, 1300)) == []


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_simulator_soak_7_and_10_nodes():
    assert _search(7, range(1000, 1300)) == []
    assert _search(10, range(1000, 1060)) == []


@pytest.mark.soak
@pytest.mark.timeout(4 * 3600)
def test_every_mutant_is_caught_at_every_size():
    """make mutants, as a soak test: every planted bug is caught within its seed budget at n = 4, 5, 7, 10."""
    rows = mutants.run_all()
    survivors = [f"{r['mutant']} n={r['nodes']}: {r['status']} {r.get('detail', '')}" for r in rows
                 if r["status"] != "caught"]
    assert survivors == []
