"""Issue 17: sustained throughput, CPU per committed tx per node, latency at half load, and the n-node table.

`python -m bench bench.throughput` (part of `make bench`). For each testnet size in RADCHAIN_BENCH_SIZES:

1. **max**: CLIENTS load processes send JSON-RPC batches of 100 `submit_event` as fast as the nodes take
   them (honouring `retry_after` by backing off) for RADCHAIN_BENCH_SUSTAIN_S seconds on the smallest
   size (the issue's "60 s sustained"), RADCHAIN_BENCH_TABLE_S on the others. Committed tx/s is counted
   from the blocks executed between the end of the warm-up and the end of the window (not "until the
   backlog drains": a backlog that grows does not count as throughput).
   In the same window: CPU of every node process from /proc/<pid>/stat (and of its main thread, of LevelDB's
   background thread and of trio's worker threads from /proc/<pid>/task), divided by the committed txs = CPU
   us per committed tx per node; bytes
   every node process sent on its p2p TCP connections (the kernel's per-socket `bytes_sent`, `ss -ti`:
   after Noise and yamux framing) per committed tx per node.
2. **half**: the load clients offer half the committed rate of step 1 while PROBES threads each send one
   `submit_event` at a time in `mode: "commit"` (the answer comes when the tx's block executed on the
   node that took it): submit -> commit latency p50/p99 from those calls, not from polling.

Baselines measured in the same run: the single-process raw pipeline (PyNaCl verify + msgpack decode +
plyvel batch write, bench.ledger's RawPipeline): its tx/s, and its us per tx (what one node spends per tx
at the very least if it did nothing but the ledger work on one core).

Environment: RADCHAIN_BENCH_SIZES (default "4,7,10,16"), RADCHAIN_BENCH_SUSTAIN_S (default 60),
RADCHAIN_BENCH_TABLE_S (default 20), RADCHAIN_BENCH_CONFIG (extra node config for every run,
"section.key=value,..."), RADCHAIN_BENCH_AB (the baseline config of the A/B pair run on the first size right
after its main run, default "mempool.sign_batch=1": each own tx signed alone; empty: no A/B; RADCHAIN_BENCH_AB_ROUNDS
alternates that many baseline/this-code pairs, default 1; RADCHAIN_BENCH_AB_ONLY=1 runs only those).
RADCHAIN_BENCH_LATENCY_ONLY=<offered tx/s> runs only the half-load step at that rate (0: the commit-mode probes
alone) on one testnet of the first size; with RADCHAIN_TRACE_LATENCY=1 the nodes' stage lines are printed.
RADCHAIN_BENCH_TRIALS=<k> runs only the first size's max then half steps, on k fresh testnets one after the
other, and says in how many the half-load goals held (the half step's tail differs from run to run: see
docs/PERFORMANCE.md, "2026-12-03 evening").
Default total: about 8 minutes on a quiet machine (6 testnet start-ups, 16 nodes the largest; 60 + 8 x 20 s
of load, the drains).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.testnet import UNTHROTTLED, event_batch, warm_token_caches
from node.testnet import LocalTestnet

CLIENTS = 4
BATCH = 100
PROBES = 4
WARMUP_S = 5.0
TAIL_WINDOW_S = 5.0  # half-load latencies are also reported per window of this length


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    """utime + stime (seconds) from a /proc stat file."""
    with open(path) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _ticks()


def cpu_sample(pids: list[int]) -> list[tuple[float, float, dict[int, float]]]:
    """(process CPU s, main-thread CPU s, {tid: CPU s} of its other long-lived threads) of each pid.

    In a node the only thread nobody named is LevelDB's background thread (memtable flushes and compactions of
    every database the process opened; py-spy shows no Python frames in it). Trio's worker threads carry a
    name; they, and threads that exited (whose CPU stays in the process total), are the rest. A thread that
    first shows in the later sample started in the window: all its CPU counts."""
    return [(_cpu(f"/proc/{p}/stat"), _cpu(f"/proc/{p}/task/{p}/stat"), _native_threads(p)) for p in pids]


def _native_threads(pid: int) -> dict[int, float]:
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    try:
        with open(f"/proc/{pid}/comm") as fh:
            unnamed = fh.read().strip()  # what a thread is called that nobody named: the process's name
    except FileNotFoundError:
        return out
    for tid in tids:
        if int(tid) == pid:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read().strip()
            # trio names its workers "Trio thread N" when idle and after the job while one runs
            # ("verify_txs from"): any name but the process's is not LevelDB's thread
            if name != unnamed:
                continue
            out[int(tid)] = _cpu(f"/proc/{pid}/task/{tid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read: its CPU is in the process total
    return out


def wire_sample(pids: list[int], rpc_ports: set[int]) -> dict[int, int]:
    """Bytes each pid's TCP sockets sent (kernel per-socket bytes_sent), RPC connections left out.

    Sockets are keyed by (pid, local, peer) so a connection that closed between two samples is simply
    missing from the later one (the delta ignores it rather than counting it negative)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=20).stdout
    per_socket: dict[tuple, int] = {}
    wanted = {str(p): p for p in pids}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = None
            parts = line.split()
            if len(parts) < 5 or "pid=" not in line:
                continue
            local, peer = parts[3], parts[4]
            try:
                lport = int(local.rsplit(":", 1)[1])
            except ValueError:
                continue
            if lport in rpc_ports:
                continue
            pid_text = line.split("pid=", 1)[1].split(",", 1)[0]
            if pid_text in wanted:
                current = (wanted[pid_text], local, peer)
        elif current is not None:
            for tok in line.split():
                if tok.startswith("bytes_sent:"):
                    per_socket[current] = int(tok.split(":", 1)[1])
            current = None
    return per_socket


def wire_delta(before: dict, after: dict, pids: list[int]) -> list[int]:
    sent = {p: 0 for p in pids}
    for key, value in after.items():
        sent[key[0]] += value - before.get(key, 0)
    return [sent[p] for p in pids]


def _event_batch(tag: str, n: int, now_ms: int, size: int = BATCH) -> list[dict]:
    # bench.testnet's load: identifiers that repeat, as a hospital's do, tokenized in the warm-up
    return event_batch(tag, n, now_ms, size)


def _load_client(url: str, token: str, rate: float | None, seconds: float, tag: str, queue, go) -> None:
    """A load process: batches of BATCH submit_event, paced to `rate` tx/s (None: as fast as taken).
    A refusal (-32004 with retry_after) makes it wait as node.client does. Starts when `go` is set: a
    spawned process takes seconds to import on a loaded machine, and the window must not start before."""
    http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    queue.put("ready")
    go.wait()
    start = time.time()
    n = accepted = refused = 0
    while time.time() - start < seconds:
        try:
            replies = http.post(url, json=_event_batch(tag, n, int(time.time() * 1000))).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
            continue
        n += BATCH
        wait = 0.0
        for r in replies if isinstance(replies, list) else []:
            if "result" in r:
                accepted += 1
            else:
                refused += 1
                wait = max(wait, float((r.get("error", {}).get("data") or {}).get("retry_after", 0.05)))
        if wait:
            time.sleep(min(wait, 1.0))
        elif rate:
            ahead = start + n / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
    queue.put((accepted, refused))


def _probe(url: str, token: str, seconds: float, tag: str, out: list, stop_at: float) -> None:
    """One commit-mode caller: submit one event, wait for the answer `committed`, record the time."""
    http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=40)
    n = 0
    while time.time() < stop_at:
        call = _event_batch(tag, n, int(time.time() * 1000), 1)[0]
        call["params"]["mode"] = "commit"
        call["params"]["timeout"] = 30
        t = time.perf_counter()
        try:
            reply = http.post(url, json=call).json()
        except (httpx.HTTPError, ValueError):
            time.sleep(0.1)
            continue
        n += 1
        result = reply.get("result") or {}
        if result.get("status") == "committed":
            out.append((time.time(), (time.perf_counter() - t) * 1000))
        elif "error" in reply:
            time.sleep(0.05)


def _txs_between(net: LocalTestnet, h0: int, h1: int) -> int:
    return sum(net.rpc(0, "get_block", {"height": h})["header"]["tx_count"] for h in range(h0 + 1, h1 + 1))


def run_step(net: LocalTestnet, rate: float | None, seconds: float, tag: str, probes: int = 0,
             n_clients: int = CLIENTS) -> dict:
    """Load for `seconds`; measure over the window after WARMUP_S (n_clients=0: the probes alone)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    n = len(net.nodes)
    pids = [p.pid for p in net.procs]
    rpc_ports = {int(info.rpc.rsplit(":", 1)[1]) for info in net.nodes}
    per_client = rate / n_clients if rate and n_clients else None
    go = ctx.Event()
    clients = [ctx.Process(target=_load_client, args=(net.nodes[i % n].rpc, net.nodes[i % n].token, per_client,
                                                      seconds, f"{tag}c{i}", queue, go), daemon=True)
               for i in range(n_clients)]  # daemon: a failed run does not leave them waiting for `go`
    for c in clients:
        c.start()
    for _ in clients:  # generous: on a machine at load 30 a spawned process took over 2 minutes to import
        if queue.get(timeout=600) != "ready":
            raise RuntimeError("a load process did not start")
    go.set()
    t0 = time.time()
    latencies: list[float] = []
    threads = [threading.Thread(target=_probe, daemon=True,
                                args=(net.nodes[i % n].rpc, net.nodes[i % n].token, seconds, f"{tag}p{i}",
                                      latencies, t0 + seconds)) for i in range(probes)]
    time.sleep(WARMUP_S)
    # The probes start after the warm-up too: their latencies are those of the steady state.
    for th in threads:
        th.start()
    h_start, cpu0, wire0, w0 = net.height(0), cpu_sample(pids), wire_sample(pids, rpc_ports), time.time()
    time.sleep(max(0.0, t0 + seconds - time.time()))
    h_end, cpu1, wire1, w1 = net.height(0), cpu_sample(pids), wire_sample(pids, rpc_ports), time.time()
    results = [queue.get(timeout=60) for _ in clients]
    for c in clients:
        c.join(timeout=10)
    for th in threads:
        th.join(timeout=40)
    committed = _txs_between(net, h_start, h_end)
    window = w1 - w0
    cpu = [b[0] - a[0] for a, b in zip(cpu0, cpu1, strict=True)]
    main = [b[1] - a[1] for a, b in zip(cpu0, cpu1, strict=True)]
    native = [sum(v - a[2].get(tid, 0.0) for tid, v in b[2].items()) for a, b in zip(cpu0, cpu1, strict=True)]
    sent = wire_delta(wire0, wire1, pids)
    per_tx = max(1, committed)
    lat = sorted(ms for _, ms in latencies)
    # The same calls by when they were answered: a step that slides from many small blocks into few large
    # ones mid-way (docs/PERFORMANCE.md, "2026-12-03 evening") shows as a tail that grows window by window.
    windows: dict[int, list[float]] = {}
    last = max(0, round((w1 - w0) / TAIL_WINDOW_S) - 1)  # a call answered after the window joins the last one
    for at, ms in latencies:
        windows.setdefault(min(last, max(0, int((at - w0) // TAIL_WINDOW_S))), []).append(ms)
    return {
        "offered": rate, "window_s": window, "committed": committed, "tx_per_s": committed / window,
        "blocks": h_end - h_start,
        "accepted": sum(r[0] for r in results), "refused": sum(r[1] for r in results),
        "cpu_us_per_tx": [c * 1e6 / per_tx for c in cpu], "main_us_per_tx": [m * 1e6 / per_tx for m in main],
        "native_us_per_tx": [x * 1e6 / per_tx for x in native],
        "cores": [c / window for c in cpu], "wire_bytes_per_tx": [s / per_tx for s in sent],
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": _pct(lat, 0.99) if lat else float("nan"), "samples": len(lat),
        "p50_p99_by_window": [(statistics.median(xs), _pct(sorted(xs), 0.99)) for _, xs in sorted(windows.items())],
    }


def store_bytes(path: Path) -> int:
    """Bytes of a LevelDB directory's files as they stand (its log and level-0 tables included)."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _pct(ordered: list[float], q: float) -> float:
    """The q quantile of an already sorted, non-empty list (the nearest lower rank, as this bench always used)."""
    return ordered[int(q * (len(ordered) - 1))]


def _by_window(step: dict) -> str:
    return ", ".join(f"{a:.0f}/{b:.0f}" for a, b in step["p50_p99_by_window"])


def _config_extra(text: str) -> dict:
    extra: dict = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        parsed: object = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                pass
        if value in ("true", "false"):
            parsed = value == "true"
        extra.setdefault(section, {})[name] = parsed
    return extra


def measure_size(n: int, max_seconds: float, half_seconds: float, extra: dict) -> dict:
    """Max step then (if half_seconds) the half-load step with commit-mode probes, on one fresh testnet."""
    with tempfile.TemporaryDirectory(prefix=f"radchain-bench{n}-") as tmp:
        net = LocalTestnet(Path(tmp), n, config_extra={**UNTHROTTLED, **extra})
        try:
            net.start()
            net.wait_ready(timeout=120)
            warm_token_caches(net)  # a fresh identifier is an OPRF round (bench.pseudonyms measures those)
            top = run_step(net, None, max_seconds, f"n{n}max")
            top["store_bytes_per_tx"] = store_bytes(net.nodes[0].home / "data" / "chain") / max(
                1, _txs_between(net, 0, net.height(0)))
            half = run_step(net, top["tx_per_s"] / 2, half_seconds, f"n{n}half", probes=PROBES) if half_seconds else None
        finally:
            net.stop_all()
    return {"n": n, "max": top, "half": half}


def gossip_admission(n_txs: int = 2000, batch: int = 256) -> dict:
    """In-process: one member admits n_txs gossiped txs (real Chain, LevelDB store and mempool), first with
    the signatures checked inline on the event loop, then in the worker thread (fresh member each).
    Returns event-loop-thread CPU us per tx and wall us per tx of each."""
    import trio
    from nacl.signing import SigningKey

    from node.ledger.chain import Chain
    from node.ledger.genesis import Genesis, Member
    from node.ledger.intake import make_tx
    from node.ledger.store import Store
    from node.runtime.gossip import TxGossip
    from node.runtime.mempool import Mempool
    from node.runtime.settings import MempoolConfig

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    members = tuple(Member(name=f"m{i}", pubkey=bytes(k.verify_key), peer_id=f"p{i}", p2p=(), rpc="")
                    for i, k in enumerate(keys))
    genesis = Genesis(chain_id="bench", genesis_time="2026-01-01T00:00:00+00:00", members=members, params={})
    now = int(time.time() * 1000)
    raws = [make_tx("instances.accessed", keys[i % 4], chain_id="bench", member=f"m{i % 4}", ts=now + i,
                    nonce=i.to_bytes(16, "big"), patient=bytes(16), study=bytes(16), user=bytes(16),
                    purpose="TREAT", outcome=0, action="R") for i in range(n_txs)]
    frames = [msgpack_pack(raws[i:i + batch]) for i in range(0, n_txs, batch)]
    out = {}
    for mode in ("inline", "thread"):
        with tempfile.TemporaryDirectory(prefix="radchain-gossip-") as tmp:
            store = Store(os.path.join(tmp, "chain"))
            chain = Chain(genesis, store)
            mempool = Mempool(Path(tmp) / "mempool", n_txs + 10)
            gossip = TxGossip(lambda ch, data: 0, chain, mempool, MempoolConfig(), on_admitted=lambda: None)

            async def feed(gossip=gossip, mode=mode) -> tuple[float, float]:
                c0, w0 = time.thread_time(), time.perf_counter()
                for f in frames:
                    if mode == "inline":
                        gossip.on_batch("peer", f)
                    else:
                        await gossip.on_batch_threaded("peer", f)
                return time.thread_time() - c0, time.perf_counter() - w0

            cpu, wall = trio.run(feed)
            assert len(mempool) == n_txs, (mode, len(mempool))
            out[mode] = {"loop_us": cpu * 1e6 / n_txs, "wall_us": wall * 1e6 / n_txs}
            mempool.close()
            store.close()
    return out


def gossip_grouped(n_txs: int = 3000, batch: int = 6, group: int = 6) -> dict:
    """In-process: gossiped txs in small batches (at ~2,400 tx/s over 4 members a 5 ms flush carries a
    handful of txs per member), checked with one worker-thread hand-off per batch (baseline) or per `group`
    batches waiting together (node.runtime.node's gossip loop now). CPU us per tx of the whole process
    (every thread: the hand-offs cost both sides) and of the event loop."""
    import trio
    from nacl.signing import SigningKey

    from node.ledger.intake import make_tx

    key = SigningKey(bytes([1]) * 32)
    now = int(time.time() * 1000)
    raws = [make_tx("instances.accessed", key, chain_id="bench", member="m0", ts=now + i, nonce=i.to_bytes(16, "big"),
                    patient=bytes(16), study=bytes(16), user=bytes(16), purpose="TREAT", outcome=0, action="R")
            for i in range(n_txs)]
    frames = [(f"peer{i % 3}", msgpack_pack(raws[i:i + batch])) for i in range(0, n_txs, batch)]

    def run(mode: str) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="radchain-gossip-") as tmp:
            _genesis, store, _chain, mempool, gossip = _bench_member(tmp, key)

            async def feed() -> tuple[float, float]:
                c0, p0 = time.thread_time(), time.process_time()
                if mode == "per batch":
                    for peer, f in frames:
                        await gossip.on_batch_threaded(peer, f)
                else:
                    for i in range(0, len(frames), group):
                        await gossip.on_batches_threaded(frames[i:i + group])
                return time.thread_time() - c0, time.process_time() - p0

            loop, proc = trio.run(feed)
            assert len(mempool) == n_txs, (mode, len(mempool))
            mempool.close()
            store.close()
        return loop * 1e6 / n_txs, proc * 1e6 / n_txs

    return {mode: run(mode) for mode in ("per batch", "grouped")}


def _bench_member(tmp: str, key):
    """A one-member chain, LevelDB store, mempool and gossip in `tmp`, the store holding 50,000 tx
    records already (as a node's after a minute at full load: LevelDB lookups cost what they cost there)."""
    from node.ledger.chain import Chain
    from node.ledger.genesis import Genesis, Member
    from node.ledger.store import Store, tx_key
    from node.runtime.gossip import TxGossip
    from node.runtime.mempool import Mempool
    from node.runtime.settings import MempoolConfig

    genesis = Genesis(chain_id="bench", genesis_time="2026-01-01T00:00:00+00:00", params={},
                      members=(Member(name="m0", pubkey=bytes(key.verify_key), peer_id="p0", p2p=(), rpc=""),))
    store = Store(os.path.join(tmp, "chain"))
    rng = __import__("random").Random(7)
    with store.db.write_batch() as wb:
        for _ in range(50_000):
            wb.put(tx_key(rng.randbytes(32)), rng.randbytes(300))
    chain = Chain(genesis, store)
    mempool = Mempool(Path(tmp) / "mempool", 1_000_000, min_backlog=10**9)  # never busy: no refusals here
    gossip = TxGossip(lambda ch, data: 0, chain, mempool, MempoolConfig(), on_admitted=lambda: None)
    return genesis, store, chain, mempool, gossip


def submit_path(n_events: int = 3000) -> dict:
    """In-process: the node's own work per `submit_event` call of a batch (prepare_event's token prefetch,
    then submit_event in sync mode: tokens, signing, checks, durable mempool admission), the load's events
    (200 patients, 400 studies, 300 actors, tokens already computed once), on a real chain, store,
    mempool and tokenizer; no HTTP. Baseline: the code before this round, step by step (tokens from the
    sealed LevelDB cache, the event read twice, the signed bytes decoded again, the authorisation checked
    twice, LevelDB lookups per tx); this code: node.rpc.submit's prepare_event and submit_event on the
    same fixture. Fresh fixture each; event-loop CPU us per call (thread_time)."""
    from types import SimpleNamespace

    import trio
    from nacl.signing import SigningKey

    from bench.testnet import event_batch
    from node.ledger import oprf
    from node.ledger.intake import event_to_tx_fields, sign_tx
    from node.ledger.tx import tx_hash
    from node.rpc.submit import Admission, prepare_event, submit_event
    from node.runtime.node import Node
    from node.runtime.own_txs import OwnTxs
    from node.runtime.tokenizer import Tokenizer, _Collect, _Resolved, ensure_local_secrets, write_epoch

    key = SigningKey(bytes([9]) * 32)
    calls = [c["params"] for c in event_batch("bench", 0, int(time.time() * 1000), n_events)]
    public, shares = oprf.deal(3, 4, epoch=1)

    def run(mode: str) -> float:
        with tempfile.TemporaryDirectory(prefix="radchain-submit-") as tmp:
            home = Path(tmp) / "home"
            ensure_local_secrets(home)
            write_epoch(home, public, shares[0])
            tok = Tokenizer(home, None, ["p0", "p1", "p2", "p3"], 0)
            assert tok.epoch == 1
            items = {("patient", (c["event"]["patient_id"], c["event"]["issuer"])) for c in calls}
            items |= {("study", (c["event"]["study_uid"],)) for c in calls}
            tok.cache.put_many([(oprf.token_input(1, k, *parts), os.urandom(16)) for k, parts in items])
            genesis, store, chain, mempool, gossip = _bench_member(tmp, key)
            kw = {"chain_id": "bench", "member": "m0", "client": bytes(key.verify_key)}
            node = SimpleNamespace(genesis=genesis, tokenizer=tok, member_key=key,
                                   cfg=SimpleNamespace(name="m0", mempool=SimpleNamespace(sign_batch=16)),
                                   chain=chain, store=store, mempool=mempool, gossip=gossip,
                                   disk=SimpleNamespace(full=False))
            node.rpc = SimpleNamespace(admission=Admission(node, SimpleNamespace(submitted=lambda h: None)))
            for name in ("own_body", "sign_own", "prefetch_tokens", "submit"):
                setattr(node, name, getattr(Node, name).__get__(node))
            node.own_txs = OwnTxs(chain, mempool, "m0", max_pending=2 * n_events)

            async def before(call) -> None:
                # prepare_event: pass 1 over the event and the tokens (into the cache) ...
                event = call["event"]
                collect = _Collect(tok.local)
                event_to_tx_fields(event, collect, **kw)
                await tok.tokens(sorted(set(collect.items)))
                # ... then submit_event: pass 1 again, the tokens, pass 2, sign, decode the own tx again
                collect = _Collect(tok.local)
                event_to_tx_fields(event, collect, **kw)
                wanted = sorted(set(collect.items))
                tokens = dict(zip(wanted, await tok.tokens(wanted), strict=True))
                fields = event_to_tx_fields(event, _Resolved(tok.local, tokens), **kw)
                raw = sign_tx(fields, key)
                chain.check_own_tx(raw)
                h = tx_hash(raw)  # _answer
                if h not in mempool and not store.has_tx(h):
                    node.rpc.admission.gate()
                assert store.get_tx(h) is None  # Admission.admit
                h = tx_hash(raw)  # Node.submit(checked=False)
                assert store.get_tx(h) is None
                chain.check_tx(raw)
                gossip.admit([(h, raw)])

            async def this(call) -> None:
                await prepare_event(node, call)
                answer = await submit_event(node, call, None)
                assert answer["status"] == "pending", answer

            async def feed(step) -> float:
                c0 = time.thread_time()
                for call in calls:
                    await step(call)
                return time.thread_time() - c0

            if mode == "before":
                tok.memo_size = 0
            cpu = trio.run(feed, before if mode == "before" else this)
            assert len(mempool) == n_events, (mode, len(mempool))
            result = cpu * 1e6 / n_events
            mempool.close()
            store.close()
            tok.close()
            return result

    return {mode: run(mode) for mode in ("before", "this")}


def psk_cipher(rounds: int = 3) -> dict:
    """In-process: the private-network layer's Salsa20 (every frame of every p2p connection, each way),
    pycryptodome's (baseline) against network.pnet.new_cipher, on a mix of frame sizes like a node's at
    full load (votes of ~200-400 B, gossip batches of a few KB to 64 KB); identical output checked. CPU us
    per frame, best of `rounds`."""
    from Crypto.Cipher import Salsa20

    from network.pnet import new_cipher

    rng = __import__("random").Random(3)
    frames = [rng.randbytes(rng.choice((140, 220, 380, 380, 600, 2_400, 9_000, 65_000))) for _ in range(4000)]
    key, nonce = bytes(range(32)), bytes(8)
    a, b = Salsa20.new(key=key, nonce=nonce), new_cipher(key, nonce)
    for f in frames[:500]:
        assert a.encrypt(f) == b.encrypt(f)
    best = {}
    for name, make in (("pycryptodome", lambda: Salsa20.new(key=key, nonce=nonce)), ("this", lambda: new_cipher(key, nonce))):
        times = []
        for _ in range(rounds):
            c = make()
            c0 = time.thread_time()
            for f in frames:
                c.encrypt(f)
            times.append(time.thread_time() - c0)
        best[name] = min(times) * 1e6 / len(frames)
    return best


def msgpack_pack(items: list[bytes]) -> bytes:
    import msgpack

    return msgpack.packb(items, use_bin_type=True)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def ab_pairs(n: int, seconds: float, extra: dict, ab: dict) -> list[tuple[dict, dict]]:
    """A/B on one size: the baseline config, then this code, each on a fresh testnet, alternated for
    RADCHAIN_BENCH_AB_ROUNDS rounds (default 1), max load only. Prints each run and the ratios of each
    round and of the means: on a shared machine only ratios measured back to back mean anything."""
    rounds = int(os.environ.get("RADCHAIN_BENCH_AB_ROUNDS", "1"))
    base = {**extra, **{k: {**extra.get(k, {}), **v} for k, v in ab.items()}}
    pairs = []
    for r in range(rounds):
        off = measure_size(n, seconds, 0, base)["max"]
        on = measure_size(n, seconds, 0, extra)["max"]
        pairs.append((off, on))
        for label, t in (("baseline " + str(ab), off), ("this code", on)):
            print(f"  A/B {n} nodes, round {r + 1}, {label}: {t['tx_per_s']:.0f} tx/s, "
                  f"CPU {_mean(t['cpu_us_per_tx']):.0f} us/tx/node, event-loop thread "
                  f"{_mean(t['main_us_per_tx']):.0f} us/tx, wire {_mean(t['wire_bytes_per_tx']):.0f} B/tx/node, "
                  f"{t['blocks'] / t['window_s']:.0f} blocks/s of {t['committed'] / max(1, t['blocks']):.0f} txs "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        print(f"  A/B round {r + 1} ratios (this code / baseline): {_ab_ratios([off], [on])}", flush=True)
    if rounds > 1:
        ratios = _ab_ratios([a for a, _ in pairs], [b for _, b in pairs])
        print(f"  A/B mean ratios over {rounds} rounds: {ratios}", flush=True)
    return pairs


def _ab_ratios(offs: list[dict], ons: list[dict]) -> str:
    def m(rows, key, per_node=True):
        return _mean([_mean(t[key]) if per_node else t[key] for t in rows])

    return (f"tx/s {m(ons, 'tx_per_s', False) / max(1e-9, m(offs, 'tx_per_s', False)):.2f}x, "
            f"CPU per tx {m(ons, 'cpu_us_per_tx') / m(offs, 'cpu_us_per_tx'):.2f}x, "
            f"event-loop thread per tx {m(ons, 'main_us_per_tx') / m(offs, 'main_us_per_tx'):.2f}x, "
            f"wire bytes per tx {m(ons, 'wire_bytes_per_tx') / m(offs, 'wire_bytes_per_tx'):.2f}x")


def latency_only(n: int, rate: float, seconds: float, extra: dict) -> dict:
    """RADCHAIN_BENCH_LATENCY_ONLY=<tx/s>: one testnet, the half-load step alone at that offered rate, with
    the commit-mode probes (a quick before/after of a latency change). With RADCHAIN_TRACE_LATENCY=1 in the
    environment the nodes log where txs wait (node.runtime.latency_trace); those lines are printed."""
    with tempfile.TemporaryDirectory(prefix=f"radchain-lat{n}-") as tmp:
        net = LocalTestnet(Path(tmp), n, config_extra={**UNTHROTTLED, **extra})
        try:
            net.start()
            net.wait_ready(timeout=120)
            warm_token_caches(net)
            step = run_step(net, rate, seconds, f"n{n}lat", probes=PROBES, n_clients=CLIENTS if rate else 0)
        finally:
            net.stop_all()
        for info in net.nodes:
            for line in (info.home / "node.log").read_text(errors="replace").splitlines():
                if "latency trace" in line:
                    print("   ", line[-400:])
    print(f"  {n} nodes, offered {rate:.0f} tx/s: committed {step['tx_per_s']:.0f} tx/s, submit -> commit "
          f"p50 {step['p50_ms']:.0f} ms p99 {step['p99_ms']:.0f} ms ({step['samples']} commit-mode calls; per "
          f"{TAIL_WINDOW_S:.0f} s: {_by_window(step)}), "
          f"CPU {_mean(step['cpu_us_per_tx']):.0f} us/tx/node, {step['blocks'] / step['window_s']:.0f} blocks/s of "
          f"{step['committed'] / max(1, step['blocks']):.0f} txs (load average {os.getloadavg()[0]:.1f})", flush=True)
    return step


def trials(n: int, k: int, max_seconds: float, half_seconds: float, extra: dict) -> list[dict]:
    """RADCHAIN_BENCH_TRIALS=<k>: measure_size k times (fresh testnet each), one line per trial and a count."""
    rows = []
    for i in range(k):
        row = measure_size(n, max_seconds, half_seconds, extra)
        rows.append(row)
        top, half = row["max"], row["half"]
        print(f"  trial {i + 1}/{k}: max {top['tx_per_s']:.0f} tx/s, CPU {_mean(top['cpu_us_per_tx']):.0f} us/tx/node; "
              f"half {half['tx_per_s']:.0f} tx/s, p50 {half['p50_ms']:.0f} ms p99 {half['p99_ms']:.0f} ms (per "
              f"{TAIL_WINDOW_S:.0f} s: {_by_window(half)}), {half['blocks'] / half['window_s']:.0f} blocks/s of "
              f"{half['committed'] / max(1, half['blocks']):.0f} txs, {half['refused']} calls refused", flush=True)
    met = sum(r["half"]["p50_ms"] <= 100 and r["half"]["p99_ms"] <= 400 for r in rows)
    p99_met = sum(r["half"]["p99_ms"] <= 400 for r in rows)
    print(f"{n} nodes, {k} trials: half-load p50 <= 100 ms and p99 <= 400 ms in {met} of {k}, p99 alone in "
          f"{p99_met}; max {min(r['max']['tx_per_s'] for r in rows):.0f}-{max(r['max']['tx_per_s'] for r in rows):.0f} "
          f"tx/s (load average now {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def main() -> None:
    from bench.testnet import raw_pipeline_rate

    if os.environ.get("RADCHAIN_BENCH_LATENCY_ONLY"):
        sizes = [int(x) for x in os.environ.get("RADCHAIN_BENCH_SIZES", "4").split(",")]
        latency_only(sizes[0], float(os.environ["RADCHAIN_BENCH_LATENCY_ONLY"]),
                     float(os.environ.get("RADCHAIN_BENCH_TABLE_S", "20")),
                     _config_extra(os.environ.get("RADCHAIN_BENCH_CONFIG", "")))
        return

    sizes = [int(x) for x in os.environ.get("RADCHAIN_BENCH_SIZES", "4,7,10,16").split(",")]
    sustain = float(os.environ.get("RADCHAIN_BENCH_SUSTAIN_S", "60"))
    table_s = float(os.environ.get("RADCHAIN_BENCH_TABLE_S", "20"))
    extra = _config_extra(os.environ.get("RADCHAIN_BENCH_CONFIG", ""))
    ab = _config_extra(os.environ.get("RADCHAIN_BENCH_AB", "mempool.sign_batch=1"))
    raw_rate = raw_pipeline_rate()
    raw_us = 1e6 / raw_rate
    print(f"baseline, single-process raw pipeline (verify + decode + batch write): {raw_rate:.0f} tx/s, "
          f"{raw_us:.0f} us/tx", flush=True)
    if extra:
        print(f"node config extra: {extra}", flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2-core machine; above 2, other work shares the "
          "cores and every absolute figure is depressed)", flush=True)

    if os.environ.get("RADCHAIN_BENCH_TRIALS"):
        trials(sizes[0], int(os.environ["RADCHAIN_BENCH_TRIALS"]), sustain, table_s, extra)
        return
    if os.environ.get("RADCHAIN_BENCH_AB_ONLY") and ab:
        ab_pairs(sizes[0], table_s, extra, ab)  # the A/B pairs alone (a quick decision on one change)
        return

    g = gossip_admission()
    print(f"gossip admission, in process, 2,000 txs in batches of 256 (real chain, LevelDB mempool): event-loop "
          f"CPU {g['inline']['loop_us']:.1f} us/tx with signatures checked inline (baseline), "
          f"{g['thread']['loop_us']:.1f} us/tx with the worker thread: ratio "
          f"{g['thread']['loop_us'] / g['inline']['loop_us']:.2f}x; wall {g['inline']['wall_us']:.0f} -> "
          f"{g['thread']['wall_us']:.0f} us/tx", flush=True)

    gg = gossip_grouped()
    print(f"gossip in small batches, in process (3,000 txs, 6 per batch, 3 members): CPU {gg['per batch'][1]:.1f} "
          f"us/tx for the process (event loop {gg['per batch'][0]:.1f}) with a worker-thread hand-off per batch "
          f"(baseline), {gg['grouped'][1]:.1f} ({gg['grouped'][0]:.1f}) with one per 6 batches waiting together: "
          f"ratio {gg['grouped'][1] / gg['per batch'][1]:.2f}x", flush=True)
    sp = submit_path()
    print(f"submit path, in process (prepare_event + submit_event per call of a batch, warm tokens, no HTTP): "
          f"event-loop CPU {sp['before']:.1f} us per call with the code before this round (baseline), "
          f"{sp['this']:.1f} us with this code: ratio {sp['this'] / sp['before']:.2f}x", flush=True)
    pc = psk_cipher()
    print(f"private-network Salsa20, in process (a node's frame-size mix): {pc['pycryptodome']:.1f} us per frame "
          f"with pycryptodome (baseline), {pc['this']:.1f} us with libsodium through network.pnet: ratio "
          f"{pc['this'] / pc['pycryptodome']:.2f}x", flush=True)

    rows = []
    for i, n in enumerate(sizes):
        row = measure_size(n, sustain if i == 0 else table_s, table_s, extra)
        rows.append(row)
        top = row["max"]
        print(f"  {n} nodes: {top['tx_per_s']:.0f} committed tx/s over {top['window_s']:.0f} s, "
              f"CPU {_mean(top['cpu_us_per_tx']):.0f} us/tx/node; half load p50 {row['half']['p50_ms']:.0f} ms "
              f"p99 {row['half']['p99_ms']:.0f} ms", flush=True)
        if i == 0 and ab:
            ab_pairs(n, table_s, extra, ab)

    first = rows[0]
    top = first["max"]
    print(f"\n{first['n']} nodes, {CLIENTS} load processes, sustained {top['window_s']:.0f} s "
          f"(after {WARMUP_S:.0f} s warm-up): {top['tx_per_s']:.0f} committed tx/s (goal 3,500: "
          f"{top['tx_per_s'] / 3500:.2f}x); baseline raw pipeline {raw_rate:.0f} tx/s: "
          f"ratio {top['tx_per_s'] / raw_rate:.2f}x; {top['refused']} calls refused with retry_after")
    cpu = _mean(top["cpu_us_per_tx"])
    main_us = _mean(top["main_us_per_tx"])
    native_us = _mean(top["native_us_per_tx"])
    print(f"CPU per committed tx per node: {' '.join(f'{c:.0f}' for c in top['cpu_us_per_tx'])} us "
          f"(mean {cpu:.0f} us, goal <= 100: {cpu / 100:.2f}x; main thread {main_us:.0f} us, LevelDB's "
          f"background thread {native_us:.0f} us, trio's worker threads {cpu - main_us - native_us:.0f} us); "
          f"baseline raw pipeline {raw_us:.0f} us/tx: ratio {cpu / raw_us:.2f}x")
    for cores in (2, 8):
        bound = min(1e6 / main_us if main_us else float("inf"), cores * 1e6 / cpu)
        print(f"projection, one node per machine with {cores} cores (CPU bound only: the event loop thread "
              f"at {main_us:.0f} us/tx, all threads at {cpu:.0f} us/tx): {bound:,.0f} tx/s")
    print(f"chain store on disk after the max step: {top['store_bytes_per_tx']:.0f} bytes per tx (node 0's "
          "LevelDB files as they stand, uncompacted log and level-0 tables included)")
    half = first["half"]
    print(f"submit -> commit at half load ({half['tx_per_s']:.0f} tx/s committed, {half['samples']} commit-mode "
          f"calls): p50 {half['p50_ms']:.0f} ms (goal 100: {half['p50_ms'] / 100:.2f}x), "
          f"p99 {half['p99_ms']:.0f} ms (goal 400: {half['p99_ms'] / 400:.2f}x); p50/p99 per {TAIL_WINDOW_S:.0f} s: "
          f"{_by_window(half)}")
    blocks_s = [step["blocks"] / step["window_s"] for step in (top, half)]
    print(f"blocks: {blocks_s[0]:.0f}/s of {top['committed'] / max(1, top['blocks']):.0f} txs at max load, "
          f"{blocks_s[1]:.0f}/s of {half['committed'] / max(1, half['blocks']):.0f} txs at half load; cores per "
          f"node {_mean(top['cores']):.2f} and {_mean(half['cores']):.2f}")

    print(f"\n{'nodes':>5} {'tx/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/tx/node':>15} {'main thr us':>11} "
          f"{'wire B/tx/node':>14} {'cores/node':>10}")
    for row in rows:
        top, half = row["max"], row["half"]
        print(f"{row['n']:>5} {top['tx_per_s']:>7.0f} {half['p50_ms']:>7.0f} {half['p99_ms']:>7.0f} "
              f"{_mean(top['cpu_us_per_tx']):>15.0f} {_mean(top['main_us_per_tx']):>11.0f} "
              f"{_mean(top['wire_bytes_per_tx']):>14.0f} {_mean(top['cores']):>10.2f}")
    print("(tx/s, CPU and wire at max load; p50/p99 from commit-mode calls at half the max load; "
          f"load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
