"""JSON-RPC 2.0 call plumbing shared by the server and the method modules: what a method is, who calls
it, an answer that needs waiting, strict JSON and parameter checks. The server (node.rpc.server) dispatches;
each method module (submit, audit_trail, blocks ...) imports only this, so neither imports the other."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

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


# orjson reads integers in [-2**63, 2**64) exactly and would quietly turn a longer one into a float (an id
# or a height that is no longer what the client sent). An integer literal follows "[", "," or ":" (or starts
# the text) and has 19 digits or more only when it may be out of that range: a regex over the raw bytes (C
# speed, never inside a hex string or a UID, which hold no such separator) picks the rare body that needs the
# exact check.
_LONG_INT = re.compile(rb"(?:^|[\[,:])[ \t\r\n]*-?[0-9]{19}")
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _int64(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"integer {text[:24]}... beyond 64 bits")
    return value


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def loads(data: bytes | str):
    """Strict JSON (RFC 8259): UTF-8 only, no NaN/Infinity and no number that overflows a double (orjson
    refuses them natively; Python's json read 1e400 as inf, which no answer could then echo), no lone
    surrogate, at most 1024 levels of nesting (orjson's bound, checked while parsing, before any Python
    recursion), and no integer beyond 64 bits. Duplicate keys: the last one wins, as in Python's json.
    Raises ValueError (orjson.JSONDecodeError is one) for anything refused; the caller bounds the size first."""
    value = _orjson_loads(data)
    raw = data if isinstance(data, bytes) else data.encode()
    if _LONG_INT.search(raw) is not None:
        # Rare (an attacker's or a buggy client's body): the exact check, by the only parser that hands us
        # every integer literal's text.
        json.loads(raw, parse_int=_int64, parse_constant=_no_constants)
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
