"""The OpenRPC 1.2 document of RadChain's JSON-RPC API, returned by ``rpc.discover``.

docs/openrpc.json is this document, written by ``python -m node.rpc.openrpc > docs/openrpc.json``; a test
checks that the two agree and that every method the node serves is described.
"""

from __future__ import annotations

import json
import sys

from node.ledger import intake
from node.rpc import errors as E


def _p(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "required": required, "description": description, "schema": schema}


STR = {"type": "string"}
INT = {"type": "integer", "minimum": 0}
HEX32 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
TOKEN = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
TIME = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "date-time"}]}
MODE = _p("mode", {"type": "string", "enum": ["async", "sync", "commit"], "default": "sync"},
          "async: answer once the hash is known, check after; sync: answer once checked and durably "
          "pending; commit: also wait for the block (timeout answers status pending, never an error)")
TIMEOUT = _p("timeout", {"type": "number", "exclusiveMinimum": 0, "maximum": 60, "default": 10},
             "commit mode: seconds to wait for the block")
SUBMIT_RESULT = {"name": "answer", "schema": {
    "type": "object", "required": ["hash", "status"],
    "properties": {"hash": HEX32, "tx": {**HEX32, "description": "same as hash (the first contract's name)"},
                   "status": {"enum": ["pending", "committed"]},
                   "height": INT, "outcome": {"enum": ["applied", "rejected"]},
                   "checked": {"type": "boolean"}, "timeout": {"type": "boolean"}}}}
FILTER = [
    _p("study_uid", STR, "raw Study Instance UID (tokenized by this node; needs a token)"),
    _p("study", TOKEN, "study token"),
    _p("patient_id", STR, "raw Patient ID, with issuer (needs a token)"),
    _p("issuer", STR, "Issuer of Patient ID, with patient_id"),
    _p("patient", TOKEN, "patient token"),
    _p("actor", STR, "raw user id (needs a token)"),
    _p("user", TOKEN, "user token"),
    _p("ae", STR, "AE title of the actor"),
    _p("member", STR, "submitting member (hospital) name"),
    _p("type", STR, "tx type, e.g. instances.accessed"),
    _p("since", TIME, "event time >= since (epoch ms or ISO 8601)"),
    _p("until", TIME, "event time < until"),
]
EXAMPLE_EVENT = {**intake.EXAMPLE_EVENT, "event_id": "pacs-7781", "time": "2026-11-27T10:00:00Z"}
H = "5b1f0c0d2c8e4f1a9e7d3b6a2c4e8f0a1b3d5c7e9f0a2b4c6d8e0f1a3b5c7d9e"


def _m(name: str, summary: str, params: list, result: dict, write: bool = False,
       example: tuple[dict, object] | None = None, errors: tuple[int, ...] = ()) -> dict:
    m = {"name": name, "summary": summary, "paramStructure": "by-name", "params": params, "result": result}
    if write:
        m["tags"] = [{"name": "write", "description": "needs Authorization: Bearer <token with the submit role>"}]
    if errors:
        m["errors"] = [{"code": c, "message": _ERROR_TEXT[c]} for c in errors]
    if example is not None:
        ex_params, ex_result = example
        m["examples"] = [{"name": f"{name} example",
                          "params": [{"name": k, "value": v} for k, v in ex_params.items()],
                          "result": {"name": "result", "value": ex_result}}]
    return m


_ERROR_TEXT = {
    E.UNAUTHORIZED: "missing or unknown bearer token, or it lacks the role", E.NOT_FOUND: "no such tx or block",
    E.REJECTED: "the tx or event failed a check (the message says which)", E.MEMPOOL_FULL: "retry later",
    E.INVALID_PARAMS: "a param is missing, unknown or of the wrong type",
}

METHODS = [
    _m("status", "Node, chain and consensus summary.", [],
       {"name": "status", "schema": {"type": "object"}},
       example=({}, {"node": "hosp-a", "chain_id": "radchain-testnet", "height": 42, "head": H, "view": 0,
                     "primary": "hosp-a", "peers": 3, "members": 4, "mempool": 0, "syncing": False,
                     "uptime_s": 73.2})),
    _m("submit_tx", "Submit a tx signed by a registered client key (hex of the canonical signed bytes).",
       [_p("tx", {"type": "string", "pattern": "^(0x)?[0-9a-f]+$"}, "hex of the wire bytes", True), MODE, TIMEOUT],
       SUBMIT_RESULT, write=True, errors=(E.UNAUTHORIZED, E.REJECTED, E.MEMPOOL_FULL, E.INVALID_PARAMS),
       example=({"tx": "92c4...", "mode": "commit"}, {"hash": H, "status": "committed", "height": 43,
                                                      "outcome": "applied"})),
    _m("submit_event", "Record a raw event (identifiers in clear); this node pseudonymizes and signs it.",
       [_p("event", {"type": "object"}, "raw event, docs/CONTRACTS.md 'Raw events'", True), MODE, TIMEOUT],
       SUBMIT_RESULT, write=True, errors=(E.UNAUTHORIZED, E.REJECTED, E.MEMPOOL_FULL, E.INVALID_PARAMS),
       example=({"event": EXAMPLE_EVENT, "mode": "sync"}, {"hash": H, "status": "pending"})),
    _m("get_tx", "A tx by hash: pending, rejected (with the reason) or committed with its receipt "
                 "(Merkle path + proposal header + commit certificate) for offline verification.",
       [_p("hash", HEX32, "tx hash", True), _p("receipt", {"type": "boolean", "default": True}, "include the receipt")],
       {"name": "tx", "schema": {"type": "object", "required": ["hash", "status"]}}, errors=(E.NOT_FOUND,),
       example=({"hash": H}, {"hash": H, "status": "committed", "height": 43, "outcome": "applied", "index": 0,
                              "block_hash": H, "time": 1795773600000, "tx": {"type": "instances.accessed", "...": "..."},
                              "receipt": {"chain_id": "radchain-testnet", "height": 43, "tx": "92c4...", "index": 0,
                                          "path": [], "proposal_header": "86a8...", "certificate": "84a6...",
                                          "tx_root": H, "tx_count": 1, "signers": ["hosp-a", "hosp-b", "hosp-c"]}})),
    _m("get_block", "A block (header, tx hashes, statuses, certificate); the head if no height.",
       [_p("height", INT, "block height (default: head)")],
       {"name": "block", "schema": {"type": "object"}}, errors=(E.NOT_FOUND,),
       example=({"height": 43}, {"height": 43, "hash": H, "header": {"prev_hash": H, "...": "..."}, "txs": [H],
                                 "statuses": ["applied"], "certificate": "84a6..."})),
    _m("blocks", "Blocks from..to inclusive (at most 100 per call), oldest first.",
       [_p("from", INT, "first height", True), _p("to", INT, "last height (default from+99)")],
       {"name": "page", "schema": {"type": "object", "properties": {
           "blocks": {"type": "array"}, "height": INT, "next": {"type": ["integer", "null"]}}}},
       example=({"from": 1, "to": 2}, {"blocks": [{"height": 1, "...": "..."}, {"height": 2, "...": "..."}],
                                       "height": 43, "next": 3})),
    _m("audit_trail", "Events by study, patient, actor, AE, member, type and time range, oldest first, paged.",
       FILTER + [_p("cursor", STR, "next_cursor of the previous page"),
                 _p("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size")],
       {"name": "page", "schema": {"type": "object", "properties": {
           "entries": {"type": "array"}, "next_cursor": {"type": ["string", "null"]}, "index": STR}}},
       errors=(E.UNAUTHORIZED, E.INVALID_PARAMS),
       example=({"study_uid": "1.2.840.1", "limit": 2},
                {"entries": [{"hash": H, "height": 43, "index": 0, "type": "instances.accessed", "member": "hosp-a",
                              "ts": 1795773600000, "study": "6f1d...", "patient": "a9c0...", "user": "17be...",
                              "purpose": "TREAT", "outcome": 0, "action": "R", "...": "..."}],
                 "next_cursor": None, "index": "study"})),
    _m("prior_imaging", "A patient's prior studies at every member (date, modality, body part, instance count), "
                        "newest first, and repeat studies of the same modality and body part.",
       [_p("patient_id", STR, "Patient ID (with issuer; needs an integrator token)"),
        _p("issuer", STR, "Issuer of Patient ID"), _p("patient", STR, "patient token (32 hex digits)"),
        _p("modality", STR, "DICOM Modality, e.g. CT"), _p("body_part", STR, "DICOM Body Part Examined, e.g. HEAD"),
        _p("within_days", INT, "study date at most this many days ago"),
        _p("repeat_days", INT, "repeat window of the redundancy list (default 30)"),
        _p("now", {"type": ["integer", "string"]}, "reference time (default: the node's clock)")],
       {"name": "prior", "schema": {"type": "object", "properties": {
           "patient": STR, "studies": {"type": "array"}, "repeats": {"type": "array"},
           "truncated": {"type": "boolean"}}}},
       errors=(E.UNAUTHORIZED, E.INVALID_PARAMS),
       example=({"patient_id": "PAT-1", "issuer": "HOSP-A", "modality": "CT", "within_days": 90},
                {"patient": "a9c0...", "studies": [{"member": "hosp-b", "study": "6f1d...", "date": "2026-11-02",
                                                    "modality": ["CT"], "body_part": ["HEAD"], "instances": 120,
                                                    "first_stored": 1795773600000, "last_stored": 1795773660000}],
                 "repeats": [], "truncated": False})),
    _m("utilization", "Workload over a time window: studies, instances, reads, exports, queries and transfers "
                      "per hospital, modality, weekday and hour; store-to-first-read times; repeat-imaging rate.",
       [_p("since", {"type": ["integer", "string"]}, "event time >= (default: 30 days ago)"),
        _p("until", {"type": ["integer", "string"]}, "event time < (default: now)"),
        _p("member", STR, "only this hospital"), _p("repeat_days", INT, "repeat window (default 30)")],
       {"name": "utilization", "schema": {"type": "object", "properties": {
           "by_member": {"type": "object"}, "by_modality": {"type": "object"}, "by_weekday": {"type": "object"},
           "by_hour": {"type": "object"}, "store_to_first_read": {"type": "object"},
           "repeat_rate": {"type": "number"}, "truncated": {"type": "boolean"}}}},
       errors=(E.UNAUTHORIZED, E.INVALID_PARAMS),
       example=({"since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
                {"by_member": {"hosp-a": {"studies": 12, "instances": 1480, "reads": 40, "exports": 1,
                                          "queries": 9, "transfers": 0}},
                 "by_modality": {"CT": {"studies": 7, "instances": 1200}}, "by_weekday": {"reads": [8, 9, 7, 6, 10, 0, 0]},
                 "by_hour": {"reads": [0] * 8 + [5] * 8 + [0] * 8},
                 "store_to_first_read": {"studies": 10, "min": 3.5, "median": 42.0, "p90": 180.0, "max": 900.0,
                                         "minutes": [3.5]},
                 "studies": 12, "repeat_studies": 1, "repeat_rate": 0.083, "truncated": False})),
    _m("redundancy", "Consortium-wide repeat studies: pairs of studies of the same patient token, modality and "
                     "body part dated at most within_days apart, among the studies stored in a window.",
       [_p("since", {"type": ["integer", "string"]}, "store time >= (default: 365 days ago)"),
        _p("until", {"type": ["integer", "string"]}, "store time < (default: now)"),
        _p("within_days", INT, "repeat window in days (default 30)"),
        _p("modality", STR, "only this DICOM Modality"), _p("body_part", STR, "only this Body Part Examined"),
        _p("cross_hospital", {"type": "boolean"}, "only pairs at different members (default false)")],
       {"name": "redundancy", "schema": {"type": "object", "properties": {
           "repeats": {"type": "array"}, "patients": INT, "studies": INT, "cross_hospital": INT,
           "by_kind": {"type": "object"}, "listed_all": {"type": "boolean"}, "truncated": {"type": "boolean"}}}},
       errors=(E.UNAUTHORIZED, E.INVALID_PARAMS),
       example=({"within_days": 30, "modality": "CT"},
                {"since": 1764547200000, "until": 1796083200000, "within_days": 30, "scanned": 1480,
                 "truncated": False, "patients": 310, "studies": 402, "cross_hospital": 1, "listed_all": True,
                 "by_kind": {"CT HEAD": 1},
                 "repeats": [{"patient": "a9c0...", "modality": "CT", "body_part": "HEAD", "days_apart": 6,
                              "cross_hospital": True,
                              "first": {"member": "hosp-a", "study": "6f1d...", "date": "2026-11-21"},
                              "repeat": {"member": "hosp-b", "study": "03be...", "date": "2026-11-27"}}]})),
    _m("validators", "Consensus members of the current epoch, the primary, quorum and f, approved later "
                     "member sets, open proposals and approved PSK rotations (public commitments and sealed "
                     "boxes).", [],
       {"name": "validators", "schema": {"type": "object"}},
       example=({}, {"view": 0, "quorum": 3, "max_faulty": 1, "epoch": 1, "consensus_chain_id": "radchain-test",
                     "validators": [
           {"index": 0, "name": "hosp-a", "pubkey": H, "peer_id": "12D3KooW...", "rpc": "http://10.0.0.1:26601",
            "p2p": ["/ip4/10.0.0.1/tcp/26600"], "primary": True, "self": True}], "pending": [],
                     "psk_rotations": []})),
    _m("member_history", "Receipts of every applied membership and client-key tx, in chain order: the "
                         "member set of any height, checkable offline (verify-receipt --history).", [],
       {"name": "history", "schema": {"type": "object", "required": ["chain_id", "genesis", "through", "txs"]}},
       example=({}, {"chain_id": "radchain-test", "genesis": H, "through": 120, "txs": []})),
    _m("peers", "The other members and whether this node is connected to each.", [],
       {"name": "peers", "schema": {"type": "object"}},
       example=({}, {"connected": 3, "peers": [{"name": "hosp-b", "peer_id": "12D3KooW...",
                                                 "p2p": ["/ip4/10.0.0.2/tcp/26600"], "connected": True}]})),
    _m("mempool", "Pending txs: count, limit and the oldest hashes.",
       [_p("limit", {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100}, "hashes to list")],
       {"name": "mempool", "schema": {"type": "object"}},
       example=({"limit": 1}, {"size": 1, "max": 100000, "proposable": 1, "async_queued": 0, "txs": [H]})),
    _m("pseudonym_stats", "Pseudonym (threshold OPRF) evaluations each member answered and refused per "
                          "requesting member, summed from the oprf.counts txs on chain, and this node's live "
                          "figures (unrecorded counts, tokenizer cache, key epochs and their fingerprints).", [],
       {"name": "pseudonym_stats", "schema": {"type": "object", "required": ["recorded", "local"]}},
       example=({}, {"recorded": [{"member": "hosp-b", "requester": "hosp-a", "answered": 412, "refused": 0,
                                   "records": 7, "last_ts": 1795773600000}], "complete": True,
                     "local": {"member": "hosp-a", "epoch": 1, "...": "..."}})),
    _m("rpc.discover", "This OpenRPC document.", [], {"name": "OpenRPC document", "schema": {"type": "object"}}),
]

DOCUMENT = {
    "openrpc": "1.2.6",
    "info": {
        "title": "RadChain JSON-RPC",
        "version": "1.0.0",
        "description": "JSON-RPC 2.0 over HTTP POST / (batches allowed). Every method needs "
                       "'Authorization: Bearer <token>' with a role: read for reads (unless the node sets "
                       "rpc.read_requires_token = false), submit for write methods, admin for peers. "
                       "GET /health, GET /metrics (Prometheus) and WebSocket subscriptions on /ws are "
                       "described in docs/RPC.md. Error codes: -32700 parse, -32600 invalid request, -32601 "
                       "no such method, -32602 invalid params, -32603 internal, -32001 unauthorized, "
                       "-32002 not found, -32003 rejected, -32004 mempool full, -32005 rate limited, "
                       "-32006 body too large.",
        "license": {"name": "Apache-2.0"},
    },
    "servers": [{"name": "node", "url": "http://127.0.0.1:26657/"}],
    "methods": METHODS,
}


async def discover(node, params: dict, caller) -> dict:
    return DOCUMENT


def dumps() -> str:
    return json.dumps(DOCUMENT, indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(dumps())
