"""Equivocation evidence: two validly signed, conflicting votes from one member.

Kinds: "prepare" (two pre-prepare/prepare votes for different digests at one view and height), "commit"
(two commits, same), "checkpoint" (two state digests at one height). node/ puts the bytes on chain after
verify_evidence() succeeds with the members' keys (e.g. consensus.crypto.Ed25519Crypto).
"""

from __future__ import annotations

import msgpack

from .certificate import commit_signing_bytes
from .messages import checkpoint_signing_bytes, vote_signing_bytes

KINDS = ("prepare", "commit", "checkpoint")


class EvidenceError(ValueError):
    pass


def encode_evidence(kind: str, chain_id: str, member: int, view: int, height: int,
                    a: tuple[bytes, bytes], b: tuple[bytes, bytes]) -> bytes:
    """a and b are (digest, signature); the pair is sorted so both reporters produce the same bytes."""
    first, second = sorted([a, b])
    return msgpack.packb({"kind": kind, "chain": chain_id, "member": member, "view": view, "height": height,
                          "a": list(first), "b": list(second)}, use_bin_type=True)


def decode_evidence(data: bytes) -> dict:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=256, max_str_len=256,
                              max_array_len=4, max_map_len=8)
        if type(raw) is not dict or set(raw) != {"kind", "chain", "member", "view", "height", "a", "b"}:
            raise EvidenceError("evidence fields")
        if raw["kind"] not in KINDS or type(raw["chain"]) is not str:
            raise EvidenceError("evidence kind")
        for k in ("member", "view", "height"):
            if type(raw[k]) is not int or raw[k] < 0:
                raise EvidenceError(f"evidence {k}")
        for k in ("a", "b"):
            if type(raw[k]) is not list or len(raw[k]) != 2 or not all(type(x) is bytes for x in raw[k]):
                raise EvidenceError(f"evidence {k}")
            raw[k] = tuple(raw[k])
    except EvidenceError:
        raise
    except Exception as exc:
        raise EvidenceError(f"undecodable evidence: {type(exc).__name__}") from exc
    return raw


def _signed(kind: str, chain_id: str, view: int, height: int, digest: bytes) -> bytes:
    if kind == "prepare":
        return vote_signing_bytes(chain_id, view, height, digest)
    if kind == "commit":
        return commit_signing_bytes(chain_id, view, height, digest)
    return checkpoint_signing_bytes(chain_id, height, digest)


def verify_evidence(data: bytes, crypto, chain_id: str) -> dict:
    """Return the decoded evidence if it proves equivocation by ev["member"]; raise EvidenceError otherwise."""
    ev = decode_evidence(data)
    if ev["chain"] != chain_id:
        raise EvidenceError("evidence for another chain")
    (d1, s1), (d2, s2) = ev["a"], ev["b"]
    if d1 == d2:
        raise EvidenceError("the two messages do not conflict")
    for d, s in ((d1, s1), (d2, s2)):
        if not crypto.verify(ev["member"], _signed(ev["kind"], chain_id, ev["view"], ev["height"], d), s):
            raise EvidenceError("bad signature in evidence")
    return ev
