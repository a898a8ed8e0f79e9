"""Private networking with a SET of pre-shared keys, so the consortium PSK rotates without a stop.

py-libp2p 0.8.1 has one PSK per host (libp2p/security/pnet/psk_conn.py): each direction of a raw
connection starts with an 8-byte nonce and then is a Salsa20 stream under the PSK; there is no MAC,
and a key mismatch only shows as a garbled multistream-select header (the dial then hangs ~10 s per
attempt). Both directions are independent streams, so a receiver can find out which key the sender
used without any change to the wire format:

  * every raw connection (inbound and outbound) reads the peer's nonce and the first 20 ciphertext
    bytes, and picks the accepted key under which they decrypt to the multistream-select header both
    sides always send first (``\\x13/multistream/1.0.0\\n``). None does: the connection is refused at
    once (a clean close instead of a 10 s hang), and the listener goes on.
  * an inbound connection holds its first write until the key is chosen and answers under that key
    (the listener's multistream writes before it reads: its first write does the identifying read);
  * an outbound connection writes under the ring's preferred key for that address; if the peer refuses
    it (closes before its preamble arrives), the next dial to that address uses the next accepted key
    (an older one), and so on round the ring.

The swarm builds its protected connection through the module global ``new_protected_conn`` of
``libp2p.network.swarm``; ``install()`` replaces it by a function that wraps raw connections with
``MultiPskConn`` when the swarm's ``psk`` is a ``PskRing`` and defers to the original otherwise
(one patch, no other change to the library). The ring is owned by the caller (network.peer_network
``set_psks``), which knows nothing of blocks: node/ tells it "accept these, prefer that".
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections import Counter
from collections.abc import Iterable

import trio
from Crypto.Cipher import Salsa20
from libp2p.io.exceptions import IOException
from libp2p.network.connection.raw_connection import RawConnection

__all__ = ["PskRing", "MultiPskConn", "PskRefused", "install", "fingerprint", "PSK_LEN", "MAX_ACCEPTED"]

log = logging.getLogger("radchain.network")

PSK_LEN = 32
NONCE_LEN = 8
# what multistream-select writes first on every raw connection (libp2p.utils.encode_delim)
HEADER = b"\x13/multistream/1.0.0\n"
PREAMBLE = NONCE_LEN + len(HEADER)
MAX_ACCEPTED = 4  # a rotation overlaps two keys; a few more cover back-to-back rotations
PREAMBLE_TIMEOUT = 10.0  # a peer that connects and sends nothing is dropped (bounded like libp2p's upgrade)
# Once identified, a read takes up to this much of what the socket holds and keeps the rest: Noise reads each
# message as a 2-byte length and then the body, two recv calls per message without it (bench.trickle).
READ_AHEAD = 64 * 1024


def _load_sodium_salsa20():
    """libsodium's crypto_stream_salsa20_xor_ic from the copy PyNaCl loaded (cffi ABI mode), or None."""
    try:
        import cffi
        import nacl.bindings  # noqa: F401 - runs sodium_init() before the first call
        from nacl import _sodium

        ffi = cffi.FFI()
        ffi.cdef("int crypto_stream_salsa20_xor_ic(unsigned char *c, const unsigned char *m, "
                 "unsigned long long mlen, const unsigned char *n, uint64_t ic, const unsigned char *k);")
        lib = ffi.dlopen(_sodium.__file__)
        return ffi, lib.crypto_stream_salsa20_xor_ic
    except Exception:  # pragma: no cover - a PyNaCl build that does not export it: pycryptodome's
        return None


_SODIUM = _load_sodium_salsa20()


class _SodiumSalsa20:
    """The Salsa20 stream (8-byte nonce, 64-bit block counter from 0) as pycryptodome's Salsa20 gives it,
    byte for byte, through one libsodium call per message: pycryptodome costs ~6-10 us of Python and
    argument handling per call, and every frame of every connection goes through here twice (4.9 % of
    a node's samples at full load were that overhead). A message that starts inside a 64-byte block is
    padded in front to the block's start and the pad dropped from the output."""

    __slots__ = ("_key", "_nonce", "_pos")

    def __init__(self, key: bytes, nonce: bytes) -> None:
        if len(key) != 32 or len(nonce) != NONCE_LEN:
            raise ValueError("Salsa20: a 32-byte key and an 8-byte nonce")
        self._key, self._nonce, self._pos = bytes(key), bytes(nonce), 0

    def encrypt(self, data) -> bytes:
        n = len(data)
        if not n:
            return b""
        pos = self._pos
        skip = pos & 63
        if skip:
            data = bytes(skip) + data
        elif type(data) is not bytes:
            data = bytes(data)
        ffi, xor_ic = _SODIUM
        out = ffi.new("unsigned char[]", n + skip)
        if xor_ic(out, data, n + skip, self._nonce, pos >> 6, self._key) != 0:
            raise RuntimeError("crypto_stream_salsa20_xor_ic failed")
        self._pos = pos + n
        return ffi.buffer(out)[skip:]

    decrypt = encrypt


def new_cipher(key: bytes, nonce: bytes):
    """A Salsa20 stream cipher (encrypt/decrypt) under `key` and the 8-byte `nonce`: libsodium's when
    PyNaCl exports it, else pycryptodome's (the same keystream: tests/network/test_pnet_cipher.py)."""
    if _SODIUM is not None:
        return _SodiumSalsa20(key, nonce)
    return Salsa20.new(key=key, nonce=nonce)


def fingerprint(psk: bytes) -> str:
    """A short public name for a PSK (logs, status): not the key, and not the on-chain commitment."""
    return hashlib.blake2b(psk, digest_size=6, person=b"radchain-psk-fp").hexdigest()


class PskRefused(IOException):
    """The peer's preamble decrypts under none of the accepted keys (or never came)."""


def _check(psk: bytes) -> bytes:
    if type(psk) is not bytes or len(psk) != PSK_LEN:
        raise ValueError(f"a PSK is {PSK_LEN} bytes")
    return psk


class PskRing:
    """The PSKs a host accepts on its connections, and the one it prefers when it dials."""

    def __init__(self, accept: Iterable[bytes], prefer: bytes) -> None:
        self.accepted: tuple[bytes, ...] = ()
        self.prefer = b""
        self._fallback: dict[object, int] = {}  # remote address -> index into dial_order()
        self._conns: weakref.WeakSet[MultiPskConn] = weakref.WeakSet()
        self.stats: Counter[str] = Counter()
        self.set(accept, prefer)

    def set(self, accept: Iterable[bytes], prefer: bytes) -> list[MultiPskConn]:
        """Replace the key set. Returns the live connections that use a key no longer accepted (in either
        direction): the caller closes them, and the peers redial under an accepted key."""
        keys = list(dict.fromkeys(_check(k) for k in accept))
        if _check(prefer) not in keys:
            raise ValueError("the preferred PSK must be one of the accepted ones")
        if len(keys) > MAX_ACCEPTED:
            raise ValueError(f"at most {MAX_ACCEPTED} PSKs are accepted at once")
        accepted = (prefer, *[k for k in keys if k != prefer])
        if accepted != self.accepted:
            self._fallback.clear()
        self.accepted, self.prefer = accepted, prefer
        return [c for c in list(self._conns) if not c.closed and not c.uses_only(self.accepted)]

    def dial_key(self, addr: object) -> bytes:
        return self.accepted[self._fallback.get(addr, 0) % len(self.accepted)]

    def dial_failed(self, addr: object, key: bytes) -> None:
        """An outbound connection under ``key`` was refused: the next dial to ``addr`` tries the next key."""
        if len(self.accepted) > 1 and self.dial_key(addr) == key:
            self._fallback[addr] = self._fallback.get(addr, 0) + 1
            self.stats["dial_fallbacks"] += 1

    def connections(self) -> Counter[str]:
        """Live connections by the fingerprint of the key this side writes under."""
        return Counter(fingerprint(c.write_key) for c in list(self._conns) if not c.closed and c.write_key)

    def status(self) -> dict:
        return {"prefer": fingerprint(self.prefer), "accepted": [fingerprint(k) for k in self.accepted],
                "connections": dict(self.connections()), **self.stats}


class MultiPskConn(RawConnection):
    """A raw connection under one of a PskRing's keys (see the module docstring)."""

    def __init__(self, conn, ring: PskRing) -> None:
        self._conn = conn
        self._ring = ring
        self.is_initiator = bool(getattr(conn, "is_initiator", False))
        try:
            self._addr = conn.get_remote_address()
        except Exception:
            self._addr = None
        self.write_key: bytes | None = ring.dial_key(self._addr) if self.is_initiator else None
        self.read_key: bytes | None = None
        self._read_cipher = None
        self._write_cipher = None
        self._buf = b""  # decrypted bytes read ahead; self._buf[self._pos:] not yet returned
        self._pos = 0
        self._lock = trio.Lock()
        self.closed = False
        ring._conns.add(self)

    def uses_only(self, keys: tuple[bytes, ...]) -> bool:
        return all(k is None or k in keys for k in (self.read_key, self.write_key))

    async def _identify(self) -> None:
        async with self._lock:
            if self._read_cipher is not None:
                return
            data = b""
            with trio.move_on_after(PREAMBLE_TIMEOUT):
                while len(data) < PREAMBLE:
                    chunk = await self._conn.read(PREAMBLE - len(data))  # never more than the preamble
                    if not chunk:
                        break
                    data += chunk
            if len(data) < PREAMBLE:
                self._ring.stats["preamble_short"] += 1
                raise PskRefused("connection closed or silent before its private-network preamble")
            nonce, head = data[:NONCE_LEN], data[NONCE_LEN:]
            for key in self._ring.accepted:
                cipher = new_cipher(key, nonce)
                if cipher.decrypt(head) == HEADER:
                    self._read_cipher, self.read_key, self._buf, self._pos = cipher, key, HEADER, 0
                    return
            self._ring.stats["refused"] += 1
            raise PskRefused("the peer's preamble decrypts under none of the accepted PSKs")

    async def read(self, n: int | None = None) -> bytes:
        # One reader at a time, as the stack above reads (multistream, then Noise, then yamux's reader task):
        # two concurrent reads could each buffer a remainder and hand bytes back out of order.
        if self._read_cipher is None:
            try:
                await self._identify()
            except Exception:
                if self.is_initiator and self.write_key is not None:
                    self._ring.dial_failed(self._addr, self.write_key)
                await self._close_quietly()
                raise
        if n == 0:
            return b""
        whole = n is None or n < 0
        if self._pos < len(self._buf):
            end = len(self._buf) if whole else min(len(self._buf), self._pos + n)
            out = self._buf[self._pos:end]  # an offset, not a re-slice of the rest: no copy per small read
            self._pos = end
            if end == len(self._buf):
                self._buf, self._pos = b"", 0  # not held until the next socket read
            return out
        data = await self._conn.read(None if whole else max(n, READ_AHEAD))
        if not data:
            return b""
        plain = self._read_cipher.decrypt(data)
        if whole or len(plain) <= n:
            return plain
        self._buf, self._pos = plain, n
        return plain[:n]

    async def write(self, data: bytes) -> None:
        if self._write_cipher is None:
            if self.write_key is None:  # inbound: answer under the key the dialer chose
                try:
                    await self._identify()
                except Exception:
                    await self._close_quietly()
                    raise
                self.write_key = self.read_key
            nonce = os.urandom(NONCE_LEN)
            self._write_cipher = new_cipher(self.write_key, nonce)
            await self._conn.write(nonce + self._write_cipher.encrypt(data))
            return
        await self._conn.write(self._write_cipher.encrypt(data))

    async def _close_quietly(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await self.close()
            except Exception:
                pass

    async def close(self) -> None:
        self.closed = True
        await self._conn.close()

    def get_remote_address(self):
        return self._conn.get_remote_address()

    def get_transport_addresses(self):
        getter = getattr(self._conn, "get_transport_addresses", None)
        return getter() if getter is not None else []


_installed = False


def install() -> None:
    """Route the swarm's protected-connection factory through here (idempotent)."""
    global _installed
    if _installed:
        return
    from libp2p.network import swarm as _swarm

    original = _swarm.new_protected_conn

    def new_protected_conn(conn, psk):
        if isinstance(psk, PskRing):
            return MultiPskConn(conn, psk)
        return original(conn, psk)

    _swarm.new_protected_conn = new_protected_conn
    _installed = True
