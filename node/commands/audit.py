"""`radchain audit`: the audit trail of a study, a patient, an actor, ... — one page, all, or following live.

    radchain audit --testnet testnet --study 1.2.840.1
    radchain audit --url http://10.0.0.1:26601 --token T --patient PAT-1 --issuer HOSP-A --since 2026-11-01T00:00:00Z
    radchain audit --url ... --study 1.2.840.1 --follow --from-height 1 --json     # history, then live
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="who stored/viewed/exported/... a study or a patient's images")
    add_target_args(p)
    f = p.add_argument_group("filters (raw identifiers are tokenized by the node: use your own hospital's node)")
    f.add_argument("--study", dest="study_uid", help="Study Instance UID")
    f.add_argument("--study-token", dest="study", help="study token (32 hex digits)")
    f.add_argument("--patient", dest="patient_id", help="Patient ID (with --issuer)")
    f.add_argument("--issuer", help="Issuer of Patient ID")
    f.add_argument("--patient-token", dest="patient", help="patient token (32 hex digits)")
    f.add_argument("--actor", help="user id")
    f.add_argument("--user-token", dest="user", help="user token (32 hex digits)")
    f.add_argument("--ae", help="AE title")
    f.add_argument("--member", help="submitting hospital (member name)")
    f.add_argument("--type", help="event type, e.g. instances.accessed")
    f.add_argument("--since", help="event time >= (ISO 8601 or epoch ms)")
    f.add_argument("--until", help="event time < (ISO 8601 or epoch ms)")
    p.add_argument("--limit", type=int, help="at most this many entries (default: all)")
    p.add_argument("--follow", action="store_true", help="after the history, wait for new events (WebSocket)")
    p.add_argument("--from-height", type=int, default=1, help="with --follow: start at this height (resume)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


FILTERS = ["study_uid", "study", "patient_id", "issuer", "patient", "actor", "user", "ae", "member", "type",
           "since", "until"]


def _filters(args) -> dict:
    out = {}
    for name in FILTERS:
        value = getattr(args, name)
        if value is None:
            continue
        out[name] = int(value) if name in ("since", "until") and value.isdigit() else value
    return out


HEADER = (f"{'HEIGHT':>8}  {'TIME (UTC)':<25}  {'TYPE':<24} {'MEMBER':<10} {'WHO':<16} "
          f"{'PURPOSE':<8} ACTION OUTCOME  HASH")


def _header(as_json: bool) -> None:
    # Table mode only: --json lines stay one object per line for jq and scripts.
    if not as_json:
        print(HEADER, flush=True)


def _print(entry: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(entry, separators=(",", ":")), flush=True)
        return
    when = datetime.fromtimestamp(entry["ts"] / 1000, UTC).isoformat(timespec="seconds")
    who = entry.get("ae") or (entry.get("user") or "")[:12]
    print(f"{entry['height']:>8}  {when}  {entry['type']:<24} {entry['member']:<10} {who:<16} "
          f"{entry.get('purpose', ''):<8} {entry.get('action', '')} {entry.get('outcome', '')}  "
          f"{entry['hash'][:16]}", flush=True)


def run(args) -> int:
    from node.client import RpcCallError

    filters = _filters(args)
    if not filters:
        print("radchain audit: give at least one filter (--study, --patient, --actor, --member, --type, ...)",
              file=sys.stderr)
        return 2
    with client_from_args(args) as rc:
        if args.follow:
            return _follow(rc.url, rc.token, filters, args)
        _header(args.json)
        try:
            shown = 0
            for entry in rc.audit_trail_all(**filters, limit=min(args.limit or 1000, 1000)):
                _print(entry, args.json)
                shown += 1
                if args.limit and shown >= args.limit:
                    break
        except RpcCallError as exc:
            print(f"radchain audit: {exc}", file=sys.stderr)
            return 1
    return 0


def _follow(url: str, token: str | None, filters: dict, args) -> int:
    import trio

    from node.client import RpcCallError, Subscription

    async def main() -> None:
        _header(args.json)
        async with Subscription(url, "events", from_height=args.from_height, filter=filters, token=token) as sub:
            async for entry in sub:
                _print(entry, args.json)

    try:
        trio.run(main, strict_exception_groups=False)
    except KeyboardInterrupt:
        return 0
    except RpcCallError as exc:
        print(f"radchain audit: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        errors = [e for e in group.exceptions if isinstance(e, RpcCallError)]
        if not errors:
            raise
        print(f"radchain audit: {errors[0]}", file=sys.stderr)
        return 1
    return 0
