"""PeerNetwork.set_members: the consortium changes while the network runs (issue 12), real libp2p hosts."""

from __future__ import annotations

import pytest
import trio
from network_testkit import Roster, running, wait_for

pytestmark = pytest.mark.trio


async def test_a_member_added_at_runtime_connects_and_a_removed_one_is_refused():
    r = Roster(3, seed=210)
    founders = {pid: r.members[pid] for pid in r.pids[:2]}
    a = r.net(0)
    b = r.net(1)
    c = r.net(2)  # knows everyone; a and b do not know it yet
    a.set_members(founders)
    b.set_members(founders)
    async with running(a, b, c, connect=False):
        await wait_for(lambda: r.pids[1] in a.connected_peers(), 10)
        await wait_for(lambda: a.stats["rejected_handshakes"] > 0, 10)  # c dials and is refused
        assert r.pids[2] not in a.connected_peers()

        added, removed = a.set_members(r.members)
        assert (added, removed) == ([r.pids[2]], [])
        b.set_members(r.members)
        await wait_for(lambda: r.pids[2] in a.connected_peers() and r.pids[0] in c.connected_peers(), 15)
        a.send(r.pids[2], "consensus", b"hello c")
        with trio.fail_after(10):
            peer, channel, data = await c.inbox.receive()
        assert (peer, channel, data) == (r.pids[0], "consensus", b"hello c")

        # remove b: its connection is dropped, its redials are refused, nothing it sends arrives
        before = a.stats["rejected_handshakes"]
        added, removed = a.set_members({pid: r.members[pid] for pid in (r.pids[0], r.pids[2])})
        assert (added, removed) == ([], [r.pids[1]])
        assert r.pids[1] not in a.peers
        with pytest.raises(KeyError):
            a.send(r.pids[1], "consensus", b"x")
        await wait_for(lambda: a.stats["rejected_handshakes"] > before, 15)
        await wait_for(lambda: r.pids[0] not in b.connected_peers(), 15)
        b.broadcast("consensus", b"late vote from b")
        c.send(r.pids[0], "consensus", b"from c")
        with trio.fail_after(10):
            peer, channel, data = await a.inbox.receive()
        assert (peer, data) == (r.pids[2], b"from c")  # b's frame never reached a


async def test_set_members_with_a_bad_address_changes_nothing():
    r = Roster(2, seed=220)
    a = r.net(0)
    with pytest.raises(ValueError):
        a.set_members({r.pids[1]: ["not-a-multiaddr"]})
    assert a.peers == [r.pids[1]]
