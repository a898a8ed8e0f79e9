"""The member-set history as a portable, offline-checkable file: genesis + receipts of the registry txs.

`verify-receipt` checks a block's certificate against the member set valid at its height. That set is
derived from genesis plus the membership txs (node.ledger.epochs), so an auditor who holds only genesis.json and
a receipt also needs those txs. ``export_history(store, genesis)`` writes, for every applied registry tx
(member.added/removed votes, client.added/removed: everything that changes who may vote or sign), its
receipt, in chain order. ``replay_history(genesis, doc)`` checks each receipt against the member set its
own predecessors derive (the first ones against genesis) and re-applies the tx with the ledger's own rules
(node.ledger.state.LedgerState), giving the EpochHistory. Nothing in the file is trusted: a receipt that does not
verify under the set of its height is refused, so a history cannot invent a member. Leaving txs out can
only leave the verifier with an older set, under which the new epochs' certificates (signed under their
own consensus chain id) fail: never a false VALID for a later height, but possibly a false INVALID, and
``through`` says up to which height the file claims to be complete.

    {"chain_id": ..., "genesis": <genesis hash hex>, "through": height, "txs": [<receipt JSON>, ...]}
"""

from __future__ import annotations

from consensus.certificate import Certificate
from node.ledger.epochs import EpochHistory
from node.ledger.genesis import Genesis
from node.ledger.state import LedgerState
from node.ledger.store import SUFFIX, Store, member_type_prefix
from node.ledger.verifier import Receipt, ReceiptError, make_receipt, verify_receipt

__all__ = ["REGISTRY_TYPES", "export_history", "replay_history", "MAX_HISTORY_TXS"]

REGISTRY_TYPES = ("member.added", "member.removed", "client.added", "client.removed", "member.key_rotated",
                  "params.changed")
MAX_HISTORY_TXS = 100_000  # bounds what a file makes the verifier check (each costs ~3 signature checks)


def _registry_txs(store: Store, names) -> list[tuple[int, int, bytes]]:
    found: set[tuple[int, int, bytes]] = set()
    for name in names:
        for t in REGISTRY_TYPES:
            prefix = member_type_prefix(name, t)
            for key in store.db.iterator(prefix=prefix, include_value=False):
                _ts, height, index = SUFFIX.unpack(key[-SUFFIX.size:])
                found.add((height, index, b""))
    return sorted(found)


def member_names(state: LedgerState) -> set[str]:
    """Every member name the state knows: current, pending and past member sets, and the registry."""
    return {m.name for e in state.epochs.epochs for m in e.members} | set(state.members)


def export_history(store: Store, genesis: Genesis, names: set[str]) -> dict:
    """Receipts of every applied registry tx of ``store`` signed by one of ``names`` (member_names)."""
    txs = []
    for height, index, _ in _registry_txs(store, names):
        block = store.get_block(height)
        if block is None:
            continue
        receipt = make_receipt(store, block.tx_hashes[index])
        if receipt is not None:
            txs.append(receipt.to_json())
    return {"chain_id": genesis.chain_id, "genesis": genesis.hash().hex(), "through": store.height, "txs": txs}


def _receipt_from_json(doc) -> Receipt:
    try:
        return Receipt(bytes.fromhex(doc["tx"]), int(doc["index"]), tuple(bytes.fromhex(p) for p in doc["path"]),
                       bytes.fromhex(doc["proposal_header"]), bytes.fromhex(doc["certificate"]))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ReceiptError(f"malformed receipt in the history: {exc.__class__.__name__}: {exc}") from None


def replay_history(genesis: Genesis, doc) -> tuple[EpochHistory, int]:
    """(EpochHistory, through) from a history document; raises ReceiptError if any part does not verify."""
    if not isinstance(doc, dict) or not isinstance(doc.get("txs"), list):
        raise ReceiptError("history must be an object with a txs list")
    if doc.get("chain_id") != genesis.chain_id or doc.get("genesis") != genesis.hash().hex():
        raise ReceiptError("history is for another chain or genesis")
    through = doc.get("through")
    if type(through) is not int or through < 0:
        raise ReceiptError("history: through must be a height")
    if len(doc["txs"]) > MAX_HISTORY_TXS:
        raise ReceiptError(f"history: more than {MAX_HISTORY_TXS} txs")
    state, _ = LedgerState.from_genesis(genesis)
    seen: set[bytes] = set()
    last = (0, -1)
    for item in doc["txs"]:
        receipt = _receipt_from_json(item)
        tx, header = verify_receipt(receipt, state.epochs, genesis.chain_id)
        if (header.height, receipt.index) <= last:
            raise ReceiptError("history: txs out of chain order")
        if header.height > through:
            raise ReceiptError("history: a tx beyond the height it claims to cover")
        last = (header.height, receipt.index)
        if tx.hash in seen or tx.fields["type"] not in REGISTRY_TYPES:
            continue
        seen.add(tx.hash)
        f = tx.fields
        if state.authorized(f["member"], f["client"]):
            state.height = header.height
            state.apply(tx, tx.hash, [])
    return state.epochs, through


def signer_names(epochs: EpochHistory, height: int, certificate: bytes) -> list[str]:
    epoch = epochs.at(height)
    return [epoch.members[i].name for i, _ in Certificate.decode(certificate).signatures if i < epoch.n]
