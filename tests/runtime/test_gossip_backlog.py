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
    b = GossipBacklog(peer_batches=64)
    for i in range(30):
        assert b.put("flooder", b"f%d" % i)
    b.put("honest", b"h0")
    b.put("other", b"o0")
    taken = [b.take_nowait() for _ in range(4)]
    # the honest members' batches come second and third, not after the flooder's thirty
    assert taken == [("flooder", b"f0"), ("honest", b"h0"), ("other", b"o0"), ("flooder", b"f1")]


def test_a_member_at_its_bound_loses_its_excess_and_the_others_do_not():
    b = GossipBacklog(peer_batches=8, peer_bytes=1 << 20)
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
@given(ops=ops, peer_batches=st.integers(1, 6), peer_bytes=st.integers(100, 2000))
def test_against_a_model(ops, peer_batches, peer_bytes):
    """Per member FIFO, nothing invented, a batch dropped exactly when its member had its bound waiting, and
    the members served in turn."""
    b = GossipBacklog(peer_batches=peer_batches, peer_bytes=peer_bytes)
    model: dict[str, deque[bytes]] = {}
    dropped = seq = 0
    last_served: list[tuple[str, set[str]]] = []
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
            # in turn: not served twice in a row past a member that waited at both takes
            if last_served and last_served[-1][0] == peer:
                assert not (waiting & last_served[-1][1]) - {peer}
            last_served.append((peer, waiting))
        else:
            b.forget(peer)
            model.pop(peer, None)
            if last_served:  # if it comes back, it is a new member: it waits its turn from the end
                last_served[-1][1].discard(peer)
        assert len(b) == sum(map(len, model.values()))
        assert b.dropped == dropped
