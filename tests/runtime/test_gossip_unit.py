"""Tx gossip (node/runtime/gossip.py) between two members' real chains and LevelDB mempools, the wire being
the seam: every tx a client was told is pending reaches the other member exactly once per send, duplicates are
dropped, batches stay within their bounds, a tx stuck too long is sent again, and nothing a member sends
(garbage, forgeries, floods, repeats) gets past the checks or stops the loop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgpack
import pytest
import trio
from nacl.signing import SigningKey

sys.path.insert(0, str(next(Path(__file__).parents[1].rglob("ledger_helpers.py")).parent))
from ledger_helpers import Consortium  # noqa: E402

from node.ledger.chain import Chain, TxNotAuthorised  # noqa: E402
from node.ledger.store import Store  # noqa: E402
from node.ledger.tx import tx_hash  # noqa: E402
from node.runtime.gossip import CHANNEL, MAX_BATCH_TXS, TxGossip, decode_batch  # noqa: E402
from node.runtime.mempool import Mempool  # noqa: E402
from node.runtime.peerscore import PeerScores  # noqa: E402
from node.runtime.settings import MempoolConfig  # noqa: E402


class Member:
    """One member's chain, mempool and gossip; what it broadcasts is recorded as frames."""

    def __init__(self, c: Consortium, path: Path, **cfg):
        self.store = Store(path / "chain")
        self.chain = Chain(c.genesis, self.store)
        self.mempool = Mempool(path / "mempool", cfg.pop("max_txs", 1000))
        self.frames: list[bytes] = []
        self.sent_to: list[tuple[str, bytes]] = []  # frames for one member (TxGossip.on_peer_up)
        self.admitted = 0
        self.gossip = TxGossip(self.broadcast, self.chain, self.mempool, MempoolConfig(**cfg),
                               on_admitted=self.on_admitted, scores=PeerScores(log_interval=10.0),
                               send=self.send)

    def broadcast(self, channel: str, data: bytes) -> int:
        assert channel == CHANNEL
        self.frames.append(data)
        return 3

    def send(self, peer: str, channel: str, data: bytes) -> bool:
        assert channel == CHANNEL
        self.sent_to.append((peer, data))
        return True

    def on_admitted(self) -> None:
        self.admitted += 1

    def close(self):
        self.mempool.close()
        self.store.close()


@pytest.fixture
def c():
    return Consortium()


@pytest.fixture
def members(c, tmp_path):
    made = []

    def make(name: str, **cfg) -> Member:
        m = Member(c, tmp_path / name, **cfg)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def items(raws):
    return [(tx_hash(r), r) for r in raws]


async def test_admitted_txs_reach_the_other_member_once_in_bounded_batches(c, members):
    a, b = members("a", gossip_batch=4, gossip_interval=0.01), members("b")
    raws = [c.tx(i % 4) for i in range(10)]
    # a client submits its batch twice over, with a repeat inside: each tx is gossiped once
    assert len(a.gossip.admit(items(raws + raws[:3]))) == 10
    assert a.gossip.admit(items(raws)) == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.gossip.run)
        with trio.fail_after(5):
            while sum(len(decode_batch(f)) for f in a.frames) < 10:
                await trio.sleep(0.005)
        await trio.sleep(0.05)  # a few more flush rounds: nothing is sent twice
        nursery.cancel_scope.cancel()
    sent = [raw for f in a.frames for raw in decode_batch(f)]
    assert sorted(sent) == sorted(raws)
    assert all(len(decode_batch(f)) <= 4 for f in a.frames)  # gossip_batch bounds every frame
    for f in a.frames:
        b.gossip.on_batch("peer-a", f)
    assert all(tx_hash(r) in b.mempool for r in raws) and len(b.mempool) == 10
    assert b.gossip.stats["txs_admitted"] == 10 and b.admitted == len(a.frames)
    # Both restart: the origin A acknowledged these to its client, so its disk holds them; B holds its gossip
    # copies in memory only (A resends its pending txs to every peer on connect, the next test)
    for m in (a, b):
        m.mempool.close()
        m.mempool = Mempool(m.mempool._path, 1000)
    assert a.mempool.restore(lambda h: False, now=0.0) == 10
    assert b.mempool.restore(lambda h: False, now=0.0) == 0


def test_a_restarted_origin_resends_what_it_acknowledged_and_a_client_copy_of_a_gossip_tx_is_persisted(c, members):
    a, b = members("a"), members("b")
    raws = [c.tx(i) for i in range(3)]
    a.gossip.admit(items(raws))
    b.gossip.on_batch("peer-a", msgpack.packb(raws, use_bin_type=True))
    # A's client resubmits one of them to B (say A stopped answering): B acknowledges it, so it goes to disk
    assert b.gossip.admit(items(raws[:1])) == []  # already held: not gossiped again
    a.mempool.close(), b.mempool.close()
    a.mempool, b.mempool = Mempool(a.mempool._path, 1000), Mempool(b.mempool._path, 1000)
    assert b.mempool.restore(lambda h: False, now=0.0) == 1 and tx_hash(raws[0]) in b.mempool
    assert a.mempool.restore(lambda h: False, now=0.0) == 3
    fresh_b = members("b2")  # a member that lost its memory copy: A's reconnect brings every tx back
    a.gossip.mempool = a.mempool
    a.gossip.on_peer_up("peer-b")
    for peer, frame in a.sent_to:
        assert peer == "peer-b"
        fresh_b.gossip.on_batch("peer-a", frame)
    assert sorted(fresh_b.mempool.raws()) == sorted(items(raws))
    # committed txs leave the disk too, including the one B persisted after holding it in memory
    b.mempool.remove([tx_hash(r) for r in raws], now=1.0)
    b.mempool.close()
    b.mempool = Mempool(b.mempool._path, 1000)
    assert b.mempool.restore(lambda h: False, now=2.0) == 0


def test_a_batch_of_known_committed_and_repeated_txs_admits_only_the_new_one(c, members):
    b = members("b")
    committed, held, new = c.tx(1), c.tx(2), c.tx(3)
    c.commit(b.chain, [committed])
    b.gossip.on_batch("peer-a", msgpack.packb([held], use_bin_type=True))
    admitted_before = b.admitted
    b.gossip.on_batch("peer-a", msgpack.packb([committed, held, new, new, new, held], use_bin_type=True))
    assert tx_hash(committed) not in b.mempool  # already in a block: never proposed again
    assert len(b.mempool) == 2 and tx_hash(new) in b.mempool
    assert b.gossip.stats["txs_admitted"] == 2  # held once, new once (not once per copy)
    assert b.admitted == admitted_before + 1
    assert b.gossip.scores.score("peer-a") == 0  # repeats are not misbehaviour


def test_forged_and_foreign_txs_are_refused_and_the_valid_ones_in_the_batch_admitted(c, members):
    b = members("b")
    good = c.tx(0)
    forged = bytearray(c.tx(1))
    forged[-1] ^= 1  # signature no longer verifies
    stranger = c.tx(2, signer=SigningKey(b"\x99" * 32))  # well signed, by a key no member registered
    b.gossip.on_batch("peer-c", msgpack.packb([bytes(forged), stranger, good], use_bin_type=True))
    assert list(b.mempool.take_for_proposal(10, 1)) == [good]
    assert b.gossip.stats["txs_refused"] == 2
    assert b.gossip.scores.score("peer-c") > 0  # the forgery counts against the sender
    assert b.gossip.scores.score("peer-x") == 0


async def test_txs_signed_by_a_key_no_member_authorised_cost_no_signature_check(c, members, monkeypatch):
    """A member can sign any number of txs with a key of its own and replay them forever: neither gossip path
    may spend an Ed25519 verification on them (nor keep them in the verified cache), and the sender is not
    scored, as an honest member whose client key was revoked meanwhile sends the same."""
    import node.ledger.tx as txmod
    checks = []
    real = txmod._sign_open
    monkeypatch.setattr(txmod, "_sign_open", lambda signed, client: checks.append(client) or real(signed, client))
    stranger = SigningKey(b"\x99" * 32)
    strangers = [c.tx(1, signer=stranger) for _ in range(200)]
    good = c.tx(0)
    b = members("b")
    b.gossip.on_batch("peer-c", msgpack.packb(strangers + [good], use_bin_type=True))  # inline path
    await b.gossip.on_batches_threaded([("peer-c", msgpack.packb(strangers, use_bin_type=True))] * 2)
    assert checks == [bytes(c.keys[0].verify_key)]  # the one authorised tx, and nothing else
    assert list(b.mempool.take_for_proposal(10, 1)) == [good]
    assert b.gossip.stats["txs_refused"] == 3 * len(strangers)
    assert all(b.chain.verified(tx_hash(r)) is None for r in strangers)
    assert b.gossip.scores.score("peer-c") == 0
    # a client of this node is refused the same way, before any signature check
    with pytest.raises(TxNotAuthorised):
        b.chain.check_tx(strangers[0])
    assert len(checks) == 1


def test_a_flood_past_the_pool_bound_is_refused_without_raising_and_the_pool_stays_bounded(c, members):
    b = members("b", max_txs=5)
    for _ in range(3):
        b.gossip.on_batch("peer-a", msgpack.packb([c.tx(0) for _ in range(4)], use_bin_type=True))
        assert len(b.mempool) <= 5
    assert len(b.mempool) == 4  # the second batch of 4 did not fit: refused whole, kept by its origin
    assert b.gossip.stats["txs_refused"] == 8


def test_oversized_batches_are_refused_unread_and_scored(c, members):
    b = members("b")
    too_many = msgpack.packb([b"x"] * (MAX_BATCH_TXS + 1), use_bin_type=True)
    b.gossip.on_batch("peer-d", too_many)
    b.gossip.on_batch("peer-d", b"\xdd" + b"\xff" * 4)  # claims 4 billion items in 5 bytes
    assert b.gossip.stats["batches_malformed"] == 2 and len(b.mempool) == 0
    assert b.gossip.scores.score("peer-d") > 0


async def test_a_tx_waiting_too_long_is_gossiped_again(c, members):
    """A batch lost with a killed peer connection: the origin sends its waiting txs again."""
    a = members("a", rebroadcast_after=0.05, gossip_interval=0.01)
    raw = c.tx(0)
    a.mempool.add_many(items([raw]), time.monotonic())  # admitted, but its first batch was lost
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.gossip.run)
        with trio.fail_after(5):
            while len(a.frames) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert all(decode_batch(f) == [raw] for f in a.frames)
    assert a.gossip.stats["rebroadcast"] >= 2


def test_a_member_reconnecting_gets_every_pending_tx_at_once_and_the_other_member_admits_them(c, members):
    """Frames written into a connection found dead later are lost with it: when the session to a member is
    (re)established it gets every pending tx, oldest first, in bounded batches, without waiting for the
    rebroadcast timer; nobody else gets them again, and committed ones are not among them."""
    a, b = members("a", gossip_batch=4), members("b")
    raws = [c.tx(i % 4) for i in range(10)]
    a.gossip.admit(items(raws))
    a.gossip.on_peer_up("peer-b")
    assert a.frames == [] and {peer for peer, _ in a.sent_to} == {"peer-b"}
    sent = [raw for _, f in a.sent_to for raw in decode_batch(f)]
    assert sent == raws and all(len(decode_batch(f)) <= 4 for _, f in a.sent_to)
    assert a.gossip.stats["resent_on_connect"] == 10
    for _, f in a.sent_to:
        b.gossip.on_batch("peer-a", f)
    assert all(tx_hash(r) in b.mempool for r in raws)
    a.mempool.remove([tx_hash(r) for r in raws[:6]])  # committed meanwhile
    a.sent_to.clear()
    a.gossip.on_peer_up("peer-c")
    assert [raw for _, f in a.sent_to for raw in decode_batch(f)] == raws[6:]


async def test_a_quiet_members_tx_goes_out_at_once_then_batches_are_paced(c, members, autojump_clock):
    """The flush loop sleeps while the outbox is empty (an idle node woke 200 times a second before), sends
    a tx that arrives after a quiet spell at once, and then at most one batch per gossip_interval unless a
    whole batch waits."""
    a = members("a", gossip_batch=8, gossip_interval=0.005)
    sent: list[tuple[float, int]] = []

    def broadcast(channel: str, data: bytes) -> int:
        sent.append((trio.current_time(), len(decode_batch(data))))
        return 3

    a.gossip._broadcast = broadcast
    raws = [c.tx(i % 4) for i in range(20)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.gossip.run)
        await trio.sleep(10)
        assert sent == []
        t0 = trio.current_time()
        a.gossip.admit(items(raws[:1]))
        await trio.sleep(0.001)
        assert sent == [(t0, 1)]  # not held back for an interval
        a.gossip.admit(items(raws[1:2]))
        await trio.sleep(0.010)
        assert sent[1] == (t0 + 0.005, 1)  # paced: one interval after the previous batch
        t1 = trio.current_time()
        a.gossip.admit(items(raws[2:3]))
        await trio.sleep(0.001)
        a.gossip.admit(items(raws[3:11]))  # a whole batch waits: out without waiting out the interval
        await trio.sleep(0.001)
        assert sent[2:] == [(t1, 1), (t1 + 0.001, 8)]
        # flush_now (the primary, before a compact proposal) sends the outbox itself: the loop must not
        # count that as its own flush and hold the next quiet tx back
        await trio.sleep(1)
        t2 = trio.current_time()
        a.gossip.admit(items(raws[11:12]))
        await trio.sleep(0.001)
        a.gossip.admit(items(raws[12:13]))
        a.gossip.flush_now()
        await trio.sleep(0.005)
        a.gossip.admit(items(raws[13:14]))  # the loop's last flush was at t2, more than an interval ago
        await trio.sleep(0.001)
        assert sent[-3:] == [(t2, 1), (t2 + 0.001, 1), (t2 + 0.006, 1)]
        nursery.cancel_scope.cancel()
