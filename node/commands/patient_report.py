"""`radchain patient-report --patient-id ID --issuer ISSUER --out report.html`: the patient access report."""

from __future__ import annotations

import sys
from pathlib import Path

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("patient-report", help="every recorded access to a patient's images, as HTML",
                              description="Lists every event recorded for the patient's images across the "
                                          "consortium (when, which hospital, purpose, role; consents and their "
                                          "changes; research exports), oldest first, for a privacy officer. "
                                          "Talk to your own hospital's node: it tokenizes the identifiers. The raw "
                                          "identifiers are printed only by the patient's home hospital.")
    add_target_args(p)
    p.add_argument("--patient-id", required=True)
    p.add_argument("--issuer", required=True, help="Issuer of Patient ID")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError
    from node.research.report import collect, render

    try:
        with client_from_args(args) as rc:
            data = collect(rc, args.patient_id, args.issuer)
    except RpcCallError as exc:
        print(f"radchain patient-report: {exc}", file=sys.stderr)
        return 1
    render(data, args.out)
    print(f"radchain patient-report: {len(data['rows'])} events written to {args.out}"
          f"{'' if data['identified'] else ' (patient named by pseudonym: this node is not its home hospital)'}")
    return 0
