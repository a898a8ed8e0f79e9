"""Read methods over the ledger: ``get_tx`` (with its receipt), ``get_block``, ``blocks``."""

from __future__ import annotations

from consensus.certificate import Certificate
from node.ledger.verifier import make_receipt
from node.rpc.errors import INVALID_PARAMS, NOT_FOUND, RpcError
from node.rpc.protocol import Caller, check_known, param
from node.rpc.render import block_json, hex32, tx_json
from node.rpc.submit import committed_answer

MAX_BLOCKS = 100  # per `blocks` call; page with from/to


async def get_tx(node, params: dict, caller: Caller) -> dict:
    check_known(params, {"hash", "receipt"})
    h = hex32(param(params, "hash", str), "hash")
    with_receipt = param(params, "receipt", bool, required=False, default=True)
    store = node.store
    found = store.get_tx(h)
    if found is None:
        raw = node.mempool.get(h)
        if raw is not None:
            return {"hash": h.hex(), "status": "pending", "tx": tx_json(raw)}
        admission = node.rpc.admission
        if h in admission.queued:
            return {"hash": h.hex(), "status": "pending", "checked": False}
        reason = admission.rejected.get(h)
        if reason is not None:
            return {"hash": h.hex(), "status": "rejected", "reason": reason}
        raise RpcError(NOT_FOUND, f"no tx {h.hex()} on this node (committed, pending or recently rejected)")
    height, index, raw = found
    block = store.get_block(height)
    answer = committed_answer(node, h, height)
    answer.update({"index": index, "block_hash": block.hash.hex(), "time": block.header.timestamp,
                   "tx": tx_json(raw)})
    if with_receipt:
        receipt = make_receipt(store, h)
        cert = Certificate.decode(receipt.certificate)
        members = node.chain.epoch_at(height).members  # the member set that certified this height
        answer["receipt"] = {
            "chain_id": node.genesis.chain_id, "height": height, **receipt.to_json(),
            "tx_root": block.header.tx_root.hex(), "tx_count": block.header.tx_count,
            "signers": [members[i].name for i, _ in cert.signatures if 0 <= i < len(members)],
        }
    return answer


async def get_block(node, params: dict, caller: Caller) -> dict:
    check_known(params, {"height"})
    store = node.store
    height = param(params, "height", int, required=False, default=store.height)
    if height < 1 or height > store.height:
        raise RpcError(NOT_FOUND, f"no block at height {height}; this node's height is {store.height}")
    return block_json(store.get_block(height), store.get_certificate(height))


async def blocks(node, params: dict, caller: Caller) -> dict:
    """Blocks from..to (inclusive, at most MAX_BLOCKS), oldest first, and ``next`` to continue from."""
    check_known(params, {"from", "to"})
    store = node.store
    start = param(params, "from", int)
    if start < 1:
        raise RpcError(INVALID_PARAMS, "from must be a height >= 1")
    end = param(params, "to", int, required=False, default=start + MAX_BLOCKS - 1)
    if end < start:
        raise RpcError(INVALID_PARAMS, "to must be >= from")
    end = min(end, start + MAX_BLOCKS - 1, store.height)
    out = [block_json(b, store.get_certificate(b.height)) for b in store.blocks(start, end)]
    return {"blocks": out, "height": store.height, "next": end + 1 if end < store.height else None}

