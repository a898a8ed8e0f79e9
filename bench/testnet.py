"""4-node testnet under load from separate client processes (`make bench`, or `python -m bench.testnet`).

Reports committed tx/s, p50/p99 commit latency at several offered loads, CPU and RSS per node, disk bytes
per tx; the single-process ledger pipeline measured in the same run is the ratio's denominator.
Environment: RADCHAIN_BENCH_SECONDS (per load step, default 8), RADCHAIN_BENCH_LOADS (comma list of tx/s,
"max" = unthrottled; default "500,1000,2000,max"), RADCHAIN_BENCH_PATIENTS and RADCHAIN_BENCH_STUDIES (how
many distinct identifiers the load cycles through, default 200 and 400).

The identifiers repeat, as a hospital's do (the studies open in its viewers this minute), and every node
computes their tokens in a warm-up before the measured steps: the chain's throughput is measured with the
node's token cache warm. A fresh identifier costs a threshold-OPRF round with the other members (issue 13);
bench.pseudonyms measures that path, fresh identifiers in every event included.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from node.testnet import LocalTestnet

CLIENTS = 4
BATCH = 100
UNTHROTTLED = {"oprf": {"rate": 1e6, "burst": 1e6}}


PATIENTS = int(os.environ.get("RADCHAIN_BENCH_PATIENTS", "200"))
STUDIES = int(os.environ.get("RADCHAIN_BENCH_STUDIES", "400"))


def event_batch(tag: str, n: int, now_ms: int, size: int = BATCH) -> list[dict]:
    """`size` submit_event calls with distinct event ids (tag-n ...), cycling through PATIENTS patients,
    STUDIES studies and 300 actors."""
    return [{"jsonrpc": "2.0", "id": i, "method": "submit_event", "params": {"event": {
        "type": "instances.accessed", "patient_id": f"PAT-{(n + i) % PATIENTS}", "issuer": "HOSP-A",
        "study_uid": f"1.2.840.{(n + i) % STUDIES}", "actor": f"dr.{(n + i) % 300}", "purpose": "TREAT",
        "event_id": f"{tag}-{n + i}", "time": now_ms}}} for i in range(size)]


def warm_token_caches(net: LocalTestnet, timeout: float | None = None) -> float:
    """Every node tokenizes every identifier of the load once (one event per identifier pair, refusals
    retried), so the measured steps run with warm token caches; returns the seconds it took. Each fresh
    identifier is a threshold-OPRF round over t members, one node after another: the default allows 75 s
    per node (16 nodes on a busy 2-core machine took over 300 s)."""
    timeout = timeout if timeout is not None else 75.0 * len(net.nodes)
    started = time.time()
    deadline = started + timeout
    for node in net.nodes:
        http = httpx.Client(headers={"Authorization": f"Bearer {node.token}"}, timeout=60)
        n = 0
        while n < max(PATIENTS, STUDIES):
            assert time.time() < deadline, f"warm-up of {node.name}'s token cache took over {timeout:.0f} s"
            calls = event_batch(f"warm-{node.name}", n, int(time.time() * 1000), min(BATCH, max(PATIENTS, STUDIES) - n))
            replies = http.post(node.rpc, json=calls).json()
            if all("result" in r for r in replies):
                n += len(calls)
            else:
                time.sleep(0.5)  # busy (backpressure) or a tokenization timeout: the same batch again
        http.close()
    while net.rpc(0, "status")["mempool"] > 0:  # the warm-up's txs out of the way
        assert time.time() < deadline, "warm-up txs did not commit"
        time.sleep(0.2)
    return time.time() - started


def _client(url: str, token: str, rate: float | None, seconds: float, tag: str, queue) -> None:
    """One load generator process: JSON-RPC batches of submit_event, paced to `rate` tx/s."""
    sent: dict[str, float] = {}
    http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    start = time.time()
    n = 0
    errors = 0
    while time.time() - start < seconds:
        now_ms = int(time.time() * 1000)
        calls = event_batch(tag, n, now_ms)
        t = time.time()
        try:
            replies = http.post(url, json=calls).json()
        except httpx.HTTPError:
            errors += BATCH
            time.sleep(0.1)
            continue
        for r in replies:
            if "result" in r:
                sent[r["result"]["tx"]] = t
            else:
                errors += 1
        n += BATCH
        if rate:
            ahead = start + n / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
    queue.put((sent, errors))


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_step(net: LocalTestnet, rate: float | None, seconds: float, step: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per_client = rate / CLIENTS if rate else None
    h0 = net.height(0)
    cpu0 = [_proc_stats(p.pid)[0] for p in net.procs]
    t0 = time.time()
    clients = [ctx.Process(target=_client, args=(net.nodes[i % len(net.nodes)].rpc, net.nodes[i % len(net.nodes)].token,
                                                 per_client, seconds, f"s{step}c{i}", queue))
               for i in range(CLIENTS)]
    for c in clients:
        c.start()
    # Watch blocks as they commit on node 0: first-seen time of each tx gives its commit latency.
    seen: dict[str, float] = {}
    height = h0
    results = []
    deadline = t0 + seconds + 60
    while time.time() < deadline:
        # One `blocks` call per poll (not a call per block), so the observer never lags the chain.
        page = net.rpc(0, "blocks", {"from": height + 1})
        now = time.time()
        for block in page["blocks"]:
            for tx in block["txs"]:
                seen[tx] = now
            height = block["height"]
        while not queue.empty():
            results.append(queue.get())
        if len(results) == CLIENTS:
            sent = {k: v for r in results for k, v in r[0].items()}
            if all(k in seen for k in sent) or time.time() > t0 + seconds + 30:
                break
        time.sleep(0.02)
    for c in clients:
        c.join(timeout=10)
    sent = {k: v for r in results for k, v in r[0].items()}
    errors = sum(r[1] for r in results)
    committed = [seen[k] for k in sent if k in seen]
    latencies = sorted((seen[k] - v) * 1000 for k, v in sent.items() if k in seen)
    first_submit = min(sent.values(), default=t0)
    elapsed = (max(committed) - first_submit) if committed else float("nan")
    cpu1 = [_proc_stats(p.pid)[0] for p in net.procs]
    wall = time.time() - t0
    return {
        "offered": rate or "max", "submitted": len(sent), "committed": len(committed), "errors": errors,
        "tx_per_s": len(committed) / elapsed if committed else 0.0,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "cpu_per_node": [(b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)],
        "blocks": height - h0,
    }


def raw_pipeline_rate(n: int = 6000) -> float:
    """Single-process PyNaCl verify + msgpack decode + plyvel batch write (bench.ledger's raw baseline)."""
    from nacl.signing import SigningKey

    from bench.ledger import RawPipeline, make_txs

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    txs = make_txs(keys, n)
    with tempfile.TemporaryDirectory(prefix="radchain-raw-") as tmp:
        raw = RawPipeline(os.path.join(tmp, "raw"), False)
        t = time.perf_counter()
        for i in range(0, n, 500):
            raw.block(txs[i:i + 500])
        elapsed = time.perf_counter() - t
        raw.close()
    return n / elapsed


def main() -> None:
    seconds = float(os.environ.get("RADCHAIN_BENCH_SECONDS", "8"))
    loads = [None if x == "max" else float(x)
             for x in os.environ.get("RADCHAIN_BENCH_LOADS", "500,1000,2000,max").split(",")]
    raw_rate = raw_pipeline_rate()
    print(f"single-process raw pipeline (verify + decode + batch write): {raw_rate:.0f} tx/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="radchain-bench-") as tmp:
        # The chain's throughput, not the pseudonym rate limit (bench.pseudonyms measures that): the warm-up
        # asks for all the load's identifiers at once, more than the default burst.
        net = LocalTestnet(Path(tmp), 4, config_extra=UNTHROTTLED)
        try:
            net.start()
            net.wait_ready(timeout=90)
            warm = warm_token_caches(net)
            print(f"token caches warmed: {PATIENTS} patients, {STUDIES} studies on each node in {warm:.0f} s",
                  flush=True)
            rows = [run_step(net, rate, seconds, i) for i, rate in enumerate(loads)]
            total_txs = sum(net.rpc(0, "get_block", {"height": h})["header"]["tx_count"]
                            for h in range(1, net.height(0) + 1))
            disk = _dir_bytes(net.nodes[0].home / "data" / "chain")
            rss = [_proc_stats(p.pid)[1] for p in net.procs]
        finally:
            net.stop_all()
    print(f"\n4-node testnet, {CLIENTS} client processes, JSON-RPC batches of {BATCH} submit_event, "
          f"{seconds:.0f} s per step")
    print(f"{'offered tx/s':>12} {'committed':>9} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
          "CPU per node (cores)")
    for r in rows:
        cpu = " ".join(f"{c:.2f}" for c in r["cpu_per_node"])
        print(f"{r['offered']!s:>12} {r['committed']:>9} {r['tx_per_s']:>8.0f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['errors']:>6}  {cpu}")
    best = max(r["tx_per_s"] for r in rows)
    print(f"RSS per node at end: {' '.join(f'{x / 2**20:.0f} MiB' for x in rss)}")
    print(f"disk: {disk / max(1, total_txs):.0f} bytes per tx on node 0 ({total_txs} txs, {disk / 2**20:.1f} MiB)")
    print(f"max committed: {best:.0f} tx/s (goal 3,500)")
    print(f"ratio to the single-process raw pipeline ({raw_rate:.0f} tx/s): {best / raw_rate:.2f}x")


if __name__ == "__main__":
    main()
