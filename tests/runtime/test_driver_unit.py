"""The consensus driver (node/runtime/driver.py) around a scripted replica: the replica is the seam under
test, so a fake one says which actions to perform; the chain, LevelDB store, WAL file and trio are real.

What a member relies on: no message leaves and no block is executed before the WAL records the replica
asked for before it are on disk (persist before acknowledge); a proposal asked for while the mempool is empty
waits for txs instead of going out as an empty block, and the waiting heights are answered in height order,
never for a view the replica has left; a commit that arrives above a gap is executed once the gap is filled;
and a peer flooding the node cannot grow its queue without bound."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(next(Path(__file__).parents[1].rglob("ledger_helpers.py")).parent))
from ledger_helpers import T0, Consortium  # noqa: E402

from consensus import actions as A  # noqa: E402
from consensus import events as E  # noqa: E402
from consensus import wal as consensus_wal  # noqa: E402
from node.ledger.chain import Chain  # noqa: E402
from node.ledger.store import Store  # noqa: E402
from node.runtime import driver as D  # noqa: E402
from node.runtime.wal_file import WriteAheadLog  # noqa: E402


class ScriptedReplica:
    """Answers each event with the actions `script(event)` returns; remembers every event it was fed."""

    def __init__(self, script=lambda event: []):
        self.script = script
        self.view = 0
        self.highest_proposed = 0
        self.seen: list = []

    def start(self):
        return []

    def handle(self, event):
        self.seen.append(event)
        return self.script(event)

    def of(self, kind) -> list:
        return [e for e in self.seen if type(e) is kind]


def durable(wal_dir: Path) -> list[bytes]:
    """The records whole in the WAL file right now (what a kill -9 at this instant would leave)."""
    data = (wal_dir / "consensus.wal").read_bytes()
    out, off = [], 0
    while off + 8 <= len(data):
        n, crc = struct.unpack_from(">II", data, off)
        body = data[off + 8: off + 8 + n]
        if len(body) != n or zlib.crc32(body) != crc:
            break
        out.append(body)
        off += 8 + n
    return out


class Rig:
    def __init__(self, tmp_path: Path, c: Consortium, replica: ScriptedReplica, *, fsync: bool = False,
                 build_proposal=lambda h, must: None, mempool_count=lambda: 0):
        self.c = c
        self.store = Store(tmp_path / "chain")
        self.chain = Chain(c.genesis, self.store)
        self.wal_dir = tmp_path / "wal"
        self.wal = WriteAheadLog(self.wal_dir, fsync=fsync)
        self.replica = replica
        self.out: list[tuple] = []  # (what, arg, WAL records durable at that instant)
        self.committed: list[int] = []
        self.driver = D.ConsensusDriver(
            replica, self.chain, self.wal, send=lambda to, data: self._out("send", (to, data)),
            broadcast=lambda data: self._out("broadcast", data), build_proposal=build_proposal,
            mempool_count=mempool_count, on_commit=lambda block, payload: self._out("commit", block.height),
            on_state_transfer=lambda h, peers: self._out("state_transfer", h),
            on_evidence=lambda ev: self._out("evidence", ev))

    def _out(self, what, arg):
        self.out.append((what, arg, durable(self.wal_dir)))

    async def settle(self):
        """Wait (bounded) until the driver has handled everything queued for it."""
        with trio.fail_after(5):
            await self.driver.yield_to_consensus(max_wait=5)
            while self.driver.queued:
                await self.driver.yield_to_consensus(max_wait=5)

    def close(self):
        self.wal.close()
        self.store.close()


@pytest.fixture
def rigs(tmp_path):
    made = []

    def make(replica, **kw) -> Rig:
        rig = Rig(tmp_path / str(len(made)), Consortium(), replica, **kw)
        made.append(rig)
        return rig

    yield make
    for r in made:
        r.close()


def blocks(c: Consortium, tmp_path: Path, n: int) -> list[tuple[int, bytes, bytes]]:
    """n committed blocks (height, payload, certificate), built on a separate chain."""
    store = Store(tmp_path / "source")
    source = Chain(c.genesis, store)
    out = []
    for h in range(1, n + 1):
        payload = source.build_proposal(h, 0, T0 + h, [c.tx(h % 4)])
        source.validate_proposal(h, payload, now_ms=T0 + h)
        out.append((h, payload, c.certificate(source, payload, h)))
        source.execute(payload, out[-1][2])
    store.close()
    return out


def commit(chain: Chain, block) -> A.Commit:
    h, payload, cert = block
    return A.Commit(h, payload, chain.proposal_digest(payload), cert)


async def test_nothing_leaves_and_nothing_executes_before_its_wal_records_are_on_disk(rigs, tmp_path):
    chain_blocks = blocks(Consortium(), tmp_path, 1)
    rig = None

    def script(event):
        if isinstance(event, E.MessageReceived):
            return [A.Persist(b"prepared 1"), A.Send(2, b"prepare vote"), A.Persist(b"committed 1"),
                    A.Broadcast(b"commit vote"), A.Persist(b"executing 1"),
                    commit(rig.chain, chain_blocks[0]),
                    A.Persist(b"want sync"), A.RequestStateTransfer(9, (1, 2))]
        return []

    rig = rigs(ScriptedReplica(script), fsync=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        assert rig.driver.message(1, b"pre-prepare")
        await rig.settle()
        nursery.cancel_scope.cancel()
    assert [(what, len(records)) for what, _, records in rig.out] == [
        ("send", 1), ("broadcast", 2), ("commit", 3), ("state_transfer", 4)]
    assert rig.out[2][2] == [b"prepared 1", b"committed 1", b"executing 1"]
    # the executed block is acknowledged to the replica, and a restart finds every record
    assert rig.replica.of(E.Executed) == [E.Executed(1, rig.chain.store.get_block(1).hash)]
    assert durable(rig.wal_dir) == [b"prepared 1", b"committed 1", b"executing 1", b"want sync"]


async def test_a_proposal_waits_for_txs_and_waiting_heights_are_answered_in_order(rigs):
    pool: list[bytes] = [b"tx-a"]
    calls: list[tuple[int, bool]] = []

    def build(height, must):
        calls.append((height, must))
        if not pool and not must:
            return None  # nothing to propose: wait rather than cut an empty block
        return b"block %d: " % height + (pool.pop(0) if pool else b"(empty)")

    def script(event):
        if event == E.MessageReceived(0, b"work"):
            return [A.RequestProposal(1), A.RequestProposal(2), A.RequestProposal(3)]
        if event == E.MessageReceived(0, b"more"):
            return [A.RequestProposal(4)]
        return []

    rig = rigs(ScriptedReplica(script), build_proposal=build, mempool_count=lambda: len(pool))
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        rig.driver.message(0, b"work")
        await rig.settle()
        assert rig.replica.of(E.ProposalReady) == [E.ProposalReady(1, b"block 1: tx-a")]
        # txs arrive, but first the replica asks for height 4: it waits behind 2 and 3 (height order)
        pool += [b"tx-b", b"tx-c", b"tx-d"]
        rig.driver.message(0, b"more")
        await rig.settle()
        assert len(rig.replica.of(E.ProposalReady)) == 1
        rig.driver.mempool_changed()
        rig.driver.mempool_changed()  # a burst of admissions: one wake-up
        await rig.settle()
        assert rig.replica.of(E.ProposalReady) == [
            E.ProposalReady(1, b"block 1: tx-a"), E.ProposalReady(2, b"block 2: tx-b"),
            E.ProposalReady(3, b"block 3: tx-c"), E.ProposalReady(4, b"block 4: tx-d")]
        assert rig.replica.of(E.WorkPending) == [E.WorkPending(0)]  # the coalesced wake-up, after proposing
        assert all(not must for _, must in calls)
        nursery.cancel_scope.cancel()


async def test_waiting_proposals_of_a_left_view_are_dropped_and_a_gap_below_is_answered_at_once(rigs):
    pool: list[bytes] = []
    rig = None

    def build(height, must):
        if not pool and not must:
            return None
        return b"block %d: " % height + (pool.pop(0) if pool else b"(empty)")

    def script(event):
        if event == E.MessageReceived(0, b"ask 5"):
            return [A.RequestProposal(5)]
        if event == E.MessageReceived(0, b"ask 3"):
            return [A.RequestProposal(3)]
        return []

    replica = ScriptedReplica(script)
    rig = rigs(replica, build_proposal=build, mempool_count=lambda: len(pool))
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        rig.driver.message(0, b"ask 5")
        await rig.settle()
        replica.view = 1  # a view change: the new view's primary proposes height 5, not this replica
        pool.append(b"tx-a")
        rig.driver.mempool_changed()
        await rig.settle()
        assert replica.of(E.ProposalReady) == []  # no proposal for a view the replica left
        assert pool == [b"tx-a"]  # and the tx was not taken for it
        # a gap a view change left below a height already proposed is answered at once, empty if need be
        replica.highest_proposed = 4
        pool.clear()
        rig.driver.message(0, b"ask 3")
        await rig.settle()
        assert replica.of(E.ProposalReady) == [E.ProposalReady(3, b"block 3: (empty)")]
        nursery.cancel_scope.cancel()


async def test_commits_above_a_gap_are_executed_once_sync_fills_it(rigs, tmp_path):
    """Block 1 never executed here (this node was partitioned); consensus goes on committing 2 and 3. Once
    block sync brings block 1, the queued commits execute in order and the replica hears Executed for each."""
    rig = None
    chain_blocks = blocks(Consortium(), tmp_path, 3)

    def script(event):
        if event == E.MessageReceived(0, b"commit 2 3"):
            return [commit(rig.chain, chain_blocks[1]), commit(rig.chain, chain_blocks[2])]
        return []

    rig = rigs(ScriptedReplica(script))
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        rig.driver.message(0, b"commit 2 3")
        await rig.settle()
        assert rig.chain.height == 0 and rig.replica.of(E.Executed) == []  # nothing executed out of order
        done = trio.Event()
        rig.driver.synced(chain_blocks[:1], announce=True, done=done)
        with trio.fail_after(5):
            await done.wait()
        await rig.settle()
        nursery.cancel_scope.cancel()
    assert rig.chain.height == 3
    hashes = [rig.chain.store.get_block(h).hash for h in (1, 2, 3)]
    assert rig.replica.of(E.StateTransferred) == [E.StateTransferred(1, hashes[0])]
    assert rig.replica.of(E.Executed) == [E.Executed(2, hashes[1]), E.Executed(3, hashes[2])]
    assert [arg for what, arg, _ in rig.out if what == "commit"] == [1, 2, 3]


async def test_a_synced_block_that_does_not_verify_is_not_stored(rigs, tmp_path):
    c = Consortium()
    chain_blocks = blocks(c, tmp_path, 2)
    h, payload, _cert = chain_blocks[0]
    forged = (h, payload, c.certificate(Chain(c.genesis, Store(tmp_path / "scratch")), payload, h,
                                        signers=(0,)))  # one signature: no quorum
    rig = rigs(ScriptedReplica())
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        done = trio.Event()
        rig.driver.synced([forged, chain_blocks[1]], announce=True, done=done)
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert rig.chain.height == 0 and rig.replica.of(E.StateTransferred) == []


async def test_a_message_flood_is_bounded_and_the_driver_stays_live(rigs, monkeypatch):
    monkeypatch.setattr(D, "MAX_QUEUED_MESSAGES", 50)
    rig = rigs(ScriptedReplica())
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        accepted = sum(rig.driver.message(3, b"spam %d" % i) for i in range(500))  # no checkpoint between
        assert accepted == 50 and rig.driver.stats["dropped_messages"] == 450
        await rig.settle()
        assert rig.driver.message(1, b"honest")  # the queue drained: the next message is taken
        await rig.settle()
        nursery.cancel_scope.cancel()
    assert len(rig.replica.seen) == 51 and rig.replica.seen[-1] == E.MessageReceived(1, b"honest")


async def test_a_long_wal_is_compacted_at_a_stable_checkpoint_and_a_restart_reads_what_it_needs(rigs,
                                                                                                monkeypatch):
    """The driver recognises the replica's "stable" record (by its bytes) to compact the log. If the record
    format changes under it, compaction silently stops and the WAL grows without bound: this catches that."""
    monkeypatch.setattr(D, "WAL_COMPACT_BYTES", 2000)
    digest = b"d" * 32
    proof = tuple((i, b"s" * 64) for i in range(3))
    votes = [consensus_wal.vote_record(0, h, digest, b"p" * 100) for h in range(1, 21)]
    commits = [consensus_wal.commit_record(0, h, digest, proof) for h in range(1, 21)]
    stable = consensus_wal.stable_record(16, b"s" * 32, proof)
    written = [r for pair in zip(votes, commits, strict=True) for r in pair] + [stable]

    def script(event):
        if event == E.MessageReceived(1, b"votes"):
            return [A.Persist(r) for r in written[:-1]] + [A.Send(1, b"commit votes")]
        if event == E.MessageReceived(1, b"checkpoint"):
            return [A.Persist(stable), A.Send(1, b"checkpoint vote")]
        return []

    rig = rigs(ScriptedReplica(script))
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        rig.driver.message(1, b"votes")
        await rig.settle()
        assert durable(rig.wal_dir) == written[:-1]
        rig.driver.message(1, b"checkpoint")
        await rig.settle()
        nursery.cancel_scope.cancel()
    needed = consensus_wal.compact(written)
    assert stable in needed and len(needed) < len(written)
    assert durable(rig.wal_dir) == needed  # rewritten: heights at or below the checkpoint are gone
    assert rig.wal.records == needed
    rig.wal.close()
    rig.wal = WriteAheadLog(rig.wal_dir)
    assert rig.wal.records == needed  # a restart reads exactly what the replica needs


async def test_a_request_in_a_new_view_is_not_lost_behind_waiting_requests_of_an_old_one(rigs):
    """This replica was primary in view 0 and asked for height 1 with no txs at hand; views changed (no
    tx arrived meanwhile) and it is primary again in view 4, where it asks for height 1 afresh (a view
    change makes the replica forget its requests). That request must be answered, not dropped together with
    the old view's: the replica never asks twice in a view, so a dropped request stalls it until the next
    view change."""
    pool: list[bytes] = []

    def build(height, must):
        if not pool and not must:
            return None
        return b"block %d: " % height + (pool.pop(0) if pool else b"(empty)")

    def script(event):
        if isinstance(event, E.MessageReceived) and event.data == b"ask 1":
            return [A.RequestProposal(1)]
        return []

    replica = ScriptedReplica(script)
    rig = rigs(replica, build_proposal=build, mempool_count=lambda: len(pool))
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        rig.driver.message(0, b"ask 1")
        await rig.settle()
        replica.view = 4
        pool.append(b"tx-a")  # a tx is at hand when the new view's request comes
        rig.driver.message(0, b"ask 1")
        await rig.settle()
        assert replica.of(E.ProposalReady) == [E.ProposalReady(1, b"block 1: tx-a")]
        # and a new view's request that has to wait is answered once txs come
        replica.view = 8
        rig.driver.message(0, b"ask 1")
        await rig.settle()
        pool.append(b"tx-b")
        rig.driver.mempool_changed()
        await rig.settle()
        assert replica.of(E.ProposalReady)[1:] == [E.ProposalReady(1, b"block 1: tx-b")]
        nursery.cancel_scope.cancel()


async def test_queued_messages_share_one_wal_flush_and_none_of_their_votes_leaves_before_it(rigs, tmp_path,
                                                                                           monkeypatch):
    """Group commit: consensus messages waiting together are handled in one go, their WAL records written
    with one fsync, and every vote they produce goes out only after it, in order; a commit among them still
    finds every record before it durable, and the votes before it out."""
    chain_blocks = blocks(Consortium(), tmp_path, 1)
    rig = None

    def script(event):
        if not isinstance(event, E.MessageReceived):
            return []
        i = int(event.data.split(b" ")[1])
        actions = [A.Persist(b"vote %d" % i), A.SetTimer(("progress", i), 5.0), A.Broadcast(b"vote %d" % i)]
        if i == 3:
            actions.append(commit(rig.chain, chain_blocks[0]))
        return actions

    monkeypatch.setattr(D, "GROUP_BUDGET", 60.0)  # a loaded machine must not cut the group short here
    rig = rigs(ScriptedReplica(script), fsync=True)
    flushes = []
    flush_async = rig.wal.flush_async

    async def counting_flush():
        if rig.wal.dirty:
            flushes.append(len(rig.wal._pending))
        await flush_async()

    rig.wal.flush_async = counting_flush
    for i in range(1, 7):  # queued before the driver runs: all waiting at once
        assert rig.driver.message(1, b"msg %d" % i)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.driver.run)
        await rig.settle()
        nursery.cancel_scope.cancel()
    assert [e.data for e in rig.replica.of(E.MessageReceived)] == [b"msg %d" % i for i in range(1, 7)]
    assert [(what, arg) for what, arg, _ in rig.out] == [
        ("broadcast", b"vote 1"), ("broadcast", b"vote 2"), ("broadcast", b"vote 3"), ("commit", 1),
        ("broadcast", b"vote 4"), ("broadcast", b"vote 5"), ("broadcast", b"vote 6")]
    for what, arg, records in rig.out:
        if what == "broadcast":
            assert arg in records  # persist before send
    assert rig.out[3][2] == [b"vote 1", b"vote 2", b"vote 3"]  # the commit found them all durable
    assert flushes == [3, 3]  # six records, two fsyncs: one before the commit, one at the group's end
    assert durable(rig.wal_dir) == [b"vote %d" % i for i in range(1, 7)]
