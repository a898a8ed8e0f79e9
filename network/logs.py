"""Keep py-libp2p's log noise out of the node's logs (see docs/NETWORK.md).

`import libp2p` runs its own `setup_logging()`, which resets the `libp2p` logger, so this must run
after the import (network/host.py calls it at import time, and PeerNetwork.run calls it again in case
the application reconfigured logging since). Some libp2p modules log through the *root* logger
(`logging.warning(...)` in swarm_connection.py); a filter on the root handlers drops those below ERROR.
"""

from __future__ import annotations

import logging

import libp2p  # noqa: F401  (must be imported before the levels below are set)

__all__ = ["mute_libp2p_logging"]


class _DropLibp2pRoot(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "root" and "/libp2p/" in record.pathname and record.levelno < logging.ERROR
        )


_FILTER = _DropLibp2pRoot()


def mute_libp2p_logging(level: int = logging.ERROR) -> None:
    """libp2p loggers at `level` (ERROR), refused-dial chatter at CRITICAL, root-logged warnings dropped."""
    lg = logging.getLogger("libp2p")
    lg.setLevel(level)
    lg.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
        lg.addHandler(logging.NullHandler())
    # "Failed to open TCP stream" on every refused dial; AutoConnector chatter every 30 s.
    for name in ("libp2p.transport.tcp", "libp2p.network.auto_connector"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    root = logging.getLogger()
    for h in root.handlers:
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)
    if _FILTER not in root.filters:
        root.addFilter(_FILTER)
