"""`radchain verify-export MANIFEST --genesis G`: check a research export offline."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("verify-export", help="verify a research export directory offline",
                              description="Checks, with only the genesis member keys: every file in the manifest's "
                                          "directory is the de-identified file recorded on chain (its lineage tx, "
                                          "committed), derived from a recorded original, under the named project "
                                          "(registered, approved by the exporter before the export, not expired) "
                                          "and a consent of the patient (or the project's waiver); no other file is "
                                          "present. Exit 0 valid, 1 invalid (the reason is printed), 2 unreadable.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--genesis", required=True, type=Path, help="the consortium's genesis.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.ledger.genesis import Genesis, GenesisError
    from node.research.export import ExportError, verify_manifest

    try:
        genesis = Genesis.load(args.genesis)
    except (GenesisError, OSError) as exc:
        print(f"verify-export: {exc}", file=sys.stderr)
        return 2
    if not args.manifest.is_file():
        print(f"verify-export: {args.manifest}: no such file", file=sys.stderr)
        return 2
    try:
        notes = verify_manifest(args.manifest, genesis)
    except ExportError as exc:
        print(f"verify-export: INVALID: {exc}")
        return 1
    for line in notes:
        print(f"  {line}")
    print("verify-export: VALID")
    return 0
