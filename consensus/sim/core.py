"""Deterministic adversarial simulator: real Replicas in one process, a seeded scheduler, a simulated clock.

    python -m consensus.simulator --seeds 10000 --nodes 4      # search
    python -m consensus.simulator --seed 1234 --nodes 4        # replay one schedule (verbose)

Each seed draws a schedule. Two kinds of schedule:
- random (3 seeds in 4): message delays, drops, duplicates and reordering; partitions that come and go;
  targeted loss of message kinds; honest replicas killed (between actions, in the middle of an action list,
  in the middle of a broadcast, or right after sending a chosen message kind) and restarted from their WAL
  (torn last record included); clock skew (each replica's timers run at its own rate, with jitter); up to f
  Byzantine members that rewrite what their replicas send and, colluding, originate correctly signed
  messages no honest code sends (consensus/sim/adversary.py), or one member restarting from an older WAL;
- Twins (DiemBFT; 1 seed in 4): f members run two replicas each with the same key and no other fault; the
  schedule is a sequence of phases, each a two-way partition of the instances, enumerated systematically
  (seed -> scenario by a fixed stride through every (twin member, partition per phase) combination).
Requests are submitted to random replicas all along and gossiped; a primary puts up to 8 in a block. After
the chaos the network heals (no partition, no drops, every replica up; the Byzantine ones keep going).

Invariants, checked at every action (consensus/sim/checks.py has the oracle's own quorum and digest code):
agreement (honest replicas never commit different digests at a height); validity (every committed block
passes the application's validation and its digest); every Commit carries a valid certificate and arrives
once, in height order; no honest replica, across restarts, signs two different pre-prepare/prepare votes
(NEW-VIEW assignments included), commits, checkpoints or NEW-VIEWs for one slot; every COMMIT is preceded
by a WAL record holding a valid prepared certificate; every stable checkpoint persisted has a quorum proof
for a digest an honest replica computed; evidence never accuses an honest member; no internal error; the
replica's state stays bounded (checked every 256 steps). After the heal: every honest replica commits 2
more blocks and a new stable checkpoint, every request submitted to an honest replica before the heal
commits everywhere, and during a further steady phase every request commits within a latency bound (the
throughput floor: a slow or censoring primary fails it).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack

from .. import messages as m
from ..actions import (
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
from ..config import Config
from ..crypto import Ed25519Crypto, KeyedHashCrypto
from ..events import Executed, MessageReceived, ProposalReady, StateTransferred, TimerFired, WorkPending
from ..evidence import EvidenceError, verify_evidence
from ..replica import Replica
from . import checks
from .adversary import ATTACKS, REWRITES, Adversary, rewrite

BATCH = 8            # requests per block
TWINS_EVERY = 4      # one seed in 4 is a Twins scenario


class SimApp:
    """node/'s side of the callbacks: a payload is b"blk:<height>:<proposer>:<nonce>:<rid>,<rid>,..."."""

    def digest(self, payload: bytes) -> bytes:
        return hashlib.sha256(payload).digest()

    def validate(self, height: int, payload: bytes) -> bool:
        return valid_payload(height, payload)


def valid_payload(height: int, payload: bytes) -> bool:
    parts = payload.split(b":")
    if len(parts) != 5 or parts[0] != b"blk" or parts[1] != str(height).encode():
        return False
    if not (parts[2].isdigit() and parts[3].isdigit()):
        return False
    return parts[4] == b"" or all(x.isdigit() for x in parts[4].split(b","))


def payload_rids(payload: bytes) -> list[int]:
    tail = payload.rsplit(b":", 1)[-1]
    return [int(x) for x in tail.split(b",")] if tail else []


@dataclass
class Node:
    index: int                      # instance (a Twin shares its member with another instance)
    member: int
    crypto: object
    byzantine: frozenset = frozenset()
    replica: Replica | None = None
    up: bool = True
    wal: list = field(default_factory=list)
    store: list = field(default_factory=list)   # (digest, certificate, payload) for heights 1..
    states: list = field(default_factory=lambda: [b"\x00" * 32])  # state digest after each height
    built: int = 0
    timers: dict = field(default_factory=dict)
    crash_in_list: bool = False
    crash_on_kind: int | None = None
    seen_msgs: list = field(default_factory=list)
    work_sent: int = -1
    epoch: int = 0
    mempool: set = field(default_factory=set)
    committed: set = field(default_factory=set)
    inflight: set = field(default_factory=set)
    learned: dict = field(default_factory=dict)  # rid -> when this node first held it
    settled_view: int = 0           # the last view this replica entered (not in a view change)
    clock: float = 1.0              # timer rate (clock skew)
    amnesic: bool = False           # restarts from an older WAL (counts as a faulty member)


class Violation(Exception):
    pass


class MemoVerify:
    """Real Ed25519 where each (member, bytes, signature) is verified once per schedule, the answer shared by
    every replica and the oracle (each checks the same broadcast; verification is a pure function, so the
    replicas act exactly as without it). Only the simulator's real-crypto schedules use it: in a node one
    replica verifies each message once anyway. No __slots__: _footprint must not count the memo as replica
    state."""

    def __init__(self, crypto: Ed25519Crypto, memo: dict) -> None:
        self.crypto = crypto
        self.memo = memo
        self.sign = crypto.sign

    def verify(self, member, data, sig) -> bool:
        if type(member) is not int or type(data) is not bytes or type(sig) is not bytes:
            return self.crypto.verify(member, data, sig)  # hostile shapes: no memo key, the real check refuses
        key = (member, data, sig)
        ok = self.memo.get(key)
        if ok is None:
            ok = self.memo[key] = self.crypto.verify(member, data, sig)
        return ok


class Simulation:
    def __init__(self, seed: int, nodes: int = 4, verbose: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = n = nodes
        self.verbose = verbose
        rng = self.rng
        f = checks.faulty(n)
        self.q = checks.quorum(n)
        self.real_crypto = seed % 64 == 0  # a few schedules run with real Ed25519
        if self.real_crypto:
            keys = [hashlib.sha256(b"sim-key:%d:%d" % (seed, i)).digest() for i in range(n)]
            members = tuple(Ed25519Crypto(k, ()).public_key for k in keys)
            memo: dict = {}
            self.cryptos = [MemoVerify(Ed25519Crypto(k, members), memo) for k in keys]
        else:
            secrets = KeyedHashCrypto.secrets_for(n, seed)
            members = tuple(hashlib.sha256(s).digest() for s in secrets)
            self.cryptos = [KeyedHashCrypto(i, secrets) for i in range(n)]
        self.checker = self.cryptos[0]
        k = rng.choice((2, 3, 4, 5))
        progress = rng.choice((0.3, 0.5, 1.0))
        extra = {}
        if "request_timeout" in _CONFIG_FIELDS:  # per-request timers (issue 9, defect 6)
            extra["request_timeout"] = 2 * progress
        self.config = Config(chain_id=f"sim-{seed}", members=members, checkpoint_interval=k,
                             watermark_window=k * rng.choice((2, 3, 4)), pipeline=rng.choice((1, 2, 3, 4)),
                             progress_timeout=progress, view_change_timeout=0.5,
                             retransmit_interval=rng.choice((0.2, 0.3, 0.5)),
                             state_transfer_timeout=2.0, max_backoff=4, catchup_batch=3, **extra)
        # the throughput floor: a request waits at most a request timeout, a view change and a few ticks
        self.latency = 2 * progress + 3.0
        self.steady = self.latency + 2.0
        # the steady phase (throughput floor) costs simulated time: every seed with a faulty member, 1 in 4 others
        self.twins = f > 0 and seed % TWINS_EVERY == TWINS_EVERY - 1
        self.calm = False
        self.faulty: set[int] = set()
        behaviours: dict[int, frozenset] = {}
        attacks: frozenset = frozenset()
        twin_members: list[int] = []
        self.scenario: list = []
        if self.twins:
            twin_members, self.scenario = self.twins_scenario(seed // TWINS_EVERY, n, f)
            self.faulty = set(twin_members)
        else:
            byz_count = rng.choice([0] + [f] * 3) if f else 0
            if byz_count and rng.random() < 0.5:  # the first primaries are where most damage can be done
                byz = {0} | set(rng.sample(range(1, n), byz_count - 1))
            else:
                byz = set(rng.sample(range(n), byz_count))
            if byz:  # these three cost nothing until their moment comes (a restart, a view change)
                always = {"amnesia_equivocate", "forged_nv", "stale_certs"}
                attacks = frozenset(rng.sample(ATTACKS, rng.randint(1, 4))) | always
                if attacks & {"slow", "censor"}:
                    # a slow or censoring primary needs the primary's seat when the network is calm: the
                    # leader search puts a Byzantine member in view 0's and keeps the chaos to crashes
                    byz = {0} | set(sorted(byz - {0})[: byz_count - 1])
                    self.calm = True
            for i in byz:
                behaviours[i] = frozenset(rng.sample(REWRITES, rng.randint(0, 2)))
            self.faulty = set(byz)
        self.steady_phase = bool(self.faulty) or seed % 4 == 0
        self.amnesic: int | None = None
        if not self.twins and len(self.faulty) < f and rng.random() < 0.3:
            self.amnesic = rng.choice([i for i in range(n) if i not in self.faulty])
            self.faulty.add(self.amnesic)
        self.nodes: list[Node] = []
        self.inst_of_member: dict[int, list[int]] = {i: [] for i in range(n)}
        for i in range(n):
            self.add_instance(i, behaviours.get(i, frozenset()))
        for i in twin_members:
            self.add_instance(i, frozenset())
        skew = rng.random() < 0.5
        for node in self.nodes:
            node.clock = rng.uniform(0.6, 1.6) if skew else 1.0
            node.amnesic = node.member == self.amnesic
        # fixed from here on (members, instances and faulty set): looked up per message, not recomputed
        self.honest_inst = [x.member not in self.faulty for x in self.nodes]
        self.others = {mb: [j for j, x in enumerate(self.nodes) if x.member != mb] for mb in range(n)}
        self.adversary = Adversary(self, sorted(i for i in self.faulty if i in behaviours), attacks) \
            if attacks else None
        self.app = SimApp()
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.committed: dict[int, bytes] = {}
        self.partition: list[set[int]] | None = None
        self.filters: list = []
        self.signed: dict = {}
        self.drop_p = rng.choice((0.0, 0.01, 0.05, 0.15)) if not self.calm else 0.0
        self.dup_p = rng.choice((0.0, 0.02, 0.1))
        self.slow_p = rng.choice((0.0, 0.05, 0.2))
        self.heal_at = rng.uniform(2.0, 5.0) if not self.twins else sum(d for _, d in self.scenario)
        self.healed = False
        self.liveness_bound = 45.0  # simulated seconds after the heal (several exponential timeouts)
        self.heal_height = 0
        self.steps = 0
        self.evidence = 0
        self.max_steps = 600_000
        self.crash_p = rng.choice((0.0, 0.3, 0.6, 1.0))
        self.totals: Counter = Counter()
        self.live_after = 0.0
        self.live_at: float | None = None
        self.rid = 0
        self.requests: dict[int, tuple[float, int]] = {}  # rid -> (submitted at, instance)
        self.state_digests: dict[int, set] = {}
        self.required: set | None = None
        self.entered: dict = {}
        self.spurious = 0  # requests submitted before the heal not yet everywhere
        self.nonce = 0
        self.trace = None  # a hashlib object fed every action list the replicas return (trace_digest)

    def add_instance(self, member: int, behaviours: frozenset) -> None:
        node = Node(len(self.nodes), member, self.cryptos[member], behaviours)
        self.nodes.append(node)
        self.inst_of_member[member].append(node.index)

    @staticmethod
    def twins_scenario(index: int, n: int, f: int):
        """Scenario number `index` of the systematic enumeration: which f members have twins, then for each
        of 3 phases one two-way partition of the n+f instances (or none)."""
        instances = n + f
        splits = [None] + [frozenset(i for i in range(instances) if mask >> i & 1)
                           for mask in range(1, 1 << (instances - 1))]  # instance 'instances-1' on side B
        total = n * len(splits) ** 3
        stride = 2654435761 % total or 1
        while _gcd(stride, total) != 1:
            stride += 1
        x = index * stride % total
        first, x = x % n, x // n
        twin_members = [(first + k) % n for k in range(f)]
        phases = []
        for _ in range(3):
            s, x = splits[x % len(splits)], x // len(splits)
            phases.append((s, 1.2))
        return twin_members, phases

    # ---- scheduling -------------------------------------------------------------------------------------

    def push(self, at: float, kind: str, *args) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, args))

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.now:9.4f} {text}")

    def honest(self, i: int) -> bool:
        return self.honest_inst[i]

    def verify(self, msg) -> bool:
        return m.verify(self.checker, self.config.chain_id, msg)

    def make_payload(self, h: int, proposer: int, rids) -> bytes:
        self.nonce += 1
        return b"blk:%d:%d:%d:%s" % (h, proposer, self.nonce, b",".join(b"%d" % r for r in rids))

    # ---- the run -----------------------------------------------------------------------------------------

    def run(self) -> dict:
        rng = self.rng
        for node in self.nodes:
            self.boot(node)
        t = 0.0
        while t < self.heal_at:  # requests arrive all along
            t += rng.uniform(0.03, 0.15)
            self.push(t, "submit")
        if self.adversary is not None:
            t = 0.0
            while t < self.heal_at + self.liveness_bound + self.steady:
                t += rng.uniform(0.1, 0.4)
                self.push(t, "adversary")
        if self.twins:
            t = 0.0
            for side, duration in self.scenario:
                self.push(t, "phase", side)
                t += duration
            self.plan_chaos(crashes_only=True)
        else:
            self.plan_chaos(crashes_only=self.calm)
        self.push(self.heal_at, "heal")
        handlers = {name[3:]: getattr(self, name) for name in dir(type(self)) if name.startswith("ev_")}
        queue, heappop = self.queue, heapq.heappop
        while queue:
            at, _seq, kind, args = heappop(queue)
            self.now = at
            self.steps += 1
            if self.steps > self.max_steps:
                raise Violation(f"step budget exhausted at t={self.now:.2f} (livelock?)")
            handlers[kind](*args)
            if not self.steps & 255:
                self.check_bounded()
            if self.healed:
                if self.live_at is None:
                    if self.live():
                        self.live_at = self.now
                        self.live_after = self.now - self.heal_at
                    elif self.now > self.heal_at + self.liveness_bound:
                        raise Violation(self.stuck_report())
                elif self.now >= self.live_at + self.steady or not self.steady_phase:
                    self.check_latency()
                    break
        else:
            raise Violation("event queue ran dry")
        self.check_bounded()
        for node in self.nodes:
            self.totals.update(node.replica.stats)
        if self.verbose:
            for node in self.nodes:
                print(f"i{node.index} member {node.member} byzantine={sorted(node.byzantine)} "
                      f"height={len(node.store)} view={node.replica.view} "
                      f"stats={dict(sorted(node.replica.stats.items()))}")
        return {"steps": self.steps, "height": max(len(x.store) for x in self.nodes), "evidence": self.evidence,
                "live_after": self.live_after}

    def plan_chaos(self, crashes_only: bool = False) -> None:
        rng = self.rng
        t = 0.0
        kinds_all = (m.PREPREPARE, m.PREPARE, m.COMMIT, m.CHECKPOINT, m.VIEWCHANGE, m.NEWVIEW, m.STATUS,
                     m.DECIDED)
        while True:
            t += rng.uniform(0.2, 1.5)
            if t >= self.heal_at:
                break
            r = rng.random()
            if crashes_only:
                r = 0.64 + rng.random() * 0.36
            if r < 0.3:
                self.push(t, "partition")
            elif r < 0.42:
                self.push(t, "unpartition")
            elif r < 0.64:  # targeted loss: one or two message kinds to some replicas, for a while
                kinds = frozenset(rng.sample(kinds_all, rng.randint(1, 2)))
                victims = frozenset(rng.sample(range(len(self.nodes)), rng.randint(1, len(self.nodes) - 1)))
                self.push(t, "filter", kinds, victims, rng.uniform(0.2, 2.0))
            elif r < 0.64 + 0.36 * self.crash_p:
                cands = [x.index for x in self.nodes if self.honest(x.index) or x.amnesic]
                victim = rng.choice(cands)
                how = rng.random()
                if how < 0.5:  # right after it sends a chosen kind (part of the broadcast may be lost)
                    kind = rng.choice((m.PREPARE, m.PREPARE, m.PREPREPARE, m.COMMIT, m.NEWVIEW, m.VIEWCHANGE,
                                       m.CHECKPOINT, ENTER_VIEW, ENTER_VIEW))
                    self.push(t, "arm_crash", victim, kind)
                    self.push(t + rng.uniform(0.3, 2.0), "restart", victim)
                else:
                    self.push(t, "crash", victim, how < 0.75)
                    self.push(t + rng.uniform(0.1, 1.5), "restart", victim)

    def stuck_report(self) -> str:
        honest = [x for x in self.nodes if self.honest(x.index)]
        missing = self.missing_requests(self.heal_at)
        return (f"liveness: no progress (2 blocks, a stable checkpoint, every request submitted before the heal) "
                f"within {self.liveness_bound}s after heal (heal height {self.heal_height}, "
                f"heights {[len(x.store) for x in self.nodes]}, "
                f"stable {[x.replica.stable_checkpoint for x in self.nodes]}, "
                f"views {[x.replica.view for x in self.nodes]}, "
                f"requests missing {len(missing)}{' e.g. ' + str(missing[:3]) if missing else ''}, "
                f"honest instances {[x.index for x in honest]})")

    def live(self) -> bool:
        """Every honest replica committed 2 blocks past the heal height, saw a checkpoint above it become
        stable (so the watermark window keeps moving), and holds every request submitted before the heal."""
        k = self.config.checkpoint_interval
        cp = (self.heal_height // k + 1) * k
        if not all(len(x.store) >= self.heal_height + 2 and x.replica.stable_checkpoint >= cp
                   for x in self.nodes if self.honest(x.index)):
            return False
        if self.required is None:
            self.required = set(self.missing_requests(self.heal_at))
        return not self.required

    def missing_requests(self, before: float) -> list[int]:
        honest = [x for x in self.nodes if self.honest(x.index)]
        return [rid for rid, (at, inst) in self.requests.items()
                if at <= before and self.honest(inst) and any(rid not in x.committed for x in honest)]

    def check_latency(self) -> None:
        """The throughput floor: in the steady phase every request reaches every honest replica's chain within
        self.latency simulated seconds (a primary slow on purpose or leaving a member's requests out fails)."""
        missing = [rid for rid in self.missing_requests(self.now - self.latency)
                   if self.requests[rid][0] >= self.live_at]
        if missing and "throughput" not in IGNORE:
            at, inst = self.requests[missing[0]]
            raise Violation(f"throughput floor: {len(missing)} requests submitted in the steady phase wait more "
                            f"than {self.latency:.1f}s (e.g. request {missing[0]} submitted at {at:.2f} to instance "
                            f"{inst}; views {[x.replica.view for x in self.nodes]})")

    def check_bounded(self) -> None:
        """A member cannot make an honest replica's state grow without bound (issue 9, defect 4)."""
        cfg = self.config
        bound = 16 * self.n * (cfg.watermark_window + self.n) + 300
        for x in self.nodes:
            if x.up and x.replica is not None and self.honest(x.index):
                size = _footprint(x.replica)
                if size > bound and "bounded" not in IGNORE:
                    raise Violation(f"bounded state: replica {x.index} holds {size} entries (bound {bound})")

    # ---- nodes ------------------------------------------------------------------------------------------

    def boot(self, node: Node) -> None:
        node.up = True
        node.epoch += 1
        node.timers = {}
        node.work_sent = -1
        node.inflight = set()
        try:
            node.replica = Replica(self.config, node.member, node.crypto, self.app, wal=list(node.wal),
                                   last_executed=len(node.store))
            actions = node.replica.start()
        except Exception as exc:
            raise Violation(_replica_error(node, "restart", exc)) from exc
        if self.trace is not None:
            self.trace.update(b"start" + repr(actions).encode())
        self.perform(node, actions)
        self.send_work(node)

    def deliver_event(self, node: Node, event) -> None:
        if not node.up:
            return
        before = (node.replica.view, node.replica.in_view_change)
        try:
            actions = node.replica.handle(event)
        except Exception as exc:  # an InvariantViolation (or any other bug): the replica stops loudly
            raise Violation(_replica_error(node, type(event).__name__, exc)) from exc
        if self.trace is not None:
            self.trace.update(repr(actions).encode())
        after = (node.replica.view, node.replica.in_view_change)
        entered = before != after and not after[1] and self.honest(node.index)
        if before != after:
            node.inflight = set()  # proposals of the old view may be lost: their requests are pending again
            self.log(f"i{node.index} {'view change to' if node.replica.in_view_change else 'enters view'} "
                     f"{node.replica.view} on {type(event).__name__}"
                     f"{' ' + str(event.timer) if isinstance(event, TimerFired) else ''}")
        if before != after and not after[1] and node.crash_on_kind == ENTER_VIEW:
            node.crash_in_list = False
            for a in actions:
                self.perform_one(node, a)
            if entered:
                self.entered_view(node, before[0], after[0])
            node.crash_on_kind = None
            self.crash(node)  # right after entering a view (everything it did on entering is out)
            return
        epoch = node.epoch
        self.perform(node, actions)
        # a view counts as entered once everything the replica did on entering it was performed (a crash
        # that cut the list first, before its NEW-VIEW was logged or sent, leaves nothing to be bound by)
        if entered and node.up and node.epoch == epoch:
            self.entered_view(node, before[0], after[0])
        if before != after:
            self.send_work(node)

    def entered_view(self, node: Node, old: int, w: int) -> None:
        """An honest replica enters each view on one NEW-VIEW only, restarts included; in the steady phase
        the f faulty members cannot make honest replicas leave honest primaries again and again."""
        wire = node.replica.entered_new_view  # the NEW-VIEW it entered on (None for view 0)
        if type(wire) is bytes:
            prev = self.entered.setdefault((node.member, w), wire)
            if prev != wire:
                raise Violation(f"honest member {node.member} entered view {w} on two different NEW-VIEWs")
        old, node.settled_view = node.settled_view, w  # the view it last worked in, not the one it wanted
        if self.live_at is not None and w > old and self.config.primary(old) not in self.faulty:
            self.spurious += 1
            # a few are tolerated (a progress timeout can still fire right after the heal); f members that
            # can force view changes at will make dozens
            if self.spurious > 10 * len(self.nodes) and "stability" not in IGNORE:
                raise Violation(f"stability: in the steady phase honest replicas left views whose primary is "
                                f"honest {self.spurious} times (last: member {node.member}, view {old} -> {w})")

    def perform(self, node: Node, actions: list) -> None:
        if node.crash_in_list and actions:
            cut = self.rng.randrange(len(actions) + 1)
            node.crash_in_list = False
            for a in actions[:cut]:
                self.perform_one(node, a)
            if cut < len(actions) and type(actions[cut]) is Persist and self.rng.random() < 0.5:
                rec = actions[cut].record  # the crash tore the record being written
                node.wal.append(rec[: self.rng.randrange(len(rec))])
            elif cut < len(actions) and type(actions[cut]) is Broadcast:
                self.perform_one(node, actions[cut], partial=True)
            self.crash(node)
            return
        for a in actions:
            if node.crash_on_kind is not None and type(a) in (Broadcast, Send) and len(a.data) > 1 \
                    and a.data[1] == node.crash_on_kind:
                self.perform_one(node, a, partial=True)
                node.crash_on_kind = None
                self.crash(node)
                return
            self.perform_one(node, a)

    def perform_one(self, node: Node, a, partial: bool = False) -> None:
        t = type(a)
        i = node.index
        if t is Broadcast or t is Send:
            if self.honest_inst[i]:
                self.check_no_double_sign(node.member, a.data)
            targets = (self.others[node.member] if t is Broadcast
                       else [j for j in self.inst_of_member.get(a.to, ()) if j != i])
            if partial:
                targets = [j for j in targets if self.rng.random() < 0.5]
            for j in targets:
                self.send(i, j, a.data)
        elif t is Persist:
            if self.honest(i):
                self.check_record(node, a.record)
            node.wal.append(a.record)
        elif t is SetTimer:
            gen = node.timers.get(a.timer, 0) + 1
            node.timers[a.timer] = gen
            seconds = a.seconds * node.clock * self.rng.uniform(0.9, 1.1)
            self.push(self.now + seconds, "timer", i, a.timer, gen, node.epoch)
        elif t is CancelTimer:
            node.timers[a.timer] = node.timers.get(a.timer, 0) + 1
        elif t is RequestProposal:
            self.propose(node, a.height)
        elif t is Commit:
            self.commit(node, a)
        elif t is RequestStateTransfer:
            self.push(self.now + self.rng.uniform(0.01, 0.1), "transfer", i, node.epoch, a.peers)
        elif t is ReportEvidence:
            try:
                ev = verify_evidence(a.evidence, self.checker, self.config.chain_id)
            except EvidenceError as exc:
                raise Violation(f"replica {i} reported invalid evidence: {exc}") from None
            if self.honest(i) and ev["member"] not in self.faulty:
                raise Violation(f"replica {i} accused honest member {ev['member']} ({ev['kind']})")
            self.evidence += 1
        else:
            raise Violation(f"unknown action {a!r}")

    def propose(self, node: Node, h: int) -> None:
        node.built = max(node.built, h)
        pending = sorted(node.mempool - node.inflight)
        delay = self.rng.uniform(0.0005, 0.005)
        adv = self.adversary
        if adv is not None and not self.honest(node.index):
            if adv.censored is not None:
                pending = [r for r in pending if self.nodes[self.requests[r][1]].member != adv.censored]
            if "slow" in adv.attacks:  # Aardvark's slow primary: a block just inside each progress timeout,
                adv.slow_blocks += 1     # with a request in one block of three
                pending = pending[:1] if adv.slow_blocks % 3 == 0 else []
                adv.slow_next = max(self.now, adv.slow_next) + 0.85 * self.config.progress_timeout
                delay = adv.slow_next - self.now
        rids = pending[:BATCH]
        node.inflight.update(rids)
        payload = self.make_payload(h, node.member, rids)
        if adv is not None and "invalid_blocks" in adv.attacks and not self.honest(node.index) \
                and self.rng.random() < 0.5:  # a block the application refuses (wrong height, or junk)
            payload = self.make_payload(h + 1, node.member, rids) if self.rng.random() < 0.5 else b"junk:%d" % h
        self.push(self.now + delay, "local", node.index, node.epoch, ProposalReady(h, payload))
        self.send_work(node)

    def check_record(self, node: Node, record: bytes) -> None:
        """A COMMIT is sent only with a prepared certificate in the WAL; a stable checkpoint has a quorum proof
        for a state digest an honest replica computed."""
        try:
            r = msgpack.unpackb(record, raw=False)
        except Exception:
            return
        if type(r) is not list or not r:
            return
        chain = self.config.chain_id
        verify = self.checker.verify
        if r[0] == "commit" and len(r) == 5:
            _tag, v, h, d, proof = r
            if not checks.sigs_quorum(verify, self.n, proof, checks.vote_bytes(chain, v, h, d)):
                raise Violation(f"replica {node.index} commits at view {v} height {h} without a prepared "
                                f"certificate ({len(proof)} votes)")
        elif r[0] == "newview" and len(r) == 3 and type(r[2]) is bytes:
            err = self.check_new_view(r[1], r[2])
            if err:
                raise Violation(f"replica {node.index} enters view {r[1]} on an invalid NEW-VIEW: {err}")
        elif r[0] == "stable" and len(r) == 4:
            _tag, h, sd, proof = r
            if not checks.sigs_quorum(verify, self.n, proof, checks.checkpoint_bytes(chain, h, sd)):
                raise Violation(f"replica {node.index} takes checkpoint {h} as stable with {len(proof)} "
                                f"signatures, {self.q} needed")
            if sd not in self.state_digests.get(h, ()):
                raise Violation(f"replica {node.index} takes checkpoint {h} as stable with a state digest no "
                                f"honest replica computed")

    def check_new_view(self, w: int, wire: bytes) -> str | None:
        """The oracle's own NEW-VIEW check (PBFT sec. 4.4): 2f+1 VIEW-CHANGEs for w from distinct members, each
        correctly signed with a quorum-signed checkpoint and quorum-signed entries from earlier views inside
        its window; the assignments are, per height above the newest checkpoint, a digest with the
        highest-view proof, each signed by the primary of w."""
        cfg = self.config
        chain, verify, n = cfg.chain_id, self.checker.verify, self.n
        try:
            nv = m.decode(wire, n, cfg.max_message_bytes, cfg.watermark_window)
        except m.DecodeError:
            return "undecodable"
        if nv.kind != m.NEWVIEW or nv.body[0] != w or nv.sender != cfg.primary(w) or not self.verify(nv):
            return "not a NEW-VIEW signed by the primary of its view"
        vcs, senders = [], set()
        for vw in nv.body[1]:
            try:
                vc = m.decode(vw, n, cfg.max_message_bytes, cfg.watermark_window)
            except m.DecodeError:
                return "undecodable VIEW-CHANGE"
            if vc.kind != m.VIEWCHANGE or vc.body[0] != w or vc.sender in senders or not self.verify(vc):
                return f"VIEW-CHANGE from {vc.sender} not for view {w}, repeated or badly signed"
            senders.add(vc.sender)
            _w, sh, sd, proof, entries = vc.body
            if sh % cfg.checkpoint_interval or (sh and not checks.sigs_quorum(
                    verify, n, proof, checks.checkpoint_bytes(chain, sh, sd))) or (not sh and (proof or sd)):
                return f"VIEW-CHANGE from {vc.sender}: checkpoint {sh} without a quorum proof"
            for h, v, d, kind, sigs in entries:
                signed = (checks.vote_bytes(chain, v, h, d) if kind == m.ENTRY_PREPARED
                          else checks.commit_bytes(chain, v, h, d))
                if v >= w or not sh < h <= sh + cfg.watermark_window or not checks.sigs_quorum(verify, n, sigs,
                                                                                                 signed):
                    return f"VIEW-CHANGE from {vc.sender}: entry at height {h} view {v} is not a valid proof"
            vcs.append(vc)
        if len(vcs) < self.q:
            return f"{len(vcs)} VIEW-CHANGEs, {self.q} needed"
        sh = max((vc.body[1], vc.sender) for vc in vcs)[0]
        best: dict[int, int] = {}
        digests: dict[int, set] = {}
        for vc in vcs:
            for h, v, d, _k, _s in vc.body[4]:
                if h > sh:
                    if v > best.get(h, -1):
                        best[h], digests[h] = v, set()
                    if v == best[h]:
                        digests[h].add(d)
        asg = nv.body[2]
        if sorted(h for h, _d, _s in asg) != sorted(best):
            return f"re-proposes heights {sorted(h for h, _d, _s in asg)}, the proofs name {sorted(best)}"
        for h, d, sig in asg:
            if d not in digests[h]:
                return f"height {h}: re-proposes a digest without the highest-view proof (view {best[h]})"
            if not verify(nv.sender, checks.vote_bytes(chain, w, h, d), sig):
                return f"height {h}: assignment not signed by the primary"
        return None

    def check_certificate(self, cert_bytes: bytes, h: int, d: bytes) -> int:
        cert = checks.decode_certificate(cert_bytes)
        if cert is None or cert[0] != h or cert[2] != d or not checks.sigs_quorum(
                self.checker.verify, self.n, cert[3], checks.commit_bytes(self.config.chain_id, cert[1], h, d)):
            raise Violation(f"invalid certificate at height {h}")
        return cert[1]

    def commit(self, node: Node, a: Commit) -> None:
        i = node.index
        if a.height != len(node.store) + 1:
            raise Violation(f"replica {i} Commit({a.height}) but its store is at {len(node.store)}")
        if self.app.digest(a.payload) != a.digest:
            raise Violation(f"replica {i} Commit({a.height}) digest does not match payload")
        if not valid_payload(a.height, a.payload):
            raise Violation(f"validity: replica {i} commits at height {a.height} a block the application "
                            f"refuses ({a.payload[:24]!r})")
        view = self.check_certificate(a.certificate, a.height, a.digest)
        self.append_block(node, a.height, a.digest, a.certificate, a.payload, view)
        self.push(self.now + self.rng.uniform(0.0, 0.003), "local", i, node.epoch,
                  Executed(a.height, node.states[-1]))

    def append_block(self, node: Node, h: int, d: bytes, cert: bytes, payload: bytes, view: int) -> None:
        if self.honest_inst[node.index]:
            prev = self.committed.setdefault(h, d)
            if prev != d:
                raise Violation(f"agreement: height {h} committed as {prev.hex()[:12]} and {d.hex()[:12]} "
                                f"(instance {node.index})")
        node.store.append((d, cert, payload))
        node.states.append(checks.state_digest(node.states[-1], d, view))
        if self.honest(node.index):
            self.state_digests.setdefault(h, set()).add(node.states[-1])
        rids = payload_rids(payload) if valid_payload(h, payload) else []
        node.committed.update(rids)
        if self.required and self.honest(node.index):
            for rid in self.required.intersection(rids):
                if all(rid in x.committed for x in self.nodes if self.honest(x.index)):
                    self.required.discard(rid)
        node.mempool.difference_update(rids)
        node.inflight.difference_update(rids)
        self.log(f"i{node.index} commit h={h} {d.hex()[:8]} requests {len(rids)}")
        self.send_work(node)

    def send_work(self, node: Node) -> None:
        if node.up and node.replica is not None:
            count = len(node.mempool - node.inflight)
            if not _WORK_OLDEST:
                if count != node.work_sent:
                    node.work_sent = count
                    self.push(self.now + 0.0001, "local", node.index, node.epoch, WorkPending(count))
                return
            # the node reports the oldest request it holds and how long it has held it (request timers)
            oldest = min(node.mempool, default=None)
            key = (count, oldest)
            if key != node.work_sent:
                node.work_sent = key
                rid = b"" if oldest is None else b"%d" % oldest
                age = 0.0 if oldest is None else max(0.0, self.now - node.learned.get(oldest, self.now))
                self.push(self.now + 0.0001, "local", node.index, node.epoch, WorkPending(count, rid, age))

    # ---- network ----------------------------------------------------------------------------------------

    def cut(self, i: int, j: int) -> bool:
        if self.partition is None:
            return False
        return not any(i in g and j in g for g in self.partition)

    def send(self, i: int, j: int, data: bytes) -> None:
        src = self.nodes[i]
        if src.byzantine or (self.adversary is not None and not self.honest_inst[i] and not src.amnesic):
            for to, payload in rewrite(self, src, j, data):
                self.transmit(i, to, payload)
        else:
            self.transmit(i, j, data)

    def check_no_double_sign(self, member: int, data: bytes) -> None:
        """An honest member, restarts included, never signs two different votes for one slot, nor two
        different NEW-VIEWs for one view (a NEW-VIEW's assignments are its pre-prepares)."""
        if len(data) < 2 or data[1] not in (m.PREPREPARE, m.PREPARE, m.COMMIT, m.CHECKPOINT, m.NEWVIEW):
            return
        msg = m.decode_cached(data, self.n, self.config.max_message_bytes, self.config.watermark_window)
        if msg.kind == m.CHECKPOINT:
            slots = [(("checkpoint", member, 0, msg.body[0]), msg.body[1])]
        elif msg.kind == m.NEWVIEW:
            w = msg.body[0]
            slots = [(("newview", member, w, 0), hashlib.sha256(data).digest())]
            slots += [(("prepare", member, w, h), d) for h, d, _s in msg.body[2]]
        else:
            kind = "commit" if msg.kind == m.COMMIT else "prepare"
            slots = [((kind, member, msg.body[0], msg.body[1]), msg.body[2])]
        for key, d in slots:
            prev = self.signed.setdefault(key, d)
            if prev != d:
                raise Violation(f"honest member {member} signed two {key[0]} messages at view {key[2]} "
                                f"height {key[3]}")
        if msg.kind in (m.PREPREPARE, m.PREPARE, m.COMMIT):
            v, h, d = msg.body[:3]
            r = self.nodes[self.inst_of_member[member][0]].replica
            # PBFT: a replica commits only what it prepared itself (it accepted that pre-prepare); a COMMIT
            # for a block it already delivered (same digest) adds nothing and is tolerated
            if msg.kind == m.COMMIT and self.signed.get(("prepare", member, v, h)) != d and not (
                    r is not None and h <= r.last_committed and self.committed.get(h) == d) \
                    and "commit_unprepared" not in IGNORE:
                raise Violation(f"honest member {member} sent COMMIT at view {v} height {h} for a digest it did "
                                f"not vote for (PRE-PREPARE, PREPARE or NEW-VIEW assignment) in that view")
            if r is not None and h > r.stable_checkpoint + self.config.watermark_window:
                raise Violation(f"honest member {member} votes at height {h}, above its high watermark "
                                f"{r.stable_checkpoint + self.config.watermark_window}")

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
        if self.adversary is not None and not self.honest_inst[j] and not node.amnesic:
            self.adversary.observe(node, data)
        self.deliver_event(node, MessageReceived(self.nodes[i].member, data))

    # ---- scheduled events ---------------------------------------------------------------------------------

    def ev_timer(self, i: int, timer, gen: int, rid: int) -> None:
        node = self.nodes[i]
        if node.up and node.epoch == rid and node.timers.get(timer) == gen:
            self.deliver_event(node, TimerFired(timer))

    def ev_local(self, i: int, rid: int, event) -> None:
        node = self.nodes[i]
        if node.up and node.epoch == rid:
            self.deliver_event(node, event)

    def ev_submit(self) -> None:
        up = [x for x in self.nodes if x.up]
        if not up:
            return
        node = self.rng.choice(up)
        self.rid += 1
        self.requests[self.rid] = (self.now, node.index)
        self.learn(node, self.rid)
        if self.honest(node.index) or node.amnesic:  # Byzantine members keep their clients' requests
            reach = tuple(x.index for x in self.nodes if x is not node and not self.cut(node.index, x.index))
            self.push(self.now + self.rng.uniform(0.005, 0.05), "learn", reach, self.rid)

    def ev_learn(self, reach: tuple, rid: int) -> None:
        for i in reach:
            self.learn(self.nodes[i], rid)

    def learn(self, node: Node, rid: int) -> None:
        if rid not in node.committed and rid not in node.mempool:
            node.mempool.add(rid)
            node.learned.setdefault(rid, self.now)
            self.send_work(node)

    def ev_adversary(self) -> None:
        if self.adversary is not None:
            self.adversary.tick()

    def ev_phase(self, side) -> None:
        if side is None:
            self.partition = None
        else:
            self.partition = [set(side), set(range(len(self.nodes))) - set(side)]
        self.log(f"phase: partition {self.partition}")

    def ev_partition(self) -> None:
        ids = list(range(len(self.nodes)))
        self.rng.shuffle(ids)
        cut = self.rng.randrange(1, len(ids))
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

    def ev_arm_crash(self, i: int, kind: int) -> None:
        node = self.nodes[i]
        if node.up:
            node.crash_on_kind = kind
            self.push(self.now + self.rng.uniform(0.05, 0.3), "restart_if_down", i)

    def ev_restart_if_down(self, i: int) -> None:
        """A crash point that fired restarts soon (it is the restart that is under test)."""
        node = self.nodes[i]
        if not node.up:
            self.ev_restart(i)
        elif node.crash_on_kind is not None:
            self.push(self.now + self.rng.uniform(0.05, 0.3), "restart_if_down", i)

    def crash(self, node: Node) -> None:
        self.log(f"i{node.index} crash")
        self.totals.update(node.replica.stats)
        self.totals["crashes"] += 1
        node.up = False
        node.crash_in_list = False
        node.crash_on_kind = None
        node.timers = {}

    def ev_restart(self, i: int) -> None:
        node = self.nodes[i]
        node.crash_in_list = False
        node.crash_on_kind = None
        if not node.up:
            if node.amnesic and node.wal:  # restarts from an older copy of its WAL
                node.wal = node.wal[: self.rng.randrange(len(node.wal))]
            self.log(f"i{i} restart")
            self.boot(node)
            if self.adversary is not None and self.honest(i):
                self.adversary.on_restart(node)

    def ev_heal(self) -> None:
        self.healed = True
        self.partition = None
        self.filters = []
        self.drop_p = 0.0
        for node in self.nodes:
            node.crash_in_list = False
            node.crash_on_kind = None
            if not node.up:
                self.boot(node)
        self.heal_height = max(len(x.store) for x in self.nodes if self.honest(x.index))
        # Requests an honest replica holds reach every replica once the network heals (mempool gossip).
        for rid, (_at, inst) in self.requests.items():
            if self.honest(inst) or self.nodes[inst].amnesic:
                for x in self.nodes:
                    self.learn(x, rid)
        self.log(f"heal at height {self.heal_height}")
        t = self.now
        while t < self.now + self.liveness_bound + self.steady:
            t += self.rng.uniform(0.1, 0.3)
            self.push(t, "submit")

    def ev_transfer(self, i: int, rid: int, peers) -> None:
        node = self.nodes[i]
        if not node.up or node.epoch != rid:
            return
        cands = [j for p in (peers or range(self.n)) for j in self.inst_of_member.get(p, ())
                 if j != i and self.nodes[j].up and not self.cut(i, j)]
        if cands:
            src = self.nodes[self.rng.choice(cands)]
            for h in range(len(node.store) + 1, len(src.store) + 1):
                d, cert, payload = src.store[h - 1]
                if self.app.digest(payload) != d:
                    break
                view = self.check_certificate(cert, h, d)
                self.append_block(node, h, d, cert, payload, view)
        self.log(f"i{i} state transfer to {len(node.store)}")
        self.deliver_event(node, StateTransferred(len(node.store), node.states[-1]))


ENTER_VIEW = -1  # crash point: right after entering a new view
_CONFIG_FIELDS = set(Config.__dataclass_fields__)
IGNORE: set[str] = set()  # invariants switched off (--ignore), to see what else a seed finds
_WORK_OLDEST = "oldest" in WorkPending.__dataclass_fields__


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _replica_error(node, on: str, exc: Exception) -> str:
    what = "broke an invariant" if isinstance(exc, AssertionError) else "internal error"
    return f"replica {node.index} {what} on {on}: {type(exc).__name__}: {exc}"


_SKIP, _CONTAINER, _OBJECT = 0, 1, 2
_ATTR_KIND: dict[type, int] = {}   # how _footprint treats an attribute of this type
_ITEM_KIND: dict[type, int] = {}   # ... and an item of a container (a Counter held in a container counts)
_SLOTS: dict[type, tuple] = {}


def _classify(t: type, attribute: bool) -> int:
    if attribute and (issubclass(t, Counter) or t is type(None) or issubclass(t, str | bytes | int | float | bool)):
        kind = _SKIP
    elif attribute and hasattr(t, "__slots__") and not issubclass(t, tuple):
        kind = _OBJECT  # a component of the replica (view changes, catch-up, ...): counted as its own fields
    elif issubclass(t, dict | list | set):
        kind = _CONTAINER
    elif hasattr(t, "__slots__") and not issubclass(t, tuple):
        kind = _OBJECT
    else:
        kind = _SKIP
    (_ATTR_KIND if attribute else _ITEM_KIND)[t] = kind
    return kind


def _footprint(obj, depth: int = 3) -> int:
    """Entries held in the containers of an object (dicts, lists, sets, and objects with __slots__), to a
    small depth: a generic measure that does not depend on the replica's attribute names. Runs every 256
    steps for every replica: the kind of each type is decided once (_classify), not per value."""
    if depth == 0:
        return 0
    t = type(obj)
    if hasattr(obj, "__dict__"):
        values = vars(obj).values()
    else:
        slots = _SLOTS.get(t)
        if slots is None:
            slots = _SLOTS[t] = tuple(getattr(t, "__slots__", ()))
        values = [getattr(obj, s, None) for s in slots]
    attr_kind, item_kind = _ATTR_KIND, _ITEM_KIND
    total = 0
    for v in values:
        k = attr_kind.get(type(v))
        if k is None:
            k = _classify(type(v), True)
        if k == _OBJECT:
            if depth == 3:
                total += _footprint(v, depth)
        elif k == _CONTAINER:
            total += len(v)
            if depth > 1:
                for x in (v.values() if isinstance(v, dict) else v):
                    j = item_kind.get(type(x))
                    if j is None:
                        j = _classify(type(x), False)
                    if j == _CONTAINER:
                        total += len(x)
                    elif j == _OBJECT:
                        total += _footprint(x, depth - 1)
    return total


def trace_digest(nodes: int, seeds: int, start: int = 0) -> str:
    """SHA-256 over every action list every replica returned (start() and handle(), in order) and each
    seed's outcome, for seeds start..start+seeds-1: equal digests mean the replicas behaved identically.
    A refactoring or optimisation of consensus/ must leave it unchanged (tests/consensus/test_simulator.py
    pins a few seeds; docs/CONSENSUS.md says how to check more)."""
    h = hashlib.sha256()
    for s in range(start, start + seeds):
        err, info = run_seed(s, nodes, trace=h)
        h.update(repr((s, err, info.get("steps"), info.get("height"))).encode())
    return h.hexdigest()


def run_seed(seed: int, nodes: int, verbose: bool = False, trace=None) -> tuple[str | None, dict]:
    sim = Simulation(seed, nodes, verbose)
    sim.trace = trace
    try:
        info = sim.run()
    except Violation as exc:
        if verbose:
            for node in sim.nodes:
                r = node.replica
                print(f"i{node.index} member {node.member} faulty={node.member in sim.faulty} "
                      f"byzantine={sorted(node.byzantine)} up={node.up} height={len(node.store)} "
                      f"view={r.view} in_vc={r.in_view_change} stable={r.stable_checkpoint} "
                      f"transfer={r.state_transfer_pending} stats={dict(sorted(r.stats.items()))}")
            if sim.adversary is not None:
                print(f"adversary: members {sim.adversary.members} attacks {sorted(sim.adversary.attacks)}")
        return str(exc), {"steps": sim.steps, "totals": sim.totals}
    info["totals"] = sim.totals
    info["evidence_reports"] = sim.evidence
    return None, info


def describe(seed: int, nodes: int) -> str:
    """One line: what this seed's schedule draws (for reports)."""
    sim = Simulation(seed, nodes)
    if sim.twins:
        return f"twins members {sorted(sim.faulty)}, phases {[sorted(s) if s else None for s, _ in sim.scenario]}"
    adv = sim.adversary
    byz = {x.member: sorted(x.byzantine) for x in sim.nodes if x.member in sim.faulty and not x.amnesic}
    return (f"byzantine {byz} attacks {sorted(adv.attacks) if adv else []}"
            f"{' amnesic ' + str(sim.amnesic) if sim.amnesic is not None else ''}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m consensus.simulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1000, help="number of schedules to run")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=None, help="replay one schedule, verbosely")
    p.add_argument("--start", type=int, default=0, help="first seed of the search")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--trace", action="store_true",
                   help="print the digest of every action list over the seeds (behaviour unchanged: same digest)")
    p.add_argument("--state-digest", choices=checks.MODES, default=None,
                   help=f"how the node computes checkpoint digests (default {checks.STATE_DIGEST}, as node/ does)")
    p.add_argument("--ignore", action="append", default=[], choices=("commit_unprepared", "bounded", "throughput", "stability"),
                   help="switch an invariant off (to see what else a schedule finds)")
    args = p.parse_args(argv)
    IGNORE.update(args.ignore)
    if args.state_digest:
        checks.STATE_DIGEST = args.state_digest
    if args.trace:
        print(f"trace digest (n={args.nodes}, seeds {args.start}..{args.start + args.seeds - 1}): "
              f"{trace_digest(args.nodes, args.seeds, args.start)}")
        return 0
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
            print(f"seed {s}: VIOLATION: {err}\n  schedule: {describe(s, args.nodes)}\n"
                  f"  replay: python -m consensus.simulator --seed {s} --nodes {args.nodes}", flush=True)
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
                "drop_invalid_proposal", "drop_bad_digest", "drop_bad_certificate", "drop_bad_new_view",
                "drop_bad_view_change", "drop_rate_limited", "bad_wal_record", "drop_vote_flood")
        print("  totals: " + ", ".join(f"{k}={totals[k]}" for k in keys))
        print(f"  slowest recovery after heal: {worst_live:.2f} simulated s (bound 45 s)")
    return 1 if violations else 0
