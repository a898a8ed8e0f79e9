"""`radchain prior-imaging`: a patient's prior studies at every hospital, and the repeats among them.

    radchain prior-imaging --home node-a --patient-id PAT-1 --issuer HOSP-A --modality CT --within-days 90

The node tokenizes the patient (use your own hospital's node); only tokens cross the network.
"""

from __future__ import annotations

import json
import sys

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("prior-imaging", help="a patient's prior studies across the consortium")
    add_target_args(p)
    p.add_argument("--patient-id", help="Patient ID (with --issuer)")
    p.add_argument("--issuer", help="Issuer of Patient ID")
    p.add_argument("--patient-token", help="patient token (32 hex digits) instead of --patient-id/--issuer")
    p.add_argument("--modality", help="only this DICOM Modality, e.g. CT")
    p.add_argument("--body-part", help="only this Body Part Examined, e.g. HEAD")
    p.add_argument("--within-days", type=int, help="only studies dated at most this many days ago")
    p.add_argument("--repeat-days", type=int, default=30, help="repeat window of the redundancy list (default 30)")
    p.add_argument("--json", action="store_true", help="the RPC answer as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError

    if args.patient_token:
        params: dict = {"patient": args.patient_token}
    elif args.patient_id and args.issuer:
        params = {"patient_id": args.patient_id, "issuer": args.issuer}
    else:
        print("radchain prior-imaging: give --patient-id with --issuer, or --patient-token", file=sys.stderr)
        return 2
    for name in ("modality", "body_part", "within_days", "repeat_days"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    with client_from_args(args) as rc:
        try:
            res = rc.call("prior_imaging", params)
        except RpcCallError as exc:
            print(f"radchain prior-imaging: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{'DATE':<10}  {'HOSPITAL':<12} {'MODALITY':<9} {'BODY PART':<14} {'INSTANCES':>9}  STUDY")
    for s in res["studies"]:
        print(f"{s['date']:<10}  {s['member']:<12} {','.join(s['modality']) or '-':<9} "
              f"{','.join(s['body_part']) or '-':<14} {s['instances']:>9}  {s['study'][:16]}")
    if not res["studies"]:
        print("(no prior studies)")
    if res["repeats"]:
        print(f"\nrepeat studies within {args.repeat_days} days:")
        for r in res["repeats"]:
            where = "other hospital" if r["cross_hospital"] else "same hospital"
            print(f"  {r['modality']} {r['body_part']}: {r['first']['date']} {r['first']['member']} -> "
                  f"{r['repeat']['date']} {r['repeat']['member']} ({r['days_apart']} days, {where})")
    if res["truncated"]:
        print("(history truncated: more events than one lookup reads)", file=sys.stderr)
    return 0
