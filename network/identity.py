"""A node's libp2p identity: an ed25519 key kept in a file readable only by its owner.

The file holds the key in libp2p's protobuf encoding (36 bytes, the same format as
`libp2p.identity_utils.save_identity`), written with mode 0600. A file holding a bare 32-byte
ed25519 seed is accepted too, so an operator's own keystore can provide one.

Peer IDs are handled as strings (`12D3KooW…`, base58) everywhere in RadChain; a peer ID is a pure
function of the ed25519 public key (identity multihash of the protobuf-encoded key).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair, PublicKey
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

__all__ = [
    "KeyPair",
    "load_or_create_identity",
    "identity_from_seed",
    "peer_id_of",
    "peer_id_from_public_key",
    "public_key_of_peer_id",
    "parse_peer_id",
]

_SEED_LEN = 32


def identity_from_seed(seed: bytes) -> KeyPair:
    """The ed25519 key pair for a 32-byte seed (the same key as `nacl.signing.SigningKey(seed)`)."""
    if len(seed) != _SEED_LEN:
        raise ValueError(f"ed25519 seed must be {_SEED_LEN} bytes, got {len(seed)}")
    return create_new_key_pair(seed)


def load_or_create_identity(path: str | os.PathLike[str]) -> KeyPair:
    """Load the identity at `path`, or create a fresh ed25519 key there (mode 0600, parents created).

    Refuses a key file that group or others can read, and any key type other than ed25519.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        return _create(p)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{p}: key file must not be accessible by group/others (chmod 600)")
        data = f.read()
    return _decode(p, data)


def _create(p: Path) -> KeyPair:
    kp = create_new_key_pair()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, kp.private_key.serialize())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, p)  # atomic and never overwrites: a concurrent creator wins, we load theirs
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create_identity(p)
    os.unlink(tmp)
    return kp


def _decode(p: Path, data: bytes) -> KeyPair:
    if len(data) == _SEED_LEN:
        return identity_from_seed(data)
    try:
        priv = deserialize_private_key(data)
    except Exception as e:
        raise ValueError(f"{p}: not a libp2p private key: {e}") from e
    pub = priv.get_public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError(f"{p}: identity must be an ed25519 key, got {type(pub).__name__}")
    return KeyPair(priv, pub)


def peer_id_of(identity: KeyPair | PublicKey) -> str:
    """Peer-ID string of a key pair or public key."""
    pub = identity.public_key if isinstance(identity, KeyPair) else identity
    return ID.from_pubkey(pub).to_base58()


def peer_id_from_public_key(raw: bytes) -> str:
    """Peer-ID string of a raw 32-byte ed25519 public key (e.g. a member key listed in genesis)."""
    return peer_id_of(Ed25519PublicKey.from_bytes(raw))


def public_key_of_peer_id(peer_id: str) -> bytes:
    """The raw 32-byte ed25519 public key inside an ed25519 peer ID (ValueError for other kinds)."""
    pub = parse_peer_id(peer_id).extract_public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError(f"{peer_id!r} does not embed an ed25519 public key")
    return pub.to_bytes()


def parse_peer_id(peer_id: str) -> ID:
    """Parse and validate a peer-ID string (ValueError if malformed)."""
    try:
        pid = ID.from_base58(peer_id)
    except Exception as e:
        raise ValueError(f"invalid peer id {peer_id!r}: {e}") from e
    if pid.to_base58() != peer_id:
        raise ValueError(f"non-canonical peer id {peer_id!r}")
    return pid
