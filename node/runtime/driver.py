"""Drives the sans-I/O replica: one task feeds it events and performs the actions it returns.

Everything that changes the ledger goes through this task (consensus commits and synced blocks alike), so
the store has a single writer and blocks are executed strictly in height order.

Overload (docs/PERFORMANCE.md): the event queue holds at most MAX_QUEUED_MESSAGES peer messages (more are
dropped and counted; PBFT retransmits what matters), other work (RPC admission, tx gossip) waits for the
queue to drain through `yield_to_consensus`, and timers do not count long steps this node spent on one
event (validating or executing a heavy block), plus an allowance for the primary's own: a heavy block
does not look like a dead primary.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import trio

from consensus import actions as A
from consensus import events as E
from consensus import messages as M
from consensus import wal as consensus_wal
from consensus.replica import TICK, VIEW_CHANGE_TRIGGERS
from node.ledger.chain import Chain, ChainError, SyncedPayload
from node.runtime.diskspace import DiskFull, DiskGuard, is_disk_full
from node.runtime.wal_file import WriteAheadLog

log = logging.getLogger("radchain.driver")

# Rewrite the WAL without obsolete records once it grows past this (after a stable checkpoint).
WAL_COMPACT_BYTES = 64 << 20
# Peer messages waiting for the replica; beyond this they are dropped (counted in stats["dropped_messages"]).
# 10,000 is minutes of honest traffic for n <= 10 at one block per ~100 ms; only a flood reaches it.
MAX_QUEUED_MESSAGES = 10_000
# Work that yields to consensus waits at most this long for the event queue to drain (then goes on:
# consensus must come first, not alone).
YIELD_MAX_WAIT = 0.025
# Timers other than retransmission get this many times the recent longest step on top: the primary
# validates and executes the blocks it pipelines too (consensus.Config.pipeline is 4), and a backup that is
# still busy with them cannot tell a busy primary from a dead one.
EXEC_ALLOWANCE_BLOCKS = 4
EXEC_HISTORY = 32  # long steps whose duration is remembered
# An event whose handling took longer than this is a long step (a heavy block), see _busy_for.
LONG_STEP = 0.05
# Compact proposals (node.ledger.block): a consensus message carrying a payload whose txs this node lacks
# waits (at most FETCH_WAIT seconds, at most HELD_MAX at once, HELD_PER_SENDER of one member; beyond, it
# goes to the replica as it is)
# while the txs are fetched from the member that sent it, then goes to the replica. Holding a message is
# what a slow link does: the replica sees nothing new. A proposer that never answers costs FETCH_WAIT; the
# replica then finds the proposal invalid (a tx it does not hold), does not vote, and its timers lead to
# the view change as for any invalid proposal.
HELD_MAX = 64
# ... and at most this many of one sender: a member filling the slots with proposals that cannot resolve
# (only the primary's PRE-PREPARE counts, but the hold comes before the replica checks who signed) must not
# leave the honest primary's proposals unheld (4 pipelined heights, retransmissions, fetched payloads).
HELD_PER_SENDER = 16
FETCH_WAIT = 2.5
# Before asking, a held message waits this long for gossip to bring the txs: the primary's own clients' txs
# go out by gossip (flushed every few ms) at the moment it proposes them, and a proposal often overtakes
# them; a fetch is a request stream of its own, dearer than waiting a moment.
GOSSIP_GRACE = 0.03
# Group commit: consensus messages already queued behind the one at hand are handled with it, up to
# GROUP_MAX of them or GROUP_BUDGET seconds of handling, and their WAL records share one write + fsync; what
# they send waits for that fsync (persist before send, as for a single message). Under load a node gets
# 3(n-1) votes per block: one fsync (and one worker-thread round trip) per message was most of a step.
# RADCHAIN_DRIVER_GROUP_MAX=1 turns grouping off (bench.throughput's A/B of this change).
GROUP_MAX = max(1, int(os.environ.get("RADCHAIN_DRIVER_GROUP_MAX", "32")))
GROUP_BUDGET = 0.005
# Where the payload sits in the body of each kind that carries one (consensus.messages).
_PAYLOAD_AT = {M.PREPREPARE: 3, M.PAYLOAD: 2, M.DECIDED: 1}


@dataclass(frozen=True)
class SyncedBlocks:
    """Blocks fetched by block sync: SyncedPayloads (checked by the sync task), or (height, payload,
    certificate) triples, which execution checks in full."""
    blocks: list  # SyncedPayload or (height, payload, certificate)
    announce: bool  # tell the replica it may re-enter consensus at the new height
    done: trio.Event | None = None


@dataclass(frozen=True)
class MempoolChanged:
    pass


class ConsensusDriver:
    def __init__(self, replica, chain: Chain, wal: WriteAheadLog, *, send: Callable[[int, bytes], None],
                 broadcast: Callable[[bytes], None], build_proposal: Callable[[int, bool], bytes | None],
                 mempool_count: Callable[[], int], on_commit: Callable[[object, bytes], None],
                 on_state_transfer: Callable[[int, tuple[int, ...]], None],
                 on_evidence: Callable[[bytes], None],
                 oldest_pending: Callable[[], tuple[bytes, float] | None] = lambda: None,
                 disk: DiskGuard | None = None, fetch_txs=None):
        self.replica = replica
        self.chain = chain
        self.wal = wal
        self._send = send
        self._broadcast = broadcast
        self._build_proposal = build_proposal
        self._mempool_count = mempool_count
        self._on_commit = on_commit
        self._on_state_transfer = on_state_transfer
        self._on_evidence = on_evidence
        self._oldest_pending = oldest_pending  # (tx hash, time.monotonic() first held) for request timers
        # async fetch_txs(sender index, hashes): fetch a compact proposal's missing txs into the mempool
        self._fetch_txs = fetch_txs
        self._held = 0
        self._held_by: dict[int, int] = {}  # sender -> messages of it held
        # One FIFO of events: peer messages (bounded), timer firings, sync results, mempool wake-ups (each
        # bounded by construction: one per timer, one coalesced wake-up, one per sync request / gap).
        self._queue: deque = deque()
        self._queued_messages = 0
        self._wakeup = trio.Event()
        self._drained = trio.Event()  # set whenever the queue is empty and the replica is idle
        self._drained.set()
        self._timers: dict[object, float] = {}
        self._timers_changed = trio.Event()
        self._fired: dict[object, object] = {}  # timer -> token of its firing still in the queue
        self._exec_times: deque[float] = deque(maxlen=EXEC_HISTORY)
        self._pending_commits: dict[int, A.Commit] = {}
        self._view_changes_logged = 0  # the replica's view_changes count already logged (_log_view_change)
        self._trigger_counts: dict[str, int] = {}
        self._deferred: list[int] = []  # heights the replica asked a proposal for, waiting for txs
        self._deferred_view = -1
        self._mempool_dirty = False
        # A full disk (node.runtime.diskspace): the driver waits for space, sending nothing meanwhile, and drops the
        # consensus messages that arrive (as a partition would); block sync catches it up afterwards.
        self._disk = disk
        self.paused = False
        self._disk_stalled = False  # a block write failed for lack of space: wait, then execute it again
        self.trace = None  # node.runtime.latency_trace, when RADCHAIN_TRACE_LATENCY=1
        # () -> dict: what the application adds to the view-change log line (its event loop's lag, what it
        # last heard from each peer), so the line tells a stalled node from silent peers
        self.diagnostics: Callable[[], dict] | None = None
        self._grouping = False  # handling a group of messages: sends wait in _held_sends for one WAL flush
        self._held_sends: list = []
        self.stats = {"commits": 0, "synced_blocks": 0, "wal_records": 0, "events": 0, "dropped_messages": 0,
                      "stale_timers": 0, "busy_s": 0.0, "dropped_paused": 0, "held_for_txs": 0,
                      "held_over_limit": 0}

    # ------------------------------------------------------------------ inputs (any task)
    def message(self, sender: int, data: bytes) -> bool:
        """Queue a peer's consensus message; False (dropped, counted) while paused for a full disk or when
        MAX_QUEUED_MESSAGES wait."""
        if self.paused:
            self.stats["dropped_paused"] += 1
            return False
        if self._queued_messages >= MAX_QUEUED_MESSAGES:
            self.stats["dropped_messages"] += 1
            if self.stats["dropped_messages"] % 1000 == 1:
                log.warning("consensus queue full (%d messages): dropping; %d dropped so far",
                            self._queued_messages, self.stats["dropped_messages"])
            return False
        self._queued_messages += 1
        self._push(E.MessageReceived(sender, data))
        return True

    def mempool_changed(self) -> None:
        if not self._mempool_dirty:  # coalesce: one WorkPending per burst of admissions
            self._mempool_dirty = True
            self._push(MempoolChanged())

    def synced(self, blocks: list[tuple[int, bytes, bytes]], announce: bool = True,
               done: trio.Event | None = None) -> None:
        self._push(SyncedBlocks(blocks, announce, done))

    def switch(self, factory: Callable[[], tuple[object, WriteAheadLog]]) -> None:
        """The member set changes after the block just executed (node.ledger.epochs): the current replica is
        retired at once (it answers nothing more, not even the rest of the action list being performed),
        and before any other event ``factory()`` builds the next epoch's (replica, WAL), which then starts."""
        retire = getattr(self.replica, "retired", None)
        if retire is not None:
            self.replica.retired = True
        self._queue.appendleft(_Switch(factory))
        if self._drained.is_set():
            self._drained = trio.Event()
        self._wakeup.set()

    async def _switch(self, event: _Switch) -> None:
        # Timers, deferred proposal requests and commits waiting for a gap belong to the old replica.
        self._timers.clear()
        self._fired.clear()
        self._timers_changed.set()
        self._deferred.clear()
        self._pending_commits.clear()
        await self._flush_wal()
        self.replica, self.wal = event.factory()
        stats = getattr(self.replica, "stats", None) or {}  # a new replica counts from its own start
        self._view_changes_logged = stats.get("view_changes", 0)
        self._trigger_counts = {label: stats.get(key, 0) for label, key in VIEW_CHANGE_TRIGGERS.items()}
        self.stats["epoch_switches"] = self.stats.get("epoch_switches", 0) + 1
        await self._perform(self.replica.start())
        self._mempool_dirty = True
        self._push(MempoolChanged())  # the new primary learns about pending work

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def yield_to_consensus(self, max_wait: float = YIELD_MAX_WAIT) -> None:
        """For work that must not delay agreement (RPC submissions, tx gossip): wait until the replica has
        handled everything queued for it, at most `max_wait` seconds. Always a checkpoint."""
        if self._drained.is_set():
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(max_wait):
            await self._drained.wait()

    def _push(self, event) -> None:
        self._queue.append(event)
        if self._drained.is_set():
            self._drained = trio.Event()
        self._wakeup.set()

    async def _next(self):
        while not self._queue:
            self._drained.set()
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        event = self._queue.popleft()
        if type(event) is E.MessageReceived:
            self._queued_messages -= 1
        return event

    # ------------------------------------------------------------------ the loop
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer_loop)
            await self._perform(self.replica.start())
            task_status.started()
            step_started, event = None, None
            while True:
                if step_started is not None:
                    self._busy_for(time.perf_counter() - step_started)
                    if self.trace is not None:
                        self.trace.step(event, time.perf_counter() - step_started)
                event = await self._next()
                step_started = time.perf_counter()
                self.stats["events"] += 1
                if isinstance(event, _Fired):
                    if self._fired.get(event.timer) is not event.token:
                        self.stats["stale_timers"] += 1  # re-armed or cancelled after it fired
                        continue
                    del self._fired[event.timer]
                    event = E.TimerFired(event.timer)
                elif isinstance(event, MempoolChanged):
                    self._mempool_dirty = False
                    await self._propose_deferred()
                    event = self._work_pending()
                elif isinstance(event, SyncedBlocks):
                    await self._apply_synced(event)
                    continue
                elif isinstance(event, _Replay):
                    await self._perform([event.commit])
                    continue
                elif isinstance(event, _Switch):
                    await self._switch(event)
                    continue
                elif type(event) is E.MessageReceived and self._fetch_txs is not None:
                    missing = self._missing_txs(event.data)
                    if missing:
                        sender = event.sender
                        if self._held < HELD_MAX and self._held_by.get(sender, 0) < HELD_PER_SENDER:
                            self._held += 1
                            self._held_by[sender] = self._held_by.get(sender, 0) + 1
                            self.stats["held_for_txs"] += 1
                            nursery.start_soon(self._fetch_then_deliver, event, missing)
                            continue
                        self.stats["held_over_limit"] += 1
                elif type(event) is _Fetched:
                    event = event.message
                if (GROUP_MAX > 1 and type(event) is E.MessageReceived and self._queue
                        and type(self._queue[0]) is E.MessageReceived):
                    await self._feed_group(event)
                else:
                    await self._feed(event)
                await trio.lowlevel.checkpoint()

    async def _feed_group(self, first: E.MessageReceived) -> None:
        """`first` and the consensus messages queued right behind it (see GROUP_MAX): each handled in turn,
        their WAL records flushed once at the end (or before any action that is not a send, a timer or a
        record: a commit, a proposal request... which then find the log durable as always), their sends
        released after that flush, in order. A message whose compact payload lacks txs ends the group (the
        run loop holds it as usual)."""
        self._grouping = True
        try:
            started = time.perf_counter()
            await self._feed(first)
            count = 1
            while (self._queue and type(self._queue[0]) is E.MessageReceived and count < GROUP_MAX
                   and time.perf_counter() - started < GROUP_BUDGET and not self.paused):
                event = self._queue[0]
                if self._fetch_txs is not None and self._missing_txs(event.data):
                    break
                self._queue.popleft()
                self._queued_messages -= 1
                self.stats["events"] += 1
                count += 1
                await self._feed(event)
            if count > 1:
                self.stats["grouped"] = self.stats.get("grouped", 0) + count
        finally:
            self._grouping = False
        await self._flush_wal()

    def _missing_txs(self, data: bytes) -> list[bytes]:
        """Txs this node lacks of the compact payload a consensus message carries ([] for every other
        message, and for anything malformed: the replica refuses that itself). Reads the kind from the
        first two bytes (msgpack [kind, sender, body, sig]) so votes cost nothing here."""
        if len(data) < 2 or data[0] != 0x94 or data[1] not in _PAYLOAD_AT:
            return []
        try:
            msg = msgpack.unpackb(data, raw=False, max_str_len=0, max_map_len=0, max_ext_len=0, max_array_len=8,
                                  max_bin_len=self.chain.max_payload)
            body = msg[2]
            payload = body[_PAYLOAD_AT[data[1]]]
            if type(payload) is not bytes:
                return []
            return self.chain.missing_txs(payload)
        except Exception:  # malformed: the replica's decoder refuses it and says why
            return []

    async def _fetch_then_deliver(self, event: E.MessageReceived, missing: list[bytes]) -> None:
        try:
            with trio.move_on_after(FETCH_WAIT):
                deadline = trio.current_time() + GOSSIP_GRACE
                while missing and trio.current_time() < deadline:
                    await trio.sleep(0.005)
                    missing = self.chain.not_held(missing)
                if missing:
                    fetched = self.stats["fetched_for"] = self.stats.get("fetched_for", 0) + 1
                    if fetched % 100 == 1:  # how often gossip is overtaken: one line per 100 fetches
                        log.info("compact proposals: fetching %d txs from member %d (%d fetches, %d messages "
                                 "held so far)", len(missing), event.sender, fetched, self.stats["held_for_txs"])
                    while missing and await self._fetch_txs(event.sender, missing):
                        missing = self.chain.not_held(missing)  # an answer in part: ask for the rest
        except Exception:  # the fetch reports its own failures; the message goes on regardless
            log.exception("fetching the txs of a compact proposal failed")
        finally:
            self._held -= 1
            left = self._held_by.pop(event.sender) - 1
            if left:
                self._held_by[event.sender] = left
            self._push(_Fetched(event))

    def _work_pending(self) -> E.WorkPending:
        """Mempool count and the oldest pending tx with its age: the replica has no clock, so the node says
        how long it has held that tx (consensus/fairness.py turns it into a per-request timer)."""
        oldest = self._oldest_pending()
        if oldest is None:
            return E.WorkPending(self._mempool_count())
        tx_hash, since = oldest
        return E.WorkPending(self._mempool_count(), tx_hash, max(0.0, time.monotonic() - since))

    async def _feed(self, event) -> None:
        follow = deque([event])
        while follow:
            await self._perform(self.replica.handle(follow.popleft()) or (), follow)
        stats = getattr(self.replica, "stats", None)
        if stats is not None and stats["view_changes"] != self._view_changes_logged:
            self._log_view_change(stats)

    def _log_view_change(self, stats) -> None:
        """One line per view change this replica started: which trigger moved and what it held then."""
        self._view_changes_logged = stats["view_changes"]
        counts = {label: stats[key] for label, key in VIEW_CHANGE_TRIGGERS.items()}
        moved = [label for label, n in counts.items() if n != self._trigger_counts.get(label, 0)]
        self._trigger_counts = counts
        fields = {"to_view": self.replica.view, "trigger": ",".join(moved) or "unknown",
                  **(getattr(self.replica, "view_change_snapshot", None) or {}), "queued": len(self._queue)}
        if self.diagnostics is not None:
            try:
                fields.update(self.diagnostics())
            except Exception as exc:  # a log line's extras must never stop consensus
                fields["diagnostics_error"] = repr(exc)
        log.warning("view change to view %d started: %s", self.replica.view, fields, extra={"fields": fields})

    async def _perform(self, actions, follow: deque | None = None) -> None:
        produced_events = follow if follow is not None else deque()
        for action in actions:
            kind = type(action)
            if kind is A.Persist or kind is A.SetTimer or kind is A.CancelTimer:
                pass  # timers are local and not durable: they need nothing on disk
            elif self.wal.dirty or self._held_sends:
                # Anything that leaves the process, or acts on state, waits for the log to be durable. In a
                # group a send waits for the group's one flush (_flush_wal sends it), in order.
                if self._grouping and (kind is A.Send or kind is A.Broadcast):
                    self._held_sends.append(action)
                    continue
                await self._flush_wal()
            produced = self._perform_one(action)
            if produced is not None:
                produced_events.append(produced)
        if not self._grouping:
            await self._flush_wal()
        if self._disk_stalled:
            # A committed block could not be written: wait for space, then execute it again (its Executed,
            # hence this replica's checkpoint vote, comes only once it is stored).
            await self._wait_for_disk(self.chain.store.path, None)
            nxt = self._pending_commits.pop(self.chain.height + 1, None)
            if nxt is not None:
                self._push(_Replay(nxt))
        if follow is None:
            while produced_events:
                await self._feed(produced_events.popleft())

    async def _flush_wal(self) -> None:
        """Make the queued WAL records durable, waiting out a full disk: nothing after them (a vote, a
        commit) happens before they are on disk: persist before acknowledge."""
        while True:
            try:
                await self.wal.flush_async()
                break
            except DiskFull as exc:
                await self._wait_for_disk(exc.path, exc)
        while self._held_sends:  # a group's sends: their records are durable now
            held, self._held_sends = self._held_sends, []
            for action in held:
                self._perform_one(action)

    async def _wait_for_disk(self, path, exc: BaseException | None) -> None:
        if self._disk is None:
            raise exc if exc is not None else DiskFull(path, 0)
        self._disk.trip(path, exc)
        self._disk_stalled = False
        self.paused = True
        try:
            await self._disk.wait_resumed()
        finally:
            self.paused = False

    def _perform_one(self, action):
        """Perform one action; returns a follow-up event for the replica, if any."""
        if isinstance(action, A.Persist):
            self.wal.append(action.record)
            self.wal.records.append(action.record)
            self.stats["wal_records"] += 1
            # A stable checkpoint ends an obsolete prefix; consensus.wal (the record format's one home) says
            # which record is one. Decoded only once the log is big enough to be worth compacting.
            if self.wal.size() > WAL_COMPACT_BYTES and consensus_wal.decode(action.record)[0] == "stable":
                try:
                    self.wal.flush()
                    self.wal.records = list(consensus_wal.compact(self.wal.records))
                    self.wal.rewrite(self.wal.records)
                except DiskFull:
                    pass  # no room to compact now: the log stays whole (queued records flush with the next)
            return None
        if isinstance(action, A.Send):
            self._send(action.to, action.data)
        elif isinstance(action, A.Broadcast):
            self._broadcast(action.data)
        elif isinstance(action, A.SetTimer):
            self._fired.pop(action.timer, None)
            self._timers[action.timer] = trio.current_time() + self._timer_seconds(action)
            self._timers_changed.set()
        elif isinstance(action, A.CancelTimer):
            self._fired.pop(action.timer, None)
            self._timers.pop(action.timer, None)
        elif isinstance(action, A.RequestProposal):
            # A pipelined primary asks for several heights as soon as work appears; those beyond the txs at
            # hand wait for more txs instead of going out as empty blocks. A gap a view change left below
            # an already proposed height is answered at once, empty if need be, or the heights above stall.
            if self._deferred and self._deferred_view != self.replica.view:
                self._deferred.clear()  # requests of a view the replica left (it forgot them): none to wait behind
            must_answer = action.height < self.replica.highest_proposed
            payload = None if self._deferred and not must_answer else self._build_proposal(action.height,
                                                                                           must_answer)
            if payload is not None:
                return E.ProposalReady(action.height, payload)
            if not self._deferred:
                self._deferred_view = self.replica.view
            self._deferred.append(action.height)
        elif isinstance(action, A.Commit):
            return self._commit(action)
        elif isinstance(action, A.RequestStateTransfer):
            self._on_state_transfer(action.target_height, action.peers)
        elif isinstance(action, A.ReportEvidence):
            self._on_evidence(action.evidence)
        return None

    async def _propose_deferred(self) -> None:
        """Answer deferred proposal requests in height order while there are txs to propose."""
        while self._deferred:
            if self.replica.view != self._deferred_view:
                self._deferred.clear()  # the replica forgot requests of an older view
                return
            payload = self._build_proposal(self._deferred[0], False)
            if payload is None:
                return
            await self._feed(E.ProposalReady(self._deferred.pop(0), payload))

    def _commit(self, action: A.Commit):
        height = self.chain.height
        if action.height <= height:
            # Block sync got there first. The replica still needs Executed: without it this height never gets
            # this replica's checkpoint vote. The digest is the stored block's (agreed data only).
            stored = self.chain.store.get_block(action.height)
            if stored is None or stored.header.proposal_digest != action.digest:
                log.error("committed block %d differs from the stored one", action.height)
                return None
            return E.Executed(action.height, stored.hash)
        if action.height > height + 1:
            self._pending_commits[action.height] = action  # a gap that block sync will fill
            return None
        if self.trace is not None:
            self.trace.committed(action.height)
        block = self._execute(action.payload, action.certificate)
        if block is None:
            if self._disk_stalled:
                self._pending_commits[action.height] = action  # executed again once space returns
            return None
        # block.hash covers only agreed data (node/ledger/block.py), so honest replicas' checkpoint votes match
        event = E.Executed(block.height, block.hash)
        # Commits queued behind a gap can go now.
        nxt = self._pending_commits.pop(self.chain.height + 1, None)
        if nxt is not None:
            self._push(_Replay(nxt))
        return event

    def _execute(self, payload: bytes, certificate: bytes, verify: bool = False, synced=None):
        try:
            block = self.chain.execute(payload, certificate, verify_certificate_sigs=verify, synced=synced)
        except ChainError:
            log.exception("could not execute a committed block; will sync it from peers")
            return None
        except Exception as exc:
            if self._disk is None or not is_disk_full(exc):
                raise
            self._disk.trip(self.chain.store.path, exc)  # the one log line; the store kept nothing of it
            self._disk_stalled = True
            return None
        self.stats["commits"] += 1
        self._on_commit(block, payload)
        return block

    async def _apply_synced(self, event: SyncedBlocks) -> None:
        last = None
        store = self.chain.store
        durable = store.sync
        # One fsync per synced batch instead of one per block (a node catching up writes thousands of
        # blocks): the blocks are written unsynced, then make_durable() syncs the LevelDB log once, before
        # anything acknowledges them (StateTransferred, the Executed of a replayed commit). A kill -9 in
        # between loses nothing (the OS holds the writes); a power loss at most blocks sync fetches again.
        store.sync = False
        try:
            for item in event.blocks:
                height, payload, certificate = item
                if height != self.chain.height + 1:
                    continue
                # checked by block sync in a worker thread (Chain.execute confirms its member set), or raw
                synced = item if isinstance(item, SyncedPayload) else None
                block = self._execute(payload, certificate, verify=True, synced=synced)
                if block is None:
                    break
                self.stats["synced_blocks"] += 1
                last = block
        finally:
            store.sync = durable
        if last is not None and not self._disk_stalled:
            try:
                store.make_durable()
            except Exception as exc:
                if self._disk is None or not is_disk_full(exc):
                    raise
                self._disk.trip(store.path, exc)
                self._disk_stalled = True
        if self._disk_stalled:
            await self._wait_for_disk(self.chain.store.path, None)
            self._push(event)  # the blocks not yet stored go again, in height order
            return
        for h in sorted(h for h in self._pending_commits if h <= self.chain.height):
            # stored by sync meanwhile: replayed so the replica still gets its Executed (see _commit)
            self._push(_Replay(self._pending_commits.pop(h)))
        nxt = self._pending_commits.pop(self.chain.height + 1, None)
        if nxt is not None:
            self._push(_Replay(nxt))  # sync filled the gap below a queued commit: it can go now (see _commit)
        if last is not None and event.announce:
            await self._feed(E.StateTransferred(last.height, last.hash))
        if event.done is not None:
            event.done.set()

    # ------------------------------------------------------------------ timers
    def _timer_seconds(self, action: A.SetTimer) -> float:
        """The replica's duration, plus the busy allowance for anything but retransmission."""
        if action.timer == TICK or not self._exec_times:
            return action.seconds
        return action.seconds + EXEC_ALLOWANCE_BLOCKS * max(self._exec_times)

    def _busy_for(self, seconds: float) -> None:
        """One event took `seconds` to handle (a block validated or executed, with what ran meanwhile).
        A long step does not count toward armed timers: this node was busy, not waiting for its peers,
        and their messages may wait unread behind it (the deadlines move back by that much). Short steps
        do not count, so a stream of small messages (a flood) never holds a timer back."""
        if seconds < LONG_STEP:
            return
        self._exec_times.append(seconds)
        self.stats["busy_s"] += seconds
        for timer in self._timers:
            if timer != TICK:
                self._timers[timer] += seconds
        self._timers_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            if not self._timers:
                await self._timers_changed.wait()
                self._timers_changed = trio.Event()
                continue
            timer, deadline = min(self._timers.items(), key=lambda kv: kv[1])
            with trio.move_on_at(deadline):
                await self._timers_changed.wait()
                self._timers_changed = trio.Event()
                continue
            if self._timers.get(timer) == deadline:
                del self._timers[timer]
                # Queued behind what already arrived: a message that proves progress re-arms the timer
                # first, and the firing is then dropped as stale.
                token = object()
                self._fired[timer] = token
                self._push(_Fired(timer, token))


@dataclass(frozen=True)
class _Replay:
    commit: A.Commit


@dataclass(frozen=True)
class _Fetched:
    """A consensus message held while its compact payload's txs were fetched (done or given up)."""
    message: E.MessageReceived


@dataclass(frozen=True)
class _Switch:
    factory: Callable[[], tuple[object, WriteAheadLog]]


@dataclass(frozen=True)
class _Fired:
    timer: object
    token: object

