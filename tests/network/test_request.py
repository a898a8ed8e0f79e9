"""Request/response between members: answers, bounded responses, errors, clean timeouts."""

from __future__ import annotations

import pytest
import trio
from network_testkit import Roster, running

from network import RequestError, RequestTimeout


def _serve_all(net):
    async def echo(peer, data):
        return peer.encode() + b"|" + data

    async def slow(peer, data):
        await trio.sleep(float(data))
        return b"late"

    async def boom(peer, data):
        raise RuntimeError("handler bug")

    async def huge(peer, data):
        return b"z" * int(data)

    for ch, h in (("echo", echo), ("slow", slow), ("boom", boom), ("huge", huge)):
        net.serve(ch, h)


@pytest.mark.timeout(60)
async def test_request_response_and_errors():
    r = Roster(2, seed=100)
    a, b = r.net(0), r.net(1, max_response=1024 * 1024)
    _serve_all(b)
    async with running(a, b):
        assert await a.request(b.peer_id, "echo", b"hi", timeout=5) == a.peer_id.encode() + b"|hi"
        # many concurrent requests
        results = {}

        async def one(i):
            results[i] = await a.request(b.peer_id, "echo", b"%d" % i, timeout=10)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert results == {i: a.peer_id.encode() + b"|%d" % i for i in range(40)}
        # a response up to max_response is delivered, beyond it is refused
        assert len(await a.request(b.peer_id, "huge", b"%d" % (1024 * 1024), timeout=10)) == 1024 * 1024
        with pytest.raises(RequestError, match="exceeds"):
            await a.request(b.peer_id, "huge", b"%d" % (1024 * 1024 + 1), timeout=10)
        assert b.stats["responses_too_large"] == 1
        with pytest.raises(RequestError, match="no handler"):
            await a.request(b.peer_id, "nosuch", b"", timeout=5)
        with pytest.raises(RequestError, match="handler error"):
            await a.request(b.peer_id, "boom", b"", timeout=5)
        assert b.stats["handler_errors"] == 1
        # a slow handler: the caller times out cleanly, on time, and the server keeps serving
        t0 = trio.current_time()
        with pytest.raises(RequestTimeout):
            await a.request(b.peer_id, "slow", b"3", timeout=0.5)
        assert 0.5 <= trio.current_time() - t0 < 1.5
        assert a.stats["requests_timed_out"] == 1
        assert await a.request(b.peer_id, "echo", b"still", timeout=5) == a.peer_id.encode() + b"|still"
        # and the message streams are unaffected
        assert a.send(b.peer_id, "tx", b"after-requests")
        with trio.fail_after(5):
            assert await b.inbox.receive() == (a.peer_id, "tx", b"after-requests")


@pytest.mark.timeout(60)
async def test_request_fails_cleanly_when_peer_is_gone():
    r = Roster(2, seed=110)
    a, b = r.net(0), r.net(1)
    _serve_all(b)
    async with running(a, connect=False):
        # never started: nothing listens on its port -> a prompt RequestError, well before the timeout
        t0 = trio.current_time()
        with pytest.raises(RequestError):
            await a.request(b.peer_id, "echo", b"x", timeout=5)
        assert trio.current_time() - t0 < 5.5
        # the peer goes away while a request is in flight
        async with trio.open_nursery() as outer:
            await outer.start(b.run)
            with trio.fail_after(10):
                await a.wait_connected()
            outer.start_soon(lambda: _stop_after(outer.cancel_scope, 0.3))
            t0 = trio.current_time()
            with pytest.raises(RequestError):
                await a.request(b.peer_id, "slow", b"10", timeout=8)
            assert trio.current_time() - t0 < 8.5
        # gone for good: requests keep failing within their timeout, nothing hangs
        with pytest.raises(RequestError):
            await a.request(b.peer_id, "echo", b"x", timeout=1)


async def _stop_after(scope: trio.CancelScope, delay: float) -> None:
    await trio.sleep(delay)
    scope.cancel()
