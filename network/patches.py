"""Process-wide fixes for py-libp2p 0.8.1 (pinned in pyproject). Every node must apply them.

1. Yamux RTT ping: `Yamux._measure_rtt_loop` becomes a no-op. Its PING ACK is written inline by the
   connection's reader task; under bidirectional load the reader blocks on the write lock held by
   a data writer that is itself blocked on a full TCP buffer, and the connection wedges forever
   (shared notes: 1 run in 10 wedged by default, 0 in 22 with the loop disabled).
2. Yamux send-window wait: `YamuxStream.write` gives up after 5 s without a window update and
   raises, possibly after sending part of the data. A receiver that is merely slow (its inbox is
   full) then gets its stream torn down and everything buffered in it is lost. The replacement
   waits for window as long as the stream is open: backpressure reaches our bounded per-peer
   queues instead, and dead peers are still detected by our heartbeat, whose watchdog cancels
   the blocked write.
3. Yamux receive-window credit: `YamuxStream._auto_tune_and_send_window_update` of 0.8.1 sends a
   WINDOW_UPDATE frame after most reads (its "release on read" default and its partial-slack branch,
   which alternate), so a trickle of small messages costs one credit frame back per data frame: an
   extra Noise + PSK encryption, a send and a receive on both ends. The replacement is go-yamux's rule:
   credit the consumed bytes in one update once they reach half the receive window (the library's own
   `_grow_threshold`), with the library's auto-tuning at each credit. The sender can still have up to
   half a window in flight while the update is on its way, so a reader that keeps reading never stalls it;
   a reader that stops is what should stall it.
   Measured: `python -m bench.trickle`.
4. Yamux frames written whole: `Yamux._write_frame` writes under the connection's write lock but can be
   cancelled halfway (a request given up on its timeout, the OPRF client cancelling the slowest member once
   it has t answers), when the socket's buffer is full; the next writer's frame then follows half a Noise
   message, the member cannot decrypt the connection and drops it, with its consensus stream and the frames
   already written after the cut. The replacement writes each frame shielded from cancellation, for at most
   FRAME_WRITE_SECONDS; a frame not written by then closes the connection (it cannot carry another).
Each patch checks the original's source first and is skipped (with a warning) if it changed.
"""

from __future__ import annotations

import inspect
import logging
import struct

import trio
from libp2p.network.connection.exceptions import RawConnError
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as _yamux

__all__ = ["apply_patches"]

log = logging.getLogger("radchain.network")

_ORIG_WRITE = _yamux.YamuxStream.write
_ORIG_RTT = _yamux.Yamux._measure_rtt_loop
_ORIG_CREDIT = _yamux.YamuxStream._auto_tune_and_send_window_update
_ORIG_WRITE_FRAME = _yamux.Yamux._write_frame
FRAME_WRITE_SECONDS = 5.0
_applied = False


async def _no_rtt_loop(self: _yamux.Yamux) -> None:
    return None


async def _write_waiting_for_window(self: _yamux.YamuxStream, data: bytes) -> None:
    """`YamuxStream.write` of 0.8.1 with the 5 s window-update timeout removed."""
    if self.send_closed:
        raise MuxedStreamError("Stream is closed for sending")
    total_len = len(data)
    sent = 0
    while sent < total_len:
        frame: bytes | None = None
        while frame is None:
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    if self.send_window > 0:
                        to_send = min(self.send_window, _yamux.MAX_MESSAGE_SIZE - _yamux.HEADER_SIZE, total_len - sent)
                        chunk = data[sent : sent + to_send]
                        self.send_window -= to_send
                        header = struct.pack(
                            _yamux.YAMUX_HEADER_FORMAT, 0, _yamux.TYPE_DATA, 0, self.stream_id, len(chunk)
                        )
                        frame = header + chunk
            if frame is not None:
                break
            # Zero window: the library polls here too (it has no window-update event).
            while True:
                async with self.window_lock:
                    if self.send_window > 0 or self.closed:
                        break
                await trio.sleep(0.005)
        await self.conn._write_frame(frame)
        sent += len(frame) - _yamux.HEADER_SIZE


async def _credit_at_half_window(self: _yamux.YamuxStream, *, bytes_read: int = 0) -> None:
    """Send receive-window credit only once the bytes read and not yet credited reach half the window."""
    increment = 0
    async with self.window_lock:
        # recv_window drops as frames arrive (Yamux.handle_incoming); what is buffered is not consumed yet,
        # so `consumed` is what the application has read and the sender has not been credited for.
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        consumed = self.target_recv_window - (self.recv_window + buffered)
        if consumed > 0 and consumed >= self._grow_threshold():
            self.recv_window += consumed
            self._pending_recv_release = 0
            # The library's window auto-tuning, as its own rule runs it with each credit: a stream whose
            # half-window credits follow each other quickly (a bulk transfer) doubles its window, up to 16 MiB.
            increment = consumed + self._apply_autotune_epoch(buffered)
    if increment:
        await self.send_window_update(increment, skip_lock=True)


async def _write_frame_whole(self: _yamux.Yamux, data: bytes) -> None:
    """`Yamux._write_frame` of 0.8.1 (without its debug log), the frame written whole or the connection closed."""
    async with self._write_lock:  # waiting for the lock may be cancelled: nothing is written yet
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_WRITE_SECONDS) as late:
                await self.secured_conn.write(data)
            if late.cancelled_caught:
                log.warning("a yamux frame was not written within %.0f s: closing the connection", FRAME_WRITE_SECONDS)
                with trio.move_on_after(1):
                    try:
                        await self.secured_conn.close()
                    except Exception:
                        pass
                raise RawConnError("connection closed: a frame could not be written whole")
    await trio.lowlevel.checkpoint()


def apply_patches() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    rtt_src = inspect.getsource(_ORIG_RTT)
    if "TYPE_PING" in rtt_src and "_write_frame" in rtt_src:
        _yamux.Yamux._measure_rtt_loop = _no_rtt_loop  # type: ignore[method-assign]
    else:  # pragma: no cover
        log.warning("py-libp2p yamux RTT loop changed: deadlock workaround NOT applied")
    write_src = inspect.getsource(_ORIG_WRITE)
    if "Timed out waiting for window update after 5 seconds" in write_src and "send_window" in write_src:
        _yamux.YamuxStream.write = _write_waiting_for_window  # type: ignore[method-assign]
    else:  # pragma: no cover
        log.warning("py-libp2p YamuxStream.write changed: window-wait workaround NOT applied")
    credit_src = inspect.getsource(_ORIG_CREDIT)
    if "_pending_recv_release" in credit_src and "send_window_update" in credit_src:
        _yamux.YamuxStream._auto_tune_and_send_window_update = _credit_at_half_window  # type: ignore[method-assign]
    else:  # pragma: no cover
        log.warning("py-libp2p yamux window credit changed: half-window credit NOT applied")
    frame_src = inspect.getsource(_ORIG_WRITE_FRAME)
    if "async with self._write_lock:" in frame_src and "await self.secured_conn.write(data)" in frame_src:
        _yamux.Yamux._write_frame = _write_frame_whole  # type: ignore[method-assign]
    else:  # pragma: no cover
        log.warning("py-libp2p Yamux._write_frame changed: whole-frame writes NOT applied")
