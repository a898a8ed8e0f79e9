"""Equivocation evidence as a transaction, checked by every validator before it goes on chain.

consensus/ reports two conflicting signed votes from one member as one blob; on chain the tx names the
offender (member index) and carries the two votes as [kind, view, height, digest, signature] each, so a
reader can re-check them with the members' public keys alone. A member cannot put a false accusation on
chain: validators rebuild the blob and run consensus.evidence.verify_evidence on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from consensus.evidence import EvidenceError, decode_evidence, encode_evidence, verify_evidence
from node.ledger.tx import TxError


class _MemberKeys:
    """The verify half of consensus.crypto: member index -> ed25519 public key."""

    def __init__(self, members: tuple[bytes, ...]):
        self._keys = [VerifyKey(m) for m in members]

    def verify(self, member: int, data: bytes, sig: bytes) -> bool:
        if not 0 <= member < len(self._keys):
            return False
        try:
            self._keys[member].verify(data, sig)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True


def evidence_tx_fields(blob: bytes) -> dict:
    """Fields of an `evidence.equivocation` tx for a blob the replica reported (ReportEvidence)."""
    ev = decode_evidence(blob)
    votes = [msgpack.packb([ev["kind"], ev["view"], ev["height"], bytes(d), bytes(s)], use_bin_type=True)
             for d, s in (ev["a"], ev["b"])]
    return {"offender": ev["member"], "evidence": votes}


def _vote(data) -> list:
    """One quoted vote: msgpack [kind: str, view: int, height: int, digest: bin, signature: bin], bounded."""
    if type(data) is not bytes or len(data) > 512:
        raise EvidenceError("a vote must be at most 512 bytes")
    try:
        vote = msgpack.unpackb(data, raw=False, max_array_len=5, max_map_len=0, max_bin_len=256,
                               max_str_len=16, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, FormatError, ...)
        raise EvidenceError(f"undecodable vote ({exc.__class__.__name__})") from None
    if (type(vote) is not list or len(vote) != 5 or type(vote[0]) is not str or type(vote[1]) is not int
            or type(vote[2]) is not int or type(vote[3]) is not bytes or type(vote[4]) is not bytes):
        raise EvidenceError("a vote must be [kind, view, height, digest, signature]")
    return vote


def check_evidence_tx(fields: dict, chain_id: str, members: tuple[bytes, ...]) -> None:
    """Raise TxError unless the tx's two votes are validly signed by the offender and conflict."""
    try:
        a, b = (_vote(v) for v in fields["evidence"])
        if a[:3] != b[:3]:
            raise EvidenceError("the two votes must share kind, view and height")
        kind, view, height = a[:3]
        blob = encode_evidence(kind, chain_id, fields["offender"], view, height, (a[3], a[4]), (b[3], b[4]))
        verify_evidence(blob, _MemberKeys(members), chain_id)
    except (EvidenceError, ValueError, TypeError, OverflowError) as exc:
        # decode_tx checked the field types; the catch-all types are defence in depth for encode_evidence
        raise TxError(f"evidence: does not prove equivocation by member {fields.get('offender')} ({exc})") from None


class EvidenceLimiter:
    """Which of the replica's equivocation reports this node turns into a tx: at most one per offender per
    `interval` seconds. One tx on chain convicts a member; the replica already reports each offender at most
    once per stable checkpoint (consensus.replica.EVIDENCE_PER_CHECKPOINT), and this caps what a member can
    make this node sign, gossip and put in blocks even while checkpoints come fast. State: one entry per
    offender, so at most one per member."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last: dict[int, float] = {}
        self.suppressed = 0

    def allow(self, offender: int) -> bool:
        now = self._clock()
        last = self._last.get(offender)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        self._last[offender] = now
        return True
