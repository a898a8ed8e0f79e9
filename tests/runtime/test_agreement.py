"""Four real node processes agree on one chain, survive kill -9 of any member, and catch up."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from node.ledger.intake import EXAMPLE_EVENT

pytestmark = pytest.mark.timeout(240)

_ids = itertools.count()


def submit_events(net, node: int, count: int) -> list[str]:
    hashes = []
    for _ in range(count):
        event = {**EXAMPLE_EVENT, "event_id": f"evt-{next(_ids)}-{node}", "time": int(time.time() * 1000)}
        hashes.append(net.rpc(node, "submit_event", {"event": event})["tx"])
    return hashes


def committed_on(net, node: int, hashes: list[str]) -> bool:
    return all(net.rpc(node, "get_tx", {"hash": h})["status"] == "committed" for h in hashes)


def chain_hashes(net, node: int, upto: int) -> list[str]:
    return [net.rpc(node, "get_block", {"height": h})["hash"] for h in range(1, upto + 1)]


def assert_same_chain(net, nodes: list[int]) -> int:
    upto = min(net.height(i) for i in nodes)
    reference = chain_hashes(net, nodes[0], upto)
    for i in nodes[1:]:
        assert chain_hashes(net, i, upto) == reference, f"node {i} disagrees with node {nodes[0]}"
    return upto


def test_four_nodes_commit_the_same_chain(testnet):
    net = testnet(4)
    net.start()
    net.wait_ready()
    hashes = [h for i in range(4) for h in submit_events(net, i, 10)]
    for i in range(4):
        net.wait_until(lambda i=i: committed_on(net, i, hashes), 60, f"all 40 txs committed on node {i}")
    upto = assert_same_chain(net, [0, 1, 2, 3])
    assert upto >= 1
    # Every tx sits at the same height on every node.
    for h in hashes[:5]:
        assert len({net.rpc(i, "get_tx", {"hash": h})["height"] for i in range(4)}) == 1


@pytest.mark.parametrize("victim", ["primary", "backup"])
def test_kill_9_one_node_others_continue_and_it_catches_up(testnet, victim):
    net = testnet(4)
    net.start()
    net.wait_ready()
    first = submit_events(net, 0, 5)
    net.wait_until(lambda: committed_on(net, 0, first), 60, "first txs committed")
    primary = net.nodes.index(next(n for n in net.nodes if n.name == net.rpc(0, "status")["primary"]))
    dead = primary if victim == "primary" else (primary + 1) % 4
    alive = [i for i in range(4) if i != dead]
    net.kill(dead)

    during = submit_events(net, alive[0], 5) + submit_events(net, alive[1], 5)
    for i in alive:
        net.wait_until(lambda i=i: committed_on(net, i, during), 90,
                       f"txs committed on node {i} with node {dead} ({victim}) dead")
    if victim == "primary":  # /metrics says why the survivors replaced it: work waited, nothing committed
        fired = [net.metrics(i, "radchain_view_change_triggers_total") for i in alive]
        assert sum(t['{trigger="progress_timeout"}'] + t['{trigger="request_timeout"}'] for t in fired) >= 1, fired
        # and each survivor's log says which trigger moved it and what its replica held then
        logged = [line for i in alive for line in (net.nodes[i].home / "node.log").read_text().splitlines()
                  if "view change to view" in line]
        assert len(logged) >= len(alive), logged
        assert any("progress_timeout" in line or "request_timeout" in line for line in logged), logged
        assert all("last_committed" in line and "trigger" in line for line in logged), logged
        # ... and tells silent peers from a stalled node: the killed primary was silent for seconds
        for line in logged:
            fields = json.loads(line)
            assert fields["loop_lag_max_ms"] < 5000, fields
            silent = fields["peers"][net.nodes[dead].name]
            assert float(silent.split()[1].rstrip("s")) >= 1.0, fields

    net.start(dead)
    net.wait_ready([dead])
    target = max(net.height(i) for i in alive)
    net.wait_until(lambda: net.height(dead) >= target, 60, f"restarted node {dead} catches up to {target}")
    after = submit_events(net, dead, 3)
    for i in range(4):
        net.wait_until(lambda i=i: committed_on(net, i, after), 60, f"post-restart txs on node {i}")
    assert_same_chain(net, [0, 1, 2, 3])


def test_node_started_later_syncs_from_empty(testnet):
    net = testnet(4)
    for i in range(3):
        net.start(i)
    net.wait_ready([0, 1, 2])
    hashes = submit_events(net, 0, 20)
    for i in range(3):
        net.wait_until(lambda i=i: committed_on(net, i, hashes), 90, f"txs committed on node {i} (3 of 4 up)")
    assert net.height(0) >= 1
    net.start(3)
    net.wait_ready([3])
    target = net.height(0)
    net.wait_until(lambda: net.height(3) >= target, 60, "late node synced")
    assert committed_on(net, 3, hashes)
    assert_same_chain(net, [0, 1, 2, 3])


def test_compact_proposals_agree_and_survive_kill_9_of_the_primary(testnet):
    """`[mempool] compact_proposals`: the primary names txs by hash, the replicas fill them from gossip's copies,
    which they hold in memory only until a proposal names them (then on disk, before the vote). A primary
    killed with proposals in flight restarts from its WAL, catches up, and every node agrees."""
    net = testnet(4, config_extra={"mempool": {"compact_proposals": True}})
    net.start()
    net.wait_ready()
    first = [h for i in range(4) for h in submit_events(net, i, 5)]
    for i in range(4):
        net.wait_until(lambda i=i: committed_on(net, i, first), 60, f"compact: first txs committed on node {i}")
    primary = net.nodes.index(next(n for n in net.nodes if n.name == net.rpc(0, "status")["primary"]))
    alive = [i for i in range(4) if i != primary]
    acked_by_primary = submit_events(net, primary, 10)
    net.kill(primary)  # right after its clients were answered: its proposals and their txs may be in flight
    during = submit_events(net, alive[0], 5) + submit_events(net, alive[1], 5)  # a new primary, compact too
    for i in alive:
        net.wait_until(lambda i=i: committed_on(net, i, during), 90, f"compact: txs committed on node {i}")
    net.start(primary)
    net.wait_ready([primary])
    # what the dead primary acknowledged but had not gossiped yet was on its disk only: it comes back with it
    after = acked_by_primary + submit_events(net, primary, 3)
    for i in range(4):
        net.wait_until(lambda i=i: committed_on(net, i, after), 90, f"compact: the primary's txs on node {i}")
    assert_same_chain(net, [0, 1, 2, 3])
