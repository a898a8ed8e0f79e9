"""The simulator's own checks: quorum sizes, signature quorums and the node's state digest, computed here and
not taken from the code under test, so a planted bug in that code (make mutants) cannot weaken the oracle."""

from __future__ import annotations

import hashlib

import msgpack

from ..certificate import commit_signing_bytes
from ..messages import checkpoint_signing_bytes, vote_signing_bytes

__all__ = ["faulty", "quorum", "sigs_quorum", "vote_bytes", "commit_bytes", "checkpoint_bytes",
           "decode_certificate", "state_digest", "STATE_DIGEST"]

vote_bytes = vote_signing_bytes
commit_bytes = commit_signing_bytes
checkpoint_bytes = checkpoint_signing_bytes

# How node/ computes the checkpoint state digest it hands the replica (Executed(h, sd), StateTransferred):
#   "block_hash": node/driver.py passes block.hash; the header covers prev_hash, the proposal digest and the
#                 commit certificate's *view* (node/block.py), so two honest nodes holding certificates from
#                 different views for one block compute different digests (issue 9, defect 3).
#   "proposal":   the digest depends only on the agreed proposals (prev, proposal digest): the fix.
# This must follow node/: whoever changes node/block.py or node/driver.py changes this line with it.
STATE_DIGEST = "proposal"
MODES = ("block_hash", "proposal")


def faulty(n: int) -> int:
    return (n - 1) // 3


def quorum(n: int) -> int:
    """Smallest q with 2q - n >= f+1 (2f+1 for n = 3f+1)."""
    return (n + faulty(n)) // 2 + 1


def sigs_quorum(verify, n: int, sigs, signed: bytes) -> bool:
    """At least quorum(n) distinct members in range, every listed signature valid over `signed`."""
    seen = set()
    for item in sigs:
        if type(item) not in (tuple, list) or len(item) != 2:
            return False
        i, s = item
        if type(i) is not int or i in seen or not 0 <= i < n or not verify(i, signed, s):
            return False
        seen.add(i)
    return len(seen) >= quorum(n)


def decode_certificate(data: bytes):
    """(height, view, digest, sigs) or None; independent of consensus.certificate's decoder."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=1 << 16, max_array_len=1 << 12,
                              max_map_len=8)
        if type(raw) is not dict or set(raw) != {"height", "view", "digest", "sigs"}:
            return None
        h, v, d, sigs = raw["height"], raw["view"], raw["digest"], raw["sigs"]
        if type(h) is not int or type(v) is not int or type(d) is not bytes or type(sigs) is not list:
            return None
        return h, v, d, [tuple(x) if type(x) is list else x for x in sigs]
    except Exception:
        return None


def state_digest(prev: bytes, digest: bytes, cert_view: int, mode: str | None = None) -> bytes:
    if (mode or STATE_DIGEST) == "block_hash":
        return hashlib.sha256(b"radchain/block/v1\x00" + prev + digest + cert_view.to_bytes(8, "big")).digest()
    return hashlib.sha256(b"radchain/state\x00" + prev + digest).digest()
