"""A test-only Byzantine member: the real node (node/runtime/node.py) with one misbehaviour switched on.

Runs as its own OS process, like `radchain start`, with the member's real keys and the network PSK:

    python tests/adversary/adversary.py --home HOME --behaviour flood[,replay...] [--victim hosp-b]

Several behaviours separated by commas run at once (still one faulty member).

It wraps the node's message paths without touching node/: the consensus driver's send/broadcast callables,
the tx-gossip broadcast, the sync request handler and the inbox callbacks are replaced on the instance, so
the honest code still does everything the behaviour does not change (signing with the member key, WAL,
block execution). Kept under tests/ so it is never part of the installed package.

Behaviours (each is a thing one member of a consortium can do on its own):
  equivocate  as primary, two correctly signed PRE-PREPAREs with different proposals for every height,
              sent in opposite orders to two groups of replicas (so both get accepted somewhere); its own
              COMMIT goes to one replica only, so honest replicas end up with certificates of other views
  flood       for every height h in the window, once per view: 8 COMMITs for (view + 16, h, random digest) and
              8 PREPAREs for (view, h, random digest) and (view + 1, h, random digest), to every replica
  malformed   malformed frames of every consensus kind, malformed tx-gossip batches (among them a tx whose
              body map has a bytes key), malformed sync requests; and as a sync server it claims a height far
              ahead and answers block requests with blocks that carry that malformed tx
  silent      sends nothing on consensus or gossip and serves no sync (a crashed member that keeps its links)
  slow        as primary, releases at most one PRE-PREPARE per 0.9 progress timeouts and proposes one tx per
              block: just enough progress that a delivery-reset timer never fires (Aardvark's slow primary)
  censor      as primary, leaves every tx of member --victim out of its proposals
  replay      re-sends old consensus frames (its own and those it received) and old tx batches to everyone
  liar        signed lies: STATUS messages 20 times a second claiming to be far ahead or at height 0 (so
              honest members push it blocks), a VIEW-CHANGE for a new, far view and a CHECKPOINT at a new, far
              height every second, and a far height when asked over block sync (then serving honest blocks)
  phantom     as primary, compact proposals (node.ledger.block) naming txs nobody has (made-up hashes,
              consistent tx_count and tx_root), and it never answers a tx fetch: the replicas cannot resolve
              them, must not vote, and must change view
  stalecert   as primary of view 0, once: pre-prepares one height H to just q-1 honest replicas, keeps their
              COMMITs for H from its own replica and withholds its own, so nobody but it holds a certificate
              (2f+1 valid commits of view 0); withholds everything after H so the honest members change
              view; when the NEW-VIEW re-proposes H, reveals the view-0 certificate (a DECIDED message) to
              one honest replica only. That replica commits H under view 0, the others under view 1: honest
              members then hold different certificates for the same block (issue 9 defect 3)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import time
from collections import Counter, deque

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root (node/, consensus/, ...)

import msgpack  # noqa: E402
import trio  # noqa: E402

from consensus import messages as m  # noqa: E402
from node.ledger.block import ProposalHeader, encode_compact_payload  # noqa: E402
from node.ledger.merkle import merkle_root  # noqa: E402
from node.runtime.gossip import CHANNEL as TX_CHANNEL  # noqa: E402
from node.runtime.node import CONSENSUS_CHANNEL, Node  # noqa: E402
from node.runtime.settings import load_config  # noqa: E402
from node.runtime.sync import CHANNEL as SYNC_CHANNEL  # noqa: E402

log = logging.getLogger("radchain.adversary")

BEHAVIOURS = ("equivocate", "flood", "malformed", "silent", "slow", "censor", "replay", "stalecert", "liar",
              "phantom")

# Issue 9 defect 1: a tx whose body map has a bytes key, zero signature. The field check used to raise
# TypeError (sorting str and bytes keys) before the signature was checked.
BYTES_KEY_TX = msgpack.packb([msgpack.packb({"type": "instances.accessed", b"zz": 1}, use_bin_type=True),
                              b"\x00" * 64], use_bin_type=True)


def malformed_txs() -> list[bytes]:
    """Tx wire forms a careless decoder trips over (each must be refused, never raised out)."""
    pk = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    return [
        BYTES_KEY_TX,
        pk([pk({"type": 1, 2: 3}), b"\x00" * 64]),
        pk([pk({"type": "instances.accessed", "v": 1, "ts": -1, "chain": None}), b"\x00" * 64]),
        pk([pk([1, 2, 3]), b"\x00" * 64]),
        pk([pk({"type": "evidence.equivocation", "evidence": [b"", [1]], "offender": -5}), b""]),
        pk([b"\xc1", b"\x00" * 64]),  # msgpack's never-used byte
        pk([pk({"type": "instances.accessed", "member": {"x": [[[[[]]]]]}}), b"\x00" * 64]),
        pk("not a list"),
        pk([1 << 63, b"x"]),
        b"\xdd\xff\xff\xff\xff",  # an array header claiming 4 billion items
        b"",
    ]


def malformed_consensus(sender: int) -> list[bytes]:
    """Frames of every consensus kind with wrong field counts, types, sizes and nesting."""
    pk = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    sig = b"\x00" * 64
    bodies = {
        m.PREPREPARE: [[0, 1, b"d" * 32], [0, -1, b"d" * 32, None], [0, 1, b"", b"payload"],
                       [(1 << 64) - 1, 1, b"d" * 32, b"p"], [0, 1, {"x": 1}, None]],
        m.PREPARE: [[0, 1], [0, 1, "digest"], [-1, 1, b"d" * 32], [0, 1, b"d" * 100]],
        m.COMMIT: [[0, 1, b"d" * 32, 4], [0, "1", b"d" * 32], [None, None, None]],
        m.CHECKPOINT: [[16], [16, b""], [16, {b"zz": 1}]],
        m.VIEWCHANGE: [[1, 0, b"", [], [[1, 0, b"d" * 32, 7, []]]], [1, 0, b"", [[0]], []],
                       [1, 0, b"", [], [[1, 0, b"d" * 32, 0, [[0, b"s"]] * 1000]]]],
        m.NEWVIEW: [[1, [b"x"] * 100, []], [1, [], [[1, b"d" * 32]]], [1, [[[[[]]]]], []]],
        m.STATUS: [[0, 1, 0, 0], [0, False, -1, 0], [0, False, 0]],
        m.FETCH: [[1], [1, b""], [(1 << 64) - 1, b"d"], [-(1 << 63), b"d" * 32]],
        m.PAYLOAD: [[1, b"d" * 32], [1, b"d" * 32, 5], [1, b"d" * 32, b"\xc1" * 100]],
        m.DECIDED: [[1, b"p", b"\x00" * 70000], [1, b"p", b"c", b"extra"], [1, BYTES_KEY_TX, b"\x93\x01\x02"]],
    }
    out = []
    for kind, variants in bodies.items():
        for body in variants:
            out.append(pk([kind, sender, body, sig]))
        out.append(pk([kind, sender]))  # too few fields
        out.append(pk({b"kind": kind, "sender": sender}))  # a map with a bytes key
    out += [pk([99, sender, [], sig]), pk([1, 1 << 40, [], sig]), b"", b"\xc1", b"\x91" * 2000,
            pk([[[[[[[[[[[]]]]]]]]]]]), os.urandom(300)]
    return out


def malformed_sync_requests() -> list[bytes]:
    pk = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    return [pk({"op": "blocks", "from": -1}), pk({"op": "blocks", "from": "x"}), pk({"op": "blocks"}),
            pk({b"op": "status"}), pk({"op": 7}), pk({"op": ["status"]}), pk([1, 2, 3]), b"\xc1", b"",
            pk({"op": "blocks", "from": 1 << 62}), pk({"op": "status", "a": 1, "b": 2, "c": 3, "d": 4})]


class AdversaryNode(Node):
    def __init__(self, cfg, behaviours: str, victim: str | None = None,
                 channels: str = "consensus,tx,sync"):
        self.b = frozenset(behaviours.split(","))
        if not self.b <= set(BEHAVIOURS):
            raise ValueError(f"unknown behaviour in {behaviours!r}; each one of {', '.join(BEHAVIOURS)}")
        super().__init__(cfg)
        self.behaviour = behaviours
        self.channels = frozenset(channels.split(","))  # where `malformed` sends its garbage
        self.victim = victim
        self.rng = random.Random()
        self.n = len(self.peer_ids)
        self.others = [i for i in range(self.n) if i != self.index]
        self.adv = Counter()
        self._max_msg = self.replica.config.max_message_bytes
        self._window = self.replica.config.watermark_window
        # Outgoing consensus and gossip go through the behaviour first.
        self.driver._send = self._consensus_send
        self.driver._broadcast = self._consensus_broadcast
        self._gossip_broadcast_honest = self.gossip._broadcast
        self.gossip._broadcast = self._gossip_broadcast
        # Node.run registers self.sync.serve when it starts: replace the handler before that.
        self._serve_honest = self.sync.serve
        self.sync.serve = self._sync_serve
        if "phantom" in self.b:
            self.driver._build_proposal = self._phantom_proposal
            self.gossip.serve_fetch = self._never_answer  # Node.run registers it when it starts
        # Incoming: recorded for replay.
        self._recorded: deque[tuple[float, str, bytes]] = deque(maxlen=4000)
        self._message_honest = self.driver.message
        self.driver.message = self._on_consensus_in
        self._on_batch_honest = self.gossip.on_batch
        self.gossip.on_batch = self._on_gossip_in
        self._on_batch_threaded_honest = self.gossip.on_batch_threaded  # the path Node takes by default
        self.gossip.on_batch_threaded = self._on_gossip_in_threaded
        self._on_batches_threaded_honest = self.gossip.on_batches_threaded  # batches waiting together
        self.gossip.on_batches_threaded = self._on_gossip_in_grouped
        # slow primary
        self._held: deque[bytes] = deque()
        self._held_set: set[bytes] = set()
        self._released: set[tuple[int, int]] = set()
        self._equivocated: set[tuple[int, int]] = set()
        # stalecert
        self._target: int | None = None            # the height H whose certificate is kept back
        self._target_payload: bytes | None = None
        self._target_digest: bytes | None = None
        self._target_commits: dict[int, bytes] = {}  # member -> its view-0 commit signature for H
        self._revealed = False
        self._receivers = [i for i in self.others][: self.replica.config.quorum - 1]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            nursery.start_soon(self._misbehave)
            log.warning("adversary running", extra={"fields": {"behaviour": self.behaviour}})
            task_status.started()

    # ------------------------------------------------------------------ helpers
    def _peer(self, i: int) -> str:
        return self.peer_ids[i]

    def _to(self, i: int, data: bytes, channel: str = CONSENSUS_CHANNEL) -> None:
        self.net.send(self._peer(i), channel, data)
        self.adv["frames_sent"] += 1

    def _to_all(self, data: bytes, channel: str = CONSENSUS_CHANNEL) -> None:
        for i in self.others:
            self._to(i, data, channel)

    def _sign(self, kind: int, body: tuple) -> bytes:
        return m.sign(self.replica.crypto, self.genesis.chain_id, kind, self.index, body).encode()

    def _decode(self, data: bytes) -> m.Message | None:
        try:
            return m.decode(data, self.n, self._max_msg, self._window)
        except m.DecodeError:
            return None

    # ------------------------------------------------------------------ phantom
    def _phantom_proposal(self, height: int, allow_empty: bool) -> bytes:
        hashes = [os.urandom(32) for _ in range(8)]
        self.adv["phantom_proposals"] += 1
        header = ProposalHeader(self.genesis.chain_id, height, self.index, int(time.time() * 1000), len(hashes),
                                merkle_root(hashes))
        return encode_compact_payload(header, hashes)

    async def _never_answer(self, peer: str, data: bytes) -> bytes:
        self.adv["fetches_ignored"] += 1
        await trio.sleep_forever()
        return b""  # pragma: no cover

    # ------------------------------------------------------------------ outgoing paths
    def _consensus_send(self, to: int, data: bytes) -> None:
        if "silent" in self.b:
            return
        self._record(self.peer_ids[self.index], data)
        self.net.send(self._peer(to), CONSENSUS_CHANNEL, data)

    def _consensus_broadcast(self, data: bytes) -> None:
        b = self.b
        if "silent" in b:
            return
        self._record(self.peer_ids[self.index], data)
        msg = self._decode(data)
        if msg is not None and msg.sender == self.index:
            if "equivocate" in b and msg.kind == m.PREPREPARE:
                return self._equivocate(msg, data)
            if "equivocate" in b and msg.kind == m.COMMIT:
                # Withhold our commit from all but one replica: the others need a later view's certificate.
                return self._to(self.others[0], data)
            if "stalecert" in b and not self._revealed and msg.body[0] == 0 and msg.kind in (
                    m.PREPREPARE, m.COMMIT):
                return self._stalecert_out(msg, data)
            if "slow" in b and msg.kind == m.PREPREPARE:
                v, h = msg.body[0], msg.body[1]
                if (v, h) in self._released:
                    return self._to_all(data)  # a retransmission of a pre-prepare already let out
                if data not in self._held_set:
                    self._held_set.add(data)
                    self._held.append(data)
                return None
        self.net.broadcast(CONSENSUS_CHANNEL, data)

    def _gossip_broadcast(self, channel: str, data: bytes) -> int:
        if "silent" in self.b:
            return 0
        return self._gossip_broadcast_honest(channel, data)

    def _equivocate(self, msg: m.Message, data: bytes) -> None:
        v, h, d, payload = msg.body
        if payload is None or (v, h) in self._equivocated:
            return self._to_all(data)  # a retransmission: the damage is done once per height
        self._equivocated.add((v, h))
        # A second, valid proposal for the same height: same txs, another timestamp.
        try:
            header_bytes, txs = msgpack.unpackb(payload, raw=False)
            if type(txs) is bytes:  # a compact payload (node.ledger.block): the same tx hashes
                hashes = [txs[k:k + 32] for k in range(0, len(txs), 32)]
                header = ProposalHeader(self.genesis.chain_id, h, self.index, int(time.time() * 1000) + 1,
                                        len(hashes), merkle_root(hashes))
                alt = encode_compact_payload(header, hashes)
            else:
                alt = self.chain.build_proposal(h, self.index, int(time.time() * 1000) + 1, list(txs))
        except Exception:
            log.exception("could not build a second proposal")
            return self._to_all(data)
        alt_wire = self._sign(m.PREPREPARE, (v, h, self.chain.digest(alt), alt))
        # The first two replicas see the honest proposal first, the rest the other one first: each group
        # accepts its first and holds the second as proof that the primary signed two.
        for j, i in enumerate(self.others):
            first, second = (data, alt_wire) if j < 2 else (alt_wire, data)
            self._to(i, first)
            self._to(i, second)
        self.adv["equivocations"] += 1

    # ------------------------------------------------------------------ stalecert
    def _stalecert_out(self, msg: m.Message, data: bytes) -> None:
        h, d = msg.body[1], msg.body[2]
        if msg.kind == m.PREPREPARE and self._target is None and msg.body[3]:
            self._target, self._target_digest, self._target_payload = h, d, msg.body[3]
            log.warning("stalecert: height %d goes to %s only", h, self._receivers)
        if self._target is None or h < self._target:
            return self.net.broadcast(CONSENSUS_CHANNEL, data)  # before H: an ordinary primary
        if msg.kind == m.PREPREPARE and h == self._target and d == self._target_digest:
            for i in self._receivers:
                self._to(i, data)
        elif msg.kind == m.COMMIT and h == self._target and d == self._target_digest:
            self._target_commits[self.index] = msg.sig  # ours completes the certificate, and is kept back
        # anything else of view 0 at or above H is withheld: the honest members must change view

    def _stalecert_in(self, sender: int, data: bytes) -> bool:
        """True if the frame is kept from our own replica (so it never holds the certificate itself)."""
        if self._target is None or self._revealed:
            return False
        msg = self._decode(data)
        if msg is None:
            return False
        if msg.kind == m.COMMIT and msg.body[:3] == (0, self._target, self._target_digest):
            self._target_commits[msg.sender] = msg.sig
            return True
        if msg.kind == m.NEWVIEW and msg.body[0] >= 1:
            self._reveal(msg.sender)
        return False

    def _reveal(self, new_primary: int) -> None:
        q = self.replica.config.quorum
        if len(self._target_commits) < q:
            log.warning("stalecert: only %d commits for height %d, nothing to reveal", len(self._target_commits),
                        self._target)
            return
        from consensus.certificate import Certificate

        cert = Certificate(self._target, 0, self._target_digest, tuple(sorted(self._target_commits.items()))[:q])
        to = next(i for i in reversed(self._receivers) if i != new_primary)
        self._to(to, self._sign(m.DECIDED, (self._target, self._target_payload, cert.encode())))
        self._revealed = True
        self.adv["stale_certificates_revealed"] += 1
        log.warning("stalecert: view-0 certificate for height %d revealed to member %d", self._target, to)

    # ------------------------------------------------------------------ incoming paths (recording)
    def _record(self, origin: str, data: bytes) -> None:
        if "replay" in self.b and len(data) < 64 * 1024:
            self._recorded.append((time.monotonic(), origin, data))

    def _on_consensus_in(self, sender: int, data: bytes) -> None:
        self._record(self._peer(sender), data)
        if "stalecert" in self.b and self._stalecert_in(sender, data):
            return
        self._message_honest(sender, data)

    def _on_gossip_in(self, peer: str, data: bytes) -> None:
        if "replay" in self.b:
            self._recorded.append((time.monotonic(), TX_CHANNEL, data))
        self._on_batch_honest(peer, data)

    async def _on_gossip_in_threaded(self, peer: str, data: bytes) -> None:
        if "replay" in self.b:
            self._recorded.append((time.monotonic(), TX_CHANNEL, data))
        await self._on_batch_threaded_honest(peer, data)

    async def _on_gossip_in_grouped(self, frames: list[tuple[str, bytes]]) -> None:
        if "replay" in self.b:
            self._recorded.extend((time.monotonic(), TX_CHANNEL, data) for _peer, data in frames)
        await self._on_batches_threaded_honest(frames)

    # ------------------------------------------------------------------ sync
    async def _sync_serve(self, peer: str, data: bytes) -> bytes:
        if "silent" in self.b:
            await trio.sleep(60)  # never answers; the requester's timeout has to cope
            return b""
        if "liar" in self.b and "malformed" not in self.b:
            try:
                lie = msgpack.unpackb(data, raw=False).get("op") == "status"
            except Exception:
                lie = False
            if lie:
                return msgpack.packb({"height": self.store.height + 1000, "head": os.urandom(32)}, use_bin_type=True)
        if "malformed" not in self.b or "sync" not in self.channels:
            return await self._serve_honest(peer, data)
        try:
            req = msgpack.unpackb(data, raw=False)
            op = req.get("op")
        except Exception:
            op = None
        if op == "status":  # claim to be far ahead, so that an idle honest node syncs from us
            return msgpack.packb({"height": self.store.height + 1000, "head": os.urandom(32)}, use_bin_type=True)
        if op == "blocks" and isinstance(req.get("from"), int):
            start = req["from"]
            blocks = []
            for h in range(start, start + 4):
                payload = self.chain.build_proposal(h, self.index, int(time.time() * 1000), [BYTES_KEY_TX])
                blocks.append([h, payload, msgpack.packb([h, 0, os.urandom(32), []], use_bin_type=True)])
            blocks.append([start + 4, b"\xc1" * 10, b""])
            self.adv["poisoned_sync"] += 1
            return msgpack.packb({"blocks": blocks}, use_bin_type=True)
        return self.rng.choice([b"\xc1", b"", msgpack.packb({"blocks": [[1, 2, 3, 4]]}),
                                msgpack.packb({"blocks": {"a": 1}}), msgpack.packb([1] * 100)])

    # ------------------------------------------------------------------ proposals (primary behaviours)
    def _build_proposal(self, height: int, allow_empty: bool) -> bytes | None:
        slow, censor = "slow" in self.b, "censor" in self.b and self.victim
        if not (slow or censor):
            return super()._build_proposal(height, allow_empty)
        if self.replica.view != self._last_view:
            self._last_view = self.replica.view
            self.mempool.release_in_flight()
        # slow: one tx per block, progress but barely; censor: the victim's txs never go in
        txs = self.mempool.take_for_proposal(1 if slow else self.genesis.param("max_block_txs"), height)
        if censor:
            txs = [raw for raw in txs if _member_of(raw) != self.victim]
        if not txs and not allow_empty:
            return None
        return self.chain.build_proposal(height, self.index, int(time.time() * 1000), txs)

    # ------------------------------------------------------------------ the active part
    async def _misbehave(self) -> None:
        loops = {"flood": self._flood_loop, "malformed": self._malformed_loop, "slow": self._slow_loop,
                 "replay": self._replay_loop, "liar": self._liar_loop}
        async with trio.open_nursery() as nursery:
            for name in sorted(self.b & set(loops)):
                nursery.start_soon(loops[name])

    async def _flood_loop(self) -> None:
        """Issue 9 defect 2: every (view, height) in the window gets its flood once, as soon as it opens (a
        new view, or the window moving up); repeating it would only measure signature-checking speed."""
        flooded: set[tuple[int, int]] = set()
        while True:
            await trio.sleep(0.2)
            r = self.replica
            view, low = r.view, max(r.last_committed, r.stable_checkpoint)
            for h in range(low + 1, r.high_watermark + 1):
                if (view, h) in flooded:
                    continue
                flooded.add((view, h))
                for _ in range(8):
                    self._to_all(self._sign(m.COMMIT, (view + 16, h, os.urandom(32))))
                    self._to_all(self._sign(m.PREPARE, (view, h, os.urandom(32))))
                    self._to_all(self._sign(m.PREPARE, (view + 1, h, os.urandom(32))))
                await trio.lowlevel.checkpoint()
            flooded = {(v, h) for v, h in flooded if h > low}
            self.adv["flood_rounds"] += 1

    async def _malformed_loop(self) -> None:
        consensus = malformed_consensus(self.index)
        txs = malformed_txs()
        pk = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
        batches = [pk([raw]) for raw in txs] + [pk(txs), pk({"txs": txs}), pk({b"zz": 1}), b"\xc1",
                                                 pk([[BYTES_KEY_TX]]), pk([1, 2, 3]), pk(None)]
        sync_requests = malformed_sync_requests()
        if "consensus" not in self.channels:
            consensus = []
        if "tx" not in self.channels:
            batches = []
        if "sync" not in self.channels:
            sync_requests = []
        while True:
            for data in consensus:
                self._to_all(data)
            for data in batches:
                self._to_all(data, TX_CHANNEL)
            for data in sync_requests:
                for i in self.others:
                    try:
                        with trio.move_on_after(2):
                            await self.net.request(self._peer(i), SYNC_CHANNEL, data, timeout=2)
                    except Exception:
                        pass  # an honest node may refuse; what matters is that it survives
            self.adv["malformed_rounds"] += 1
            await trio.sleep(0.3)

    async def _slow_loop(self) -> None:
        delay = 0.9 * self.cfg.consensus.progress_timeout
        while True:
            await trio.sleep(delay)
            while self._held:
                data = self._held.popleft()
                self._held_set.discard(data)
                msg = self._decode(data)
                if msg is None or msg.body[0] != self.replica.view or msg.body[1] <= self.replica.last_committed:
                    continue  # superseded by a view change or committed meanwhile
                self._released.add((msg.body[0], msg.body[1]))
                self._to_all(data)
                break

    async def _liar_loop(self) -> None:
        k = 0
        far = 1000
        interval = self.replica.config.checkpoint_interval
        while True:
            await trio.sleep(0.05)
            r = self.replica
            k += 1
            if k % 2:
                status = (r.view + far, True, r.last_committed + far * interval, r.stable_checkpoint + far * interval)
            else:
                status = (r.view, False, 0, 0)  # "I have nothing": honest members push blocks
            self._to_all(self._sign(m.STATUS, status))
            if k % 20 == 0:
                step = k // 20
                # a VIEW-CHANGE from the genesis checkpoint (no proof needed) for a new, far view
                self._to_all(self._sign(m.VIEWCHANGE, (r.view + far + step, 0, b"", (), ())))
                h = (r.stable_checkpoint // interval + far + step) * interval
                self._to_all(self._sign(m.CHECKPOINT, (h, os.urandom(32))))
                self.adv["lies"] += 1

    async def _replay_loop(self) -> None:
        while True:
            await trio.sleep(0.2)
            now = time.monotonic()
            old = [x for x in self._recorded if now - x[0] > 2.0]
            for _t, origin, data in self.rng.sample(old, min(40, len(old))):
                channel = TX_CHANNEL if origin == TX_CHANNEL else CONSENSUS_CHANNEL
                self._to_all(data, channel)
            self.adv["replayed"] += min(40, len(old))


def _member_of(raw: bytes) -> str | None:
    try:
        body, _sig = msgpack.unpackb(raw, raw=False)
        return msgpack.unpackb(body, raw=False).get("member")
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True)
    p.add_argument("--behaviour", required=True, help=f"one or more of {','.join(BEHAVIOURS)}, comma-separated")
    p.add_argument("--victim", help="member name whose txs a censoring primary leaves out")
    p.add_argument("--channels", default="consensus,tx,sync", help="where `malformed` sends garbage")
    args = p.parse_args(argv)

    from network.logs import mute_libp2p_logging
    from node.runtime.jsonlogs import setup_logging

    cfg = load_config(args.home)
    setup_logging(cfg.log_level, cfg.name)
    mute_libp2p_logging()

    async def amain() -> None:
        node = AdversaryNode(cfg, args.behaviour, victim=args.victim, channels=args.channels)
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(node.run)
                async for _ in signals:
                    log.warning("adversary stopping", extra={"fields": dict(node.adv)})
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(amain)
    except* RuntimeError as group:  # py-libp2p 0.8.1 may raise while its services unwind (docs/NETWORK.md)
        for exc in group.exceptions:
            if "Nursery is closed" not in str(exc):
                raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
