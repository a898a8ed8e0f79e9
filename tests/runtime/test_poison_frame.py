"""Issue 9, defect 1, with real processes: a member (its genuine libp2p key and the PSK) sends the tx with a
bin key in its body map as a tx-gossip batch, garbage on every channel, and serves poisoned blocks to block
sync. Before the fix the first batch made every receiving node process exit (TypeError out of the inbox
loop). Now the three honest processes stay up, keep committing the same chain, and report the member's
misbehaviour in the peers RPC."""

from __future__ import annotations

import time

import msgpack
import pytest
import trio

from network import PeerNetwork
from network.identity import load_or_create_identity, peer_id_of
from network.peer_network import RequestError, RequestTimeout
from node.ledger.block import ProposalHeader, encode_payload
from node.ledger.intake import EXAMPLE_EVENT
from node.ledger.merkle import merkle_root
from node.ledger.tx import tx_hash
from node.runtime.settings import load_config

pytestmark = pytest.mark.timeout(180)

ATTACKER = 3  # hosp-d; member 0 is the primary of view 0, so the three honest nodes can commit alone


def _raw(body_map: dict) -> bytes:
    return msgpack.packb([msgpack.packb(body_map, use_bin_type=True), bytes(64)], use_bin_type=True)


POISON = _raw({"type": "instances.accessed", b"zz": 1})
OTHER_POISONS = [_raw({b"zz": 1, "type": "instances.accessed"}), _raw({"type": ["x"]}),
                 _raw({"type": "query", "action": {b"k": 1}})]
GARBAGE = [b"", b"\xc1", b"\xdd\xff\xff\xff\xff", msgpack.packb({b"op": 1}), b"\x81\xa1a" * 3000 + b"\x01"]


def _poisoned_block(chain_id: str, height: int) -> list:
    header = ProposalHeader(chain_id, height, ATTACKER, int(time.time() * 1000), 1, merkle_root([tx_hash(POISON)]))
    forged_cert = msgpack.packb({"height": height, "view": 0, "digest": b"\x00" * 32, "sigs": []})
    return [height, encode_payload(header, [POISON]), forged_cert]


async def _serve_poison(chain_id: str, peer: str, data: bytes) -> bytes:
    """The attacker's block sync: claims a far higher chain, serves poisoned blocks with forged certificates."""
    req = msgpack.unpackb(data)
    if req.get("op") == "status":
        return msgpack.packb({"height": 10 ** 6, "head": b"\x01" * 32}, use_bin_type=True)
    start = req["from"]
    return msgpack.packb({"blocks": [_poisoned_block(chain_id, start + i) for i in range(3)]}, use_bin_type=True)


def _peers_view_of_attacker(net, i: int) -> dict:
    return next(p for p in net.rpc(i, "peers")["peers"] if p["name"] == net.nodes[ATTACKER].name)["misbehaviour"]


async def test_member_sending_the_poison_tx_and_poisoned_blocks_kills_no_node(testnet, tmp_path):
    net = testnet(4)
    honest = [i for i in range(4) if i != ATTACKER]
    for i in honest:
        net.start(i)
    await trio.to_thread.run_sync(lambda: net.wait_ready(honest, timeout=90))

    home = net.nodes[ATTACKER].home
    cfg = load_config(home)
    chain_id = net.rpc(0, "status")["chain_id"]
    members = {_pid(info): [info.p2p] for info in net.nodes}
    attacker = PeerNetwork(load_or_create_identity(home / "keys" / "p2p.key"), members, cfg.psk, cfg.p2p_listen,
                           lock_dir=str(tmp_path))
    attacker.serve("sync", lambda peer, data: _serve_poison(chain_id, peer, data))
    honest_pids = [_pid(net.nodes[i]) for i in honest]
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(attacker.run)
        with trio.fail_after(30):
            await attacker.wait_connected(honest_pids)
        # An idle honest node polls two random peers for their height every 2 s; when it asks the attacker
        # it tries to catch up from it and gets poisoned blocks: refused (certificate first), scored.
        await trio.to_thread.run_sync(lambda: net.wait_until(
            lambda: any("uncertified or altered block in sync response" in _peers_view_of_attacker(net, i)["kinds"]
                        for i in honest), 60, "an honest node refused the attacker's synced blocks"))
        # the frame of the issue, alone, then its relatives, garbage on every channel, and sync requests
        attacker.broadcast("tx", msgpack.packb([POISON], use_bin_type=True))
        attacker.broadcast("tx", msgpack.packb(OTHER_POISONS, use_bin_type=True))
        for junk in GARBAGE:
            attacker.broadcast("tx", junk)
            attacker.broadcast("consensus", junk)
            for pid in honest_pids:
                try:
                    reply = await attacker.request(pid, "sync", junk, timeout=10)
                except RequestTimeout:
                    raise  # an honest node that hangs on the poison has not refused it
                except RequestError:
                    continue  # the node no longer opens streams for the attacker (scored and blocked): refused too
                assert "error" in msgpack.unpackb(reply)

        def still_up_and_committing() -> None:
            for i in honest:
                assert net.procs[i].poll() is None, f"node {i} exited: see {net.nodes[i].home / 'node.log'}"
            event = {**EXAMPLE_EVENT, "event_id": f"after-poison-{time.time_ns()}", "time": int(time.time() * 1000)}
            answer = net.rpc(0, "submit_event", {"event": event, "mode": "commit", "timeout": 30}, timeout=45)
            assert answer["status"] == "committed", answer
            height = answer["height"]
            net.wait_until(lambda: all(net.height(i) >= height for i in honest), 60, "honest nodes at the new height")
            for h in range(1, height + 1):
                assert len({net.rpc(i, "get_block", {"height": h})["hash"] for i in honest}) == 1, f"fork at {h}"
            for i in honest:
                seen = _peers_view_of_attacker(net, i)
                assert seen["reports"] > 0 and seen["score"] > 0, (i, seen)

        await trio.to_thread.run_sync(still_up_and_committing)
        # Enough bad frames block the attacker: its tx gossip is then dropped unread. Broadcast is best effort
        # (a stream that fails to open drops its frame), so a node not blocking yet gets the garbage again.
        with trio.fail_after(60):
            while unblocked := await trio.to_thread.run_sync(
                    lambda: [i for i in honest if not _peers_view_of_attacker(net, i)["blocked"]]):
                for i in unblocked:
                    for junk in GARBAGE:
                        attacker.send(honest_pids[honest.index(i)], "tx", junk)
                await trio.sleep(0.5)
        for i in honest:
            assert net.procs[i].poll() is None, f"node {i} exited: see {net.nodes[i].home / 'node.log'}"
        nursery.cancel_scope.cancel()
    # Many bad items, yet each honest node logs about the attacker at most once per 10 s: the log cannot be
    # flooded.
    intervals = (time.monotonic() - started) / 10
    for i in honest:
        lines = [line for line in (net.nodes[i].home / "node.log").read_text().splitlines()
                 if "sent bad input" in line]
        assert 1 <= len(lines) <= intervals + 1, (i, len(lines), intervals)
        assert all(net.nodes[ATTACKER].name in line for line in lines)


def _pid(info) -> str:
    return peer_id_of(load_or_create_identity(info.home / "keys" / "p2p.key"))
