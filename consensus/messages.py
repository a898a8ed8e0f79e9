"""Consensus wire messages: msgpack [kind, sender, body, signature], size-limited strict decoding, and the
domain-separated bytes each kind signs.

Votes sign only what they vote for, so they can be quoted in certificates: a PRE-PREPARE and a PREPARE both
sign vote_signing_bytes(view, height, digest) (the primary's pre-prepare is its prepare vote), a COMMIT signs
certificate.commit_signing_bytes, a CHECKPOINT signs checkpoint_signing_bytes. Other kinds sign their body.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

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


_packb = msgpack.packb


def _pack(obj) -> bytes:
    return _packb(obj, use_bin_type=True)


def vote_signing_bytes(chain_id: str, view: int, height: int, digest: bytes) -> bytes:
    return DOMAIN + _pack(["prepare", chain_id, view, height, digest])


def checkpoint_signing_bytes(chain_id: str, height: int, state_digest: bytes) -> bytes:
    return DOMAIN + _pack(["checkpoint", chain_id, height, state_digest])


# ---- strict field checks (each raises DecodeError) --------------------------------------------------------

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
    """A peer's list of at most `limit` items (shape only: the items are checked by validate_basic)."""
    if type(x) is not list or len(x) > limit:
        raise DecodeError("expected a bounded list")
    return x


def _fields(x, n: int) -> list:
    if type(x) is not list or len(x) != n:
        raise DecodeError(f"expected {n} fields")
    return x


def _tuple(x, limit: int) -> tuple:
    if type(x) is not tuple or len(x) > limit:
        raise DecodeError("expected a bounded sequence")
    return x


def _sig_pairs(x, n_members: int) -> tuple[tuple[int, bytes], ...]:
    """[[member, signature], ...] from the wire, as tuples (shape only: validate_basic checks the pairs)."""
    return tuple([tuple(item) if type(item) is list else item for item in _list(x, n_members)])


def _check_vote(view, height, digest) -> None:
    """The fields of a vote (PRE-PREPARE, PREPARE, COMMIT), checked inline: every vote received is checked."""
    if type(view) is not int or not 0 <= view <= MAX_INT or type(height) is not int or not 0 <= height <= MAX_INT:
        raise DecodeError("expected a non-negative integer")
    if type(digest) is not bytes or not 1 <= len(digest) <= MAX_DIGEST:
        raise DecodeError("expected bytes of bounded length")


def _check_sigs(x, n_members: int) -> None:
    for item in _tuple(x, n_members):  # inline: a VIEW-CHANGE carries up to (L + 1) * n of them
        if type(item) is not tuple or len(item) != 2:
            raise DecodeError("expected [member, signature] pairs")
        i, sig = item
        if type(i) is not int or not 0 <= i <= MAX_INT or type(sig) is not bytes or len(sig) > MAX_SIG:
            raise DecodeError("expected [member, signature] pairs")


class Limits(NamedTuple):
    """What a decoder accepts: members (signature lists), largest payload, watermark window (entry lists)."""
    n_members: int
    max_bytes: int
    window: int


Signatures = tuple[tuple[int, bytes], ...]  # (member, signature), as in a Certificate


# ---- message bodies: one type per kind ------------------------------------------------------------------
# Each body is a NamedTuple (so its wire form is the list of its fields, in order, exactly as the positional
# tuples it replaces) with the kind it belongs to (KIND), a from_wire() that turns the decoded msgpack lists
# into the typed value (shape only), and a validate_basic() that checks every field's type and bound (as
# CometBFT's ValidateBasic), raising DecodeError.

class PrePrepare(NamedTuple):
    """The primary's proposal for (view, height); payload None in retransmissions and NEW-VIEW-era re-sends
    (the receiver fetches it by digest)."""
    view: int
    height: int
    digest: bytes
    payload: bytes | None

    KIND = PREPREPARE

    def validate_basic(self, limits: Limits) -> None:
        view, height, digest, payload = self
        _check_vote(view, height, digest)
        if payload is not None:
            _bytes(payload, limits.max_bytes)


class Prepare(NamedTuple):
    view: int
    height: int
    digest: bytes

    KIND = PREPARE

    def validate_basic(self, limits: Limits) -> None:
        _check_vote(*self)


class CommitVote(NamedTuple):
    """COMMIT (named apart from actions.Commit, the delivery of a block to the node)."""
    view: int
    height: int
    digest: bytes

    KIND = COMMIT

    def validate_basic(self, limits: Limits) -> None:
        _check_vote(*self)


class Checkpoint(NamedTuple):
    height: int
    state_digest: bytes

    KIND = CHECKPOINT

    def validate_basic(self, limits: Limits) -> None:
        height, state_digest = self
        if type(height) is not int or not 0 <= height <= MAX_INT:
            raise DecodeError("expected a non-negative integer")
        if type(state_digest) is not bytes or not 1 <= len(state_digest) <= MAX_DIGEST:
            raise DecodeError("expected bytes of bounded length")


class ViewChangeEntry(NamedTuple):
    """Proof that `digest` was prepared (ENTRY_PREPARED: 2f+1 prepare votes) or committed (ENTRY_COMMITTED:
    2f+1 commits) at `height` in `view`."""
    height: int
    view: int
    digest: bytes
    kind: int
    signatures: Signatures

    def validate_basic(self, limits: Limits) -> None:
        if self.kind not in (ENTRY_PREPARED, ENTRY_COMMITTED) or type(self.kind) is not int:
            raise DecodeError("bad entry kind")
        _int(self.height), _int(self.view), _digest(self.digest)
        _check_sigs(self.signatures, limits.n_members)


class ViewChange(NamedTuple):
    """VIEW-CHANGE to `new_view`: the sender's stable checkpoint (height, state digest, 2f+1 checkpoint
    signatures; empty for the genesis checkpoint) and its best proof per height above it."""
    new_view: int
    stable_height: int
    stable_digest: bytes
    stable_proof: Signatures
    entries: tuple[ViewChangeEntry, ...]

    KIND = VIEWCHANGE

    @classmethod
    def from_wire(cls, raw, limits: Limits) -> ViewChange:
        nv, sh, sd, proof, entries = _fields(raw, 5)
        ents = tuple(ViewChangeEntry(e[0], e[1], e[2], e[3], _sig_pairs(e[4], limits.n_members))
                     for e in (_fields(x, 5) for x in _list(entries, limits.window)))
        return cls(nv, sh, sd, _sig_pairs(proof, limits.n_members), ents)

    @classmethod
    def coerce(cls, body) -> ViewChange:
        nv, sh, sd, proof, entries = body
        return cls(nv, sh, sd, proof, tuple(ViewChangeEntry(*e) for e in entries))

    def validate_basic(self, limits: Limits) -> None:
        _int(self.new_view), _int(self.stable_height), _bytes(self.stable_digest, MAX_DIGEST)
        _check_sigs(self.stable_proof, limits.n_members)
        for e in _tuple(self.entries, limits.window):
            if type(e) is not ViewChangeEntry:
                raise DecodeError("expected view-change entries")
            e.validate_basic(limits)


class Assignment(NamedTuple):
    """A NEW-VIEW's re-proposal of `digest` at `height`, signed by the new primary as its prepare vote."""
    height: int
    digest: bytes
    signature: bytes

    def validate_basic(self, limits: Limits) -> None:
        _int(self.height), _digest(self.digest), _bytes(self.signature, MAX_SIG)


class NewView(NamedTuple):
    """NEW-VIEW for `view`: the 2f+1 VIEW-CHANGEs (wire bytes, as signed by their senders) it is built from,
    and the re-proposals the plan derives from them (consensus/viewchange.py: plan_new_view)."""
    view: int
    view_changes: tuple[bytes, ...]
    assignments: tuple[Assignment, ...]

    KIND = NEWVIEW

    @classmethod
    def from_wire(cls, raw, limits: Limits) -> NewView:
        v, vcs, assigned = _fields(raw, 3)
        asg = tuple(Assignment(*_fields(a, 3)) for a in _list(assigned, limits.window))
        return cls(v, tuple(_list(vcs, limits.n_members)), asg)

    @classmethod
    def coerce(cls, body) -> NewView:
        v, vcs, assigned = body
        return cls(v, tuple(vcs), tuple(Assignment(*a) for a in assigned))

    def validate_basic(self, limits: Limits) -> None:
        _int(self.view)
        for wire in _tuple(self.view_changes, limits.n_members):
            _bytes(wire, limits.max_bytes)
        for a in _tuple(self.assignments, limits.window):
            if type(a) is not Assignment:
                raise DecodeError("expected assignments")
            a.validate_basic(limits)


class Status(NamedTuple):
    """STATUS gossip: where the sender is (catch-up, NEW-VIEW forwarding, the view ceiling)."""
    view: int
    in_view_change: bool
    last_committed: int
    stable_height: int

    KIND = STATUS

    def validate_basic(self, limits: Limits) -> None:
        view, in_view_change, last_committed, stable_height = self
        if type(in_view_change) is not bool:
            raise DecodeError("expected a bool")
        for x in (view, last_committed, stable_height):
            if type(x) is not int or not 0 <= x <= MAX_INT:
                raise DecodeError("expected a non-negative integer")


class Fetch(NamedTuple):
    height: int
    digest: bytes

    KIND = FETCH

    def validate_basic(self, limits: Limits) -> None:
        _int(self.height), _digest(self.digest)


class Payload(NamedTuple):
    """A block's payload, answering FETCH (bound by its digest, so only height and digest are signed)."""
    height: int
    digest: bytes
    payload: bytes

    KIND = PAYLOAD

    def validate_basic(self, limits: Limits) -> None:
        _int(self.height), _digest(self.digest), _bytes(self.payload, limits.max_bytes)


class Decided(NamedTuple):
    """A committed block pushed to a lagging peer, with its encoded commit certificate."""
    height: int
    payload: bytes
    certificate: bytes

    KIND = DECIDED

    def validate_basic(self, limits: Limits) -> None:
        _int(self.height), _bytes(self.payload, limits.max_bytes), _bytes(self.certificate, 1 << 16)


class Complain(NamedTuple):
    """A backup's complaint about the primary of `view` (consensus/fairness.py)."""
    view: int

    KIND = COMPLAIN

    def validate_basic(self, limits: Limits) -> None:
        _int(self.view)


Body = (PrePrepare | Prepare | CommitVote | Checkpoint | ViewChange | NewView | Status | Fetch | Payload | Decided
        | Complain)
BODY_TYPES: dict[int, type] = {cls.KIND: cls for cls in (PrePrepare, Prepare, CommitVote, Checkpoint, ViewChange,
                                                          NewView, Status, Fetch, Payload, Decided, Complain)}


_COERCE = {kind: getattr(cls, "coerce", cls._make) for kind, cls in BODY_TYPES.items()}
_FROM_WIRE = {kind: getattr(cls, "from_wire", None) for kind, cls in BODY_TYPES.items()}


def typed_body(kind: int, body) -> Body:
    """The typed body for a kind, from a typed body or a positional tuple of its fields (no validation)."""
    if type(body) is BODY_TYPES.get(kind):
        return body
    coerce = _COERCE.get(kind)
    if coerce is None:
        raise DecodeError(f"unknown message kind {kind!r}")
    return coerce(body)


_set = object.__setattr__


class Message:
    """One consensus message: kind, sender, body (typed by kind: a positional tuple given here is converted),
    signature. Immutable (decode_cached shares one instance between every replica of a process). Written out
    rather than a frozen dataclass: one is built per message signed or decoded, and the dataclass's
    __init__ + __post_init__ were two Python calls where this is one."""

    __slots__ = ("kind", "sender", "body", "sig", "raw", "memo")
    kind: int
    sender: int
    body: Body
    sig: bytes
    raw: list | None   # the body as decoded, for signing (not compared)
    memo: dict         # signing bytes, per chain id (not compared)

    def __init__(self, kind: int, sender: int, body, sig: bytes, raw: list | None = None) -> None:
        if type(body) is not BODY_TYPES.get(kind):
            body = typed_body(kind, body)
        _set(self, "kind", kind)
        _set(self, "sender", sender)
        _set(self, "body", body)
        _set(self, "sig", sig)
        _set(self, "raw", raw)
        _set(self, "memo", {})

    def __setattr__(self, name, value):
        raise AttributeError(f"Message is immutable (cannot set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"Message is immutable (cannot delete {name!r})")

    def __eq__(self, other):
        if type(other) is not Message:
            return NotImplemented
        return (self.kind, self.sender, self.body, self.sig) == (other.kind, other.sender, other.body, other.sig)

    def __hash__(self) -> int:
        return hash((self.kind, self.sender, self.body, self.sig))

    def __repr__(self) -> str:
        return f"Message(kind={self.kind!r}, sender={self.sender!r}, body={self.body!r}, sig={self.sig!r})"

    def encode(self) -> bytes:
        return encode(self.kind, self.sender, self.body, self.sig)


def signing_bytes(chain_id: str, kind: int, sender: int, body: Body, raw: list | None = None) -> bytes:
    if kind == PREPREPARE or kind == PREPARE:
        return vote_signing_bytes(chain_id, body.view, body.height, body.digest)
    if kind == COMMIT:
        return commit_signing_bytes(chain_id, body.view, body.height, body.digest)
    if kind == CHECKPOINT:
        return checkpoint_signing_bytes(chain_id, body.height, body.state_digest)
    # msgpack packs every tuple (NamedTuple bodies included) as an array, exactly as the list it was decoded
    # from: the bytes are the same whether the body came off the wire (raw) or was built here
    plain = raw if raw is not None else body
    if kind == PAYLOAD:  # the payload is bound by its digest
        plain = plain[:2]
    return DOMAIN + _pack([KIND_NAMES[kind], chain_id, sender, plain])


def encode(kind: int, sender: int, body: tuple, sig: bytes) -> bytes:
    """Wire bytes: msgpack [kind, sender, body as nested arrays, signature] (tuples pack as arrays)."""
    return _packb([kind, sender, body, sig], use_bin_type=True)


def sign(crypto, chain_id: str, kind: int, sender: int, body) -> Message:
    if type(body) is not BODY_TYPES.get(kind):
        body = typed_body(kind, body)
    return Message(kind, sender, body, crypto.sign(signing_bytes(chain_id, kind, sender, body)))


def verify(crypto, chain_id: str, msg: Message) -> bool:
    signed = msg.memo.get(chain_id)
    if signed is None:  # decode_cached shares one Message per wire message: pack its signed bytes once
        signed = msg.memo[chain_id] = signing_bytes(chain_id, msg.kind, msg.sender, msg.body, msg.raw)
    return crypto.verify(msg.sender, signed, msg.sig)


def decode_body(kind: int, raw, limits: Limits) -> Body:
    """The typed, validated body of a kind from its decoded msgpack list. Raises DecodeError only."""
    from_wire = _FROM_WIRE[kind]
    if from_wire is not None:
        body = from_wire(raw, limits)
    else:
        cls = BODY_TYPES[kind]
        body = tuple.__new__(cls, _fields(raw, len(cls._fields)))
    body.validate_basic(limits)
    return body


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
    return Message(kind, sender, decode_body(kind, body, Limits(n_members, max_bytes, window)), _bytes(sig, MAX_SIG),
                   body)


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
