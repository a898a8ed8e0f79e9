"""A broken invariant stops the replica loudly (InvariantViolation out of handle), unlike hostile input,
which is dropped and counted."""

from __future__ import annotations

import pytest

from consensus import messages as m
from consensus.certificate import Certificate
from consensus.checkpoints import StableCheckpoint
from consensus.events import MessageReceived, ProposalReady, StateTransferred, TimerFired, WorkPending
from consensus.invariants import InvariantViolation


def test_a_certificate_below_quorum_stops_the_replica_instead_of_being_delivered(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    payload = b"blk:1:0"
    d = c.app.digest(payload)
    slot = r.slot(1)  # as a bug would leave it: a "certificate" of one signature
    slot.certificate = Certificate(1, 0, d, ((0, bytes(64)),))
    slot.payloads[d] = payload
    with pytest.raises(InvariantViolation, match="2f\\+1"):
        r.handle(StateTransferred(0, b"s" * 32))  # any event that delivers
    assert r.last_committed == 0


def test_every_vote_it_signs_is_checked_against_its_earlier_votes_and_the_watermarks(make_cluster):
    c = make_cluster(auto=False)
    r0 = c.replicas[0]
    c.perform(0, r0.handle(WorkPending(1)))
    c.perform(0, r0.handle(ProposalReady(1, b"blk:1:0")))
    assert r0._my_votes[("p", 0, 1)].digest == c.app.digest(b"blk:1:0")
    with pytest.raises(InvariantViolation, match="two votes"):  # what a forgetful code path would do
        r0._record_my_vote(("p", 0, 1), b"x" * 32, b"")
    with pytest.raises(InvariantViolation, match="watermarks"):
        r0._record_my_vote(("p", 0, r0.high_watermark + 1), b"x" * 32, b"")
    r0._record_my_vote(("p", 0, 1), c.app.digest(b"blk:1:0"), b"")  # the same vote again is fine


def test_the_stable_checkpoint_never_moves_back(make_cluster):
    c = make_cluster(auto=False, checkpoint_interval=2, watermark_window=4)
    r = c.replicas[1]
    proof = ((0, b""), (2, b""), (3, b""))
    r.checkpoints.adopt(StableCheckpoint(4, b"s" * 32, proof))
    with pytest.raises(InvariantViolation):
        r.checkpoints.adopt(StableCheckpoint(2, b"s" * 32, proof))
    with pytest.raises(InvariantViolation):  # two signatures are not a quorum of 4
        r.checkpoints.adopt(StableCheckpoint(6, b"s" * 32, proof[:2]))


def test_hostile_input_is_counted_never_raised(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    cr0 = c.crypto(0)
    d = c.app.digest(b"blk:1:0")
    for data in (b"\x93garbage", m.sign(cr0, "test", m.PREPARE, 0, (0, 1, d)).encode()[:-3],
                 m._pack([m.VIEWCHANGE, 0, [1, 0, b"", [], [[1, 0, b"d", True, []]]], b"s"])):
        assert r.handle(MessageReceived(0, data)) == []
    assert r.stats["drop_malformed"] == 3
    r.handle(TimerFired(("vc", 99)))  # a stale timer is input too
    assert r.stats["drop_stale_timer"] == 1


def test_components_reach_the_replica_only_through_its_public_interface():
    """View changes, catch-up, proposing and fairness keep their own state: none reads or writes a private
    field of the replica (before issue 11 the mixins used 36 and 24 of them)."""
    import ast
    from pathlib import Path

    import consensus

    root = Path(consensus.__file__).parent
    for name in ("viewchange.py", "catchup.py", "proposer.py", "fairness.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
                continue
            owner = node.value
            is_replica = (isinstance(owner, ast.Name) and owner.id == "r") or (
                isinstance(owner, ast.Attribute) and owner.attr == "replica")
            assert not is_replica, f"{name}:{node.lineno} reads the replica's {node.attr}"
