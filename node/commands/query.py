"""`radchain query`: a node's status, a tx (with its receipt), blocks, validators, peers or the mempool."""

from __future__ import annotations

import json
import sys

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("query", help="show a node's status, a tx (--tx HASH), blocks, validators, ...")
    add_target_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--tx", help="transaction hash (hex)")
    what.add_argument("--block", type=int, help="block height")
    what.add_argument("--blocks", metavar="FROM:TO", help="a range of blocks, e.g. 1:20")
    what.add_argument("--validators", action="store_true", help="consensus members and the primary")
    what.add_argument("--peers", action="store_true", help="the other members and connectivity")
    what.add_argument("--mempool", action="store_true", help="pending txs")
    p.add_argument("--save-receipt", metavar="FILE",
                   help="with --tx: write the receipt to FILE (check it with `radchain verify-receipt FILE`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from node.client import RpcCallError

    with client_from_args(args) as rc:
        try:
            if args.tx:
                result = rc.get_tx(args.tx)
                if args.save_receipt:
                    if "receipt" not in result:
                        print(f"radchain query: tx is {result['status']}, no receipt yet", file=sys.stderr)
                        return 1
                    with open(args.save_receipt, "w") as fh:
                        json.dump(result["receipt"], fh, indent=2)
            elif args.block is not None:
                result = rc.get_block(args.block)
            elif args.blocks:
                start, _, end = args.blocks.partition(":")
                result = list(rc.blocks(int(start), int(end) if end else None))
            elif args.validators:
                result = rc.validators()
            elif args.peers:
                result = rc.peers()
            elif args.mempool:
                result = rc.mempool()
            else:
                result = rc.status()
        except RpcCallError as exc:
            print(f"radchain query: {exc}", file=sys.stderr)
            return 1
        except ValueError:
            print("radchain query: --blocks takes FROM:TO heights, e.g. 1:20", file=sys.stderr)
            return 2
    print(json.dumps(result, indent=2))
    return 0
