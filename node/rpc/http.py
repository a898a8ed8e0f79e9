"""Serving the RPC app: hypercorn's HTTP/1.1 and WebSocket protocol over our own accept loop, which caps
open connections in total and per client address before hypercorn sees them.

Why not hypercorn.trio.serve: it builds its listeners itself, leaving no place to refuse a connection, and
a file descriptor per connection is what a slow or idle client costs us (the process limit also covers
LevelDB and libp2p). The rest is hypercorn 0.18's worker_serve, minus multi-worker and QUIC.

Deadlines, layer by layer: request headers within keep_alive_timeout (h11 idle timer, 30 s); a request body
within rpc.body_timeout (JsonRpcApp._read_body, which then closes the connection); an idle keep-alive
connection is closed after 30 s. WebSocket connections stay open while subscribed, within the caps.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from node.rpc.auth import CountedLog

log = logging.getLogger("radchain.rpc.http")

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
         b"Retry-After: 1\r\nContent-Length: 29\r\n\r\ntoo many connections; retry\r\n")
assert len(b"too many connections; retry\r\n") == 29


# Every tool on the node's own host (the DICOM hook, the Orthanc plugin, the CLI, a local reverse proxy)
# connects from here: one address for many honest clients, so only the total applies to it.
LOCAL = ("127.0.0.1", "::1")


class ConnectionCaps:
    """At most `total` open connections, and `per_address` per client address. Trusted proxies and the
    host's own loopback address carry many clients' connections, so they count only against the total."""

    def __init__(self, total: int, per_address: int, exempt: list[str] | tuple[str, ...] = ()):
        self.total = total
        self.per_address = per_address
        self.exempt = frozenset(exempt) | frozenset(LOCAL)
        self.open = 0
        self.by_address: Counter[str] = Counter()
        self.refused = CountedLog(log, "RPC connections refused over the connection caps", level=logging.WARNING)

    def admit(self, address: str) -> bool:
        if self.open >= self.total or (address not in self.exempt and self.by_address[address] >= self.per_address):
            self.refused.count()
            return False
        self.open += 1
        self.by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]
        assert self.open >= 0


class _OneWriteTCPServer(TCPServer):
    """hypercorn writes an answer's head and its body with two sends: two TCP segments, and the client
    wakes up for the head, then again for the body (on a busy host each wake-up waits for a core). A head
    that announces a Content-Length (every JSON-RPC answer: Starlette sends the body right after) is held
    and written with the body in one send. Anything else that comes next (an empty end of message, a
    close, a 101 before WebSocket frames is never held) releases it first, so no byte waits on a later
    event than before."""

    coalesce = True  # class-wide switch, for the benchmark's A/B
    _held = b""

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client has gone (or we closed): hypercorn 0.18 leaves the keep-alive timer running, and its
        # task group waits for it, so every finished connection held its slot under the caps (and its file
        # descriptor) for keep_alive_timeout (30 s). A client opening a connection per call at ~35 calls/s
        # then filled the 1,024 slots, and everyone was refused with 503 "too many connections".
        await self.idle_task.stop()

    async def protocol_send(self, event) -> None:
        if isinstance(event, RawData):
            data = event.data
            if self._held:
                held, self._held = self._held, b""
                event = RawData(data=held + data)
            elif self.coalesce and data.startswith(b"HTTP/1.1 2") and data.endswith(b"\r\n\r\n") and (
                    b"\r\ncontent-length: " in data):
                self._held = data
                return
        elif self._held:
            held, self._held = self._held, b""
            await super().protocol_send(RawData(data=held))
        await super().protocol_send(event)


def hypercorn_config() -> HypercornConfig:
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 30
    config.backlog = 1024  # a burst of connections waits in the kernel rather than being reset
    return config


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve_rpc(app, listen: str, caps: ConnectionCaps, config: HypercornConfig | None = None, *,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the ASGI `app` on `listen` (HOST:PORT) until cancelled; task_status gets the bound port."""
    config = config or hypercorn_config()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: dict = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    host, port = _split_listen(listen)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listeners = await trio.open_tcp_listeners(port, host=host or None, backlog=config.backlog)

        async def handle(stream: trio.SocketStream) -> None:
            try:
                address = stream.socket.getpeername()[0]
            except OSError:
                await stream.aclose()
                return
            if not caps.admit(address):
                with trio.move_on_after(1):  # a fresh socket's send buffer takes this at once
                    try:
                        await stream.send_all(_BUSY)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                await trio.aclose_forcefully(stream)
                return
            try:
                await _OneWriteTCPServer(wrapped, config, context, ConnectionState(state.copy()), stream)
            finally:
                caps.release(address)

        try:
            async with trio.open_nursery() as server_nursery:
                task_status.started(listeners[0].socket.getsockname()[1])
                await trio.serve_listeners(handle, listeners, handler_nursery=server_nursery)
        finally:
            with trio.CancelScope(shield=True):
                await context.terminated.set()
            lifespan_nursery.cancel_scope.cancel()
