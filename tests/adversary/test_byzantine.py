"""One Byzantine member of four (f = 1), as real processes: the three honest members keep committing every
tx submitted to them within a bound, hold byte-identical blocks, never die, and put provable misbehaviour
(equivocation) on chain.

Each case starts a fresh 4-node testnet in which one member runs tests/adversary/adversary.py with its
behaviour switched on (make soak runs each behaviour on its own, two faulty members of seven). The primary
of view 0 is member 0, so behaviours that need to be primary run there. To keep make test short, behaviours
that do not get in each other's way share one faulty member: a backup that floods votes, sends malformed
frames of every kind, replays old messages and lies about its state; a primary that is slow and censors
one member.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from byzantine_net import run_case

from node.testnet import member_name

pytestmark = pytest.mark.timeout(150)

@dataclass(frozen=True)
class Case:
    index: int                 # the faulty member
    behaviour: str             # adversary.py --behaviour
    victim: int | None = None  # whose txs a censoring primary leaves out
    load: float = 8.0          # seconds of load on the honest members
    # A tx submitted to an honest member commits within this, whatever one member does: a faulty primary
    # costs a progress timeout (2 s) and a view change.
    bound: float = 6.0
    idle: float = 0.0          # seconds without load before the final checks (the sync safety net runs)


CASES = {
    "equivocate": Case(0, "equivocate"),
    "stalecert": Case(0, "stalecert"),
    "silent": Case(0, "silent"),
    # Proposals whose txs nobody holds and a proposer that never answers the fetch: no honest vote, a
    # progress timeout and a view change, as for a silent primary.
    "phantom": Case(0, "phantom"),
    "noisy": Case(3, "flood,malformed,replay,liar", idle=5.0),
    # A slow or censoring primary is only caught by per-request timers (10 s in consensus.config): the
    # bound covers that timer and the view change after it.
    "slow-censor": Case(0, "slow,censor", victim=1, load=20.0, bound=14.0),
}


def run(byzantine_testnet, name: str):
    c = CASES[name]
    victim = None if c.victim is None else member_name(c.victim)
    return run_case(byzantine_testnet, 4, {c.index: (c.behaviour, victim)}, c.load, c.bound, c.idle)


def test_equivocating_primary_is_recorded_on_chain(byzantine_testnet):
    net, _load, _chain = run(byzantine_testnet, "equivocate")
    offender = CASES["equivocate"].index

    def evidence_on(i: int) -> bool:
        entries = net.rpc(i, "audit_trail", {"type": "evidence.equivocation"})["entries"]
        return any(e["offender"] == offender for e in entries)

    for i in net.honest:
        net.wait_until(lambda i=i: evidence_on(i), 20,
                       f"equivocation evidence against {net.nodes[offender].name} on {net.nodes[i].name}")


def test_certificate_of_an_older_view_changes_no_header(byzantine_testnet):
    run(byzantine_testnet, "stalecert")


def test_silent_primary_is_replaced(byzantine_testnet):
    run(byzantine_testnet, "silent")


def test_primary_proposing_txs_nobody_has_and_never_answering_is_replaced(byzantine_testnet):
    net, _load, _chain = run(byzantine_testnet, "phantom")
    # nothing it proposed could commit: every honest member left view 0
    assert all(net.rpc(i, "status")["view"] >= 1 for i in net.honest)


def test_vote_flood_malformed_frames_replays_and_lies_change_nothing(byzantine_testnet):
    run(byzantine_testnet, "noisy")


def test_slow_censoring_primary_is_replaced(byzantine_testnet):
    run(byzantine_testnet, "slow-censor")
