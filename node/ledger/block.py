"""Proposal headers, payloads and block headers: their canonical encodings and hashes.

Consensus orders *payloads*; it signs the *proposal digest*::

    payload          = msgpack [proposal_header: bin, txs: [bin, ...]]
    proposal_header  = canonical msgpack {chain_id, height, proposer, timestamp, tx_count, tx_root}
    proposal_digest  = SHA-256("radchain/proposal/v1\\0" || proposal_header)

A block header is derived when the certified payload is executed, because with pipelining a proposal
cannot know its predecessor::

    block_header = canonical msgpack {chain_id, height, prev_hash, proposal_digest, proposer, state_root,
                                      timestamp, tx_count, tx_root}
    block_hash   = SHA-256("radchain/block/v2\\0" || block_header)

Everything in the header follows from what consensus agreed (the proposal) and deterministic execution;
nothing comes from the commit certificate. Honest members legitimately hold certificates from different
views or signer sets for one block, and must still hold byte-identical headers, prev_hash chains and
checkpoint digests (the node reports block_hash as the replica's checkpoint state digest). The certificate
is stored beside the block and checked against (height, proposal_digest); its view is not part of the block.

``prev_hash`` of height 1 is the genesis hash. A *compact* payload (what a primary proposes: the replicas already hold the txs from gossip) names the txs
by hash instead: ``msgpack [proposal_header: bin, tx_hashes: bin (32 bytes each, block order)]``. Its
proposal header, hence its digest and every vote and certificate over it, is the full payload's: a replica
resolves the hashes to txs (fetching those it lacks) before it validates, and the block stored and served
by block sync is the full payload.

The stored block record is
``msgpack [block_header: bin, tx_hashes: bin (32 bytes each, block order), statuses: bin (1 byte each)]``
where a status says what execution did with the tx (applied / duplicate of an earlier tx / rejected).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

__all__ = ["PROPOSAL_DOMAIN", "BLOCK_DOMAIN", "ProposalHeader", "BlockHeader", "Block", "BlockError",
           "encode_payload", "split_payload", "encode_compact_payload", "split_compact_payload", "is_compact_payload", "APPLIED", "DUPLICATE", "REJECTED", "STATUS_NAMES"]

PROPOSAL_DOMAIN = b"radchain/proposal/v1\x00"
BLOCK_DOMAIN = b"radchain/block/v2\x00"  # v2: no certificate view in the header

APPLIED, DUPLICATE, REJECTED = 0, 1, 2
STATUS_NAMES = {APPLIED: "applied", DUPLICATE: "duplicate", REJECTED: "rejected"}

_pack = msgpack.Packer(use_bin_type=True).pack
_sha256 = hashlib.sha256
_U63 = 1 << 63


class BlockError(ValueError):
    """A proposal header, payload or block record is malformed or non-canonical."""


def _decode_map(data: bytes, keys: frozenset, what: str) -> dict:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=64, max_str_len=256,
                                max_array_len=0, max_map_len=len(keys), max_ext_len=0)
    except Exception as exc:
        raise BlockError(f"{what}: undecodable ({exc.__class__.__name__}: {exc})") from None
    if type(value) is not dict or value.keys() != keys:
        raise BlockError(f"{what}: must be a map of exactly {', '.join(sorted(keys))}")
    if list(value) != sorted(value) or _pack(value) != data:
        raise BlockError(f"{what}: non-canonical encoding")
    return value


def _uint(value, what: str) -> int:
    if type(value) is not int or not 0 <= value < _U63:
        raise BlockError(f"{what}: must be a non-negative integer")
    return value


def _hash32(value, what: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise BlockError(f"{what}: must be 32 bytes")
    return value


@dataclass(frozen=True)
class ProposalHeader:
    chain_id: str
    height: int
    proposer: int
    timestamp: int
    tx_count: int
    tx_root: bytes

    _KEYS = frozenset({"chain_id", "height", "proposer", "timestamp", "tx_count", "tx_root"})

    def encode(self) -> bytes:
        return _pack({"chain_id": self.chain_id, "height": self.height, "proposer": self.proposer,
                      "timestamp": self.timestamp, "tx_count": self.tx_count, "tx_root": self.tx_root})

    def digest(self) -> bytes:
        return _sha256(PROPOSAL_DOMAIN + self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> ProposalHeader:
        m = _decode_map(data, cls._KEYS, "proposal header")
        if type(m["chain_id"]) is not str:
            raise BlockError("proposal header: chain_id must be a string")
        return cls(m["chain_id"], _uint(m["height"], "height"), _uint(m["proposer"], "proposer"),
                   _uint(m["timestamp"], "timestamp"), _uint(m["tx_count"], "tx_count"),
                   _hash32(m["tx_root"], "tx_root"))


def encode_payload(header: ProposalHeader | bytes, txs: list[bytes]) -> bytes:
    header_bytes = header if isinstance(header, bytes) else header.encode()
    return _pack([header_bytes, txs])


def split_payload(payload: bytes, max_txs: int, max_bytes: int) -> tuple[bytes, list[bytes]]:
    """payload -> (proposal header bytes, tx wire bytes); structure and limits only, txs not decoded."""
    if type(payload) is not bytes:
        raise BlockError("payload: must be bytes")
    if len(payload) > max_bytes:
        raise BlockError(f"payload: {len(payload)} bytes, limit {max_bytes}")
    try:
        value = msgpack.unpackb(payload, raw=False, max_bin_len=max_bytes, max_str_len=0,
                                max_array_len=max(max_txs, 2), max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise BlockError(f"payload: undecodable ({exc.__class__.__name__}: {exc})") from None
    if type(value) is not list or len(value) != 2 or type(value[0]) is not bytes or type(value[1]) is not list:
        raise BlockError("payload: must be [proposal_header: bin, txs: [bin, ...]]")
    header, txs = value
    if len(txs) > max_txs:
        raise BlockError(f"payload: {len(txs)} txs, limit {max_txs}")
    for tx in txs:
        if type(tx) is not bytes:
            raise BlockError("payload: every tx must be a bin")
    if _pack(value) != payload:
        raise BlockError("payload: non-canonical encoding")
    return header, txs


def encode_compact_payload(header: ProposalHeader | bytes, tx_hashes: list[bytes]) -> bytes:
    header_bytes = header if isinstance(header, bytes) else header.encode()
    return _pack([header_bytes, b"".join(tx_hashes)])


def is_compact_payload(payload: bytes) -> bool:
    """True when ``payload`` has the compact shape (its second item is a bin, not an array); reads two bytes
    past the header's length prefix only, decides nothing about validity (split_compact_payload does)."""
    if type(payload) is not bytes or len(payload) < 3 or payload[0] != 0x92:
        return False
    # [header: bin8/bin16/bin32, ...]: skip the header to the second item's type byte
    t = payload[1]
    if t == 0xC4:
        pos = 3 + payload[2]
    elif t == 0xC5 and len(payload) >= 4:
        pos = 4 + int.from_bytes(payload[2:4], "big")
    elif t == 0xC6 and len(payload) >= 6:
        pos = 6 + int.from_bytes(payload[2:6], "big")
    else:
        return False
    return pos < len(payload) and payload[pos] in (0xC4, 0xC5, 0xC6)


def split_compact_payload(payload: bytes, max_txs: int, max_bytes: int) -> tuple[bytes, list[bytes]]:
    """compact payload -> (proposal header bytes, tx hashes); structure and limits checked before the hash
    list is built (at most ``max_txs`` hashes, 32 bytes each), canonical encoding only."""
    if type(payload) is not bytes:
        raise BlockError("payload: must be bytes")
    if len(payload) > max_bytes:
        raise BlockError(f"payload: {len(payload)} bytes, limit {max_bytes}")
    try:
        value = msgpack.unpackb(payload, raw=False, max_bin_len=max(32 * max_txs, 4096), max_str_len=0,
                                max_array_len=2, max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise BlockError(f"payload: undecodable ({exc.__class__.__name__}: {exc})") from None
    if type(value) is not list or len(value) != 2 or type(value[0]) is not bytes or type(value[1]) is not bytes:
        raise BlockError("compact payload: must be [proposal_header: bin, tx_hashes: bin]")
    header, blob = value
    if len(blob) % 32:
        raise BlockError("compact payload: tx_hashes is not a whole number of 32-byte hashes")
    if len(blob) // 32 > max_txs:
        raise BlockError(f"compact payload: {len(blob) // 32} txs, limit {max_txs}")
    if _pack(value) != payload:
        raise BlockError("payload: non-canonical encoding")
    return header, [blob[i:i + 32] for i in range(0, len(blob), 32)]


@dataclass(frozen=True)
class BlockHeader:
    chain_id: str
    height: int
    prev_hash: bytes
    proposal_digest: bytes
    proposer: int
    state_root: bytes
    timestamp: int
    tx_count: int
    tx_root: bytes

    _KEYS = frozenset({"chain_id", "height", "prev_hash", "proposal_digest", "proposer", "state_root",
                       "timestamp", "tx_count", "tx_root"})

    def encode(self) -> bytes:
        return _pack({"chain_id": self.chain_id, "height": self.height, "prev_hash": self.prev_hash,
                      "proposal_digest": self.proposal_digest, "proposer": self.proposer,
                      "state_root": self.state_root, "timestamp": self.timestamp, "tx_count": self.tx_count,
                      "tx_root": self.tx_root})

    def hash(self) -> bytes:
        return _sha256(BLOCK_DOMAIN + self.encode()).digest()

    def proposal_header(self) -> ProposalHeader:
        """The certified proposal header this block was executed from (what a receipt carries)."""
        return ProposalHeader(self.chain_id, self.height, self.proposer, self.timestamp, self.tx_count,
                              self.tx_root)

    def to_json(self) -> dict:
        return {"chain_id": self.chain_id, "height": self.height, "prev_hash": self.prev_hash.hex(),
                "proposal_digest": self.proposal_digest.hex(), "proposer": self.proposer,
                "state_root": self.state_root.hex(), "timestamp": self.timestamp, "tx_count": self.tx_count,
                "tx_root": self.tx_root.hex(), "hash": self.hash().hex()}

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        m = _decode_map(data, cls._KEYS, "block header")
        if type(m["chain_id"]) is not str:
            raise BlockError("block header: chain_id must be a string")
        return cls(m["chain_id"], _uint(m["height"], "height"), _hash32(m["prev_hash"], "prev_hash"),
                   _hash32(m["proposal_digest"], "proposal_digest"), _uint(m["proposer"], "proposer"),
                   _hash32(m["state_root"], "state_root"), _uint(m["timestamp"], "timestamp"),
                   _uint(m["tx_count"], "tx_count"), _hash32(m["tx_root"], "tx_root"))


@dataclass(frozen=True)
class Block:
    """A stored block: its header, the hashes of its txs in order and what execution did with each."""

    header: BlockHeader
    tx_hashes: tuple[bytes, ...]
    statuses: bytes

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def hash(self) -> bytes:
        return self.header.hash()

    def encode(self) -> bytes:
        return _pack([self.header.encode(), b"".join(self.tx_hashes), self.statuses])

    @classmethod
    def decode(cls, data: bytes) -> Block:
        try:
            value = msgpack.unpackb(data, raw=False, max_str_len=0, max_array_len=3, max_map_len=0,
                                    max_ext_len=0)
        except Exception as exc:
            raise BlockError(f"block record: undecodable ({exc.__class__.__name__}: {exc})") from None
        if type(value) is not list or len(value) != 3 or not all(type(v) is bytes for v in value):
            raise BlockError("block record: must be [header: bin, tx_hashes: bin, statuses: bin]")
        header_bytes, hashes, statuses = value
        if _pack(value) != data:
            raise BlockError("block record: non-canonical encoding")
        header = BlockHeader.decode(header_bytes)
        if len(hashes) != 32 * header.tx_count or len(statuses) != header.tx_count:
            raise BlockError(f"block record: {len(hashes) // 32} tx hashes and {len(statuses)} statuses "
                             f"for tx_count {header.tx_count}")
        if any(s not in STATUS_NAMES for s in statuses):
            raise BlockError("block record: unknown tx status")
        return cls(header, tuple(hashes[i:i + 32] for i in range(0, len(hashes), 32)), statuses)
