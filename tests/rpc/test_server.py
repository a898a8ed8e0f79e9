"""The HTTP edge in-process (no testnet): rate limit, body limit and method auth, on a stub node."""

from __future__ import annotations

import httpx

from node.rpc.methods import METHODS
from node.rpc.server import JsonRpcApp, TokenBucket


class StubNode:
    def status(self) -> dict:
        return {"node": "stub", "height": 0}


def app(rate: float = 1000.0, max_body: int = 1 << 16, read_requires_token: bool = False) -> JsonRpcApp:
    return JsonRpcApp(StubNode(), METHODS, {"pacs": "pacs-token-0123456789"}, read_requires_token, max_body, rate)


async def post(rpc: JsonRpcApp, body, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rpc.app), base_url="http://127.0.0.1") as client:
        return await client.post("/", json=body, headers=headers)


STATUS = {"jsonrpc": "2.0", "id": 1, "method": "status"}


async def test_rate_limit_answers_429_with_a_json_rpc_error():
    rpc = app(rate=5)
    for _ in range(5):
        assert (await post(rpc, STATUS)).json()["result"]["node"] == "stub"
    limited = await post(rpc, STATUS)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == -32005
    # a batch costs one token per call
    assert (await post(app(rate=5), [STATUS] * 6)).json()["error"]["code"] == -32005


async def test_body_limit_and_auth_in_process():
    rpc = app(max_body=100)
    big = await post(rpc, {**STATUS, "params": {"pad": "x" * 200}})
    assert big.status_code == 413 and big.json()["error"]["code"] == -32006
    write = {"jsonrpc": "2.0", "id": 2, "method": "submit_tx", "params": {"tx": "not hex"}}
    assert (await post(rpc, write)).json()["error"]["code"] == -32001
    assert (await post(rpc, write, "pacs-token-0123456789")).json()["error"]["code"] == -32602  # past auth
    closed = app(read_requires_token=True)
    assert (await post(closed, STATUS)).json()["error"]["code"] == -32001
    assert (await post(closed, STATUS, "pacs-token-0123456789")).json()["result"]["node"] == "stub"


def test_token_bucket_refills():
    bucket = TokenBucket(1000.0)
    assert bucket.allow("a", 1000) and not bucket.allow("a", 500)
    assert bucket.allow("b", 1)  # per client address
