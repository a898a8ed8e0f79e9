"""`radchain query`: read a node's status, a transaction or a block."""

from __future__ import annotations

import json
import sys

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("query", help="show a node's status, a tx (--tx HASH) or a block (--block H)")
    add_target_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--tx", help="transaction hash (hex)")
    what.add_argument("--block", type=int, help="block height")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError

    with client_from_args(args) as rc:
        try:
            if args.tx:
                result = rc.get_tx(args.tx)
            elif args.block is not None:
                result = rc.get_block(args.block)
            else:
                result = rc.status()
        except RpcCallError as exc:
            print(f"radchain query: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0
