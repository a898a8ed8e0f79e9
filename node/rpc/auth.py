"""Who may use the RPC: role-carrying bearer tokens stored hashed, Host/Origin checks, the client address.

Tokens. HOME/tokens.json (0600) maps a name to the SHA-256 of its token and its roles; the token itself is
shown once, by `radchain token add`, and never stored by the node. A token is 32 random bytes (urlsafe), so
a plain hash is enough: nothing is left to brute-force, and a copied tokens.json (a backup, a support
bundle) lets nobody in. The node re-reads the file when it changes (checked on every authentication: one
stat), so `radchain token add/revoke` take effect on a running node without a restart. A presented token
is compared with every stored hash in constant time, so timing does not reveal which one matched.

Roles: ``read`` (every read: methods, /metrics, WebSocket subscriptions), ``submit`` (submit_tx,
submit_event), ``admin`` (operator methods, e.g. peers; implies read and submit).

Host and Origin (DNS rebinding). A page on evil.example whose name is rebound to 127.0.0.1 or to the node's
address makes the browser send ``Host: evil.example:26657`` and ``Origin: http://evil.example``. So a Host
must be an IP literal, ``localhost`` or one of ``rpc.allowed_hosts``; a request carrying an Origin (only
browsers send one) must come from one of ``rpc.allowed_origins`` (none by default).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("radchain.rpc.auth")

READ, SUBMIT, ADMIN = "read", "submit", "admin"
ROLES = (READ, SUBMIT, ADMIN)
TOKENS_FILE = "tokens.json"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256  # longer presented tokens are not even hashed


class TokenError(ValueError):
    """A token store or a token command is unusable (bad file, unknown role, duplicate name...)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def effective_roles(roles) -> frozenset[str]:
    roles = frozenset(roles)
    return roles | {READ, SUBMIT} if ADMIN in roles else roles


def parse_roles(text: str) -> list[str]:
    roles = sorted({r.strip() for r in text.split(",") if r.strip()})
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise TokenError(f"roles must be a comma-separated subset of {', '.join(ROLES)}; got {text!r}")
    return roles


@dataclass(frozen=True)
class Grant:
    name: str
    roles: frozenset[str]


def _parse_store(text: str, where: str) -> dict[str, dict]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise TokenError(f"{where} is not JSON: {exc}") from None
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise TokenError(f'{where} must be {{"tokens": {{NAME: {{"sha256": HEX, "roles": [...]}}}}}}')
    for name, entry in entries.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64
                or not isinstance(entry.get("roles"), list) or not set(entry["roles"]) <= set(ROLES)):
            raise TokenError(f"{where}: token {name!r} needs a 64-hex-digit sha256 and roles from {ROLES}")
    return entries


def read_store(path: Path) -> dict[str, dict]:
    """The entries of a tokens file ({} when it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    return _parse_store(text, str(path))


def write_store(path: Path, entries: dict[str, dict]) -> None:
    from node.privatefiles import write_secret

    write_secret(path, json.dumps({"tokens": entries}, indent=2, sort_keys=True) + "\n")


@contextmanager
def _locked(path: Path):
    """Serialize read-modify-write of a store between concurrent `radchain token` commands."""
    lock = Path(path).with_name(Path(path).name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_token(path: Path, name: str, roles: list[str], token: str | None = None) -> str:
    """Add a token named `name` to the store at `path`; returns the token (a new random one by default)."""
    with _locked(path):
        return _add_token(path, name, roles, token)


def _add_token(path: Path, name: str, roles: list[str], token: str | None) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise TokenError("a token name is 1-64 characters of letters, digits, '-', '_' or '.'")
    for r in roles:
        if r not in ROLES:
            raise TokenError(f"unknown role {r!r}; roles are {', '.join(ROLES)}")
    token = token if token is not None else new_token()
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise TokenError(f"a token must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} characters")
    entries = read_store(path)
    if name in entries:
        raise TokenError(f"a token named {name!r} exists; revoke it first")
    digest = token_hash(token)
    if any(hmac.compare_digest(digest, e["sha256"]) for e in entries.values()):
        raise TokenError("that token is already in use under another name")
    entries[name] = {"sha256": digest, "roles": sorted(set(roles)),
                     "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_store(path, entries)
    return token


def revoke_token(path: Path, name: str) -> None:
    with _locked(path):
        entries = read_store(path)
        if name not in entries:
            raise TokenError(f"no token named {name!r} in {path}")
        del entries[name]
        write_store(path, entries)


class TokenStore:
    """The node's view of HOME/tokens.json, re-read whenever the file changes.

    Built from a dict {name: plaintext} instead (tests, benchmarks, in-process apps), every token gets
    read and submit, as integrator tokens always had.
    """

    def __init__(self, source: Path | dict[str, str]):
        self.path: Path | None = None
        self._stamp = None
        self._grants: list[tuple[bytes, Grant]] = []
        if isinstance(source, dict):
            self._grants = [(bytes.fromhex(token_hash(t)), Grant(n, frozenset({READ, SUBMIT})))
                            for n, t in source.items()]
        else:
            self.path = Path(source)
            self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            entries = read_store(self.path)
        except (TokenError, OSError, UnicodeDecodeError) as exc:
            # Fail closed: a store we cannot read grants nothing (writes go through write_secret, atomic,
            # so this is a hand edit gone wrong, not a race).
            log.error("token store unusable, every token refused until it is fixed: %s", exc)
            self._grants = []
            return
        self._grants = [(bytes.fromhex(e["sha256"]), Grant(name, effective_roles(e["roles"])))
                        for name, e in entries.items()]
        log.info("token store loaded", extra={"fields": {"tokens": len(self._grants)}})

    def lookup(self, presented: str) -> Grant | None:
        if not presented or len(presented) > MAX_TOKEN_CHARS:
            if self.path is not None:
                self._refresh()
            return None
        return self.lookup_digest(bytes.fromhex(token_hash(presented)))

    def lookup_digest(self, digest: bytes) -> Grant | None:
        """The grant of the token whose SHA-256 is `digest` (what the explorer's session cookie holds, so a
        copied cookie is not a bearer token)."""
        if self.path is not None:
            self._refresh()
        found = None
        for stored, grant in self._grants:  # every entry compared: timing does not reveal which matched
            if hmac.compare_digest(digest, stored):
                found = grant
        return found


def local_token(home: Path) -> str | None:
    """The operator token local tools (CLI --home, the DICOM hook, verify-image) use: HOME/keys/operator.token."""
    path = Path(home) / "keys" / "operator.token"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------- Host, Origin, client address
def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(host_header: str | None, allowed_hosts: list[str]) -> bool:
    """An IP literal or localhost is always fine (rebinding needs a name); other names must be configured."""
    if host_header is None:
        return True  # HTTP/1.0 without Host: not a browser
    if "*" in allowed_hosts:
        return True
    name = _host_name(host_header)
    return _is_ip(name) or name == "localhost" or name in {h.lower().rstrip(".") for h in allowed_hosts}


def origin_allowed(origin: str | None, allowed_origins: list[str]) -> bool:
    """No Origin: not a browser (curl, the SDK, the DICOM hook). A browser's must be listed exactly."""
    if origin is None:
        return True
    return "*" in allowed_origins or origin.strip().lower().rstrip("/") in {
        o.lower().rstrip("/") for o in allowed_origins}


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: list[str]) -> str:
    """The client's address: the TCP peer, unless the peer is a configured trusted proxy, in which case the
    right-most X-Forwarded-For entry the proxies did not add themselves (entries further left are whatever
    the client claimed, so they are never believed)."""
    if not forwarded_for or not trusted_proxies or peer not in trusted_proxies:
        return peer
    hops = [h.strip() for h in forwarded_for[:1024].split(",") if h.strip()]
    while hops:
        hop = hops.pop()
        if hop not in trusted_proxies:
            return hop if _is_ip(hop) else peer
    return peer


class CountedLog:
    """One log line per `interval` seconds with how many times something happened, instead of a line (or a
    traceback) each time: a thousand clients hanging up at once must not flood the log."""

    def __init__(self, logger: logging.Logger, message: str, interval: float = 10.0, level: int = logging.INFO):
        self.logger, self.message, self.interval, self.level = logger, message, interval, level
        self.total = 0
        self._pending = 0
        self._last = -interval

    def count(self) -> None:
        self.total += 1
        self._pending += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.logger.log(self.level, self.message, extra={"fields": {"count": self._pending, "total": self.total}})
            self._pending = 0
            self._last = now


def new_token() -> str:
    # Hex, not base64url: a token that starts with "-" reads as an option on a command line
    # (`radchain audit --token -x...`), and one in 64 urlsafe tokens does.
    return secrets.token_hex(24)
