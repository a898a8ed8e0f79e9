"""Wire framing for RadChain peer streams, sans I/O (bytes in, frames out).

Every frame is ``u32 big-endian length | u8 kind | body`` where length counts kind + body.
Bodies by kind:

  DATA  ``u8 channel length | channel (ASCII) | payload``   one-way message on a channel
  PING  ``u64 nonce``                                       heartbeat, sent every second when idle
  PONG  ``u64 nonce``                                       answer to a PING (gives an RTT sample)
  REQ   ``u8 channel length | channel (ASCII) | payload``   request (first frame of a request stream)
  RESP  ``payload``                                         successful response
  ERR   ``UTF-8 message``                                   failed request

A 4-byte length plus a kind byte (rather than varints) lets the reader pull 64 KiB at a time and
parse in place: reading a varint byte by byte costs a yamux window update per `read()`.
"""

from __future__ import annotations

import struct

__all__ = [
    "DATA", "PING", "PONG", "REQ", "RESP", "ERR", "MAX_FRAME", "FrameError", "FrameDecoder",
    "encode", "encode_data", "encode_req", "parse_channel_body", "check_channel",
]

DATA, PING, PONG, REQ, RESP, ERR = 1, 2, 3, 4, 5, 6
_KINDS = frozenset((DATA, PING, PONG, REQ, RESP, ERR))
MAX_FRAME = 16 * 1024 * 1024  # kind + body; larger frames are a protocol violation
_HDR = struct.Struct(">IB")


class FrameError(ValueError):
    """The peer sent bytes that are not a valid frame; the stream must be dropped."""


_CHANNEL_CACHE_MAX = 256  # channel names seen are few ("consensus", "tx", "sync"); bound it anyway
_tx_channels: dict[str, bytes] = {}  # name -> wire prefix (length byte + name)
_rx_channels: dict[bytes, str] = {}


def _printable(raw: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in raw)


def check_channel(channel: str) -> bytes:
    """Channel name as wire bytes: 1..255 printable ASCII characters."""
    try:
        raw = channel.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as e:
        raise ValueError(f"channel must be an ASCII str, got {channel!r}") from e
    if not 1 <= len(raw) <= 255 or not _printable(raw):
        raise ValueError(f"channel must be 1..255 printable ASCII characters, got {channel!r}")
    return raw


def _channel_prefix(channel: str) -> bytes:
    prefix = _tx_channels.get(channel)
    if prefix is None:
        raw = check_channel(channel)
        prefix = bytes((len(raw),)) + raw
        if len(_tx_channels) < _CHANNEL_CACHE_MAX:
            _tx_channels[channel] = prefix
    return prefix


def encode(kind: int, body: bytes = b"") -> bytes:
    if len(body) + 1 > MAX_FRAME:
        raise ValueError(f"frame of {len(body) + 1} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HDR.pack(len(body) + 1, kind) + body


def _encode_channel_frame(kind: int, channel: str, payload: bytes) -> bytes:
    prefix = _channel_prefix(channel)
    n = 1 + len(prefix) + len(payload)
    if n > MAX_FRAME:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return b"".join((_HDR.pack(n, kind), prefix, payload))


def encode_data(channel: str, payload: bytes) -> bytes:
    return _encode_channel_frame(DATA, channel, payload)


def encode_req(channel: str, payload: bytes) -> bytes:
    return _encode_channel_frame(REQ, channel, payload)


def parse_channel_body(body: bytes) -> tuple[str, bytes]:
    """Split a DATA/REQ body into (channel, payload); FrameError if malformed."""
    if not body:
        raise FrameError("empty body")
    n = body[0]
    ch = body[1 : 1 + n]
    if n == 0 or len(ch) != n:
        raise FrameError("bad channel name")
    name = _rx_channels.get(ch)
    if name is None:
        if not _printable(ch):
            raise FrameError("bad channel name")
        name = ch.decode("ascii")
        if len(_rx_channels) < _CHANNEL_CACHE_MAX:
            _rx_channels[ch] = name
    return name, body[1 + n :]


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the complete frames as (kind, body) pairs.

    On an oversized or zero-length frame or an unknown kind, `feed` still returns the valid frames
    that preceded it and sets `error` (a FrameError); the caller handles those frames, then drops the
    stream. Any later `feed` raises that error: the byte stream is out of sync for good.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self.error: FrameError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.error is not None:
            raise self.error
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= 5:
            n, kind = _HDR.unpack_from(buf, pos)
            if n == 0 or n > self._max:
                self.error = FrameError(f"frame length {n} outside 1..{self._max}")
                break
            if kind not in _KINDS:
                self.error = FrameError(f"unknown frame kind {kind}")
                break
            end = pos + 4 + n
            if end > len(buf):
                break
            out.append((kind, bytes(buf[pos + 5 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out
