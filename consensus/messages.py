"""Consensus wire messages: msgpack [kind, sender, body, signature], size-limited strict decoding, and the
domain-separated bytes each kind signs.

Votes sign only what they vote for, so they can be quoted in certificates: a PRE-PREPARE and a PREPARE both
sign vote_signing_bytes(view, height, digest) (the primary's pre-prepare is its prepare vote), a COMMIT signs
certificate.commit_signing_bytes, a CHECKPOINT signs checkpoint_signing_bytes. Other kinds sign their body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import msgpack

from .certificate import commit_signing_bytes

DOMAIN = b"radchain/consensus/v1\x00"

PREPREPARE, PREPARE, COMMIT, CHECKPOINT, VIEWCHANGE, NEWVIEW, STATUS, FETCH, PAYLOAD, DECIDED, COMPLAIN = \
    range(1, 12)
KIND_NAMES = {PREPREPARE: "preprepare", PREPARE: "prepare", COMMIT: "commit", CHECKPOINT: "checkpoint",
              VIEWCHANGE: "viewchange", NEWVIEW: "newview", STATUS: "status", FETCH: "fetch",
              PAYLOAD: "payload", DECIDED: "decided", COMPLAIN: "complain"}

ENTRY_PREPARED, ENTRY_COMMITTED = 0, 1  # a view-change entry proves "prepared" (2f+1 votes) or "committed"

MAX_INT = (1 << 63) - 1
MAX_DIGEST = 64
MAX_SIG = 128


class DecodeError(ValueError):
    pass


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def vote_signing_bytes(chain_id: str, view: int, height: int, digest: bytes) -> bytes:
    return DOMAIN + _pack(["prepare", chain_id, view, height, digest])


def checkpoint_signing_bytes(chain_id: str, height: int, state_digest: bytes) -> bytes:
    return DOMAIN + _pack(["checkpoint", chain_id, height, state_digest])


@dataclass(frozen=True, slots=True)
class Message:
    kind: int
    sender: int
    body: tuple  # decoded, type-checked fields (see _body)
    sig: bytes
    raw: list | None = field(default=None, compare=False, repr=False)  # the body as decoded, for signing
    memo: dict = field(default_factory=dict, compare=False, repr=False)  # signing bytes, per chain id

    def encode(self) -> bytes:
        return encode(self.kind, self.sender, self.body, self.sig)


def signing_bytes(chain_id: str, kind: int, sender: int, body: tuple, raw: list | None = None) -> bytes:
    if kind in (PREPREPARE, PREPARE):
        return vote_signing_bytes(chain_id, body[0], body[1], body[2])
    if kind == COMMIT:
        return commit_signing_bytes(chain_id, body[0], body[1], body[2])
    if kind == CHECKPOINT:
        return checkpoint_signing_bytes(chain_id, body[0], body[1])
    plain = raw if raw is not None else _plain(body)
    if kind == PAYLOAD:  # the payload is bound by its digest
        plain = plain[:2]
    return DOMAIN + _pack([KIND_NAMES[kind], chain_id, sender, plain])


def _plain(obj):
    if isinstance(obj, tuple | list):
        return [_plain(x) for x in obj]
    return obj


def encode(kind: int, sender: int, body: tuple, sig: bytes) -> bytes:
    return _pack([kind, sender, _plain(body), sig])


def sign(crypto, chain_id: str, kind: int, sender: int, body: tuple) -> Message:
    return Message(kind, sender, body, crypto.sign(signing_bytes(chain_id, kind, sender, body)))


def verify(crypto, chain_id: str, msg: Message) -> bool:
    signed = msg.memo.get(chain_id)
    if signed is None:  # decode_cached shares one Message per wire message: pack its signed bytes once
        signed = msg.memo[chain_id] = signing_bytes(chain_id, msg.kind, msg.sender, msg.body, msg.raw)
    return crypto.verify(msg.sender, signed, msg.sig)


# ---- strict field checks -------------------------------------------------------------------------------

def _int(x) -> int:
    if type(x) is not int or not 0 <= x <= MAX_INT:
        raise DecodeError("expected a non-negative integer")
    return x


def _bytes(x, limit: int, minimum: int = 0) -> bytes:
    if type(x) is not bytes or not minimum <= len(x) <= limit:
        raise DecodeError("expected bytes of bounded length")
    return x


def _digest(x) -> bytes:
    return _bytes(x, MAX_DIGEST, 1)


def _list(x, limit: int) -> list:
    if type(x) is not list or len(x) > limit:
        raise DecodeError("expected a bounded list")
    return x


def _fields(x, n: int) -> list:
    if type(x) is not list or len(x) != n:
        raise DecodeError(f"expected {n} fields")
    return x


def _sigs(x, n_members: int) -> tuple[tuple[int, bytes], ...]:
    out = []
    for item in _list(x, n_members):
        i, s = _fields(item, 2)
        out.append((_int(i), _bytes(s, MAX_SIG)))
    return tuple(out)


def _body(kind: int, raw, n_members: int, max_bytes: int, window: int) -> tuple:
    if kind == PREPREPARE:
        v, h, d, p = _fields(raw, 4)
        return (_int(v), _int(h), _digest(d), None if p is None else _bytes(p, max_bytes))
    if kind in (PREPARE, COMMIT):
        v, h, d = _fields(raw, 3)
        return (_int(v), _int(h), _digest(d))
    if kind == CHECKPOINT:
        h, sd = _fields(raw, 2)
        return (_int(h), _digest(sd))
    if kind == VIEWCHANGE:
        nv, sh, sd, proof, entries = _fields(raw, 5)
        ents = []
        for e in _list(entries, window):
            h, v, d, k, sigs = _fields(e, 5)
            if k not in (ENTRY_PREPARED, ENTRY_COMMITTED):
                raise DecodeError("bad entry kind")
            ents.append((_int(h), _int(v), _digest(d), k, _sigs(sigs, n_members)))
        return (_int(nv), _int(sh), _bytes(sd, MAX_DIGEST), _sigs(proof, n_members), tuple(ents))
    if kind == NEWVIEW:
        v, vcs, assigned = _fields(raw, 3)
        vc_list = tuple(_bytes(w, max_bytes) for w in _list(vcs, n_members))
        asg = []
        for a in _list(assigned, window):
            h, d, s = _fields(a, 3)
            asg.append((_int(h), _digest(d), _bytes(s, MAX_SIG)))
        return (_int(v), vc_list, tuple(asg))
    if kind == STATUS:
        v, in_vc, ld, sh = _fields(raw, 4)
        if type(in_vc) is not bool:
            raise DecodeError("expected a bool")
        return (_int(v), in_vc, _int(ld), _int(sh))
    if kind == FETCH:
        h, d = _fields(raw, 2)
        return (_int(h), _digest(d))
    if kind == PAYLOAD:
        h, d, p = _fields(raw, 3)
        return (_int(h), _digest(d), _bytes(p, max_bytes))
    if kind == DECIDED:
        h, p, c = _fields(raw, 3)
        return (_int(h), _bytes(p, max_bytes), _bytes(c, 1 << 16))
    if kind == COMPLAIN:
        (v,) = _fields(raw, 1)
        return (_int(v),)
    raise DecodeError(f"unknown message kind {kind!r}")


def decode(data: bytes, n_members: int, max_bytes: int, window: int) -> Message:
    """Parse and type-check a wire message (signature not checked). Raises DecodeError only."""
    if type(data) is not bytes or len(data) > max_bytes + 4096:
        raise DecodeError("oversized or not bytes")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes,
                              max_str_len=256, max_array_len=max(4 * window, 64), max_map_len=0,
                              max_ext_len=0)
    except Exception as exc:  # msgpack raises many types; the caller needs one
        raise DecodeError(f"undecodable: {type(exc).__name__}") from exc
    kind, sender, body, sig = _fields(raw, 4)
    if type(kind) is not int or kind not in KIND_NAMES:
        raise DecodeError("unknown kind")
    sender = _int(sender)
    if sender >= n_members:
        raise DecodeError("sender is not a member")
    return Message(kind, sender, _body(kind, body, n_members, max_bytes, window), _bytes(sig, MAX_SIG), body)


@lru_cache(maxsize=2048)
def _decode_small(data: bytes, n_members: int, max_bytes: int, window: int) -> Message | DecodeError:
    try:
        return decode(data, n_members, max_bytes, window)
    except DecodeError as exc:
        return exc


def decode_cached(data: bytes, n_members: int, max_bytes: int, window: int) -> Message:
    """decode(), memoized for small messages (votes, status): a broadcast is parsed once per process."""
    if type(data) is not bytes or len(data) > 2048:
        return decode(data, n_members, max_bytes, window)
    out = _decode_small(data, n_members, max_bytes, window)
    if isinstance(out, DecodeError):
        raise DecodeError(str(out))  # a fresh one: re-raising the cached instance would grow its traceback
    return out
