"""A byte relay with nothing else in it: `bench.dicom`'s measure of what the extra hop alone costs.

The audit proxy relays DICOM PDUs between a modality and the PACS in a trio event loop. This does the same
with no parsing, no auditing and no spool, so in the same run the benchmark can say how much of the proxy's
cost is the hop (two more loopback sockets and event-loop wake-ups per request and per answer) and how much
is the audit.

    python -m bench.tcp_relay LISTEN_PORT TARGET_PORT
"""

from __future__ import annotations

import functools
import sys

import trio


async def _pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(1 << 16):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        try:
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def main(argv: list[str]) -> None:
    listen_port, target_port = int(argv[0]), int(argv[1])

    async def handle(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", target_port) as target:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, target)
                nursery.start_soon(_pump, target, client)

    trio.run(functools.partial(trio.serve_tcp, handle, listen_port, host="127.0.0.1"))


if __name__ == "__main__":
    main(sys.argv[1:])
