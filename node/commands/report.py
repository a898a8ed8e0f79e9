"""`radchain report utilization`: workload numbers as CSV and charts as PNG, from any node.

    radchain report utilization --home node-a --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --out util/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="reports over the consortium's trail (utilization)")
    sub = p.add_subparsers(dest="report", metavar="REPORT", required=True)
    u = sub.add_parser("utilization", help="studies, reads, exports, queries per hospital, modality, weekday, "
                                           "hour; store-to-first-read; repeat imaging; CSV + PNG")
    add_target_args(u)
    u.add_argument("--since", help="event time >= (ISO 8601 or epoch ms; default 30 days ago)")
    u.add_argument("--until", help="event time < (ISO 8601 or epoch ms; default now)")
    u.add_argument("--member", help="only this hospital")
    u.add_argument("--repeat-days", type=int, default=30, help="repeat-imaging window (default 30)")
    u.add_argument("--out", type=Path, required=True, help="directory for the CSV and PNG files")
    u.add_argument("--no-charts", action="store_true", help="CSV only (no matplotlib needed)")
    u.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError
    from node.utilization_report import write_charts, write_csv

    params: dict = {"repeat_days": args.repeat_days}
    for name in ("since", "until", "member"):
        value = getattr(args, name)
        if value is not None:
            params[name] = int(value) if name != "member" and value.isdigit() else value
    with client_from_args(args) as rc:
        try:
            report = rc.call("utilization", params, timeout=300)
        except RpcCallError as exc:
            print(f"radchain report utilization: {exc}", file=sys.stderr)
            return 1
    files = write_csv(report, args.out)
    (args.out / "utilization.json").write_text(json.dumps(report, indent=1))
    if not args.no_charts:
        try:
            files += write_charts(report, args.out)
        except ImportError:
            print("radchain report utilization: charts need matplotlib (pip install 'radchain[reports]'); "
                  "CSV written", file=sys.stderr)
            return 1
    for f in files:
        print(f)
    if report["truncated"]:
        print(f"(window truncated after {report['scanned']} txs: narrow --since/--until)", file=sys.stderr)
    return 0
