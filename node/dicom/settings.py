"""What the DICOM hook reads from HOME/config.toml: the node's RPC endpoint and token, and `[dicom]`.

Kept in one small function (stdlib tomllib) so the Orthanc plugin can use it without the node's
dependencies. Example `[dicom]` section (every key optional):

    [dicom]
    proxy_listen = "0.0.0.0:11112"        # where modalities and viewers connect
    pacs = "ORTHANC@127.0.0.1:4242"       # the real PACS, AET@HOST:PORT
    allowed_aets = ["CT1", "VIEWER"]      # calling AE titles let through; empty = any
    issuer = "HOSP-A"                     # IssuerOfPatientID when an instance carries none
    purpose = "TREAT"                     # purpose of use recorded for DICOM traffic
    atna_tcp = "127.0.0.1:6514"           # RFC 5424 syslog over TCP, octet counting (RFC 6587)
    atna_tls = "0.0.0.0:6515"             # the same over TLS (RFC 5425); needs atna_cert and atna_key
    atna_udp = "127.0.0.1:514"            # RFC 5426
    atna_cert = "keys/atna.pem"
    atna_key = "keys/atna.key"
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

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def default_issuer(self) -> str:
        return self.issuer or self.node_name


_DICOM_KEYS = {"proxy_listen", "pacs", "allowed_aets", "issuer", "purpose", "atna_tcp", "atna_tls",
               "atna_udp", "atna_cert", "atna_key", "rpc_token_name"}


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
    return settings


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
