"""A member that sends malformed frames, or nothing at all: dropped, counted, and the node keeps serving."""

from __future__ import annotations

import struct

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from network_testkit import PSK, Roster, free_port, running, wait_for

from network import framing
from network.host import build_host
from network.peer_network import MSG_PROTOCOL, REQ_PROTOCOL

BAD_MESSAGE_STREAM_INPUTS = {
    "unknown kind": struct.pack(">IB", 3, 99) + b"ab",
    "zero length": struct.pack(">I", 0) + b"\x01",
    "over 16 MiB": struct.pack(">IB", framing.MAX_FRAME + 1, framing.DATA),
    "empty channel": framing.encode(framing.DATA, b"\x00payload"),
    "channel runs past body": framing.encode(framing.DATA, b"\x09tx"),
    "non-printable channel": framing.encode(framing.DATA, b"\x02t\x00data"),
    "short ping": framing.encode(framing.PING, b"123"),
    "request on message stream": framing.encode_req("sync", b"x"),
}


async def _expect_dropped(stream) -> None:
    """The target must reset (or close) the stream: reading ends in an error or EOF, never data."""
    with trio.fail_after(5):
        try:
            data = await stream.read(1)
        except Exception:
            return
    assert data == b"", data


@pytest.mark.timeout(60)
async def test_malformed_frames_are_dropped_counted_and_node_keeps_serving():
    r = Roster(3, seed=170)
    a, c = r.net(0), r.net(2)
    a.serve("echo", lambda peer, data: _echo(data))
    # member 1 is "buggy": a raw libp2p host holding member 1's genuine key and the PSK
    buggy = build_host(r.keys[1], set(r.pids), PSK, multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}"))
    a_id = ID.from_base58(a.peer_id)
    async with running(a, c), buggy.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")]):
        try:
            with trio.fail_after(5):
                await buggy.connect(PeerInfo(a_id, [multiaddr.Multiaddr(r.addrs[0])]))
            for i, (what, raw) in enumerate(BAD_MESSAGE_STREAM_INPUTS.items(), start=1):
                # a valid frame first: delivered; then garbage: the stream is dropped
                stream = await buggy.new_stream(a_id, [MSG_PROTOCOL])
                await stream.write(framing.encode_data("tx", what.encode()) + raw)
                with trio.fail_after(5):
                    assert await a.inbox.receive() == (r.pids[1], "tx", what.encode())
                await _expect_dropped(stream)
                await wait_for(lambda i=i: a.stats["malformed_frames"] == i, timeout=5)
            n = len(BAD_MESSAGE_STREAM_INPUTS)
            # a garbage request, and a frame that is not a request, on the request protocol
            for raw in (b"\xff\xff\xff\xff\x04", framing.encode_data("echo", b"x")):
                stream = await buggy.new_stream(a_id, [REQ_PROTOCOL])
                await stream.write(raw)
                await _expect_dropped(stream)
                n += 1
                await wait_for(lambda n=n: a.stats["malformed_frames"] == n, timeout=5)
            # the node keeps serving: the same member's next good stream, other members, requests
            stream = await buggy.new_stream(a_id, [MSG_PROTOCOL])
            await stream.write(framing.encode_data("tx", b"good again"))
            with trio.fail_after(5):
                assert await a.inbox.receive() == (r.pids[1], "tx", b"good again")
            assert c.send(a.peer_id, "consensus", b"from c")
            with trio.fail_after(5):
                assert await a.inbox.receive() == (c.peer_id, "consensus", b"from c")
            assert await c.request(a.peer_id, "echo", b"still up", timeout=5) == b"still up"
            assert c.peer_id in a.connected_peers()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await buggy.close()


async def _echo(data: bytes) -> bytes:
    return data


@pytest.mark.timeout(30)
async def test_silent_member_is_declared_dead_and_redialled():
    # A member whose connection stays up but which never sends anything (wedged process, one-way
    # link): only the heartbeat can tell. It is dropped after ~3.5 s of silence and redialled.
    r = Roster(2, seed=180)
    a = r.net(0)
    silent = build_host(r.keys[1], set(r.pids), PSK, multiaddr.Multiaddr(r.addrs[1]))

    async def swallow(stream):
        while await stream.read(65536):
            pass

    silent.set_stream_handler(MSG_PROTOCOL, swallow)
    async with running(a, connect=False), silent.run(listen_addrs=[multiaddr.Multiaddr(r.addrs[1])]):
        try:
            await wait_for(lambda: a.stats["connects"] >= 1, timeout=10)
            t0 = trio.current_time()
            await wait_for(lambda: a.stats["peers_declared_dead"] >= 1, timeout=10)
            assert 3.4 <= trio.current_time() - t0 <= 5.5
            assert a.connected_peers() == []
            await wait_for(lambda: a.stats["connects"] >= 2, timeout=10)  # redialled
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await silent.close()
