"""The Byzantine side of the simulator.

Two kinds of misbehaviour:
- rewrite (per Byzantine member): its replica runs the honest code and the simulator rewrites what it sends
  (equivocating pre-prepares and NEW-VIEWs, conflicting votes, invalid blocks, forged signatures, replays,
  silence, selective sending, garbage bytes);
- originate (the Adversary: all Byzantine members colluding, omniscient about the honest replicas' public
  state and every message a Byzantine replica receives): correctly signed messages no honest code would send
  (vote floods for future views, VIEW-CHANGEs for future views, fabricated or stale VIEW-CHANGE entries with
  the payload served on FETCH, false and flooded checkpoints, lying STATUS, equivocation aimed at a replica
  that just restarted, NEW-VIEWs built from a chosen or doctored VIEW-CHANGE set, replays, a slow or censoring
  primary, crashes and restarts of the Byzantine replicas).
"""

from __future__ import annotations

import hashlib

from .. import messages as m
from ..certificate import Certificate
from ..viewchange import plan_new_view
from .checks import quorum

REWRITES = ("silent", "selective", "equivocate", "conflicting_votes", "bad_blocks", "forge", "replay", "garbage")
ATTACKS = ("vote_flood", "future_vc", "fake_entries", "stale_certs", "false_checkpoint", "lying_status",
           "amnesia_equivocate", "forged_nv", "slow", "censor", "crash_restart", "replay_flood", "far_heights",
           "invalid_blocks")


def rewrite(sim, node, to: int, data: bytes):
    """What Byzantine instance `node` really sends when its replica sends `data` to instance `to`."""
    rng = sim.rng
    b = node.byzantine
    adv = sim.adversary
    if "replay" in b and len(node.seen_msgs) < 400 and rng.random() < 0.3:
        node.seen_msgs.append(data)  # its own messages, to replay in later views and heights
    if "silent" in b and rng.random() < 0.8:
        return []
    if "selective" in b and (to + int(sim.now * 2)) % 3 == 0:  # withholds from a changing subset
        return []
    out = [(to, data)]
    try:
        msg = m.decode_cached(data, sim.n, sim.config.max_message_bytes, sim.config.watermark_window)
    except m.DecodeError:
        return out
    chain, me, crypto = sim.config.chain_id, node.member, node.crypto
    to_member = sim.nodes[to].member
    if msg.kind == m.NEWVIEW and adv is not None and "forged_nv" in adv.attacks:
        return []  # the Adversary sends its own NEW-VIEWs for this member
    if msg.kind == m.VIEWCHANGE and adv is not None:
        doctored = adv.doctor_view_change(node, msg)
        if doctored is not None:
            out = [(to, doctored)]
    if msg.kind == m.PREPREPARE and msg.body[3] is not None:
        v, h, d, payload = msg.body
        if "equivocate" in b and to % 2:
            alt = sim.make_payload(h, me, [])
            out = [(to, m.sign(crypto, chain, m.PREPREPARE, me, (v, h, sim.app.digest(alt), alt)).encode())]
        elif "bad_blocks" in b and rng.random() < 0.5:
            bad = b"junk:%d" % rng.randrange(1 << 30) if rng.random() < 0.5 else payload
            dig = sim.app.digest(bad) if bad != payload else hashlib.sha256(b"x" + payload).digest()
            out = [(to, m.sign(crypto, chain, m.PREPREPARE, me, (v, h, dig, bad)).encode())]
    elif msg.kind == m.VIEWCHANGE and "conflicting_votes" in b and msg.body[4] and rng.random() < 0.5:
        w, sh, sd, proof, entries = msg.body  # hides its prepared certificates from the new view
        out = [(to, m.sign(crypto, chain, m.VIEWCHANGE, me, (w, sh, sd, proof, entries[1:])).encode())]
    elif msg.kind == m.NEWVIEW and "equivocate" in b and msg.body[2] and to % 2:
        w, vcs, asg = msg.body  # re-proposes something the view changes do not support
        h, d, _sig = asg[-1]
        alt = hashlib.sha256(d).digest()
        asg = asg[:-1] + ((h, alt, crypto.sign(m.vote_signing_bytes(chain, w, h, alt))),)
        out = [(to, m.sign(crypto, chain, m.NEWVIEW, me, (w, vcs, asg)).encode())]
    elif msg.kind in (m.PREPARE, m.COMMIT) and "conflicting_votes" in b and rng.random() < 0.5:
        v, h, d = msg.body
        alt = hashlib.sha256(d + bytes([rng.randrange(256)])).digest()
        out.append((to, m.sign(crypto, chain, msg.kind, me, (v, h, alt)).encode()))
    if "forge" in b and rng.random() < 0.3:
        body = msg.body
        if msg.kind in (m.PREPARE, m.COMMIT):
            body = (body[0], body[1], hashlib.sha256(body[2]).digest())
        forged = m.Message(msg.kind, rng.choice([me, to_member, rng.randrange(sim.n)]), body,
                           bytes(rng.randrange(256) for _ in range(len(msg.sig))))
        out.append((to, forged.encode()))
        if msg.kind == m.COMMIT:  # a Decided with a certificate of forged signatures
            v, h, d = msg.body
            alt = sim.make_payload(h, me, [])
            fake = Certificate(h, v, sim.app.digest(alt), tuple((i, bytes(32)) for i in range(sim.n))).encode()
            out.append((to, m.sign(crypto, chain, m.DECIDED, me, (h, alt, fake)).encode()))
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


class Adversary:
    """The f Byzantine members acting together (see the module docstring)."""

    def __init__(self, sim, members: list[int], attacks: frozenset) -> None:
        self.sim = sim
        self.members = members
        self.attacks = attacks
        self.payloads: dict[bytes, tuple[int, bytes]] = {}   # digest -> (height, payload) served on FETCH
        self.prepares: dict[tuple, dict[int, bytes]] = {}     # (v, h, d) -> member -> signature
        self.certs: dict[int, list] = {}                      # h -> [(v, d, sigs)] genuine prepared certs
        self.vcs: dict[int, dict[int, bytes]] = {}            # view -> member -> VIEW-CHANGE wire
        self.nv_sent: set = set()
        self.nv_wires: dict[int, list[bytes]] = {}   # view -> NEW-VIEWs sent (replayed to restarted replicas)
        self.seen: list[bytes] = []
        self.cp_flood = 1
        self.flooded: dict[int, set] = {}
        self.censored = None
        self.slow_blocks = 0
        self.slow_next = 0.0
        rng = sim.rng
        honest = [i for i in range(sim.n) if i not in sim.faulty]
        if "censor" in attacks and honest:
            self.censored = rng.choice(honest)

    # ---- helpers --------------------------------------------------------------------------------------

    def sign(self, b: int, kind: int, body: tuple) -> bytes:
        return m.sign(self.sim.cryptos[b], self.sim.config.chain_id, kind, b, body).encode()

    def inject(self, b: int, j: int, wire: bytes) -> None:
        src = self.sim.inst_of_member[b][0]
        self.sim.transmit(src, j, wire)

    def honest_up(self):
        return [x for x in self.sim.nodes if x.up and self.sim.honest(x.index) and x.replica is not None]

    # ---- what Byzantine replicas receive --------------------------------------------------------------

    def observe(self, node, data: bytes) -> None:
        sim = self.sim
        if "replay_flood" in self.attacks and len(self.seen) < 500 and sim.rng.random() < 0.2:
            self.seen.append(data)
        if len(data) < 2 or data[1] not in (m.PREPREPARE, m.PREPARE, m.VIEWCHANGE, m.FETCH):
            return
        try:
            msg = m.decode_cached(data, sim.n, sim.config.max_message_bytes, sim.config.watermark_window)
        except m.DecodeError:
            return
        if not sim.verify(msg):
            return
        if msg.kind in (m.PREPREPARE, m.PREPARE) and "stale_certs" in self.attacks:
            v, h, d = msg.body[:3]
            votes = self.prepares.setdefault((v, h, d), {})
            if msg.sender not in votes:
                votes[msg.sender] = msg.sig
                if len(votes) == quorum(sim.n):
                    self.certs.setdefault(h, []).append((v, d, tuple(sorted(votes.items()))))
        elif msg.kind == m.VIEWCHANGE:
            self.vcs.setdefault(msg.body[0], {})[msg.sender] = data
        elif msg.kind == m.FETCH:
            h, d = msg.body
            if d in self.payloads:
                b = node.member
                wire = self.sign(b, m.PAYLOAD, (h, d, self.payloads[d][1]))
                sim.transmit(node.index, sim.inst_of_member[msg.sender][0], wire)

    def doctor_view_change(self, node, msg):
        """A Byzantine VIEW-CHANGE: fabricated prepared entries (junk payloads served on FETCH) or, per
        height, the oldest genuine prepared certificate seen for another digest."""
        sim = self.sim
        rng = sim.rng
        w, sh, sd, proof, entries = msg.body
        if "fake_entries" in self.attacks and rng.random() < 0.7:
            ents = {e[0]: e for e in entries}
            for h in range(sh + 1, sh + min(sim.config.watermark_window, sim.config.pipeline + 2) + 1):
                if rng.random() < 0.5:
                    continue
                payload = b"junk:%d:%d" % (h, rng.randrange(1 << 30)) if rng.random() < 0.5 else \
                    sim.make_payload(h, node.member, [])
                d = sim.app.digest(payload)
                self.payloads[d] = (h, payload)
                v = max(0, w - 1)
                signed = m.vote_signing_bytes(sim.config.chain_id, v, h, d)
                sigs = [(b, sim.cryptos[b].sign(signed)) for b in self.members]
                sigs += [(i, bytes(32)) for i in range(sim.n) if i not in self.members][: quorum(sim.n) - len(sigs)]
                ents[h] = (h, v, d, m.ENTRY_PREPARED, tuple(sorted(sigs)))
            entries = tuple(ents[h] for h in sorted(ents))
        elif "stale_certs" in self.attacks and self.certs:
            ents = {e[0]: e for e in entries}
            for h, certs in self.certs.items():
                if not sh < h <= sh + sim.config.watermark_window:
                    continue
                cur = ents.get(h)
                old = [c for c in certs if c[0] < w and (cur is None or c[1] != cur[2])]
                if old:
                    v, d, sigs = min(old)
                    ents[h] = (h, v, d, m.ENTRY_PREPARED, sigs)
            entries = tuple(ents[h] for h in sorted(ents))
        else:
            return None
        return self.sign(node.member, m.VIEWCHANGE, (w, sh, sd, proof, entries))

    # ---- what they originate, every tick ------------------------------------------------------------------

    def tick(self) -> None:
        sim = self.sim
        rng = sim.rng
        targets = self.honest_up()
        if not targets or not self.members:
            return
        a = self.attacks
        cfg = sim.config
        b = rng.choice(self.members)
        j = rng.choice(targets)
        r = j.replica
        if "vote_flood" in a:  # issue 9 defect 2: every honest replica, every height of its window, once:
            for x in targets:  # 8 COMMITs for view + 16 (or 2 PREPAREs for the view) with random digests
                rx = x.replica
                done = self.flooded.setdefault(x.index, set())
                for h in range(rx.last_committed + 1, rx.stable_checkpoint + cfg.watermark_window + 1):
                    if (rx.view, h) in done:
                        continue
                    done.add((rx.view, h))
                    kind = m.COMMIT if rng.random() < 0.6 else m.PREPARE
                    for _ in range(8 if kind == m.COMMIT else 2):
                        v = rx.view + 16 if kind == m.COMMIT else rx.view
                        self.inject(b, x.index, self.sign(b, kind, (v, h, rng.randbytes(32))))
        if "far_heights" in a:  # votes (and, as primary, pre-prepares) far above the high watermark
            top = r.stable_checkpoint + cfg.watermark_window
            for _ in range(2 * sim.n):
                h = top + rng.randrange(1, 1 << 20)
                self.inject(b, j.index, self.sign(b, rng.choice((m.PREPARE, m.COMMIT)), (r.view, h, rng.randbytes(32))))
            p = cfg.primary(r.view)
            if p in self.members:
                h = top + rng.randrange(1, 4)
                payload = sim.make_payload(h, p, [])
                self.inject(p, j.index, self.sign(p, m.PREPREPARE, (r.view, h, sim.app.digest(payload), payload)))
        if "future_vc" in a:  # valid VIEW-CHANGEs (no checkpoint, no entries) for later and huge views
            # all f at once, to every honest replica, for its next view: one short of the f+1 that pull a
            # replica along (PBFT 4.5.2), so f members must not be able to force a view change
            for x in targets:
                for y in self.members:
                    self.inject(y, x.index, self.sign(y, m.VIEWCHANGE, (x.replica.view + 1, 0, b"", (), ())))
            w = r.view + 1 + rng.randrange(3) if rng.random() < 0.7 else (1 << 40) + rng.randrange(1000)
            for x in self.members:
                self.inject(x, j.index, self.sign(x, m.VIEWCHANGE, (w, 0, b"", (), ())))
        if "false_checkpoint" in a:  # wrong state digests at the next checkpoint, and ever-higher heights
            k = cfg.checkpoint_interval
            h = (r.stable_checkpoint // k + 1) * k
            sd = rng.randbytes(32)
            for x in self.members:
                self.inject(x, j.index, self.sign(x, m.CHECKPOINT, (h, sd)))
            for _ in range(15):
                self.cp_flood += 1
                self.inject(b, j.index, self.sign(b, m.CHECKPOINT, (self.cp_flood * k, rng.randbytes(32))))
        if "lying_status" in a:
            if rng.random() < 0.5:
                body = (r.view + rng.randrange(1, 50), False, r.last_committed + rng.randrange(1, 1000),
                        r.stable_checkpoint + cfg.checkpoint_interval * rng.randrange(1, 9))
            else:
                body = (0, True, 0, 0)
            self.inject(b, j.index, self.sign(b, m.STATUS, body))
        if "replay_flood" in a and self.seen:
            for _ in range(3):
                self.inject(b, j.index, rng.choice(self.seen))
        if "forged_nv" in a:
            self.forge_new_view(targets)
        if "crash_restart" in a and rng.random() < 0.1:
            inst = sim.nodes[rng.choice(sim.inst_of_member[b])]
            if inst.up:
                sim.crash(inst)
                sim.push(sim.now + rng.uniform(0.05, 1.0), "restart", inst.index)

    def on_restart(self, node) -> None:
        """Equivocation aimed at a replica that just restarted: if it forgot a vote, it signs a second one."""
        if "amnesia_equivocate" not in self.attacks or node.replica is None:
            return
        sim = self.sim
        r = node.replica
        for w, wires in self.nv_wires.items():  # the other NEW-VIEW of a view it may have entered already
            if w >= r.view:
                for wire in wires:
                    p = sim.config.primary(w)
                    sim.push(sim.now + sim.rng.uniform(0.002, 0.05), "msg", sim.inst_of_member[p][0], node.index,
                             wire)
        v = r.view
        p = sim.config.primary(v)
        if p not in self.members:
            return
        for h in range(r.last_committed + 1, r.last_committed + 1 + sim.config.pipeline):
            payload = sim.make_payload(h, p, [])
            wire = self.sign(p, m.PREPREPARE, (v, h, sim.app.digest(payload), payload))
            sim.push(sim.now + sim.rng.uniform(0.002, 0.05), "msg", sim.inst_of_member[p][0], node.index, wire)

    def forge_new_view(self, targets) -> None:
        """A Byzantine primary of view w whose NEW-VIEW honest replicas wait for: built from the VIEW-CHANGE
        set it prefers (fewest entries), sometimes with an embedded VIEW-CHANGE altered under its signature
        or with assignments carrying bad signatures."""
        sim = self.sim
        rng = sim.rng
        cfg = sim.config
        waiting = {x.replica.view for x in targets if x.replica.in_view_change}
        for w in sorted(waiting):
            p = cfg.primary(w)
            if p not in self.members or (w, 0) in self.nv_sent:
                continue
            got = dict(self.vcs.get(w, {}))
            for x in self.members:
                got.setdefault(x, self.sign(x, m.VIEWCHANGE, (w, 0, b"", (), ())))
            q = quorum(sim.n)
            if len(got) < q:
                continue
            decoded = []
            for wire in got.values():
                try:
                    decoded.append(m.decode(wire, sim.n, cfg.max_message_bytes, cfg.watermark_window))
                except m.DecodeError:
                    pass
            self.nv_sent.add((w, 0))
            variant = rng.choice(("two_sets", "two_sets", "altered_vc", "bad_asg"))
            # two valid VIEW-CHANGE sets (fewest entries first / most entries first): two different NEW-VIEWs
            few = sorted(decoded, key=lambda x: (x.sender != p, len(x.body[4]), x.sender))[:q]
            many = sorted(decoded, key=lambda x: (x.sender != p, -len(x.body[4]), -x.sender))[:q]
            # in the second set the Byzantine VIEW-CHANGEs differ too: an honest member's stable checkpoint
            # (its proof is not tied to the sender) and the genuine prepared certificates seen above it
            honest_vcs = [x for x in decoded if x.sender not in self.members]
            if honest_vcs:
                top = max(honest_vcs, key=lambda x: x.body[1])
                _w, sh, sd, proof, _e = top.body
                ents = []
                for h in sorted(self.certs):
                    if sh < h <= sh + cfg.watermark_window:
                        old = [c for c in self.certs[h] if c[0] < w]
                        if old:
                            v, d, sigs = max(old)
                            ents.append((h, v, d, m.ENTRY_PREPARED, sigs))
                alt = {x: m.decode(self.sign(x, m.VIEWCHANGE, (w, sh, sd, proof, tuple(ents))), sim.n,
                                   cfg.max_message_bytes, cfg.watermark_window) for x in self.members}
                many = [alt.get(x.sender, x) for x in many]
            if len(few) < q:
                continue
            order = list(targets)
            rng.shuffle(order)
            half = len(order) // 2
            groups = [(few, order[:half]), (many, order[half:])] if variant == "two_sets" else [(few, order)]
            for chosen, group in groups:
                wires = [x.encode() for x in chosen]
                if variant == "altered_vc":
                    for k, x in enumerate(chosen):
                        if x.sender not in self.members and x.body[4]:
                            body = x.body[:4] + ((),)
                            wires[k] = m.Message(m.VIEWCHANGE, x.sender, body, x.sig).encode()
                            break
                try:
                    plan = plan_new_view([m.decode(wr, sim.n, cfg.max_message_bytes, cfg.watermark_window)
                                          for wr in wires])
                except Exception:
                    continue
                signed = [(h, d, sim.cryptos[p].sign(m.vote_signing_bytes(cfg.chain_id, w, h, d)))
                          for h, d in plan.assignments]
                if variant == "bad_asg":
                    signed = [(h, d, bytes(32)) for h, d, _s in signed]
                wire = self.sign(p, m.NEWVIEW, (w, tuple(wires), tuple(signed)))
                self.nv_wires.setdefault(w, []).append(wire)
                for x in group:
                    self.inject(p, x.index, wire)
