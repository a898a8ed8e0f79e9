"""Issue 17: a simulated 100-hospital consortium: where PBFT's O(n^2) votes bite, and what batching does.

`python -m bench bench.consortium` (in `make bench`). The real consensus replicas (consensus.replica, the
application callbacks of the consensus simulator: consensus.simulator.SimApp) run in this one process
under a discrete-event WAN scheduler written here (consensus/ is not touched): every hospital is a point
in a 1,500 x 1,000 km region, one-way latency 2 ms + distance / 100 km per ms (fibre at 2/3 c with a
path stretch of 2) + up to 1 ms jitter, and every node is one core that handles its messages in turn, so
CPU saturation shows up as queueing.

CPU cost model, measured on this machine in the same run:
- the replica's own work per message: `time.thread_time()` around every `Replica.handle` of the run
  (keyed-hash signatures inside the simulation, so it runs in seconds at n = 100), plus
- Ed25519: every sign and verify the replicas make is counted and charged at the cost of one PyNaCl
  sign / verify measured here (what consensus.crypto.Ed25519Crypto does in the node), plus
- transport: py-libp2p (Noise, yamux, PSK) CPU per message, from bench.network's 4-process all-to-all
  burst (each worker's own CPU from the start signal to its last message received), half charged to the
  sender, half to the receiver.
  RADCHAIN_BENCH_MSG_US=<us> skips that measurement (uses the given value).

The primary always has work (a full mempool), proposes blocks of B txs (RADCHAIN_BENCH_BLOCK_TXS, default
2,000 = max_block_txs) as compact payloads (32 bytes per tx), pipeline 4, checkpoint every 16 blocks;
the run covers RADCHAIN_BENCH_CONSORTIUM_BLOCKS committed blocks (default 32) per size
(RADCHAIN_BENCH_CONSORTIUM_SIZES, default 4,16,31,64,100). Per size it prints messages per block (all
nodes, and sent+received per node), consensus CPU per block per node, the commit latency, and what that
leaves for txs: the tx/s one core per node can sustain at the per-tx cost of the raw pipeline (measured in
the same run) with blocks of B txs, and the block size at which consensus costs at most 10 % of a node's
per-tx work.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import random
import statistics
import time
from collections import Counter

from consensus import messages as m
from consensus.actions import Broadcast, CancelTimer, Commit, Persist, RequestProposal, Send, SetTimer
from consensus.config import Config
from consensus.crypto import KeyedHashCrypto
from consensus.events import Executed, MessageReceived, ProposalReady, TimerFired, WorkPending
from consensus.replica import Replica
from consensus.simulator import SimApp

REGION_KM = (1500.0, 1000.0)
BASE_MS, KM_PER_MS, JITTER_MS = 2.0, 100.0, 1.0
TX_BYTES = 390  # a typical audit tx on the wire (docs/PERFORMANCE.md: 387 B of LevelDB per tx)


class CountingCrypto:
    """KeyedHashCrypto that counts signs and verifies (charged later at the measured Ed25519 cost)."""

    def __init__(self, inner: KeyedHashCrypto):
        self.inner = inner
        self.signs = 0
        self.verifies = 0

    def sign(self, data: bytes) -> bytes:
        self.signs += 1
        return self.inner.sign(data)

    def verify(self, member: int, data: bytes, sig: bytes) -> bool:
        self.verifies += 1
        return self.inner.verify(member, data, sig)


class WanConsortium:
    def __init__(self, n: int, block_txs: int, seed: int = 17, send_us: float = 5.0, recv_us: float = 5.0,
                 sign_us: float = 20.0, verify_us: float = 60.0):
        self.n, self.block_txs = n, block_txs
        self.rng = random.Random(seed)
        secrets = KeyedHashCrypto.secrets_for(n, seed)
        members = tuple(hashlib.sha256(s).digest() for s in secrets)
        self.config = Config(chain_id=f"wan-{n}", members=members)
        self.cryptos = [CountingCrypto(KeyedHashCrypto(i, secrets)) for i in range(n)]
        self.app = SimApp()
        self.replicas = [Replica(self.config, i, self.cryptos[i], self.app) for i in range(n)]
        pos = [(self.rng.uniform(0, REGION_KM[0]), self.rng.uniform(0, REGION_KM[1])) for _ in range(n)]
        self.lat = [[(BASE_MS + math.dist(pos[i], pos[j]) / KM_PER_MS) / 1000 for j in range(n)] for i in range(n)]
        self.send_s, self.recv_s = send_us / 1e6, recv_us / 1e6
        self.sign_s, self.verify_s = sign_us / 1e6, verify_us / 1e6
        self.now = 0.0
        self.free = [0.0] * n            # when each node's core is next free
        self.cpu = [0.0] * n             # simulated CPU seconds charged to each node
        self.replica_cpu = [0.0] * n     # of which measured Replica.handle time
        self.sent = Counter()            # messages by kind, all nodes
        self.bytes_sent = [0] * n
        self.payload_bytes = [0] * n     # of which compact payload hashes (pre-prepares)
        self.msgs_in = [0] * n
        self.msgs_out = [0] * n
        self.timers: list[dict] = [{} for _ in range(n)]
        self.heights = [0] * n
        self.states = [[b"\0" * 32] for _ in range(n)]
        self.proposed_at: dict[int, float] = {}
        self.committed_at: dict[int, list[float]] = {}
        self._q: list = []
        self._seq = 0
        self.rid = 0

    # ------------------------------------------------------------------ scheduling
    def push(self, at: float, node: int, event) -> None:
        self._seq += 1
        heapq.heappush(self._q, (at, self._seq, node, event))

    def run(self, blocks: int, limit_s: float = 600.0) -> None:
        for i in range(self.n):
            self.handle(i, None, 0.0)
        while self._q and min(self.heights) < blocks:
            at, _, node, event = heapq.heappop(self._q)
            if type(event) is tuple:  # ("timer", timer, generation)
                _, timer, gen = event
                if self.timers[node].get(timer) != gen:
                    continue
                event = TimerFired(timer)
            self.handle(node, event, at)
            if at > limit_s:
                raise RuntimeError(f"n={self.n}: only {min(self.heights)} blocks in {limit_s} s of simulated time")

    def handle(self, i: int, event, at: float) -> None:
        """Node i handles one event on its core: starts when the core is free, costs measured replica CPU +
        the modelled signature and transport costs; what it sends leaves when it is done."""
        start = max(at, self.free[i])
        self.now = start
        crypto = self.cryptos[i]
        s0, v0 = crypto.signs, crypto.verifies
        c0 = time.thread_time()
        actions = self.replicas[i].start() if event is None else self.replicas[i].handle(event)
        actions = list(actions or ())
        spent = time.thread_time() - c0
        self.replica_cpu[i] += spent
        cost = spent + (crypto.signs - s0) * self.sign_s + (crypto.verifies - v0) * self.verify_s
        if type(event) is MessageReceived:
            cost += self.recv_s
            self.msgs_in[i] += 1
        outgoing, follow = [], []
        for a in actions:
            t = type(a)
            if t is Broadcast:
                for j in range(self.n):
                    if j != i:
                        outgoing.append((j, a.data))
            elif t is Send:
                if a.to != i:
                    outgoing.append((a.to, a.data))
            elif t is SetTimer:
                gen = self.timers[i].get(a.timer, 0) + 1
                self.timers[i][a.timer] = gen
                self.push(start + a.seconds, i, ("timer", a.timer, gen))
            elif t is CancelTimer:
                self.timers[i][a.timer] = self.timers[i].get(a.timer, 0) + 1
            elif t is RequestProposal:
                self.rid += self.block_txs
                # the simulator's payload format, one id per block (what the txs are does not matter here)
                payload = b"blk:%d:%d:%d:%d" % (a.height, i, self.rid, self.rid)
                self.proposed_at.setdefault(a.height, start)
                follow.append(ProposalReady(a.height, payload))
            elif t is Commit:
                h = a.height
                self.heights[i] = h
                self.committed_at.setdefault(h, []).append(start)
                state = hashlib.sha256(self.states[i][-1] + a.digest).digest()
                self.states[i].append(state)
                follow.append(Executed(h, state))
            elif t is Persist:
                pass
        cost += len(outgoing) * self.send_s
        done = start + cost
        self.free[i] = done
        self.cpu[i] += cost
        for j, data in outgoing:
            kind = data[1] if len(data) > 1 else 0
            self.sent[kind] += 1
            size = len(data)
            if kind == m.PREPREPARE:
                size += 32 * self.block_txs  # the compact payload's hashes (the simulator's payload is tiny)
                self.payload_bytes[i] += 32 * self.block_txs
            self.bytes_sent[i] += size
            self.msgs_out[i] += 1
            jitter = self.rng.uniform(0, JITTER_MS) / 1000
            self.push(done + self.lat[i][j] + jitter, j, MessageReceived(i, data))
        for ev in follow:
            self.push(done, i, ev)
        if event is None or type(event) is Executed:
            # the mempool never runs dry: every node always reports plenty of pending work
            self.push(done, i, WorkPending(10 * self.block_txs))


def measure_crypto() -> tuple[float, float]:
    """PyNaCl Ed25519 sign and verify of a vote-sized message, microseconds each."""
    from nacl.signing import SigningKey

    key = SigningKey(b"\x01" * 32)
    msg = b"radchain/consensus/v1\0" + b"x" * 80
    signed = key.sign(msg)
    vk = key.verify_key
    n = 2000
    c0 = time.thread_time()
    for _ in range(n):
        key.sign(msg)
    sign_us = (time.thread_time() - c0) * 1e6 / n
    c0 = time.thread_time()
    for _ in range(n):
        vk.verify(signed)
    return sign_us, (time.thread_time() - c0) * 1e6 / n


def measure_transport() -> float:
    """py-libp2p CPU per message (send + receive), microseconds: bench.network's all-to-all burst, each worker's
    CPU from GO to its last message received (start-up and connecting, which once swamped the difference of two
    runs' getrusage(RUSAGE_CHILDREN) and read "0 us", left out)."""
    from bench.network import _run

    r = _run("p2p", 4, 4000, 300)
    if r["cpu"] <= 0:
        raise RuntimeError("bench.network workers reported no CPU for the burst")
    return r["cpu"] * 1e6 / r["total"]


def raw_pipeline_cpu_us(n: int = 4000) -> float:
    """bench.ledger's raw pipeline (PyNaCl verify + msgpack decode + plyvel batch write, blocks of 500), CPU
    microseconds per tx of this thread (not wall time: the machine may be shared)."""
    import tempfile

    from nacl.signing import SigningKey

    from bench.ledger import RawPipeline, make_txs

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    txs = make_txs(keys, n)
    with tempfile.TemporaryDirectory(prefix="radchain-raw-") as tmp:
        raw = RawPipeline(os.path.join(tmp, "raw"), False)
        c0 = time.thread_time()
        for i in range(0, n, 500):
            raw.block(txs[i:i + 500])
        cpu = time.thread_time() - c0
        raw.close()
    return cpu * 1e6 / n


def main() -> None:

    sizes = [int(x) for x in os.environ.get("RADCHAIN_BENCH_CONSORTIUM_SIZES", "4,16,31,64,100").split(",")]
    blocks = int(os.environ.get("RADCHAIN_BENCH_CONSORTIUM_BLOCKS", "32"))
    block_txs = int(os.environ.get("RADCHAIN_BENCH_BLOCK_TXS", "2000"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)", flush=True)
    sign_us, verify_us = measure_crypto()
    msg_env = os.environ.get("RADCHAIN_BENCH_MSG_US")
    msg_us = float(msg_env) if msg_env else measure_transport()
    tx_us = raw_pipeline_cpu_us()
    raw_rate = 1e6 / tx_us
    print(f"cost model, measured here: Ed25519 sign {sign_us:.0f} us, verify {verify_us:.0f} us; py-libp2p "
          f"{msg_us:.0f} us CPU per message (send + receive){' (given)' if msg_env else ''}; per-tx ledger work "
          f"(raw pipeline CPU, the baseline) {tx_us:.0f} us/tx ({raw_rate:,.0f} tx/s per core)", flush=True)
    print(f"WAN: hospitals in a {REGION_KM[0]:.0f} x {REGION_KM[1]:.0f} km region, one-way {BASE_MS:g} ms + "
          f"distance / {KM_PER_MS:g} km/ms + <= {JITTER_MS:g} ms jitter; blocks of {block_txs} txs (compact: "
          f"32 B each), pipeline 4, checkpoint every 16; {blocks} blocks per size\n", flush=True)
    print(f"{'n':>4} {'msgs/block':>10} {'per node':>9} {'KB/blk/node':>11} {'primary MB/blk':>14} "
          f"{'CPU ms/blk/node':>15} {'(replica':>8} {'sig':>6} {'net)':>6} {'commit p50 ms':>13} "
          f"{'blk/s (CPU)':>11} {'tx/s @B':>8} {'B for 10%':>9} {'sim s':>6}")
    rows = []
    for n in sizes:
        w0 = time.perf_counter()
        sim = WanConsortium(n, block_txs, send_us=msg_us / 2, recv_us=msg_us / 2, sign_us=sign_us,
                            verify_us=verify_us)
        sim.run(blocks)
        done = min(sim.heights)
        total_msgs = sum(sim.sent.values())
        per_block = total_msgs / done
        per_node = (sum(sim.msgs_in) + sum(sim.msgs_out)) / n / done
        cpu_block = statistics.mean(sim.cpu) / done  # seconds per block per node
        replica_block = statistics.mean(sim.replica_cpu) / done
        sig_block = statistics.mean(
            c.signs * sign_us + c.verifies * verify_us for c in sim.cryptos) / 1e6 / done
        net_block = cpu_block - replica_block - sig_block
        kb = statistics.mean(sim.bytes_sent) / done / 1024
        primary_mb = max(sim.bytes_sent) / done / 1e6
        # the primary's uplink with full payloads instead (every tx again, ~TX_BYTES each, to n - 1 peers)
        full_mb = (max(sim.bytes_sent) - max(sim.payload_bytes) + max(sim.payload_bytes) * TX_BYTES / 32) / done / 1e6
        lat = [statistics.median(sim.committed_at[h]) - sim.proposed_at[h]
               for h in range(1, done + 1) if h in sim.proposed_at and h in sim.committed_at]
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        blk_s = 1 / cpu_block
        tx_s = block_txs / (cpu_block + block_txs * tx_us / 1e6)  # one core per node: consensus + txs
        b10 = math.ceil(cpu_block / (0.1 * tx_us / 1e6))  # consensus <= 10 % of the per-tx work
        rows.append((n, per_block, cpu_block, tx_s, b10, primary_mb, full_mb))
        print(f"{n:>4} {per_block:>10,.0f} {per_node:>9,.0f} {kb:>11,.0f} {primary_mb:>14.2f} {cpu_block * 1e3:>15.2f} "
              f"{replica_block * 1e3:>8.2f} {sig_block * 1e3:>6.2f} {net_block * 1e3:>6.2f} {p50:>13.0f} "
              f"{blk_s:>11,.0f} {tx_s:>8,.0f} {b10:>9,} {time.perf_counter() - w0:>6.1f}", flush=True)
    first = rows[0]
    print(f"\nper block, n={first[0]} -> n={rows[-1][0]}: messages x{rows[-1][1] / first[1]:.0f}, CPU per node "
          f"x{rows[-1][2] / first[2]:.0f} (n^2 would be x{(rows[-1][0] / first[0]) ** 2:.0f} messages, "
          f"x{rows[-1][0] / first[0]:.0f} per node)")
    for n, _pb, cpu_block, tx_s, b10, primary_mb, full_mb in rows:
        share = cpu_block / (cpu_block + block_txs * tx_us / 1e6)
        small = cpu_block / (cpu_block + 100 * tx_us / 1e6)
        print(f"  n={n:>3}: consensus is {share:.1%} of a node's core at blocks of {block_txs} ({small:.0%} at blocks "
              f"of 100): {tx_s:,.0f} tx/s per core (baseline, no consensus: {raw_rate:,.0f} tx/s: "
              f"{tx_s / raw_rate:.2f}x); blocks of >= {b10:,} txs keep it under 10 %. The primary's uplink: "
              f"{primary_mb:.1f} MB per block compact, {full_mb:.1f} MB with full payloads: at 1 Gbit/s "
              f"{block_txs * 125 / primary_mb:,.0f} vs {block_txs * 125 / full_mb:,.0f} tx/s")
    print(f"(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
