"""py-libp2p's real Yamux over a real socket pair whose buffers are full: a frame write that its caller gives
up on (a request's timeout, the OPRF client cancelling the slowest member) still puts the whole frame on the
wire, so the next frame is read intact (network/patches.py, patch 4). Before, the cancel cut the frame and the
next writer's bytes followed the half: the member could not decrypt the connection and dropped it. A frame
that cannot be written at all closes the connection instead of leaving it mid-frame."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux import yamux as _yamux

from network import patches


class _Wire:
    """The connection under the muxer, without Noise: what patch 4 guards is the muxer's own write."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.is_initiator = True

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()


def _frame(payload: bytes) -> bytes:
    return struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, _yamux.TYPE_DATA, 0, 1, len(payload)) + payload


def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(trio.socket.from_stdlib_socket(b))


async def test_a_cancelled_frame_write_still_writes_the_whole_frame():
    patches.apply_patches()
    near, far = _pair()
    mux = _yamux.Yamux(_Wire(near), ID(b"\x00\x01x"), is_initiator=True)
    first, second = _frame(bytes(range(256)) * 1000), _frame(b"the next frame")
    got = bytearray()

    async def read_later():
        await trio.sleep(0.5)  # the far end reads nothing at first: the socket's buffers fill
        while len(got) < len(first) + len(second):
            got.extend(await far.receive_some(65536))

    with trio.move_on_after(10):  # a cut frame: the far end waits for bytes that never come
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_later)
            with trio.move_on_after(0.1):  # the caller gives up while the frame is half written
                await mux._write_frame(first)
            await mux._write_frame(second)
    assert bytes(got) == first + second


async def test_a_frame_that_cannot_be_written_closes_the_connection(monkeypatch):
    patches.apply_patches()
    monkeypatch.setattr(patches, "FRAME_WRITE_SECONDS", 0.3)
    near, far = _pair()
    mux = _yamux.Yamux(_Wire(near), ID(b"\x00\x01x"), is_initiator=True)
    with pytest.raises(RawConnError, match="connection closed"), trio.fail_after(10):
        await mux._write_frame(_frame(bytes(1 << 20)))  # the far end never reads
    with pytest.raises(trio.ClosedResourceError):
        await near.send_all(b"x")
    await far.aclose()
