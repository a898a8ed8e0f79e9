"""A running RadChain node: one trio nursery owning the network, consensus driver, gossip, sync and RPC.

`Node(cfg)` opens everything from the home directory; `await nursery.start(node.run)` serves until
cancelled; `node.close()` flushes the WAL and closes LevelDB. Shutdown order matters: the network host is
closed first (py-libp2p crashes trio.run otherwise), then the stores.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import trio

from consensus.config import Config as ConsensusConfig
from consensus.crypto import Ed25519Crypto
from consensus.replica import Replica
from network import PeerNetwork
from network.identity import load_or_create_identity
from node.chain import Chain
from node.config import NodeConfig
from node.diskspace import MIN_FREE, POLL, DiskGuard, free_bytes
from node.driver import ConsensusDriver
from node.events import make_tx, sign_tx
from node.evidence import EvidenceLimiter, evidence_tx_fields
from node.genesis import Genesis
from node.gossip import CHANNEL as TX_CHANNEL
from node.gossip import TxGossip
from node.keys import load_member_key
from node.mempool import Mempool
from node.oprf_service import OprfService, RateLimiter
from node.peerscore import INTERNAL, PeerScores
from node.rpc.auth import TokenStore
from node.rpc.http import ConnectionCaps, serve_rpc
from node.rpc.methods import METHODS
from node.rpc.server import JsonRpcApp
from node.store import Store
from node.sync import CHANNEL as SYNC_CHANNEL
from node.sync import BlockSync
from node.tokenizer import Tokenizer, event_fields, prefetch
from node.tx import tx_hash
from node.wal import WriteAheadLog

log = logging.getLogger("radchain.node")

CONSENSUS_CHANNEL = "consensus"
GOSSIP_QUEUE = 64  # tx batches from members waiting for their checks
GOSSIP_SLICE = 0.01  # seconds of tx checks between two yields to the consensus driver


async def open_node(cfg: NodeConfig) -> Node:
    """Node(cfg), once its data directory has room: started (or restarted by systemd) on a full disk, the
    node logs one line and waits for space instead of failing to open LevelDB over and over."""
    data = cfg.home / "data"
    if free_bytes(data) < MIN_FREE:
        log.error("disk full: cannot open %s (%d bytes free on its filesystem); waiting until %d bytes are free",
                  data, free_bytes(data), MIN_FREE,
                  extra={"fields": {"path": str(data), "free_bytes": free_bytes(data)}})
        while free_bytes(data) < MIN_FREE:
            await trio.sleep(POLL)
        log.warning("disk space returned: %s has %d bytes free; starting", data, free_bytes(data))
    return Node(cfg)


class Node:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.genesis = Genesis.load(cfg.genesis_path)
        self.index = self.genesis.index_of(cfg.name)
        self.member_key = load_member_key(cfg.member_key_path)
        if bytes(self.member_key.verify_key) != self.genesis.members[self.index].pubkey:
            raise ValueError(f"{cfg.member_key_path} is not the key genesis lists for member {cfg.name!r}")
        self.started_at = time.time()

        self.store = Store(cfg.chain_dir, sync=cfg.store_sync)
        self.chain = Chain(self.genesis, self.store)
        self.mempool = Mempool(cfg.home / "data" / "mempool", cfg.mempool.max_txs,
                               min_backlog=cfg.mempool.min_backlog, drain_seconds=cfg.mempool.busy_after_s)
        self.wal = WriteAheadLog(cfg.wal_dir, fsync=cfg.consensus.wal_fsync)
        # A full disk pauses this node instead of killing it (node.diskspace): txs are refused, consensus
        # waits, and when space returns LevelDB is reopened and the node catches up by block sync.
        self.disk = DiskGuard(cfg.home / "data")
        self.disk.on_resume(self._reopen_stores)
        self.mempool.guard = self.disk

        self.peer_ids = [m.peer_id for m in self.genesis.members]
        self._index_of_peer = {pid: i for i, pid in enumerate(self.peer_ids)}
        identity = load_or_create_identity(cfg.p2p_key_path)
        self.net = PeerNetwork(identity, {m.peer_id: list(m.p2p) for m in self.genesis.members},
                               cfg.psk, cfg.p2p_listen, lock_dir=str(cfg.home / "data"))
        if self.net.peer_id != self.peer_ids[self.index]:
            raise ValueError(f"{cfg.p2p_key_path} is not the libp2p identity genesis lists for {cfg.name!r}")
        # Pseudonyms (docs/PSEUDONYMS.md): consortium identifiers by the threshold OPRF, answered for the
        # other members by oprf_service within a per-member rate; this hospital's own kinds by its local key.
        self.tokenizer = Tokenizer(cfg.home, self.net, self.peer_ids, self.index, timeout=cfg.oprf.timeout_s)
        self.pseudonymizer = self.tokenizer.local  # local kinds only (series, instance, user, event)
        peer_of = {m.name: m.peer_id for m in self.genesis.members}
        limits = {peer_of[name]: (float(r), float(b)) for name, (r, b) in cfg.oprf.limits.items() if name in peer_of}
        self.oprf_service = OprfService(self.tokenizer.keys.shares,
                                        RateLimiter(cfg.oprf.rate, cfg.oprf.burst, limits))
        self._oprf_recorded: dict[str, tuple[int, int]] = {}  # peer -> (answered, refused) already on chain
        self._oprf_since = int(time.time() * 1000)

        members = self.genesis.member_pubkeys
        consensus_cfg = ConsensusConfig(
            chain_id=self.genesis.chain_id, members=members,
            checkpoint_interval=cfg.consensus.checkpoint_interval,
            watermark_window=cfg.consensus.watermark_window, pipeline=cfg.consensus.pipeline,
            progress_timeout=cfg.consensus.progress_timeout)
        self.replica = Replica(consensus_cfg, self.index, Ed25519Crypto(self.member_key, members), self.chain,
                               wal=tuple(self.wal.records), last_executed=self.store.height)
        self.driver = ConsensusDriver(
            self.replica, self.chain, self.wal,
            send=lambda to, data: self.net.send(self.peer_ids[to], CONSENSUS_CHANNEL, data),
            broadcast=lambda data: self.net.broadcast(CONSENSUS_CHANNEL, data),
            build_proposal=self._build_proposal, mempool_count=self.mempool.available,
            oldest_pending=self.mempool.oldest,
            on_commit=self._on_commit, on_state_transfer=self._on_state_transfer,
            on_evidence=self._on_evidence, disk=self.disk)
        # Misbehaviour scores of the other members, shared by every loop that reads their input.
        self.peer_scores = PeerScores(names={m.peer_id: m.name for m in self.genesis.members})
        self.gossip = TxGossip(self.net.broadcast, self.chain, self.mempool, cfg.mempool,
                               on_admitted=self.driver.mempool_changed, scores=self.peer_scores)
        self.sync = BlockSync(self.net, self.chain, self.driver, self.peer_ids, scores=self.peer_scores)
        self.sync.report = lambda: {"view": self.replica.view, "mempool": len(self.mempool),
                                    "peers": len(self.net.connected_peers())}
        self.rpc = JsonRpcApp(self, METHODS, TokenStore(cfg.tokens_path), cfg.rpc.read_requires_token,
                              cfg.rpc.max_body_bytes, cfg.rpc.rate_limit_per_second, edge=cfg.rpc)
        self._last_view = self.replica.view
        self._evidence_limiter = EvidenceLimiter()
        self._commit_waiters: dict[bytes, list[trio.Event]] = {}
        # Tx batches from members wait here for _gossip_loop (each is up to gossip_batch signature checks).
        self._gossip_send, self._gossip_recv = trio.open_memory_channel(GOSSIP_QUEUE)
        # Txs acknowledged as pending before a restart come back unless they committed meanwhile.
        self.mempool.restore(self.store.has_tx, time.monotonic())

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.net.run)
                nursery.start_soon(self.disk.run)
                self.net.serve(SYNC_CHANNEL, self.sync.serve)
                self.oprf_service.install(self.net)
                await nursery.start(self.tokenizer.run)
                nursery.start_soon(self._oprf_counts_loop)
                nursery.start_soon(self._inbox_loop)
                nursery.start_soon(self._gossip_loop)
                await nursery.start(self.driver.run)
                nursery.start_soon(self.gossip.run)
                nursery.start_soon(self.sync.run)
                await nursery.start(self._serve_rpc)
                if "dicom" in self.cfg.extra:
                    # The DICOM hook delivers through this node's RPC from its durable spool, so PACS
                    # traffic never waits on consensus and survives node restarts (docs/DICOM.md).
                    from node.dicom.service import run_dicom_hook

                    await nursery.start(partial(run_dicom_hook, self.cfg.home))
                if len(self.mempool):
                    self.driver.mempool_changed()
                log.info("node started", extra={"fields": {
                    "member": self.cfg.name, "height": self.store.height, "rpc": self.cfg.rpc_url,
                    "peer_id": self.net.peer_id}})
                task_status.started()
        finally:
            self.close()

    def _reopen_stores(self) -> None:
        """Space is back: reopen both LevelDBs (a failed write leaves its error in them) and reload the
        ledger state from the store, which holds exactly the blocks whose batches were whole."""
        self.mempool.reopen()
        self.store.reopen()
        self.chain.reload_state()

    def close(self) -> None:
        self.tokenizer.close()
        self.wal.close()
        self.mempool.close()
        self.store.close()

    async def _serve_rpc(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        rpc = self.cfg.rpc
        caps = ConnectionCaps(rpc.max_connections, rpc.max_connections_per_address, rpc.trusted_proxies)
        self.rpc.metrics.connection_caps = caps  # its refusals are exported in /metrics
        await serve_rpc(self.rpc.app, rpc.listen, caps, task_status=task_status)

    async def _inbox_loop(self) -> None:
        while True:
            try:
                batch = await self.net.receive_batch()
            except trio.EndOfChannel:
                return
            # Consensus first: its messages only queue for the driver here, while a tx batch costs a
            # signature check per tx and is handed to _gossip_loop, which yields to the driver.
            for peer, channel, data in sorted(batch, key=lambda item: item[1] != CONSENSUS_CHANNEL):
                index = self._index_of_peer.get(peer)
                if index is None:
                    continue  # network/ admits members only; defence in depth
                try:
                    if channel == CONSENSUS_CHANNEL:
                        self.driver.message(index, data)
                    elif channel == TX_CHANNEL:
                        await self._gossip_send.send((peer, data))  # bounded: a backlog slows the peers' streams
                except Exception as exc:
                    # Each frame on its own: the handlers turn malformed input into their own errors, so
                    # reaching here is a bug, but one member's frame must not stop this loop (and with it
                    # the node). Scored and logged at most once per member per interval, with the trace.
                    self.peer_scores.penalize(peer, INTERNAL, "frame raised an unexpected error",
                                              f"{channel} frame: {exc.__class__.__name__}: {exc}", exc_info=exc)
            await trio.lowlevel.checkpoint()

    async def _gossip_loop(self) -> None:
        while True:
            try:
                peer, data = await self._gossip_recv.receive()
            except trio.EndOfChannel:
                return
            await self.driver.yield_to_consensus()
            # Then every batch already waiting, up to ~GOSSIP_SLICE of work: one wait per slice rather than
            # per batch, or small batches (a flush every 5 ms) would cap gossip at a batch per wait.
            started = time.perf_counter()
            while True:
                try:
                    self.gossip.on_batch(peer, data)
                except Exception as exc:
                    # Handlers turn malformed input into their own errors, so reaching here is a bug, but one
                    # member's batch must not stop gossip from the others: scored, logged once per interval.
                    self.peer_scores.penalize(peer, INTERNAL, "tx batch raised an unexpected error",
                                              f"{exc.__class__.__name__}: {exc}", exc_info=exc)
                if time.perf_counter() - started > GOSSIP_SLICE:
                    break
                try:
                    peer, data = self._gossip_recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    # ------------------------------------------------------------------ consensus callbacks
    def _build_proposal(self, height: int, allow_empty: bool) -> bytes | None:
        if self.replica.view != self._last_view:
            # A view change abandons what the old primary proposed; make those txs proposable again.
            self._last_view = self.replica.view
            self.mempool.release_in_flight()
        if not allow_empty and self.mempool.available() == 0:
            return None
        txs = self.mempool.take_for_proposal(self.genesis.param("max_block_txs"), height)
        return self.chain.build_proposal(height, self.index, int(time.time() * 1000), txs)

    def _on_commit(self, block, payload: bytes) -> None:
        self.mempool.remove(block.tx_hashes)
        self.mempool.release_in_flight(up_to_height=block.height)
        for h in block.tx_hashes:
            for event in self._commit_waiters.pop(h, ()):
                event.set()
        self.rpc.on_commit(block)  # metrics, WebSocket subscribers
        self.driver.mempool_changed()

    def _on_state_transfer(self, target: int, peers: tuple[int, ...]) -> None:
        self.sync.request(target, peers)

    def _on_evidence(self, evidence: bytes) -> None:
        """Our replica saw two conflicting signed votes from one member: put the proof on chain."""
        try:
            fields = evidence_tx_fields(evidence)
            offender = self.genesis.members[fields["offender"]].name
            if not self._evidence_limiter.allow(fields["offender"]):
                return  # this node put a proof against that member on its way a moment ago
            raw = make_tx("evidence.equivocation", self.member_key, chain_id=self.genesis.chain_id,
                          member=self.cfg.name, **fields)
            self.submit([raw], checked=False)
        except Exception:  # a report we cannot turn into a valid tx must not stop consensus
            log.exception("replica reported evidence that cannot become a tx")
            return
        log.warning("equivocation by member %s recorded as evidence", offender)

    # ------------------------------------------------------------------ transactions
    async def event_to_tx(self, event: dict) -> bytes:
        """A raw event -> this node's signed tx (EventError, TxError; TokenizeError when the consortium's
        tokens cannot be computed now)."""
        fields = await event_fields(event, self.tokenizer, chain_id=self.genesis.chain_id,
                                    member=self.cfg.name, client=bytes(self.member_key.verify_key))
        raw = sign_tx(fields, self.member_key)
        self.chain.check_own_tx(raw)  # admission then finds it checked and skips re-verifying our signature
        return raw

    async def prefetch_tokens(self, event: dict) -> None:
        """Compute (and cache) the consortium tokens `event` needs; raises what event_to_tx would."""
        await prefetch(event, self.tokenizer, chain_id=self.genesis.chain_id, member=self.cfg.name,
                       client=bytes(self.member_key.verify_key))

    def submit(self, raws: list[bytes], checked: bool = True) -> list[dict]:
        """Admit txs (already checked unless checked=False); durable before returning. One answer per tx."""
        if self.disk.full:
            raise self.mempool.disk_full()  # refused with a retry hint (node/rpc/submit.py: -32004)
        answers, fresh = [], []
        for raw in raws:
            h = tx_hash(raw)
            found = self.store.get_tx(h)
            if found is not None:
                answers.append({"tx": h.hex(), "status": "committed", "height": found[0]})
                continue
            if not checked:
                self.chain.check_tx(raw)
            fresh.append((h, raw))
            answers.append({"tx": h.hex(), "status": "pending"})
        if fresh:
            self.gossip.admit(fresh)
        return answers

    async def wait_committed(self, h: bytes, timeout: float) -> int | None:
        """Height at which tx `h` committed, or None if it did not within `timeout` seconds."""
        found = self.store.get_tx(h)
        if found is None:
            event = trio.Event()
            self._commit_waiters.setdefault(h, []).append(event)
            with trio.move_on_after(timeout):
                await event.wait()
            found = self.store.get_tx(h)
        return None if found is None else found[0]

    # ------------------------------------------------------------------ pseudonym evaluation counts
    def member_name_of_peer(self, peer: str) -> str:
        index = self._index_of_peer.get(peer)
        return self.genesis.members[index].name if index is not None else peer

    def unrecorded_oprf_counts(self) -> list[tuple[str, int, int]]:
        """[(requesting member, points answered, points refused)] since this node's last oprf.counts tx."""
        svc, done = self.oprf_service, self._oprf_recorded
        out = []
        for peer in sorted(set(svc.answered) | set(svc.refused)):
            a = svc.answered[peer] - done.get(peer, (0, 0))[0]
            r = svc.refused[peer] - done.get(peer, (0, 0))[1]
            if a or r:
                out.append((self.member_name_of_peer(peer), a, r))
        return out

    def record_oprf_counts(self) -> dict | None:
        """Put what this member evaluated/refused for whom since its last record on chain (an oprf.counts
        tx); None when there is nothing new. Counts held in memory only: a crash loses at most one interval."""
        counts = self.unrecorded_oprf_counts()
        if not counts:
            return None
        svc = self.oprf_service
        snapshot = {p: (svc.answered[p], svc.refused[p]) for p in set(svc.answered) | set(svc.refused)}
        now = int(time.time() * 1000)
        raw = make_tx("oprf.counts", self.member_key, chain_id=self.genesis.chain_id, member=self.cfg.name,
                      oprf_counts=[[m, a, r] for m, a, r in counts], period_ms=max(1, now - self._oprf_since))
        answer = self.submit([raw], checked=False)[0]  # MempoolFull/DiskFull: kept for the next interval
        self._oprf_recorded, self._oprf_since = snapshot, now
        return answer

    async def _oprf_counts_loop(self) -> None:
        while True:
            await trio.sleep(self.cfg.oprf.stats_interval_s)
            try:
                self.record_oprf_counts()
            except Exception as exc:  # a full mempool or disk: try again next interval
                log.warning("could not record pseudonym evaluation counts: %s", exc)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        head = self.store.head
        return {
            "node": self.cfg.name, "chain_id": self.genesis.chain_id,
            "height": self.store.height, "head": head.hex() if head else None,
            "view": self.replica.view, "primary": self.genesis.members[self.replica.primary].name,
            "peers": len(self.net.connected_peers()), "members": len(self.genesis.members),
            "mempool": len(self.mempool), "syncing": self.sync.syncing,
            "disk_full": self.disk.full,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
