"""Consensus epochs: the member set valid at each height, derived from genesis plus the membership txs.

Epoch 0 is genesis's member list (list order = replica index) from height 1. When 2f+1 members of the
current set approve adding or removing a member (node.ledger.state), the change takes effect at a well-defined
height: the first epoch boundary strictly after the approving block h, S = (h // I + 1) * I with
I = genesis param ``epoch_interval`` (16, the default checkpoint interval). Blocks up to S commit under the
old set, the first block of the new epoch is S + 1. Several changes approved before the same boundary
form one new epoch. Remaining members keep their relative order, added members are appended, so a
member's replica index only moves down when one before it is removed.

Each epoch signs under its own consensus chain id (``<chain_id>`` for epoch 0, ``<chain_id>/e<start>``
after): a vote or certificate of one epoch is never valid in another, even where member indexes
coincide, so a removed member's key (or an old quorum) cannot certify a block of a later epoch.

A member's key rotation (``member.key_rotated``: its signing key, libp2p identity or address) and a
consortium parameter approved by 2f+1 (``params.changed``: block size, clock skew, progress timeout, RPC
rate limit; VOTABLE_PARAMS) take effect the same way: a new epoch from the next boundary, with the same
members (indexes unchanged) and its own Config.

State layout (node.ledger.state): ``epoch/<start height u64>`` -> msgpack [[[name, pubkey 32, peer_id, [addr..]],
...], {param: value}], written by the block that approves the change (and rewritten when another change
joins the same pending epoch). Epoch 0 is not written: it is genesis.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

import msgpack

from consensus.certificate import max_faulty, quorum
from node.ledger.genesis import Genesis

__all__ = ["EpochMember", "Epoch", "EPOCH_PREFIX", "epoch_key", "decode_epoch_value", "encode_epoch_value",
           "switch_height", "genesis_epoch", "EpochHistory"]

EPOCH_PREFIX = b"epoch/"
_U64 = struct.Struct(">Q")
MAX_EPOCH_MEMBERS = 256  # a consortium of hospitals; bounds what a stored value may decode to
# Parameters a 2f+1 vote may set, with the range a value must fall in. Size limits stay under the
# decoders' absolute bounds (node.ledger.chain ABSOLUTE_*); epoch_interval is not votable (it places the
# boundaries themselves).
VOTABLE_PARAMS = {
    "max_block_txs": (1, 10_000),
    "max_payload_bytes": (64 * 1024, 6 * 1024 * 1024),
    "max_clock_skew_ms": (1_000, 600_000),
    "progress_timeout_ms": (500, 120_000),
    "rpc_rate_limit": (1, 1_000_000),
    "max_sign_batch": (1, 256),  # node.ledger.tx MAX_SIGN_BATCH
}


@dataclass(frozen=True)
class EpochMember:
    name: str
    pubkey: bytes
    peer_id: str = ""
    addrs: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "pubkey": self.pubkey.hex(), "peer_id": self.peer_id,
                "addrs": list(self.addrs)}


@dataclass(frozen=True)
class Epoch:
    start: int  # first height committed under this member set
    members: tuple[EpochMember, ...]
    chain_id: str  # the consensus chain id its members sign under
    params: tuple[tuple[str, int], ...] = ()  # voted parameters in force (VOTABLE_PARAMS), sorted

    def param(self, name: str, default):
        return dict(self.params).get(name, default)

    def local(self, height: int) -> int:
        """The epoch's own PBFT height of block ``height``: each epoch's replica counts from 1
        (node.runtime.epoch_replica), and its certificates state that height."""
        return height - self.start + 1

    @property
    def pubkeys(self) -> tuple[bytes, ...]:
        return tuple(m.pubkey for m in self.members)

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        return max_faulty(self.n)

    @property
    def quorum(self) -> int:
        return quorum(self.n)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def index_of(self, name: str) -> int | None:
        for i, m in enumerate(self.members):
            if m.name == name:
                return i
        return None

    def to_json(self) -> dict:
        return {"start": self.start, "chain_id": self.chain_id, "n": self.n, "f": self.f,
                "quorum": self.quorum, "members": [m.to_json() for m in self.members],
                "params": dict(self.params)}


def consensus_chain_id(chain_id: str, start: int) -> str:
    return chain_id if start <= 1 else f"{chain_id}/e{start}"


def epoch_key(start: int) -> bytes:
    return EPOCH_PREFIX + _U64.pack(start)


def encode_epoch_value(members, params=()) -> bytes:
    return msgpack.packb([[[m.name, m.pubkey, m.peer_id, list(m.addrs)] for m in members], dict(params)],
                         use_bin_type=True)


def decode_epoch_value(value: bytes) -> tuple[tuple[EpochMember, ...], tuple[tuple[str, int], ...]]:
    """A stored epoch (members, params); raises ValueError on anything this module would not have written."""
    raw_members, raw_params = msgpack.unpackb(value, raw=False, max_array_len=MAX_EPOCH_MEMBERS,
                                              max_map_len=len(VOTABLE_PARAMS), max_ext_len=0)
    params = tuple(sorted(raw_params.items()))
    if not all(k in VOTABLE_PARAMS and type(v) is int for k, v in params):
        raise ValueError("malformed epoch parameters")
    out = []
    for item in raw_members:
        name, pubkey, peer_id, addrs = item
        if not (type(name) is str and type(pubkey) is bytes and len(pubkey) == 32 and type(peer_id) is str
                and type(addrs) is list and all(type(a) is str for a in addrs)):
            raise ValueError("malformed epoch member")
        out.append(EpochMember(name, pubkey, peer_id, tuple(addrs)))
    if not out:
        raise ValueError("empty epoch")
    return tuple(out), params


def switch_height(approved_at: int, interval: int) -> int:
    """Last height of the old set for a change approved in block ``approved_at``: the first boundary after it."""
    return (approved_at // interval + 1) * interval


def genesis_epoch(genesis: Genesis) -> Epoch:
    return Epoch(1, tuple(EpochMember(m.name, m.pubkey, m.peer_id, tuple(m.p2p)) for m in genesis.members),
                 genesis.chain_id)


class EpochHistory:
    """Every epoch known so far (past, current and pending ones), by start height."""

    def __init__(self, genesis: Genesis, epochs: list[Epoch] | None = None):
        self.chain_id = genesis.chain_id
        self.interval = genesis.param("epoch_interval")
        self.psk_retire_blocks = genesis.param("psk_retire_blocks")
        self.epochs: list[Epoch] = [genesis_epoch(genesis)] + sorted(epochs or (), key=lambda e: e.start)

    def copy(self) -> EpochHistory:
        c = EpochHistory.__new__(EpochHistory)
        c.chain_id, c.interval, c.epochs = self.chain_id, self.interval, list(self.epochs)
        c.psk_retire_blocks = self.psk_retire_blocks
        return c

    def add_stored(self, start: int, value: bytes) -> None:
        members, params = decode_epoch_value(value)
        self.set(start, members, params)

    def set(self, start: int, members, params=()) -> Epoch:
        assert start > 1, "epoch 0 is genesis"
        epoch = Epoch(start, tuple(members), consensus_chain_id(self.chain_id, start), tuple(sorted(params)))
        self.epochs = [e for e in self.epochs if e.start != start] + [epoch]
        self.epochs.sort(key=lambda e: e.start)
        return epoch

    def at(self, height: int) -> Epoch:
        """The epoch whose member set certifies block ``height`` (as far as this history knows)."""
        found = self.epochs[0]
        for e in self.epochs:
            if e.start <= height:
                found = e
            else:
                break
        return found

    @property
    def latest(self) -> Epoch:
        return self.epochs[-1]

    def known_through(self, executed: int) -> int:
        """Highest height whose epoch is certain once blocks up to ``executed`` are applied: a change
        approved at a later block takes effect after the first boundary beyond it, at least two heights on."""
        return switch_height(executed + 1, self.interval)

    def all_peers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self.epochs:
            for m in e.members:
                if m.peer_id:
                    out[m.peer_id] = list(m.addrs)
        return out


# ---------------------------------------------------------------------------------------------- PSK rotation
# The consortium PSK (libp2p private network, network.pnet) rotates by ``network.psk_rotated``: the proposer
# draws a fresh 32-byte PSK and seals it to every current member (nacl SealedBox to the Curve25519 form of
# its Ed25519 member key); the tx carries the boxes and a public commitment to the PSK, so each member checks
# that its own box opens to the committed PSK before it approves. 2f+1 approvals (node.ledger.state) write
# ``psk/<start u64>`` -> msgpack [commitment, [[name, member key, box], ...], approving height, retire height],
# start being the first height after the next epoch boundary. Nodes accept {old, new} from the approving
# block on, dial with the new one once the boundary is executed, and drop the old one genesis param
# ``psk_retire_blocks`` (64) blocks later (the retire height: executed blocks from which the old key is refused).

PSK_PREFIX = b"psk/"
PSK_BYTES = 32
PSK_BOX_BYTES = PSK_BYTES + 48  # SealedBox: ephemeral public key 32 + MAC 16
_PSK_COMMIT_DOMAIN = b"radchain/psk-commit/v1\x00"


class PskBoxError(ValueError):
    """This member cannot take the PSK a rotation proposes (why: no box, does not open, wrong key)."""


@dataclass(frozen=True)
class PskRotation:
    start: int  # the first height whose block is proposed over connections under the new PSK
    commit: bytes
    boxes: tuple[tuple[str, bytes, bytes], ...]  # (member name, member key, sealed box)
    approved_at: int
    retire_old_after: int  # executed height from which the previous PSK is refused

    def to_json(self) -> dict:
        return {"start": self.start, "commit": self.commit.hex(), "approved_at": self.approved_at,
                "retire_old_after": self.retire_old_after,
                "boxes": [[n, k.hex(), b.hex()] for n, k, b in self.boxes]}


def psk_key(start: int) -> bytes:
    return PSK_PREFIX + _U64.pack(start)


def psk_retire_height(start: int, retire_blocks: int) -> int:
    """Executed height from which the PSK before a rotation starting at ``start`` is refused."""
    return start - 1 + retire_blocks


def encode_psk_value(commit: bytes, boxes, approved_at: int, retire: int) -> bytes:
    return msgpack.packb([commit, [list(b) for b in boxes], approved_at, retire], use_bin_type=True)


def decode_psk_value(start: int, value: bytes) -> PskRotation:
    """A stored rotation; raises ValueError on anything encode_psk_value would not have written."""
    try:
        commit, boxes, approved_at, retire = msgpack.unpackb(value, raw=False, max_array_len=MAX_EPOCH_MEMBERS,
                                                             max_map_len=0, max_ext_len=0)
        out = []
        for name, key, box in boxes:
            if not (type(name) is str and type(key) is bytes and len(key) == 32 and type(box) is bytes
                    and len(box) == PSK_BOX_BYTES):
                raise ValueError("malformed PSK box")
            out.append((name, key, box))
    except (TypeError, ValueError) as exc:  # msgpack's errors are ValueErrors; a wrong shape a TypeError
        raise ValueError(f"malformed PSK rotation: {exc}") from None
    if not (type(commit) is bytes and len(commit) == 32 and type(approved_at) is int and type(retire) is int):
        raise ValueError("malformed PSK rotation")
    return PskRotation(start, commit, tuple(out), approved_at, retire)


def psk_commitment(chain_id: str, psk: bytes) -> bytes:
    """Public commitment to a PSK: BLAKE2b keyed with the PSK over the chain id (reveals nothing of a random key)."""
    if len(psk) != PSK_BYTES:
        raise ValueError(f"a PSK is {PSK_BYTES} bytes")
    return hashlib.blake2b(_PSK_COMMIT_DOMAIN + chain_id.encode(), key=psk, digest_size=32).digest()


def seal_psk(psk: bytes, members: dict[str, bytes]) -> list[list]:
    """[[name, member key, SealedBox(psk) to that key], ...] for every member, sorted by name."""
    from nacl.public import SealedBox
    from nacl.signing import VerifyKey

    return [[name, key, SealedBox(VerifyKey(key).to_curve25519_public_key()).encrypt(psk)]
            for name, key in sorted(members.items())]


def open_psk_box(chain_id: str, commit: bytes, boxes, name: str, signing_key) -> bytes:
    """The PSK sealed to member ``name`` (its nacl SigningKey), checked against the commitment."""
    from nacl.exceptions import CryptoError
    from nacl.public import SealedBox

    mine = [(k, b) for n, k, b in boxes if n == name]
    if len(mine) != 1:
        raise PskBoxError(f"the rotation has no box for {name}")
    key, box = mine[0]
    if bytes(key) != bytes(signing_key.verify_key):
        raise PskBoxError(f"the box for {name} is sealed to {bytes(key).hex()[:16]}..., not to this member key")
    try:
        psk = SealedBox(signing_key.to_curve25519_private_key()).decrypt(bytes(box))
    except CryptoError:
        raise PskBoxError(f"the box for {name} does not open with this member key") from None
    if len(psk) != PSK_BYTES or not hmac.compare_digest(psk_commitment(chain_id, psk), commit):
        raise PskBoxError(f"the box for {name} opens to a key that does not match the commitment")
    return psk


def psk_schedule(base: bytes, rotations, learned: dict[bytes, bytes], executed: int
                 ) -> tuple[list[bytes], bytes, list[bytes]]:
    """(accept, prefer, missing commitments) after block ``executed``: ``base`` is the genesis PSK,
    ``rotations`` the approved PskRotations, ``learned`` commitment -> PSK this node holds. The previous key
    stays accepted until ``retire_old_after``; a rotation approved but not yet at its boundary is accepted,
    not preferred. A key this node cannot open is skipped (reported in missing; psk-recover)."""
    current, accept, missing = base, [base], []
    for r in sorted(rotations, key=lambda r: r.start):
        key = learned.get(r.commit)
        if key is None:
            missing.append(r.commit)
            continue
        if executed >= r.retire_old_after:
            current, accept = key, [key]
        elif executed >= r.start - 1:
            accept = [key, *[k for k in accept if k != key]]
            current = key
        else:
            accept = accept + [key]
    return accept[:4], current, missing
