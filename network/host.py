"""Building a consortium libp2p host: Noise only, private-network PSK, peer-ID allow-list, yamux.

Library workarounds applied here (py-libp2p 0.8.1; see docs/NETWORK.md and shared notes):
  * security table = Noise only, wrapped by the allow-list (the default also offers plaintext);
  * yamux: RTT ping loop disabled (deadlock), no 5 s send-window timeout, and receive-window credit
    once per half window instead of a WINDOW_UPDATE frame per read (network/patches.py);
  * the TCP listener sets SO_REUSEPORT, so a second process can bind the same port silently and
    the kernel splits connections between the two: `PortLock` takes an flock per listen address
    and also probes the port with a plain (non-REUSEPORT) bind;
  * libp2p logging is muted (network/logs.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from collections.abc import Callable, Collection

import libp2p
import multiaddr
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair

from .logs import mute_libp2p_logging
from .patches import apply_patches
from .pnet import PskRing
from .pnet import install as install_pnet
from .security import noise_only_security

__all__ = ["build_host", "PortLock", "PortInUse", "apply_library_workarounds", "PSK_LEN"]

PSK_LEN = 32


def apply_library_workarounds() -> None:
    """Idempotent process-wide patches; must be in effect on every node of the network."""
    apply_patches()
    install_pnet()
    mute_libp2p_logging()


apply_library_workarounds()


def build_host(
    key_pair: KeyPair,
    allowed: Collection[str],
    psk: bytes | PskRing | None,
    listen: multiaddr.Multiaddr,
    on_reject: Callable[[str], None] | None = None,
) -> IHost:
    """A host that speaks Noise only (allow-listed), yamux, and PSK private networking if `psk`.

    A `PskRing` (network.pnet) makes the host accept any of its keys and dial with the preferred one;
    the ring can be changed while the host runs. A plain 32-byte PSK is library pnet (one key)."""
    apply_library_workarounds()
    psk_hex = None
    if isinstance(psk, bytes):
        if len(psk) != PSK_LEN:
            raise ValueError(f"psk must be {PSK_LEN} bytes, got {len(psk)}")
        psk_hex = psk.hex()
    host = libp2p.new_host(
        key_pair=key_pair,
        sec_opt=noise_only_security(key_pair, allowed, on_reject),
        muxer_preference="YAMUX",
        psk=psk_hex,
        listen_addrs=[listen],
    )
    if isinstance(psk, PskRing):
        # the swarm's only use of .psk is `new_protected_conn(raw_conn, self.psk)` (network.pnet.install)
        host.get_network().psk = psk  # type: ignore[attr-defined]
    return host


class PortInUse(OSError):
    pass


class PortLock:
    """Single-instance lock for one TCP listen address (libp2p's listener sets SO_REUSEPORT).

    Holds an exclusive flock on `<lock_dir>/radchain-p2p-<ip>-<port>.lock` for the life of the node
    and checks that nothing else is listening there. Port 0 (ephemeral) needs no lock.
    """

    def __init__(self, listen: multiaddr.Multiaddr, lock_dir: str | None = None) -> None:
        self.ip = listen.value_for_protocol("ip4")
        self.port = int(listen.value_for_protocol("tcp"))
        self.path = os.path.join(lock_dir or tempfile.gettempdir(), f"radchain-p2p-{self.ip}-{self.port}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.port == 0:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise PortInUse(errno.EADDRINUSE, f"{self.ip}:{self.port} is held by another RadChain node ({self.path})") from e
            raise
        try:
            self._probe()
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _probe(self) -> None:
        # A plain bind (SO_REUSEADDR so TIME_WAIT leftovers of a killed predecessor don't matter, but not
        # SO_REUSEPORT) fails with EADDRINUSE if any process is listening on the address.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.ip, self.port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(errno.EADDRINUSE, f"{self.ip}:{self.port} is already in use") from e
            raise
        finally:
            s.close()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
