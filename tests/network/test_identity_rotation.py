"""A member's libp2p identity rotates while its PeerNetwork runs (set_identity): the host is rebuilt on the
same port under the new key, queued frames survive, and the old identity is refused once removed."""

from __future__ import annotations

import pytest
import trio
from network_testkit import LOCK_DIR, PSK, Roster, running, wait_for

from network import PeerNetwork
from network.identity import identity_from_seed, peer_id_of
from node.testnet import free_port


async def _receive(net, want: bytes) -> str:
    with trio.fail_after(15):
        while True:
            sender, _channel, got = await net.inbox.receive()
            if got == want:
                return sender


@pytest.mark.timeout(60)
async def test_identity_swaps_live_and_the_old_one_is_refused():
    r = Roster(3, seed=240)
    a, b, c = r.net(0), r.net(1), r.net(2)
    new_key = identity_from_seed(b"\x77" * 32)
    new_pid = peer_id_of(new_key)
    async with running(a, b, c):
        assert a.send(b.peer_id, "consensus", b"before")
        assert await _receive(b, b"before") == r.pids[0]
        # the chain registered a's new identity: the others allow it (and, at the boundary, drop the old one)
        for net in (b, c):
            net.set_members({new_pid: [r.addrs[0]], **{p: [x] for p, x in zip(r.pids[1:], r.addrs[1:], strict=True)
                                                         if p != net.peer_id}})
        assert a.send(b.peer_id, "tx", b"queued across the swap")  # survives the rebuild
        assert a.set_identity(new_key) and not a.set_identity(new_key)
        assert a.peer_id == new_pid
        await wait_for(lambda: set(a.connected_peers()) == {b.peer_id, c.peer_id}
                       and new_pid in b.connected_peers() and new_pid in c.connected_peers(), timeout=20)
        assert await _receive(b, b"queued across the swap") == new_pid
        assert c.send(new_pid, "consensus", b"to the new identity")
        assert await _receive(a, b"to the new identity") == c.peer_id
        # someone still holding the old key (a copy of the old disk, say) is refused at the handshake
        ghost = PeerNetwork(r.keys[0], {b.peer_id: [r.addrs[1]]}, PSK, f"/ip4/127.0.0.1/tcp/{free_port()}",
                            lock_dir=LOCK_DIR)
        rejected = b.stats["rejected_handshakes"]
        async with running(ghost, connect=False):
            await wait_for(lambda: b.stats["rejected_handshakes"] > rejected, timeout=15)
            assert ghost.connected_peers() == []
        assert a.stats["identity_changes"] == 1
