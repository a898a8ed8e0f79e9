"""The node's router (node.py `_inbox_loop`) never waits for tx checks: a member's consensus frames reach the
replica while another member's tx batches pile up unchecked, and the member that piles them up is held at the
network (its stream is no longer read). Before the per-member backlog, the router waited on one shared queue
of 64 batches, and every member's votes waited behind one member's flood."""

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
        inbox.send_nowait((voter, CONSENSUS_CHANNEL, b"a vote"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._inbox_loop)
            with trio.fail_after(5):
                while not delivered:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert delivered == [(node._index_of_peer[voter], b"a vote")]
        assert len(node.gossip_backlog) == 10 * PEER_BATCHES, "taken, none dropped"
        assert node.gossip_backlog.held() == {flooder}
        assert not node.net._peers[flooder].flowing.is_set(), "its stream is no longer read"
        assert node.net._peers[voter].flowing.is_set()
        # the checks catch up: the flooder is read again once its queue is down to half
        while len(node.gossip_backlog) > PEER_BATCHES // 2:
            node.gossip_backlog.take_nowait()
        assert node.net._peers[flooder].flowing.is_set()
    finally:
        node.close()
