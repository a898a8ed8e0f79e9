"""The node's router (node.py `_inbox_loop`) never waits for tx checks: a member's consensus frames reach the
replica while another member's tx batches pile up unchecked, the flooder's excess is dropped, and the other
members' batches still go in and are checked in their turn. Before the per-member backlog, the router waited on one shared queue of 64
batches, and every member's votes waited behind one member's flood."""

from __future__ import annotations

import trio

from node import testnet
from node.runtime.gossip import CHANNEL as TX_CHANNEL
from node.runtime.gossip_backlog import PEER_BYTES, QUANTUM
from node.runtime.node import CONSENSUS_CHANNEL, Node
from node.runtime.settings import load_config


async def test_consensus_frames_pass_a_members_unchecked_tx_flood(tmp_path):
    nodes = testnet.generate(4, tmp_path / "net", base_port=testnet.free_base_port(8))
    node = Node(load_config(nodes[0].home))
    try:
        flooder, voter = node.genesis.members[1].peer_id, node.genesis.members[2].peer_id
        delivered: list[tuple[int, bytes]] = []
        node.driver.message = lambda index, data: delivered.append((index, data))
        inbox = node.net._inbox_send
        # more frames than the router takes from the network at once (1,024), and more bytes than a member
        # may have waiting; nobody checks them: _gossip_loop is not running
        size, frames = 32 << 10, 1100
        kept = PEER_BYTES // size
        for i in range(frames):
            inbox.send_nowait((flooder, TX_CHANNEL, i.to_bytes(4, "big") * (size // 4)))
        inbox.send_nowait((voter, TX_CHANNEL, b"an honest batch"))
        inbox.send_nowait((voter, CONSENSUS_CHANNEL, b"a vote"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._inbox_loop)
            with trio.fail_after(5):
                while not delivered:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert delivered == [(node._index_of_peer[voter], b"a vote")]
        backlog = node.gossip_backlog
        assert (len(backlog), backlog.dropped) == (kept + 1, frames - kept)
        # the honest member's batch is checked after one turn of the flooder's, not after its thousand
        turn = QUANTUM // size
        taken = [backlog.take_nowait() for _ in range(turn + 1)]
        assert [peer for peer, _ in taken] == [flooder] * turn + [voter]
        assert taken[-1][1] == b"an honest batch"
    finally:
        node.close()
