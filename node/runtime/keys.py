"""The member key, and the check every secret file of a node home passes at start.

The member key is an ed25519 seed in HOME/keys/member.key (0600) that signs consensus messages and the
node's own transactions. The libp2p identity is a separate key (network.identity), so either can rotate.

Secret files are written with node.privatefiles.write_secret; `check_secret_mode` refuses a secret that group or others
can read or write, naming the file and the chmod that fixes it. `radchain start` checks every secret of the
home before it opens anything (docs/RPC.md "Files and modes").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from node.privatefiles import DIR_MODE, SECRET_MODE, write_secret


class SecretModeError(PermissionError):
    """A secret file (or its directory) is readable or writable by group or others."""


def check_secret_mode(path: Path) -> None:
    """Raise SecretModeError when `path` (an existing secret) is accessible by group or others."""
    path = Path(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretModeError(f"{path} is mode {mode:04o}: a secret must not be readable by group or others; "
                              f"fix with: chmod 600 {path}")


# The secrets of a node home, relative to it: `radchain start` refuses to run while any is open to others.
HOME_SECRETS = ("config.toml", "keys/member.key", "keys/p2p.key", "keys/operator.token", "tokens.json")


def check_home_secrets(home: Path) -> None:
    """Refuse (SecretModeError) a home whose secrets others can read; make data/ and node.log private.

    Data and logs are tightened rather than refused: they hold pseudonymized records and peer addresses,
    not keys, and a node upgraded from a version that made them 0644 should just start."""
    home = Path(home)
    for rel in HOME_SECRETS:
        if (home / rel).exists():
            check_secret_mode(home / rel)
    for path, mode in ((home / "data", DIR_MODE), (home / "node.log", SECRET_MODE)):
        if path.exists() and stat.S_IMODE(os.stat(path).st_mode) & (stat.S_IRWXG | stat.S_IRWXO):
            os.chmod(path, mode)


def create_member_key(path: Path) -> SigningKey:
    key = SigningKey.generate()
    write_secret(path, key.encode().hex() + "\n", exclusive=True)
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
