"""Noise-only security with a peer-ID allow-list (py-libp2p 0.8.1).

py-libp2p's default `sec_opt` offers Noise, TLS, secio **and /plaintext/2.0.0**; plaintext exchanges
public keys without proof of possession, so a dialer can claim any member's peer ID. We pass a
security table with exactly one entry, Noise, wrapped by `AllowListSecurity`: once the Noise XX
handshake has authenticated the remote static key, a peer ID outside the consortium is refused
before any muxer or stream exists. (libp2p's own ConnectionConfig allow_list is IP/CIDR only.)
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from libp2p.abc import IRawConnection, ISecureConn, ISecureTransport
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

__all__ = ["AllowList", "AllowListSecurity", "noise_only_security", "NOISE_PROTOCOL_ID"]


class AllowList:
    """The peer IDs admitted at the handshake; replaced as a whole when the consortium changes (PeerNetwork
    .set_members), so a handshake checks against one consistent set, the one in force when it completes."""

    def __init__(self, ids: Collection[str] = ()) -> None:
        self.ids: frozenset[str] = frozenset(ids)

    def set(self, ids: Collection[str]) -> None:
        self.ids = frozenset(ids)

    def __contains__(self, pid: object) -> bool:
        return pid in self.ids

    def __iter__(self):
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __or__(self, other) -> frozenset[str]:
        return self.ids | frozenset(other)


class AllowListSecurity(ISecureTransport):
    """Wraps a secure transport; refuses authenticated peers whose ID is not in `allowed` (a live
    AllowList is consulted at each handshake; any other collection is frozen)."""

    def __init__(
        self,
        inner: ISecureTransport,
        allowed: Collection[str],
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.allowed = allowed if isinstance(allowed, AllowList) else frozenset(allowed)
        self._on_reject = on_reject

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._check(await self.inner.secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._check(await self.inner.secure_outbound(conn, peer_id))

    async def _check(self, sc: ISecureConn) -> ISecureConn:
        remote = sc.get_remote_peer().to_base58()
        if remote not in self.allowed:
            if self._on_reject is not None:
                self._on_reject(remote)
            try:
                await sc.close()
            finally:
                raise HandshakeFailure(f"peer {remote} is not a consortium member")
        return sc


def noise_only_security(
    key_pair: KeyPair, allowed: Collection[str], on_reject: Callable[[str], None] | None = None
) -> dict[str, ISecureTransport]:
    """The `sec_opt` table for `new_host`: Noise only, allow-listed. A fresh X25519 static key per host."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return {NOISE_PROTOCOL_ID: AllowListSecurity(noise, allowed, on_reject)}
