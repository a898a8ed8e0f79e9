"""Resharing and dealer-free generation of the OPRF key as an on-chain message flow (tx type `oprf.dealing`).

Pure module: it reads `oprf.dealing` txs in chain order (height, position) and decides, the same way at
every node and in an offline verifier, which dealings count and what the new epoch parameters are. Only
`open_box` / `seal_box` / `make_*` touch secrets (a member's own signing key, its own share).

Kinds of `oprf.dealing` (fields beyond the common ones; every field bounded by node.ledger.tx's decoder):

    public    oprf_epoch, epoch_start, oprf_public   a member attests the EpochPublic it holds for key epoch
              `oprf_epoch`, in the member order of the governance epoch starting at `epoch_start`; recorded
              once a quorum (2f+1) of that governance epoch's members attested the same bytes.
    reshare   oprf_epoch, epoch_start, commitments, boxes   an old member re-deals its share k_i for the
              member set of governance epoch `epoch_start`: Feldman commitments (t_new points, the first must
              be its recorded K_i) and one SealedBox per new member (in that epoch's order) holding f_i(j).
    dkg       same fields, for a fresh key epoch (no old key): the dealer's first commitment is free.
    complaint oprf_epoch, epoch_start, subject   a new member says dealer `subject`'s box for it did not open
              or does not match the commitments.
    justify   oprf_epoch, epoch_start, subject, share   the dealer answers complainer `subject` by revealing
              f_i(subject) in clear; anyone checks it against the commitments. A complaint not justified in
              time excludes the dealer; a justified one is dismissed (the complainer uses the revealed share).
    ack       oprf_epoch, epoch_start, subject   a new member says dealer `subject`'s box for it opened and
              matched the commitments. A dealing counts only once a quorum (2f+1) of the new members acked it
              within its justification window, so a dealing nobody honest could open never counts. Acks also
              keep blocks coming while a round waits for its windows.

Windows are measured in the chain's agreed block time (the proposal timestamps every member checked, made
monotone here by taking the running maximum), from the dealing's block: complaints count in blocks up to
`complaint_ms` after it, justifications up to `justify_ms` (2x; genesis param `oprf_complaint_ms`, default
COMPLAINT_MS). A dealing's fate is fixed at the first block past its justification window, so fates come in
chain order: the first t qualified dealings (chain order) are final at the first block where the last of them
is decided, and every node picks the same set. (Time, not a block count: blocks come as fast as txs do, and
a joining member still syncing must get the time to open its boxes and complain.) Only the first dealing, complaint and justification of one
member for one (dealer, complainer) pair counts; everything that does not fit is ignored here and its reason
kept in `Round.ignored` (the tx itself is on chain for everyone to see).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgpack
from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

from consensus.certificate import quorum
from node.ledger import oprf
from node.ledger.oprf import EpochPublic, KeyShare, OprfError

__all__ = [
    "KINDS", "BOX_BYTES", "MAX_RESHARE_MEMBERS", "fields_from_contribution", "COMPLAINT_MS", "SKEW_FACTOR", "complaint_window", "MAX_PUBLIC_BYTES", "DealingError", "Round",
    "Outcome", "ChainView", "RecordedPublic", "seal_box", "open_box", "reshare_fields", "dkg_fields",
    "complaint_fields", "justify_fields", "ack_fields", "public_fields", "oprf_threshold",
]

KINDS = ("public", "reshare", "dkg", "complaint", "justify", "ack")
BOX_BYTES = oprf.SCALAR_BYTES + 48  # X25519 ephemeral key 32 + Poly1305 tag 16
COMPLAINT_MS = 120_000  # default complaint window; justifications get twice as long
# The window is measured in proposal timestamps, each only checked to be within max_clock_skew_ms of the
# validators' clocks: a Byzantine primary can stamp a dealing's block `skew` early and a later one `skew`
# late, eating 2 x skew of the window. complaint_ms >= SKEW_FACTOR x max_clock_skew_ms leaves honest members
# at least half of it in real time (checked at genesis load and on every vote changing the skew).
SKEW_FACTOR = 4
# A DKG round still undecided this many complaint windows after its first dealing is abandoned (its key epoch
# number is spent): one member opening rounds nobody joins cannot keep the view waiting, nor block the next.
DKG_GIVE_UP = 10
# a dealing carries t = 2f+1 commitments, at most 64 (node.ledger.tx "commitments"), and one 80-byte box per
# member in a 16 KiB tx: on-chain resharing works up to 96 members (n = 97 needs t = 65), and governance
# refuses to grow a consortium past it (node.ledger.state, member.added)
MAX_RESHARE_MEMBERS = 96
MAX_PUBLIC_BYTES = 12 * 1024  # an encoded EpochPublic of up to ~300 members (node.ledger.tx.MAX_TX_BYTES: 16 KiB)
_FIELDS = {
    "public": ({"oprf_public"}, set()),
    "reshare": ({"commitments", "boxes"}, set()),
    "dkg": ({"commitments", "boxes"}, set()),
    "complaint": ({"subject"}, set()),
    "justify": ({"subject", "share"}, set()),
    "ack": ({"subject"}, set()),
}
_PAYLOAD = {"oprf_public", "commitments", "boxes", "subject", "share"}


class DealingError(ValueError):
    """A dealing tx that does not fit the flow (wrong fields for its kind, not a member, bad box...)."""


def complaint_window(params: dict, max_clock_skew_ms: int) -> int:
    """Genesis param `oprf_complaint_ms` (default COMPLAINT_MS), refused unless it is at least SKEW_FACTOR x
    the clock skew (node.ledger.state refuses votes raising the skew past it)."""
    window = params.get("oprf_complaint_ms", COMPLAINT_MS)
    if type(window) is not int or not 0 < window <= 7 * 86_400_000:
        raise ValueError("genesis params.oprf_complaint_ms: must be 1 ms .. 7 days")
    if window < SKEW_FACTOR * max_clock_skew_ms:
        raise ValueError(f"genesis params.oprf_complaint_ms: {window} ms is under {SKEW_FACTOR} x max_clock_skew_ms "
                         f"({max_clock_skew_ms} ms): a Byzantine primary's timestamps could close it early")
    return window


def oprf_threshold(n: int) -> int:
    """t = 2f + 1 for n = 3f + 1 members (docs/PSEUDONYMS.md, "Choice of t"); 1 for a consortium of one."""
    assert n >= 1
    return 2 * ((n - 1) // 3) + 1


# ------------------------------------------------------------------------------------------ boxes


def seal_box(share: int, member_pubkey: bytes) -> bytes:
    """f(j) sealed to new member j's ed25519 member key converted to X25519 (libsodium sealed box)."""
    box = SealedBox(VerifyKey(member_pubkey).to_curve25519_public_key()).encrypt(oprf.encode_scalar(share))
    assert len(box) == BOX_BYTES
    return bytes(box)


def open_box(box: bytes, signing_key: SigningKey) -> int:
    """The scalar in a box sealed to us: DealingError if it is not ours or not a canonical scalar."""
    if type(box) is not bytes or len(box) != BOX_BYTES:
        raise DealingError(f"box: must be {BOX_BYTES} bytes")
    try:
        plain = SealedBox(signing_key.to_curve25519_private_key()).decrypt(box)
    except CryptoError:
        raise DealingError("box: does not open with this member's key") from None
    try:
        return oprf.decode_scalar(plain, "boxed share")
    except OprfError as e:
        raise DealingError(str(e)) from None


# ------------------------------------------------------------------------------------ tx fields


def _base(kind: str, oprf_epoch: int, epoch_start: int) -> dict:
    return {"type": "oprf.dealing", "oprf_kind": kind, "oprf_epoch": oprf_epoch, "epoch_start": epoch_start}


def reshare_fields(share: KeyShare, new_members: Sequence[bytes], epoch_start: int) -> tuple[dict, oprf.Contribution]:
    """An old member's dealing for the new member set (their ed25519 keys in epoch order), and what it dealt
    (kept by the dealer until the round is decided, to answer complaints)."""
    n_new = len(new_members)
    c = oprf.reshare_contribution(share, oprf_threshold(n_new), n_new)
    f = _base("reshare", share.public.epoch, epoch_start)
    f["commitments"] = list(c.commitments)
    f["boxes"] = [seal_box(s, pk) for s, pk in zip(c.shares, new_members, strict=True)]
    return f, c


def dkg_fields(dealer: int, oprf_epoch: int, members: Sequence[bytes], epoch_start: int
               ) -> tuple[dict, oprf.Contribution]:
    n = len(members)
    c = oprf.dkg_contribution(dealer, oprf_threshold(n), n)
    f = _base("dkg", oprf_epoch, epoch_start)
    f["commitments"] = list(c.commitments)
    f["boxes"] = [seal_box(s, pk) for s, pk in zip(c.shares, members, strict=True)]
    return f, c


def fields_from_contribution(kind: str, oprf_epoch: int, epoch_start: int, c: oprf.Contribution,
                             members: Sequence[bytes]) -> dict:
    """A dealing again from what was dealt (saved), its boxes sealed afresh: to re-post one that got lost."""
    assert kind in ("reshare", "dkg") and len(c.shares) == len(members)
    f = _base(kind, oprf_epoch, epoch_start)
    f["commitments"] = list(c.commitments)
    f["boxes"] = [seal_box(s, pk) for s, pk in zip(c.shares, members, strict=True)]
    return f


def complaint_fields(oprf_epoch: int, epoch_start: int, dealer: str) -> dict:
    return {**_base("complaint", oprf_epoch, epoch_start), "subject": dealer}


def justify_fields(oprf_epoch: int, epoch_start: int, complainer: str, share: int) -> dict:
    return {**_base("justify", oprf_epoch, epoch_start), "subject": complainer, "share": oprf.encode_scalar(share)}


def ack_fields(oprf_epoch: int, epoch_start: int, dealer: str) -> dict:
    return {**_base("ack", oprf_epoch, epoch_start), "subject": dealer}


def public_fields(public: EpochPublic, epoch_start: int) -> dict:
    return {**_base("public", public.epoch, epoch_start), "oprf_public": oprf.encode_epoch_public(public)}


def check_kind_fields(fields: dict) -> None:
    """The fields present are exactly the ones of the dealing's kind (the tx decoder checked each one)."""
    kind = fields.get("oprf_kind")
    if kind not in _FIELDS:
        raise DealingError(f"oprf_kind: unknown {kind!r}")
    required, optional = _FIELDS[kind]
    present = _PAYLOAD & fields.keys()
    if not required <= present or present - required - optional:
        raise DealingError(f"{kind}: needs exactly {sorted(required)}, has {sorted(present)}")


# ------------------------------------------------------------------------------------------- rounds


@dataclass
class _Dealing:
    height: int
    pos: int
    time: int  # the agreed time of its block (ms)
    dealer: str
    index: int  # the dealer's index in the old EpochPublic (reshare) or in the new set (dkg), 1-based
    commitments: tuple[bytes, ...]
    boxes: tuple[bytes, ...]
    # fixed by Round.decide once the justification window closed: True = counts, False = excluded (the
    # dealer may then deal again in this round)
    fate: bool | None = None


@dataclass(frozen=True)
class Outcome:
    """A decided round: the new public parameters and the dealings they come from (chain order)."""

    public: EpochPublic
    dealers: tuple[str, ...]
    decided_at: int  # the height at which the set became final


@dataclass
class Round:
    """One resharing (old set -> governance epoch `epoch_start`) or DKG round, fed txs in chain order.

    `old` is the recorded EpochPublic being reshared and `old_names` its members (index i = old_names[i-1]);
    for a DKG both are None. `new_members` is [(name, ed25519 key)] of the governance epoch, in its order.
    """

    oprf_epoch: int
    epoch_start: int
    new_members: tuple[tuple[str, bytes], ...]
    old: EpochPublic | None = None
    old_names: tuple[str, ...] | None = None
    complaint_ms: int = COMPLAINT_MS
    dealings: list[_Dealing] = field(default_factory=list)
    complaints: dict[tuple[str, str], int] = field(default_factory=dict)  # (dealer, complainer) -> height
    justified: dict[tuple[str, str], int] = field(default_factory=dict)  # (dealer, complainer) -> share
    acks: dict[str, set[str]] = field(default_factory=dict)  # dealer -> new members who acked its dealing
    ignored: list[tuple[int, str, str]] = field(default_factory=list)  # (height, member, why)
    outcome: Outcome | None = None
    abandoned: bool = False  # a DKG round given up (DKG_GIVE_UP): it takes nothing more and decides nothing

    def __post_init__(self) -> None:
        assert (self.old is None) == (self.old_names is None)
        assert self.old is None or len(self.old_names) == self.old.n
        self.new_names = tuple(name for name, _ in self.new_members)
        self.n_new = len(self.new_members)
        self.t_new = oprf_threshold(self.n_new)
        # how many dealings define the result: the old threshold (Lagrange needs t old shares), or for a
        # DKG the new one (t >= f + 1 dealers, so at least one honest dealer's randomness is in the key)
        self.needed = self.old.t if self.old is not None else self.t_new
        self._dealt: dict[str, _Dealing] = {}  # dealer -> its latest dealing (an excluded one may be replaced)
        self._opened: dict[tuple[str, int, int, bytes], int | None] = {}  # (member, dealing's height, pos, key)
        self._chosen: tuple[_Dealing, ...] = ()

    @property
    def kind(self) -> str:
        return "dkg" if self.old is None else "reshare"

    def _ignore(self, height: int, member: str, why: str) -> None:
        if len(self.ignored) < 1000:
            self.ignored.append((height, member, why))

    def add(self, height: int, pos: int, member: str, fields: dict, time: int) -> None:
        """One `oprf.dealing` tx of this round, in chain order (`time`: its block's agreed time). Hostile:
        anything that does not fit is ignored (with its reason), never raised, so one bad tx cannot stop it."""
        try:
            self._add(height, pos, member, fields, time)
        except (DealingError, OprfError) as e:
            self._ignore(height, member, str(e))

    def _add(self, height: int, pos: int, member: str, fields: dict, time: int) -> None:
        check_kind_fields(fields)
        kind = fields["oprf_kind"]
        if self.abandoned:
            raise DealingError("round abandoned")
        if self.outcome is not None and kind in ("reshare", "dkg"):
            raise DealingError("round already decided")
        if kind in ("reshare", "dkg"):
            if kind != self.kind:
                raise DealingError(f"a {kind} dealing in a {self.kind} round")
            self._add_dealing(height, pos, member, fields, time)
        elif kind == "complaint":
            dealer = fields["subject"]
            if member not in self.new_names:
                raise DealingError("complaint from a member outside the new set")
            d = self._dealt.get(dealer)
            if d is None:
                raise DealingError(f"complaint against {dealer!r}, who has not dealt")
            if time > d.time + self.complaint_ms:
                raise DealingError("complaint after the complaint window")
            self.complaints.setdefault((dealer, member), height)
        elif kind == "justify":
            complainer = fields["subject"]
            d = self._dealt.get(member)
            if d is None or (member, complainer) not in self.complaints:
                raise DealingError("justification without a complaint")
            if time > d.time + 2 * self.complaint_ms:
                raise DealingError("justification after the window")
            if (member, complainer) in self.justified:
                raise DealingError("second justification")
            j = self.new_names.index(complainer) + 1
            s = oprf.decode_scalar(fields["share"], "justified share")
            if not oprf.verify_contribution_share(d.commitments, j, s):
                raise DealingError("justification does not match the commitments")
            self.justified[(member, complainer)] = s
        elif kind == "ack":
            if member not in self.new_names:
                raise DealingError("ack from a member outside the new set")
            d = self._dealt.get(fields["subject"])
            if d is None:
                raise DealingError("ack for a dealer who has not dealt")
            if time > d.time + 2 * self.complaint_ms:
                raise DealingError("ack after the justification window")
            self.acks.setdefault(d.dealer, set()).add(member)
        else:
            raise DealingError(f"{kind}: not part of a round")

    def _add_dealing(self, height: int, pos: int, member: str, fields: dict, time: int) -> None:
        old = self._dealt.get(member)
        if old is not None and old.fate is not False:
            raise DealingError("second dealing from this member (only a dealing after an excluded one counts)")
        if self.old is not None:
            if member not in self.old_names:
                raise DealingError("reshare dealing from a member that holds no share of this key")
            index = self.old_names.index(member) + 1
        else:
            if member not in self.new_names:
                raise DealingError("DKG dealing from a non-member")
            index = self.new_names.index(member) + 1
        comms = tuple(fields["commitments"])
        boxes = tuple(fields["boxes"])
        if len(comms) != self.t_new:
            raise DealingError(f"{len(comms)} commitments, need t={self.t_new}")
        if len(boxes) != self.n_new:
            raise DealingError(f"{len(boxes)} boxes, need one per new member ({self.n_new})")
        if any(type(b) is not bytes or len(b) != BOX_BYTES for b in boxes):
            raise DealingError(f"boxes: must be {BOX_BYTES} bytes each")
        points = [oprf.decode_point(c, f"commitment {m}") for m, c in enumerate(comms)]
        if self.old is not None and points[0] != self.old.share_key(index):
            raise DealingError("first commitment is not the dealer's recorded public share K_i")
        d = _Dealing(height, pos, time, member, index, tuple(points), boxes)
        if old is not None:  # a fresh dealing after an excluded one: complaints and acks start over
            for pair in [p for p in self.complaints if p[0] == member]:
                del self.complaints[pair]
            for pair in [p for p in self.justified if p[0] == member]:
                del self.justified[pair]
            self.acks.pop(member, None)
        self._dealt[member] = d
        self.dealings.append(d)

    # ------------------------------------------------------------------------------ decision
    def qualified(self, d: _Dealing) -> bool:
        """Every complaint against it justified and a quorum of the new members acked it (for a dealing
        whose window is open: so far)."""
        if d.fate is not None:
            return d.fate
        if self._dealt.get(d.dealer) is not d:
            return False
        return all((d.dealer, c) in self.justified for (dealer, c) in self.complaints if dealer == d.dealer) \
            and len(self.acks.get(d.dealer, ())) >= quorum(self.n_new)

    def decide(self, height: int, time: int) -> Outcome | None:
        """The outcome once the chain has executed block `height` of agreed time `time` (called for every
        block in order): fixed from then on."""
        if self.outcome is not None:
            return self.outcome
        chosen: list[_Dealing] = []
        for d in self.dealings:
            if d.fate is None:
                if time <= d.time + 2 * self.complaint_ms:
                    return None  # this dealing's fate is open, and every later one's too
                d.fate = self.qualified(d)
            if d.fate:
                chosen.append(d)
                if len(chosen) == self.needed:
                    break
        if len(chosen) < self.needed:
            return None
        comms = {d.index: d.commitments for d in chosen}
        if self.old is not None:
            public, _ = oprf.reshare_finish(self.old, self.t_new, self.n_new, None, comms)
        else:
            public, _ = oprf.dkg_finish(self.oprf_epoch, self.t_new, self.n_new, None, comms)
        self._chosen = tuple(chosen)
        self.outcome = Outcome(public, tuple(d.dealer for d in chosen), height)
        return self.outcome

    # ------------------------------------------------------------------------------ one member's view
    def check_boxes(self, name: str, signing_key: SigningKey) -> tuple[dict[str, int], list[str]]:
        """New member `name`: (dealer -> its share for us, dealers to complain about)."""
        j = self.new_names.index(name) + 1
        good: dict[str, int] = {}
        bad: list[str] = []
        for d in self._dealt.values():
            s = self.justified.get((d.dealer, name))
            if s is None:
                # each box is opened and checked once (a node asks after every block while the round runs)
                memo = (name, d.height, d.pos, bytes(signing_key.verify_key))
                if memo not in self._opened:
                    try:
                        s = open_box(d.boxes[j - 1], signing_key)
                        self._opened[memo] = s if oprf.verify_contribution_share(d.commitments, j, s) else None
                    except DealingError:
                        self._opened[memo] = None
                s = self._opened[memo]
                if s is None:
                    bad.append(d.dealer)
                    continue
            good[d.dealer] = s
        return good, bad

    def my_share(self, name: str, signing_key: SigningKey) -> KeyShare | None:
        """This new member's share of the decided outcome (None: not decided, or we lack a chosen share)."""
        if self.outcome is None or name not in self.new_names:
            return None
        good, _ = self.check_boxes(name, signing_key)
        chosen = self._chosen
        if any(d.dealer not in good or self._dealt[d.dealer] is not d for d in chosen):
            return None
        j = self.new_names.index(name) + 1
        comms = {d.index: d.commitments for d in chosen}
        mine = {d.index: good[d.dealer] for d in chosen}
        if self.old is not None:
            public, share = oprf.reshare_finish(self.old, self.t_new, self.n_new, j, comms, mine)
        else:
            public, share = oprf.dkg_finish(self.oprf_epoch, self.t_new, self.n_new, j, comms, mine)
        assert public == self.outcome.public
        return share


# ----------------------------------------------------------------------------------- the chain's view


def _check_public_header(data: bytes, epoch: int, n: int) -> None:
    """The layout, epoch, n and t of an encoded EpochPublic, before the costly full decode."""
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, max_bin_len=oprf.POINT_BYTES, max_str_len=0,
                              max_array_len=n + 6, max_map_len=0, max_ext_len=0)
    except Exception as e:
        raise DealingError(f"public: not a valid encoding ({type(e).__name__})") from None
    if not isinstance(obj, list) or len(obj) != 6 or obj[1] != epoch or obj[3] != n \
            or not isinstance(obj[5], list) or len(obj[5]) != n:
        raise DealingError("public: epoch or member count does not match that governance epoch")


@dataclass(frozen=True)
class RecordedPublic:
    """An EpochPublic in force from `height + 1`, for the member order of governance epoch `epoch_start`."""

    public: EpochPublic
    epoch_start: int
    names: tuple[str, ...]
    height: int
    how: str  # "genesis", "attested" (a quorum posted it), "reshare" / "dkg" (derived from a decided round)


class ChainView:
    """Every `oprf.dealing` tx in chain order -> the recorded EpochPublics and the rounds.

    `members_of(epoch_start)` gives [(name, ed25519 key)] of the governance epoch starting there, or None if
    no epoch starts at that height (node.ledger.epochs). The view is what every node and an offline
    verifier derive from the chain alone. Optional rules a node always supplies (tests may leave them out):

    * `key_ok(member, signer_key)`: the tx was signed by the member's own member key (execution already
      refuses anything else: node.ledger.state; checked again here so a view fed another way agrees);
    * `epoch_at(height)`: start of the governance epoch in force at `height` (a DKG round is only for it);
    * `fixed_through(height)`: the highest height whose governance epoch no later block can change, once
      block `height` ran (node.ledger.epochs.EpochHistory.known_through): a dealing naming a later
      `epoch_start` is ignored, so a pending member set that may still be rewritten never gets one, and
      every node (live or replaying) reads the same members for every start it accepts.
    """

    def __init__(self, members_of: Callable[[int], Sequence[tuple[str, bytes]] | None],
                 complaint_ms: int = COMPLAINT_MS, *,
                 key_ok: Callable[[str, bytes | None], bool] | None = None,
                 epoch_at: Callable[[int], int] | None = None,
                 fixed_through: Callable[[int], int] | None = None) -> None:
        self.members_of = members_of
        self.complaint_ms = complaint_ms
        self.key_ok = key_ok
        self.epoch_at = epoch_at
        self.fixed_through = fixed_through
        self._voted: set[tuple[int, int, str]] = set()  # (key epoch, epoch_start, member): one attestation each
        self._decoded: dict[tuple[int, int, bytes], EpochPublic] = {}
        self.time = 0  # the running maximum of the agreed block times fed so far
        self.history: dict[int, list[RecordedPublic]] = {}  # oprf epoch -> records, oldest first
        self.rounds: dict[tuple[int, int], Round] = {}
        self._attest: dict[tuple[int, int, bytes], set[str]] = {}
        self.ignored: list[tuple[int, str, str]] = []
        self.height = 0

    def current(self, oprf_epoch: int, height: int | None = None) -> RecordedPublic | None:
        """The record in force at `height` (default: after everything fed so far)."""
        records = self.history.get(oprf_epoch, [])
        if height is None:
            return records[-1] if records else None
        found = None
        for r in records:
            if r.height < height:
                found = r
        return found

    def _ignore(self, height: int, member: str, why: str) -> None:
        if len(self.ignored) < 1000:
            self.ignored.append((height, member, why))

    def add(self, height: int, pos: int, member: str, fields: dict, time: int, signer: bytes | None = None) -> None:
        """One `oprf.dealing` tx of block `height` (agreed time `time`, signed by `signer`), in chain order;
        then `advance` once the whole block is fed."""
        assert height > self.height, "txs are fed in chain order, each block before it is advanced past"
        time = max(self.time, time)
        try:
            if self.key_ok is not None and not self.key_ok(member, signer):
                raise DealingError("not signed by the member's own member key")
            self._add(height, pos, member, fields, time)
        except (DealingError, OprfError) as e:
            self._ignore(height, member, str(e))

    def _add(self, height: int, pos: int, member: str, fields: dict, time: int) -> None:
        check_kind_fields(fields)
        kind, oe, start = fields["oprf_kind"], fields["oprf_epoch"], fields["epoch_start"]
        if self.fixed_through is not None and start > self.fixed_through(height):
            raise DealingError(f"epoch_start {start}: that governance epoch may still change at height {height}")
        members = self.members_of(start)
        if members is None:
            raise DealingError(f"epoch_start {start}: no governance epoch starts there")
        names = tuple(n for n, _ in members)
        if kind == "public":
            # cheap checks first: decoding checks the sharing's consistency (seconds for hundreds of members)
            if member not in names:
                raise DealingError("public: attested by a member outside that governance epoch")
            if (oe, start, member) in self._voted:
                raise DealingError("public: this member attested for this key epoch already")
            if self.current(oe) is not None:
                raise DealingError(f"public: key epoch {oe} is recorded already")
            newest = max([*self.history, *(e for e, _ in self.rounds)], default=0)
            if oe > newest + 1:  # a dealer deals epochs in order: this bounds the decodes to n per epoch
                raise DealingError(f"public: key epoch {oe} is not the next one ({newest + 1})")
            _check_public_header(fields["oprf_public"], oe, len(names))
            self._voted.add((oe, start, member))
            key = (oe, start, bytes(fields["oprf_public"]))
            public = self._decoded.get(key)
            if public is None:  # the same bytes are decoded once
                public = self._decoded[key] = oprf.decode_epoch_public(key[2])
            voters = self._attest.setdefault(key, set())
            voters.add(member)
            if len(voters) == quorum(len(names)) and not self._recorded(public, start):
                self._record(RecordedPublic(public, start, names, height, "attested"))
            return
        rnd = self.rounds.get((oe, start))
        if rnd is None:
            if kind in ("reshare", "dkg"):
                rnd = self._open_round(kind, oe, start, members, height)
            else:
                raise DealingError(f"{kind}: no round for key epoch {oe} / governance epoch {start}")
        rnd.add(height, pos, member, fields, time)

    def _open_round(self, kind: str, oe: int, start: int, members, height: int) -> Round:
        if kind == "reshare":
            old = self.current(oe)
            if old is None:
                raise DealingError(f"reshare of key epoch {oe}, which has no recorded public parameters")
            if old.epoch_start >= start:
                raise DealingError("reshare for a governance epoch not after the key's current one")
            rnd = Round(oe, start, tuple(members), old.public, old.names, self.complaint_ms)
        else:
            # one DKG round per key epoch, only for the next one (so no epoch can jump ahead of the others
            # and pin the tokenizer's choice), only for the member set in force when it opens
            if oe in self.history or any(e == oe for e, _ in self.rounds):
                raise DealingError(f"dkg for key epoch {oe}, which already exists or has a round")
            newest = max([*self.history, *(e for e, _ in self.rounds)], default=0)
            if oe != newest + 1:
                raise DealingError(f"dkg for key epoch {oe}: only the next one ({newest + 1}) may be generated")
            if self.epoch_at is not None and start != self.epoch_at(height):
                raise DealingError(f"dkg for governance epoch {start}, not the one in force at height {height}")
            if any(r.kind == "dkg" and r.outcome is None and not r.abandoned for r in self.rounds.values()):
                raise DealingError("another DKG round is open (until decided or abandoned)")
            rnd = Round(oe, start, tuple(members), complaint_ms=self.complaint_ms)
        self.rounds[(oe, start)] = rnd
        return rnd

    def _recorded(self, public: EpochPublic, start: int) -> bool:
        return any(r.public == public and r.epoch_start == start for r in self.history.get(public.epoch, []))

    def seed_genesis(self, public: EpochPublic, names: Sequence[str]) -> None:
        """Genesis carries a key epoch's public parameters (testnets: the dealer's), in force from height 1."""
        if self.history.get(public.epoch) or public.n != len(names):
            raise DealingError("genesis key parameters: one record per epoch, one share per genesis member")
        self._record(RecordedPublic(public, 1, tuple(names), 0, "genesis"))

    def _record(self, rec: RecordedPublic) -> None:
        self.history.setdefault(rec.public.epoch, []).append(rec)

    def pending(self) -> bool:
        """A round not yet in force (advance must see every block until none is)."""
        return any((self.current(e) is None or self.current(e).epoch_start < s) and not r.abandoned
                   for (e, s), r in self.rounds.items())

    def feeds(self, has_dealings: bool) -> bool:
        """Whether a block must be fed/advanced past (asked before feeding it): one with dealings, or any
        while a round waits. Every node, live or replaying from the first dealing, feeds the same blocks, so
        the running maximum of block times (the windows' clock) is the same everywhere."""
        return has_dealings or self.pending()

    def advance(self, height: int, time: int) -> None:
        """The chain executed block `height` of agreed time `time`: decide rounds whose windows closed."""
        assert height >= self.height
        self.time = time = max(self.time, time)
        for rnd in self.rounds.values():
            if rnd.abandoned:
                continue
            out = rnd.decide(height, time)
            if out is None and rnd.kind == "dkg" and rnd.dealings \
                    and time > rnd.dealings[0].time + DKG_GIVE_UP * rnd.complaint_ms:
                rnd.abandoned = True
                continue
            # the new shares take over at the later of: the round's decision, the governance switch (the
            # last block of the old member set); until then the old shares keep answering
            if out is None or height < max(out.decided_at, rnd.epoch_start - 1):
                continue
            now = self.current(rnd.oprf_epoch)
            if now is not None and now.epoch_start >= rnd.epoch_start:
                continue  # in force already, or overtaken by a later member set's round
            if not self._recorded(out.public, rnd.epoch_start):
                self._record(RecordedPublic(out.public, rnd.epoch_start, rnd.new_names,
                                            max(out.decided_at, rnd.epoch_start - 1), rnd.kind))
        self.height = max(self.height, height)

