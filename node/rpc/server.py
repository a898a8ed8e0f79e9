"""HTTP edge of the node: JSON-RPC 2.0 framing, auth, body and rate limits, /health, /metrics and /ws.

Methods live in node.rpc.methods; WebSocket subscriptions in node.rpc.subscriptions; the Prometheus
exposition in node.rpc.metrics. Every failure reaches the caller as a JSON-RPC error with a code and a
message; nothing a client sends can stop the node.

A method handler returns its result, or ``Later(wait)`` when the answer needs waiting (commit-mode
submits). In a batch every call is admitted first, in request order, then all waits run concurrently: a
batch of 100 commit-mode submits lands in one or two blocks instead of one block per call.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from node.rpc.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
    RpcError,
)

log = logging.getLogger("radchain.rpc")

Handler = Callable[[object, dict, "Caller"], Awaitable[object]]
# A batch is at most this many calls (each costs one rate-limit token). Ethereum clients cap batches the
# same way (geth: 1000 items by default).
MAX_BATCH = 1000


@dataclass(frozen=True)
class Method:
    handler: Handler
    write: bool  # needs an integrator token


@dataclass(frozen=True)
class Caller:
    integrator: str | None  # name of the token's owner, None when no valid token was given
    address: str


class Later:
    """A handler's answer that needs waiting: ``await wait()`` gives the result (or raises RpcError)."""

    __slots__ = ("wait",)

    def __init__(self, wait: Callable[[], Awaitable[object]]):
        self.wait = wait


class TokenBucket:
    """Per-address rate limit: `rate` requests per second with bursts up to `rate`."""

    def __init__(self, rate: float):
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > 10_000:  # forget idle clients rather than grow without bound
            self._buckets.clear()
        return True


@dataclass
class _Started:
    """A call admitted by _start whose answer is still to be awaited."""
    rid: object
    notification: bool
    method: str
    later: Later


class JsonRpcApp:
    def __init__(self, node, methods: dict[str, Method], tokens: dict[str, str], read_requires_token: bool,
                 max_body_bytes: int, rate_limit: float, extra_routes: list | None = None):
        from node.rpc.metrics import Metrics
        from node.rpc.submit import Admission
        from node.rpc.subscriptions import Subscriptions

        self.node = node
        self.methods = methods
        self._tokens = list(tokens.items())
        self.read_requires_token = read_requires_token
        self.max_body_bytes = max_body_bytes
        self.limiter = TokenBucket(rate_limit)
        self.metrics = Metrics(node, set(methods))
        self.admission = Admission(node, self.metrics)
        self.subscriptions = Subscriptions(self)
        routes = [Route("/", self.handle_http, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                  WebSocketRoute("/ws", self.subscriptions.endpoint)]
        self.app = Starlette(routes=routes + (extra_routes or []), lifespan=self._lifespan)

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
    def integrator(self, headers, query_token: str | None = None) -> str | None:
        header = headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            presented = header[7:].strip()
        elif query_token:  # browsers cannot set headers on WebSocket upgrades
            presented = query_token
        else:
            return None
        presented_b = presented.encode("utf-8", "replace")
        found = None
        for name, token in self._tokens:  # compare against every token: timing does not reveal which
            if hmac.compare_digest(presented_b, token.encode()):
                found = name
        return found

    def may_read(self, caller: Caller) -> bool:
        return caller.integrator is not None or not self.read_requires_token

    # ------------------------------------------------------------------ plain HTTP
    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics_endpoint(self, request: Request) -> Response:
        caller = Caller(self.integrator(request.headers), request.client.host if request.client else "?")
        if not self.may_read(caller):
            return PlainTextResponse("this node requires a token for reads\n", status_code=401)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RpcError(TOO_LARGE, f"request body over {self.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RpcError(TOO_LARGE, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle_http(self, request: Request) -> Response:
        address = request.client.host if request.client else "?"
        try:
            body = await self._read_body(request)
            try:
                payload = loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise RpcError(PARSE_ERROR, f"body is not JSON: {exc}") from None
            cost = len(payload) if isinstance(payload, list) and payload else 1
            if not self.limiter.allow(address, cost):
                raise RpcError(RATE_LIMITED, "rate limit exceeded; slow down and retry")
        except RpcError as err:
            self.metrics.error(err.code)
            status = {TOO_LARGE: 413, RATE_LIMITED: 429}.get(err.code, 200)
            if err.code == RATE_LIMITED:
                err.data = {"retry_after": 1.0}
            headers = {"Retry-After": "1"} if err.code == RATE_LIMITED else None
            return JSONResponse(_error(None, err), status_code=status, headers=headers)
        caller = Caller(self.integrator(request.headers), address)
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
        replies = []
        driver = getattr(self.node, "driver", None)
        worked_since = time.perf_counter()
        for i, item in enumerate(requests):
            replies.append(await self._start(item, caller))
            if i % 16 == 15:
                # A batch of hundreds of submits is ~100 ms of work: consensus messages waiting for the
                # driver go first (bounded wait), so client load never starves agreement. Cheap calls
                # (refusals under overload) only checkpoint, so they are answered at once.
                if driver is not None and time.perf_counter() - worked_since > 0.002:
                    await driver.yield_to_consensus()
                else:
                    await trio.lowlevel.checkpoint()
                worked_since = time.perf_counter()
        waiting = [i for i, r in enumerate(replies) if isinstance(r, _Started)]
        if waiting:
            async def finish(i: int) -> None:
                replies[i] = await self._finish(replies[i])

            async with trio.open_nursery() as nursery:
                for i in waiting:
                    nursery.start_soon(finish, i)
        return replies

    async def _start(self, request, caller: Caller):
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
                request.get("method"), str):
            rid = request.get("id") if isinstance(request, dict) else None
            self.metrics.error(INVALID_REQUEST)
            return _error(rid if _valid_id(rid) else None,
                          RpcError(INVALID_REQUEST, 'a call needs "jsonrpc": "2.0" and a string "method"'))
        is_notification = "id" not in request
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
            if method.write and caller.integrator is None:
                raise RpcError(UNAUTHORIZED, "this method needs 'Authorization: Bearer <token>' from node config")
            if not method.write and not self.may_read(caller):
                raise RpcError(UNAUTHORIZED, "this node requires a token for reads")
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object (by-name parameters)")
            result = await method.handler(self.node, params, caller)
        except RpcError as err:
            self.metrics.error(err.code)
            return None if is_notification else _error(rid, err)
        except Exception:  # a bug in a handler must not take the node down; the log keeps the trace
            log.exception("rpc method %s failed", name)
            self.metrics.error(INTERNAL_ERROR)
            return None if is_notification else _error(rid, RpcError(INTERNAL_ERROR, "internal error"))
        if isinstance(result, Later):
            return _Started(rid, is_notification, name, result)
        return None if is_notification else {"jsonrpc": "2.0", "id": rid, "result": result}

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


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def loads(data: bytes | str):
    """Strict JSON: Python's json would accept NaN and Infinity, which no answer could then echo."""
    return json.loads(data, parse_constant=_no_constants)


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


def param(params: dict, name: str, kind, required: bool = True, default=None):
    """Fetch and type-check one parameter, with a message that names it."""
    if name not in params:
        if required:
            raise RpcError(INVALID_PARAMS, f"missing param {name!r}")
        return default
    value = params[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = "/".join({"str": "string", "int": "integer", "dict": "object", "list": "array",
                          "float": "number", "bool": "boolean"}.get(k.__name__, k.__name__) for k in kinds)
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be {names}")
    return value


def check_known(params: dict, known: set[str] | frozenset[str]) -> None:
    """Refuse unknown parameter names (a typo must not silently widen a query)."""
    unknown = sorted(k for k in params if k not in known)
    if unknown:
        raise RpcError(INVALID_PARAMS, f"unknown param(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; "
                                       f"known: {', '.join(sorted(known))}")


def caller_of(request) -> str:
    return request.client.host if request.client else "?"


async def ws_caller(app: JsonRpcApp, websocket: WebSocket) -> Caller:
    token = websocket.query_params.get("token")
    return Caller(app.integrator(websocket.headers, token), caller_of(websocket))
