"""What the explorer's pages show, read from the node through the same paths as the RPC methods
(node.rpc.audit_trail.run_audit, node.rpc.render, node.ledger.verifier) so a page and an RPC answer never disagree.

Nothing here returns a raw patient, study or user identifier: the chain holds none (only keyed tokens,
docs/PSEUDONYMS.md), and raw identifiers typed by the viewer are tokenized here and not kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import msgpack
import trio

from consensus.certificate import Certificate
from node.ledger.tx import CONSENT_TYPES, decode_tx
from node.ledger.verifier import Receipt, ReceiptError, make_receipt, verify_receipt
from node.rpc.audit_trail import Filter, run_audit
from node.rpc.render import fields_json, stored_tx

# Fields of a tx that are keyed tokens (pseudonyms), shown with that label. The rest are in clear on the
# chain by design (member names, AE titles, codes, digests, times).
TOKEN_FIELDS = frozenset({"patient", "study", "user", "series", "instances"})
PEER_STATUS_TIMEOUT = 1.5  # s: a member that does not answer its status in this time is shown as unknown
PEER_HEIGHTS_TTL = 2.0  # s: peers' status reports are reused this long across viewers
MAX_RECEIPT_BYTES = 256 * 1024  # a receipt is a few KiB (tx <= 16 KiB, a path of <= 64 hashes)
UTILIZATION_BLOCKS = 2000  # the utilization chart covers at most the last this many blocks...
UTILIZATION_TXS = 50_000  # ...and at most this many txs (read in a worker thread, ~10 us each)
BUCKETS = 12


def fmt_time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ms: int | None) -> str:
    if not ms:
        return ""
    s = max(0, time.time() - ms / 1000)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


# ------------------------------------------------------------------------------------------ consortium

@dataclass
class MemberRow:
    index: int
    name: str
    is_self: bool
    primary: bool
    connected: bool | None  # None: this node itself
    height: int | None  # None: did not answer
    view: int | None  # this node's own; the others' as they report it (None: not reported)
    mempool: int | None
    peers: int | None
    last_block: int | None  # ms: as the member reports it, else from this node's copy of that block
    behind: bool | None


async def consortium(node, peer_status: PeerHeights) -> dict:
    """Every member with its height, view, mempool, peers and last block time (this node's own, the
    others' as each reports it over the p2p sync channel, the request BlockSync itself uses), and whether
    it is behind the highest height seen. A member may lie about itself: the page says "as reported".
    The members are the current set (node.ledger.epochs), index = replica index."""
    members = node.epoch.members
    store = node.store
    status = node.status()
    head = store.get_header(store.height) if store.height else None
    reports = {**await peer_status.get(node), node.index: node.sync.own_status()}
    connected = set(node.net.connected_peers())
    top = max((r.height for r in reports.values() if r is not None), default=0)
    primary = node.replica.primary
    rows = []
    for i, m in enumerate(members):
        r = reports.get(i)
        h = None if r is None else r.height
        last = None if r is None else r.time
        if last is None and h and h <= store.height:
            header = store.get_header(h)
            last = header.timestamp if header else None
        rows.append(MemberRow(
            index=i, name=m.name, is_self=i == node.index, primary=i == primary,
            connected=None if i == node.index else m.peer_id in connected,
            height=h, view=None if r is None else r.view, mempool=None if r is None else r.mempool,
            peers=None if r is None else r.peers, last_block=last,
            behind=None if h is None else h < top))
    return {"rows": rows, "status": status, "top": top, "chain_id": node.genesis.chain_id,
            "last_block": head.timestamp if head else None}


class PeerHeights:
    """Other members' status reports (height, view, mempool, peers, last block time), asked at most once
    per PEER_HEIGHTS_TTL whatever the number of viewers: ten open consortium pages refreshing every 5 s must
    not become ten status requests to every peer. One per explorer (so per node and per trio run)."""

    def __init__(self):
        self._lock: trio.Lock | None = None
        self._when = float("-inf")
        self._reports: dict = {}

    async def get(self, node) -> dict:
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            if trio.current_time() - self._when < PEER_HEIGHTS_TTL:
                return self._reports
            reports: dict = {}

            async def ask(i: int) -> None:
                reports[i] = None
                with trio.move_on_after(PEER_STATUS_TIMEOUT):
                    reports[i] = await node.sync.status_report(i)

            async with trio.open_nursery() as nursery:
                for i in range(len(node.sync.peer_ids)):  # the current member set, by replica index
                    if i != node.index:
                        nursery.start_soon(ask, i)
            self._reports, self._when = reports, trio.current_time()
            return reports


# ------------------------------------------------------------------------------------------ chain

def block_rows(store, top: int, count: int) -> list[dict]:
    """Blocks top, top-1, ... (count of them), newest first."""
    out = []
    start = max(1, top - count + 1)
    for block in store.blocks(start, top):
        h = block.header
        out.append({"height": block.height, "hash": h.hash().hex(), "time": h.timestamp,
                    "txs": h.tx_count, "proposer": h.proposer})
    out.reverse()
    return out


def tx_summary(store, tx_hash: bytes) -> dict | None:
    rec = store.get_tx(tx_hash)
    if rec is None:
        return None
    height, index, raw = rec
    fields, _sig = stored_tx(raw)
    return {"hash": tx_hash.hex(), "height": height, "index": index, "type": fields.get("type"),
            "member": fields.get("member"), "ts": fields.get("ts")}


def block_detail(node, height: int, start: int = 0, count: int = 100) -> dict | None:
    """A block with its txs start..start+count (a block holds up to max_block_txs, 2000 by default)."""
    store = node.store
    block = store.get_block(height)
    if block is None:
        return None
    header = block.header.to_json()
    cert = store.get_certificate(height)
    signers = _signers(node, cert, height)
    total = len(block.tx_hashes)
    start = max(0, min(start, total - 1 if total else 0))
    txs = [{**(tx_summary(store, h) or {"hash": h.hex()}), "position": start + k}
           for k, h in enumerate(block.tx_hashes[start:start + count])]
    return {"height": height, "header": header, "txs": txs, "signers": signers, "total": total,
            "first": start, "next": start + count if start + count < total else None,
            "prev": max(0, start - count) if start else None,
            "proposer": _member_name(node, block.header.proposer, height)}


def _member_name(node, index: int, height: int) -> str:
    """The name of replica ``index`` in the member set valid at ``height`` (node.ledger.epochs): indexes
    move when members join or leave, so genesis's list would name the wrong hospital after a change."""
    members = node.chain.epoch_at(height).members
    return members[index].name if 0 <= index < len(members) else f"#{index}"


def _signers(node, cert: bytes | None, height: int) -> list[str]:
    if not cert:
        return []
    try:
        return [_member_name(node, i, height) for i, _ in Certificate.decode(cert).signatures]
    except Exception:  # shown as "no signers"; verification below says why
        return []


def tx_detail(node, tx_hash: bytes) -> dict | None:
    """A committed tx: decoded fields (tokens marked as such), its block, and its receipt verified against
    the genesis member keys exactly as `radchain verify-receipt` does offline."""
    store = node.store
    rec = store.get_tx(tx_hash)
    if rec is None:
        return None
    height, index, raw = rec
    tx = decode_tx(raw, verify=False)  # stored bytes passed decode_tx when executed
    fields, sig = tx.fields, tx.sig
    batch = None
    if tx.proof:  # its place among the txs signed together, not in the block (that is `index`)
        batch = {"index": int.from_bytes(tx.proof[:2], "big"), "size": tx.batch_size, "proof": tx.proof.hex()}
    shown = fields_json(fields)
    rows = [{"name": k, "value": _short(v), "token": k in TOKEN_FIELDS, "time": _explain(k, v)}
            for k, v in sorted(shown.items())]
    receipt = make_receipt(store, tx_hash)
    result = check_receipt(node, receipt) if receipt is not None else {
        "valid": False, "reason": "no receipt: the block or its certificate is missing on this node"}
    receipt_json = None
    if receipt is not None:
        receipt_json = json.dumps({"chain_id": node.genesis.chain_id, "height": height, "hash": tx_hash.hex(),
                                   **receipt.to_json()}, indent=1)
    return {"hash": tx_hash.hex(), "height": height, "index": index, "rows": rows, "type": fields.get("type"),
            "member": fields.get("member"), "ts": fields.get("ts"), "sig": sig.hex(), "batch": batch, "check": result,
            "receipt_json": receipt_json}


OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}  # DICOM PS3.15
ACTIONS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}


def _explain(name: str, value) -> str | None:
    """A reader's gloss for coded fields (shown after the value as recorded)."""
    if name in ("ts", "expires") and isinstance(value, int):
        return fmt_time(value)
    if name == "outcome":
        return OUTCOMES.get(value)
    if name == "action":
        return ACTIONS.get(value)
    return None


def _short(v) -> str:
    if isinstance(v, list):
        return ", ".join(str(x) for x in v[:8]) + (f" (+{len(v) - 8} more)" if len(v) > 8 else "")
    return str(v)


def check_receipt(node, receipt: Receipt, claims: dict | None = None) -> dict:
    """{"valid": True, ...} or {"valid": False, "reason": ...}: never raises on hostile input."""
    genesis = node.genesis
    try:
        # against the member set valid at the receipt's height (node.ledger.epochs), as this node derived it
        tx, header = verify_receipt(receipt, node.chain.state.epochs, genesis.chain_id)
        claims = claims or {}
        if "hash" in claims and claims["hash"] != tx.hash.hex():
            raise ReceiptError(f"the receipt names tx {str(claims['hash'])[:64]}, but proves {tx.hash.hex()}")
        if "height" in claims and claims["height"] != header.height:
            raise ReceiptError(f"the receipt says height {str(claims['height'])[:20]}, "
                               f"the certificate is for {header.height}")
    except ReceiptError as exc:
        return {"valid": False, "reason": str(exc)}
    except Exception as exc:  # malformed in a way the decoders did not name; still an answer, not a 500
        return {"valid": False, "reason": f"malformed receipt ({exc.__class__.__name__})"}
    signers = _signers(node, receipt.certificate, header.height)
    return {"valid": True, "hash": tx.hash.hex(), "type": tx.fields["type"], "member": tx.fields["member"],
            "height": header.height, "index": receipt.index, "tx_count": header.tx_count,
            "signers": signers, "members": node.chain.epoch_at(header.height).n, "chain_id": genesis.chain_id}


class _Bytes:
    """What node.ledger.verifier.load_receipt reads a receipt from (it only calls read_bytes)."""

    def __init__(self, data: bytes):
        self._data = data

    def read_bytes(self) -> bytes:
        return self._data


def check_receipt_text(node, data: bytes) -> dict:
    """A pasted or uploaded receipt (JSON as `radchain query --save-receipt` writes it, a whole get_tx
    answer, or the msgpack form), parsed by the same code as `radchain verify-receipt`."""
    from node.ledger.verifier import load_receipt

    if not data.strip():
        return {"valid": False, "reason": "nothing was pasted or uploaded"}
    if len(data) > MAX_RECEIPT_BYTES:
        return {"valid": False, "reason": f"over {MAX_RECEIPT_BYTES // 1024} KiB: not a receipt"}
    try:
        receipt, claims = load_receipt(_Bytes(data))
    except ReceiptError as exc:
        return {"valid": False, "reason": str(exc)}
    except (RecursionError, ValueError, msgpack.ExtraData) as exc:
        return {"valid": False, "reason": f"not a receipt: {exc.__class__.__name__}"}
    return check_receipt(node, receipt, claims)


# ------------------------------------------------------------------------------------------ audit

def audit_page(node, fields: dict, cursor: str | None, limit: int = 100) -> dict:
    """One page of the audit trail for token filters, oldest first, via the audit_trail method's code."""
    answer = run_audit(node.store, Filter(fields, None, None), cursor, limit)
    entries = []
    for e in answer["entries"]:
        entries.append({**e, "time": fmt_time(e.get("ts"))})
    return {"entries": entries, "next_cursor": answer["next_cursor"],
            "members": sorted({e.get("member") for e in entries if e.get("member")})}


def consents(node, limit: int = 100) -> list[dict]:
    out = []
    for tx_type in CONSENT_TYPES:
        out.extend(audit_page(node, {"type": tx_type}, None, limit)["entries"])
    out.sort(key=lambda e: (e.get("ts", 0), e["height"], e["index"]))
    return out


# ------------------------------------------------------------------------------------------ utilization

def utilization(node, max_blocks: int = UTILIZATION_BLOCKS, max_txs: int = UTILIZATION_TXS) -> dict:
    """Per-hospital event counts in BUCKETS equal time slices over the last max_blocks blocks, at most
    max_txs txs (by the events' own time), from this node's store. Blocking: call it in a worker thread
    (LevelDB reads are thread-safe) so consensus does not wait on a big chart."""
    store = node.store
    top = store.height
    events: list[tuple[str, int]] = []
    start = top + 1
    # Newest block first, so the cap keeps the most recent events.
    for height in range(top, max(0, top - max_blocks), -1):
        block = store.get_block(height)
        if block is None or len(events) + len(block.tx_hashes) > max_txs:
            break
        start = height
        for h in block.tx_hashes:
            rec = store.get_tx(h)
            if rec is None:
                continue
            fields, _ = stored_tx(rec[2])
            events.append((str(fields.get("member", "?")), int(fields.get("ts", block.header.timestamp))))
    start = min(start, top)
    members = [m.name for m in node.epoch.members]  # the current set; others seen are appended
    for name in sorted({m for m, _ in events} - set(members)):
        members.append(name)
    if not events:
        return {"members": members, "series": {}, "edges": [], "total": 0, "from_height": start, "to_height": top}
    lo = min(t for _, t in events)
    hi = max(t for _, t in events) + 1
    width = max(1, -(-(hi - lo) // BUCKETS))
    series = {m: [0] * BUCKETS for m in members}
    for m, t in events:
        series[m][min(BUCKETS - 1, (t - lo) // width)] += 1
    edges = [lo + i * width for i in range(BUCKETS + 1)]
    totals = {m: sum(v) for m, v in series.items()}
    return {"members": members, "series": series, "edges": edges, "total": len(events), "totals": totals,
            "from_height": start, "to_height": top}
