"""The private-network layer reads ahead (network/pnet.py READ_AHEAD): a read takes what the socket holds,
hands back what was asked and keeps the rest. Over a real TCP connection, Noise-style reads (a 2-byte
length, then the body) of messages of every size, written in arbitrary chunks, come back byte for byte,
with fewer socket reads than messages."""

from __future__ import annotations

import random

import pytest
import trio
from libp2p.io.trio import TrioTCPStream
from libp2p.io.utils import read_exactly
from libp2p.network.connection.raw_connection import RawConnection

from network import pnet

KEY = bytes(range(32))


class CountingStream(TrioTCPStream):
    reads = 0

    async def read(self, n=None):
        CountingStream.reads += 1
        return await super().read(n)


@pytest.mark.timeout(60)
async def test_length_prefixed_messages_of_every_size_come_back_whole_in_fewer_socket_reads():
    rng = random.Random(7)
    messages = [rng.randbytes(rng.choice([0, 1, 2, 3, 300, 1500, 40_000, 65_535])) for _ in range(400)]
    wire = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    ring = pnet.PskRing([KEY], KEY)
    got: list[bytes] = []
    CountingStream.reads = 0

    async def reader(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        stream = await listeners[0].accept()
        conn = pnet.MultiPskConn(RawConnection(CountingStream(stream), False), ring)
        assert await read_exactly(conn, len(pnet.HEADER)) == pnet.HEADER
        for i in range(len(messages)):
            length = int.from_bytes(await read_exactly(conn, 2), "big")
            got.append(await read_exactly(conn, length) if length else b"")
            # what a peer's burst leaves held is one socket read's worth, however much it sends
            assert len(conn._buf) - conn._pos <= pnet.READ_AHEAD
            if i % 50 == 0:
                assert await conn.read(0) == b""  # a zero-byte read neither blocks nor eats the stream

    with trio.fail_after(30):
        async with listeners[0], trio.open_nursery() as nursery:
            await nursery.start(reader)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            conn = pnet.MultiPskConn(RawConnection(TrioTCPStream(stream), True), ring)
            await conn.write(pnet.HEADER)  # what multistream-select sends first: the peer identifies the key by it
            pos = 0
            while pos < len(wire):
                step = rng.choice([1, 7, 100, 4096, 70_000])
                await conn.write(wire[pos:pos + step])
                pos += step
    assert got == messages
    assert CountingStream.reads < len(messages)
