"""HTTP edge of the node: JSON-RPC 2.0 framing, auth, body and rate limits. Methods live in node.rpc.methods.

Every failure reaches the caller as a JSON-RPC error with a code and a message; nothing a client sends can
stop the node.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

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
MAX_BATCH = 1000


@dataclass(frozen=True)
class Method:
    handler: Handler
    write: bool  # needs an integrator token


@dataclass(frozen=True)
class Caller:
    integrator: str | None  # name of the token's owner, None when no valid token was given
    address: str


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


class JsonRpcApp:
    def __init__(self, node, methods: dict[str, Method], tokens: dict[str, str], read_requires_token: bool,
                 max_body_bytes: int, rate_limit: float, extra_routes: list | None = None):
        self.node = node
        self.methods = methods
        self._tokens = list(tokens.items())
        self.read_requires_token = read_requires_token
        self.max_body_bytes = max_body_bytes
        self.limiter = TokenBucket(rate_limit)
        routes = [Route("/", self.handle_http, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"])]
        self.app = Starlette(routes=routes + (extra_routes or []))

    def _integrator(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        presented = header[7:].strip().encode()
        for name, token in self._tokens:
            if hmac.compare_digest(presented, token.encode()):
                return name
        return None

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

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
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RpcError(PARSE_ERROR, f"body is not JSON: {exc}") from exc
            cost = len(payload) if isinstance(payload, list) and payload else 1
            if not self.limiter.allow(address, cost):
                raise RpcError(RATE_LIMITED, "rate limit exceeded; slow down and retry")
        except RpcError as err:
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": err.to_json()})
        caller = Caller(self._integrator(request), address)
        if isinstance(payload, list):
            if not payload:
                return JSONResponse(_error(None, RpcError(INVALID_REQUEST, "empty batch")))
            if len(payload) > MAX_BATCH:
                return JSONResponse(_error(None, RpcError(INVALID_REQUEST, f"batch over {MAX_BATCH} calls")))
            replies = [r for r in [await self.call(item, caller) for item in payload] if r is not None]
            return JSONResponse(replies) if replies else Response(status_code=204)
        reply = await self.call(payload, caller)
        return JSONResponse(reply) if reply is not None else Response(status_code=204)

    async def call(self, request, caller: Caller) -> dict | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
                request.get("method"), str):
            return _error(request.get("id") if isinstance(request, dict) else None,
                          RpcError(INVALID_REQUEST, 'a call needs "jsonrpc": "2.0" and a string "method"'))
        is_notification = "id" not in request
        rid = request.get("id")
        if rid is not None and not isinstance(rid, (str, int)):
            return _error(None, RpcError(INVALID_REQUEST, "id must be a string, a number or null"))
        try:
            method = self.methods.get(request["method"])
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"no method {request['method']!r}")
            if method.write and caller.integrator is None:
                raise RpcError(UNAUTHORIZED, "this method needs 'Authorization: Bearer <token>' from node config")
            if not method.write and self.read_requires_token and caller.integrator is None:
                raise RpcError(UNAUTHORIZED, "this node requires a token for reads")
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            result = await method.handler(self.node, params, caller)
        except RpcError as err:
            return None if is_notification else _error(rid, err)
        except Exception:  # a bug in a handler must not take the node down; the log keeps the trace
            log.exception("rpc method %s failed", request.get("method"))
            return None if is_notification else _error(rid, RpcError(INTERNAL_ERROR, "internal error"))
        return None if is_notification else {"jsonrpc": "2.0", "id": rid, "result": result}


def _error(rid, err: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": err.to_json()}


def param(params: dict, name: str, kind, required: bool = True, default=None):
    """Fetch and type-check one parameter, with a message that names it."""
    if name not in params:
        if required:
            raise RpcError(INVALID_PARAMS, f"missing param {name!r}")
        return default
    value = params[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RpcError(INVALID_PARAMS, f"param {name!r} must be {names}")
    return value
