"""GET /metrics: the node's health in the Prometheus text exposition format (version 0.0.4).

Gauges are read from the node when scraped; counters count since the process started (Prometheus
handles resets). ``radchain_commit_latency_seconds`` is the time from a tx's admission through this node's
RPC to its block being executed here: what an integrator waits for in commit mode.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict

from consensus.replica import VIEW_CHANGE_TRIGGERS

# Seconds. PBFT on a LAN commits in well under a second; the tail buckets show view changes and sync.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TRACK_SUBMITTED = 100_000  # txs whose submission time is remembered for the histogram


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    def __init__(self, node, method_names: set[str]):
        self.node = node
        self.method_names = method_names
        self.requests: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.blocks = 0
        self.txs = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self._submitted: OrderedDict[bytes, float] = OrderedDict()
        self.ws_connections = 0
        self.ws_subscriptions = 0
        self.connection_caps = None  # node.rpc.http.ConnectionCaps, set when the RPC server starts

    # ------------------------------------------------------------------ recording
    def request(self, method: str) -> None:
        self.requests[method if method in self.method_names else "other"] += 1

    def error(self, code: int) -> None:
        self.errors[code] += 1

    def submitted(self, h: bytes) -> None:
        if h not in self._submitted:
            self._submitted[h] = time.monotonic()
            if len(self._submitted) > TRACK_SUBMITTED:
                self._submitted.popitem(last=False)

    def on_commit(self, block) -> None:
        self.blocks += 1
        self.txs += len(block.tx_hashes)
        if self._submitted:
            now = time.monotonic()
            for h in block.tx_hashes:
                t = self._submitted.pop(h, None)
                if t is not None:
                    self.latency.observe(now - t)

    # ------------------------------------------------------------------ exposition
    def render(self) -> str:
        node = self.node
        status = node.status()
        replica_stats = getattr(node.replica, "stats", {})
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            if isinstance(samples, (int, float)):
                samples = [("", samples)]
            for labels, value in samples:
                out.append(f"{name}{labels} {value}")

        metric("radchain_height", "gauge", "Height of the last executed block.", status["height"])
        metric("radchain_view", "gauge", "Current PBFT view.", status["view"])
        metric("radchain_view_changes_total", "counter", "View changes this replica started.",
               replica_stats.get("view_changes", 0))
        metric("radchain_view_change_triggers_total", "counter",
               "Why this replica moved towards a view change: nothing committed while work waited "
               "(progress_timeout), a tx held too long unproposed (request_timeout), a primary delivering "
               "under the throughput floor (throughput_floor), a view change that found no NEW-VIEW in time "
               "(view_change_timeout), f+1 complaints (complaints), f+1 members' VIEW-CHANGEs for a later view "
               "(joined).",
               [(f'{{trigger="{name}"}}', replica_stats.get(key, 0)) for name, key in VIEW_CHANGE_TRIGGERS.items()])
        loop_lag = getattr(node, "loop_lag", None)
        if loop_lag is not None:
            metric("radchain_event_loop_lag_seconds", "gauge",
                   "The longest the node's event loop woke late in the last 10 s (a 100 ms sleep measured against "
                   "the clock): a node whose loop stalls reads nothing from its peers meanwhile.",
                   round(loop_lag.worst(), 4))
        metric("radchain_progress_waits_total", "counter",
               "Progress timeouts that did not start a view change because the next block was already certified "
               "by 2f+1 members and only its payload was still on its way to this replica (it was behind).",
               replica_stats.get("progress_waited_certified", 0))
        metric("radchain_consensus_dropped_total", "counter",
               "Consensus messages and events the replica dropped, by reason (above_window: beyond its "
               "watermarks, as a replica that fell behind sees the others' votes; stale_*; bad_*; ...).",
               [(f'{{reason="{key[5:]}"}}', n) for key, n in sorted(replica_stats.items())
                if key.startswith("drop_")] or [('{reason="above_window"}', 0)])
        metric("radchain_peers", "gauge", "Members connected to this node.", status["peers"])
        net_stats = getattr(node.net, "stats", {})
        metric("radchain_p2p_rejected_handshakes_total", "counter",
               "Connections refused at the handshake: the peer is not a member (or no longer one).",
               net_stats.get("rejected_handshakes", 0))
        metric("radchain_p2p_dropped_frames_total", "counter",
               "Frames not sent: the member's queue was full, or it had no session for over stale_after s.",
               [('{why="queue_full"}', net_stats.get("dropped_queue_full", 0)),
                ('{why="peer_down"}', net_stats.get("dropped_peer_down", 0))])
        metric("radchain_p2p_frames_total", "counter",
               "Frames this node sent to and received from other members (consensus, gossip, requests).",
               [('{direction="out"}', net_stats.get("frames_out", 0)), ('{direction="in"}', net_stats.get("frames_in", 0))])
        metric("radchain_p2p_bytes_total", "counter", "Frame bytes sent to and received from other members.",
               [('{direction="out"}', net_stats.get("bytes_out", 0)), ('{direction="in"}', net_stats.get("bytes_in", 0))])
        metric("radchain_p2p_writes_total", "counter",
               "Stream writes: frames queued for a member together go out in one write.", net_stats.get("writes", 0))
        gossip_stats = getattr(getattr(node, "gossip", None), "stats", {})
        metric("radchain_gossip_txs_total", "counter",
               "Txs gossip brought from other members: admitted to the mempool, refused (mempool full, bad or "
               "unauthorised tx), and this node's own pending txs sent again after rebroadcast_after s.",
               [(f'{{result="{k}"}}', gossip_stats.get(key, 0)) for k, key in
                (("admitted", "txs_admitted"), ("refused", "txs_refused"), ("rebroadcast", "rebroadcast"))])
        backlog = getattr(node, "gossip_backlog", None)
        if backlog is not None:
            metric("radchain_gossip_backlog_batches", "gauge",
                   "Tx batches from other members waiting for their checks (a queue per member, served in turn by bytes).",
                   backlog.batches)
            metric("radchain_gossip_backlog_dropped_total", "counter",
                   "Tx batches from other members dropped unchecked: their member already had its bound waiting "
                   "(its txs come again with its rebroadcast, or are fetched when a proposal names them).",
                   backlog.dropped)
        driver = getattr(node, "driver", None)
        driver_stats = getattr(driver, "stats", {})
        metric("radchain_consensus_events_total", "counter",
               "Events the consensus driver fed to the replica (messages, timers, work and commits).",
               driver_stats.get("events", 0))
        metric("radchain_wal_records_total", "counter", "Consensus WAL records written.", driver_stats.get("wal_records", 0))
        metric("radchain_wal_flushes_total", "counter", "Consensus WAL writes made durable (fsync when enabled).",
               getattr(getattr(driver, "wal", None), "flushes", 0))
        fsyncs = getattr(getattr(driver, "wal", None), "fsync_seconds", None)
        if fsyncs is not None:
            out.append("# HELP radchain_wal_fsync_seconds How long each consensus WAL fsync took (a vote waits for it).")
            out.append("# TYPE radchain_wal_fsync_seconds histogram")
            out.extend(fsyncs.lines("radchain_wal_fsync_seconds"))
        scores = node.peer_scores.snapshot()
        names = {m.peer_id: m.name for m in node.genesis.members}
        metric("radchain_peer_misbehaviour_score", "gauge",
               "Decaying score of malformed input from each member (node.runtime.peerscore); blocked at 100.",
               [(f'{{member="{names.get(p, "?")}"}}', s["score"]) for p, s in sorted(scores.items())]
               or [('{member=""}', 0)])
        metric("radchain_members", "gauge", "Consortium members (validators).", status["members"])
        metric("radchain_mempool_txs", "gauge", "Txs waiting in the mempool.", status["mempool"])
        metric("radchain_blocks_committed_total", "counter", "Blocks executed by this process.", self.blocks)
        metric("radchain_txs_committed_total", "counter", "Txs in blocks executed by this process.", self.txs)
        metric("radchain_syncing", "gauge", "1 while catching up by block sync.", int(bool(status["syncing"])))
        metric("radchain_sync_target_height", "gauge", "Height block sync is catching up to.",
               getattr(node.sync, "target", 0))
        out.append("# HELP radchain_commit_latency_seconds Admission through this node's RPC to commit.")
        out.append("# TYPE radchain_commit_latency_seconds histogram")
        out.extend(self.latency.lines("radchain_commit_latency_seconds"))
        metric("radchain_rpc_requests_total", "counter", "JSON-RPC calls by method.",
               [(f'{{method="{m}"}}', n) for m, n in sorted(self.requests.items())] or [('{method="status"}', 0)])
        metric("radchain_rpc_errors_total", "counter", "JSON-RPC errors by code.",
               [(f'{{code="{c}"}}', n) for c, n in sorted(self.errors.items())] or [('{code="-32603"}', 0)])
        app = getattr(node, "rpc", None)
        edge = [("over_connection_cap", self.connection_caps.refused if self.connection_caps else None),
                ("slow_body", getattr(app, "slow_bodies", None)),
                ("host_origin_or_ws_token", getattr(app, "refused_edge", None)),
                ("client_hung_up", getattr(app, "disconnects", None))]
        metric("radchain_rpc_edge_refusals_total", "counter",
               "Connections and requests the RPC edge refused or lost, by reason (each also a counted log line).",
               [(f'{{reason="{reason}"}}', counted.total if counted is not None else 0) for reason, counted in edge])
        metric("radchain_ws_connections", "gauge", "Open WebSocket connections.", self.ws_connections)
        metric("radchain_ws_subscriptions", "gauge", "Active WebSocket subscriptions.", self.ws_subscriptions)
        metric("radchain_uptime_seconds", "gauge", "Seconds since the node started.", status["uptime_s"])
        return "\n".join(out) + "\n"
