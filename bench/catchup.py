"""Issue 17: catch-up of a node that was down for 100,000 txs, against the single-process limit.

`python -m bench bench.catchup` (in `make bench`). A 4-node testnet starts; member 3 is killed (kill -9);
the 4 load processes of bench.throughput submit to members 0-2 until RADCHAIN_BENCH_CATCHUP_TXS txs
(default 100,000) have committed; once the chain is idle, member 3 starts again and block sync brings it to
the head. The figure: committed txs / seconds from member 3 answering RPC to member 3 at the head (process
start-up shown apart), and its process CPU per tx over that time (/proc). Baseline in the same run:
bench.ledger's raw pipeline (PyNaCl verify + msgpack decode + plyvel batch write, one process), measured
right before the catch-up, so both see the same machine; and, since a shared machine inflates wall time but
not CPU time, the same comparison in CPU per tx (the raw pipeline's thread CPU). Goal: >= 0.8x.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import CLIENTS, _cpu, _load_client
from node.testnet import LocalTestnet

LOAD_CHUNK_S = 15.0


def load_until(net: LocalTestnet, target: int, members: list[int]) -> tuple[int, int, float]:
    """Drive the load processes at `members` in chunks until `target` txs committed and the chain is idle.
    Returns (height, txs, seconds of load)."""
    ctx = mp.get_context("spawn")
    t0 = time.time()
    committed, height, chunk = 0, 0, 0
    while committed < target:
        queue, go = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_load_client, daemon=True,
                             args=(net.nodes[members[k % len(members)]].rpc, net.nodes[members[k % len(members)]].token,
                                   None, LOAD_CHUNK_S, f"cu{chunk}c{k}", queue, go)) for k in range(CLIENTS)]
        for p in procs:
            p.start()
        for _ in procs:
            if queue.get(timeout=600) != "ready":
                raise RuntimeError("a load process did not start")
        go.set()
        for _ in procs:
            queue.get(timeout=LOAD_CHUNK_S + 120)
        for p in procs:
            p.join(timeout=10)
        chunk += 1
        # idle: the mempool drained (no height change for 2 s)
        last, since = net.height(members[0]), time.time()
        while time.time() - since < 2.0:
            time.sleep(0.5)
            h = net.height(members[0])
            if h != last:
                last, since = h, time.time()
        committed += _committed_txs_range(net, members[0], height, last)
        height = last
        print(f"  load: {committed:,} txs committed at height {height} ({time.time() - t0:.0f} s)", flush=True)
    return height, committed, time.time() - t0


def _committed_txs_range(net: LocalTestnet, i: int, h0: int, h1: int) -> int:
    return sum(net.rpc(i, "get_block", {"height": h})["header"]["tx_count"] for h in range(h0 + 1, h1 + 1))


def replay(n: int = 6000, block_txs: int = 36, rounds: int = 3) -> dict:
    """In-process replay of block sync, no network, against the raw pipeline on the same txs.

    A chain of ``n`` signed txs in blocks of ``block_txs`` (about what the load builds) is served as
    BlockSync.serve does (store reads, 64-block msgpack responses); a fresh Chain applies them as a
    catching-up node does: decode_blocks, prepare_synced_batch in a worker thread (the next response's
    while this one executes), Chain.execute(synced=...), one fsync per response. Replay and raw pipeline
    (bench.ledger.RawPipeline, blocks of 500, no fsync) alternate ``rounds`` times; the best of each counts
    (the machine is shared). CPU is the process's (the worker thread included) for the replay, the
    thread's for the raw pipeline (it has no other thread)."""
    from concurrent.futures import ThreadPoolExecutor

    import msgpack
    from nacl.signing import SigningKey

    from bench.ledger import RawPipeline, certificate, make_genesis, make_txs
    from node.ledger.chain import Chain, prepare_synced_batch
    from node.ledger.store import Store
    from node.runtime.sync import MAX_BLOCKS_PER_REQUEST, decode_blocks

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    genesis = make_genesis(keys)
    txs = make_txs(keys, n)
    now = 1_800_000_000_000
    best = {"replay_rate": 0.0, "replay_cpu_us": float("inf"), "raw_rate": 0.0, "raw_cpu_us": float("inf")}
    with tempfile.TemporaryDirectory(prefix="radchain-replay-") as tmp:
        src = Chain(genesis, Store(os.path.join(tmp, "src"), sync=False))
        for h, i in enumerate(range(0, n, block_txs), 1):
            payload = src.build_proposal(h, h % 4, now, txs[i:i + block_txs])
            src.execute(payload, certificate(keys, h, src.proposal_digest(payload)))
        height, store = src.height, src.store
        replies = [(s, msgpack.packb({"blocks": [[h, store.get_payload(h), store.get_certificate(h)]
                                                 for h in range(s, min(height, s + MAX_BLOCKS_PER_REQUEST - 1) + 1)]},
                                     use_bin_type=True))
                   for s in range(1, height + 1, MAX_BLOCKS_PER_REQUEST)]
        store.close()
        for r in range(rounds):
            dst = Chain(genesis, Store(os.path.join(tmp, f"dst{r}")))

            def check(reply, dst=dst) -> list:
                start, data = reply
                items = [(h, p, c, *dst.sync_context(h)[:3]) for h, p, c in decode_blocks(data, start)]
                prepared, failure = prepare_synced_batch(items)
                assert failure is None, failure
                return prepared

            c0, t0 = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(1) as pool:
                ahead = pool.submit(check, replies[0])
                for k in range(len(replies)):
                    batch = ahead.result()
                    if k + 1 < len(replies):
                        ahead = pool.submit(check, replies[k + 1])
                    dst.store.sync = False
                    for b in batch:
                        dst.execute(b.payload, b.certificate, synced=b)
                    dst.store.sync = True
                    dst.store.make_durable()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert dst.height == height
            dst.store.close()
            best["replay_rate"] = max(best["replay_rate"], n / wall)
            best["replay_cpu_us"] = min(best["replay_cpu_us"], cpu * 1e6 / n)
            raw = RawPipeline(os.path.join(tmp, f"raw{r}"), False)
            c0, t0 = time.thread_time(), time.perf_counter()
            for i in range(0, n, 500):
                raw.block(txs[i:i + 500])
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            raw.close()
            best["raw_rate"] = max(best["raw_rate"], n / wall)
            best["raw_cpu_us"] = min(best["raw_cpu_us"], cpu * 1e6 / n)
    best["blocks"] = height
    return best


def main() -> None:
    from bench.consortium import raw_pipeline_cpu_us
    from bench.testnet import raw_pipeline_rate

    target = int(os.environ.get("RADCHAIN_BENCH_CATCHUP_TXS", "100000"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)", flush=True)
    rep = replay()
    print(f"in-process replay of block sync (no network; 6,000 txs, {rep['blocks']} blocks, 64 per response, "
          f"best of 3): {rep['replay_rate']:,.0f} tx/s, process CPU {rep['replay_cpu_us']:.0f} us/tx; raw pipeline "
          f"{rep['raw_rate']:,.0f} tx/s, {rep['raw_cpu_us']:.0f} us/tx CPU: ratio "
          f"{rep['replay_rate'] / rep['raw_rate']:.2f}x wall, {rep['raw_cpu_us'] / rep['replay_cpu_us']:.2f}x CPU",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="radchain-catchup-") as tmp:
        net = LocalTestnet(Path(tmp), 4)
        try:
            net.start()
            net.wait_ready(timeout=120)
            net.kill(3)
            height, txs, load_s = load_until(net, target, [0, 1, 2])
            print(f"member 3 was down for {txs:,} txs ({height} blocks, {load_s:.0f} s of load)", flush=True)
            raw_rate = raw_pipeline_rate()
            raw_cpu_us = raw_pipeline_cpu_us()
            profile = os.environ.get("RADCHAIN_BENCH_CATCHUP_PROFILE")
            if profile:  # cProfile inside member 3's process, from ready to the head (bench.catchup_profile)
                net.wrap[3] = [sys.executable, "-m", "bench.catchup_profile", str(Path(profile).resolve())]
            t_start = time.time()
            net.start(3)
            pid = net.procs[3].pid
            net.wait_ready([3], timeout=300)
            t_ready = time.time()
            if profile:
                os.kill(pid, signal.SIGUSR1)
            cpu0 = _cpu(f"/proc/{pid}/stat")
            h3 = 0
            while h3 < height:
                time.sleep(0.1)
                h3 = net.height(3)
                if time.time() - t_ready > 3600:
                    raise RuntimeError(f"member 3 at {h3} of {height} after an hour")
            t_done = time.time()
            cpu = _cpu(f"/proc/{pid}/stat") - cpu0
            if profile:
                os.kill(pid, signal.SIGUSR1)
                time.sleep(3)
                print(f"profile of member 3's event loop from ready to the head: {profile}", flush=True)
        finally:
            net.stop_all()
    seconds = t_done - t_ready
    rate = txs / seconds
    print(f"catch-up of {txs:,} txs ({height} blocks) by block sync: {seconds:.1f} s after the node answered "
          f"(start-up {t_ready - t_start:.1f} s): {rate:,.0f} tx/s, process CPU {cpu * 1e6 / txs:.0f} us/tx; "
          f"baseline single-process raw pipeline {raw_rate:,.0f} tx/s: ratio {rate / raw_rate:.2f}x "
          f"(goal >= 0.8x); counting start-up {txs / (t_done - t_start):,.0f} tx/s "
          f"({txs / (t_done - t_start) / raw_rate:.2f}x)")
    print(f"CPU per tx, which a shared machine does not inflate: catching-up node {cpu * 1e6 / txs:.0f} us/tx, raw "
          f"pipeline {raw_cpu_us:.0f} us/tx: ratio {raw_cpu_us / (cpu * 1e6 / txs):.2f}x (the node's CPU-bound "
          f"catch-up rate relative to the single-process limit)")
    print(f"(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
