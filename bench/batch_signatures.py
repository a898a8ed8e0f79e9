"""What signing a member's events in batches would save per tx: a measured projection of a design not built.

Today every tx carries its own Ed25519 signature (node.ledger.tx: wire [body, sig]), so on a 4-node testnet
each member checks ¾ of all txs (every tx it did not sign) and signs ¼. That is 35–50 µs per tx per node of
issue 17's 100 µs goal, and no maintained Python library checks Ed25519 faster or in batches. The design
measured here instead: a member signs the RFC 9162 Merkle root (node.ledger.merkle) of a batch of its own
events (with the batch's size: a path for leaf 2 of 3 also fits leaf 1 of 2, so an unsigned count would
let anyone re-encode a signed tx into a second valid form), and each tx carries [body, signature, index,
count, audit path]; a verifier hashes the body, folds the path up to the root (`root_from_path`) and checks
the signature once per batch (a cache keyed by client key, count, root and signature answers the batch's
other txs).

In process, for N events in batches of B (the load's JSON-RPC batch size), the same bodies both ways:

- signing CPU per tx: node.ledger.tx.sign_body per tx, against one tree and one signature per batch plus a
  path and the wire per tx;
- checking CPU per tx, a tx seen for the first time (a replica's gossip admission): node.ledger.tx.verify_tx,
  against unpacking the longer wire, hashing the body, folding the path and one cache lookup (the root's
  signature checked once per batch);
- wire bytes per tx.

Not measured: what the longer wire costs in gossip, proposals and LevelDB, nor what the format change would
cost elsewhere (receipts, `verify-chain`, and `event_id` idempotency, which rests on one wire form per
event). The projection printed is the signature work saved per tx per node on 4 members.

    python -m bench.batch_signatures [--events 3000] [--batch 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time

import msgpack
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from bench.testnet import event_batch
from node.ledger.intake import event_to_tx_fields
from node.ledger.merkle import inclusion_path, merkle_levels, root_from_path
from node.ledger.pseudonym import Pseudonymizer
from node.ledger.tx import encode_body, encode_tx, sign_body, verify_tx

BATCH_DOMAIN = b"radchain/tx-batch/v1\x00"  # what the batch signature would cover (this projection only)


class BatchError(ValueError):
    """A batched tx whose path or signature does not check out."""


_sha256 = hashlib.sha256


def _signed(count: int, root: bytes) -> bytes:
    return BATCH_DOMAIN + count.to_bytes(4, "big") + root


def _bodies(n: int, key: SigningKey) -> list[bytes]:
    """Bodies of the load's `n` events (bench.testnet's instances.accessed events, each identifier as its
    keyed token), encoded by the node's own intake and tx code."""
    tokens = Pseudonymizer(bytes(32 * [5]))
    client = bytes(key.verify_key)
    out = []
    for call in event_batch("batch", 0, 1_764_000_000_000, n):
        fields = event_to_tx_fields(call["params"]["event"], tokens, chain_id="bench", member="hosp-a",
                                    client=client)
        out.append(encode_body(fields))
    return out


def _sign_each(bodies: list[bytes], key: SigningKey) -> list[bytes]:
    return [encode_tx(b, sign_body(b, key)) for b in bodies]


def _sign_batches(bodies: list[bytes], key: SigningKey, batch: int) -> list[bytes]:
    wires = []
    for start in range(0, len(bodies), batch):
        part = bodies[start:start + batch]
        levels = merkle_levels([_sha256(b).digest() for b in part])
        count = len(part)
        sig = key.sign(_signed(count, levels[-1][0])).signature
        for i, body in enumerate(part):
            wires.append(msgpack.packb([body, sig, i, count, inclusion_path(levels, i)], use_bin_type=True))
    return wires


def _check_each(wires: list[bytes], client: bytes) -> None:
    for wire in wires:
        body, sig = msgpack.unpackb(wire)
        verify_tx(body, sig, client)


def _check_batched(wires: list[bytes], client: bytes) -> None:
    """Raises BatchError for any tx whose path does not lead to a root its signature covers."""
    checked: dict[tuple[bytes, int, bytes, bytes], bool] = {}
    for wire in wires:
        body, sig, index, count, path = msgpack.unpackb(wire)
        root = root_from_path(_sha256(body).digest(), index, count, path)
        if root is None:
            raise BatchError("a path that fits no tree of its count")
        ok = checked.get((client, count, root, sig))
        if ok is None:
            try:
                crypto_sign_open(sig + _signed(count, root), client)
                ok = True
            except BadSignatureError:
                ok = False
            checked[(client, count, root, sig)] = ok
        if not ok:
            raise BatchError("the batch signature does not verify")


def _cpu_us(fn, n: int) -> float:
    t = time.thread_time()
    fn()
    return (time.thread_time() - t) * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.batch_signatures")
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    key = SigningKey(bytes([7]) * 32)
    client = bytes(key.verify_key)
    bodies = _bodies(args.events, key)
    n = len(bodies)
    each, batched = _sign_each(bodies, key), _sign_batches(bodies, key, args.batch)
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # alternated; the least of the rounds is reported (this host's speed drifts)
        rows.setdefault("sign each", []).append(_cpu_us(lambda: _sign_each(bodies, key), n))
        rows.setdefault("sign batched", []).append(_cpu_us(lambda: _sign_batches(bodies, key, args.batch), n))
        rows.setdefault("check each", []).append(_cpu_us(lambda: _check_each(each, client), n))
        rows.setdefault("check batched", []).append(_cpu_us(lambda: _check_batched(batched, client), n))
    best = {k: min(v) for k, v in rows.items()}
    wire_each = statistics.mean(map(len, each))
    wire_batched = statistics.mean(map(len, batched))
    print(f"{n} events, batches of {args.batch}, least CPU of {args.rounds} alternated rounds, per tx:")
    print(f"  signing: {best['sign each']:.1f} us one signature per tx (baseline), {best['sign batched']:.1f} us "
          f"one per batch: ratio {best['sign batched'] / best['sign each']:.2f}x")
    print(f"  checking a tx seen for the first time: {best['check each']:.1f} us (baseline), "
          f"{best['check batched']:.1f} us batched: ratio {best['check batched'] / best['check each']:.2f}x")
    print(f"  wire: {wire_each:.0f} bytes (baseline), {wire_batched:.0f} bytes batched: "
          f"+{wire_batched - wire_each:.0f} bytes ({wire_batched / wire_each:.2f}x)")
    saved = 0.75 * (best["check each"] - best["check batched"]) + 0.25 * (best["sign each"] - best["sign batched"])
    print(f"projection, 4 members (each checks 3/4 of the txs and signs 1/4): {saved:.0f} us of signature work "
          f"saved per tx per node, before what the {wire_batched - wire_each:.0f} more bytes per tx cost in "
          f"gossip, proposals and the store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
