"""`radchain research list|show|register|approve|export`: research projects on chain and consented exports."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("research", help="research projects, approvals and de-identified exports",
                              description="Projects are registered by a sponsor member and approved by each "
                                          "data-holding member on chain; exports are gated by every validator "
                                          "(approved project, consent in force or the project's waiver).")
    sub = p.add_subparsers(dest="research_command", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="every registered project with its approvals")
    add_target_args(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

    show = sub.add_parser("show", help="one project: purpose, data scope, expiry, approvals")
    add_target_args(show)
    show.add_argument("project")
    show.set_defaults(func=run_show)

    reg = sub.add_parser("register", help="register a project (signed with this member's key; --home required)")
    add_target_args(reg)
    reg.add_argument("--project", required=True, help="project code, e.g. LUNG-2026 (A-Z 0-9 . _ -)")
    reg.add_argument("--ethics-doc", type=Path, required=True, help="the ethics approval document (its SHA-256 is recorded)")
    reg.add_argument("--purpose", default="HRESCH", help="HL7 PurposeOfUse research code (default HRESCH)")
    reg.add_argument("--scope", default="IMG", help="scope code: IMG, IMG-<modality>, ALL, RPT (default IMG)")
    reg.add_argument("--modality", help="data scope: one DICOM modality")
    reg.add_argument("--body-part", help="data scope: one DICOM body part")
    reg.add_argument("--date-from", type=int, help="data scope: first study date YYYYMMDD")
    reg.add_argument("--date-to", type=int, help="data scope: last study date YYYYMMDD")
    reg.add_argument("--expires", required=True, help="expiry (ISO 8601 with timezone, or YYYY-MM-DD)")
    reg.add_argument("--waiver", action="store_true", help="the ethics board waived individual consent")
    reg.set_defaults(func=run_register)

    ap = sub.add_parser("approve", help="approve a project as a data-holding member (--home required)")
    add_target_args(ap)
    ap.add_argument("project")
    ap.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                    help="how long to wait for the project's registration to reach this node (default 10): it "
                         "commits on the sponsor's node first, and ours may apply that block a moment later")
    ap.set_defaults(func=run_approve)

    ex = sub.add_parser("export", help="export studies de-identified under an approved project, with a manifest")
    add_target_args(ex)
    ex.add_argument("--project", required=True)
    ex.add_argument("--study", action="append", required=True, help="Study Instance UID (repeatable)")
    ex.add_argument("--out", type=Path, required=True, help="empty output directory")
    ex.add_argument("--pacs", required=True, help="Orthanc REST URL, e.g. http://127.0.0.1:8042")
    ex.add_argument("--actor", default="research-export", help="who exports (user id; tokenized by the node)")
    ex.add_argument("--issuer", help="Issuer of Patient ID when the files carry none (default: [dicom] issuer "
                                     "or the node's name)")
    ex.add_argument("--purpose", help="research purpose (default: the project's)")
    ex.set_defaults(func=run_export)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def run_list(args) -> int:
    from node.research.projects import list_projects

    with client_from_args(args) as rc:
        projects = list_projects(rc)
    if args.json:
        print(json.dumps(projects, indent=2))
        return 0
    print(f"{'PROJECT':<20} {'SPONSOR':<10} {'PURPOSE':<10} {'SCOPE':<8} {'EXPIRES':<10} {'STATUS':<8} APPROVED BY")
    for p in projects:
        print(f"{p['project']:<20} {p['sponsor']:<10} {p['purpose']:<10} {p['scope']:<8} {_when(p['expires']):<10} "
              f"{p['status']:<8} {', '.join(a['member'] for a in p['approvals']) or '-'}")
    return 0


def run_show(args) -> int:
    from node.research.projects import get_project

    with client_from_args(args) as rc:
        p = get_project(rc, args.project)
    if p is None:
        print(f"radchain research show: no project {args.project} on the chain", file=sys.stderr)
        return 1
    print(json.dumps(p, indent=2))
    return 0


def _submit(args, raw: bytes, not_yet: str | None = None) -> int:
    """Submit raw and wait for its commit. A refusal containing ``not_yet`` is retried for args.wait seconds:
    it names state our node has not applied yet (a block committed elsewhere a moment earlier)."""
    from node.client import RpcCallError

    with client_from_args(args) as rc:
        try:
            answer = _submit_when_ready(rc, raw, not_yet, getattr(args, "wait", 0.0))
            if answer.get("status") == "pending":  # admitted; a loaded chain may take longer to commit it
                answer = {**answer, **rc.wait_committed(answer["tx"], timeout=90)}
        except RpcCallError as exc:
            print(f"radchain research: refused: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(answer, indent=2))
    if answer.get("outcome") == "rejected":
        print(f"radchain research: rejected by the validators: {answer.get('reason', '')}", file=sys.stderr)
        return 1
    return 0 if answer.get("status") == "committed" else 3


def _submit_when_ready(rc, raw: bytes, not_yet: str | None, wait: float) -> dict:
    from node.client import RpcCallError

    deadline = time.monotonic() + max(0.0, wait)
    said = False
    while True:
        try:
            return rc.submit_tx(raw, mode="commit", timeout=30)
        except RpcCallError as exc:
            if not_yet is None or not_yet not in exc.message or time.monotonic() >= deadline:
                raise
            if not said:
                print(f"radchain research: {exc.message}: not on this node yet, waiting up to {wait:g} s",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(0.2)


def _need_home(args, what: str) -> None:
    if not args.home:
        raise SystemExit(f"radchain research {what}: --home (the member's node home: its key signs) is required")


def run_register(args) -> int:
    from node.ledger.intake import EventError, parse_time
    from node.ledger.tx import TxError
    from node.research.projects import register_tx

    _need_home(args, "register")
    text = args.expires if "T" in args.expires else args.expires + "T00:00:00+00:00"
    try:
        expires = parse_time(text, "expires")
        raw = register_tx(args.home, args.project, hashlib.sha256(args.ethics_doc.read_bytes()).digest(),
                          args.purpose, args.scope, expires, modality=args.modality, body_part=args.body_part,
                          date_from=args.date_from, date_to=args.date_to, waiver=1 if args.waiver else None)
    except (EventError, TxError, ValueError, OSError) as exc:
        print(f"radchain research register: {exc}", file=sys.stderr)
        return 2
    return _submit(args, raw)


def run_approve(args) -> int:
    from node.ledger.tx import TxError
    from node.research.projects import approve_tx

    _need_home(args, "approve")
    try:
        raw = approve_tx(args.home, args.project)
    except (TxError, ValueError) as exc:
        print(f"radchain research approve: {exc}", file=sys.stderr)
        return 2
    return _submit(args, raw, not_yet="is not registered")


def run_export(args) -> int:
    from node.research.export import ExportError, Pacs, export_studies

    _need_home(args, "export")
    issuer = args.issuer
    if issuer is None:
        try:
            from node.dicom.settings import load_settings
            issuer = load_settings(args.home).default_issuer
        except Exception:
            from node.runtime.settings import load_config
            issuer = load_config(args.home).name
    started = time.monotonic()
    pacs = Pacs(args.pacs)
    try:
        with client_from_args(args) as rc:
            manifest = export_studies(rc, pacs, args.home, args.project, args.study, args.out, actor=args.actor,
                                      default_issuer=issuer, purpose=args.purpose)
    except ExportError as exc:
        print(f"radchain research export: REFUSED: {exc}", file=sys.stderr)
        return 1
    finally:
        pacs.close()
    n = sum(len(s["files"]) for s in manifest["studies"])
    print(f"radchain research export: {n} de-identified files of {len(manifest['studies'])} studies in {args.out} "
          f"with manifest.json ({time.monotonic() - started:.1f} s)")
    return 0
