"""What the DICOM hook reads from HOME/config.toml: the node's RPC endpoint and token, and `[dicom]`.

Kept in one small function (stdlib tomllib) so the Orthanc plugin can use it without the node's
dependencies. Example `[dicom]` section (every key optional):

    [dicom]
    proxy_listen = "0.0.0.0:11112"        # where modalities and viewers connect
    pacs = "ORTHANC@127.0.0.1:4242"       # the real PACS, AET@HOST:PORT
    allowed_aets = ["CT1", "VIEWER"]      # calling AE titles let through; empty = any
    issuer = "HOSP-A"                     # IssuerOfPatientID when an instance carries none
    purpose = "TREAT"                     # purpose of use recorded for DICOM traffic
    atna_tls = "0.0.0.0:6515"             # RFC 5425 syslog over mutual TLS (IHE ATNA); needs the three below
    atna_cert = "keys/atna.pem"           # this receiver's certificate chain, PEM
    atna_key = "keys/atna.key"
    atna_client_ca = "keys/atna-ca.pem"   # senders must present a certificate this CA signed; the
                                          # certificate's subject is recorded as each record's source and
                                          # the record's AuditSourceID must be its CN or a SAN name
    atna_tcp = "127.0.0.1:6514"           # plain syslog over TCP (RFC 6587): off unless set, and then only
    atna_udp = "127.0.0.1:514"            # plain syslog over UDP (RFC 5426): from atna_allow addresses
    atna_allow = ["127.0.0.1", "::1"]     # who may use plain TCP/UDP (the default): "ADDR", "NET/PREFIX",
                                          # or "SOURCE@ADDR" to also require AuditSourceID = SOURCE
    rpc_token_name = "dicom"              # which [rpc] tokens entry to use (default: the first)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """HOME/config.toml is missing or its [dicom] / [rpc] section is unusable."""


@dataclass
class DicomSettings:
    home: Path
    node_name: str = "node"
    rpc_url: str | None = None
    rpc_token: str | None = None
    proxy_listen: str | None = None
    pacs: str | None = None
    allowed_aets: list[str] = field(default_factory=list)
    issuer: str | None = None
    purpose: str = "TREAT"
    atna_tcp: str | None = None
    atna_tls: str | None = None
    atna_udp: str | None = None
    atna_cert: str | None = None
    atna_key: str | None = None
    atna_client_ca: str | None = None
    atna_allow: list[str] = field(default_factory=lambda: list(DEFAULT_ATNA_ALLOW))

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def default_issuer(self) -> str:
        return self.issuer or self.node_name


DEFAULT_ATNA_ALLOW = ("127.0.0.1", "::1")
_DICOM_KEYS = {"proxy_listen", "pacs", "allowed_aets", "issuer", "purpose", "atna_tcp", "atna_tls",
               "atna_udp", "atna_cert", "atna_key", "atna_client_ca", "atna_allow", "rpc_token_name"}


def load_settings(home: str | Path) -> DicomSettings:
    """Read HOME/config.toml; a missing file gives defaults (no delivery) so import/verify work offline."""
    home = Path(home).resolve()
    path = home / "config.toml"
    settings = DicomSettings(home=home)
    if not path.exists():
        return settings
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    settings.node_name = str(raw.get("node", {}).get("name") or "node")
    dicom = raw.get("dicom", {})
    unknown = set(dicom) - _DICOM_KEYS
    if unknown:
        raise SettingsError(f"{path}: unknown key(s) in [dicom]: {', '.join(sorted(unknown))}")
    rpc = raw.get("rpc", {})
    listen = rpc.get("listen")
    if isinstance(listen, str) and ":" in listen:
        host, port = listen.rsplit(":", 1)
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        settings.rpc_url = listen if listen.startswith("http") else f"http://{host}:{port}"
    tokens = rpc.get("tokens") or {}
    if isinstance(tokens, dict) and tokens:
        name = dicom.get("rpc_token_name")
        if name is not None and name not in tokens:
            raise SettingsError(f"{path}: [dicom] rpc_token_name = {name!r} is not in [rpc] tokens")
        settings.rpc_token = str(tokens[name] if name else next(iter(tokens.values())))
    if settings.rpc_token is None:
        # A node home keeps its tokens hashed (HOME/tokens.json); local tools use the operator's token file.
        token_file = home / "keys" / "operator.token"
        if token_file.exists():
            settings.rpc_token = token_file.read_text().strip() or None
    for key in _DICOM_KEYS - {"rpc_token_name"}:
        if key in dicom:
            setattr(settings, key, dicom[key])
    if not isinstance(settings.allowed_aets, list):
        raise SettingsError(f"{path}: [dicom] allowed_aets must be a list of AE titles")
    if not isinstance(settings.atna_allow, list) or not all(isinstance(a, str) for a in settings.atna_allow):
        raise SettingsError(f"{path}: [dicom] atna_allow must be a list of addresses, e.g. [\"127.0.0.1\"]")
    try:
        parse_allow(settings.atna_allow)
    except ValueError as exc:
        raise SettingsError(f"{path}: [dicom] atna_allow: {exc}") from exc
    return settings


def parse_allow(entries) -> list[tuple]:
    """atna_allow entries -> [(ip_network, source name or None)]. "SOURCE@ADDR[/PREFIX]" binds a name."""
    import ipaddress

    out = []
    for entry in entries:
        name, sep, addr = entry.rpartition("@")
        try:
            net = ipaddress.ip_network(addr.strip().strip("[]"), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not ADDR, NET/PREFIX or SOURCE@ADDR") from None
        if sep and not name:
            raise ValueError(f"{entry!r}: empty SOURCE before '@'")
        out.append((net, name or None))
    return out


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingsError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_pacs(text: str) -> tuple[str, str, int]:
    """'AET@HOST:PORT' -> (aet, host, port)."""
    aet, sep, rest = text.partition("@")
    if not sep or not aet or len(aet) > 16:
        raise SettingsError(f"--pacs must be AET@HOST:PORT with an AE title of 1-16 characters, got {text!r}")
    host, port = parse_hostport(rest, "--pacs")
    return aet, host, port
