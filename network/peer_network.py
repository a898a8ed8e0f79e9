"""PeerNetwork: reliable per-peer streams and request/response between consortium members.

Shape (see docs/NETWORK.md for the guarantees):
  * one long-lived outbound stream per peer (protocol MSG_PROTOCOL) owned by a writer task that
    drains a bounded FrameQueue and coalesces frames into writes of up to 256 KiB; the peer's own
    outbound stream arrives here through the stream handler and is read by a reader task;
  * an app heartbeat (PING every `heartbeat` s, answered by PONG) on that stream; a peer silent for
    `dead_after` s is declared dead: its stream is reset, the connection dropped, and redialled;
  * reconnect with exponential backoff 50 ms -> 2 s, re-supplying the static addresses and evicting
    the swarm's negative dial cache before every dial;
  * request/response on a short-lived stream per request (REQ_PROTOCOL), so a bulk response never
    delays consensus frames queued on the long-lived stream.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from . import framing
from .framing import DATA, ERR, PING, PONG, REQ, RESP, FrameDecoder, FrameError
from .host import PortLock, apply_library_workarounds, build_host
from .identity import load_or_create_identity, parse_peer_id, peer_id_of
from .pnet import PskRing, fingerprint
from .queue import FrameQueue
from .security import AllowList

__all__ = ["PeerNetwork", "RequestError", "RequestTimeout", "MSG_PROTOCOL", "REQ_PROTOCOL"]

log = logging.getLogger("radchain.network")

MSG_PROTOCOL = TProtocol("/radchain/msg/1.0.0")
REQ_PROTOCOL = TProtocol("/radchain/req/1.0.0")

COALESCE_BYTES = 256 * 1024  # one stream.write() per batch; per-write trio checkpoints cost 20-50 us
READ_CHUNK = 65536
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
CONNECT_TIMEOUT = 5.0  # a PSK mismatch hangs ~10 s per dial attempt inside libp2p; we give up sooner
CLEANUP_TIMEOUT = 1.0
REQUEST_READ_TIMEOUT = 10.0  # server side: the request frame must arrive within this
_PING = struct.Struct(">d")

Handler = Callable[[str, bytes], Awaitable[bytes]]


class RequestError(Exception):
    """A request failed: peer unreachable, stream broken, no handler, handler error, response too big."""


class RequestTimeout(RequestError, TimeoutError):
    """No response within the caller's timeout."""


@dataclass(eq=False)
class _Peer:
    pid: str
    id: ID
    addrs: list[multiaddr.Multiaddr]
    queue: FrameQueue  # ordinary channels
    urgent: FrameQueue  # priority channels (consensus), PING and PONG: written before `queue`
    pending: list[bytes] = field(default_factory=list)  # taken from the queue, not yet written
    up: bool = False  # our outbound stream to the peer is open
    session_started: float = 0.0
    last_rx: float = float("-inf")  # trio clock of the last bytes received from the peer
    reader_blocked: bool = False  # the inbound reader waits on a full inbox (our fault, not the peer's)
    inbound: INetStream | None = None  # the peer's current stream to us
    deliver: trio.Lock = field(default_factory=trio.Lock)  # one reader delivers at a time (order)
    rtt: float | None = None
    down_since: float | None = None  # trio clock when we last had no session with it (None: in session)


def _dial_addr(pid: str, addr: str) -> multiaddr.Multiaddr:
    """A member's static address, accepting and checking an optional trailing /p2p/<peer id>."""
    ma = multiaddr.Multiaddr(addr)
    if "p2p" in [proto.name for proto in ma.protocols()]:
        if ma.value_for_protocol("p2p") != pid:
            raise ValueError(f"address {addr} names another peer than {pid}")
        ma = ma.decapsulate(multiaddr.Multiaddr(f"/p2p/{pid}"))
    return ma


def _unblock(host: IHost, pid: ID) -> None:
    """Evict the swarm's 60 s negative dial cache for this peer (else a restarted peer stays unreachable)."""
    net = host.get_network()
    if hasattr(net, "unblock_peer"):
        net.unblock_peer(pid)
    else:  # pragma: no cover - older/newer layouts
        cache = getattr(net, "_negative_peer_cache", None)
        if cache is not None:
            cache.evict(str(pid))


async def _quietly(stream: INetStream | None, how: str = "reset") -> None:
    """Reset or close a stream, bounded in time and shielded from cancellation, ignoring errors."""
    if stream is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
        try:
            await (stream.reset() if how == "reset" else stream.close())
        except Exception:
            pass


class PeerNetwork:
    """Consortium messaging over py-libp2p. See the module docstring and docs/NETWORK.md.

    `identity` is a libp2p KeyPair or the path of an identity file (see network.identity).
    `members` maps every member's peer-ID string to its static multiaddrs (a trailing /p2p/<id> is
    accepted); our own entry, if present, is ignored for dialing. `psk` (32 bytes) enables libp2p
    private networking. Frames on `priority_channels` go through a separate per-peer queue that
    the writer always drains first, so consensus traffic is not stuck behind a tx backlog
    (order is kept per channel, not across lanes). Methods must be called from the trio thread.
    Run with `await nursery.start(net.run)`; it returns once listening.
    """

    def __init__(
        self,
        identity: KeyPair | str | os.PathLike[str],
        members: Mapping[str, Sequence[str]],
        psk: bytes | None,
        listen: str,
        *,
        queue_frames: int = 10_000,
        queue_bytes: int = 64 * 1024 * 1024,
        inbox_size: int = 10_000,
        max_response: int = 4 * 1024 * 1024,
        max_concurrent_requests: int = 16,
        handler_timeout: float = 30.0,
        priority_channels: Iterable[str] = ("consensus",),
        heartbeat: float = 1.0,
        dead_after: float = 3.5,
        stale_after: float = 10.0,
        lock_dir: str | None = None,
    ) -> None:
        if not isinstance(identity, KeyPair):
            identity = load_or_create_identity(identity)
        self.identity = identity
        self.peer_id = peer_id_of(identity)
        self.listen = multiaddr.Multiaddr(listen)
        if self.listen.value_for_protocol("ip4") is None or self.listen.value_for_protocol("tcp") is None:
            raise ValueError(f"listen address must be /ip4/<ip>/tcp/<port>, got {listen}")
        self.psk = psk
        # every connection runs under one of the ring's keys; set_psks changes them while running (pnet)
        self.psk_ring = PskRing([psk], psk) if psk is not None else None
        self.priority_channels = frozenset(priority_channels)
        self.max_response = max_response
        self.handler_timeout = handler_timeout
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        # A member without a session for longer than this gets nothing queued: what waited for it is dropped.
        # A restarted node used to receive (decrypt, decode, check) every gossip batch and consensus message
        # of its whole absence, most of its catch-up CPU; block sync and gossip rebroadcast bring it what it
        # lacks, as they do for any frame dropped by a full queue. Shorter absences (a blip, dead_after and
        # a redial) keep their frames in order.
        self.stale_after = stale_after
        self._lock_dir = lock_dir
        self._queue_frames, self._queue_bytes = queue_frames, queue_bytes
        self._peers: dict[str, _Peer] = {}
        for pid, addrs in members.items():
            if pid != self.peer_id:
                self._peers[pid] = self._new_peer(pid, addrs)
        self._allowed = AllowList(frozenset(self._peers) | {self.peer_id})
        self._loops: dict[str, trio.CancelScope] = {}  # peer -> its dialing loop (set_members ends it)
        self._nursery: trio.Nursery | None = None
        self._inbox_send, self.inbox = trio.open_memory_channel[tuple[str, str, bytes]](inbox_size)
        self._handlers: dict[str, Handler] = {}
        self._req_slots = trio.Semaphore(max_concurrent_requests)
        self.stats: Counter[str] = Counter()
        self.host: IHost | None = None
        self.listen_addrs: list[str] = []
        self._running = False
        self._rebuild: trio.Event | None = None  # set: run() rebuilds the host (set_identity)
        # Called with a member's peer ID each time an outbound session to it is (re)established. A session
        # can end with frames written into a connection that was already dead (the peer declared it silent
        # and dropped it): the application resends what must not wait for its own timers (node: pending txs).
        self.on_peer_up: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ public API

    def _new_peer(self, pid: str, addrs: Sequence[str]) -> _Peer:
        ident = parse_peer_id(pid)
        wakeup = trio.lowlevel.ParkingLot()
        return _Peer(pid=pid, id=ident, addrs=[_dial_addr(pid, a) for a in addrs],
                     queue=FrameQueue(self._queue_frames, self._queue_bytes, wakeup),
                     urgent=FrameQueue(self._queue_frames, self._queue_bytes, wakeup))

    def set_members(self, members: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
        """Replace the consortium (peer ID -> static multiaddrs) while running: new members are allowed and
        dialled; a member no longer listed is refused at the handshake from now on, its dialing loop ends,
        its queued frames are dropped and its connection is closed. Known members keep their streams and
        queues (their addresses are updated for the next dial). Returns (added, removed) peer IDs. Raises
        ValueError (and changes nothing) if an entry does not parse."""
        fresh = {pid: self._new_peer(pid, addrs) for pid, addrs in members.items()
                 if pid != self.peer_id and pid not in self._peers}
        for pid, addrs in members.items():  # validate every address before changing anything
            if pid in self._peers:
                [_dial_addr(pid, a) for a in addrs]
        removed = [pid for pid in self._peers if pid not in members]
        for pid, addrs in members.items():
            if pid in self._peers:
                self._peers[pid].addrs = [_dial_addr(pid, a) for a in addrs]
        self._peers.update(fresh)
        for pid in removed:
            self._peers.pop(pid)
        self._allowed.set(frozenset(self._peers) | {self.peer_id})
        for pid in removed:
            scope = self._loops.pop(pid, None)
            if scope is not None:
                scope.cancel()
            self.stats["members_removed"] += 1
        if self._nursery is not None:
            for p in fresh.values():
                self._nursery.start_soon(self._peer_loop, p)
            for pid in removed:
                self._nursery.start_soon(self._disconnect, pid)
        self.stats["members_added"] += len(fresh)
        if fresh or removed:
            log.info("consortium changed: %d peers added, %d removed", len(fresh), len(removed))
        return list(fresh), removed

    def set_psks(self, accept: Iterable[bytes], prefer: bytes) -> int:
        """Accept connections under any of `accept` and dial under `prefer` from now on (a PSK rotation:
        network.pnet). Live connections that use a key no longer accepted are closed: their peers redial
        under an accepted key. Returns how many were closed. Raises ValueError (and changes nothing) on a
        malformed key set, or if the network was started without a PSK (no private network to rotate)."""
        if self.psk_ring is None:
            raise ValueError("this network runs without a PSK")
        accept = list(accept)
        before = self.psk_ring.status()
        stale = self.psk_ring.set(accept, prefer)
        self.psk = prefer
        if self.psk_ring.status()["accepted"] != before["accepted"]:
            log.info("private network keys: accept %s, prefer %s", ", ".join(map(fingerprint, accept)),
                     fingerprint(prefer))
        for conn in stale:
            self.stats["psk_retired_connections"] += 1
            if self._nursery is not None:
                self._nursery.start_soon(self._close_conn, conn)
        return len(stale)

    def psk_status(self) -> dict:
        """Fingerprints (network.pnet.fingerprint) of the preferred and accepted PSKs, and live connections by
        the key this side writes under; {} without a PSK."""
        return {} if self.psk_ring is None else self.psk_ring.status()

    @staticmethod
    async def _close_conn(conn) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            try:
                await conn.close()
            except Exception:
                pass

    async def _disconnect(self, pid: str) -> None:
        host = self.host
        if host is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            try:
                await host.disconnect(parse_peer_id(pid))
            except Exception:
                pass

    @property
    def peers(self) -> list[str]:
        """Every other member's peer ID."""
        return list(self._peers)

    def connected_peers(self) -> list[str]:
        """Peers with an open outbound stream that we heard from within `dead_after` seconds
        (or whose frames wait for room in our inbox)."""
        if not self._running:
            return []
        now = trio.current_time()
        return [
            p.pid
            for p in self._peers.values()
            # a reader waiting on our full inbox can't hear the peer; that is our slowness, not its
            if p.up and (p.reader_blocked or now - p.last_rx <= self.dead_after)
        ]

    def send(self, peer_id: str, channel: str, data: bytes) -> bool:
        """Enqueue `data` for `peer_id` on `channel` without blocking.

        Returns False, counting `stats["dropped_queue_full"]`, when the peer's queue for this lane is
        full (a peer down or slower than we produce), or `stats["dropped_peer_down"]` when we have had no
        session with it for over `stale_after` s: nothing is enqueued then. Use `send_wait` to wait for room.
        Raises KeyError for a non-member, ValueError for a bad channel or a message over 16 MiB.
        """
        p = self._peer(peer_id)
        frame = framing.encode_data(channel, bytes(data))
        if self._gone(p):
            return False
        return self._enqueue(self._lane(p, channel), frame)

    def broadcast(self, channel: str, data: bytes) -> int:
        """`send` to every other member (never to ourselves); returns how many queues accepted it."""
        frame = framing.encode_data(channel, bytes(data))
        return sum(self._enqueue(self._lane(p, channel), frame) for p in self._peers.values() if not self._gone(p))

    async def send_wait(self, peer_id: str, channel: str, data: bytes) -> None:
        """Like `send`, but waits for room in the peer's queue (backpressure) instead of dropping."""
        p = self._peer(peer_id)
        if self._gone(p):
            return  # nobody to wait for: dropped, as by `send`
        await self._lane(p, channel).put(framing.encode_data(channel, bytes(data)))
        self.stats["frames_queued"] += 1

    async def broadcast_wait(self, channel: str, data: bytes) -> None:
        """Like `broadcast`, waiting for room in each queue in turn."""
        frame = framing.encode_data(channel, bytes(data))
        for p in list(self._peers.values()):
            if not self._gone(p):
                await self._lane(p, channel).put(frame)
                self.stats["frames_queued"] += 1

    async def receive_batch(self, limit: int = 1024) -> list[tuple[str, str, bytes]]:
        """Wait for the next inbox item, then take whatever else is already there (up to `limit`).

        Same items and order as iterating `inbox`, but one trio schedule point per batch instead
        of per message (roughly doubles what a consumer can take at 300 B messages). Raises
        trio.EndOfChannel once the network has stopped and the inbox is drained.
        """
        items = [await self.inbox.receive()]
        while len(items) < limit:
            try:
                items.append(self.inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return items

    def serve(self, channel: str, handler: Handler) -> None:
        """Answer requests on `channel` with `await handler(peer_id, data) -> bytes`.

        A handler that raises or overruns `handler_timeout` makes the requester get RequestError;
        so does a response over `max_response` bytes. Both are counted in `stats`.
        """
        framing.check_channel(channel)
        self._handlers[channel] = handler

    async def request(self, peer_id: str, channel: str, data: bytes, timeout: float) -> bytes:
        """Send a request to `peer_id` and return its response.

        Raises RequestTimeout (also a TimeoutError) after `timeout` seconds, RequestError for any other
        failure (unreachable peer, no handler there, handler error, response over `max_response`).
        """
        p = self._peer(peer_id)
        frame = framing.encode_req(channel, bytes(data))
        host = self._host()
        self.stats["requests_sent"] += 1
        stream: INetStream | None = None
        ok = False
        result = b""
        with trio.move_on_after(timeout) as cs:
            try:
                _unblock(host, p.id)
                await host.connect(PeerInfo(p.id, p.addrs))
                stream = await host.new_stream(p.id, [REQ_PROTOCOL])
                await stream.write(frame)
                kind, body = await self._read_one_frame(stream, self.max_response + 1)
                if kind == RESP:
                    result, ok = body, True
                elif kind == ERR:
                    raise RequestError(f"{peer_id} refused the request: {body.decode('utf-8', 'replace')}")
                else:
                    raise RequestError(f"{peer_id} answered with frame kind {kind}")
            except RequestError:
                self.stats["requests_failed"] += 1
                raise
            except FrameError as e:
                self.stats["requests_failed"] += 1
                raise RequestError(f"bad response from {peer_id}: {e}") from e
            except Exception as e:
                self.stats["requests_failed"] += 1
                raise RequestError(f"request to {peer_id} failed: {type(e).__name__}: {e}") from e
            finally:
                await _quietly(stream, "close" if ok else "reset")
        if cs.cancelled_caught:
            self.stats["requests_timed_out"] += 1
            raise RequestTimeout(f"no response from {peer_id} on {channel!r} within {timeout} s")
        return result

    def peer_status(self) -> dict[str, dict[str, object]]:
        """Per-peer view for health endpoints: up, seconds since heard, queued frames/bytes, RTT (ms)."""
        now = trio.current_time() if self._running else 0.0
        return {
            p.pid: {
                "up": p.up,
                "silent_s": None if p.last_rx == float("-inf") else round(now - p.last_rx, 3),
                "queued_frames": len(p.queue) + len(p.urgent) + len(p.pending),
                "queued_bytes": p.queue.nbytes + p.urgent.nbytes,
                "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 3),
            }
            for p in self._peers.values()
        }

    async def wait_connected(self, peers: Iterable[str] | None = None) -> None:
        """Wait until all `peers` (default: every member) are in `connected_peers()`.
        Wrap in trio.fail_after/move_on_after to bound it."""
        want = set(self._peers if peers is None else peers)
        while not want <= set(self.connected_peers()):
            await trio.sleep(0.01)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every member, and serve until cancelled. Closes the host first on the way out
        (closing it after its services raced into "Nursery is closed to new arrivals"). `set_identity`
        rebuilds the host (same listen address) under a new libp2p identity without leaving run()."""
        apply_library_workarounds()
        lock = PortLock(self.listen, self._lock_dir)
        lock.acquire()
        try:
            status: trio.TaskStatus[None] | None = task_status
            while True:
                self._rebuild = trio.Event()
                await self._serve_host(status)
                status = None  # started once
        finally:
            self._rebuild = None
            self._inbox_send.close()
            lock.release()

    async def _serve_host(self, task_status: trio.TaskStatus[None] | None) -> None:
        """One host's life: returns when set_identity asks for a new host, else runs until cancelled."""
        host = build_host(self.identity, self._allowed, self.psk_ring, self.listen, self._on_reject)
        self.host = host
        rebuild = self._rebuild
        assert rebuild is not None
        async with host.run(listen_addrs=[self.listen]):
            try:
                host.set_stream_handler(MSG_PROTOCOL, self._on_msg_stream)
                host.set_stream_handler(REQ_PROTOCOL, self._on_req_stream)
                self.listen_addrs = [str(a) for a in host.get_transport_addrs()]
                if self.listen.value_for_protocol("tcp") == "0" and self.listen_addrs:
                    self.listen = multiaddr.Multiaddr(self.listen_addrs[0])  # a rebuilt host binds the same port
                self._running = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_rebuild, rebuild, nursery.cancel_scope)
                    self._nursery = nursery
                    for p in self._peers.values():
                        nursery.start_soon(self._peer_loop, p)
                    if task_status is not None:
                        task_status.started()
            finally:
                self._nursery = None
                self._running = False
                for p in self._peers.values():
                    p.up = False
                with trio.CancelScope(shield=True), trio.move_on_after(3):
                    try:
                        await host.close()
                    except Exception:
                        log.debug("host.close failed", exc_info=True)

    @staticmethod
    async def _until_rebuild(rebuild: trio.Event, scope: trio.CancelScope) -> None:
        await rebuild.wait()  # serve even with no other member until then
        scope.cancel()

    def set_identity(self, identity: KeyPair) -> bool:
        """Take a new libp2p identity while running (a member's p2p key rotation): the host is closed and
        rebuilt on the same listen address under `identity`, every member is redialled, and queued frames
        are kept (each peer's queues and its unsent batch survive). The other members must allow the new
        peer ID (their set_members) for the new connections to be admitted. Returns False if unchanged."""
        pid = peer_id_of(identity)
        if pid == self.peer_id:
            return False
        self.identity, self.peer_id = identity, pid
        self._peers.pop(pid, None)  # never dial ourselves
        self._allowed.set(frozenset(self._peers) | {self.peer_id})
        self.stats["identity_changes"] += 1
        log.info("libp2p identity is now %s: rebuilding the host", pid)
        if self._rebuild is not None:
            self._rebuild.set()
        return True

    # ------------------------------------------------------------------ internals

    def _peer(self, peer_id: str) -> _Peer:
        try:
            return self._peers[peer_id]
        except KeyError:
            raise KeyError(f"{peer_id!r} is not another consortium member") from None

    def _host(self) -> IHost:
        if self.host is None or not self._running:
            raise RequestError("network is not running")
        return self.host

    def _lane(self, p: _Peer, channel: str) -> FrameQueue:
        return p.urgent if channel in self.priority_channels else p.queue

    def _gone(self, p: _Peer) -> bool:
        """Whether `p` has been without a session for over `stale_after` s. The first time it is, the
        frames waiting for it are dropped (counted in `stats["dropped_peer_down"]`, as is each frame
        refused afterwards) until a session is established again."""
        if p.down_since is None or p.up or trio.current_time() - p.down_since <= self.stale_after:
            return False
        if p.queue or p.urgent or p.pending:
            dropped = p.queue.clear() + p.urgent.clear() + len(p.pending)
            p.pending.clear()
            self.stats["dropped_peer_down"] += dropped
            log.info("peer %s without a session for over %.0f s: %d queued frames dropped", p.pid,
                     self.stale_after, dropped)
        self.stats["dropped_peer_down"] += 1
        return True

    def _enqueue(self, q: FrameQueue, frame: bytes) -> bool:
        if q.put_nowait(frame):
            self.stats["frames_queued"] += 1
            return True
        self.stats["dropped_queue_full"] += 1
        return False

    def _on_reject(self, remote: str) -> None:
        self.stats["rejected_handshakes"] += 1
        log.warning("refused connection from non-member %s", remote)

    def _member_of(self, stream: INetStream) -> _Peer | None:
        try:
            pid = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            return None
        return self._peers.get(pid)

    async def _peer_loop(self, p: _Peer) -> None:
        with trio.CancelScope() as scope:
            self._loops[p.pid] = scope
            if self._peers.get(p.pid) is not p:
                return  # removed before this loop started
            backoff = BACKOFF_MIN
            if not p.up and p.down_since is None:
                p.down_since = trio.current_time()  # not reached yet: its absence counts from now
            while True:
                if await self._session(p):
                    backoff = BACKOFF_MIN
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, p: _Peer) -> bool:
        """One outbound stream's life. Returns True if the stream was established."""
        host = self.host
        assert host is not None
        stream: INetStream | None = None
        established = dead = False
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                _unblock(host, p.id)
                await host.connect(PeerInfo(p.id, p.addrs))  # re-supply static addrs: peerstore TTLs expire
                stream = await host.new_stream(p.id, [MSG_PROTOCOL])
            established = True
            p.up, p.session_started, p.down_since = True, trio.current_time(), None
            self.stats["connects"] += 1
            if self.on_peer_up is not None:
                try:
                    self.on_peer_up(p.pid)
                except Exception:  # the application's bug must not end a healthy session
                    log.exception("on_peer_up(%s) raised", p.pid)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watchdog, p, nursery.cancel_scope)
                    await self._write_loop(p, stream)
            except* Exception as group:
                # A write that fails while the host is torn down (set_identity's rebuild) arrives in one group
                # with the rebuild's Cancelled: `except Exception` below cannot catch that group, and the
                # write's error went on to end the whole node. Here the error is handled and the Cancelled
                # alone goes on to the scope that cancelled.
                self.stats["stream_errors"] += 1
                log.debug("session with %s ended: %r", p.pid, group.exceptions[0])
            else:
                dead = True  # only the watchdog ends the nursery without an exception
        except trio.TooSlowError:
            self.stats["dial_timeouts"] += 1
        except Exception as e:
            self.stats["stream_errors" if established else "dial_failures"] += 1
            log.debug("session with %s ended: %r", p.pid, e)
        finally:
            p.up = False
            if established:
                p.down_since = trio.current_time()
            await _quietly(stream, "reset")
        if dead:
            self.stats["peers_declared_dead"] += 1
            log.info("peer %s silent for %.1f s: dropping its connection", p.pid, self.dead_after)
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    await host.disconnect(p.id)
                except Exception:
                    pass
        return established

    async def _watchdog(self, p: _Peer, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.heartbeat / 4)
            if p.reader_blocked:
                continue
            if trio.current_time() - max(p.last_rx, p.session_started) > self.dead_after:
                scope.cancel()
                return

    async def _write_loop(self, p: _Peer, stream: INetStream) -> None:
        pending = p.pending  # survives a broken stream: resent on the next one
        last_ping = float("-inf")
        while True:
            if not pending:
                wait = max(0.0, last_ping + self.heartbeat - trio.current_time())
                with trio.move_on_after(wait):
                    while not (p.urgent or p.queue):
                        await p.urgent.wakeup.park()
                    await trio.lowlevel.checkpoint()  # let producers add more before we drain
                # frames are only taken outside the cancellable wait: a timeout never loses one
                pending.extend(p.urgent.take(COALESCE_BYTES))
                room = COALESCE_BYTES - sum(map(len, pending))
                pending.extend(p.queue.take(room, at_least_one=not pending))
            now = trio.current_time()
            if now - last_ping >= self.heartbeat:
                pending.insert(0, framing.encode(PING, _PING.pack(now)))
                last_ping = now
            if not pending:
                continue
            data = b"".join(pending)
            await stream.write(data)
            self.stats["writes"] += 1
            self.stats["frames_out"] += len(pending)
            self.stats["bytes_out"] += len(data)
            pending.clear()

    async def _read_one_frame(self, stream: INetStream, max_frame: int) -> tuple[int, bytes]:
        dec = FrameDecoder(max_frame)
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                raise RequestError("stream closed before a complete frame")
            frames = dec.feed(chunk)
            if dec.error is not None:
                raise dec.error
            if frames:
                if len(frames) > 1 or dec.buffered:
                    raise FrameError("more than one frame")
                return frames[0]

    async def _on_msg_stream(self, stream: INetStream) -> None:
        p = self._member_of(stream)
        if p is None:  # the allow-list already refused non-members at the handshake; belt and braces
            self.stats["rejected_streams"] += 1
            await _quietly(stream, "reset")
            return
        old, p.inbound = p.inbound, stream
        if old is not None:  # the peer reconnected: its previous stream is stale
            await _quietly(old, "reset")
        dec = FrameDecoder()
        inbox = self._inbox_send
        stats = self.stats
        try:
            while True:
                chunk = await stream.read(READ_CHUNK)
                if not chunk:
                    break
                p.last_rx = trio.current_time()
                stats["bytes_in"] += len(chunk)
                # A replaced stream's reader may still be delivering its last chunk (blocked on a
                # full inbox): the lock makes the new stream's frames wait behind it.
                async with p.deliver:
                    if p.inbound is not stream or self._peers.get(p.pid) is not p:
                        break  # superseded by a newer stream from the same peer, or no longer a member
                    for kind, body in dec.feed(chunk):
                        if kind == DATA:
                            item = (p.pid, *framing.parse_channel_body(body))
                            stats["frames_in"] += 1
                            try:
                                inbox.send_nowait(item)
                            except trio.WouldBlock:
                                stats["inbox_full_waits"] += 1
                                p.reader_blocked = True
                                try:
                                    await inbox.send(item)
                                finally:
                                    p.reader_blocked = False
                                    p.last_rx = trio.current_time()
                        elif kind == PING:
                            if len(body) != _PING.size:
                                raise FrameError("bad PING")
                            p.urgent.put_nowait(framing.encode(PONG, body))
                        elif kind == PONG:
                            if len(body) != _PING.size:
                                raise FrameError("bad PONG")
                            p.rtt = trio.current_time() - _PING.unpack(body)[0]
                        else:
                            raise FrameError(f"frame kind {kind} not allowed on a message stream")
                    if dec.error is not None:
                        raise dec.error
        except FrameError as e:
            stats["malformed_frames"] += 1
            log.warning("malformed frame from %s (%s): dropping the stream", p.pid, e)
            await _quietly(stream, "reset")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            await _quietly(stream, "reset")  # we are shutting down
        except Exception as e:
            stats["inbound_errors"] += 1
            log.debug("inbound stream from %s ended: %r", p.pid, e)
            await _quietly(stream, "reset")
        finally:
            if p.inbound is stream:
                p.inbound = None

    async def _on_req_stream(self, stream: INetStream) -> None:
        p = self._member_of(stream)
        if p is None:
            self.stats["rejected_streams"] += 1
            await _quietly(stream, "reset")
            return
        async with self._req_slots:
            try:
                with trio.fail_after(REQUEST_READ_TIMEOUT):
                    kind, body = await self._read_one_frame(stream, framing.MAX_FRAME)
                if kind != REQ:
                    raise FrameError(f"frame kind {kind} on a request stream")
                channel, payload = framing.parse_channel_body(body)
            except FrameError as e:
                self.stats["malformed_frames"] += 1
                log.warning("malformed request from %s (%s): dropping the stream", p.pid, e)
                await _quietly(stream, "reset")
                return
            except Exception:
                self.stats["inbound_errors"] += 1
                await _quietly(stream, "reset")
                return
            self.stats["requests_served"] += 1
            reply = await self._answer(p.pid, channel, payload)
            try:
                await stream.write(reply)
            except Exception:
                self.stats["inbound_errors"] += 1
                await _quietly(stream, "reset")
                return
            await _quietly(stream, "close")

    async def _answer(self, pid: str, channel: str, payload: bytes) -> bytes:
        handler = self._handlers.get(channel)
        if handler is None:
            self.stats["requests_unhandled"] += 1
            return framing.encode(ERR, f"no handler for channel {channel!r}".encode())
        try:
            with trio.fail_after(self.handler_timeout):
                out = await handler(pid, payload)
        except Exception as e:
            self.stats["handler_errors"] += 1
            log.warning("handler for %r failed on a request from %s", channel, pid, exc_info=True)
            return framing.encode(ERR, f"handler error: {type(e).__name__}".encode())
        if not isinstance(out, bytes | bytearray | memoryview):
            self.stats["handler_errors"] += 1
            return framing.encode(ERR, b"handler returned a non-bytes response")
        if len(out) > self.max_response:
            self.stats["responses_too_large"] += 1
            return framing.encode(ERR, f"response of {len(out)} bytes exceeds the limit".encode())
        return framing.encode(RESP, bytes(out))
