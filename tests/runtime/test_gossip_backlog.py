"""The per-member gossip backlog: members are served in turn, a member with its bound waiting has its further
batches dropped (the others' still go in), nothing is reordered within a member, and the router never waits."""

from __future__ import annotations

from collections import deque

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.runtime.gossip_backlog import GossipBacklog


def test_a_flooding_member_gets_its_turn_and_no_more():
    b = GossipBacklog(quantum=3)  # a turn: one 3-byte batch
    for i in range(30):
        assert b.put("flooder", b"f%02d" % i)
    b.put("honest", b"h00")
    b.put("other", b"o00")
    taken = [b.take_nowait() for _ in range(4)]
    # the honest members' batches come second and third, not after the flooder's thirty
    assert taken == [("flooder", b"f00"), ("honest", b"h00"), ("other", b"o00"), ("flooder", b"f01")]


def test_turns_are_counted_in_bytes_not_batches():
    """A member sending batches 8 times larger gets as many bytes checked per turn as one sending small
    ones, not 8 times more (deficit round robin)."""
    b = GossipBacklog(quantum=800)
    for _round in range(20):
        b.put("big", bytes(800))
        for _ in range(8):
            b.put("small", bytes(100))
    served = {"big": 0, "small": 0}
    for _ in range(40):
        peer, data = b.take_nowait()
        served[peer] += len(data)
    assert abs(served["big"] - served["small"]) <= 800, served


def test_a_member_at_its_bound_loses_its_excess_and_the_others_do_not():
    b = GossipBacklog(peer_batches=8, peer_bytes=1 << 20, quantum=2)
    assert all(b.put("flooder", b"x%d" % i) for i in range(8))
    assert not b.put("flooder", b"excess")
    assert b.put("honest", b"h"), "another member's batch still goes in"
    assert (len(b), b.dropped) == (9, 1)
    assert b.take_nowait() == ("flooder", b"x0")
    assert b.put("flooder", b"x8"), "room again once one of its batches was taken"
    assert [data for peer, data in (b.take_nowait() for _ in range(9)) if peer == "flooder"][-1] == b"x8"


def test_the_bytes_bound_counts_too():
    b = GossipBacklog(peer_batches=64, peer_bytes=1000)
    assert b.put("m", bytes(600))
    assert not b.put("m", bytes(600))
    assert b.put("m", bytes(400))


def test_forget_drops_a_removed_members_batches():
    b = GossipBacklog()
    b.put("gone", b"1")
    b.put("gone", b"2")
    b.put("stays", b"3")
    b.forget("gone")
    assert len(b) == 1
    assert b.take_nowait() == ("stays", b"3")
    with pytest.raises(trio.WouldBlock):
        b.take_nowait()
    b.forget("never-seen")


async def test_take_waits_for_a_put():
    b = GossipBacklog()
    got = []

    async def consumer():
        got.append(await b.take())
        got.append(await b.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        b.put("a", b"1")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [("a", b"1")]
        b.put("b", b"2")
    assert got == [("a", b"1"), ("b", b"2")]


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcd"), st.integers(1, 400)),
    st.tuples(st.just("take"), st.just(""), st.just(0)),
    st.tuples(st.just("forget"), st.sampled_from("abcd"), st.just(0)),
), max_size=300)


@settings(max_examples=300, deadline=None)
@given(ops=ops, peer_batches=st.integers(1, 6), peer_bytes=st.integers(100, 2000), quantum=st.integers(1, 900))
def test_against_a_model(ops, peer_batches, peer_bytes, quantum):
    """Per member FIFO, nothing invented, a batch dropped exactly when its member had its bound waiting, and
    the members served in turn: while another member waits, one member's consecutive batches add up to at
    most a quantum plus one batch."""
    b = GossipBacklog(peer_batches=peer_batches, peer_bytes=peer_bytes, quantum=quantum)
    model: dict[str, deque[bytes]] = {}
    dropped = seq = 0
    run: tuple[str, int, set[str]] | None = None  # (member, bytes, who waited throughout) of the latest run
    for op, peer, size in ops:
        if op == "put":
            seq += 1
            data = seq.to_bytes(4, "big") * (size // 4 + 1)
            q = model.setdefault(peer, deque())
            fits = not q or (len(q) < peer_batches and sum(map(len, q)) + len(data) <= peer_bytes)
            assert b.put(peer, data) == fits
            if fits:
                q.append(data)
            else:
                dropped += 1
        elif op == "take":
            if not any(model.values()):
                with pytest.raises(trio.WouldBlock):
                    b.take_nowait()
                continue
            waiting = {p for p, q in model.items() if q}
            peer, data = b.take_nowait()
            assert model[peer].popleft() == data
            if run is not None and run[0] == peer:
                run = (peer, run[1] + len(data), run[2] & waiting)
            else:
                run = (peer, len(data), waiting)
            if run[2] - {peer}:  # someone else waited throughout this member's run
                assert run[1] <= quantum + 404, run  # a batch here is at most 404 bytes
        else:
            b.forget(peer)
            model.pop(peer, None)
            if run is not None:  # if it comes back, it is a new member: it waits its turn from the end
                run[2].discard(peer)
        assert len(b) == sum(map(len, model.values()))
        assert b.dropped == dropped
