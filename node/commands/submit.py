"""`radchain submit`: record an imaging-audit event through a node (identifiers are pseudonymized there)."""

from __future__ import annotations

import json
import sys

from node.commands._target import add_target_args, client_from_args

# CLI option -> raw event field (docs/CONTRACTS.md "Raw events")
FIELDS = ["type", "patient_id", "issuer", "study_uid", "actor", "actor_ae", "purpose", "event_id", "time",
          "outcome", "action", "digest", "pixel_digest", "n_instances", "grantee", "scope", "expires"]


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit an event (e.g. an image was viewed) to a node")
    add_target_args(p)
    p.add_argument("--event", help="the whole event as JSON (or - to read it from stdin)")
    for name in FIELDS:
        p.add_argument("--" + name.replace("_", "-"), dest=name)
    p.add_argument("--wait", action="store_true", help="wait until the event is committed")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError

    if args.event:
        event = json.load(sys.stdin) if args.event == "-" else json.loads(args.event)
    else:
        event = {k: getattr(args, k) for k in FIELDS if getattr(args, k) is not None}
        for k in ("outcome", "n_instances"):
            if k in event:
                event[k] = int(event[k])
    with client_from_args(args) as rc:
        try:
            answer = rc.submit_event(event, mode="commit" if args.wait else None)
        except RpcCallError as exc:
            print(f"radchain submit: rejected: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(answer, indent=2))
    return 0
