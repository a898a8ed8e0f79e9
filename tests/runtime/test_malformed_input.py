"""Issue 9, defect 1: one malformed frame from a member must not kill a node.

A tx whose body map has a bin key next to str keys made the field-order check raise TypeError (comparing
bytes with str) before the signature was checked. These tests send that tx, and its relatives, through each
in-process path a member can reach: tx decoding, tx gossip, block sync (Chain.execute and the sync
decoders). The real-process versions are in tests/runtime/test_poison_frame.py; the RPC one in
tests/rpc/test_rpc_malformed_tx.py; generated inputs in tests/fuzz.
"""

from __future__ import annotations

import msgpack
import pytest
from ledger_helpers import T0

from node.ledger.block import encode_payload
from node.ledger.chain import ChainError, TxNotAuthorised
from node.ledger.tx import TxError, decode_tx, tx_hash
from node.runtime.gossip import BatchError, TxGossip, decode_batch
from node.runtime.mempool import Mempool
from node.runtime.peerscore import PeerScores
from node.runtime.settings import MempoolConfig
from node.runtime.sync import BlockSync, SyncError, decode_blocks, decode_request, decode_status


def _raw(body_map: dict, sig: bytes = bytes(64)) -> bytes:
    return msgpack.packb([msgpack.packb(body_map, use_bin_type=True), sig], use_bin_type=True)


POISON = _raw({"type": "instances.accessed", b"zz": 1})  # the tx of the issue, zero signature
POISONS = {
    "bin key after type": POISON,
    "bin key first": _raw({b"zz": 1, "type": "instances.accessed"}),
    "bin key named like a field": _raw({"chain": "x", b"type": "instances.accessed", "type": "query"}),
    "only a bin key": _raw({b"type": "instances.accessed"}),
    "bin type value": _raw({"type": b"instances.accessed"}),
    "list type value": _raw({"type": ["instances.accessed"]}),
    "map type value": _raw({"type": {"a": 1}}),
    "nested map value": _raw({"action": {b"x": {"y": 1}}, "type": "instances.accessed"}),
}


@pytest.mark.parametrize("raw", POISONS.values(), ids=POISONS.keys())
def test_malformed_body_is_a_tx_error_naming_the_field(raw):
    with pytest.raises(TxError) as info:
        decode_tx(raw)
    assert info.value.field  # RPC answers name it
    with pytest.raises(TxError):
        decode_tx(raw, verify=False)


def test_the_issue_tx_names_the_bin_key():
    with pytest.raises(TxError) as info:
        decode_tx(POISON)
    assert info.value.field == "b'zz'"
    assert "field names must be strings" in str(info.value)


def test_oversized_containers_are_refused_before_allocation():
    many_fields = _raw({f"k{i:03}": 1 for i in range(500)})
    long_list = _raw({"series": [b"x"] * 1000, "type": "query"})
    deep = msgpack.packb([b"\x81\xa1a" * 2000 + b"\x01", bytes(64)], use_bin_type=True)  # {"a": {"a": ...}}
    for raw in (many_fields, long_list, deep):
        with pytest.raises(TxError, match="^body: not a single msgpack value"):
            decode_tx(raw)


def test_chain_check_tx_refuses_the_poison(chain):
    with pytest.raises(TxError):
        chain.check_tx(POISON)


def test_unauthorised_key_is_its_own_tx_error(chain, consortium):
    from nacl.signing import SigningKey

    stranger = consortium.tx(0, signer=SigningKey(b"\x55" * 32))
    with pytest.raises(TxNotAuthorised):
        chain.check_tx(stranger)


# ---------------------------------------------------------------------------------------------- sync

def test_synced_block_carrying_the_poison_is_a_chain_error(chain, consortium):
    """Block sync hands the driver (height, payload, certificate) from a peer; the driver catches only
    ChainError. The payload is only parsed after the certificate checks out, so a forged certificate is
    refused without touching the poisoned tx, and a quorum never certifies such a payload."""
    payload = chain.build_proposal(1, 0, T0, [POISON])
    forged = [b"", b"\xc1", msgpack.packb({"height": 1}), _cert_of_other_payload(chain, consortium)]
    for cert in forged:
        with pytest.raises(ChainError):
            chain.execute(payload, cert)
    assert chain.height == 0
    # even with a real quorum certificate (f+1 colluding members cannot make one; 2f+1 here), the
    # payload's invalid tx is a ChainError, not a TypeError
    with pytest.raises(ChainError, match="committed payload is invalid"):
        chain.execute(payload, consortium.certificate(chain, payload, 1))
    assert chain.height == 0
    consortium.commit(chain, [consortium.tx(0)])  # and the chain goes on
    assert chain.height == 1


def test_certificate_is_checked_before_the_payload_is_parsed(chain, consortium):
    payload = encode_payload(_header(chain, [b"\x00" * 10]), [b"\xc1" * 10])
    with pytest.raises(ChainError) as info:
        chain.execute(payload, _cert_of_other_payload(chain, consortium))
    assert "certificate" in str(info.value) and "tx" not in str(info.value)


@pytest.mark.parametrize("digest", [2 ** 32, 2 ** 40, -1, True, [1], "ab"])
def test_a_certificate_field_of_the_wrong_type_is_refused_not_converted(chain, consortium, digest):
    """Found by the soak fuzz: Certificate.decode ran bytes() on the peer's value, so a digest of 2**32
    allocated 4 GiB (and the mismatch message hexed it). Through block sync a member could make an honest
    node allocate gigabytes per block. Now every field is type-checked; nothing is converted."""
    payload = chain.build_proposal(1, 0, T0, [consortium.tx(0)])
    good = msgpack.unpackb(consortium.certificate(chain, payload, 1))
    for field, value in (("digest", digest), ("height", str(digest)), ("view", [digest]),
                         ("sigs", [[0, digest]])):
        cert = msgpack.packb({**good, field: value}, use_bin_type=True)
        with pytest.raises(ChainError, match="certificate"):
            chain.check_certified(1, payload, cert)
        with pytest.raises(ChainError, match="certificate"):
            chain.execute(payload, cert)
    assert chain.height == 0


def _header(chain, txs: list[bytes]) -> bytes:
    payload = chain.build_proposal(1, 0, T0, txs)
    return msgpack.unpackb(payload)[0]


def _cert_of_other_payload(chain, consortium) -> bytes:
    other = chain.build_proposal(1, 0, T0, [consortium.tx(0)])
    return consortium.certificate(chain, other, 1)


BAD_SYNC_FRAMES = [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({b"op": "status"}),
                   msgpack.packb({"op": ["status"]}), msgpack.packb({"op": "blocks", "from": -1}),
                   msgpack.packb({"op": "blocks", "from": 2 ** 64 - 1}), msgpack.packb({"op": "blocks"}),
                   msgpack.packb({"op": "blocks", "from": True}), msgpack.packb({"op": "x" * 40}),
                   msgpack.packb([[[[[]]]]] * 3), b"\xdd\xff\xff\xff\xff"]


@pytest.mark.parametrize("frame", BAD_SYNC_FRAMES)
def test_sync_decoders_raise_only_sync_error(frame):
    with pytest.raises(SyncError):
        decode_request(frame)
    with pytest.raises(SyncError):
        decode_status(frame)
    with pytest.raises(SyncError):
        decode_blocks(frame, 1)


def test_sync_blocks_reply_must_be_consecutive_from_the_requested_height():
    good = [1, b"p", b"c"]
    assert decode_blocks(msgpack.packb({"blocks": [good]}, use_bin_type=True), 1) == [(1, b"p", b"c")]
    for blocks in ([[2, b"p", b"c"]], [good, good], [[True, b"p", b"c"]], [[1, "p", b"c"]], [good[:2]]):
        with pytest.raises(SyncError):
            decode_blocks(msgpack.packb({"blocks": blocks}, use_bin_type=True), 1)


async def test_sync_serve_answers_garbage_with_an_error_and_scores_the_peer(chain):
    scores = PeerScores()
    sync = BlockSync(net=None, chain=chain, driver=None, peer_ids=["me", "peer"], scores=scores)
    for frame in BAD_SYNC_FRAMES:
        reply = msgpack.unpackb(await sync.serve("peer", frame))
        assert "error" in reply
    assert scores.score("peer") > 0
    assert msgpack.unpackb(await sync.serve("peer", msgpack.packb({"op": "status"})))["height"] == 0


# ---------------------------------------------------------------------------------------------- gossip

@pytest.fixture
def gossip(chain, tmp_path):
    mempool = Mempool(tmp_path / "mempool", 1000)
    admitted = []
    g = TxGossip(lambda channel, data: 0, chain, mempool, MempoolConfig(),
                 on_admitted=lambda: admitted.append(1), scores=PeerScores(log_interval=10.0))
    yield g
    mempool.close()


def test_gossip_batch_with_the_poison_admits_the_good_txs_and_scores_the_sender(gossip, consortium):
    good = [consortium.tx(0), consortium.tx(1)]
    gossip.on_batch("peer-b", msgpack.packb([POISON, good[0], *POISONS.values(), good[1]], use_bin_type=True))
    assert all(tx_hash(raw) in gossip.mempool for raw in good)
    assert gossip.stats["txs_admitted"] == 2 and gossip.stats["txs_refused"] == len(POISONS) + 1
    assert gossip.scores.score("peer-b") > 0 and gossip.scores.score("peer-c") == 0


def test_gossip_logs_once_per_interval_and_blocks_a_flooding_member(gossip, consortium, caplog):
    clock = [1000.0]
    gossip.scores.clock = lambda: clock[0]
    for _ in range(500):
        gossip.on_batch("peer-b", b"\xc1garbage")
    assert gossip.stats["batches_malformed"] < 500  # once blocked, batches are dropped unread
    assert gossip.stats["batches_malformed"] + gossip.stats["batches_dropped"] == 500
    assert gossip.scores.blocked("peer-b")
    assert gossip.scores.log_lines == 1  # 500 reports within one interval: one line
    # a blocked member's valid txs are dropped too, until its score decays
    tx = consortium.tx(1)
    gossip.on_batch("peer-b", msgpack.packb([tx], use_bin_type=True))
    assert tx_hash(tx) not in gossip.mempool
    clock[0] += 10 * gossip.scores.half_life
    assert not gossip.scores.blocked("peer-b")
    gossip.on_batch("peer-b", msgpack.packb([tx], use_bin_type=True))
    assert tx_hash(tx) in gossip.mempool


@pytest.mark.parametrize("frame", [b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, b"x"]),
                                   msgpack.packb(["tx"]), msgpack.packb([[b"x"]]),
                                   msgpack.packb([b"x" * 20000], use_bin_type=True),
                                   msgpack.packb([b"x"] * 5000, use_bin_type=True), b"\xdd\xff\xff\xff\xff"])
def test_gossip_batch_decoder_raises_only_batch_error(frame):
    with pytest.raises(BatchError):
        decode_batch(frame)



# ---------------------------------------------------------------------------------------------- scores

def test_peer_scores_decay_block_and_log_once_per_interval(caplog):
    clock = [0.0]
    scores = PeerScores(threshold=100, half_life=30, log_interval=10, clock=lambda: clock[0],
                        names={"pid-d": "hosp-d"})
    with caplog.at_level("WARNING", logger="radchain.peers"):
        for _ in range(4):
            scores.penalize("pid-d", 20, "malformed tx batch", "x" * 1000)
        assert not scores.blocked("pid-d") and scores.score("pid-d") == 80
        scores.penalize("pid-d", 20, "malformed tx batch")  # 100: blocked
        assert scores.blocked("pid-d")
        clock[0] += 5
        scores.penalize("pid-d", 20, "malformed sync request")  # within the interval: not logged
        clock[0] += 5
        scores.penalize("pid-d", 20, "malformed sync request")  # the next interval: one line for all
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("hosp-d" in line for line in lines)
    assert "6 report(s) since last line" in lines[1] and "blocked" in lines[1]
    assert len(lines[0]) < 400  # the peer's detail is truncated
    snap = scores.snapshot()["pid-d"]
    assert snap["reports"] == 7 and snap["kinds"] == {"malformed tx batch": 5, "malformed sync request": 2}
    clock[0] += 30  # one half-life: ~60, still blocked (it stays so until below half the threshold)
    assert 55 < scores.score("pid-d") < 65 and scores.blocked("pid-d")
    clock[0] += 30  # two half-lives: ~30
    assert 25 < scores.score("pid-d") < 35 and not scores.blocked("pid-d")
    assert scores.score("pid-a") == 0 and not scores.blocked("pid-b")
