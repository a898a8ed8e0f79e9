"""The member key: an ed25519 seed in HOME/keys/member.key (0600) that signs consensus messages and the
node's own transactions. The libp2p identity is a separate key (network.identity), so either can rotate."""

from __future__ import annotations

import os
from pathlib import Path

from nacl.signing import SigningKey


def create_member_key(path: Path) -> SigningKey:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.encode().hex() + "\n")
    return key


def load_member_key(path: Path) -> SigningKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no member key at {path}") from exc
    try:
        seed = bytes.fromhex(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not a hex ed25519 seed") from exc
    if len(seed) != 32:
        raise ValueError(f"{path} must hold a 32-byte seed, found {len(seed)} bytes")
    return SigningKey(seed)
