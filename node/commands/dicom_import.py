"""`radchain dicom-import`: record a folder of DICOM files (an archive back-fill) as stored instances."""

from __future__ import annotations

import logging
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dicom-import", help="record DICOM files/folders as stored instances (archive back-fill)",
        description="Reads every DICOM file under PATH (recursively), spools one instances.stored event per "
                    "instance with its SHA-256 digests, then delivers the spool to the node. Re-running is "
                    "idempotent.")
    p.add_argument("--home", required=True, help="node home directory (config.toml, spool/)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or directories")
    p.add_argument("--actor", default="dicom-import", help="who is recorded as storing (default: dicom-import)")
    p.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for delivery to the node before leaving the rest in the spool")
    p.add_argument("--no-deliver", action="store_true", help="only spool")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.commands._progress import track
    from node.dicom.delivery import Deliverer
    from node.dicom.importer import import_paths, iter_files
    from node.dicom.settings import SettingsError, load_settings
    from node.dicom.spool import Spool, SpoolError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.home)
    except SettingsError as exc:
        print(f"radchain dicom-import: {exc}", file=sys.stderr)
        return 2
    missing = [p for p in args.paths if not __import__("os").path.exists(p)]
    if missing:
        print(f"radchain dicom-import: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    spool = Spool(settings.spool_dir)
    # The file list first (names only: cheap next to reading every file) so the bar knows its total.
    files = list(iter_files(args.paths))
    try:
        report = import_paths(spool, track(files, len(files), "dicom-import", unit="file"), node_name=settings.node_name, actor=args.actor,
                              purpose=settings.purpose, default_issuer=settings.default_issuer)
    except SpoolError as exc:
        print(f"radchain dicom-import: {exc}", file=sys.stderr)
        return 1
    for path, error in report.errors:
        print(f"skipped {path}: {error}", file=sys.stderr)
    print(f"spooled {report.instances} instance(s) of {len(report.studies)} study(ies); "
          f"{len(report.errors)} file(s) skipped", flush=True)
    if args.no_deliver:
        return 1 if report.errors else 0
    if not settings.rpc_url:
        print(f"no [rpc] in {args.home}/config.toml: {spool.count()} event(s) stay in the spool")
        return 1 if report.errors else 0
    deliverer = Deliverer(spool, settings.rpc_url, settings.rpc_token)
    if deliverer.drain(time.monotonic() + args.wait):
        print(f"delivered to the node at {settings.rpc_url}")
    else:
        print(f"{spool.count()} event(s) left in the spool for later delivery"
              + (f" (last error: {deliverer.last_error})" if deliverer.last_error else ""))
    return 1 if report.errors else 0
