"""Pseudonyms on a real 4-node testnet (separate processes): `python -m bench.pseudonyms`, part of `make bench`.

  1. Tokenization latency, client side: `submit_event` (mode sync: tokenized, signed, durably admitted) with
     two fresh consortium identifiers (patient, study: OPRF cold) against the same call with cached ones
     (the baseline: the node's encrypted cache answers, as the old HMAC path did without any network).
  2. Committed tx/s of submit_event: fresh identifiers in every event against cached ones, same clients,
     same run; points evaluated per second per member from the members' own counters.
  3. The attack of issue 13: an attacker holding hosp-d's entire home (its key share, local key, cache,
     operator token) and its open RPC guesses 7-digit Patient IDs through audit_trail as fast as it can at
     the default rate limit. Reported: guesses/s sustained after the burst, the time to search 10^7 IDs,
     and how long until the other members' oprf.counts txs show the guesses on chain (default interval).

hosp-a and hosp-b (the load generators) have a high per-member limit ([oprf] limits); hosp-d, the attacker,
has the default `rate`/`burst`. Environment: RADCHAIN_BENCH_SECONDS (load step, default 8),
RADCHAIN_BENCH_ATTACK_SECONDS (default 120: the burst is spent in the first minute).
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from node.ledger.intake import EXAMPLE_EVENT
from node.runtime.settings import OprfConfig
from node.testnet import LocalTestnet

CLIENTS = 4
BATCH = 50
_seq = itertools.count()


def _event(fresh: bool, tag: str) -> dict:
    k = next(_seq)
    pid, study = (f"{2_000_000 + k:07d}", f"1.2.826.0.42.{k}") if fresh else (f"{1_000_000 + k % 20:07d}",
                                                                                 f"1.2.826.0.41.{k % 20}")
    return {**EXAMPLE_EVENT, "patient_id": pid, "issuer": "REGION-MPI", "study_uid": study,
            "event_id": f"{tag}-{k}", "time": int(time.time() * 1000)}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(net: LocalTestnet, samples: int = 40) -> dict:
    info = net.nodes[0]
    http = httpx.Client(headers={"Authorization": f"Bearer {info.token}"}, timeout=60)
    out: dict[str, list[float]] = {"cold": [], "cached": []}
    for fresh in (False, True):  # warm the cache for the cached set
        http.post(info.rpc, json={"jsonrpc": "2.0", "id": 0, "method": "submit_event",
                                  "params": {"event": _event(fresh, "warm")}})
    for _ in range(samples):
        for name, fresh in (("cold", True), ("cached", False)):  # interleaved: background load hits both
            t0 = time.perf_counter()
            reply = http.post(info.rpc, json={"jsonrpc": "2.0", "id": 1, "method": "submit_event",
                                              "params": {"event": _event(fresh, "lat"), "mode": "sync"}}).json()
            assert "result" in reply, reply
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


def load_step(net: LocalTestnet, fresh: bool, seconds: float) -> dict:
    """CLIENTS threads post BATCH submit_event calls to hosp-a and hosp-b; commits observed on hosp-c."""
    sent: dict[str, float] = {}
    errors = [0]
    lock = threading.Lock()
    stop = time.time() + seconds
    answered0 = {m: _answered(net, m) for m in (2, 3)}

    def client(i: int) -> None:
        info = net.nodes[i % 2]
        http = httpx.Client(headers={"Authorization": f"Bearer {info.token}"}, timeout=60)
        while time.time() < stop:
            calls = [{"jsonrpc": "2.0", "id": j, "method": "submit_event",
                      "params": {"event": _event(fresh, f"load{i}"), "mode": "sync"}} for j in range(BATCH)]
            t = time.time()
            try:
                replies = http.post(info.rpc, json=calls).json()
            except httpx.HTTPError:
                errors[0] += BATCH
                continue
            with lock:
                for r in replies if isinstance(replies, list) else [replies]:
                    if "result" in r:
                        sent[r["result"]["tx"]] = t
                    else:
                        errors[0] += 1

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for th in threads:
        th.start()
    seen: dict[str, float] = {}
    height = net.height(2)
    while time.time() < t0 + seconds + 60:
        page = net.rpc(2, "blocks", {"from": height + 1})
        now = time.time()
        for block in page["blocks"]:
            for tx in block["txs"]:
                seen[tx] = now
            height = block["height"]
        if not any(th.is_alive() for th in threads) and all(k in seen for k in list(sent)):
            break
        time.sleep(0.05)
    for th in threads:
        th.join()
    committed = [seen[k] for k in sent if k in seen]
    elapsed = max(committed) - min(sent.values()) if committed else float("nan")
    evals = {net.nodes[m].name: (_answered(net, m) - answered0[m]) / elapsed for m in (2, 3)}
    return {"committed": len(committed), "errors": errors[0], "tx_per_s": len(committed) / elapsed,
            "evals_per_s": evals}


def _answered(net: LocalTestnet, i: int) -> int:
    return sum(net.rpc(i, "pseudonym_stats")["local"]["answered"].values())


def attack(net: LocalTestnet, seconds: float, threads: int = 16) -> dict:
    """hosp-d's operator guesses Patient IDs: `threads` connections calling audit_trail with a fresh guess
    each (one OPRF point per guess per epoch), as fast as the node answers."""
    info = net.nodes[3]
    guesses = itertools.count(3_000_000)
    lock = threading.Lock()
    answered: list[tuple[float, int]] = []
    counts = {"ok": 0, "refused": 0, "other": 0}
    t0 = time.time()
    stop = t0 + seconds

    def guesser() -> None:
        http = httpx.Client(headers={"Authorization": f"Bearer {info.token}"}, timeout=60)
        while time.time() < stop:
            with lock:
                g = next(guesses)
            reply = http.post(info.rpc, json={"jsonrpc": "2.0", "id": 1, "method": "audit_trail", "params": {
                "patient_id": f"{g:07d}", "issuer": "REGION-MPI", "limit": 1}}).json()
            with lock:
                if "result" in reply:
                    counts["ok"] += 1
                    answered.append((time.time() - t0, counts["ok"]))
                elif reply.get("error", {}).get("code") == -32005:
                    counts["refused"] += 1
                else:
                    counts["other"] += 1
            if "result" not in reply:
                time.sleep(reply.get("error", {}).get("data", {}).get("retry_after", 0.1))

    workers = [threading.Thread(target=guesser) for _ in range(threads)]
    for w in workers:
        w.start()
    seen_on_chain = None
    while seen_on_chain is None and time.time() < t0 + seconds + 90:
        rows = net.rpc(0, "pseudonym_stats")["recorded"]
        if any(r["requester"] == info.name and r["answered"] > 0 for r in rows):
            seen_on_chain = time.time() - t0
        time.sleep(0.5)
    for w in workers:
        w.join()
    # sustained rate: the last third of the run, once the burst is spent
    half = [(t, n) for t, n in answered if t >= seconds * 2 / 3]
    sustained = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) if len(half) > 1 else float("nan")
    return {"guesses": counts["ok"], "refused": counts["refused"], "other": counts["other"],
            "sustained_per_s": sustained,
            "burst_s": next((t for t, n in answered if n >= OprfConfig().burst), float("nan")),
            "on_chain_s": seen_on_chain}


def main() -> None:
    seconds = float(os.environ.get("RADCHAIN_BENCH_SECONDS", "8"))
    attack_s = float(os.environ.get("RADCHAIN_BENCH_ATTACK_SECONDS", "120"))
    default = OprfConfig()
    with tempfile.TemporaryDirectory() as tmp:
        net = LocalTestnet(Path(tmp), 4, config_extra={"oprf": {
            "limits": {"hosp-a": [1e6, 1e6], "hosp-b": [1e6, 1e6]}}})
        net.start()
        try:
            net.wait_ready(timeout=120)
            lat = latency(net)
            print(f"tokenization on a 4-node testnet (t=3), submit_event sync on hosp-a, {len(lat['cold'])} samples:")
            for name, label in (("cached", "cached ids (baseline)"), ("cold", "2 fresh ids (OPRF)")):
                xs = lat[name]
                print(f"  {label:24}: p50 {_pct(xs, .5):7.1f} ms  p99 {_pct(xs, .99):7.1f} ms")
            print(f"  ratio cold/cached (p50): {statistics.median(lat['cold']) / statistics.median(lat['cached']):.1f}x",
                  flush=True)
            steps = {name: load_step(net, fresh, seconds) for name, fresh in (("cached", False), ("fresh", True))}
            print(f"submit_event load: {CLIENTS} clients x batches of {BATCH} to hosp-a/hosp-b, {seconds:g} s per step")
            for name, r in steps.items():
                evals = ", ".join(f"{m} {v:.0f}" for m, v in r["evals_per_s"].items())
                print(f"  {name:7}: {r['tx_per_s']:7.1f} committed tx/s ({r['committed']} txs, {r['errors']} errors); "
                      f"points evaluated/s: {evals}")
            print(f"  ratio fresh/cached tx/s: {steps['fresh']['tx_per_s'] / steps['cached']['tx_per_s']:.2f}",
                  flush=True)
            a = attack(net, attack_s)
            rate = a["sustained_per_s"]
            print(f"attack with hosp-d's home and RPC (default rate {default.rate:g}/s, burst {default.burst:g}, "
                  f"counts every {default.stats_interval_s:g} s), {attack_s:g} s:")
            print(f"  {a['guesses']} guesses answered, {a['refused']} refused (rate limit), {a['other']} other errors; "
                  f"burst spent after {a['burst_s']:.1f} s; "
                  f"sustained {rate:.1f} guesses/s")
            print(f"  one 7-digit Patient ID: expected {5e6 / rate / 86400:.1f} days, worst {1e7 / rate / 86400:.1f} "
                  f"days (was 24.8 s for the whole space offline with the shared key)")
            shown = a["on_chain_s"]
            print(f"  on chain (hosp-a's pseudonym_stats shows hosp-d's guesses): "
                  f"{'not within the run' if shown is None else f'{shown:.1f} s after the attack began'}")
        finally:
            net.stop_all()


if __name__ == "__main__":
    main()
