"""Signing for consensus messages: real Ed25519, and a cheap keyed-hash stand-in for the simulator."""

from __future__ import annotations

import hashlib

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey


class Ed25519Crypto:
    """sign(bytes) -> 64-byte signature; verify(member, bytes, sig) -> bool (never raises)."""

    def __init__(self, key: bytes | SigningKey, members: tuple[bytes, ...] | list[bytes]) -> None:
        self._sk = key if isinstance(key, SigningKey) else SigningKey(bytes(key))
        self._vks = tuple(VerifyKey(bytes(m)) for m in members)

    @property
    def public_key(self) -> bytes:
        return bytes(self._sk.verify_key)

    def sign(self, data: bytes) -> bytes:
        return self._sk.sign(data).signature

    def verify(self, member: int, data: bytes, sig: bytes) -> bool:
        if not (type(member) is int and 0 <= member < len(self._vks)) or type(sig) is not bytes or len(sig) != 64:
            return False
        try:
            self._vks[member].verify(data, sig)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True


class KeyedHashCrypto:
    """Simulator stand-in: sig = BLAKE2b keyed with the member's secret. Not a signature scheme (the verifier
    holds every secret), but deterministic, ~50x cheaper than Ed25519, and a forged or altered signature is
    still rejected, which is what the simulator needs to attack."""

    def __init__(self, member: int, secrets: tuple[bytes, ...]) -> None:
        self._member = member
        self._secrets = secrets

    @staticmethod
    def secrets_for(n: int, seed: int = 0) -> tuple[bytes, ...]:
        return tuple(hashlib.blake2b(b"sim-secret:%d:%d" % (seed, i), digest_size=32).digest() for i in range(n))

    def sign(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._secrets[self._member], digest_size=32).digest()

    def verify(self, member: int, data: bytes, sig: bytes) -> bool:
        if not (type(member) is int and 0 <= member < len(self._secrets)) or type(sig) is not bytes:
            return False
        return hashlib.blake2b(data, key=self._secrets[member], digest_size=32).digest() == sig
