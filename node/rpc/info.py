"""Read methods about the node and the consortium: ``status``, ``validators``, ``member_history``, ``peers``,
``mempool``."""

from __future__ import annotations

from node.ledger.tx import tx_hash
from node.rpc.errors import INVALID_PARAMS, RpcError
from node.rpc.protocol import Caller, check_known, param


async def status(node, params: dict, caller: Caller) -> dict:
    check_known(params, set())
    return node.status()


async def validators(node, params: dict, caller: Caller) -> dict:
    """The consensus members of the current epoch (list order = replica index), which one is primary, the
    quorum, and the member sets already approved for later heights (node.ledger.epochs)."""
    check_known(params, set())
    epoch = node.epoch
    primary = node.replica.primary
    rpc = {m.name: m.rpc for m in node.genesis.members}
    later = [e for e in node.chain.state.epochs.epochs if e.start > epoch.start]
    return {
        "view": node.replica.view, "quorum": epoch.quorum, "max_faulty": epoch.f, "epoch": epoch.start,
        "consensus_chain_id": epoch.chain_id,
        "validators": [{"index": i, "name": m.name, "pubkey": m.pubkey.hex(), "peer_id": m.peer_id,
                        "rpc": rpc.get(m.name, ""), "p2p": list(m.addrs), "primary": i == primary,
                        "self": i == node.index}
                       for i, m in enumerate(epoch.members)],
        "pending": [e.to_json() for e in later],
        "proposals": proposals(node.chain.state),
        # approved PSK rotations: commitment and sealed boxes are public (`member psk-recover` reads them)
        "psk_rotations": [r.to_json() for _, r in sorted(node.chain.state.psk_rotations.items())],
    }


def proposals(state) -> list[dict]:
    """Open membership proposals: what each proposes, who approved it so far, how many approvals it needs."""
    from consensus.certificate import quorum

    need = quorum(len(state.members))
    out = []
    for vid, (t, subject, key, voters, extra) in sorted(state.votes.items()):
        item = {"id": vid.hex(), "type": t, "subject": subject, "approvals": sorted(voters), "needed": need}
        if key:
            item["subject_key"] = key.hex()
        if t == "params.changed":
            item["param"], item["value"] = subject, extra[0]
        elif t == "network.psk_rotated":
            item["psk_commit"] = key.hex()
            item["psk_boxes"] = [[n, k.hex(), b.hex()] for n, k, b in extra[0]]
        elif extra:
            item["peer_id"], item["addr"] = extra[0], extra[1]
        out.append(item)
    return out


async def member_history(node, params: dict, caller: Caller) -> dict:
    """Receipts of every applied registry tx (member and client key changes), in chain order: with
    genesis.json, what `radchain verify-receipt --history` needs to know the member set of any height
    offline (node.ledger.member_history)."""
    check_known(params, set())
    import trio

    from node.ledger.member_history import export_history, member_names

    # reads the (member, type) index of every member ever known: off the event loop
    names = member_names(node.chain.state)
    return await trio.to_thread.run_sync(export_history, node.store, node.genesis, names)


async def peers(node, params: dict, caller: Caller) -> dict:
    """The other members, whether this node holds a live connection to each, and each one's misbehaviour
    score (node.runtime.peerscore: malformed input it sent; ``blocked`` while its tx gossip is dropped)."""
    check_known(params, set())
    connected = set(node.net.connected_peers())
    members = node.epoch.members  # the current member set (node.ledger.epochs)
    scores = node.peer_scores.snapshot()
    clean = {"score": 0.0, "blocked": False, "reports": 0, "dropped": 0, "kinds": {}}
    out = [{"name": m.name, "peer_id": m.peer_id, "p2p": list(m.addrs), "connected": m.peer_id in connected,
            "misbehaviour": scores.get(m.peer_id, clean)}
           for m in members if m.peer_id != node.net.peer_id]
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
