"""`radchain secrets --out FILE`: fresh consortium secrets (the network PSK), mode 0600.

The coordinator makes them once and hands them to every member out of band; they never go on chain."""

from __future__ import annotations

import json
import os
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("secrets", help="generate the consortium's network PSK (once)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from node.privatefiles import write_secret

    write_secret(args.out, json.dumps({"psk": os.urandom(32).hex()}),
                 exclusive=True)
    print(f"wrote {args.out}; give it to every member out of band (radchain init --secrets {args.out})")
    return 0
