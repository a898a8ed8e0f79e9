"""HTTP edge of the node: JSON-RPC 2.0 framing, auth, body and rate limits, /health, /metrics and /ws.

Auth (node.rpc.auth): every method needs a role (read, submit or admin) carried by the bearer token; reads
too unless rpc.read_requires_token is false. Before any route, _Edge refuses a Host or Origin that is not
this node's (DNS rebinding) and a WebSocket upgrade without a read token. A request body must arrive
whole within rpc.body_timeout; a client that hangs up mid-request is counted, not logged as a traceback.
Connection caps live in node.rpc.http, which serves this app.

Methods live in node.rpc.methods; WebSocket subscriptions in node.rpc.subscriptions; the Prometheus
exposition in node.rpc.metrics. Every failure reaches the caller as a JSON-RPC error with a code and a
message; nothing a client sends can stop the node.

A method handler returns its result, or ``Later(wait)`` when the answer needs waiting (commit-mode
submits). In a batch every call is admitted first, in request order, then all waits run concurrently: a
batch of 100 commit-mode submits lands in one or two blocks instead of one block per call.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from node.rpc.auth import (
    ADMIN,
    READ,
    SUBMIT,
    CountedLog,
    Grant,
    TokenStore,
    client_address,
    host_allowed,
    origin_allowed,
)
from node.rpc.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RATE_LIMITED,
    TIMEOUT,
    TOO_LARGE,
    UNAUTHORIZED,
    RpcError,
)
from node.rpc.protocol import Caller, Later, Method, dumps, let_consensus_in, loads

log = logging.getLogger("radchain.rpc")
# Where node.explorer is mounted: its own forms post back to this node, so Origin is checked as same-origin.
EXPLORER_PREFIX = "/explorer"

# A batch is at most this many calls (each costs one rate-limit token). Ethereum clients cap batches the
# same way (geth: 1000 items by default).
MAX_BATCH = 1000


class JSONResponse(_StarletteJSON):
    """Every JSON-RPC answer: encoded once, by orjson (node.rpc.protocol.dumps), straight to the body bytes.
    Starlette's own runs json.dumps and then encodes the str to UTF-8, a second copy of a large page."""

    def render(self, content) -> bytes:
        return dumps(content)


class TokenBucket:
    """Per-address rate limit: `rate` requests per second with bursts up to `rate`.

    At most `max_keys` addresses are remembered, least recently seen forgotten first: a flood of new
    addresses costs each of them a fresh bucket, never everybody's state at once (a global clear would let a
    client that is being limited start over by making the node see 10,000 other addresses).
    """

    def __init__(self, rate: float, max_keys: int = 10_000):
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        allowed = tokens >= cost
        self._buckets[key] = (tokens - cost if allowed else tokens, now)  # (re)inserted as the newest
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class _Started:
    """A call admitted by _start whose answer is still to be awaited."""
    rid: object
    notification: bool
    method: str
    later: Later


class JsonRpcApp:
    def __init__(self, node, methods: dict[str, Method], tokens: TokenStore | dict[str, str],
                 read_requires_token: bool, max_body_bytes: int, rate_limit: float,
                 extra_routes: list | None = None, *, edge=None, mounts: tuple = ()):
        """`tokens`: the node's TokenStore, or {name: token} (each with read and submit) in tests and
        benchmarks. `edge`: the [rpc] settings (node.runtime.settings.RpcConfig) for Host/Origin, proxies, body
        deadline and limiter size; defaults apply without it. `mounts`: factories `f(rpc) -> Mount` for the
        apps served beside the RPC (the node passes the explorer's and the FHIR facade's)."""
        from node.rpc.metrics import Metrics
        from node.rpc.settings import RpcConfig
        from node.rpc.submit import Admission
        from node.rpc.subscriptions import Subscriptions

        self.node = node
        self.methods = methods
        self._ready_failed: set[Method] = set()  # methods whose Method.ready raised (logged once each)
        self.tokens = tokens if isinstance(tokens, TokenStore) else TokenStore(dict(tokens))
        self.read_requires_token = read_requires_token
        self.max_body_bytes = max_body_bytes
        self.edge = edge if edge is not None else RpcConfig()
        self.body_timeout = self.edge.body_timeout
        self.limiter = TokenBucket(rate_limit, self.edge.rate_limit_addresses)
        self.disconnects = CountedLog(log, "clients hung up before their request was read")
        self.slow_bodies = CountedLog(log, "request bodies cut at the body deadline", level=logging.WARNING)
        self.refused_edge = CountedLog(log, "requests refused: Host or Origin not allowed, or no read token for /ws",
                                       level=logging.WARNING)
        self.metrics = Metrics(node, set(methods))
        self.admission = Admission(node, self.metrics)
        self.subscriptions = Subscriptions(self)
        routes = [Route("/", self.handle_http, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                  WebSocketRoute("/ws", self.subscriptions.endpoint),
                  *(mount(self) for mount in mounts)]
        self.app = _Edge(self, Starlette(routes=routes + (extra_routes or []), lifespan=self._lifespan))

    @asynccontextmanager
    async def _lifespan(self, app):
        # Tasks the RPC server owns (async-mode admission) live exactly as long as the server.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.admission.run)
            yield
            nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ node hooks
    def on_commit(self, block) -> None:
        """Called by the runtime once per executed block (consensus or sync)."""
        self.metrics.on_commit(block)
        self.subscriptions.on_commit(block)

    # ------------------------------------------------------------------ auth
    def grant(self, headers, query_token: str | None = None) -> Grant | None:
        header = headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            presented = header[7:].strip()
        elif query_token:  # browsers cannot set headers on WebSocket upgrades
            presented = query_token
        else:
            return None
        return self.tokens.lookup(presented)

    def integrator(self, headers, query_token: str | None = None) -> str | None:
        grant = self.grant(headers, query_token)
        return grant.name if grant else None

    def address(self, peer: str, headers) -> str:
        return client_address(peer, headers.get("x-forwarded-for"), self.edge.trusted_proxies)

    def caller(self, conn, query_token: str | None = None) -> Caller:
        """Who is calling over `conn` (a Starlette Request or WebSocket)."""
        grant = self.grant(conn.headers, query_token)
        address = self.address(conn.client.host if conn.client else "?", conn.headers)
        return Caller(grant.name if grant else None, address, grant.roles if grant else frozenset())

    def may_read(self, caller: Caller) -> bool:
        return READ in caller.roles or not self.read_requires_token

    # ------------------------------------------------------------------ plain HTTP
    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")  # liveness only: nothing about the chain, the peers or the callers

    async def metrics_endpoint(self, request: Request) -> Response:
        caller = self.caller(request)
        if not self.may_read(caller):
            return PlainTextResponse("this node requires a read token for /metrics\n", status_code=401)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RpcError(TOO_LARGE, f"request body over {self.max_body_bytes} bytes")
        chunks, size = [], 0
        # The whole body within body_timeout: a client trickling a byte every few seconds would otherwise
        # hold its connection (and a file descriptor) for as long as it likes.
        with trio.move_on_after(self.body_timeout) as deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise RpcError(TOO_LARGE, f"request body over {self.max_body_bytes} bytes")
                chunks.append(chunk)
        if deadline.cancelled_caught:
            self.slow_bodies.count()
            raise RpcError(TIMEOUT, f"request body not received within {self.body_timeout:g} s")
        return b"".join(chunks)

    async def handle_http(self, request: Request) -> Response:
        address = self.address(request.client.host if request.client else "?", request.headers)
        try:
            try:
                body = await self._read_body(request)
            except ClientDisconnect:
                self.disconnects.count()
                return Response(status_code=400)  # nobody is listening; hypercorn drops it
            try:
                payload = loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise RpcError(PARSE_ERROR, f"body is not JSON: {exc}") from None
            cost = len(payload) if isinstance(payload, list) and payload else 1
            if not self.limiter.allow(address, cost):
                raise RpcError(RATE_LIMITED, "rate limit exceeded; slow down and retry")
        except RpcError as err:
            self.metrics.error(err.code)
            status = {TOO_LARGE: 413, RATE_LIMITED: 429, TIMEOUT: 408}.get(err.code, 200)
            if err.code == RATE_LIMITED:
                err.data = {"retry_after": 1.0}
            headers = {"Retry-After": "1"} if err.code == RATE_LIMITED else None
            if err.code in (TOO_LARGE, TIMEOUT):
                headers = {"Connection": "close"}  # the rest of the body is never read: end the connection
            return JSONResponse(_error(None, err), status_code=status, headers=headers)
        caller = self.caller(request)
        if isinstance(payload, list):
            if not payload:
                return JSONResponse(_error(None, RpcError(INVALID_REQUEST, "empty batch")))
            if len(payload) > MAX_BATCH:
                return JSONResponse(_error(None, RpcError(INVALID_REQUEST, f"batch over {MAX_BATCH} calls")))
            replies = await self.run_batch(payload, caller)
            replies = [r for r in replies if r is not None]
            return _busy_response(replies, replies) or (JSONResponse(replies) if replies else Response(status_code=204))
        reply = await self.call(payload, caller)
        if reply is None:
            return Response(status_code=204)
        return _busy_response(reply, [reply]) or JSONResponse(reply)

    # ------------------------------------------------------------------ JSON-RPC dispatch
    async def call(self, request, caller: Caller) -> dict | None:
        started = await self._start(request, caller)
        return await self._finish(started) if isinstance(started, _Started) else started

    async def run_batch(self, requests: list, caller: Caller) -> list:
        replies: list = []
        await self._prepare(requests, caller)
        worked_since = time.perf_counter()
        since_yield = 0
        i = 0
        while i < len(requests):
            run = self._batch_run(requests, i, caller)
            if len(run) > 1:  # consecutive calls to a Method.batch method: one call of it, in their place
                replies += await self._run_together(requests[i:i + len(run)], run[0], caller)
            else:
                replies.append(await self._start(requests[i], caller))
            i += max(1, len(run))
            since_yield += max(1, len(run))
            if since_yield >= 16:
                worked_since = await let_consensus_in(self.node, worked_since)
                since_yield = 0
        waiting = [i for i, r in enumerate(replies) if isinstance(r, _Started)]
        if waiting:
            async def finish(i: int) -> None:
                replies[i] = await self._finish(replies[i])

            async with trio.open_nursery() as nursery:
                for i in waiting:
                    nursery.start_soon(finish, i)
        return replies

    def _batch_run(self, requests: list, start: int, caller: Caller) -> list[str]:
        """The method name of each call of the run of well-formed, authorised calls to one method with a
        Method.batch that starts at ``start`` (empty if that call is not one). Calls of other methods in
        between end a run, so a batch's calls still take effect in their order."""
        run: list[str] = []
        for item in requests[start:]:
            if not isinstance(item, dict) or item.get("jsonrpc") != "2.0" or not _valid_id(item.get("id")):
                break
            name = item.get("method")
            method = self.methods.get(name) if isinstance(name, str) else None
            if method is None or method.batch is None or not isinstance(item.get("params", {}), dict):
                break
            if run and name != run[0]:
                break
            try:
                self._authorize(method, caller)
            except RpcError:
                break  # _start says why
            run.append(name)
        return run

    async def _run_together(self, calls: list[dict], name: str, caller: Caller) -> list:
        """The replies of ``calls`` (all to ``name``) from one call of its Method.batch."""
        method = self.methods[name]
        for _ in calls:
            self.metrics.request(name)
        try:
            outcomes = await method.batch(self.node, [call.get("params", {}) for call in calls], caller)
            if len(outcomes) != len(calls):
                raise AssertionError(f"{name}: {len(outcomes)} outcomes for {len(calls)} calls")
        except Exception:  # a bug must not take the node down; every call of the run is told
            log.exception("rpc method %s failed for a batch", name)
            outcomes = [RpcError(INTERNAL_ERROR, "internal error")] * len(calls)
        return [self._reply(call, name, outcome) for call, outcome in zip(calls, outcomes, strict=True)]

    def _reply(self, request: dict, name: str, outcome):
        """A call's reply from its handler's outcome (a result, a Later or an RpcError)."""
        rid, is_notification = request.get("id"), "id" not in request
        if isinstance(outcome, RpcError):
            self.metrics.error(outcome.code)
            return None if is_notification else _error(rid, outcome)
        if isinstance(outcome, Later):
            return _Started(rid, is_notification, name, outcome)
        return None if is_notification else {"jsonrpc": "2.0", "id": rid, "result": outcome}

    async def _prepare(self, requests: list, caller: Caller) -> None:
        prepared = []
        for item in requests:
            name = item.get("method") if isinstance(item, dict) else None
            method = self.methods.get(name) if isinstance(name, str) else None
            if method is not None and method.prepare is not None and isinstance(item.get("params"), dict):
                try:
                    self._authorize(method, caller)
                except RpcError:
                    continue  # the call itself will say so
                if method.ready is not None and self._ready(method, item["params"]):
                    continue  # nothing to warm up: no task for it
                prepared.append((method.prepare, item["params"]))
        if len(prepared) > 1:
            async with trio.open_nursery() as nursery:
                for prepare, params in prepared:
                    nursery.start_soon(prepare, self.node, params)

    def _ready(self, method: Method, params: dict) -> bool:
        try:
            return bool(method.ready(self.node, params))
        except Exception:  # a bug in the check only costs the warm-up task it would have saved
            if method not in self._ready_failed:  # once: it would fail for every call of every batch
                self._ready_failed.add(method)
                log.exception("rpc: a method's warm-up check failed (warming up every call instead)")
            return False

    async def _start(self, request, caller: Caller):
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
                request.get("method"), str):
            rid = request.get("id") if isinstance(request, dict) else None
            self.metrics.error(INVALID_REQUEST)
            return _error(rid if _valid_id(rid) else None,
                          RpcError(INVALID_REQUEST, 'a call needs "jsonrpc": "2.0" and a string "method"'))
        rid = request.get("id")
        if not _valid_id(rid):
            self.metrics.error(INVALID_REQUEST)
            return _error(None, RpcError(INVALID_REQUEST, "id must be a string, a number or null"))
        name = request["method"]
        try:
            method = self.methods.get(name)
            self.metrics.request(name)
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"no method {name[:64]!r}; rpc.discover lists them")
            self._authorize(method, caller)
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object (by-name parameters)")
            outcome = await method.handler(self.node, params, caller)
        except RpcError as err:
            outcome = err
        except Exception:  # a bug in a handler must not take the node down; the log keeps the trace
            log.exception("rpc method %s failed", name)
            outcome = RpcError(INTERNAL_ERROR, "internal error")
        return self._reply(request, name, outcome)

    def _authorize(self, method: Method, caller: Caller) -> None:
        needs = method.needs
        if needs == READ and self.may_read(caller):
            return
        if needs in caller.roles:
            return
        if caller.integrator is None:
            raise RpcError(UNAUTHORIZED, f"this method needs 'Authorization: Bearer <token>' with the {needs} role "
                                         "(radchain token add)")
        raise RpcError(UNAUTHORIZED, f"token {caller.integrator!r} lacks the {needs} role this method needs")

    async def _finish(self, started: _Started) -> dict | None:
        try:
            result = await started.later.wait()
        except RpcError as err:
            self.metrics.error(err.code)
            return None if started.notification else _error(started.rid, err)
        except Exception:
            log.exception("rpc method %s failed while waiting", started.method)
            self.metrics.error(INTERNAL_ERROR)
            return None if started.notification else _error(started.rid, RpcError(INTERNAL_ERROR, "internal error"))
        return None if started.notification else {"jsonrpc": "2.0", "id": started.rid, "result": result}


def _retry_after(reply) -> float | None:
    err = reply.get("error") if isinstance(reply, dict) else None
    data = err.get("data") if isinstance(err, dict) else None
    value = data.get("retry_after") if isinstance(data, dict) else None
    return value if isinstance(value, (int, float)) else None


def _busy_response(body, replies: list) -> Response | None:
    """HTTP 429 with Retry-After when every answer is a retry-later refusal (a plain HTTP client, or a
    proxy, then backs off without reading JSON-RPC); the body is the usual JSON-RPC answer."""
    waits = [_retry_after(r) for r in replies]
    if not waits or any(w is None for w in waits):
        return None
    # Retry-After is whole seconds (RFC 9110 10.2.3); data.retry_after keeps the precise delay.
    seconds = max(1, math.ceil(min(waits)))
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(seconds)})


def _valid_id(rid) -> bool:
    # JSON-RPC 2.0 section 4: an id is a string, a number or null (fractional numbers discouraged).
    return rid is None or (isinstance(rid, (str, int, float)) and not isinstance(rid, bool))


def _error(rid, err: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": err.to_json()}


def caller_of(request) -> str:
    return request.client.host if request.client else "?"


def _same_origin(origin: str | None, scope, host: str | None) -> bool:
    scheme = "https" if scope.get("scheme") == "https" else "http"
    return origin is not None and host is not None and origin.strip().lower() == f"{scheme}://{host}".lower()


class _Edge:
    """ASGI middleware in front of every route: Host and Origin must be this node's (DNS rebinding), and a
    WebSocket upgrade needs a read token, refused with HTTP 403 before the handshake completes."""

    def __init__(self, rpc: JsonRpcApp, app):
        self.rpc = rpc
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            headers = Headers(scope=scope)
            edge = self.rpc.edge
            refused = None
            if not host_allowed(headers.get("host"), [*edge.allowed_hosts, edge.host]):  # + the name it listens on
                refused = "Host not allowed (rpc.allowed_hosts)"
            elif not origin_allowed(headers.get("origin"), edge.allowed_origins) and not (
                    # the explorer's own forms post back to this node (same origin; Host was checked above)
                    scope["path"].startswith(EXPLORER_PREFIX + "/") and kind == "http"
                    and _same_origin(headers.get("origin"), scope, headers.get("host"))):
                refused = "Origin not allowed (rpc.allowed_origins)"
            elif kind == "websocket":
                grant = self.rpc.grant(headers, QueryParams(scope.get("query_string", b"")).get("token"))
                caller = Caller(grant.name if grant else None, "", grant.roles if grant else frozenset())
                if not self.rpc.may_read(caller):
                    refused = "a WebSocket subscription needs a read token"
            if refused is not None:
                self.rpc.refused_edge.count()
                if kind == "websocket":
                    await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
                else:
                    await PlainTextResponse(refused + "\n", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["ADMIN", "READ", "SUBMIT", "Caller", "JsonRpcApp", "Later", "Method", "TokenBucket"]
