"""Compact proposals (node.ledger.block, node.ledger.chain, node.runtime.gossip fetch, node.runtime.driver
hold): a primary names txs by hash; a replica resolves them from what it holds and fetches the rest from
the proposer before it validates. Real chains, LevelDB stores and mempools; the wire between the two
members is the seam (a request goes straight to the other member's handler, or to an attacker's).

What an attacker would try: naming txs nobody has, millions of hashes, duplicate hashes, answering a
fetch with txs that were not asked for (hash mismatch), forged or garbage answers, never answering. Each
must end with the proposal refused (no vote) or resolved, the node's loops intact and the sender scored.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import msgpack
import pytest
import trio

sys.path.insert(0, str(next(Path(__file__).parents[1].rglob("ledger_helpers.py")).parent))
from ledger_helpers import T0, Consortium  # noqa: E402

from node.ledger.block import ProposalHeader, encode_compact_payload, is_compact_payload  # noqa: E402
from node.ledger.chain import Chain, ProposalError  # noqa: E402
from node.ledger.merkle import merkle_root  # noqa: E402
from node.ledger.store import Store  # noqa: E402
from node.ledger.tx import tx_hash  # noqa: E402
from node.runtime.diskspace import DiskGuard  # noqa: E402
from node.runtime.gossip import (  # noqa: E402
    FETCH_CHANNEL,
    MAX_FETCH_TXS,
    FetchError,
    TxGossip,
    decode_fetch_request,
    encode_fetch_request,
)
from node.runtime.mempool import Mempool  # noqa: E402
from node.runtime.peerscore import PeerScores  # noqa: E402
from node.runtime.settings import MempoolConfig  # noqa: E402


class Member:
    def __init__(self, c: Consortium, path: Path, max_txs: int = 1000):
        self.store = Store(path / "chain")
        self.chain = Chain(c.genesis, self.store, clock=lambda: T0 / 1000)
        self.mempool = Mempool(path / "mempool", max_txs)
        self.chain.tx_source = self.mempool.get
        self.gossip = TxGossip(lambda ch, data: 3, self.chain, self.mempool, MempoolConfig(),
                               on_admitted=lambda: None, scores=PeerScores(log_interval=10.0))
        self.chain.keep_txs = self.gossip.keep_for_vote  # as node.runtime.node wires it

    def close(self):
        self.mempool.close()
        self.store.close()


class Wire:
    """net.request to one peer: its handler, or whatever an attacker answers."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[bytes] = []

    async def request(self, peer: str, channel: str, data: bytes, timeout: float) -> bytes:
        assert channel == FETCH_CHANNEL
        self.requests.append(data)
        with trio.fail_after(timeout):
            return await self.handler("replica", data)


@pytest.fixture
def c():
    return Consortium()


@pytest.fixture
def pair(c, tmp_path):
    a, b = Member(c, tmp_path / "a"), Member(c, tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def items(raws):
    return [(tx_hash(r), r) for r in raws]


def test_a_compact_proposal_has_the_full_ones_digest_and_executes_to_the_same_block(c, pair, tmp_path):
    a, b = pair
    raws = [c.tx(i % 4) for i in range(20)]
    a.mempool.add_many(items(raws), 0.0)
    b.mempool.add_many(items(raws), 0.0)
    full = a.chain.build_proposal(1, 0, T0, raws)
    compact = a.chain.build_compact_proposal(1, 0, T0, raws)
    assert is_compact_payload(compact) and not is_compact_payload(full)
    assert Chain.proposal_digest(compact) == Chain.proposal_digest(full)  # votes and certificates are shared
    assert len(compact) < len(full) / 5
    assert b.chain.missing_txs(compact) == []
    assert b.chain.validate(1, compact)
    block_b = b.chain.execute(compact, c.certificate(b.chain, compact, 1))
    block_a = a.chain.execute(full, c.certificate(a.chain, full, 1))
    assert block_a.hash == block_b.hash
    # what block sync serves and verify-chain reads is the full payload
    assert b.store.get_payload(1) == full
    assert all(b.store.get_tx(tx_hash(r)) is not None for r in raws)


def test_a_proposal_naming_txs_this_node_lacks_is_refused_until_they_are_fetched(c, pair):
    a, b = pair
    raws = [c.tx(i % 4) for i in range(6)]
    a.mempool.add_many(items(raws), 0.0)
    b.mempool.add_many(items(raws[:2]), 0.0)
    compact = a.chain.build_compact_proposal(1, 0, T0, raws)
    assert b.chain.missing_txs(compact) == [tx_hash(r) for r in raws[2:]]
    assert not b.chain.validate(1, compact)

    async def fetch():
        wire = Wire(a.gossip.serve_fetch)
        assert await b.gossip.fetch(wire, "primary", b.chain.missing_txs(compact)) == 4
        assert len(wire.requests) == 1

    trio.run(fetch)
    assert b.chain.missing_txs(compact) == []
    assert b.chain.validate(1, compact)
    # fetched txs are durable before the replica can vote: a restart still resolves the proposal
    b.mempool.close()
    b.mempool = Mempool(b.mempool._path, 1000)
    assert b.mempool.restore(b.store.has_tx, 0.0) == 6


def test_hashes_nobody_has_duplicates_and_oversized_lists_are_refused_without_allocation(c, pair):
    a, b = pair
    raws = [c.tx(0) for _ in range(3)]
    b.mempool.add_many(items(raws), 0.0)
    hashes = [tx_hash(r) for r in raws]

    def compact(hs, count=None):
        header = ProposalHeader(c.genesis.chain_id, 1, 0, T0, len(hs) if count is None else count,
                                merkle_root(hs) if hs else b"\0" * 32)
        return encode_compact_payload(header, hs)

    unknown = [hashlib.sha256(b"nobody %d" % i).digest() for i in range(5)]
    assert b.chain.missing_txs(compact(hashes + unknown)) == unknown
    assert not b.chain.validate(1, compact(hashes + unknown))
    with pytest.raises(ProposalError, match="not held"):
        b.chain.validate_proposal(1, compact(hashes + unknown), now_ms=T0)
    # a duplicate: resolvable, but a block never carries a tx twice
    with pytest.raises(ProposalError, match="twice"):
        b.chain.validate_proposal(1, compact(hashes + hashes[:1]), now_ms=T0)
    # millions of hashes: refused by the size bound before a list of them is built
    header = ProposalHeader(c.genesis.chain_id, 1, 0, T0, 2_000_000, b"\0" * 32).encode()
    huge = msgpack.packb([header, b"\x01" * (32 * 2_000_000)], use_bin_type=True)
    assert b.chain.missing_txs(huge) == []  # nothing to fetch from a malformed payload
    with pytest.raises(ProposalError):
        b.chain.validate_proposal(1, huge, now_ms=T0)
    over_block = msgpack.packb([header, b"\x01" * (32 * (b.chain.max_txs + 1))], use_bin_type=True)
    with pytest.raises(ProposalError, match="limit|max_bin_len"):
        b.chain.validate_proposal(1, over_block, now_ms=T0)
    # hashes that are not whole, count that does not match
    with pytest.raises(ProposalError, match="32-byte"):
        b.chain.validate_proposal(1, msgpack.packb([header, b"\x01" * 33], use_bin_type=True), now_ms=T0)
    with pytest.raises(ProposalError, match="tx_count"):
        b.chain.validate_proposal(1, compact(hashes, count=4), now_ms=T0)


def test_fetch_requests_are_bounded_and_malformed_ones_scored(c, pair):
    a, _b = pair
    raws = [c.tx(1) for _ in range(3)]
    a.mempool.add_many(items(raws), 0.0)
    hashes = [tx_hash(r) for r in raws]
    assert decode_fetch_request(encode_fetch_request(hashes + hashes)) == hashes  # deduplicated
    for bad in (b"", b"\xc4\x05abcde", msgpack.packb([b"x" * 32]), msgpack.packb(b"\0" * 32 * (MAX_FETCH_TXS + 1)),
                msgpack.packb({"a": 1}), b"\xc6\xff\xff\xff\xff"):
        with pytest.raises(FetchError):
            decode_fetch_request(bad)

    async def main():
        answer = msgpack.unpackb(await a.gossip.serve_fetch("peer-x", encode_fetch_request(
            hashes + [b"\x09" * 32])))
        assert answer == raws  # what it holds, in the order asked; the unknown hash left out
        assert msgpack.unpackb(await a.gossip.serve_fetch("peer-x", b"\x93garbage")) == []
        assert a.gossip.scores.score("peer-x") > 0

    trio.run(main)


@pytest.mark.parametrize("attack", ["wrong_tx", "forged", "garbage", "silent", "error"])
def test_a_hostile_proposer_answer_admits_nothing_and_is_scored(c, pair, attack):
    a, b = pair
    wanted = [c.tx(0) for _ in range(3)]
    other = c.tx(1)
    forged = bytearray(wanted[0])
    forged[-1] ^= 1
    hashes = [tx_hash(r) for r in wanted]
    if attack == "forged":
        hashes[0] = tx_hash(bytes(forged))

    async def answer(peer, data):
        if attack == "wrong_tx":  # a valid tx, but not one of those asked for
            return msgpack.packb([other] * 3, use_bin_type=True)
        if attack == "forged":  # hash matches the request, signature does not verify
            return msgpack.packb([bytes(forged)], use_bin_type=True)
        if attack == "garbage":
            return b"\xc1" * 100
        if attack == "error":
            raise OSError("connection reset")
        await trio.sleep_forever()

    async def main():
        with trio.fail_after(5):
            got = await b.gossip.fetch(Wire(answer), "primary", hashes, timeout=0.2)
        assert got == 0

    trio.run(main)
    assert len(b.mempool) == 0 and tx_hash(other) not in b.mempool
    if attack in ("wrong_tx", "forged", "garbage"):
        assert b.gossip.scores.score("primary") > 0
    else:
        assert b.gossip.stats["fetch_failed"] == 1


def test_an_answer_stays_under_the_response_limit_and_the_rest_comes_on_asking_again(c, pair, monkeypatch):
    import node.runtime.gossip as G

    a, b = pair
    raws = [c.tx(2) for _ in range(6)]
    a.mempool.add_many(items(raws), 0.0)
    monkeypatch.setattr(G, "MAX_FETCH_ANSWER_BYTES", 2 * max(len(r) for r in raws) + 20)
    compact = a.chain.build_compact_proposal(1, 0, T0, raws)

    async def main():
        wire, rounds = Wire(a.gossip.serve_fetch), 0
        missing = b.chain.missing_txs(compact)
        while missing and await b.gossip.fetch(wire, "primary", missing):
            rounds += 1
            missing = b.chain.not_held(missing)
        assert missing == [] and rounds == 3  # two txs per answer

    trio.run(main)
    assert b.chain.validate(1, compact)


def test_flush_now_sends_the_outbox_at_once_in_bounded_batches(c, tmp_path):
    sent = []
    m = Member(c, tmp_path / "m")
    m.gossip = TxGossip(lambda ch, data: sent.append(data) or 3, m.chain, m.mempool,
                        MempoolConfig(gossip_batch=4), on_admitted=lambda: None)
    raws = [c.tx(0) for _ in range(10)]
    m.gossip.admit(items(raws))
    m.gossip.flush_now()
    assert [len(msgpack.unpackb(f)) for f in sent] == [4, 4, 2]
    m.gossip.flush_now()
    assert len(sent) == 3  # nothing twice
    m.close()


def test_gossip_copies_stay_in_memory_until_a_compact_proposal_names_them_then_survive_a_restart(c, pair, tmp_path):
    a, b = pair
    committed = c.tx(3)
    for m in (a, b):
        c.commit(m.chain, [committed])
    raws = [c.tx(i % 3) for i in range(6)]
    a.mempool.add_many(items(raws), 0.0)
    b.gossip.on_batch("peer-a", msgpack.packb(raws + [committed], use_bin_type=True))
    assert all(tx_hash(r) in b.mempool for r in raws) and tx_hash(committed) not in b.mempool

    def restart(m: Member) -> int:
        m.mempool.close()
        m.mempool = m.gossip.mempool = Mempool(m.mempool._path, 1000)
        m.chain.tx_source = m.mempool.get
        return m.mempool.restore(m.store.has_tx, 0.0)

    assert restart(b) == 0  # gossip's copies were never written: the origin A holds them on disk
    b.gossip.on_batch("peer-a", msgpack.packb(raws, use_bin_type=True))
    compact = a.chain.build_compact_proposal(2, 0, T0, raws[:4] + [committed])
    assert b.chain.validate(2, compact)
    assert tx_hash(committed) not in b.mempool  # in the store: the mempool would propose it again
    # B's vote on it would now be in its WAL: after a kill -9 it still holds the 4 txs the vote relies on,
    # and not the ones no proposal named
    assert restart(b) == 4
    assert b.chain.missing_txs(compact) == []
    assert tx_hash(raws[5]) not in b.mempool


def test_a_replica_that_cannot_keep_a_compact_proposals_txs_does_not_vote_for_it(c, pair, tmp_path):
    a, b = pair
    raws = [c.tx(i % 3) for i in range(4)]
    b.gossip.on_batch("peer-a", msgpack.packb(raws, use_bin_type=True))
    b.mempool.guard = DiskGuard(tmp_path)
    b.mempool.guard.full = True  # what a failed write leaves until space returns
    compact = a.chain.build_compact_proposal(1, 0, T0, raws)
    with pytest.raises(ProposalError, match="cannot keep"):
        b.chain.validate_proposal(1, compact)
    assert not b.chain.validate(1, compact)
    b.mempool.guard.full = False
    assert b.chain.validate(1, compact)
