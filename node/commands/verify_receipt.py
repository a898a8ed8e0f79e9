"""`radchain verify-receipt FILE --genesis G`: check offline that a tx was committed, with only the members'
public keys: the tx's signature, its Merkle path to the block's tx root, and 2f+1 commit signatures over
the proposal digest of that height."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("verify-receipt", help="verify a tx receipt offline against genesis member keys",
                              description="FILE is a receipt as written by `radchain query --tx H --save-receipt`, "
                                          "the `receipt` object of a get_tx answer, or the whole answer. Exit 0 if "
                                          "valid, 1 if not (the reason is printed), 2 if FILE or G is unreadable.")
    p.add_argument("file", type=Path, help="receipt (JSON)")
    p.add_argument("--genesis", required=True, type=Path, help="the consortium's genesis.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from consensus.certificate import Certificate
    from node.ledger.genesis import Genesis, GenesisError
    from node.ledger.verifier import ReceiptError, load_receipt, verify_receipt

    try:
        genesis = Genesis.load(args.genesis)
    except (GenesisError, OSError) as exc:
        print(f"verify-receipt: {exc}", file=sys.stderr)
        return 2
    try:
        receipt, claims = load_receipt(args.file)
    except OSError as exc:
        print(f"verify-receipt: {exc}", file=sys.stderr)
        return 2
    except ReceiptError as exc:
        print(f"verify-receipt: INVALID: {exc}")
        return 1
    try:
        tx, header = verify_receipt(receipt, genesis.member_pubkeys, genesis.chain_id)
        if "hash" in claims and claims["hash"] != tx.hash.hex():
            raise ReceiptError(f"the file names tx {claims['hash']}, the receipt proves {tx.hash.hex()}")
        if "height" in claims and claims["height"] != header.height:
            raise ReceiptError(f"the file says height {claims['height']}, the certificate is for {header.height}")
    except ReceiptError as exc:
        print(f"verify-receipt: INVALID: {exc}")
        return 1
    signers = [genesis.members[i].name for i, _ in Certificate.decode(receipt.certificate).signatures]
    print(f"verify-receipt: VALID: tx {tx.hash.hex()} ({tx.fields['type']} by {tx.fields['member']}) committed at "
          f"height {header.height} of {genesis.chain_id}, position {receipt.index} of {header.tx_count}; "
          f"commit signed by {len(signers)} of {len(genesis.members)} members ({', '.join(signers)})")
    return 0
