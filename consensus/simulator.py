"""Deterministic adversarial simulator: N real Replicas in one process, a seeded scheduler, a simulated clock.

    python -m consensus.simulator --seeds 10000 --nodes 4      # search
    python -m consensus.simulator --seed 1234 --nodes 4        # replay one schedule (verbose)

Each seed draws a schedule: message delays, drops, duplicates and reordering; partitions that come and go;
honest replicas killed (possibly halfway through an action list, losing everything not yet persisted) and
restarted from their WAL; up to f Byzantine replicas (equivocating primary, conflicting votes, invalid
blocks, forged signatures, replayed old messages, silence, garbage bytes). After a chaos phase the network
heals (no partitions, no drops, every honest replica up) while the Byzantine replicas keep misbehaving.

Invariants, checked as the schedule runs: no two honest replicas commit different digests at a height;
every Commit carries a valid certificate, arrives in height order exactly once, and matches its payload;
evidence never accuses an honest member; no replica counts an internal error. Liveness: after the heal,
every honest replica commits new blocks within a bounded simulated time (a bounded number of timeouts).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from . import messages as m
from .actions import (
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
from .certificate import Certificate, CertificateError, commit_signing_bytes, verify_certificate
from .config import Config
from .crypto import Ed25519Crypto, KeyedHashCrypto
from .events import Executed, MessageReceived, ProposalReady, StateTransferred, TimerFired, WorkPending
from .evidence import EvidenceError, verify_evidence
from .replica import Replica
from .viewchange import quorum_valid

BYZANTINE_BEHAVIOURS = ("silent", "selective", "equivocate", "conflicting_votes", "bad_blocks", "forge", "replay", "garbage")


class SimApp:
    """node/'s side of the callbacks: a payload is b"blk:<height>:<proposer>:<nonce>"."""

    def digest(self, payload: bytes) -> bytes:
        return hashlib.sha256(payload).digest()

    def validate(self, height: int, payload: bytes) -> bool:
        parts = payload.split(b":")
        return len(parts) == 4 and parts[0] == b"blk" and parts[1] == str(height).encode()


@dataclass
class Node:
    index: int
    crypto: object
    byzantine: frozenset = frozenset()
    replica: Replica | None = None
    up: bool = True
    wal: list = field(default_factory=list)
    store: list = field(default_factory=list)  # (digest, certificate, payload) for heights 1..
    state: bytes = b"\x00" * 32
    built: int = 0
    timers: dict = field(default_factory=dict)
    crash_in_list: bool = False
    seen_msgs: list = field(default_factory=list)  # Byzantine replay material
    work_sent: int = -1
    epoch: int = 0


class Violation(Exception):
    pass


class Simulation:
    def __init__(self, seed: int, nodes: int = 4, verbose: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = nodes
        self.verbose = verbose
        rng = self.rng
        self.real_crypto = seed % 64 == 0  # a few schedules run with real Ed25519
        if self.real_crypto:
            keys = [hashlib.sha256(b"sim-key:%d:%d" % (seed, i)).digest() for i in range(nodes)]
            cryptos = [Ed25519Crypto(k, ()) for k in keys]
            members = tuple(c.public_key for c in cryptos)
            cryptos = [Ed25519Crypto(k, members) for k in keys]
            self.checker = cryptos[0]
        else:
            secrets = KeyedHashCrypto.secrets_for(nodes, seed)
            members = tuple(hashlib.sha256(s).digest() for s in secrets)
            cryptos = [KeyedHashCrypto(i, secrets) for i in range(nodes)]
            self.checker = KeyedHashCrypto(0, secrets)
        k = rng.choice((2, 3, 4, 5))
        self.config = Config(chain_id=f"sim-{seed}", members=members, checkpoint_interval=k,
                             watermark_window=k * rng.choice((2, 3, 4)), pipeline=rng.choice((1, 2, 3, 4)),
                             progress_timeout=rng.choice((0.3, 0.5, 1.0)), view_change_timeout=0.5,
                             retransmit_interval=rng.choice((0.2, 0.3, 0.5)),
                             state_transfer_timeout=2.0, max_backoff=4, catchup_batch=3)
        # per-request timers short enough to fire within a schedule (node default: 10 s against 2 s progress)
        self.config = dataclasses.replace(self.config, request_timeout=4 * self.config.progress_timeout)
        f = self.config.f
        byz_count = rng.choice([0] + [f] * 3) if f else 0
        byz = set(rng.sample(range(nodes), byz_count))
        self.nodes = []
        for i in range(nodes):
            behaviours = frozenset()
            if i in byz:
                behaviours = frozenset(rng.sample(BYZANTINE_BEHAVIOURS, rng.randint(1, 3)))
            self.nodes.append(Node(i, cryptos[i], behaviours))
        self.app = SimApp()
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.committed: dict[int, bytes] = {}
        self.partition: list[set[int]] | None = None
        self.filters: list = []
        self.signed: dict = {}
        self.drop_p = rng.choice((0.0, 0.01, 0.05, 0.15))
        self.dup_p = rng.choice((0.0, 0.02, 0.1))
        self.slow_p = rng.choice((0.0, 0.05, 0.2))
        self.work = 0
        self.work_times: list[float] = []  # when each unit of work was submitted (per-request timers)
        self.heal_at = rng.uniform(2.0, 5.0)
        self.healed = False
        self.liveness_bound = 45.0  # simulated seconds after the heal (several exponential timeouts)
        self.heal_height = 0
        self.steps = 0
        self.evidence = 0
        self.max_steps = 400_000
        self.crash_p = rng.choice((0.0, 0.3, 0.6))
        self.totals: Counter = Counter()
        self.live_after = 0.0

    # ---- scheduling -------------------------------------------------------------------------------------

    def push(self, at: float, kind: str, *args) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, args))

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.now:9.4f} {text}")

    def honest(self, i: int) -> bool:
        return not self.nodes[i].byzantine

    # ---- the run -----------------------------------------------------------------------------------------

    def run(self) -> dict:
        rng = self.rng
        for node in self.nodes:
            self.boot(node)
        t = 0.0
        while t < self.heal_at:  # work arrives all along
            t += rng.uniform(0.03, 0.15)
            self.push(t, "work")
        # chaos: partitions, crashes
        t = 0.0
        while True:
            t += rng.uniform(0.2, 1.5)
            if t >= self.heal_at:
                break
            r = rng.random()
            if r < 0.35:
                self.push(t, "partition")
            elif r < 0.5:
                self.push(t, "unpartition")
            elif r < 0.75:  # targeted loss: one or two message kinds to some replicas, for a while
                kinds = frozenset(rng.sample((m.PREPREPARE, m.PREPARE, m.COMMIT, m.CHECKPOINT, m.VIEWCHANGE,
                                              m.NEWVIEW, m.STATUS, m.DECIDED), rng.randint(1, 2)))
                victims = frozenset(rng.sample(range(self.n), rng.randint(1, self.n - 1)))
                self.push(t, "filter", kinds, victims, rng.uniform(0.2, 2.0))
            elif r < 0.75 + 0.25 * self.crash_p:
                honest = [i for i in range(self.n) if self.honest(i)]
                victim = rng.choice(honest)
                self.push(t, "crash", victim, rng.random() < 0.5)
                self.push(t + rng.uniform(0.1, 1.5), "restart", victim)
        self.push(self.heal_at, "heal")
        while self.queue:
            at, _seq, kind, args = heapq.heappop(self.queue)
            self.now = at
            self.steps += 1
            if self.steps > self.max_steps:
                raise Violation(f"step budget exhausted at t={self.now:.2f} (livelock?)")
            getattr(self, "ev_" + kind)(*args)
            if self.healed and self.live():
                self.live_after = self.now - self.heal_at
                break
            if self.healed and self.now > self.heal_at + self.liveness_bound:
                heights = [len(x.store) for x in self.nodes]
                raise Violation(f"liveness: no progress (2 blocks, a stable checkpoint) within "
                                f"{self.liveness_bound}s after heal "
                                f"(heal height {self.heal_height}, heights {heights}, "
                                f"stable {[x.replica.stable_checkpoint for x in self.nodes]}, "
                                f"views {[x.replica.view if x.replica else None for x in self.nodes]})")
        else:
            raise Violation("event queue ran dry")
        for node in self.nodes:
            if node.replica is not None and node.replica.stats["internal_error"]:
                raise Violation(f"replica {node.index} counted an internal error")
            self.totals.update(node.replica.stats)
        if self.verbose:
            for node in self.nodes:
                print(f"r{node.index} byzantine={sorted(node.byzantine)} height={len(node.store)} "
                      f"view={node.replica.view} stats={dict(sorted(node.replica.stats.items()))}")
        return {"steps": self.steps, "height": max(len(x.store) for x in self.nodes), "evidence": self.evidence,
                "live_after": self.live_after}

    def live(self) -> bool:
        """Every honest replica committed 2 blocks past the heal height and saw a checkpoint above it become
        stable (so garbage collection, and with it the watermark window, keeps moving)."""
        k = self.config.checkpoint_interval
        cp = (self.heal_height // k + 1) * k
        return all(len(x.store) >= self.heal_height + 2 and x.replica.stable_checkpoint >= cp
                   for x in self.nodes if self.honest(x.index))

    # ---- nodes ------------------------------------------------------------------------------------------

    def boot(self, node: Node) -> None:
        node.up = True
        node.epoch += 1
        node.timers = {}
        node.work_sent = -1
        node.replica = Replica(self.config, node.index, node.crypto, self.app, wal=list(node.wal),
                               last_executed=len(node.store))
        self.perform(node, node.replica.start())
        self.send_work(node)

    def deliver_event(self, node: Node, event) -> None:
        if not node.up:
            return
        before = (node.replica.view, node.replica.in_view_change)
        actions = node.replica.handle(event)
        if self.verbose and before != (node.replica.view, node.replica.in_view_change):
            self.log(f"r{node.index} {'view change to' if node.replica.in_view_change else 'enters view'} "
                     f"{node.replica.view} on {type(event).__name__}"
                     f"{' ' + str(event.timer) if isinstance(event, TimerFired) else ''}")
        if node.replica.stats["internal_error"]:
            raise Violation(f"replica {node.index} internal error on {type(event).__name__}")
        self.perform(node, actions)

    def perform(self, node: Node, actions: list) -> None:
        if node.crash_in_list and actions:
            cut = self.rng.randrange(len(actions) + 1)
            actions = actions[:cut]
            node.crash_in_list = False
            for a in actions:
                self.perform_one(node, a)
            self.crash(node)
            return
        for a in actions:
            self.perform_one(node, a)

    def perform_one(self, node: Node, a) -> None:
        t = type(a)
        i = node.index
        if t is Broadcast:
            for j in range(self.n):
                if j != i:
                    self.send(i, j, a.data)
        elif t is Send:
            self.send(i, a.to, a.data)
        elif t is Persist:
            node.wal.append(a.record)
        elif t is SetTimer:
            gen = node.timers.get(a.timer, 0) + 1
            node.timers[a.timer] = gen
            self.push(self.now + a.seconds, "timer", i, a.timer, gen, node.epoch)
        elif t is CancelTimer:
            node.timers[a.timer] = node.timers.get(a.timer, 0) + 1
        elif t is RequestProposal:
            node.built = max(node.built, a.height)
            payload = b"blk:%d:%d:%d" % (a.height, i, self.rng.randrange(1 << 30))
            self.push(self.now + self.rng.uniform(0.0005, 0.005), "local", i, node.epoch,
                      ProposalReady(a.height, payload))
            self.send_work(node)
        elif t is Commit:
            self.commit(node, a)
        elif t is RequestStateTransfer:
            self.push(self.now + self.rng.uniform(0.01, 0.1), "transfer", i, node.epoch, a.peers)
        elif t is ReportEvidence:
            try:
                ev = verify_evidence(a.evidence, self.checker, self.config.chain_id)
            except EvidenceError as exc:
                raise Violation(f"replica {i} reported invalid evidence: {exc}") from None
            if self.honest(i) and self.honest(ev["member"]):
                raise Violation(f"replica {i} accused honest member {ev['member']} ({ev['kind']})")
            self.evidence += 1
        else:
            raise Violation(f"unknown action {a!r}")

    def check_certificate(self, cert_bytes: bytes, h: int, d: bytes) -> None:
        try:
            cert = Certificate.decode(cert_bytes)
            if self.real_crypto:
                verify_certificate(cert, self.config.members, self.config.chain_id, h, d)
            elif cert.height != h or cert.digest != d or not quorum_valid(
                    self.checker, self.n, self.config.quorum, cert.signatures,
                    commit_signing_bytes(self.config.chain_id, cert.view, h, d)):
                raise CertificateError("invalid")
        except CertificateError as exc:
            raise Violation(f"invalid certificate at height {h}: {exc}") from None

    def commit(self, node: Node, a: Commit) -> None:
        i = node.index
        if a.height != len(node.store) + 1:
            raise Violation(f"replica {i} Commit({a.height}) but its store is at {len(node.store)}")
        if self.app.digest(a.payload) != a.digest:
            raise Violation(f"replica {i} Commit({a.height}) digest does not match payload")
        self.check_certificate(a.certificate, a.height, a.digest)
        self.append_block(node, a.height, a.digest, a.certificate, a.payload)
        self.push(self.now + self.rng.uniform(0.0, 0.003), "local", i, node.epoch,
                  Executed(a.height, node.state))

    def append_block(self, node: Node, h: int, d: bytes, cert: bytes, payload: bytes) -> None:
        if self.honest(node.index):
            prev = self.committed.setdefault(h, d)
            if prev != d:
                raise Violation(f"agreement: height {h} committed as {prev.hex()[:12]} and {d.hex()[:12]} "
                                f"(replica {node.index})")
        node.store.append((d, cert, payload))
        node.state = hashlib.sha256(node.state + d).digest()
        self.log(f"r{node.index} commit h={h} {d.hex()[:8]}")
        self.send_work(node)

    def send_work(self, node: Node) -> None:
        count = max(0, self.work - max(len(node.store), node.built if node.replica and node.replica.is_primary
                                       else 0))
        if node.up and node.replica is not None and count != node.work_sent:
            node.work_sent = count
            done = len(node.store)  # the oldest request this node holds, and for how long (as node/ reports it)
            oldest = (b"req%d" % (done + 1), self.now - self.work_times[done]) if self.work > done else (b"", 0.0)
            self.push(self.now + 0.0001, "local", node.index, node.epoch, WorkPending(count, *oldest))

    # ---- network ----------------------------------------------------------------------------------------

    def cut(self, i: int, j: int) -> bool:
        if self.partition is None:
            return False
        return not any(i in g and j in g for g in self.partition)

    def send(self, i: int, j: int, data: bytes) -> None:
        src = self.nodes[i]
        if src.byzantine:
            for to, payload in self.byzantine_rewrite(src, j, data):
                self.transmit(i, to, payload)
        else:
            if len(data) > 1 and data[1] in (m.PREPREPARE, m.PREPARE, m.COMMIT, m.CHECKPOINT):
                self.check_no_double_sign(i, data)
            self.transmit(i, j, data)

    def check_no_double_sign(self, i: int, data: bytes) -> None:
        """An honest replica, restarts included, never signs two different votes for one slot."""
        msg = m.decode_cached(data, self.n, self.config.max_message_bytes, self.config.watermark_window)
        if msg.kind == m.CHECKPOINT:
            key, d = ("checkpoint", i, 0, msg.body[0]), msg.body[1]
        else:
            key, d = ("commit" if msg.kind == m.COMMIT else "prepare", i, msg.body[0], msg.body[1]), msg.body[2]
        prev = self.signed.setdefault(key, d)
        if prev != d:
            raise Violation(f"honest replica {i} signed two {key[0]} votes at view {key[2]} height {key[3]}")

    def transmit(self, i: int, j: int, data: bytes) -> None:
        rng = self.rng
        if self.cut(i, j) or rng.random() < self.drop_p:
            return
        if self.filters and len(data) > 1 and data[0] == 0x94:  # [kind, ...]: kind is data[1]
            for kinds, victims, until in self.filters:
                if self.now < until and j in victims and data[1] in kinds:
                    return
        copies = 2 if rng.random() < self.dup_p else 1
        for c in range(copies):
            delay = rng.uniform(0.001, 0.02)
            if rng.random() < self.slow_p:
                delay += rng.uniform(0.05, 0.6)  # reordering
            if c and rng.random() < 0.2:
                delay += rng.uniform(0.5, 3.0)  # a stale duplicate, long after the fact
            self.push(self.now + delay, "msg", i, j, data)

    def ev_msg(self, i: int, j: int, data: bytes) -> None:
        node = self.nodes[j]
        if not node.up or self.cut(i, j):
            return
        if node.byzantine and "replay" in node.byzantine and len(node.seen_msgs) < 200:
            node.seen_msgs.append(data)
        self.deliver_event(node, MessageReceived(i, data))

    # ---- Byzantine behaviour -------------------------------------------------------------------------

    def byzantine_rewrite(self, node: Node, to: int, data: bytes):
        rng = self.rng
        b = node.byzantine
        if "replay" in b and len(node.seen_msgs) < 400 and rng.random() < 0.3:
            node.seen_msgs.append(data)  # its own messages, to replay in later views and heights
        if "silent" in b and rng.random() < 0.8:
            return []
        if "selective" in b and (to + int(self.now * 2)) % 3 == 0:  # withholds from a changing subset
            return []
        out = [(to, data)]
        try:
            msg = m.decode(data, self.n, self.config.max_message_bytes, self.config.watermark_window)
        except m.DecodeError:
            return out
        chain, me = self.config.chain_id, node.index
        if msg.kind == m.PREPREPARE and msg.body[3] is not None:
            v, h, d, payload = msg.body
            if "equivocate" in b and to % 2:
                alt = b"blk:%d:%d:%d" % (h, me, rng.randrange(1 << 30))
                out = [(to, m.sign(node.crypto, chain, m.PREPREPARE, me, (v, h, self.app.digest(alt), alt)).encode())]
            elif "bad_blocks" in b and rng.random() < 0.5:
                bad = b"junk:%d" % rng.randrange(1 << 30) if rng.random() < 0.5 else payload
                dig = self.app.digest(bad) if bad != payload else hashlib.sha256(b"x" + payload).digest()
                out = [(to, m.sign(node.crypto, chain, m.PREPREPARE, me, (v, h, dig, bad)).encode())]
        elif msg.kind == m.VIEWCHANGE and "conflicting_votes" in b and msg.body[4] and rng.random() < 0.5:
            w, sh, sd, proof, entries = msg.body  # hides its prepared certificates from the new view
            out = [(to, m.sign(node.crypto, chain, m.VIEWCHANGE, me, (w, sh, sd, proof, entries[1:])).encode())]
        elif msg.kind == m.NEWVIEW and "equivocate" in b and msg.body[2] and to % 2:
            w, vcs, asg = msg.body  # re-proposes something the view changes do not support
            h, d, _sig = asg[-1]
            alt = hashlib.sha256(d).digest()
            asg = asg[:-1] + ((h, alt, node.crypto.sign(m.vote_signing_bytes(chain, w, h, alt))),)
            out = [(to, m.sign(node.crypto, chain, m.NEWVIEW, me, (w, vcs, asg)).encode())]
        elif msg.kind in (m.PREPARE, m.COMMIT) and "conflicting_votes" in b and rng.random() < 0.5:
            v, h, d = msg.body
            alt = hashlib.sha256(d + bytes([rng.randrange(256)])).digest()
            out.append((to, m.sign(node.crypto, chain, msg.kind, me, (v, h, alt)).encode()))
        if "forge" in b and rng.random() < 0.3:
            body = msg.body
            if msg.kind in (m.PREPARE, m.COMMIT):
                body = (body[0], body[1], hashlib.sha256(body[2]).digest())
            forged = m.Message(msg.kind, rng.choice([me, to, rng.randrange(self.n)]), body,
                               bytes(rng.randrange(256) for _ in range(len(msg.sig))))
            out.append((to, forged.encode()))
            if msg.kind == m.COMMIT:  # a Decided with a certificate of forged signatures
                v, h, d = msg.body
                fake = Certificate(h, v, d, tuple((i, bytes(32)) for i in range(self.n))).encode()
                out.append((to, m.sign(node.crypto, chain, m.DECIDED, me, (h, b"blk:%d:0:0" % h, fake)).encode()))
        if "replay" in b and node.seen_msgs and rng.random() < 0.3:
            out.append((to, rng.choice(node.seen_msgs)))
        if "garbage" in b and rng.random() < 0.2:
            junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))),
                    data[: rng.randrange(len(data))],
                    m._pack([msg.kind, me, [rng.randrange(1 << 64), "x", None], b"s"]),
                    m._pack([m.VIEWCHANGE, me, [1, 0, b"", [[0, b"a"]] * 3, [[1, 0, b"d", 7, []]]], b"s"]),
                    m._pack({"a": 1})]
            out.append((to, rng.choice(junk)))
        return out

    # ---- scheduled events ---------------------------------------------------------------------------------

    def ev_timer(self, i: int, timer, gen: int, rid: int) -> None:
        node = self.nodes[i]
        if node.up and node.epoch == rid and node.timers.get(timer) == gen:
            self.deliver_event(node, TimerFired(timer))

    def ev_local(self, i: int, rid: int, event) -> None:
        node = self.nodes[i]
        if node.up and node.epoch == rid:
            self.deliver_event(node, event)

    def ev_work(self) -> None:
        self.work += 1
        self.work_times.append(self.now)
        for node in self.nodes:
            self.send_work(node)

    def ev_partition(self) -> None:
        ids = list(range(self.n))
        self.rng.shuffle(ids)
        cut = self.rng.randrange(1, self.n)
        self.partition = [set(ids[:cut]), set(ids[cut:])]
        self.log(f"partition {self.partition}")

    def ev_filter(self, kinds, victims, duration: float) -> None:
        self.filters = [f for f in self.filters if f[2] > self.now] + [(kinds, victims, self.now + duration)]
        self.log(f"filter kinds {sorted(kinds)} to {sorted(victims)} for {duration:.2f}s")

    def ev_unpartition(self) -> None:
        self.partition = None
        self.log("unpartition")

    def ev_crash(self, i: int, mid_list: bool) -> None:
        node = self.nodes[i]
        if not node.up:
            return
        if mid_list:
            node.crash_in_list = True  # dies halfway through its next action list
        else:
            self.crash(node)

    def crash(self, node: Node) -> None:
        self.log(f"r{node.index} crash")
        self.totals.update(node.replica.stats)
        self.totals["crashes"] += 1
        node.up = False
        node.crash_in_list = False
        node.timers = {}

    def ev_restart(self, i: int) -> None:
        node = self.nodes[i]
        node.crash_in_list = False
        if not node.up:
            self.log(f"r{i} restart")
            self.boot(node)

    def ev_heal(self) -> None:
        self.healed = True
        self.partition = None
        self.filters = []
        self.drop_p = 0.0
        for node in self.nodes:
            node.crash_in_list = False
            if not node.up:
                self.boot(node)
        self.heal_height = max(len(x.store) for x in self.nodes if self.honest(x.index))
        self.log(f"heal at height {self.heal_height}")
        t = self.now
        for _ in range(2000):
            t += self.rng.uniform(0.03, 0.15)
            self.push(t, "work")

    def ev_transfer(self, i: int, rid: int, peers) -> None:
        node = self.nodes[i]
        if not node.up or node.epoch != rid:
            return
        candidates = [p for p in (peers or range(self.n)) if p != i and self.nodes[p].up and not self.cut(i, p)]
        if candidates:
            src = self.nodes[self.rng.choice(candidates)]
            for h in range(len(node.store) + 1, len(src.store) + 1):
                d, cert, payload = src.store[h - 1]
                if self.app.digest(payload) != d:
                    break
                self.check_certificate(cert, h, d)
                self.append_block(node, h, d, cert, payload)
        self.log(f"r{i} state transfer to {len(node.store)}")
        self.deliver_event(node, StateTransferred(len(node.store), node.state))


def run_seed(seed: int, nodes: int, verbose: bool = False) -> tuple[str | None, dict]:
    sim = Simulation(seed, nodes, verbose)
    try:
        info = sim.run()
    except Violation as exc:
        if verbose:
            for node in sim.nodes:
                r = node.replica
                print(f"r{node.index} byzantine={sorted(node.byzantine)} up={node.up} height={len(node.store)} "
                      f"view={r.view} in_vc={r.in_view_change} stable={r.stable_checkpoint} "
                      f"transfer={r.state_transfer_pending} stats={dict(sorted(r.stats.items()))}")
        return str(exc), {"steps": sim.steps, "totals": sim.totals}
    info["totals"] = sim.totals
    info["evidence_reports"] = sim.evidence
    return None, info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m consensus.simulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1000, help="number of schedules to run")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=None, help="replay one schedule, verbosely")
    p.add_argument("--start", type=int, default=0, help="first seed of the search")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.seed is not None:
        err, info = run_seed(args.seed, args.nodes, verbose=not args.quiet)
        print(f"seed {args.seed}: {'VIOLATION: ' + err if err else 'ok'} {info}")
        return 1 if err else 0
    t0 = time.perf_counter()
    violations = 0
    steps = 0
    totals: Counter = Counter()
    worst_live = 0.0
    for s in range(args.start, args.start + args.seeds):
        err, info = run_seed(s, args.nodes)
        steps += info["steps"]
        totals.update(info["totals"])
        totals["blocks"] += info.get("height", 0)
        totals["evidence_reports"] += info.get("evidence_reports", 0)
        worst_live = max(worst_live, info.get("live_after", 0.0))
        if err:
            violations += 1
            print(f"seed {s}: VIOLATION: {err}\n  replay: python -m consensus.simulator --seed {s} --nodes {args.nodes}",
                  flush=True)
        if not args.quiet and (s - args.start + 1) % 1000 == 0:
            el = time.perf_counter() - t0
            print(f"  {s - args.start + 1} seeds, {violations} violations, {(s - args.start + 1) / el:.1f} schedules/s",
                  flush=True)
    elapsed = time.perf_counter() - t0
    print(f"seeds run: {args.seeds}  nodes: {args.nodes}  violations: {violations}  "
          f"schedules/s: {args.seeds / elapsed:.1f}  events/s: {steps / elapsed:.0f}  ({elapsed:.1f}s)")
    if not args.quiet:
        keys = ("blocks", "crashes", "view_changes", "new_views", "state_transfer", "decided_sent", "fetch_sent",
                "evidence_reports", "drop_bad_signature", "drop_malformed", "drop_sender_mismatch",
                "drop_invalid_proposal", "drop_bad_digest", "drop_bad_certificate", "drop_bad_new_view", "drop_rate_limited")
        print("  totals: " + ", ".join(f"{k}={totals[k]}" for k in keys))
        print(f"  slowest recovery after heal: {worst_live:.2f} simulated s (bound 45 s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
