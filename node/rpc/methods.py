"""The JSON-RPC methods. Names and result shapes are the public contract (docs/RPC.md)."""

from __future__ import annotations

from node.block import STATUS_NAMES
from node.events import EventError
from node.mempool import MempoolFull
from node.rpc.errors import MEMPOOL_FULL, NOT_FOUND, REJECTED, RpcError
from node.rpc.render import block_json, hex32, tx_json
from node.rpc.server import Caller, Method, param


async def status(node, params: dict, caller: Caller) -> dict:
    return node.status()


async def submit_event(node, params: dict, caller: Caller) -> dict:
    event = param(params, "event", dict)
    try:
        raw = node.event_to_tx(event)
    except EventError as exc:
        raise RpcError(REJECTED, str(exc), {"field": exc.field}) from None
    try:
        return node.submit([raw])[0]
    except MempoolFull as exc:
        raise RpcError(MEMPOOL_FULL, f"{exc}; retry later") from None
    except ValueError as exc:
        raise RpcError(REJECTED, str(exc)) from None


async def get_tx(node, params: dict, caller: Caller) -> dict:
    tx_hash = hex32(param(params, "hash", str), "hash")
    found = node.chain.store.get_tx(tx_hash)
    if found is None:
        raw = node.mempool.get(tx_hash)
        if raw is not None:
            return {"hash": tx_hash.hex(), "status": "pending", "tx": tx_json(raw)}
        raise RpcError(NOT_FOUND, f"no tx {tx_hash.hex()} on this node (committed or pending)")
    height, index, raw = found
    block = node.chain.store.get_block(height)
    return {"hash": tx_hash.hex(), "status": "committed", "height": height, "index": index,
            "block_hash": block.hash.hex(), "outcome": STATUS_NAMES.get(block.statuses[index], "applied"),
            "tx": tx_json(raw)}


async def get_block(node, params: dict, caller: Caller) -> dict:
    store = node.chain.store
    height = param(params, "height", int, required=False, default=store.height)
    if height < 1 or height > store.height:
        raise RpcError(NOT_FOUND, f"no block at height {height}; this node's height is {store.height}")
    return block_json(store.get_block(height), store.get_certificate(height))


METHODS: dict[str, Method] = {
    "status": Method(status, write=False),
    "submit_event": Method(submit_event, write=True),
    "get_tx": Method(get_tx, write=False),
    "get_block": Method(get_block, write=False),
}

