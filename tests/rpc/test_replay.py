"""A WebSocket events replay from far back reads the filter's index, not every block (issue 17): on a real
ledger (Chain.execute, LevelDB) served by the node's RPC app under hypercorn, a real WebSocket client.

The store's get_tx is counted (the real method, wrapped): through the index a study's replay reads that
study's txs only; the block scan it replaces reads every tx since from_height."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import open_websocket_url

from bench.rpc import TOKEN, BenchNode, LedgerTokens, build_ledger, study_uid
from node.rpc import subscriptions
from node.rpc.http import ConnectionCaps, serve_rpc
from node.rpc.render import stored_tx

TXS, STUDIES, BLOCK = 2000, 20, 250  # 8 blocks, ~100 events per study spread over all of them


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "chain"
    build_ledger(path, TXS, STUDIES, BLOCK)
    return path


@pytest.fixture
def node(ledger, tmp_path):
    node = BenchNode(ledger, tmp_path / "work")
    reads: list[bytes] = []
    get_tx = node.store.get_tx

    def counted(h: bytes):
        reads.append(h)
        return get_tx(h)

    node.store.get_tx = counted
    node.reads = reads
    node.truth = lambda flt: [(b.height, i, h.hex()) for b in node.store.blocks() for i, h in enumerate(b.tx_hashes)
                              if flt(stored_tx(get_tx(h)[2])[0])]
    yield node
    node.mempool.close()
    node.store.close()


async def replay(node, from_height: int, filter: dict) -> list[tuple[int, int, str]]:
    """Events of an events subscription up to the progress message at the head."""
    got = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_rpc, node.rpc.app, "127.0.0.1:0", ConnectionCaps(8, 8))
        with trio.fail_after(60):
            async with open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
                node.reads.clear()  # count the replay's reads only
                await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {
                    "kind": "events", "from_height": from_height, "filter": filter}}))
                assert "result" in json.loads(await ws.get_message())
                while True:
                    note = json.loads(await ws.get_message())["params"]
                    if note["type"] == "progress" and note["height"] == node.store.height:
                        break
                    if note["type"] == "event":
                        assert note["event"]["height"] == note["height"] and note["event"]["index"] == note["index"]
                        got.append((note["height"], note["index"], note["event"]["hash"]))
        nursery.cancel_scope.cancel()
    return got


async def test_a_study_replayed_from_height_1_reads_its_index_not_every_tx(node, monkeypatch):
    token = LedgerTokens().token("study", study_uid(3))
    truth = node.truth(lambda f: f["study"] == token)
    assert 50 <= len(truth) <= 150 and len({h for h, _, _ in truth}) == TXS // BLOCK  # spread over every block

    got = await replay(node, 1, {"study": token.hex()})
    assert got == truth  # every event, in height order, as the block scan would send them
    assert len(node.reads) == len(truth)  # one tx read per event: the index, not 2,000 txs

    # the raw UID (tokenized in every key epoch held) and a second condition checked on each tx
    got = await replay(node, 1, {"study_uid": study_uid(3), "member": "hosp-1"})
    assert got == [e for e in truth if e in node.truth(lambda f: f["member"] == "hosp-1")] and got
    # from the middle of the chain: only what is at or after from_height
    middle = node.store.height // 2
    assert await replay(node, middle, {"study": token.hex()}) == [e for e in truth if e[0] >= middle]

    # an identifier with more history than the replay holds in memory: the block scan, the same events
    monkeypatch.setattr(subscriptions, "INDEXED_REPLAY_MAX", 10)
    assert await replay(node, 1, {"study": token.hex()}) == truth
    assert len(node.reads) == TXS


async def test_a_filter_without_a_selective_index_scans_the_blocks(node):
    got = await replay(node, 1, {"member": "hosp-2"})
    assert got == node.truth(lambda f: f["member"] == "hosp-2") and got
    assert len(node.reads) == TXS
