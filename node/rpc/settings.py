"""The [rpc] section of a node's config.toml: where the RPC listens and the limits of its edge."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RpcConfig:
    listen: str = "127.0.0.1:26657"
    # Plaintext tokens here are refused at load (they live hashed in HOME/tokens.json); kept as a field so
    # the error can say how to move them.
    tokens: dict[str, str] = field(default_factory=dict)
    read_requires_token: bool = True  # false opens every read (not writes) to anyone who reaches the port
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides IP literals and localhost
    allowed_origins: list[str] = field(default_factory=list)  # browser origins let in (none by default)
    trusted_proxies: list[str] = field(default_factory=list)  # peers whose X-Forwarded-For is believed
    max_body_bytes: int = 1 << 20
    body_timeout: float = 10.0  # seconds to receive a whole request body once its headers are in
    max_connections: int = 1024  # open RPC connections in total (HTTP and WebSocket)
    max_connections_per_address: int = 64  # per client address (proxies, 127.0.0.1 and ::1: only the total)
    rate_limit_per_second: float = 2000.0  # per client address; bursts of the same size are allowed
    rate_limit_addresses: int = 10_000  # addresses the rate limiter remembers; the idlest is forgotten first

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])
