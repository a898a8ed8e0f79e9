"""The per-member gossip backlog: members are served in turn, a member over its bounds is held until its
queue is down to half, nothing is lost or reordered within a member, and the router never waits."""

from __future__ import annotations

from collections import deque

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.runtime.gossip_backlog import GossipBacklog


class Net:
    """Records hold/release calls as the network would see them."""

    def __init__(self):
        self.held: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def hold(self, peer):
        assert peer not in self.held, "held twice without a release"
        self.held.add(peer)
        self.calls.append(("hold", peer))

    def release(self, peer):
        assert peer in self.held, "released while not held"
        self.held.discard(peer)
        self.calls.append(("release", peer))


def test_a_flooding_member_gets_its_turn_and_no_more():
    net = Net()
    b = GossipBacklog(net.hold, net.release, peer_batches=32)
    for i in range(30):
        b.put("flooder", b"f%d" % i)
    b.put("honest", b"h0")
    b.put("other", b"o0")
    taken = [b.take_nowait() for _ in range(4)]
    # the honest members' batches come second and third, not after the flooder's thirty
    assert taken == [("flooder", b"f0"), ("honest", b"h0"), ("other", b"o0"), ("flooder", b"f1")]


def test_a_member_over_its_bounds_is_held_until_half_drained():
    net = Net()
    b = GossipBacklog(net.hold, net.release, peer_batches=8, peer_bytes=1 << 20)
    for _ in range(7):
        b.put("m", b"x")
    assert net.held == set()
    b.put("m", b"x")  # the eighth
    assert net.held == {"m"}
    b.put("m", b"x")  # read before the hold took effect: taken, not refused
    assert len(b) == 9
    for _ in range(4):
        b.take_nowait()
    assert net.held == {"m"}, "5 waiting: over half"
    b.take_nowait()
    assert net.held == set(), "4 waiting: released"
    assert net.calls == [("hold", "m"), ("release", "m")]


def test_bytes_bound_holds_a_member_with_few_large_batches():
    net = Net()
    b = GossipBacklog(net.hold, net.release, peer_batches=32, peer_bytes=1000)
    b.put("m", bytes(600))
    assert net.held == set()
    b.put("m", bytes(600))
    assert net.held == {"m"}
    b.take_nowait()
    assert net.held == {"m"}, "600 bytes: over half of 1000"
    b.take_nowait()
    assert net.held == set()


def test_forget_drops_a_removed_members_batches_and_releases_it():
    net = Net()
    b = GossipBacklog(net.hold, net.release, peer_batches=2)
    b.put("gone", b"1")
    b.put("gone", b"2")
    b.put("stays", b"3")
    assert net.held == {"gone"}
    b.forget("gone")
    assert net.held == set() and len(b) == 1
    assert b.take_nowait() == ("stays", b"3")
    with pytest.raises(trio.WouldBlock):
        b.take_nowait()
    b.forget("never-seen")


async def test_take_waits_for_a_put():
    b = GossipBacklog(lambda p: None, lambda p: None)
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
@given(ops=ops, peer_batches=st.integers(2, 6), peer_bytes=st.integers(100, 2000))
def test_against_a_model(ops, peer_batches, peer_bytes):
    """Per member FIFO, nothing lost or invented, a member held exactly while its queue went over a bound
    and has not come down to half since, and the members served in turn."""
    net = Net()
    b = GossipBacklog(net.hold, net.release, peer_batches=peer_batches, peer_bytes=peer_bytes)
    model: dict[str, deque[bytes]] = {}
    model_held: set[str] = set()
    seq = 0
    last_served: list[tuple[str, set[str]]] = []
    for op, peer, size in ops:
        if op == "put":
            seq += 1
            data = seq.to_bytes(4, "big") * (size // 4 + 1)
            b.put(peer, data)
            q = model.setdefault(peer, deque())
            q.append(data)
            if len(q) >= peer_batches or sum(map(len, q)) >= peer_bytes:
                model_held.add(peer)
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
            q = model[peer]
            if len(q) <= peer_batches // 2 and sum(map(len, q)) <= peer_bytes // 2:
                model_held.discard(peer)
        else:
            b.forget(peer)
            model.pop(peer, None)
            model_held.discard(peer)
            if last_served:  # if it comes back, it is a new member: it waits its turn from the end
                last_served[-1][1].discard(peer)
            assert peer not in net.held
        assert len(b) == sum(map(len, model.values()))
        assert net.held == b.held() == model_held
