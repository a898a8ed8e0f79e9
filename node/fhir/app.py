"""HTTP side of the FHIR facade: ``/fhir/metadata``, ``/fhir/AuditEvent`` (search) and
``/fhir/AuditEvent/{id}`` (read), JSON only (``application/fhir+json``).

Behind the same gate as every read: the per-address rate limit, then a ``read``-role bearer token unless
the node's rpc.read_requires_token is false. Errors are OperationOutcome resources with 400 (a bad
parameter), 401 (no read token), 404 (no such AuditEvent) or 429 (rate limit).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.fhir.capability import capability_statement
from node.fhir.mapping import audit_event
from node.fhir.search import SearchError, parse_search, run_search
from node.ledger.block import APPLIED
from node.rpc.render import stored_tx

FHIR_JSON = "application/fhir+json"


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers, media_type=FHIR_JSON)


def outcome(status: int, code: str, text: str, headers: dict | None = None) -> Response:
    """An OperationOutcome with one issue (code from the FHIR issue-type value set)."""
    return _json({"resourceType": "OperationOutcome",
                  "issue": [{"severity": "error", "code": code, "diagnostics": text}]}, status, headers)


class FhirApp:
    def __init__(self, rpc):
        self.rpc = rpc  # node.rpc.server.JsonRpcApp: node, token store, limiter, edge settings
        self.app = Starlette(routes=[
            Route("/metadata", self.metadata, methods=["GET"]),
            Route("/AuditEvent", self.search, methods=["GET"]),
            Route("/AuditEvent/{id}", self.read, methods=["GET"]),
        ])

    def _gate(self, request: Request) -> Response | None:
        caller = self.rpc.caller(request)
        if not self.rpc.limiter.allow(caller.address):
            return outcome(429, "throttled", "rate limit exceeded; slow down and retry", {"Retry-After": "1"})
        if not self.rpc.may_read(caller):
            return outcome(401, "login", "this node requires a bearer token with the read role",
                           {"WWW-Authenticate": 'Bearer realm="radchain"'})
        return None

    @staticmethod
    def base(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}/fhir"

    async def metadata(self, request: Request) -> Response:
        refused = self._gate(request)
        return refused or _json(capability_statement(self.base(request)))

    async def read(self, request: Request) -> Response:
        refused = self._gate(request)
        if refused:
            return refused
        rid = request.path_params["id"]
        try:
            tx_hash = bytes.fromhex(rid) if len(rid) == 64 else b""
        except ValueError:
            tx_hash = b""
        store = self.rpc.node.store
        rec = store.get_tx(tx_hash) if tx_hash else None
        if rec is None or store.tx_status(tx_hash) != APPLIED:  # rejected txs record no event
            return outcome(404, "not-found", f"no AuditEvent {rid[:64]!r} on this node")
        fields, _sig = stored_tx(rec[2])
        return _json(audit_event(tx_hash, rec[0], rec[1], fields))

    async def search(self, request: Request) -> Response:
        refused = self._gate(request)
        if refused:
            return refused
        items = request.query_params.multi_items()
        try:
            search = parse_search(items)
            found, nxt = run_search(self.rpc.node.store, search)
        except SearchError as exc:
            return outcome(400, "invalid", str(exc))
        base = self.base(request)
        kept = [(k, v) for k, v in items if k != "_cursor"]
        links = [{"relation": "self", "url": f"{base}/AuditEvent?{urlencode(items)}"}]
        if nxt is not None:
            links.append({"relation": "next", "url": f"{base}/AuditEvent?{urlencode(kept + [('_cursor', nxt)])}"})
        entries = []
        for e, fields in found:
            resource = audit_event(e.tx_hash, e.height, e.index, fields)
            entries.append({"fullUrl": f"{base}/AuditEvent/{resource['id']}", "resource": resource,
                            "search": {"mode": "match"}})
        bundle = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
        if nxt is None and search.cursor is None:
            bundle["total"] = len(entries)  # the whole answer is this page: the count is exact and free
        return _json(bundle)
