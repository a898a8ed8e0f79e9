"""`radchain report utilization|redundancy`: workload numbers (CSV, PNG) and repeat studies, from any node.

    radchain report utilization --home node-a --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --out util/
    radchain report redundancy --home node-a --within-days 30 [--modality CT] [--cross-hospital] [--json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="reports over the consortium's trail (utilization, redundancy)")
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
    r = sub.add_parser("redundancy", help="repeat studies of the same patient, modality and body part within N "
                                          "days, across every hospital (patient tokens only)")
    add_target_args(r)
    r.add_argument("--within-days", type=int, default=30, help="repeat window in days (default 30)")
    r.add_argument("--since", help="studies stored at or after (ISO 8601 or epoch ms; default 365 days ago)")
    r.add_argument("--until", help="studies stored before (ISO 8601 or epoch ms; default now)")
    r.add_argument("--modality", help="only this DICOM Modality, e.g. CT")
    r.add_argument("--body-part", help="only this Body Part Examined, e.g. HEAD")
    r.add_argument("--cross-hospital", action="store_true", help="only repeats at a different hospital")
    r.add_argument("--out", type=Path, help="also write redundancy.csv and redundancy.json here")
    r.add_argument("--json", action="store_true", help="the RPC answer as JSON")
    r.set_defaults(func=run_redundancy)


def run(args) -> int:
    from node.client import RpcCallError
    from node.reports.utilization_charts import write_charts, write_csv

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


def run_redundancy(args) -> int:
    from node.client import RpcCallError
    from node.reports.utilization_charts import write_redundancy_csv

    params: dict = {"within_days": args.within_days}
    for name in ("since", "until", "modality", "body_part"):
        value = getattr(args, name)
        if value is not None:
            params[name] = int(value) if name in ("since", "until") and value.isdigit() else value
    if args.cross_hospital:
        params["cross_hospital"] = True
    with client_from_args(args) as rc:
        try:
            res = rc.call("redundancy", params, timeout=300)
        except RpcCallError as exc:
            print(f"radchain report redundancy: {exc}", file=sys.stderr)
            return 1
    if args.out is not None:
        write_redundancy_csv(res, args.out)
        (args.out / "redundancy.json").write_text(json.dumps(res, indent=1))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{'PATIENT TOKEN':<32}  {'MODALITY':<8} {'BODY PART':<12} {'FIRST':<10} {'HOSPITAL':<12} "
              f"{'REPEAT':<10} {'HOSPITAL':<12} {'DAYS':>4}  WHERE")
        for r in res["repeats"]:
            print(f"{r['patient']:<32}  {r['modality']:<8} {r['body_part']:<12} {r['first']['date']:<10} "
                  f"{r['first']['member']:<12} {r['repeat']['date']:<10} {r['repeat']['member']:<12} "
                  f"{r['days_apart']:>4}  {'other hospital' if r['cross_hospital'] else 'same hospital'}")
        print(f"{len(res['repeats'])} repeat(s) within {res['within_days']} days "
              f"({res['cross_hospital']} at another hospital) among {res['studies']} studies of "
              f"{res['patients']} patients")
    if not res["listed_all"]:
        print("(more repeats than one answer lists: narrow --since/--until or --modality)", file=sys.stderr)
    if res["truncated"]:
        print(f"(window truncated after {res['scanned']} events: narrow --since/--until)", file=sys.stderr)
    return 0
