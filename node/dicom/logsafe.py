"""Log lines without PHI side channels, and log lines an attacker cannot multiply.

Peer addresses and AE titles can name a workstation and so a clinician or a patient's location; they stay
in the spool's local journal (spool/journal.jsonl, 0600, inside the PHI boundary: docs/PSEUDONYMS.md) and
never reach the process log (node.log, journald, log shippers). The log says which network a peer is in,
which is what an operator needs to find a misconfigured sender, without naming the machine.
Standard library only (the Orthanc plugin imports node.dicom modules).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time


def net_label(host: str | None) -> str:
    """A non-identifying form of an address: its /24 (IPv4) or /48 (IPv6) network."""
    if not host:
        return "?"
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # "ip:port" -> "ip"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "?"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class RateLimitedLog:
    """At most `burst` lines per `period` seconds per key; the next line that gets through says how many
    were suppressed. Refused senders choose how often they are refused, so they must not choose how much
    is logged (disk, journald and the operator's attention)."""

    def __init__(self, logger: logging.Logger, *, period: float = 10.0, burst: int = 5, max_keys: int = 1024):
        self.logger = logger
        self.period = period
        self.burst = burst
        self.max_keys = max_keys
        self._state: dict[str, list] = {}   # key -> [window start, lines in window, suppressed]
        self._lock = threading.Lock()
        self.suppressed = 0

    def log(self, level: int, key: str, msg: str, *args) -> bool:
        now = time.monotonic()
        with self._lock:
            st = self._state.get(key)
            if st is None:
                if len(self._state) >= self.max_keys:
                    self._state = {k: v for k, v in self._state.items() if now - v[0] < self.period}
                if len(self._state) >= self.max_keys:
                    # many distinct keys: fold them into one, never grow without bound
                    key, st = "*", self._state.setdefault("*", [now, 0, 0])
                else:
                    st = self._state[key] = [now, 0, 0]
            if now - st[0] >= self.period:
                st[0], st[1] = now, 0
            if st[1] >= self.burst:
                st[2] += 1
                self.suppressed += 1
                return False
            st[1] += 1
            dropped, st[2] = st[2], 0
        if dropped:
            msg += f" ({dropped} similar line(s) suppressed)"
        self.logger.log(level, msg, *args)
        return True
