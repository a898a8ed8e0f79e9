"""JSON views of ledger objects for RPC answers: byte strings become lowercase hex."""

from __future__ import annotations

import msgpack

from node.ledger.block import STATUS_NAMES, Block
from node.rpc.errors import INVALID_PARAMS, RpcError

_unpackb = msgpack.unpackb


def stored_tx(raw: bytes) -> tuple[dict, bytes]:
    """(fields, sig) of a tx read from this node's store or mempool.

    Those bytes passed decode_tx (canonical form, schema, signature) when they were admitted or executed,
    so reading them needs no re-checking: two msgpack unpacks, a tenth of decode_tx's cost, which matters
    when one audit_trail page renders a thousand txs.
    """
    outer = _unpackb(raw)  # [body, sig] or [body, sig, proof] (node.ledger.tx)
    return _unpackb(outer[0]), outer[1]


def fields_json(fields: dict, out: dict | None = None, omit: frozenset = frozenset()) -> dict:
    """Tx fields with byte strings (tokens, keys, digests, nonces) as hex, added to ``out`` (a new dict by
    default) in one pass, ``omit`` left out; flat, so no recursion."""
    out = {} if out is None else out
    for k, v in fields.items():
        if k in omit:
            continue
        t = type(v)
        if t is bytes:
            v = v.hex()
        elif t is list:
            v = [x.hex() if type(x) is bytes else x for x in v]
        out[k] = v
    return out


def tx_json(raw: bytes) -> dict:
    """A tx's fields, its signature and, for a tx signed in a batch, its proof (index, size, audit path)."""
    outer = _unpackb(raw)
    out = {**fields_json(_unpackb(outer[0])), "sig": outer[1].hex()}
    if len(outer) == 3:
        out["proof"] = outer[2].hex()
    return out


def block_json(block: Block, certificate: bytes | None) -> dict:
    header = block.header.to_json()
    return {"height": block.height, "hash": header.pop("hash"), "header": header,
            "txs": [h.hex() for h in block.tx_hashes],
            "statuses": [STATUS_NAMES.get(s, str(s)) for s in block.statuses],
            "certificate": certificate.hex() if certificate else None}


def hex32(value: str, name: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise RpcError(INVALID_PARAMS, f"{name} must be 64 hex digits")
    return raw
