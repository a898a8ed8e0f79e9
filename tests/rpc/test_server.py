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


def test_rate_limiter_forgets_the_idlest_address_not_everybody():
    bucket = TokenBucket(1.0, max_keys=100)  # one request per second
    assert bucket.allow("attacker") and not bucket.allow("attacker")  # limited
    for i in range(500):  # the attacker makes the node see many other addresses...
        bucket.allow(f"10.0.{i // 256}.{i % 256}")
        assert not bucket.allow("attacker")  # ...and stays limited throughout (it is the most recent)
    assert len(bucket) == 100  # bounded


async def post_via(rpc: JsonRpcApp, forwarded_for: str | None, token: str = "pacs-token-0123456789"):
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rpc.app, client=("10.9.9.9", 5000)),
                                 base_url="http://127.0.0.1") as client:
        return await client.post("/", json=STATUS, headers=headers)


async def test_client_address_from_a_trusted_proxy_only():
    from node.runtime.settings import RpcConfig

    behind = JsonRpcApp(StubNode(), METHODS, {"pacs": "pacs-token-0123456789"}, True, 1 << 16, 3,
                        edge=RpcConfig(trusted_proxies=["10.9.9.9"]))
    for _ in range(3):
        assert (await post_via(behind, "10.0.0.1")).status_code == 200
    assert (await post_via(behind, "10.0.0.1")).status_code == 429  # that client is limited...
    assert (await post_via(behind, "10.0.0.2")).status_code == 200  # ...not everyone behind the proxy
    # a client cannot pick its address by prepending entries: the proxy appends the real one last
    assert (await post_via(behind, "10.0.0.7, 10.0.0.1")).status_code == 429
    direct = JsonRpcApp(StubNode(), METHODS, {"pacs": "pacs-token-0123456789"}, True, 1 << 16, 3)
    for i in range(3):
        assert (await post_via(direct, f"10.0.1.{i}")).status_code == 200
    # without a configured proxy X-Forwarded-For is the client's own claim and is ignored
    assert (await post_via(direct, "10.0.1.99")).status_code == 429


def test_host_origin_and_forwarded_for_rules():
    from node.rpc.auth import client_address, host_allowed, origin_allowed

    for host in ("127.0.0.1:26657", "10.1.0.5", "[::1]:26657", "localhost:1", "node-a.example", "NODE-A.example."):
        assert host_allowed(host, ["node-a.example"]), host
    for host in ("evil.example", "evil.example:26657", "127.0.0.1.evil.example", "localhost.evil.example"):
        assert not host_allowed(host, ["node-a.example"]), host
    assert origin_allowed(None, []) and not origin_allowed("null", []) and not origin_allowed("http://127.0.0.1", [])
    assert origin_allowed("https://audit.example/", ["https://audit.example"])
    assert client_address("10.0.0.9", "1.2.3.4", []) == "10.0.0.9"
    assert client_address("10.0.0.9", "1.2.3.4, 10.0.0.8", ["10.0.0.9", "10.0.0.8"]) == "1.2.3.4"
    assert client_address("10.0.0.9", "not-an-ip", ["10.0.0.9"]) == "10.0.0.9"


def test_token_store_reloads_and_fails_closed(tmp_path):
    import os

    from node.rpc.auth import ADMIN, READ, SUBMIT, TokenStore, add_token, revoke_token

    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    assert store.lookup("x" * 32) is None
    token = add_token(path, "ops", [ADMIN])
    grant = store.lookup(token)
    assert grant.name == "ops" and grant.roles == {ADMIN, READ, SUBMIT}
    assert token not in path.read_text() and os.stat(path).st_mode & 0o077 == 0
    revoke_token(path, "ops")
    assert store.lookup(token) is None
    token = add_token(path, "ro", [READ])
    assert store.lookup(token).roles == {READ}
    path.write_text("{not json")  # a bad hand edit: nothing is granted until it is fixed
    assert store.lookup(token) is None


def test_secrets_are_0600_and_dirs_0700_whatever_the_umask(tmp_path):
    import os
    import stat

    import pytest

    from node.privatefiles import write_secret
    from node.runtime.keys import SecretModeError, check_secret_mode

    old = os.umask(0)
    try:
        path = write_secret(tmp_path / "a" / "b" / "secret", "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o700
    check_secret_mode(path)
    os.chmod(path, 0o640)
    with pytest.raises(SecretModeError, match=f"chmod 600 {path}"):
        check_secret_mode(path)
    with pytest.raises(FileExistsError):
        write_secret(path, "t", exclusive=True)


def test_connection_caps_total_per_address_and_exempt():
    from node.rpc.http import ConnectionCaps

    caps = ConnectionCaps(total=5, per_address=2, exempt=["10.0.0.100"])
    assert caps.admit("10.0.0.1") and caps.admit("10.0.0.1") and not caps.admit("10.0.0.1")
    assert caps.admit("10.0.0.100") and caps.admit("10.0.0.100")  # a trusted proxy: only the total
    assert caps.admit("127.0.0.1") and not caps.admit("127.0.0.1")  # total of 5 reached, even for loopback
    caps.release("10.0.0.1")
    assert caps.admit("10.0.0.2") and not caps.admit("10.0.0.3")
    for address in ("10.0.0.1", "10.0.0.100", "10.0.0.100", "127.0.0.1", "10.0.0.2"):
        caps.release(address)
    assert caps.open == 0 and not caps.by_address and caps.refused.total == 3


async def _answer_ok(scope, receive, send):
    """A minimal ASGI app with lifespan: what serve_rpc does around an app is the subject here."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def test_a_client_opening_a_connection_per_call_is_never_refused_for_its_finished_ones():
    """Most simple integrations (curl, a script's one-off requests) open a connection per call and close it
    after the answer. A finished connection frees its slot under the caps at once (hypercorn's keep-alive
    timer used to hold it for 30 s): four times its per-address cap of one-shot calls in a row, from one
    address, are all answered, and no slot stays taken."""
    import trio

    from node.rpc.http import ConnectionCaps, serve_rpc

    caps = ConnectionCaps(total=1024, per_address=10)

    def one_shot(port: int) -> int:
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5"), timeout=10) as client:
            return client.post(f"http://127.0.0.1:{port}/", json={}).status_code

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_rpc, _answer_ok, "127.0.0.1:0", caps)
        codes = [await trio.to_thread.run_sync(one_shot, port) for _ in range(40)]
        with trio.fail_after(5):
            while caps.open:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert codes == [200] * 40, {code: codes.count(code) for code in set(codes)}
    assert caps.refused.total == 0 and not caps.by_address


async def test_a_batch_warms_up_only_the_calls_that_need_it_and_a_broken_check_fails_nothing(caplog):
    """Method.ready: calls whose warm-up has nothing to do get no prepare task (a task per call of a
    100-call batch is ~0.6 ms of event loop); a check that raises only costs the task it would save, and is
    logged once, not once per call."""
    from node.rpc.protocol import Method

    prepared: list[int] = []

    async def handler(node, params, caller):
        return params["n"]

    async def prepare(node, params):
        prepared.append(params["n"])

    def ready(node, params):
        if params.get("broken"):
            raise RuntimeError("a bug in the check")
        return params.get("warm", False)

    methods = {**METHODS, "echo": Method(handler, write=False, prepare=prepare, ready=ready)}
    rpc = JsonRpcApp(StubNode(), methods, {"pacs": "pacs-token-0123456789"}, False, 1 << 16, 1000.0)
    calls = [{"jsonrpc": "2.0", "id": n, "method": "echo", "params": params}
             for n, params in enumerate([{"n": 0, "warm": True}, {"n": 1}, {"n": 2, "warm": True},
                                         {"n": 3, "broken": True}, {"n": 4}])]
    replies = (await post(rpc, calls)).json()
    assert sorted(r["result"] for r in replies) == [0, 1, 2, 3, 4]
    assert sorted(prepared) == [1, 3, 4]
    assert (await post(rpc, calls)).status_code == 200 and sorted(prepared) == [1, 1, 3, 3, 4, 4]
    assert sum("warm-up check failed" in r.getMessage() for r in caplog.records) == 1


def test_submit_event_has_nothing_to_warm_up_for_a_call_without_an_event():
    from types import SimpleNamespace

    from node.rpc.submit import event_ready

    node = SimpleNamespace(tokens_ready=lambda event: event["patient_id"] == "warm")
    assert event_ready(node, {}) and event_ready(node, {"event": None}) and event_ready(node, {"event": "x"})
    assert event_ready(node, {"event": {"patient_id": "warm"}})
    assert not event_ready(node, {"event": {"patient_id": "cold"}})


async def test_consecutive_calls_to_a_batch_method_run_together_in_their_place_and_fail_alone():
    """Method.batch (submit_event signs a batch's events under one signature): a run of consecutive calls
    to it is one call of the batch handler, where the run stands, so calls to other methods in between keep
    their order; a call's error is its own; a malformed call in the run ends it and gets its own error."""
    from node.rpc.errors import REJECTED, RpcError
    from node.rpc.protocol import Method

    order: list = []

    async def one(node, params, caller):
        order.append(("one", params["n"]))
        return params["n"]

    async def together(node, calls, caller):
        order.append(("together", [c["n"] for c in calls]))
        return [RpcError(REJECTED, "odd") if c["n"] % 2 else c["n"] for c in calls]

    async def other(node, params, caller):
        order.append(("other", params["n"]))
        return -params["n"]

    methods = {**METHODS, "sig": Method(one, write=False, batch=together), "other": Method(other, write=False)}
    rpc = JsonRpcApp(StubNode(), methods, {"pacs": "pacs-token-0123456789"}, False, 1 << 16, 1000.0)

    def call(method, n, **extra):
        return {"jsonrpc": "2.0", "id": n, "method": method, "params": {"n": n}, **extra}

    calls = [call("sig", 0), call("sig", 1), call("sig", 2), call("other", 3), call("sig", 4),
             call("sig", 5), {"jsonrpc": "2.0", "id": 6, "method": "sig", "params": [6]}, call("sig", 7),
             call("sig", 8), call("sig", 9)]
    replies = {r["id"]: r for r in (await post(rpc, calls)).json()}
    assert order == [("together", [0, 1, 2]), ("other", 3), ("together", [4, 5]), ("together", [7, 8, 9])]
    assert [replies[n].get("result") for n in (0, 2, 3, 4, 8)] == [0, 2, -3, 4, 8]
    assert [replies[n]["error"]["message"] for n in (1, 5, 7, 9)] == ["odd"] * 4
    assert "params must be an object" in replies[6]["error"]["message"]
    replies = (await post(rpc, [call("sig", 11), call("other", 12)])).json()  # a run of one: the plain handler
    assert order[-2:] == [("one", 11), ("other", 12)] and [r.get("result") for r in replies] == [11, -12]
