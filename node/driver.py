"""Drives the sans-I/O replica: one task feeds it events and performs the actions it returns.

Everything that changes the ledger goes through this task (consensus commits and synced blocks alike), so
the store has a single writer and blocks are executed strictly in height order.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from consensus import actions as A
from consensus import events as E
from consensus import wal as consensus_wal
from node.chain import Chain, ChainError
from node.wal import WriteAheadLog

log = logging.getLogger("radchain.driver")

# Rewrite the WAL without obsolete records once it grows past this (after a stable checkpoint).
WAL_COMPACT_BYTES = 64 << 20


@dataclass(frozen=True)
class SyncedBlocks:
    """Blocks fetched by block sync (already checked against their certificates by the sync task)."""
    blocks: list[tuple[int, bytes, bytes]]  # (height, payload, certificate)
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
                 oldest_pending: Callable[[], tuple[bytes, float] | None] = lambda: None):
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
        self._events_send, self._events_recv = trio.open_memory_channel(math.inf)
        self._timers: dict[object, float] = {}
        self._timers_changed = trio.Event()
        self._pending_commits: dict[int, A.Commit] = {}
        self._deferred: list[int] = []  # heights the replica asked a proposal for, waiting for txs
        self._deferred_view = -1
        self._mempool_dirty = False
        self.stats = {"commits": 0, "synced_blocks": 0, "wal_records": 0, "events": 0}

    # ------------------------------------------------------------------ inputs (any task)
    def message(self, sender: int, data: bytes) -> None:
        self._events_send.send_nowait(E.MessageReceived(sender, data))

    def mempool_changed(self) -> None:
        if not self._mempool_dirty:  # coalesce: one WorkPending per burst of admissions
            self._mempool_dirty = True
            self._events_send.send_nowait(MempoolChanged())

    def synced(self, blocks: list[tuple[int, bytes, bytes]], announce: bool = True,
               done: trio.Event | None = None) -> None:
        self._events_send.send_nowait(SyncedBlocks(blocks, announce, done))

    # ------------------------------------------------------------------ the loop
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer_loop)
            await self._perform(self.replica.start())
            task_status.started()
            async for event in self._events_recv:
                self.stats["events"] += 1
                if isinstance(event, MempoolChanged):
                    self._mempool_dirty = False
                    await self._propose_deferred()
                    event = self._work_pending()
                elif isinstance(event, SyncedBlocks):
                    await self._apply_synced(event)
                    continue
                elif isinstance(event, _Replay):
                    await self._perform([event.commit])
                    continue
                await self._feed(event)
                await trio.lowlevel.checkpoint()

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

    async def _perform(self, actions, follow: deque | None = None) -> None:
        produced_events = follow if follow is not None else deque()
        for action in actions:
            if not isinstance(action, A.Persist) and self.wal.dirty:
                # Anything that leaves the process, or acts on state, waits for the log to be durable.
                await self.wal.flush_async()
            produced = self._perform_one(action)
            if produced is not None:
                produced_events.append(produced)
        await self.wal.flush_async()
        if follow is None:
            while produced_events:
                await self._feed(produced_events.popleft())

    def _perform_one(self, action):
        """Perform one action; returns a follow-up event for the replica, if any."""
        if isinstance(action, A.Persist):
            self.wal.append(action.record)
            self.wal.records.append(action.record)
            self.stats["wal_records"] += 1
            if action.record[1:8] == _STABLE_TAG and self.wal.size() > WAL_COMPACT_BYTES:
                self.wal.flush()
                self.wal.records = list(consensus_wal.compact(self.wal.records))
                self.wal.rewrite(self.wal.records)
            return None
        if isinstance(action, A.Send):
            self._send(action.to, action.data)
        elif isinstance(action, A.Broadcast):
            self._broadcast(action.data)
        elif isinstance(action, A.SetTimer):
            self._timers[action.timer] = trio.current_time() + action.seconds
            self._timers_changed.set()
        elif isinstance(action, A.CancelTimer):
            self._timers.pop(action.timer, None)
        elif isinstance(action, A.RequestProposal):
            # A pipelined primary asks for several heights as soon as work appears; those beyond the txs at
            # hand wait for more txs instead of going out as empty blocks. A gap a view change left below
            # an already proposed height is answered at once, empty if need be, or the heights above stall.
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
        block = self._execute(action.payload, action.certificate)
        if block is None:
            return None
        # block.hash covers only agreed data (node/block.py), so honest replicas' checkpoint votes match
        event = E.Executed(block.height, block.hash)
        # Commits queued behind a gap can go now.
        nxt = self._pending_commits.pop(self.chain.height + 1, None)
        if nxt is not None:
            self._events_send.send_nowait(_Replay(nxt))
        return event

    def _execute(self, payload: bytes, certificate: bytes, verify: bool = False):
        try:
            block = self.chain.execute(payload, certificate, verify_certificate_sigs=verify)
        except ChainError:
            log.exception("could not execute a committed block; will sync it from peers")
            return None
        self.stats["commits"] += 1
        self._on_commit(block, payload)
        return block

    async def _apply_synced(self, event: SyncedBlocks) -> None:
        last = None
        for height, payload, certificate in event.blocks:
            if height != self.chain.height + 1:
                continue
            block = self._execute(payload, certificate, verify=True)
            if block is None:
                break
            self.stats["synced_blocks"] += 1
            last = block
        for h in sorted(h for h in self._pending_commits if h <= self.chain.height):
            # stored by sync meanwhile: replayed so the replica still gets its Executed (see _commit)
            self._events_send.send_nowait(_Replay(self._pending_commits.pop(h)))
        if last is not None and event.announce:
            await self._feed(E.StateTransferred(last.height, last.hash))
        if event.done is not None:
            event.done.set()

    # ------------------------------------------------------------------ timers
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
                self._events_send.send_nowait(E.TimerFired(timer))


@dataclass(frozen=True)
class _Replay:
    commit: A.Commit


# consensus.wal records are msgpack lists tagged by a string; a "stable" record ends an obsolete prefix.
_STABLE_TAG = b"\xa6stable"
