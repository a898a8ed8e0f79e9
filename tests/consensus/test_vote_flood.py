"""Two vote-flooding members of seven (f = 2), as tests/adversary/adversary.py's `flood` does it: for each
(view, height) in the window, once, 8 COMMITs for (view + 16, h, random digest), 8 PREPAREs for view and 8 for
view + 1. The honest replicas must keep committing in view 0, check one signature per flooded (kind, view,
height) rather than one per message, and report each flooder once per stable checkpoint, not once per
flooded height (each report becomes an evidence tx every honest node signs, gossips, verifies and executes:
issue 9, the flood that fed itself through the mempool)."""

from __future__ import annotations

import hashlib

from consensus import messages as m
from consensus.evidence import verify_evidence
from consensus.replica import EVIDENCE_PER_CHECKPOINT

FLOODERS = (5, 6)


class CountingCrypto:
    def __init__(self, inner) -> None:
        self.inner, self.verified = inner, 0

    def sign(self, data: bytes) -> bytes:
        return self.inner.sign(data)

    def verify(self, member: int, data: bytes, sig: bytes) -> bool:
        self.verified += 1
        return self.inner.verify(member, data, sig)


def _flood(c, done: set) -> int:
    """Each flooder floods every (view, height) of its window it has not flooded yet; returns messages sent."""
    sent = 0
    for b in FLOODERS:
        r, cr = c.replicas[b], c.crypto(b)
        low = max(r.last_committed, r.stable_checkpoint)
        for h in range(low + 1, r.high_watermark + 1):
            if (b, r.view, h) in done:
                continue
            done.add((b, r.view, h))
            for k in range(8):
                for kind, v in ((m.COMMIT, r.view + 16), (m.PREPARE, r.view), (m.PREPARE, r.view + 1)):
                    d = hashlib.sha256(b"%d:%d:%d:%d:%d:%d" % (b, kind, v, h, k, len(done))).digest()
                    wire = m.sign(cr, "test", kind, b, (v, h, d)).encode()
                    for j in range(c.n):
                        if j != b:
                            c.queue.append((b, j, wire))
                            sent += 1
    return sent


def test_two_vote_flooders_of_seven_neither_stall_nor_multiply_evidence(make_cluster):
    c = make_cluster(7, pipeline=4)
    counting = [CountingCrypto(r.crypto) for r in c.replicas]
    for r, cc in zip(c.replicas, counting, strict=True):
        r.crypto = cc
    honest = [i for i in range(c.n) if i not in FLOODERS]
    done: set = set()
    flood_msgs = 0
    for _ in range(12):  # 36 heights: two stable checkpoints, the window moves and new heights get flooded
        flood_msgs += _flood(c, done)
        c.work(3)
    per_replica = flood_msgs // (c.n - 1)
    assert min(c.heights()[i] for i in honest) >= 36
    assert all(c.replicas[i].view == 0 and c.replicas[i].stats["view_changes"] == 0 for i in honest)
    K = c.config.checkpoint_interval
    for i in honest:
        r = c.replicas[i]
        # every flooder is reported (the proofs are valid) but at most once per stable checkpoint interval
        offenders = [verify_evidence(e, c.crypto(0), "test")["member"] for e in c.evidence[i]]
        assert set(offenders) == set(FLOODERS)
        checkpoints = r.stable_checkpoint // K + 1
        for b in FLOODERS:
            assert offenders.count(b) <= EVIDENCE_PER_CHECKPOINT * checkpoints, (i, offenders)
        # one signature check per flooded (kind, view, height) and flooder, plus the honest traffic: far
        # below one per flooding message (24 per (view, height) and flooder)
        assert counting[i].verified < per_replica // 4, (counting[i].verified, per_replica)
    # the chain the honest replicas agreed on is one chain
    for i in honest[1:]:
        assert [a.digest for a in c.commits[i][:36]] == [a.digest for a in c.commits[honest[0]][:36]]
