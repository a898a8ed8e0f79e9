"""Commit certificates: 2f+1 signed commits that anyone holding the members' public keys can check offline.

This module fixes the bytes a member signs when it commits, so node/ (verify-chain, receipts) and the
replica agree on them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

COMMIT_DOMAIN = b"radchain/commit/v1\x00"


class CertificateError(ValueError):
    """The certificate does not prove that 2f+1 members committed this digest at this height."""


def max_faulty(n: int) -> int:
    """f for n = 3f+1 members (n that is not of that form tolerates floor((n-1)/3))."""
    return (n - 1) // 3


def quorum(n: int) -> int:
    """2f+1 for n = 3f+1: any two quorums intersect in at least f+1 members, so in at least one honest member.
    For other n, the smallest q with 2q - n >= f+1 (e.g. 2 of 3, 4 of 5, 4 of 6), which keeps that property;
    2f+1 alone would let 1 of 3 commit by itself."""
    return (n + max_faulty(n)) // 2 + 1


def commit_signing_bytes(chain_id: str, view: int, height: int, digest: bytes) -> bytes:
    return COMMIT_DOMAIN + msgpack.packb([chain_id, view, height, digest], use_bin_type=True)


@dataclass(frozen=True)
class Certificate:
    height: int
    view: int
    digest: bytes
    signatures: tuple[tuple[int, bytes], ...]  # (member index, 64-byte ed25519 signature), sorted by index

    def encode(self) -> bytes:
        return msgpack.packb(
            {"height": self.height, "view": self.view, "digest": self.digest,
             "sigs": [[i, s] for i, s in self.signatures]},
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=1 << 16,
                                  max_array_len=1 << 12, max_map_len=8)
            if not isinstance(raw, dict) or set(raw) != {"height", "view", "digest", "sigs"}:
                raise CertificateError("certificate must have exactly height, view, digest, sigs")
            # Type-checked, never converted: bytes(n) of a peer's integer n allocates n bytes (a digest of
            # 2**32 was a 4 GiB allocation, then an 8 GiB hex string in the mismatch error).
            height, view, digest, raw_sigs = raw["height"], raw["view"], raw["digest"], raw["sigs"]
            if not (type(height) is int and type(view) is int and 0 <= height < 1 << 63 and 0 <= view < 1 << 63):
                raise CertificateError("certificate height and view must be non-negative integers")
            if type(digest) is not bytes or not 1 <= len(digest) <= 64 or type(raw_sigs) is not list:
                raise CertificateError("certificate digest must be 1..64 bytes and sigs a list")
            for item in raw_sigs:
                if not (type(item) is list and len(item) == 2 and type(item[0]) is int and type(item[1]) is bytes
                        and len(item[1]) <= 128):
                    raise CertificateError("each certificate signature must be [member index, signature]")
            cert = cls(height, view, digest, tuple((i, s) for i, s in raw_sigs))
        except CertificateError:
            raise
        except Exception as exc:  # msgpack raises many types; the caller needs one
            raise CertificateError(f"undecodable certificate: {exc}") from exc
        return cert


def verify_certificate(cert: Certificate, members: list[bytes] | tuple[bytes, ...], chain_id: str,
                       height: int | None = None, digest: bytes | None = None) -> None:
    """Raise CertificateError unless 2f+1 distinct members validly signed (chain_id, view, height, digest)."""
    if height is not None and cert.height != height:
        raise CertificateError(f"certificate is for height {cert.height}, expected {height}")
    if digest is not None and cert.digest != digest:
        raise CertificateError(f"certificate digest {cert.digest.hex()[:16]} does not match block {digest.hex()[:16]}")
    message = commit_signing_bytes(chain_id, cert.view, cert.height, cert.digest)
    seen: set[int] = set()
    for index, sig in cert.signatures:
        if index in seen:
            raise CertificateError(f"member {index} signs twice")
        if not 0 <= index < len(members):
            raise CertificateError(f"member index {index} is not in the consortium")
        try:
            VerifyKey(members[index]).verify(message, sig)
        except (BadSignatureError, ValueError) as exc:
            raise CertificateError(f"bad signature from member {index}") from exc
        seen.add(index)
    need = quorum(len(members))
    if len(seen) < need:
        raise CertificateError(f"{len(seen)} valid signatures, {need} needed")
