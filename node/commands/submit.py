"""`radchain submit`: record an imaging-audit event (pseudonymized by the node) or submit a signed tx."""

from __future__ import annotations

import json
import sys

from node.commands._target import add_target_args, client_from_args

# CLI option -> raw event field (docs/CONTRACTS.md "Raw events")
FIELDS = ["type", "patient_id", "issuer", "study_uid", "actor", "actor_ae", "purpose", "event_id", "time",
          "outcome", "action", "digest", "pixel_digest", "n_instances", "grantee", "scope", "expires"]


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit an event (e.g. an image was viewed) or a signed tx to a node",
                              description="Exit 0 when the node accepted it (pending or committed), 1 when it "
                                          "refused it (the reason is printed), 3 on a commit-mode timeout "
                                          "(still pending: query later or resubmit; resubmitting is safe).")
    add_target_args(p)
    p.add_argument("--event", help="the whole event as JSON (or - to read it from stdin)")
    p.add_argument("--tx", help="hex of a signed tx (canonical wire bytes) instead of an event; - reads stdin")
    for name in FIELDS:
        p.add_argument("--" + name.replace("_", "-"), dest=name)
    p.add_argument("--mode", choices=["async", "sync", "commit"], default="sync",
                   help="async: answer at once; sync: once checked and pending (default); commit: once committed")
    p.add_argument("--wait", action="store_true", help="same as --mode commit")
    p.add_argument("--timeout", type=float, help="commit mode: seconds to wait (default 10, at most 60)")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError

    mode = "commit" if args.wait else args.mode
    with client_from_args(args) as rc:
        try:
            if args.tx:
                tx = sys.stdin.read().strip() if args.tx == "-" else args.tx
                answer = rc.submit_tx(tx, mode=mode, timeout=args.timeout)
            else:
                if args.event:
                    event = json.load(sys.stdin) if args.event == "-" else json.loads(args.event)
                else:
                    event = {k: getattr(args, k) for k in FIELDS if getattr(args, k) is not None}
                    for k in ("outcome", "n_instances"):
                        if k in event:
                            event[k] = int(event[k])
                answer = rc.submit_event(event, mode=mode, timeout=args.timeout)
        except RpcCallError as exc:
            print(f"radchain submit: rejected: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(answer, indent=2))
    return 3 if answer.get("timeout") else 0
