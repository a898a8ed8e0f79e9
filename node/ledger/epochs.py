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
        self.epochs: list[Epoch] = [genesis_epoch(genesis)] + sorted(epochs or (), key=lambda e: e.start)

    def copy(self) -> EpochHistory:
        c = EpochHistory.__new__(EpochHistory)
        c.chain_id, c.interval, c.epochs = self.chain_id, self.interval, list(self.epochs)
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
