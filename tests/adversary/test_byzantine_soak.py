"""Two Byzantine members of seven (f = 2), for minutes (make soak): the five honest members keep committing
every tx submitted to them within a bound, hold byte-identical blocks and never die.

The two adversaries run the same behaviour, so a primary-only behaviour is primary in views 0 and 1 in a
row (a view change lands on the second faulty primary), and floods, malformed frames and replays come from
two members at once. SOAK_SECONDS (default 60) sets the load time of each behaviour.
"""

from __future__ import annotations

import os

import pytest
from byzantine_net import run_case
from test_byzantine import NEEDS_DECODER_FIX, NEEDS_REQUEST_TIMERS, NEEDS_VOTE_BOUND

from node.testnet import member_name

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
# Two faulty primaries in a row cost two view changes, the second with a doubled timeout.
LATENCY_BOUND = 15.0

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SOAK_SECONDS) + 240)]

# behaviour -> (adversary indexes, victim index or None)
CASES = {
    "equivocate": ((0, 1), None),
    "flood": ((5, 6), None),
    "malformed": ((5, 6), None),
    "silent": ((0, 1), None),
    "slow": ((0, 1), None),
    "censor": ((0, 1), 2),
    "replay": ((5, 6), None),
}


@pytest.mark.parametrize("behaviour", [
    "equivocate",
    pytest.param("flood", marks=NEEDS_VOTE_BOUND),
    pytest.param("malformed", marks=NEEDS_DECODER_FIX),
    "silent",
    pytest.param("slow", marks=NEEDS_REQUEST_TIMERS),
    pytest.param("censor", marks=NEEDS_REQUEST_TIMERS),
    "replay",
])
def test_two_of_seven_byzantine(byzantine_testnet, behaviour):
    indexes, victim = CASES[behaviour]
    adversaries = {i: (behaviour, None if victim is None else member_name(victim)) for i in indexes}
    net, _load, _chain = run_case(byzantine_testnet, 7, adversaries, SOAK_SECONDS, LATENCY_BOUND,
                                  idle=5.0 if behaviour == "malformed" else 0.0, settle=60.0)
    if behaviour == "equivocate":
        def offenders_on(i: int) -> set[int]:
            return {e["offender"] for e in net.rpc(i, "audit_trail", {"type": "evidence.equivocation",
                                                                      "limit": 1000})["entries"]}
        # Member 0 equivocates in view 0 for sure; member 1 only if the chain got to view 1.
        for i in net.honest:
            net.wait_until(lambda i=i: 0 in offenders_on(i), 30, f"evidence against member 0 on {i}")
