"""`radchain verify-receipt FILE --genesis G`: check offline that a tx was committed, with only the members'
public keys: the tx's signature, its Merkle path to the block's tx root, and 2f+1 commit signatures over
the proposal digest of that height."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("verify-receipt", help="verify a tx receipt offline against genesis member keys",
                              description="FILE is a receipt as written by `radchain query --tx H --save-receipt`, "
                                          "the `receipt` object of a get_tx answer, or the whole answer. Exit 0 if "
                                          "valid, 1 if not (the reason is printed), 2 if FILE or G is unreadable.")
    p.add_argument("file", type=Path, help="receipt (JSON)")
    p.add_argument("--genesis", required=True, type=Path, help="the consortium's genesis.json")
    p.add_argument("--history", type=Path, default=None,
                   help="the member history (JSON, as the member_history RPC or `radchain member history` "
                        "writes it): needed for a receipt of a height after the member set first changed")
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
    epochs, through = None, None
    if args.history is not None:
        from node.ledger.member_history import replay_history

        try:
            doc = json.loads(args.history.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"verify-receipt: {args.history}: {exc}", file=sys.stderr)
            return 2
        try:
            epochs, through = replay_history(genesis, doc)
        except ReceiptError as exc:
            print(f"verify-receipt: INVALID history {args.history}: {exc}")
            return 1
    try:
        if epochs is not None and through is not None and not epochs.known_through(through) >= \
                _height_of(receipt):
            raise ReceiptError(f"the history covers heights up to {epochs.known_through(through)}; "
                               f"get a newer one for this receipt")
        tx, header = verify_receipt(receipt, epochs if epochs is not None else genesis.member_pubkeys,
                                    genesis.chain_id)
        if "hash" in claims and claims["hash"] != tx.hash.hex():
            raise ReceiptError(f"the file names tx {claims['hash']}, the receipt proves {tx.hash.hex()}")
        if "height" in claims and claims["height"] != header.height:
            raise ReceiptError(f"the file says height {claims['height']}, the certificate is for {header.height}")
    except ReceiptError as exc:
        print(f"verify-receipt: INVALID: {exc}")
        return 1
    if epochs is None:
        members = [m.name for m in genesis.members]
    else:
        members = list(epochs.at(header.height).names)
    signers = [members[i] for i, _ in Certificate.decode(receipt.certificate).signatures]
    print(f"verify-receipt: VALID: tx {tx.hash.hex()} ({tx.fields['type']} by {tx.fields['member']}) committed at "
          f"height {header.height} of {genesis.chain_id}, position {receipt.index} of {header.tx_count}; "
          f"commit signed by {len(signers)} of {len(members)} members ({', '.join(signers)})")
    return 0


def _height_of(receipt) -> int:
    from node.ledger.block import BlockError, ProposalHeader
    from node.ledger.verifier import ReceiptError

    try:
        return ProposalHeader.decode(receipt.proposal_header).height
    except BlockError as exc:
        raise ReceiptError(str(exc)) from None
