"""Overload: a 4-node testnet offered twice its measured peak (`make bench`, or `python -m bench.overload`).

First the peak: 4 client processes send JSON-RPC batches of 100 submit_event at paced loads and as fast as
the nodes take them (honouring any retry delay, as the SDK does); the best steady committed tx/s of these
steps is the peak. Then the same clients offer 2x that peak for RADCHAIN_OVERLOAD_SECONDS (default 60),
never backing off. Reported against the goals of
docs/PERFORMANCE.md: view changes (goal 0), committed tx/s against the peak (goal >= 95 %), p99 commit
latency of accepted txs (goal <= 2 s), refused calls and how fast a request carrying refusals was answered
(goal: every one within 100 ms), and accepted txs that never committed (must be 0).
Environment: RADCHAIN_PEAK_LOADS (offered tx/s per step, "max" = unthrottled; default "1500,2500,max"),
RADCHAIN_PEAK_SECONDS (per step, default 15), RADCHAIN_OVERLOAD_SECONDS (default 60),
RADCHAIN_OVERLOAD_FACTOR (default 2).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.testnet import BATCH, UNTHROTTLED, event_batch
from node.testnet import LocalTestnet

CLIENTS = 4
WARMUP = 5.0  # seconds of each phase left out of the steady-state rate


def _retry_after(reply: dict) -> float | None:
    data = reply.get("error", {}).get("data") if isinstance(reply.get("error"), dict) else None
    value = data.get("retry_after") if isinstance(data, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _client(url: str, token: str, rate: float | None, seconds: float, honour: bool, tag: str, queue,
            barrier) -> None:
    """One load generator process. `rate` None: as fast as answers come. `honour`: sleep retry_after."""
    sent: dict[str, float] = {}
    refused, other_errors = 0, []
    refused_ms: list[float] = []  # answer time of each request that carried refusals
    accepted_ms: list[float] = []  # answer time of each request whose calls were all admitted
    http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    barrier.wait()  # all clients start together, once their (slow, spawned) imports are done
    start = time.time()
    n = 0
    while time.time() - start < seconds:
        now_ms = int(time.time() * 1000)
        calls = event_batch(tag, n, now_ms)
        t = time.time()
        try:
            response = http.post(url, json=calls)
            replies = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            other_errors.append(f"transport: {exc!r}"[:200])
            time.sleep(0.1)
            continue
        took = time.time() - t
        if isinstance(replies, dict):  # the whole request refused (rate limit, size)
            replies = [replies] * BATCH
        waits = []
        for r in replies:
            if "result" in r:
                sent[r["result"]["tx"]] = t
            elif (wait := _retry_after(r)) is not None:
                refused += 1
                waits.append(wait)
            else:
                other_errors.append(str(r.get("error"))[:200])
        if waits:
            refused_ms.append(took * 1000)
        else:
            accepted_ms.append(took * 1000)
        n += BATCH
        if honour and waits:
            time.sleep(min(waits) * random.uniform(1.0, 1.25))
        elif rate:
            ahead = start + n / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
    queue.put({"sent": sent, "refused": refused, "refused_ms": refused_ms, "errors": other_errors, "calls": n,
               "accepted_ms": accepted_ms, "tag": tag})


def _views(net: LocalTestnet) -> list[int]:
    return [net.rpc(i, "status", timeout=10)["view"] for i in range(len(net.nodes))]


def _triggers(net: LocalTestnet) -> list[dict[str, float]]:
    """Per node, from node.rpc.metrics: what moved its replica towards a view change (by trigger), the frames
    it could not send and the messages its replica dropped (lost votes stall a replica), and its WAL fsyncs
    over a second (a vote waits for one)."""
    out = []
    for i in range(len(net.nodes)):
        counts = {k.split('"')[1]: v for k, v in net.metrics(i, "radchain_view_change_triggers_total").items()}
        counts.update({"dropped " + k.split('"')[1]: v
                       for k, v in net.metrics(i, "radchain_p2p_dropped_frames_total").items()})
        counts.update({"replica dropped " + k.split('"')[1]: v  # stale_*: late votes for what committed, normal
                       for k, v in net.metrics(i, "radchain_consensus_dropped_total").items() if "stale_" not in k})
        counts.update({"gossip " + k.split('"')[1]: v  # refused or re-sent: a member may lack a tx
                       for k, v in net.metrics(i, "radchain_gossip_txs_total").items() if "admitted" not in k})
        counts["progress waits (next block certified)"] = net.metrics(i, "radchain_progress_waits_total").get("", 0)
        fsync = net.metrics(i, "radchain_wal_fsync_seconds_bucket")
        counts["WAL fsyncs over 1 s"] = fsync.get('{le="+Inf"}', 0) - fsync.get('{le="1"}', 0)
        out.append(counts)
    return out


def _trigger_delta(before: list[dict], after: list[dict]) -> str:
    """What moved in a phase, per node: '' when nothing did."""
    parts = []
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        moved = {k: int(v - a.get(k, 0)) for k, v in b.items() if v > a.get(k, 0)}
        if moved:
            parts.append(f"node {i} " + ", ".join(f"{k} {n}" for k, n in sorted(moved.items())))
    return "; ".join(parts)


def _drain_time(net: LocalTestnet, limit: float = 60.0) -> float | None:
    """Seconds until every node's mempool is empty once every accepted tx was seen committed on node 0 (a
    node that fell behind still holds what it has not executed yet), None if one still holds txs after
    `limit`: those would be entries its commits never removed."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if not any(net.rpc(i, "status")["mempool"] for i in range(len(net.nodes))):
            return time.time() - t0
        time.sleep(0.5)
    return None


def _view_change_log_lines(net: LocalTestnet, limit: int = 12) -> list[str]:
    """Each node's "view change to view N started: ..." log lines (the trigger and the replica's in-flight
    heights then), at most `limit` per node."""
    out = []
    for i, info in enumerate(net.nodes):
        try:
            text = (info.home / "node.log").read_text(errors="replace")
        except FileNotFoundError:
            continue
        lines = [line for line in text.splitlines() if "view change to view" in line]
        out += [f"node {i}: {line[:1500]}" for line in lines[:limit]]
    return out


def _keep_logs(net: LocalTestnet) -> Path | None:
    """A view change happened: copy every node's log out of the run's temporary directory (what the other
    members did meanwhile is the half of the story the lines above do not tell)."""
    kept = Path(tempfile.mkdtemp(prefix="radchain-overload-logs-"))
    for i, info in enumerate(net.nodes):
        log_path = info.home / "node.log"
        if log_path.exists():
            shutil.copy(log_path, kept / f"node{i}-{info.name}.log")
    return kept


def run_phase(net: LocalTestnet, rate: float | None, seconds: float, honour: bool, tag: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(CLIENTS + 1)
    per_client = rate / CLIENTS if rate else None
    views0, triggers0 = _views(net), _triggers(net)
    height = net.height(0)
    clients = [ctx.Process(target=_client, args=(net.nodes[i % len(net.nodes)].rpc, net.nodes[i % len(net.nodes)].token,
                                                 per_client, seconds, honour, f"{tag}c{i}", queue, barrier))
               for i in range(CLIENTS)]
    for c in clients:
        c.start()
    barrier.wait(timeout=120)
    t0 = time.time()
    seen: dict[str, float] = {}  # tx -> when node 0's block carrying it was first seen
    block_seen: list[tuple[float, int]] = []  # (seen at, txs) per block
    results: list[dict] = []
    deadline = t0 + seconds + 90
    backlog: list[int] = []  # node 0's mempool, sampled every 0.5 s while the clients run
    next_sample = t0
    while time.time() < deadline:
        if time.time() >= next_sample and time.time() < t0 + seconds:
            backlog.append(net.rpc(0, "status", timeout=30)["mempool"])
            next_sample += 0.5
        # One `blocks` call per poll (not a call per block), so the observer never lags the chain.
        page = net.rpc(0, "blocks", {"from": height + 1}, timeout=30)
        now = time.time()
        for block in page["blocks"]:
            for tx in block["txs"]:
                seen[tx] = now
            block_seen.append((now, len(block["txs"])))
            height = block["height"]
        try:
            while True:
                results.append(queue.get_nowait())
        except queue_mod.Empty:
            pass
        if len(results) == CLIENTS:
            sent = {k for r in results for k in r["sent"]}
            if sent <= seen.keys() or now > t0 + seconds + 60:
                break
        time.sleep(0.02)
    for c in clients:
        c.join(timeout=10)
    views1, triggers1 = _views(net), _triggers(net)
    sent = {k: v for r in results for k, v in r["sent"].items()}
    latencies = sorted((seen[k] - v) * 1000 for k, v in sent.items() if k in seen)
    steady = [n for at, n in block_seen if t0 + WARMUP <= at <= t0 + seconds]
    by_client = {}
    for r in sorted(results, key=lambda r: r["tag"]):
        mine = sorted((seen[k] - v) * 1000 for k, v in r["sent"].items() if k in seen)
        by_client[r["tag"]] = round(mine[int(0.99 * (len(mine) - 1))]) if mine else None
    refused_ms = sorted(ms for r in results for ms in r["refused_ms"])
    accepted_ms = sorted(ms for r in results for ms in r["accepted_ms"])
    return {
        "offered": rate, "seconds": seconds, "calls": sum(r["calls"] for r in results),
        "accepted": len(sent), "committed": sum(1 for k in sent if k in seen),
        "lost": sum(1 for k in sent if k not in seen),
        "tx_per_s": sum(steady) / max(1e-9, seconds - WARMUP),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "refused": sum(r["refused"] for r in results), "refused_requests": len(refused_ms),
        "refused_p50_ms": statistics.median(refused_ms) if refused_ms else float("nan"),
        "refused_p99_ms": refused_ms[int(0.99 * (len(refused_ms) - 1))] if refused_ms else float("nan"),
        "refused_max_ms": refused_ms[-1] if refused_ms else float("nan"),
        "refused_within_100ms": sum(1 for ms in refused_ms if ms <= 100) / len(refused_ms) if refused_ms else 1.0,
        "errors": [e for r in results for e in r["errors"]],
        "view_changes": max(b - a for a, b in zip(views0, views1, strict=True)),
        "triggers": _trigger_delta(triggers0, triggers1),
        "mempool": [net.rpc(i, "status")["mempool"] for i in range(len(net.nodes))],
        "mempool_drained_s": _drain_time(net),
        "admit_p50_ms": statistics.median(accepted_ms) if accepted_ms else float("nan"),
        "admit_p99_ms": accepted_ms[int(0.99 * (len(accepted_ms) - 1))] if accepted_ms else float("nan"),
        "p99_ms_by_client": by_client,
        "backlog_p50": statistics.median(backlog) if backlog else 0, "backlog_max": max(backlog, default=0),
    }


def _drained(r: dict) -> str:
    t = r["mempool_drained_s"]
    return "still not empty 60 s later" if t is None else f"all empty {t:.1f} s later"


def _row(name: str, r: dict) -> str:
    offered = "max" if r["offered"] is None else f"{r['offered']:.0f}"
    return (f"{name:<9} {offered:>8} {r['accepted']:>8} {r['tx_per_s']:>8.0f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} "
            f"{r['view_changes']:>5} {r['refused']:>8} {r['refused_p50_ms']:>7.0f} {r['refused_p99_ms']:>7.0f} "
            f"{r['refused_max_ms']:>7.0f} {100 * r['refused_within_100ms']:>6.1f}% {r['lost']:>5} {len(r['errors']):>6}")


def main() -> None:
    peak_s = float(os.environ.get("RADCHAIN_PEAK_SECONDS", "15"))
    loads = [None if x == "max" else float(x) for x in os.environ.get("RADCHAIN_PEAK_LOADS", "1500,2500,max").split(",")]
    overload_s = float(os.environ.get("RADCHAIN_OVERLOAD_SECONDS", "60"))
    factor = float(os.environ.get("RADCHAIN_OVERLOAD_FACTOR", "2"))
    with tempfile.TemporaryDirectory(prefix="radchain-overload-") as tmp:
        busy = os.environ.get("RADCHAIN_BUSY_AFTER_S")  # try another backpressure threshold
        net = LocalTestnet(Path(tmp), 4, config_extra={**UNTHROTTLED, **(
            {"mempool": {"busy_after_s": float(busy)}} if busy else {})})
        try:
            net.start()
            net.wait_ready(timeout=90)
            steps = [run_phase(net, rate, peak_s, True, f"peak{i}") for i, rate in enumerate(loads)]
            peak = max(steps, key=lambda r: r["tx_per_s"])
            over = run_phase(net, factor * peak["tx_per_s"], overload_s, False, "over")
            vc_lines = _view_change_log_lines(net)
        finally:
            net.stop_all()
        kept = _keep_logs(net) if vc_lines else None
    print(f"\n4-node testnet, {CLIENTS} client processes, JSON-RPC batches of {BATCH} submit_event; peak steps "
          f"of {peak_s:.0f} s honouring retry_after; overload: {factor:g}x the peak for {overload_s:.0f} s, never "
          f"backing off. tx/s is steady state (first {WARMUP:.0f} s left out); latencies of accepted txs.")
    print(f"{'phase':<9} {'offered':>8} {'accepted':>8} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'views':>5} {'refused':>8} "
          f"{'ref p50':>7} {'ref p99':>7} {'ref max':>7} {'<100ms':>7} {'lost':>5} {'errors':>6}")
    for r in steps:
        print(_row("peak" if r is peak else "step", r))
    print(_row("overload", over))
    for name, r in [("step", s) for s in steps] + [("overload", over)]:
        if r["triggers"]:  # a view change (or a replica moving towards one): what set it off, per node
            offered = "max" if r["offered"] is None else f"{r['offered']:.0f}"
            print(f"{name} {offered}: view change triggers, lost frames, slow fsyncs: {r['triggers']}")
        if r["errors"]:
            print(f"{name}: {len(r['errors'])} errors other than retry refusals, first: {r['errors'][0]}")
    for line in vc_lines:  # what each replica held when it started a view change (node.runtime.driver)
        print(line)
    if kept:
        print(f"every node's log of this run, kept for the view change above: {kept}")
    ratio = over["tx_per_s"] / peak["tx_per_s"] if peak["tx_per_s"] else float("nan")
    print(f"overload vs peak: {ratio:.2f}x committed tx/s (goal >= 0.95); view changes {over['view_changes']} "
          f"(goal 0); p99 commit latency {over['p99_ms'] / 1000:.2f} s (goal <= 2 s); "
          f"{100 * over['refused_within_100ms']:.1f} % of requests with refusals answered within 100 ms "
          f"(goal 100 %); accepted but never committed: {over['lost']} (must be 0); "
          f"mempool at end {over['mempool']} ({_drained(over)}); backlog on node 0 under overload: median {over['backlog_p50']:.0f} "
          f"txs ({over['backlog_p50'] / max(1, over['tx_per_s']):.1f} s of commits), max {over['backlog_max']}; "
          f"a fully admitted batch of {BATCH} answered in p50 {over['admit_p50_ms']:.0f} ms, "
          f"p99 {over['admit_p99_ms']:.0f} ms; p99 commit latency by client (client i sends to node i, node 0 "
          f"is the primary): {over['p99_ms_by_client']}")


if __name__ == "__main__":
    main()
