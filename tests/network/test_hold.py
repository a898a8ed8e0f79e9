"""A member the application holds (too many of its tx batches wait) is not read; the others still are, the
held member is not taken for dead, and on release everything it sent arrives, in order, none lost."""

from __future__ import annotations

import pytest
import trio
from network_testkit import Roster, running, wait_for

from network.peer_network import READ_CHUNK

FRAME = 16 * 1024


async def _send_all(net, to: str, channel: str, frames: list[bytes]) -> None:
    for f in frames:
        if not net.send(to, channel, f):
            await net.send_wait(to, channel, f)


@pytest.mark.timeout(90)
async def test_a_held_member_waits_alone_and_loses_nothing():
    r = Roster(3, seed=60)
    a, b, c = (r.net(i, heartbeat=0.25, dead_after=1.0) for i in range(3))
    flood = [i.to_bytes(4, "big") * (FRAME // 4) for i in range(200)]  # 3.2 MiB from b
    votes = [b"vote-%d" % i for i in range(200)]
    got: dict[str, list[bytes]] = {b.peer_id: [], c.peer_id: []}

    async def collect():
        while True:
            for pid, _channel, data in await a.receive_batch():
                got[pid].append(data)

    async with running(a, b, c) as nursery:
        a.hold(b.peer_id)
        nursery.start_soon(collect)
        nursery.start_soon(_send_all, b, a.peer_id, "tx", flood)
        nursery.start_soon(_send_all, c, a.peer_id, "consensus", votes)
        await wait_for(lambda: len(got[c.peer_id]) == len(votes), timeout=20)
        assert got[c.peer_id] == votes, "the other member is read as usual"
        # what the reader had already taken when the hold began is delivered; nothing after it
        assert len(got[b.peer_id]) <= READ_CHUNK // FRAME + 1
        # held for four times dead_after: still connected both ways (holding is our doing, not its silence)
        with trio.move_on_after(4 * a.dead_after):
            await trio.sleep_forever()
        assert len(got[b.peer_id]) <= READ_CHUNK // FRAME + 1
        assert b.peer_id in a.connected_peers() and a.peer_id in b.connected_peers()
        assert a.stats["peers_declared_dead"] == b.stats["peers_declared_dead"] == 0
        a.release(b.peer_id)
        await wait_for(lambda: len(got[b.peer_id]) == len(flood), timeout=30)
        assert got[b.peer_id] == flood, "everything the held member sent, in order"
        assert a.stats["holds"] == 1 and a.stats["malformed_frames"] == 0


@pytest.mark.timeout(60)
async def test_a_held_member_removed_from_the_consortium_leaves_no_reader_waiting():
    r = Roster(2, seed=70)
    a, b = r.net(0), r.net(1)
    async with running(a, b) as nursery:
        a.hold(b.peer_id)
        nursery.start_soon(_send_all, b, a.peer_id, "tx", [bytes(FRAME)] * 100)
        await wait_for(lambda: a._peers[b.peer_id].reader_blocked, timeout=10)
        held = a._peers[b.peer_id]
        a.set_members({a.peer_id: r.members[a.peer_id]})
        await wait_for(lambda: not held.reader_blocked, timeout=10)  # woke, saw it is no member, ended
        assert b.peer_id not in a.peers
        a.hold(b.peer_id)  # a non-member: ignored
        a.release(b.peer_id)
