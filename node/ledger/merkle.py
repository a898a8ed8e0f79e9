"""Merkle tree over a block's tx hashes, as in RFC 9162 (Certificate Transparency v2) section 2.1.

leaf = SHA-256(0x00 || tx_hash), node = SHA-256(0x01 || left || right), the tree over n leaves splits at the
largest power of two below n, and the root of zero leaves is SHA-256(""). The 0x00/0x01 prefixes keep a
leaf from being passed off as an inner node (second-preimage attack on unprefixed trees). Inclusion proofs
are RFC 9162 audit paths and verify with the algorithm of its section 2.1.3.2.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["EMPTY_ROOT", "leaf_hash", "merkle_root", "merkle_levels", "inclusion_path", "root_from_path",
           "verify_inclusion", "MerkleProof"]

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def _level_up(level: list[bytes]) -> list[bytes]:
    # Pair neighbours; an unpaired last node moves up unchanged. Level by level this builds exactly the
    # RFC 9162 left-balanced tree (the split at the largest power of two below n).
    up = [_sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    if len(level) & 1:
        up.append(level[-1])
    return up


def merkle_levels(tx_hashes: list[bytes]) -> list[list[bytes]]:
    """All levels, leaves first, root level last ([[EMPTY_ROOT]] for no leaves)."""
    if not tx_hashes:
        return [[EMPTY_ROOT]]
    level = [_sha256(b"\x00" + h).digest() for h in tx_hashes]
    levels = [level]
    while len(level) > 1:
        level = _level_up(level)
        levels.append(level)
    return levels


def merkle_root(tx_hashes: list[bytes]) -> bytes:
    if not tx_hashes:
        return EMPTY_ROOT
    level = [_sha256(b"\x00" + h).digest() for h in tx_hashes]
    while len(level) > 1:
        level = _level_up(level)
    return level[0]


def inclusion_path(levels_or_hashes, index: int) -> list[bytes]:
    """Audit path (siblings, leaf upwards) for leaf ``index``; accepts merkle_levels() or the tx hashes."""
    levels = levels_or_hashes
    if not levels or not isinstance(levels[0], list):
        levels = merkle_levels(levels_or_hashes)
    if not 0 <= index < len(levels[0]):
        raise IndexError(f"leaf {index} outside a tree of {len(levels[0])}")
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index >>= 1
    return path


def root_from_path(tx_hash: bytes, index: int, count: int, path: list[bytes]) -> bytes | None:
    """RFC 9162 section 2.1.3.2: the root that ``path`` leads to from leaf ``tx_hash`` at ``index`` of
    ``count``, or None if the path cannot belong to a tree of that size."""
    if not 0 <= index < count:
        return None
    fn, sn = index, count - 1
    r = _sha256(b"\x00" + tx_hash).digest()
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(tx_hash: bytes, index: int, count: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``path`` prove leaf ``tx_hash`` at ``index`` of ``count`` under ``root``?"""
    computed = root_from_path(tx_hash, index, count, path)
    return computed is not None and computed == root


@dataclass(frozen=True)
class MerkleProof:
    """Where a tx sits in its block and the audit path from its leaf to the block's tx_root."""

    height: int
    index: int
    count: int
    path: tuple[bytes, ...]

    def verify(self, tx_hash: bytes, root: bytes) -> bool:
        return verify_inclusion(tx_hash, self.index, self.count, list(self.path), root)
