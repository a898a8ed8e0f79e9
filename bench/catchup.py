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


def main() -> None:
    from bench.consortium import raw_pipeline_cpu_us
    from bench.testnet import raw_pipeline_rate

    target = int(os.environ.get("RADCHAIN_BENCH_CATCHUP_TXS", "100000"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)", flush=True)
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
