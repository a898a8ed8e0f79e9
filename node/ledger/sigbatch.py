"""Ed25519 checks of many txs in one call, meant for a worker thread (``trio.to_thread.run_sync``).

libsodium's ``crypto_sign_open`` runs through cffi, which releases the GIL for the call, so the ~55 us of
each check overlap the event loop's Python work on a machine with a spare core; on one core the cost is
the same as checking inline. Only the signature is checked here: decoding (canonical form, schema) happened
before, authorisation happens after, on the event loop, against the ledger state of that moment.

The result of a check is tied to the exact signed bytes: ``Tx.hash`` is SHA-256 of the tx's wire bytes,
which contain body and signature, so a cache keyed by it (node.ledger.chain) can never vouch for another
body or another signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.ledger.tx import Tx, TxError, verify_tx

__all__ = ["verify_txs"]


def verify_txs(txs: Sequence[Tx], verified: Callable[[bytes], object] | None = None,
               remember: Callable[[Tx], None] | None = None) -> list[bool]:
    """Whether each tx's signature verifies under its ``client`` key; never raises for a bad tx.

    ``verified(tx hash)`` (node.ledger.chain.Chain.verified), when given, is asked before each check: a tx
    the event loop checked meanwhile (a proposal that named it while this batch waited, node.ledger.chain)
    is not checked again. It is a read of a dict the event loop writes, atomic under the GIL. ``remember``
    (Chain.remember_verified) is told of each tx that verifies as soon as it has, so a proposal naming it
    that the event loop validates before it takes this batch's results does not check it again."""
    ok = []
    append = ok.append
    for tx in txs:
        if verified is not None and verified(tx.hash) is not None:
            append(True)
            continue
        try:
            verify_tx(tx.body, tx.sig, tx.fields["client"], tx.proof)
        except TxError:
            append(False)
        else:
            append(True)
            if remember is not None:
                remember(tx)
    return ok
