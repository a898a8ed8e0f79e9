"""Offline verification: a whole stored chain, one block, or one tx receipt. No network, no node running.

``verify_chain(store, genesis)`` replays the chain from genesis and, for every height, recomputes and
checks: the block record decodes canonically; height, chain id and prev_hash link to the previous header;
every tx's bytes hash to the hash listed in the block and decode canonically with a valid signature; the
tx Merkle root; the proposal digest from the header; the commit certificate (a quorum of the member set valid at that
height, derived from genesis plus the membership txs replayed so far (node.ledger.epochs), signed that digest at
that height, in any view: the view is not part of the block); the per-tx statuses and the state root, by
re-executing with the same code as the node (node.ledger.chain.execute_txs); the tx records and index entries the
block should have written. Then the head record and the stored state. The first failure raises
``VerifyError`` with its height.

A receipt proves one tx without the chain: the tx bytes, its Merkle audit path, the proposal header it was
certified under and the commit certificate. ``verify_receipt`` checks it against the members' public keys
(from genesis). ``radchain verify-receipt`` (later) builds on ``Receipt`` and ``verify_receipt``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from consensus.certificate import Certificate, CertificateError, verify_certificate
from node.ledger.block import Block, BlockError, ProposalHeader
from node.ledger.chain import execute_txs
from node.ledger.epochs import EpochHistory
from node.ledger.genesis import Genesis
from node.ledger.merkle import inclusion_path, merkle_root, verify_inclusion
from node.ledger.state import LedgerState, next_state_root
from node.ledger.store import (
    BLOCK,
    BLOCK_END,
    CERT,
    GENESIS_KEY,
    HEAD_KEY,
    INDEX,
    INDEXES,
    LOC,
    STATE0_KEY,
    TX,
    Store,
    block_key,
    hash_key,
    height_bytes,
    tx_key,
)
from node.ledger.tx import Tx, TxError, decode_tx

__all__ = ["VerifyError", "verify_chain", "Receipt", "make_receipt", "verify_receipt", "ReceiptError"]

_U64 = struct.Struct(">Q")
_sha256 = hashlib.sha256


class VerifyError(Exception):
    """The stored chain is not valid at ``height`` (0: genesis record / initial state)."""

    def __init__(self, height: int, reason: str):
        super().__init__(f"height {height}: {reason}")
        self.height = height
        self.reason = reason


def verify_chain(store: Store, genesis: Genesis, *, signatures: bool = True, indexes: bool = True,
                 progress: Callable[[int], None] | None = None) -> int:
    """Verify every block of ``store`` against ``genesis``; return the number of blocks verified."""
    db = store.db
    members = genesis.member_pubkeys
    chain_id = genesis.chain_id
    state, genesis_writes = LedgerState.from_genesis(genesis)
    if db.get(GENESIS_KEY) != genesis.hash():
        raise VerifyError(0, "store was not created for this genesis.json (genesis hash differs)")
    if db.get(STATE0_KEY) != state.root:
        raise VerifyError(0, "initial state root differs from the one genesis implies")
    final_state: dict[bytes, tuple[int, bytes | None]] = {k: (0, v) for k, v in genesis_writes}
    head = db.get(HEAD_KEY)
    head_height = 0 if head is None else _U64.unpack_from(head)[0]
    prev = genesis.hash()
    root = state.root
    for height in range(1, head_height + 1):
        root, prev = _verify_block(db, height, chain_id, members, state, prev, root, signatures, indexes,
                                   final_state, store.has_patient_stored_index)
        if progress is not None:
            progress(height)
    # Nothing beyond the head: a block written after the head record would mean a torn write.
    for _key in db.iterator(start=block_key(head_height + 1), stop=BLOCK_END, include_value=False):
        raise VerifyError(head_height + 1, "block record beyond the head")
    if head_height and head != height_bytes(head_height) + prev + root:
        raise VerifyError(head_height, "head record does not match the last block (hash or state root)")
    # The stored state must be exactly what replaying the writes gives.
    expected = {k: v for k, (_, v) in final_state.items() if v is not None}
    stored = dict(store.state_items())
    for key in sorted(expected.keys() | stored.keys()):
        if expected.get(key) != stored.get(key):
            h = final_state.get(key, (head_height, None))[0]
            raise VerifyError(h, f"stored state key {key[:24]!r}... differs from the replayed state")
    return head_height


def _verify_block(db, height: int, chain_id: str, members, state: LedgerState, prev: bytes,
                  root: bytes, signatures: bool, indexes: bool, final_state: dict,
                  patient_stored: bool = True) -> tuple[bytes, bytes]:
    hb = height_bytes(height)
    record = db.get(BLOCK + hb)
    if record is None:
        raise VerifyError(height, "block record missing")
    try:
        block = Block.decode(record)
    except BlockError as exc:
        raise VerifyError(height, str(exc)) from None
    hdr = block.header
    if hdr.height != height:
        raise VerifyError(height, f"block record says height {hdr.height}")
    if hdr.chain_id != chain_id:
        raise VerifyError(height, f"chain id {hdr.chain_id!r}")
    if hdr.prev_hash != prev:
        raise VerifyError(height, "prev_hash does not match the previous block's hash")
    block_hash = hdr.hash()
    if db.get(hash_key(block_hash)) != hb:
        raise VerifyError(height, "block-hash index does not point at this height")

    txs: list[Tx] = []
    location: dict[bytes, tuple[int, int]] = {}
    for i, th in enumerate(block.tx_hashes):
        rec = db.get(tx_key(th))
        if rec is None or len(rec) < LOC.size:
            raise VerifyError(height, f"tx {i} ({th.hex()[:16]}) missing from the tx table")
        h, idx, _status = LOC.unpack_from(rec)
        raw = rec[LOC.size:]
        if _sha256(raw).digest() != th:
            raise VerifyError(h if h < height else height, f"tx {th.hex()[:16]}: stored bytes do not hash to it")
        if (h, idx) > (height, i):
            raise VerifyError(height, f"tx {i}: tx record points at a later position {h}/{idx}")
        if h == height and th not in location and idx != i:
            raise VerifyError(height, f"tx {i}: tx record points at index {idx}")
        location.setdefault(th, (h, idx))
        try:
            txs.append(decode_tx(raw, verify=signatures, hash=th))
        except TxError as exc:
            raise VerifyError(h, f"tx {i}: {exc}") from None

    if merkle_root(list(block.tx_hashes)) != hdr.tx_root:
        raise VerifyError(height, "tx_root does not match the block's txs")
    digest = hdr.proposal_header().digest()
    if digest != hdr.proposal_digest:
        raise VerifyError(height, "proposal_digest does not match the header fields")
    cert_bytes = db.get(CERT + hb)
    if cert_bytes is None:
        raise VerifyError(height, "commit certificate missing")
    try:
        cert = Certificate.decode(cert_bytes)
        # the member set of this height, as replaying the chain so far derives it (node.ledger.epochs)
        epoch = state.epochs.at(height)
        verify_certificate(cert, epoch.pubkeys, epoch.chain_id, epoch.local(height), digest)
    except CertificateError as exc:
        raise VerifyError(height, f"certificate: {exc}") from None

    puts: list[tuple[bytes, bytes]] = []
    state.block_time = hdr.timestamp  # as node.ledger.chain.execute: rules judge expiry by the agreed block time
    statuses, writes, index_keys = execute_txs(state, height, txs, lambda th: location[th][0] == height,
                                               lambda k, v: puts.append((k, v)))
    puts.extend((key, b"") for key in index_keys)
    if statuses != block.statuses:
        bad = next(i for i in range(len(statuses)) if statuses[i] != block.statuses[i])
        raise VerifyError(height, f"tx {bad}: stored status {block.statuses[bad]}, re-execution gives {statuses[bad]}")
    new_root = next_state_root(root, height, writes)
    if new_root != hdr.state_root:
        raise VerifyError(height, "state_root does not match re-execution")
    state.root = new_root
    for key, value in writes:
        final_state[key] = (height, value)
    if indexes:
        skip = None if patient_stored else INDEX + INDEXES["patient_stored"]
        for key, value in puts:
            if skip is not None and key.startswith(skip):
                continue  # a store older than the patient_stored index (node.ledger.store)
            if db.get(key) != value:
                what = "tx record" if key[:1] == TX else "index entry"
                raise VerifyError(height, f"{what} {key.hex()[:40]} missing or altered")
    return new_root, block_hash


# ---------------------------------------------------------------------------------------------- receipts

class ReceiptError(ValueError):
    """A receipt does not prove its tx was committed on this chain."""


@dataclass(frozen=True)
class Receipt:
    """Everything needed to check, offline, that a tx was committed: tx, audit path, header, certificate."""

    tx: bytes
    index: int
    path: tuple[bytes, ...]
    proposal_header: bytes
    certificate: bytes

    def encode(self) -> bytes:
        return msgpack.packb({"tx": self.tx, "index": self.index, "path": list(self.path),
                              "header": self.proposal_header, "cert": self.certificate}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        # Types checked, never converted: bytes(2**32) would allocate 4 GiB (a receipt can be uploaded to the
        # explorer by anyone holding a read token).
        try:
            m = msgpack.unpackb(data, raw=False, max_array_len=64, max_map_len=5, max_bin_len=len(data),
                                max_str_len=64)
        except Exception as exc:
            raise ReceiptError(f"undecodable receipt: {exc.__class__.__name__}") from None
        if type(m) is not dict or set(m) != {"tx", "index", "path", "header", "cert"}:
            raise ReceiptError("undecodable receipt: a map of tx, index, path, header, cert")
        tx, index, path, header, cert = m["tx"], m["index"], m["path"], m["header"], m["cert"]
        if not (type(tx) is bytes and type(header) is bytes and type(cert) is bytes):
            raise ReceiptError("undecodable receipt: tx, header and cert must be bin")
        if type(index) is not int or not 0 <= index < 2**32:
            raise ReceiptError("undecodable receipt: index must be an integer in [0, 2**32)")
        if type(path) is not list or any(type(p) is not bytes or len(p) != 32 for p in path):
            raise ReceiptError("undecodable receipt: path must be a list of 32-byte hashes")
        return cls(tx, index, tuple(path), header, cert)

    def to_json(self) -> dict:
        return {"tx": self.tx.hex(), "index": self.index, "path": [p.hex() for p in self.path],
                "proposal_header": self.proposal_header.hex(), "certificate": self.certificate.hex()}


def make_receipt(store: Store, tx_hash: bytes) -> Receipt | None:
    rec = store.get_tx(tx_hash)
    if rec is None:
        return None
    height, index, raw = rec
    block = store.get_block(height)
    cert = store.get_certificate(height)
    if block is None or cert is None:
        return None
    return Receipt(raw, index, tuple(inclusion_path(list(block.tx_hashes), index)),
                   block.header.proposal_header().encode(), cert)


def verify_receipt(receipt: Receipt, members, chain_id: str) -> tuple[Tx, ProposalHeader]:
    """Check a receipt against the consortium's member keys; return (the tx, the proposal header).

    ``members``: the genesis member keys (valid for epoch 0 only), or an EpochHistory (node.ledger.epochs;
    node.ledger.member_history derives one offline), whose member set valid at the receipt's height is used."""
    try:
        tx = decode_tx(receipt.tx)
    except TxError as exc:
        raise ReceiptError(f"tx: {exc}") from None
    try:
        header = ProposalHeader.decode(receipt.proposal_header)
    except BlockError as exc:
        raise ReceiptError(str(exc)) from None
    if header.chain_id != chain_id or tx.fields["chain"] != chain_id:
        raise ReceiptError(f"receipt is for chain {header.chain_id!r}, not {chain_id!r}")
    if not verify_inclusion(tx.hash, receipt.index, header.tx_count, list(receipt.path), header.tx_root):
        raise ReceiptError("Merkle path does not lead from the tx to the header's tx_root")
    try:
        cert = Certificate.decode(receipt.certificate)
        if isinstance(members, EpochHistory):
            epoch = members.at(header.height)
            verify_certificate(cert, epoch.pubkeys, epoch.chain_id, epoch.local(header.height), header.digest())
        else:
            verify_certificate(cert, members, chain_id, header.height, header.digest())
    except CertificateError as exc:
        raise ReceiptError(f"certificate: {exc}") from None
    return tx, header


def load_receipt(path: Path):
    """(Receipt, claims) from a JSON receipt; claims are what the file says about itself (hash, height)."""
    data = path.read_bytes()
    try:
        doc = json.loads(data)
    except ValueError:
        return Receipt.decode(data), {}  # binary (msgpack) receipt, as Receipt.encode writes it
    if not isinstance(doc, dict):
        raise ReceiptError("receipt JSON must be an object")
    claims = {k: doc[k] for k in ("hash", "height", "chain_id") if k in doc}
    if isinstance(doc.get("receipt"), dict):  # a whole get_tx answer
        doc = doc["receipt"]
        claims.update({k: doc[k] for k in ("height", "chain_id") if k in doc})
    try:
        receipt = Receipt(bytes.fromhex(doc["tx"]), int(doc["index"]), tuple(bytes.fromhex(p) for p in doc["path"]),
                          bytes.fromhex(doc["proposal_header"]), bytes.fromhex(doc["certificate"]))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: "index": Infinity
        raise ReceiptError(f"malformed receipt: {exc.__class__.__name__}: {exc}") from None
    return receipt, claims
