"""The consortium PSKs this node learned from ``network.psk_rotated`` (node.ledger.epochs), kept in
``keys/psk.json`` (mode 0600, written atomically and fsynced by node.privatefiles.write_secret) BEFORE the
network uses them: after a kill -9 the node restarts with every key it may need, and a key recovered by
`radchain member psk-recover` (the node was down through a whole rotation) is found there too.

    {"<commitment hex>": {"psk": "<hex>", "start": <first height under it>}, ...}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from node.ledger.epochs import PSK_BYTES
from node.privatefiles import write_secret

__all__ = ["PskKeys"]

log = logging.getLogger("radchain.node")
MAX_FILE = 64 * 1024


class PskKeys:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.keys: dict[bytes, tuple[bytes, int]] = {}  # commitment -> (psk, start)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        if len(raw) > MAX_FILE:
            raise ValueError(f"{self.path}: larger than {MAX_FILE} bytes")
        try:
            doc = json.loads(raw)
            for commit, entry in doc.items():
                psk, start = bytes.fromhex(entry["psk"]), entry["start"]
                if len(psk) != PSK_BYTES or len(bytes.fromhex(commit)) != 32 or type(start) is not int:
                    raise ValueError("bad entry")
                self.keys[bytes.fromhex(commit)] = (psk, start)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{self.path} is not a PSK key file: {exc}") from None

    @property
    def learned(self) -> dict[bytes, bytes]:
        return {c: psk for c, (psk, _) in self.keys.items()}

    def add(self, commit: bytes, psk: bytes, start: int) -> bool:
        """Persist a learned PSK (durably, before it is used). False if it was known already."""
        if commit in self.keys:
            return False
        keys = dict(self.keys)
        keys[commit] = (psk, start)
        doc = {c.hex(): {"psk": k.hex(), "start": s} for c, (k, s) in sorted(keys.items(), key=lambda i: i[1][1])}
        write_secret(self.path, json.dumps(doc, indent=1) + "\n")
        self.keys = keys
        return True
