"""Node configuration: HOME/config.toml, validated at load with errors that name the bad key.

The file holds this hospital's secrets (the network PSK; pseudonym keys live in HOME/keys/), so it is written 0600 and `radchain
start` refuses it when others can read it. RPC tokens are not in it: HOME/tokens.json holds their hashes
(node.rpc.auth, `radchain token`).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from consensus.config import Config as ConsensusParams
from node.ledger.tx import MAX_SIGN_BATCH
from node.rpc.settings import RpcConfig

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """The node's configuration is missing, malformed or inconsistent."""


@dataclass
class ConsensusConfig:
    checkpoint_interval: int = 16
    watermark_window: int = 64
    pipeline: int = 4
    progress_timeout: float = 2.0  # seconds without progress on pending work before a view change
    wal_fsync: bool = True


@dataclass
class MempoolConfig:
    max_txs: int = 100_000
    gossip_batch: int = 256
    gossip_interval: float = 0.005
    rebroadcast_after: float = 5.0
    # Backpressure (node.runtime.mempool): client txs are refused with a retry delay once more txs wait than the
    # chain commits in busy_after_s seconds at its recent rate, and never below min_backlog.
    busy_after_s: float = 1.5
    min_backlog: int = 1000
    # Check the signatures of gossiped txs in a worker thread (libsodium releases the GIL: the event loop
    # goes on meanwhile, on a second core if there is one); false checks them on the event loop.
    verify_in_thread: bool = True
    # Propose txs by hash (node.ledger.block compact payloads): the replicas hold them from gossip and fetch
    # the few they lack from the proposer; false sends every tx again in the proposal. Off by default: on a
    # CPU-starved machine under overload it cost a view change in 1 of 3 runs of
    # tests/runtime/test_overload.py (0 of 4 with it off), and issue 9 promises none. Every member receives
    # both kinds whatever its own setting; all members should use the same (docs/PERFORMANCE.md).
    compact_proposals: bool = False
    # This member signs the events of one submit_event batch under one signature (node.ledger.tx), at most
    # this many per signature; 1 signs each alone. 16 spares the other members 15 of every 16 Ed25519
    # checks of this member's events for at most 132 bytes more per tx (a batch of 100: 1/16 more
    # spared, 96 bytes more per tx).
    sign_batch: int = 16


@dataclass
class OprfConfig:
    """[oprf]: how much this member evaluates for each other member (node.oprf_service, docs/PSEUDONYMS.md).

    `rate` points per second sustained and `burst` at once, per requesting member: sized to a hospital's
    fresh identifiers (two per new study: patient and study), not to its total traffic, since repeated
    identifiers come from the requester's own cache. `stats_interval_s`: how often this member records on
    chain how many evaluations it answered and refused for whom."""
    rate: float = 20.0
    burst: float = 2000.0
    timeout_s: float = 10.0
    stats_interval_s: float = 60.0
    # per requesting member: {"hosp-b" = [rate, burst]}, for a member whose volume differs from the default
    limits: dict = field(default_factory=dict)


@dataclass
class NodeConfig:
    home: Path
    name: str
    p2p_listen: str
    psk: bytes
    rpc: RpcConfig = field(default_factory=RpcConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    oprf: OprfConfig = field(default_factory=OprfConfig)
    log_level: str = "INFO"
    store_sync: bool = False  # a plyvel write survives kill -9 without fsync; set true to survive power loss
    extra: dict = field(default_factory=dict)  # sections owned by plugins, e.g. [dicom]

    # Paths inside the home, per docs/CONTRACTS.md "Node home layout".
    @property
    def genesis_path(self) -> Path:
        return self.home / "genesis.json"

    @property
    def member_key_path(self) -> Path:
        return self.home / "keys" / "member.key"

    @property
    def p2p_key_path(self) -> Path:
        return self.home / "keys" / "p2p.key"

    @property
    def chain_dir(self) -> Path:
        return self.home / "data" / "chain"

    @property
    def wal_dir(self) -> Path:
        return self.home / "data" / "wal"

    @property
    def tokens_path(self) -> Path:
        return self.home / "tokens.json"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def rpc_url(self) -> str:
        return f"http://{self.rpc.listen}"


def _hex_bytes(section: dict, key: str, where: str, length: int) -> bytes:
    value = section.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a hex string of {length} bytes")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key} is not hex: {exc}") from exc
    if len(raw) != length:
        raise ConfigError(f"{where}.{key} must be {length} bytes, got {len(raw)}")
    return raw


def _fill(obj, section: dict, where: str) -> None:
    """Copy known keys from a TOML table onto a dataclass, type-checked; unknown keys are errors."""
    for key, value in section.items():
        if not hasattr(obj, key):
            raise ConfigError(f"unknown key {where}.{key}")
        current = getattr(obj, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key} must be true or false")
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key} must be a number")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{where}.{key} must be a finite positive number")
            if isinstance(current, int) and value != int(value):
                raise ConfigError(f"{where}.{key} must be a whole number")
            value = type(current)(value)
        if isinstance(current, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string")
        if isinstance(current, dict) and not isinstance(value, dict):
            raise ConfigError(f"{where}.{key} must be a table")
        if isinstance(current, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{where}.{key} must be a list of strings")
        setattr(obj, key, value)


def _check_consensus_keys_together(ccfg: ConsensusConfig) -> None:
    """Keys that are each fine alone can still contradict each other (a watermark window that is not a multiple
    of the checkpoint interval): the consensus Config says which, and it is said at load, as a ConfigError,
    not as a traceback when the replica starts."""
    try:
        ConsensusParams(chain_id="config-check", members=(bytes(32),),
                        checkpoint_interval=ccfg.checkpoint_interval, watermark_window=ccfg.watermark_window,
                        pipeline=ccfg.pipeline, progress_timeout=ccfg.progress_timeout)
    except ValueError as exc:
        raise ConfigError(f"[consensus]: {exc}") from None


def load_config(home: str | os.PathLike) -> NodeConfig:
    home = Path(home).resolve()
    path = home / "config.toml"
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"no config at {path}; run `radchain init` or `radchain testnet` first") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    known = {"node", "p2p", "rpc", "consensus", "mempool", "oprf", "log", "store"}
    if "pseudonym" in raw:
        # The shared HMAC key let anyone who read one member's config recompute every token (issue 13).
        raise ConfigError(f"{path}: [pseudonym] holds the old consortium pseudonym key, which no member may "
                          "hold any more: tokens now come from the threshold OPRF (HOME/keys/oprf/). "
                          "Delete the [pseudonym] section and destroy every copy of that key")
    for name in known:
        if not isinstance(raw.get(name, {}), dict):
            raise ConfigError(f"{name} must be a table ([{name}]), not a value")
    node = raw.get("node", {})
    p2p = raw.get("p2p", {})
    if not isinstance(node.get("name"), str) or not node["name"]:
        raise ConfigError("node.name must be this member's name as listed in genesis.json")
    if not isinstance(p2p.get("listen"), str):
        raise ConfigError("p2p.listen must be a multiaddr such as /ip4/127.0.0.1/tcp/26656")
    level = raw.get("log", {}).get("level", "INFO")
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log.level must be one of {', '.join(LOG_LEVELS)}")
    if not isinstance(raw.get("store", {}).get("sync", False), bool):
        raise ConfigError("store.sync must be true or false")
    cfg = NodeConfig(
        home=home,
        name=node["name"],
        p2p_listen=p2p["listen"],
        psk=_hex_bytes(p2p, "psk", "p2p", 32),
        log_level=level.upper(),
        store_sync=raw.get("store", {}).get("sync", False),
        extra={k: v for k, v in raw.items() if k not in known},
    )
    _fill(cfg.rpc, raw.get("rpc", {}), "rpc")
    _fill(cfg.consensus, raw.get("consensus", {}), "consensus")
    _fill(cfg.mempool, raw.get("mempool", {}), "mempool")
    _fill(cfg.oprf, raw.get("oprf", {}), "oprf")
    _check_consensus_keys_together(cfg.consensus)
    if not 1 <= cfg.mempool.sign_batch <= MAX_SIGN_BATCH:
        raise ConfigError(f"mempool.sign_batch must be 1..{MAX_SIGN_BATCH}")
    for member, limit in cfg.oprf.limits.items():
        if not (isinstance(limit, list) and len(limit) == 2 and all(
                isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in limit) and limit[1] >= 1):
            raise ConfigError(f"oprf.limits.{member} must be [rate, burst]: positive numbers, burst >= 1")
    port = cfg.rpc.listen.rsplit(":", 1)[1] if ":" in cfg.rpc.listen else ""
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:  # "²" is a digit int() refuses
        raise ConfigError("rpc.listen must be HOST:PORT (a port up to 65535)")
    if cfg.rpc.tokens:
        names = ", ".join(sorted(cfg.rpc.tokens))
        raise ConfigError(f"{path}: rpc.tokens ({names}) holds plaintext tokens; tokens are stored hashed in "
                          f"{home / 'tokens.json'} now. Move each with `radchain token add --home {home} --name NAME "
                          "--roles read,submit --token VALUE`, then delete rpc.tokens")
    return cfg


def write_config(home: Path, *, name: str, p2p_listen: str, rpc_listen: str, psk: bytes,
                 tokens: dict[str, str] | None = None, extra: dict | None = None) -> Path:
    """Write HOME/config.toml (0600, the home 0700). `tokens` {name: token}, if given, go hashed into
    HOME/tokens.json with every role."""
    from node.privatefiles import make_private_dir, write_secret
    from node.rpc.auth import ROLES, add_token

    make_private_dir(home)
    doc = {
        "node": {"name": name},
        "p2p": {"listen": p2p_listen, "psk": psk.hex()},
        "rpc": {"listen": rpc_listen},
        "log": {"level": "INFO"},
    }
    doc.update(extra or {})
    path = write_secret(home / "config.toml", tomli_w.dumps(doc))
    for token_name, token in (tokens or {}).items():
        add_token(home / "tokens.json", token_name, list(ROLES), token)
    return path
