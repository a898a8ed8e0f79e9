"""The node's router (node.py `_inbox_loop`) never waits for tx checks: a member's consensus frames reach the
replica while another member's tx batches pile up unchecked, the flooder's excess is dropped, and the other
members' batches still go in. Before the per-member backlog, the router waited on one shared queue of 64
batches, and every member's votes waited behind one member's flood."""

from __future__ import annotations

import trio

from node import testnet
from node.runtime.gossip import CHANNEL as TX_CHANNEL
from node.runtime.gossip_backlog import PEER_BATCHES
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
        for i in range(10 * PEER_BATCHES):  # nobody checks them: _gossip_loop is not running
            inbox.send_nowait((flooder, TX_CHANNEL, b"batch %d" % i))
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
        assert (len(backlog), backlog.dropped) == (PEER_BATCHES + 1, 9 * PEER_BATCHES)
        # the honest member's batch is checked second, not after the flooder's PEER_BATCHES
        assert [backlog.take_nowait() for _ in range(2)] == [(flooder, b"batch 0"), (voter, b"an honest batch")]
    finally:
        node.close()
