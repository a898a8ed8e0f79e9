"""`radchain atna-forward`: the consortium's events, as DICOM audit messages, to an existing ATNA repository.

    radchain atna-forward --home node-a --to arr.hospital:6514 --ca ca.pem --cert me.pem --key me.key \\
        --since 2026-11-01T00:00:00Z --state atna.cursor

RFC 5424 syslog over RFC 5425 TLS (node.reports.atna_syslog). One pass over what matches; run it from cron or a
timer with --state to send only what is new each time.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("atna-forward", help="send recorded events to an ATNA audit repository (syslog/TLS)")
    add_target_args(p)
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the repository's syslog-TLS listener")
    p.add_argument("--ca", required=True, help="CA certificate(s) the repository's certificate must chain to")
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="client key")
    p.add_argument("--since", help="events at or after this time (ISO 8601 or epoch ms)")
    p.add_argument("--type", help="only this tx type")
    p.add_argument("--member", help="only events recorded by this member")
    p.add_argument("--state", type=Path, help="file keeping the position: resume after the last sent event")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError
    from node.reports.atna_syslog import SyslogTlsSender, forward, tls_context

    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        print("radchain atna-forward: --to HOST:PORT", file=sys.stderr)
        return 2
    filters = {}
    if args.since:
        filters["since"] = int(args.since) if args.since.isdigit() else args.since
    for name in ("type", "member"):
        if getattr(args, name):
            filters[name] = getattr(args, name)
    cursor = None
    if args.state and args.state.exists():
        cursor = args.state.read_text().strip() or None

    def save(c: str) -> None:
        if args.state:
            tmp = args.state.with_suffix(".tmp")
            tmp.write_text(c)
            os.replace(tmp, args.state)

    try:
        with client_from_args(args) as rc, SyslogTlsSender(host, int(port), tls_context(args.ca, args.cert, args.key)) as s:
            n = forward(rc, s, filters, cursor, save, hostname=socket.gethostname())
    except (OSError, RpcCallError) as exc:
        print(f"radchain atna-forward: {exc}", file=sys.stderr)
        return 1
    print(f"sent {n} audit message(s) to {args.to}")
    return 0
