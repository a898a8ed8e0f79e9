"""JSON-RPC 2.0 call plumbing shared by the server and the method modules: what a method is, who calls
it, an answer that needs waiting, strict JSON and parameter checks. The server (node.rpc.server) dispatches;
each method module (submit, audit_trail, blocks ...) imports only this, so neither imports the other."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from node.rpc.auth import READ, SUBMIT
from node.rpc.errors import INVALID_PARAMS, RpcError

Handler = Callable[[object, dict, "Caller"], Awaitable[object]]


@dataclass(frozen=True)
class Method:
    handler: Handler
    write: bool  # needs a submit token
    role: str = ""  # the role it needs, when not the one `write` implies (e.g. admin)
    # Optional `await prepare(node, params)` run for every call of a batch at once before the calls run in
    # order: submit_event computes a batch's pseudonyms in one round of OPRF requests. Must not raise.
    prepare: Handler | None = None

    @property
    def needs(self) -> str:
        return self.role or (SUBMIT if self.write else READ)


@dataclass(frozen=True)
class Caller:
    integrator: str | None  # name of the token's owner, None when no valid token was given
    address: str
    roles: frozenset[str] = frozenset()  # what the token allows (node.rpc.auth)


class Later:
    """A handler's answer that needs waiting: ``await wait()`` gives the result (or raises RpcError)."""

    __slots__ = ("wait",)

    def __init__(self, wait: Callable[[], Awaitable[object]]):
        self.wait = wait


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def loads(data: bytes | str):
    """Strict JSON: Python's json would accept NaN and Infinity, which no answer could then echo."""
    return json.loads(data, parse_constant=_no_constants)


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


async def ws_caller(app, websocket) -> Caller:
    return app.caller(websocket, websocket.query_params.get("token"))
