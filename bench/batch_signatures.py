"""Signing a member's events in batches (node.ledger.tx, node.runtime.own_txs), in process.

A member signs the events of one JSON-RPC batch under one signature: the RFC 9162 Merkle root of their
bodies' digests and the batch's size; each tx carries its audit path. On 4 members each node checks the
signatures of ¾ of all txs and signs ¼, so this is where the 100 µs per tx per node of issue 17 was spent
first. In process, for N of the load's events (bench.testnet's, encoded by the node's own intake and tx
code), the same bodies both ways, least CPU of alternated rounds:

- signing CPU per tx: node.ledger.tx.sign_bodies with batches of 1 (each tx alone: the baseline) against
  batches of B (mempool.sign_batch, default 16);
- checking CPU per tx seen for the first time (a replica's gossip admission): node.ledger.tx.decode_tx with
  its signature check, the batch cache emptied before each round (each batch's signature checked once);
- wire bytes per tx.

On the testnet the same comparison is `bench.throughput`'s A/B (RADCHAIN_BENCH_AB=mempool.sign_batch=1, the
default in `make bench`), which counts what the longer wire costs in gossip, proposals and the store.

    python -m bench.batch_signatures [--events 3000] [--batch 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from nacl.signing import SigningKey

from bench.testnet import event_batch
from node.ledger import tx as txmod
from node.ledger.intake import event_to_tx_fields
from node.ledger.pseudonym import Pseudonymizer
from node.ledger.tx import Tx, decode_tx, sign_bodies, signable_body


def bodies_of_the_load(n: int, key: SigningKey) -> list[tuple[bytes, dict]]:
    """signable_body of the load's `n` events (bench.testnet's instances.accessed events, each identifier
    as its keyed token)."""
    tokens = Pseudonymizer(bytes(32 * [5]))
    client = bytes(key.verify_key)
    out = []
    for call in event_batch("batch", 0, 1_764_000_000_000, n):
        fields = event_to_tx_fields(call["params"]["event"], tokens, chain_id="bench", member="hosp-a",
                                    client=client)
        out.append(signable_body(fields, key))
    return out


def sign(bodies: list[tuple[bytes, dict]], key: SigningKey, batch: int) -> list[Tx]:
    """As the node signs one JSON-RPC batch of 100 calls at a time, at most `batch` per signature."""
    out: list[Tx] = []
    for start in range(0, len(bodies), 100):
        out += sign_bodies(bodies[start:start + 100], key, batch)
    return out


def check(txs: list[Tx]) -> None:
    txmod._BATCHES_OK.clear()  # a replica that sees these batches for the first time
    for tx in txs:
        decode_tx(tx.raw)


def _cpu_us(fn, n: int) -> float:
    t = time.thread_time()
    fn()
    return (time.thread_time() - t) * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.batch_signatures")
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    key = SigningKey(bytes([7]) * 32)
    bodies = bodies_of_the_load(args.events, key)
    n = len(bodies)
    each, batched = sign(bodies, key, 1), sign(bodies, key, args.batch)
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # alternated; the least of the rounds is reported (this host's speed drifts)
        rows.setdefault("sign each", []).append(_cpu_us(lambda: sign(bodies, key, 1), n))
        rows.setdefault("sign batched", []).append(_cpu_us(lambda: sign(bodies, key, args.batch), n))
        rows.setdefault("check each", []).append(_cpu_us(lambda: check(each), n))
        rows.setdefault("check batched", []).append(_cpu_us(lambda: check(batched), n))
    best = {k: min(v) for k, v in rows.items()}
    wire_each = statistics.mean(len(tx.raw) for tx in each)
    wire_batched = statistics.mean(len(tx.raw) for tx in batched)
    print(f"{n} events in JSON-RPC batches of 100, at most {args.batch} per signature, least CPU of "
          f"{args.rounds} alternated rounds, per tx:")
    print(f"  signing: {best['sign each']:.1f} us each tx alone (baseline), {best['sign batched']:.1f} us "
          f"in batches: ratio {best['sign batched'] / best['sign each']:.2f}x")
    print(f"  decoding and checking a tx seen for the first time: {best['check each']:.1f} us (baseline), "
          f"{best['check batched']:.1f} us batched: ratio {best['check batched'] / best['check each']:.2f}x")
    print(f"  wire: {wire_each:.0f} bytes (baseline), {wire_batched:.0f} bytes batched: "
          f"+{wire_batched - wire_each:.0f} bytes ({wire_batched / wire_each:.2f}x)")
    saved = 0.75 * (best["check each"] - best["check batched"]) + 0.25 * (best["sign each"] - best["sign batched"])
    print(f"4 members (each checks 3/4 of the txs and signs 1/4): {saved:.0f} us of signature work saved per tx "
          f"per node; on the testnet: bench.throughput's A/B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
