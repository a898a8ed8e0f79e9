"""The RPC's JSON layer (orjson, node.rpc.protocol) as an attacker meets it: what the parser refuses that
Python's json let through (and what that did), what it still accepts exactly, and that answers encode
to what Python's json reads back. In process: the real JsonRpcApp over httpx's ASGI transport, a stub node."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.rpc.methods import METHODS
from node.rpc.protocol import MAX_DEPTH, dumps, loads
from node.rpc.server import JsonRpcApp

TOKEN = "pacs-token-0123456789"


class StubNode:
    def status(self) -> dict:
        return {"node": "stub", "height": 0}


async def post(body: bytes, token: str | None = None) -> httpx.Response:
    rpc = JsonRpcApp(StubNode(), METHODS, {"pacs": TOKEN}, False, 1 << 16, 1e6)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rpc.app), base_url="http://127.0.0.1") as client:
        return await client.post("/", content=body, headers=headers)


def status_call(rid: bytes) -> bytes:
    return b'{"jsonrpc": "2.0", "id": ' + rid + b', "method": "status"}'


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


REFUSED = [
    # Python's json read these; the id or param could then never be echoed: HTTP 500 from the encoder
    (status_call(b"1e400"), "infinity"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "get_block", "params": {"height": -1e999}}', "infinity"),
    # beyond 64 bits: orjson would read them as floats, an id or a height no longer what was sent
    (status_call(b"18446744073709551616"), "64 bits"),
    (status_call(b"-9223372036854775809"), "64 bits"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "get_block", "params": {"height": 1' + b"0" * 40 + b'}}', "64 bits"),
    (status_call(b"1e19"), "64 bits"),
    # not UTF-8 (RFC 8259 8.1), which Python's json guessed its way through
    (status_call(b"1").decode().encode("utf-16"), ""),
    (b"\xef\xbb\xbf" + status_call(b"1"), ""),
    (b'{"jsonrpc": "2.0", "id": "\xff\xfe", "method": "status"}', ""),
    # a lone surrogate: Python's json made a str that cannot be encoded back
    (b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "status"}', "surrogate"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": {"x": ' + nested(MAX_DEPTH) + b"}}", "nested"),
    (nested(2000), ""),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "status"} {"x": 1}', ""),
]


@pytest.mark.parametrize(("body", "words"), REFUSED, ids=range(len(REFUSED)))
async def test_refused_bodies_get_a_parse_error_not_a_crash(body, words):
    reply = await post(body)
    assert reply.status_code == 200
    answer = reply.json()
    assert answer["id"] is None and answer["error"]["code"] == -32700, answer
    assert words in answer["error"]["message"].lower()


async def test_the_edges_of_the_range_are_echoed_exactly():
    for rid in (b"18446744073709551615", b"-9223372036854775808", b"0", b"-1", b"1.5", b'"x"', b"null"):
        answer = (await post(status_call(rid))).json()
        assert answer["result"]["node"] == "stub"
        assert answer["id"] == json.loads(rid) and json.dumps(answer["id"]) == json.dumps(json.loads(rid))
    # just inside the nesting bound: parsed, and the method then refuses the unknown param
    inside = b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": {"x": ' + nested(MAX_DEPTH - 2) + b"}}"
    assert (await post(inside)).json()["error"]["code"] == -32602


async def test_duplicate_keys_take_the_last_and_auth_follows_the_method_that_runs():
    # Both parsers keep the last key; what matters is that one object has one meaning throughout.
    status_last = b'{"jsonrpc": "2.0", "id": 1, "method": "submit_tx", "method": "status"}'
    assert (await post(status_last)).json()["result"]["node"] == "stub"
    submit_last = b'{"jsonrpc": "2.0", "id": 1, "method": "status", "method": "submit_tx", "params": {"tx": "00"}}'
    assert (await post(submit_last)).json()["error"]["code"] == -32001  # no token: refused, nothing run


def test_long_digit_runs_inside_strings_are_data():
    # UIDs of the 2.25 form carry a 39-digit number, hex txs long digit runs: strings, never refused
    uid = "2.25.329800735698586629295641978511506172918"
    body = json.dumps({"study_uid": uid, "tx": "1234567890" * 8, "n": [1, -(2**63), 2**64 - 1]}).encode()
    assert loads(body) == json.loads(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-(2.0**62), max_value=2.0**62) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_within_the_limits_orjson_reads_and_writes_what_python_json_does(value):
    text = json.dumps(value, ensure_ascii=False).encode()
    assert loads(text) == json.loads(text)
    assert json.loads(dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(big=st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1), where=st.sampled_from(["id", "param"]))
def test_any_integer_beyond_64_bits_is_refused(big, where):
    body = {"jsonrpc": "2.0", "id": 1, "method": "status", "params": {}}
    if where == "id":
        body["id"] = big
    else:
        body["params"] = {"x": [1, {"y": big}]}
    with pytest.raises(ValueError, match="64 bits"):
        loads(json.dumps(body).encode())


def test_answers_too_big_for_orjson_are_still_encoded():
    # a handler result with an integer beyond 64 bits (none today) falls back to Python's json, not a 500
    assert json.loads(dumps({"n": 2**70, 1: "x"})) == {"n": 2**70, "1": "x"}
