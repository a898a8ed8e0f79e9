"""HOME/genesis.json: the chain id, the founding members and their keys, and chain parameters.

    {"chain_id": "radchain-test", "genesis_time": "2026-11-27T00:00:00Z",
     "members": [{"name": "hosp-a", "pubkey": "<64 hex>", "peer_id": "12D3Koo...",
                  "p2p": ["/ip4/127.0.0.1/tcp/7001"], "rpc": "http://127.0.0.1:8001",
                  "clients": ["<64 hex>", ...]}],
     "params": {"max_block_txs": 2000, ...}}

The member key always may sign txs for its member; ``clients`` lists further keys allowed to. The list
order of ``members`` is the consensus replica index. ``Genesis.hash()`` (SHA-256 over a canonical
encoding) is the ``prev_hash`` of block 1, so a chain cannot be replayed under another genesis.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgpack

__all__ = ["Genesis", "Member", "GenesisError", "DEFAULT_PARAMS", "NEW_CHAIN_PARAMS", "GENESIS_DOMAIN"]

GENESIS_DOMAIN = b"radchain/genesis/v1\x00"

# Chain parameters and their defaults. Every node must agree on them, hence they live in genesis.
DEFAULT_PARAMS = {
    # Txs per proposal. 2000 x ~400 B keeps a payload under 1 MiB, well inside one network frame.
    "max_block_txs": 2000,
    "max_payload_bytes": 4 * 1024 * 1024,
    # A proposal's timestamp may differ this much from a validator's clock (NTP-synced hospital hosts;
    # CometBFT's default PBTS precision+message delay is of the same order).
    "max_clock_skew_ms": 30_000,
    # Membership changes take effect after the first multiple of this height past their approval
    # (node.ledger.epochs); the default checkpoint interval, so a new member set starts on a checkpoint.
    "epoch_interval": 16,
    # After a PSK rotation's boundary the previous PSK is still accepted for this many blocks, so a node
    # briefly behind catches up without `member psk-recover` (node.ledger.epochs).
    "psk_retire_blocks": 64,
    # The most txs a member may sign under one signature (node.ledger.tx: [body, sig, proof]); 1 accepts only
    # txs signed alone. A wire form is a consensus rule, so a consortium whose genesis predates batches keeps
    # 1 until its members, all upgraded, vote it up (params.changed); new consortia start at 16.
    "max_sign_batch": 1,
}
NEW_CHAIN_PARAMS = {"max_sign_batch": 16}  # what `radchain genesis` and local testnets write into a new genesis


class GenesisError(ValueError):
    """genesis.json is missing, unreadable or invalid; the message names the file and the field."""


def _hex_key(value, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise GenesisError(f"{where}: must be 64 hex digits (an ed25519 public key)")
    return raw


@dataclass(frozen=True)
class Member:
    name: str
    pubkey: bytes
    peer_id: str = ""
    p2p: tuple[str, ...] = ()
    rpc: str = ""
    clients: tuple[bytes, ...] = ()

    @property
    def allowed_keys(self) -> tuple[bytes, ...]:
        """Keys that may sign txs for this member: the member key, then its client keys."""
        return (self.pubkey,) + tuple(c for c in self.clients if c != self.pubkey)

    def to_json(self) -> dict:
        return {"name": self.name, "pubkey": self.pubkey.hex(), "peer_id": self.peer_id, "p2p": list(self.p2p),
                "rpc": self.rpc, "clients": [c.hex() for c in self.clients]}


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time: str
    members: tuple[Member, ...]
    params: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- derived
    @property
    def member_pubkeys(self) -> tuple[bytes, ...]:
        """Consensus member keys, list index = replica id (what verify_certificate takes)."""
        return tuple(m.pubkey for m in self.members)

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def index_of(self, name: str) -> int:
        for i, m in enumerate(self.members):
            if m.name == name:
                return i
        raise KeyError(name)

    def param(self, name: str):
        return self.params.get(name, DEFAULT_PARAMS[name])

    def hash(self) -> bytes:
        canonical = msgpack.packb(_sorted(self.to_json()), use_bin_type=True)
        return hashlib.sha256(GENESIS_DOMAIN + canonical).digest()

    # ---------------------------------------------------------------- (de)serialisation
    def to_json(self) -> dict:
        return {"chain_id": self.chain_id, "genesis_time": self.genesis_time,
                "members": [m.to_json() for m in self.members], "params": dict(self.params)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "genesis.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.dumps())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genesis:
        """Load HOME/genesis.json (``path`` may be HOME or the file)."""
        path = Path(path)
        if path.is_dir():
            path = path / "genesis.json"
        try:
            text = path.read_text()
        except OSError as exc:
            raise GenesisError(f"{path}: cannot read ({exc.strerror or exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenesisError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
        try:
            return cls.from_json(data)
        except GenesisError as exc:
            raise GenesisError(f"{path}: {exc}") from None

    @classmethod
    def from_json(cls, data) -> Genesis:
        if not isinstance(data, dict):
            raise GenesisError("must be a JSON object")
        unknown = sorted(set(data) - {"chain_id", "genesis_time", "members", "params"})
        if unknown:
            raise GenesisError(f"{unknown[0]}: unknown field")
        chain_id = data.get("chain_id")
        if not isinstance(chain_id, str) or not 0 < len(chain_id) <= 64 or not chain_id.isprintable():
            raise GenesisError("chain_id: must be a printable string of 1..64 characters")
        gtime = data.get("genesis_time")
        if not isinstance(gtime, str):
            raise GenesisError("genesis_time: must be an ISO 8601 string")
        try:
            datetime.fromisoformat(gtime)
        except ValueError:
            raise GenesisError(f"genesis_time: not ISO 8601: {gtime!r}") from None
        raw_members = data.get("members")
        if not isinstance(raw_members, list) or not raw_members:
            raise GenesisError("members: must be a non-empty list")
        members = []
        names, keys = set(), set()
        for i, m in enumerate(raw_members):
            where = f"members[{i}]"
            if not isinstance(m, dict):
                raise GenesisError(f"{where}: must be an object")
            extra = sorted(set(m) - {"name", "pubkey", "peer_id", "p2p", "rpc", "clients"})
            if extra:
                raise GenesisError(f"{where}.{extra[0]}: unknown field")
            name = m.get("name")
            if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.isprintable():
                raise GenesisError(f"{where}.name: must be a printable string of 1..64 characters")
            if name in names:
                raise GenesisError(f"{where}.name: duplicate member name {name!r}")
            pubkey = _hex_key(m.get("pubkey"), f"{where}.pubkey")
            if pubkey in keys:
                raise GenesisError(f"{where}.pubkey: key already used by another member")
            peer_id = m.get("peer_id", "")
            rpc = m.get("rpc", "")
            if not isinstance(peer_id, str):
                raise GenesisError(f"{where}.peer_id: must be a string")
            if not isinstance(rpc, str):
                raise GenesisError(f"{where}.rpc: must be a string")
            p2p = m.get("p2p", [])
            if not isinstance(p2p, list) or not all(isinstance(a, str) and a.startswith("/") for a in p2p):
                raise GenesisError(f"{where}.p2p: must be a list of multiaddr strings")
            clients = m.get("clients", [])
            if not isinstance(clients, list):
                raise GenesisError(f"{where}.clients: must be a list of hex public keys")
            client_keys = tuple(_hex_key(c, f"{where}.clients[{j}]") for j, c in enumerate(clients))
            names.add(name)
            keys.add(pubkey)
            members.append(Member(name, pubkey, peer_id, tuple(p2p), rpc, client_keys))
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise GenesisError("params: must be an object")
        for key, value in params.items():
            if key in DEFAULT_PARAMS and (type(value) is not int or value <= 0):
                raise GenesisError(f"params.{key}: must be a positive integer")
        from node.ledger.oprf_reshare import complaint_window  # (it does not import this module)

        try:
            complaint_window(params, params.get("max_clock_skew_ms", DEFAULT_PARAMS["max_clock_skew_ms"]))
        except ValueError as exc:
            raise GenesisError(str(exc)) from None
        return cls(chain_id, gtime, tuple(members), dict(params))


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value
