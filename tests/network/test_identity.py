"""The libp2p identity file: created once (0600), reloaded to the same peer ID, refused when exposed."""

from __future__ import annotations

import os
import stat

import nacl.signing
import pytest

from network.identity import (
    identity_from_seed,
    load_or_create_identity,
    parse_peer_id,
    peer_id_from_public_key,
    peer_id_of,
    public_key_of_peer_id,
)


def test_create_then_reload(tmp_path):
    path = tmp_path / "keys" / "p2p.key"
    kp = load_or_create_identity(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert peer_id_of(load_or_create_identity(path)) == peer_id_of(kp)
    assert peer_id_of(kp).startswith("12D3KooW")
    assert [p.name for p in path.parent.iterdir()] == ["p2p.key"]  # no temp files left


def test_refuses_group_readable_file(tmp_path):
    path = tmp_path / "p2p.key"
    load_or_create_identity(path)
    path.chmod(0o640)
    with pytest.raises(PermissionError):
        load_or_create_identity(path)


def test_raw_seed_file_and_peer_id_helpers(tmp_path):
    seed = bytes(range(32))
    path = tmp_path / "seed.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, seed)
    os.close(fd)
    kp = load_or_create_identity(path)
    assert peer_id_of(kp) == peer_id_of(identity_from_seed(seed))
    # peer id <-> raw ed25519 public key (the same key PyNaCl derives from the seed)
    raw_pub = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert public_key_of_peer_id(peer_id_of(kp)) == raw_pub
    assert peer_id_from_public_key(raw_pub) == peer_id_of(kp)
    with pytest.raises(ValueError):
        parse_peer_id("not-a-peer-id")


def test_corrupt_file_is_an_error(tmp_path):
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"garbage-not-a-key")
    os.close(fd)
    with pytest.raises(ValueError):
        load_or_create_identity(path)
