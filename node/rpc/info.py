"""Read methods about the node and the consortium: ``status``, ``validators``, ``peers``, ``mempool``."""

from __future__ import annotations

from node.ledger.tx import tx_hash
from node.rpc.errors import INVALID_PARAMS, RpcError
from node.rpc.protocol import Caller, check_known, param


async def status(node, params: dict, caller: Caller) -> dict:
    check_known(params, set())
    return node.status()


async def validators(node, params: dict, caller: Caller) -> dict:
    """The consensus members (genesis order = replica index), which one is primary, and the quorum."""
    check_known(params, set())
    from consensus.certificate import max_faulty, quorum

    members = node.genesis.members
    primary = node.replica.primary
    return {
        "view": node.replica.view, "quorum": quorum(len(members)), "max_faulty": max_faulty(len(members)),
        "validators": [{"index": i, "name": m.name, "pubkey": m.pubkey.hex(), "peer_id": m.peer_id,
                        "rpc": m.rpc, "primary": i == primary, "self": i == node.index}
                       for i, m in enumerate(members)],
    }


async def peers(node, params: dict, caller: Caller) -> dict:
    """The other members, whether this node holds a live connection to each, and each one's misbehaviour
    score (node.runtime.peerscore: malformed input it sent; ``blocked`` while its tx gossip is dropped)."""
    check_known(params, set())
    connected = set(node.net.connected_peers())
    members = node.genesis.members
    scores = node.peer_scores.snapshot()
    clean = {"score": 0.0, "blocked": False, "reports": 0, "dropped": 0, "kinds": {}}
    out = [{"name": m.name, "peer_id": m.peer_id, "p2p": list(m.p2p), "connected": m.peer_id in connected,
            "misbehaviour": scores.get(m.peer_id, clean)}
           for i, m in enumerate(members) if i != node.index]
    return {"connected": sum(p["connected"] for p in out), "peers": out}


async def mempool(node, params: dict, caller: Caller) -> dict:
    """Pending txs: how many, the limit, and the hashes of the oldest ``limit`` (default 100, max 1000)."""
    check_known(params, {"limit"})
    limit = param(params, "limit", int, required=False, default=100)
    if not 0 <= limit <= 1000:
        raise RpcError(INVALID_PARAMS, "limit must be 0..1000")
    pool = node.mempool
    oldest = pool.stale(float("inf"), limit) if limit else []  # arrival order
    hashes = [tx_hash(raw).hex() for raw in oldest]
    return {"size": len(pool), "max": pool.max_txs, "proposable": pool.available(),
            "async_queued": len(node.rpc.admission.queued), "txs": hashes}
