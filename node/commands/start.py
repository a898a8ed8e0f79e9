"""`radchain start --home DIR`: run a node until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("start", help="run a node in the foreground (SIGINT/SIGTERM stop it cleanly)")
    p.add_argument("--home", required=True, type=Path, help="node home (config.toml, genesis.json, keys/, data/)")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    import trio

    from node.runtime.settings import ConfigError, load_config

    try:
        cfg = load_config(args.home)
    except ConfigError as exc:
        print(f"radchain start: {exc}", file=sys.stderr)
        return 2
    import os

    from node.runtime.keys import SecretModeError, check_home_secrets

    try:
        check_home_secrets(cfg.home)
    except SecretModeError as exc:
        print(f"radchain start: {exc}", file=sys.stderr)
        return 2
    if "dicom" in cfg.extra:
        # The hook starts inside the node's nursery: check its settings first, so a bad one is a clear
        # message and exit 2 here, not a traceback from a running node.
        from node.dicom.atna import listeners_from
        from node.dicom.settings import SettingsError, load_settings

        try:
            listeners_from(load_settings(cfg.home))
        except SettingsError as exc:
            print(f"radchain start: [dicom]: {exc}", file=sys.stderr)
            return 2
    os.umask(0o077)  # data/, the WAL, the spool and anything else this process creates: owner only
    if not cfg.rpc.read_requires_token and cfg.rpc.host in ("0.0.0.0", "::", "[::]", ""):
        print(f"radchain start: WARNING: rpc.listen = {cfg.rpc.listen} with rpc.read_requires_token = false: "
              "every read (audit trails, AE titles, metrics) is open to anyone who reaches this port",
              file=sys.stderr)
    from network.logs import mute_libp2p_logging
    from node.runtime.jsonlogs import setup_logging

    setup_logging(cfg.log_level, cfg.name)
    mute_libp2p_logging()
    from node.runtime.gcpolicy import freeze_startup_heap
    from node.runtime.node import open_node

    async def main() -> None:
        node = await open_node(cfg)  # waits, with one log line, while the data disk is full
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(node.run)
                freeze_startup_heap()  # full collections walk what the node allocates, not its startup heap
                async for signum in signals:
                    logging.getLogger("radchain.node").info(
                        "stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except* RuntimeError as group:  # py-libp2p 0.8.1 may raise while its services unwind (docs/NETWORK.md)
        for exc in group.exceptions:
            if "Nursery is closed" not in str(exc):
                raise
    return 0
