"""A lossless in-memory cluster for rule-level tests: real Replicas, Ed25519, FIFO delivery, manual timers."""

from __future__ import annotations

import hashlib
from collections import deque

import pytest

from consensus.actions import (
    Broadcast,
    CancelTimer,
    Commit,
    Persist,
    ReportEvidence,
    RequestProposal,
    RequestStateTransfer,
    Send,
    SetTimer,
)
from consensus.config import Config
from consensus.crypto import Ed25519Crypto
from consensus.events import Executed, MessageReceived, ProposalReady, TimerFired, WorkPending
from consensus.replica import Replica


class App:
    def digest(self, payload: bytes) -> bytes:
        return hashlib.sha256(payload).digest()

    def validate(self, height: int, payload: bytes) -> bool:
        return payload.startswith(b"blk:%d:" % height)


def keys(n: int):
    seeds = [hashlib.sha256(b"test-key-%d" % i).digest() for i in range(n)]
    members = tuple(Ed25519Crypto(s, ()).public_key for s in seeds)
    return seeds, members


class Cluster:
    """Replicas wired together; `down` replicas neither send nor receive. Proposals and executions are
    answered automatically (auto=True)."""

    def __init__(self, n: int = 4, auto: bool = True, **tuning) -> None:
        self.seeds, self.members = keys(n)
        self.config = Config(chain_id="test", members=self.members, **tuning)
        self.n = n
        self.app = App()
        self.auto = auto
        self.wal = [[] for _ in range(n)]
        self.commits = [[] for _ in range(n)]
        self.timers = [dict() for _ in range(n)]
        self.evidence = [[] for _ in range(n)]
        self.transfers = [[] for _ in range(n)]
        self.requests = [[] for _ in range(n)]
        self.down: set[int] = set()
        self.target = 0
        self.queue: deque = deque()
        self.replicas = [self.make(i) for i in range(n)]
        self.state = [b"\0" * 32 for _ in range(n)]
        for i, r in enumerate(self.replicas):
            self.perform(i, r.start())

    def crypto(self, i: int) -> Ed25519Crypto:
        return Ed25519Crypto(self.seeds[i], self.members)

    def make(self, i: int, last_executed: int = 0) -> Replica:
        return Replica(self.config, i, self.crypto(i), self.app, wal=list(self.wal[i]), last_executed=last_executed)

    def restart(self, i: int) -> list:
        self.replicas[i] = self.make(i, last_executed=len(self.commits[i]))
        self.timers[i] = {}
        actions = self.replicas[i].start()
        self.perform(i, actions)
        return actions

    def perform(self, i: int, actions: list) -> None:
        for a in actions:
            if isinstance(a, Broadcast):
                for j in range(self.n):
                    if j != i:
                        self.queue.append((i, j, a.data))
            elif isinstance(a, Send):
                self.queue.append((i, a.to, a.data))
            elif isinstance(a, Persist):
                self.wal[i].append(a.record)
            elif isinstance(a, SetTimer):
                self.timers[i][a.timer] = a.seconds
            elif isinstance(a, CancelTimer):
                self.timers[i].pop(a.timer, None)
            elif isinstance(a, RequestProposal):
                self.requests[i].append(a.height)
                if self.auto:
                    self.handle(i, ProposalReady(a.height, b"blk:%d:%d" % (a.height, i)))
            elif isinstance(a, Commit):
                self.commits[i].append(a)
                if self.auto:
                    self.state[i] = hashlib.sha256(self.state[i] + a.digest).digest()
                    self.handle(i, Executed(a.height, self.state[i]))
                    self.handle(i, WorkPending(max(0, self.target - a.height)))
            elif isinstance(a, ReportEvidence):
                self.evidence[i].append(a.evidence)
            elif isinstance(a, RequestStateTransfer):
                self.transfers[i].append(a)

    def handle(self, i: int, event) -> list:
        actions = self.replicas[i].handle(event)
        self.perform(i, actions)
        return actions

    def run(self, limit: int = 100_000) -> None:
        steps = 0
        while self.queue and steps < limit:
            i, j, data = self.queue.popleft()
            steps += 1
            if i in self.down or j in self.down:
                continue
            self.handle(j, MessageReceived(i, data))

    def fire(self, i: int, kind: str) -> None:
        """Fire replica i's pending timer whose id starts with `kind`."""
        for t in list(self.timers[i]):
            if t[0] == kind:
                del self.timers[i][t]
                self.handle(i, TimerFired(t))

    def work(self, count: int = 1) -> None:
        """count more blocks' worth of transactions arrive everywhere; run until quiet."""
        self.target = max(self.heights()) + count
        for i in range(self.n):
            if i not in self.down:
                self.handle(i, WorkPending(count))
        self.run()

    def heights(self) -> list[int]:
        return [len(c) for c in self.commits]


@pytest.fixture
def make_cluster():
    return Cluster
