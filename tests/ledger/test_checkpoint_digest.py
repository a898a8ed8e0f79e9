"""Four real replicas (consensus/) over four real ledgers (node.Chain on LevelDB), the checkpoint digest as
the node computes it (the block hash). One replica commits a block with a view-0 certificate, the others
with a view-1 certificate after a view change: every ledger must still hold byte-identical headers, and
checkpoints must keep becoming stable (issue 9, defect 3)."""

from __future__ import annotations

from collections import deque

from ledger_helpers import T0, Consortium

from consensus import messages as m
from consensus.actions import Broadcast, Commit, RequestProposal, Send, SetTimer
from consensus.certificate import Certificate
from consensus.config import Config
from consensus.crypto import Ed25519Crypto
from consensus.events import Executed, MessageReceived, ProposalReady, TimerFired, WorkPending
from consensus.replica import Replica
from node.ledger.chain import Chain
from node.ledger.store import Store


class Ledgers:
    def __init__(self, tmp_path) -> None:
        self.c = c = Consortium()
        members = c.genesis.member_pubkeys
        self.config = Config(chain_id=c.genesis.chain_id, members=members, checkpoint_interval=2,
                             watermark_window=4, pipeline=1)
        self.chains = [Chain(c.genesis, Store(tmp_path / f"n{i}"), clock=lambda: T0 / 1000) for i in range(4)]
        self.replicas = [Replica(self.config, i, Ed25519Crypto(bytes(c.keys[i]), members), self.chains[i])
                         for i in range(4)]
        self.queue: deque = deque()
        self.timers = [set() for _ in range(4)]
        self.target = 0
        self.drop = lambda src, dst, msg: False
        self.requests: list[tuple[int, int]] = []
        for i, r in enumerate(self.replicas):
            self.perform(i, r.start())

    def handle(self, i: int, event) -> None:
        self.perform(i, self.replicas[i].handle(event))
        assert self.replicas[i].stats["internal_error"] == 0

    def perform(self, i: int, actions) -> None:
        for a in actions:
            if isinstance(a, Broadcast):
                self.queue.extend((i, j, a.data) for j in range(4) if j != i)
            elif isinstance(a, Send):
                self.queue.append((i, a.to, a.data))
            elif isinstance(a, SetTimer):
                self.timers[i].add(a.timer)
            elif isinstance(a, RequestProposal):  # answered once there is work for that height (node: deferred)
                self.requests.append((i, a.height))
                self.propose()
            elif isinstance(a, Commit):
                block = self.chains[i].execute(a.payload, a.certificate)
                self.handle(i, Executed(a.height, block.hash))  # what node/runtime/driver.py reports
                self.handle(i, WorkPending(max(0, self.target - a.height)))

    def propose(self) -> None:
        ready = [(i, h) for i, h in self.requests if h <= self.target]
        self.requests = [x for x in self.requests if x[1] > self.target]
        for i, h in ready:
            self.handle(i, ProposalReady(h, self.chains[i].build_proposal(h, i, T0, [self.c.tx(h % 4)])))

    def run(self) -> None:
        while self.queue:
            src, dst, data = self.queue.popleft()
            if not self.drop(src, dst, m.decode(data, 4, 1 << 22, 64)):
                self.handle(dst, MessageReceived(src, data))

    def work(self, target: int) -> None:
        self.target = target
        self.propose()
        for i in range(4):
            self.handle(i, WorkPending(target - self.chains[i].height))
        self.run()

    def fire(self, i: int, kind: str) -> None:
        for t in [t for t in self.timers[i] if t[0] == kind]:
            self.timers[i].discard(t)
            self.handle(i, TimerFired(t))


def test_certificates_from_different_views_still_give_identical_ledgers_and_stable_checkpoints(tmp_path):
    net = Ledgers(tmp_path)
    net.work(2)
    assert [ch.height for ch in net.chains] == [2, 2, 2, 2]
    # height 3: only replica 0 receives the COMMITs of view 0, the others time out and change view
    net.drop = lambda src, dst, msg: msg.kind == m.COMMIT and msg.body[1] == 3 and dst != 0
    net.work(3)
    assert [ch.height for ch in net.chains] == [3, 2, 2, 2]
    net.drop = lambda src, dst, msg: False  # (the lost view-0 COMMITs are not retransmitted: no tick fires)
    for i in (1, 2, 3):
        net.fire(i, "progress")
    net.run()
    assert all(r.view == 1 for r in net.replicas)
    net.work(8)
    assert [ch.height for ch in net.chains] == [8, 8, 8, 8]
    views = [Certificate.decode(ch.store.get_certificate(3)).view for ch in net.chains]
    assert views == [0, 1, 1, 1]  # the situation this test is about did happen
    heads = {ch.store.head for ch in net.chains}
    assert len(heads) == 1, "honest ledgers differ"
    for h in range(1, 9):
        assert len({ch.store.get_block(h).encode() for ch in net.chains}) == 1
    assert all(r.stable_checkpoint == 8 for r in net.replicas)  # checkpoints kept becoming stable everywhere
    for ch in net.chains:
        ch.store.close()
