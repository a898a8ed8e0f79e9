"""The driver's part of compact proposals (node/runtime/driver.py): a consensus message carrying a compact
payload whose txs this node lacks is held from the replica while they arrive by gossip or are fetched from
the member that sent it; everything else goes on meanwhile; a fetch that never ends holds it a bounded
time, and a flood of such messages holds a bounded number. The replica is scripted (it is the seam); the
chain, LevelDB store and mempool, WAL file and trio are real."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(next(Path(__file__).parents[1].rglob("ledger_helpers.py")).parent))
from ledger_helpers import T0, Consortium  # noqa: E402

from consensus import events as E  # noqa: E402
from consensus import messages as M  # noqa: E402
from node.ledger.chain import Chain  # noqa: E402
from node.ledger.store import Store  # noqa: E402
from node.ledger.tx import tx_hash  # noqa: E402
from node.runtime import driver as D  # noqa: E402
from node.runtime.mempool import Mempool  # noqa: E402
from node.runtime.wal_file import WriteAheadLog  # noqa: E402
from tests.runtime.test_driver_unit import ScriptedReplica  # noqa: E402


class Replica(ScriptedReplica):
    """The driver unit tests' fake replica (answers nothing), plus the messages it was handed."""

    def messages(self) -> list[bytes]:
        return [e.data for e in self.seen if type(e) is E.MessageReceived]


class Rig:
    def __init__(self, tmp_path: Path, fetch):
        self.c = Consortium()
        self.store = Store(tmp_path / "chain")
        self.chain = Chain(self.c.genesis, self.store, clock=lambda: T0 / 1000)
        self.mempool = Mempool(tmp_path / "mempool", 10_000)
        self.chain.tx_source = self.mempool.get
        self.wal = WriteAheadLog(tmp_path / "wal", fsync=False)
        self.replica = Replica()
        self.fetches: list[tuple[int, list[bytes]]] = []
        self.fetch = fetch
        self.driver = D.ConsensusDriver(
            self.replica, self.chain, self.wal, send=lambda to, data: None, broadcast=lambda data: None,
            build_proposal=lambda h, must: None, mempool_count=lambda: 0, on_commit=lambda b, p: None,
            on_state_transfer=lambda h, p: None, on_evidence=lambda e: None, fetch_txs=self._fetch)

    async def _fetch(self, sender: int, hashes: list[bytes]) -> None:
        self.fetches.append((sender, hashes))
        await self.fetch(self, hashes)

    def preprepare(self, raws: list[bytes], height: int = 1) -> bytes:
        payload = self.chain.build_compact_proposal(height, 0, T0, raws)
        return M.encode(M.PREPREPARE, 0, (0, height, self.chain.proposal_digest(payload), payload), b"\0" * 64)

    def close(self):
        self.mempool.close()
        self.wal.close()
        self.store.close()


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(fetch) -> Rig:
        r = Rig(tmp_path / str(len(made)), fetch)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


async def wait_for(predicate, seconds: float = 5.0):
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.005)


async def test_a_proposal_is_held_until_its_missing_txs_are_fetched_and_votes_pass_meanwhile(rig):
    release = trio.Event()

    async def fetch(r, hashes):
        await release.wait()
        r.mempool.add_many([(h, raw) for h, raw in r.wanted.items() if h in hashes], 0.0, force=True)

    r = rig(fetch)
    raws = [r.c.tx(i % 4) for i in range(5)]
    r.mempool.add_many([(tx_hash(x), x) for x in raws[:2]], 0.0)  # two of five arrived by gossip
    r.wanted = {tx_hash(x): x for x in raws}
    pp = r.preprepare(raws)
    vote = M.encode(M.PREPARE, 2, (0, 1, b"d" * 32), b"\0" * 64)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.driver.run)
        r.driver.message(0, pp)
        r.driver.message(2, vote)
        await wait_for(lambda: vote in r.replica.messages())
        await wait_for(lambda: r.fetches)
        assert pp not in r.replica.messages()  # held: the replica would find txs it does not hold
        assert r.fetches == [(0, [tx_hash(x) for x in raws[2:]])]  # from the sender, only what is missing
        release.set()
        await wait_for(lambda: pp in r.replica.messages())
        assert r.chain.validate(1, r.chain.build_compact_proposal(1, 0, T0, raws))
        assert r.driver.stats["held_for_txs"] == 1
        nursery.cancel_scope.cancel()


async def test_txs_that_gossip_brings_within_the_grace_are_not_fetched(rig):
    async def fetch(r, hashes):
        raise AssertionError("no fetch expected")

    r = rig(fetch)
    raws = [r.c.tx(1) for _ in range(3)]
    pp = r.preprepare(raws)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.driver.run)
        r.driver.message(0, pp)
        await trio.sleep(0.005)
        r.mempool.add_many([(tx_hash(x), x) for x in raws], 0.0)  # gossip arrives
        await wait_for(lambda: pp in r.replica.messages())
        assert r.fetches == []
        nursery.cancel_scope.cancel()


async def test_a_proposer_that_never_answers_holds_its_proposal_a_bounded_time(rig, monkeypatch):
    monkeypatch.setattr(D, "FETCH_WAIT", 0.2)

    async def fetch(r, hashes):
        await trio.sleep_forever()

    r = rig(fetch)
    pp = r.preprepare([r.c.tx(0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(r.driver.run)
        t0 = trio.current_time()
        r.driver.message(0, pp)
        await wait_for(lambda: pp in r.replica.messages())
        # delivered as it is: the replica finds it invalid (a tx it does not hold) and does not vote
        assert 0.15 <= trio.current_time() - t0 < 2.0
        assert len(r.fetches) == 1
        nursery.cancel_scope.cancel()


async def test_a_flood_of_unresolvable_proposals_holds_at_most_held_max(rig, monkeypatch):
    monkeypatch.setattr(D, "HELD_MAX", 4)
    monkeypatch.setattr(D, "FETCH_WAIT", 60.0)  # the held ones stay held for the whole test

    async def fetch(r, hashes):
        await trio.sleep_forever()

    r = rig(fetch)
    frames = [r.preprepare([r.c.tx(0)], height=h) for h in range(1, 11)]
    async with trio.open_nursery() as nursery:
        await nursery.start(r.driver.run)
        for f in frames:
            r.driver.message(0, f)
        await wait_for(lambda: len(r.replica.messages()) == 6)
        assert r.driver.stats["held_for_txs"] == 4 and r.driver.stats["held_over_limit"] == 6
        # full payloads, votes and garbage are never held
        full = r.chain.build_proposal(11, 0, T0, [r.c.tx(0)])
        plain = M.encode(M.PREPREPARE, 0, (0, 11, r.chain.proposal_digest(full), full), b"\0" * 64)
        for data in (plain, b"\x94\x01garbage", b""):
            r.driver.message(0, data)
        await wait_for(lambda: len(r.replica.messages()) == 9)
        nursery.cancel_scope.cancel()


async def test_one_member_cannot_take_every_hold_slot(rig, monkeypatch):
    monkeypatch.setattr(D, "HELD_MAX", 6)
    monkeypatch.setattr(D, "HELD_PER_SENDER", 2)
    monkeypatch.setattr(D, "FETCH_WAIT", 60.0)

    async def fetch(r, hashes):
        await trio.sleep_forever()

    r = rig(fetch)
    junk = [r.preprepare([r.c.tx(3)], height=h) for h in range(1, 6)]
    honest = r.preprepare([r.c.tx(0)], height=9)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.driver.run)
        for f in junk:
            r.driver.message(3, f)  # a Byzantine member floods unresolvable proposals
        await wait_for(lambda: len(r.replica.messages()) == 3)  # 2 held, 3 passed at once
        r.driver.message(0, honest)
        await wait_for(lambda: r.driver.stats["held_for_txs"] == 3)
        assert honest not in r.replica.messages()  # the primary's proposal still gets its hold
        nursery.cancel_scope.cancel()
