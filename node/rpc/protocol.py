"""JSON-RPC 2.0 call plumbing shared by the server and the method modules: what a method is, who calls
it, an answer that needs waiting, strict JSON and parameter checks. The server (node.rpc.server) dispatches;
each method module (submit, audit_trail, blocks ...) imports only this, so neither imports the other."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import trio

from node.rpc.auth import READ, SUBMIT
from node.rpc.errors import INVALID_PARAMS, RpcError

_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_NON_STR_KEYS = orjson.OPT_NON_STR_KEYS

Handler = Callable[[object, dict, "Caller"], Awaitable[object]]


@dataclass(frozen=True)
class Method:
    handler: Handler
    write: bool  # needs a submit token
    role: str = ""  # the role it needs, when not the one `write` implies (e.g. admin)
    # Optional `await prepare(node, params)` run for every call of a batch at once before the calls run in
    # order: submit_event computes a batch's pseudonyms in one round of OPRF requests. Must not raise.
    prepare: Handler | None = None
    # Optional `ready(node, params) -> bool`: True when prepare has nothing to do for this call (a cheap,
    # synchronous check), so a batch starts a prepare task only for the calls that need one (a task is
    # ~6 us, and under load nearly every event's pseudonyms are in memory already). Should not raise: if it
    # does, the server logs it once and warms the call up as if it were not ready.
    ready: Callable[[object, dict], bool] | None = None
    # Optional `await batch(node, [params, ...], caller) -> [result | Later | RpcError, ...]`, run once in
    # place of the handler for the calls to this method of one JSON-RPC batch (two or more, each params a
    # dict, the caller authorised): submit_event signs a batch's events under one signature. One outcome per
    # call, in order; a call's error is its RpcError in the list, never raised for the others.
    batch: Callable[[object, list, Caller], Awaitable[list]] | None = None

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


# No JSON-RPC call of this API nests deeper than 6 levels (batch, call, params, event, list); orjson's own
# bound is 1024, deep enough to overflow Python's recursion in any code that walks or prints a value.
MAX_DEPTH = 32
# orjson reads integers in [-2**63, 2**64) exactly and turns a longer one into a float: an id or a height
# that is no longer what the client sent. No parameter of this API needs a number that large, so any number
# of magnitude 2**63 or more that arrives as a float (a long integer, or 1e19 written as such) is refused.
_BIG = float(1 << 63)


class JsonRefused(ValueError):
    """Valid JSON by RFC 8259 but beyond this API's limits (RFC 8259 section 9 lets a parser set them)."""


def _check_limits(value) -> None:
    # Iterative (no recursion to overflow) and over containers only: a batch of 100 submit_tx is ~300
    # containers, a few tens of microseconds, about what orjson takes to parse it.
    if type(value) is float:
        if not -_BIG < value < _BIG:
            raise JsonRefused("a number beyond 64 bits")
        return
    if type(value) is not dict and type(value) is not list:
        return
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        container, depth = pop()
        for v in (container.values() if type(container) is dict else container):
            t = type(v)
            if t is dict or t is list:
                if depth >= MAX_DEPTH:
                    raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels")
                push((v, depth + 1))
            elif t is float and not -_BIG < v < _BIG:
                raise JsonRefused("a number beyond 64 bits (integers: -2**63 .. 2**64-1)")


def loads(data: bytes | str):
    """Strict JSON (RFC 8259) within this API's limits; raises ValueError (orjson.JSONDecodeError and
    JsonRefused are ones) for anything refused. The caller bounds the size before.

    orjson refuses what Python's json let through: NaN and Infinity, a number that overflows a double (json
    read 1e400 as inf, which no answer could then echo: the reply failed with HTTP 500), a lone surrogate
    escape, invalid UTF-8 and other encodings (RFC 8259 section 8.1: UTF-8 only), a byte order mark. Here on
    top: at most MAX_DEPTH levels of nesting, no number beyond 64 bits. Duplicate keys: the last one wins,
    as in Python's json (one object, one meaning: auth is checked on the method that runs)."""
    value = _orjson_loads(data)
    _check_limits(value)
    return value


def dumps(value) -> bytes:
    """One answer as UTF-8 JSON bytes, encoded once. orjson (several times faster than json.dumps) refuses
    an integer beyond 64 bits, which a handler might still return: that answer is encoded by Python's json."""
    try:
        return _orjson_dumps(value, option=_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


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


async def let_consensus_in(node, worked_since: float) -> float:
    """Between every 16 calls of a batch (hundreds of submits are ~100 ms of work): consensus messages
    waiting for the driver go first (bounded wait) once 2 ms of work went by, so client load never starves
    agreement; cheap calls (refusals under overload) only checkpoint. Returns the new start of work."""
    driver = getattr(node, "driver", None)
    if driver is not None and time.perf_counter() - worked_since > 0.002:
        await driver.yield_to_consensus()
    else:
        await trio.lowlevel.checkpoint()
    return time.perf_counter()
