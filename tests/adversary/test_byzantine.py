"""One Byzantine member of four (f = 1), as real processes: the three honest members keep committing every
tx submitted to them within a bound, hold byte-identical blocks, never die, and put provable misbehaviour
(equivocation) on chain.

Each case starts a fresh 4-node testnet in which one member runs tests/adversary/adversary.py with one
behaviour switched on; the primary of view 0 is member 0, so behaviours that need to be primary run there.
"""

from __future__ import annotations

import pytest
from byzantine_net import run_case as _run_case

from node.testnet import member_name

pytestmark = pytest.mark.timeout(120)

LOAD_SECONDS = 10.0
# A tx submitted to an honest member commits within this, whatever one member does: a faulty primary costs
# at most a few progress timeouts (2 s each) and a view change.
LATENCY_BOUND = 6.0

# behaviour -> (adversary index, victim index or None)
CASES = {
    "equivocate": (0, None),
    "flood": (3, None),
    "malformed": (3, None),
    "silent": (0, None),
    "slow": (0, None),
    "censor": (0, 1),
    "replay": (2, None),
    "stalecert": (0, None),
}


def run_case(byzantine_testnet, behaviour: str, idle: float = 0.0):
    index, victim = CASES[behaviour]
    return _run_case(byzantine_testnet, 4, {index: (behaviour, None if victim is None else member_name(victim))},
                     LOAD_SECONDS, LATENCY_BOUND, idle)


def test_equivocating_primary_is_recorded_on_chain(byzantine_testnet):
    net, _load, _chain = run_case(byzantine_testnet, "equivocate")
    offender = CASES["equivocate"][0]

    def evidence_on(i: int) -> bool:
        entries = net.rpc(i, "audit_trail", {"type": "evidence.equivocation"})["entries"]
        return any(e["offender"] == offender for e in entries)

    for i in net.honest:
        net.wait_until(lambda i=i: evidence_on(i), 20,
                       f"equivocation evidence against {net.nodes[offender].name} on {net.nodes[i].name}")


# Marks for defects fixed on sibling branches (issue 9); the integrator removes them after merging.
NEEDS_VOTE_BOUND = pytest.mark.xfail(strict=False, reason="needs i9-consensus: issue 9 defect 2 (a member's "
                                                          "vote flood fills the per-height vote table)")
NEEDS_REQUEST_TIMERS = pytest.mark.xfail(strict=False, reason="needs i9-consensus: issue 9 defect 6 (no "
                                                              "per-request timer against a slow or censoring primary)")
NEEDS_BLOCK_IDENTITY = pytest.mark.xfail(strict=False, reason="needs i9-consensus: issue 9 defect 3 (the block "
                                                              "hash covers the certificate's view)")
NEEDS_DECODER_FIX = pytest.mark.xfail(strict=False, reason="needs i9-input: issue 9 defect 1 (a tx with a bytes "
                                                           "key raises TypeError out of gossip and block sync)")


@pytest.mark.parametrize("behaviour", [
    pytest.param("flood", marks=NEEDS_VOTE_BOUND),
    "silent",
    pytest.param("slow", marks=NEEDS_REQUEST_TIMERS),
    pytest.param("censor", marks=NEEDS_REQUEST_TIMERS),
    "replay",
    pytest.param("stalecert", marks=NEEDS_BLOCK_IDENTITY),
])
def test_honest_members_carry_on(byzantine_testnet, behaviour):
    run_case(byzantine_testnet, behaviour)


@NEEDS_DECODER_FIX
def test_malformed_frames_of_every_kind_kill_nothing(byzantine_testnet):
    run_case(byzantine_testnet, "malformed", idle=5.0)
