"""`radchain genesis`: assemble genesis.json from the members' entries (output of `radchain init`)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("genesis", help="assemble genesis.json from member entries (radchain init)")
    p.add_argument("members", nargs="+", type=Path, help="member.json files, in replica order")
    p.add_argument("--chain-id", required=True)
    p.add_argument("--out", type=Path, default=Path("genesis.json"))
    p.set_defaults(func=run)


def run(args) -> int:
    from node.ledger.genesis import NEW_CHAIN_PARAMS, Genesis, GenesisError

    doc = {"chain_id": args.chain_id, "genesis_time": datetime.now(UTC).isoformat(timespec="seconds"),
           "members": [json.loads(p.read_text()) for p in args.members], "params": dict(NEW_CHAIN_PARAMS)}
    try:
        genesis = Genesis.from_json(doc)
    except GenesisError as exc:
        print(f"radchain genesis: {exc}", file=sys.stderr)
        return 1
    if len(genesis.members) < 4:
        print("radchain genesis: warning: fewer than 4 members tolerate no Byzantine member", file=sys.stderr)
    genesis.save(args.out)
    print(f"wrote {args.out} ({len(genesis.members)} members, chain {genesis.chain_id})")
    return 0
