"""JSON views of ledger objects for RPC answers: byte strings become lowercase hex."""

from __future__ import annotations

from node.block import STATUS_NAMES, Block
from node.rpc.errors import INVALID_PARAMS, RpcError
from node.tx import decode_tx


def jsonable(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def tx_json(raw: bytes) -> dict:
    tx = decode_tx(raw, verify=False)  # stored and mempool txs were verified on admission
    return {**jsonable(tx.fields), "sig": tx.sig.hex()}


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
