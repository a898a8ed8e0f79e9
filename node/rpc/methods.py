"""The JSON-RPC methods. Names, params and result shapes are the public contract (docs/RPC.md, and the
OpenRPC document that ``rpc.discover`` returns, kept in docs/openrpc.json)."""

from __future__ import annotations

from node.rpc.audit_trail import audit_trail
from node.rpc.blocks import blocks, get_block, get_tx
from node.rpc.info import member_history, mempool, peers, status, validators
from node.rpc.openrpc import discover
from node.rpc.prior import prior_imaging, redundancy
from node.rpc.protocol import Method
from node.rpc.pseudonym import pseudonym_stats
from node.rpc.submit import event_ready, prepare_event, submit_event, submit_events, submit_tx
from node.rpc.utilization import utilization

METHODS: dict[str, Method] = {
    "status": Method(status, write=False),
    "submit_tx": Method(submit_tx, write=True),
    "submit_event": Method(submit_event, write=True, prepare=prepare_event, ready=event_ready,
                           batch=submit_events),
    "get_tx": Method(get_tx, write=False),
    "get_block": Method(get_block, write=False),
    "blocks": Method(blocks, write=False),
    "audit_trail": Method(audit_trail, write=False),
    "prior_imaging": Method(prior_imaging, write=False),
    "utilization": Method(utilization, write=False),
    "redundancy": Method(redundancy, write=False),
    "validators": Method(validators, write=False),
    "member_history": Method(member_history, write=False),
    "peers": Method(peers, write=False, role="admin"),  # the members' network addresses: operators only
    "mempool": Method(mempool, write=False),
    "pseudonym_stats": Method(pseudonym_stats, write=False),
    "rpc.discover": Method(discover, write=False),
}
