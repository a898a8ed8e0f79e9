"""A running RadChain node: one trio nursery owning the network, consensus driver, gossip, sync and RPC.

`Node(cfg)` opens everything from the home directory; `await nursery.start(node.run)` serves until
cancelled; `node.close()` flushes the WAL and closes LevelDB. Shutdown order matters: the network host is
closed first (py-libp2p crashes trio.run otherwise), then the stores.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import partial

import trio

from consensus.config import Config as ReplicaConfig
from consensus.crypto import Ed25519Crypto
from consensus.replica import Replica
from network import PeerNetwork
from network.identity import load_or_create_identity
from node.explorer import explorer_mount
from node.fhir import fhir_mount
from node.ledger.chain import Chain
from node.ledger.epochs import PskBoxError, open_psk_box, psk_schedule
from node.ledger.equivocation import EvidenceLimiter, evidence_tx_fields
from node.ledger.genesis import Genesis
from node.ledger.intake import EventError, make_tx
from node.ledger.refusals import MempoolFull
from node.ledger.store import Store
from node.ledger.tx import Tx, TxError, signable_body, tx_hash
from node.rpc.auth import TokenStore
from node.rpc.http import ConnectionCaps, serve_rpc
from node.rpc.methods import METHODS
from node.rpc.server import JsonRpcApp
from node.runtime.diskspace import MIN_FREE, POLL, DiskGuard, free_bytes
from node.runtime.driver import ConsensusDriver
from node.runtime.epoch_replica import EpochApp, EpochReplica, Observer
from node.runtime.gossip import CHANNEL as TX_CHANNEL
from node.runtime.gossip import FETCH_CHANNEL as TX_FETCH_CHANNEL
from node.runtime.gossip import TxGossip
from node.runtime.gossip_backlog import GossipBacklog
from node.runtime.keys import load_member_key
from node.runtime.latency_trace import ENABLED as TRACE_LATENCY
from node.runtime.latency_trace import LatencyTrace
from node.runtime.loop_lag import LoopLag
from node.runtime.mempool import Mempool
from node.runtime.oprf_resharing import Resharer
from node.runtime.oprf_service import OprfService, RateLimiter
from node.runtime.own_txs import OwnTxs
from node.runtime.peerscore import INTERNAL, PeerScores
from node.runtime.psk_keys import PskKeys
from node.runtime.settings import NodeConfig
from node.runtime.sync import CHANNEL as SYNC_CHANNEL
from node.runtime.sync import BlockSync
from node.runtime.tokenizer import Tokenizer, event_fields, prefetch, warm
from node.runtime.wal_file import WriteAheadLog

log = logging.getLogger("radchain.node")

CONSENSUS_CHANNEL = "consensus"
GOSSIP_SLICE = 0.01  # seconds of tx checks between two yields to the consensus driver
# Tx batches waiting together are checked together (one worker-thread hand-off): at most this many, and
# this many bytes (~1,000 txs, ~10 ms of decoding on the event loop) per hand-off.
GOSSIP_GROUP = 32
GOSSIP_GROUP_BYTES = 256 << 10
# After an epoch switch, a member's previous libp2p identity (rotated with `member rotate-key --p2p`) is still
# admitted this long: that member may not have executed the last block of the old epoch yet (the others'
# COMMITs for it can be in flight when they switch), and it moves to its new identity only once it has. Cut
# off at the switch, it could not fetch that block from anyone and stayed out for good.
ROTATION_GRACE = 60.0


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
        # What __init__ opens (LevelDB locks, the WAL file) is released if a later step fails: a caller that
        # retries, or a test that reopens the home, must not find the store locked by a half-built node.
        with contextlib.ExitStack() as opened:
            self.cfg = cfg
            self.genesis = Genesis.load(cfg.genesis_path)
            # This hospital's signing keys: member.key, and during a rotation (node.state: member.key_rotated)
            # member.key.next (the new one) or member.key.old (the one consensus may still sign with).
            self.member_key = load_member_key(cfg.member_key_path)
            self._own_keys: dict[bytes, object] = {}
            self._load_own_keys()
            founder = self.genesis.member(cfg.name)
            self.started_at = time.time()

            self.store = Store(cfg.chain_dir, sync=cfg.store_sync)
            opened.callback(self.store.close)
            self.chain = Chain(self.genesis, self.store)
            registered = self.chain.state.members.get(cfg.name, founder.pubkey if founder is not None else None)
            if registered is not None:
                if registered not in self._own_keys:
                    raise ValueError(f"{cfg.member_key_path} is not the key "
                                     f"{'genesis lists' if registered == getattr(founder, 'pubkey', None) else 'the chain registers'}"
                                     f" for member {cfg.name!r}")
                self.member_key = self._own_keys[registered]  # txs are signed with the registered key
            self.mempool = Mempool(cfg.home / "data" / "mempool", cfg.mempool.max_txs,
                                   min_backlog=cfg.mempool.min_backlog, drain_seconds=cfg.mempool.busy_after_s)
            opened.callback(self.mempool.close)
            self.wal = WriteAheadLog(self._wal_dir(self.chain.epoch_at(self.store.height + 1)),
                                     fsync=cfg.consensus.wal_fsync)
            opened.callback(self.wal.close)
            # A full disk pauses this node instead of killing it (node.runtime.diskspace): txs are refused, consensus
            # waits, and when space returns LevelDB is reopened and the node catches up by block sync.
            self.disk = DiskGuard(cfg.home / "data")
            self.disk.on_resume(self._reopen_stores)
            self.mempool.guard = self.disk

            # The member set is an epoch of the chain (node.ledger.epochs): the replica, the peers this node talks to
            # and the peers it accepts follow the epoch of the next height, and change after its last block.
            identity = self._p2p_identity()
            self._rotation_grace: dict[str, list[str]] = {}  # previous peer IDs still admitted (ROTATION_GRACE)
            self._rotation_grace_until = 0.0
            self._rotation_grace_started = trio.Event()
            self._net_members: dict[str, list[str]] = self._network_members()
            self.net = PeerNetwork(identity, self._net_members, cfg.psk, cfg.p2p_listen,
                                   lock_dir=str(cfg.home / "data"))
            # Tx batches from members wait here for _gossip_loop (each is up to gossip_batch signature checks),
            # a queue per member, served in turn: one that sends faster than they are checked loses its excess
            self.gossip_backlog = GossipBacklog()
            # PSK rotations (node.ledger.epochs): the keys this node learned, persisted before use
            self.psk_keys = PskKeys(cfg.member_key_path.parent / "psk.json")
            self._psk_plan: tuple | None = None
            self._psk_unopened: set[bytes] = set()
            self._follow_psk(self.store.height)
            current = self.chain.epoch_at(self.store.height + 1)
            me = current.index_of(cfg.name)
            if me is not None and current.members[me].peer_id and self.net.peer_id != current.members[me].peer_id:
                raise ValueError(f"{cfg.p2p_key_path} is not the libp2p identity "
                                 f"{'genesis lists' if current.start <= 1 else 'the chain registers'} for {cfg.name!r}")
            # Pseudonyms (docs/PSEUDONYMS.md): consortium identifiers by the threshold OPRF, answered for the
            # other members by oprf_service within a per-member rate; this hospital's own kinds by its local
            # key. The tokenizer starts with the genesis member order; a resharing on chain (oprf_resharing,
            # below) points it at a later member set's order and shares.
            oprf_peers = [m.peer_id for m in self.genesis.members]
            oprf_index = next((i for i, m in enumerate(self.genesis.members) if m.name == cfg.name), -1)
            self.tokenizer = Tokenizer(cfg.home, self.net, oprf_peers, oprf_index, timeout=cfg.oprf.timeout_s)
            opened.callback(self.tokenizer.close)
            self.pseudonymizer = self.tokenizer.local  # local kinds only (series, instance, user, event)
            peer_of = {m.name: m.peer_id for m in self.genesis.members}
            limits = {peer_of[name]: (float(r), float(b)) for name, (r, b) in cfg.oprf.limits.items()
                      if name in peer_of}
            self.oprf_service = OprfService(self.tokenizer.keys.shares,
                                            RateLimiter(cfg.oprf.rate, cfg.oprf.burst, limits))
            self._oprf_recorded: dict[str, tuple[int, int]] = {}  # peer -> (answered, refused) already on chain
            self._oprf_since = int(time.time() * 1000)
            # the key's resharing when the member set changes: read from the chain, acted on after each block
            self.resharer = Resharer(self)
            self.resharer.start()
            self.sync = None
            self._switching_to: int | None = None
            self.replica = self._make_replica(self.wal)
            self.driver = ConsensusDriver(
                self.replica, self.chain, self.wal,
                send=lambda to, data: self.net.send(self.peer_ids[to], CONSENSUS_CHANNEL, data),
                broadcast=lambda data: self.net.broadcast(CONSENSUS_CHANNEL, data),
                build_proposal=self._build_proposal, mempool_count=self.mempool.available,
                oldest_pending=self.mempool.oldest,
                on_commit=self._on_commit, on_state_transfer=self._on_state_transfer,
                on_evidence=self._on_evidence, disk=self.disk,
                fetch_txs=lambda index, hashes: self.gossip.fetch(self.net, self.peer_ids[index], hashes))
            # Misbehaviour scores of the other members, shared by every loop that reads their input.
            self.peer_scores = PeerScores(names={m.peer_id: m.name for m in self.genesis.members})
            self.gossip = TxGossip(self.net.broadcast, self.chain, self.mempool, cfg.mempool,
                                   on_admitted=self.driver.mempool_changed, scores=self.peer_scores,
                                   send=self.net.send)
            self.net.on_peer_up = self.gossip.on_peer_up
            self.chain.keep_txs = self.gossip.keep_for_vote
            self.chain.tx_source = self.mempool.get  # compact proposals name txs the mempool holds
            self.sync = BlockSync(self.net, self.chain, self.driver, list(self.peer_ids), scores=self.peer_scores)
            self.sync.report = lambda: {"view": self.replica.view, "mempool": len(self.mempool),
                                        "peers": len(self.net.connected_peers())}
            self.rpc = JsonRpcApp(self, METHODS, TokenStore(cfg.tokens_path), cfg.rpc.read_requires_token,
                                  cfg.rpc.max_body_bytes, cfg.rpc.rate_limit_per_second, edge=cfg.rpc,
                                  mounts=(explorer_mount, fhir_mount))  # /explorer (docs/EXPLORER.md), /fhir (docs/INTEROP.md)
            self._apply_params(self.epoch)
            self._last_view = self.replica.view
            self._evidence_limiter = EvidenceLimiter()
            self._commit_waiters: dict[bytes, list[trio.Event]] = {}
            self.trace = LatencyTrace(self) if TRACE_LATENCY else None
            self.driver.trace = self.trace
            self.loop_lag = LoopLag()
            self.driver.diagnostics = self._view_change_diagnostics
            # Txs acknowledged as pending before a restart come back unless they committed meanwhile.
            self.mempool.restore(self.store.has_tx, time.monotonic())
            self.own_txs = OwnTxs(self.chain, self.mempool, cfg.name, max_pending=2 * cfg.mempool.max_txs)
            opened.pop_all()  # all opened: from here on close() (run's finally) releases them

    def _view_change_diagnostics(self) -> dict:
        """For the view-change log line: this node's worst event-loop lag of the last 10 s, per member how
        long since any bytes came from it (heartbeats included) and the frames waiting to go to it, and what
        waits between the network and the replica."""
        names = {m.peer_id: m.name for m in self.genesis.members}
        peers = {names.get(pid, pid[-8:]): f"silent {st['silent_s']}s queued {st['queued_frames']}"
                 for pid, st in self.net.peer_status().items()}
        inbox = self.net.inbox.statistics()
        return {"loop_lag_max_ms": round(self.loop_lag.worst() * 1000, 1), "peers": peers,
                # frames read from the peers but not yet routed, and tx batches waiting for their checks
                "inbox": f"{inbox.current_buffer_used}/{inbox.max_buffer_size}",
                "gossip_backlog": self.gossip_backlog.status(),
                "inbox_full_waits": self.net.stats.get("inbox_full_waits", 0)}

    # ------------------------------------------------------------------ member sets (node.ledger.epochs)
    def _network_members(self) -> dict[str, list[str]]:
        """Peers this node dials and admits: the members of the next height's epoch and of any epoch
        already approved (a joining member syncs before its switch height). A removed member is in
        neither once its last epoch ended: its connections are refused from then on."""
        out: dict[str, list[str]] = {}
        for epoch in (self.chain.epoch_at(self.store.height + 1), self.chain.state.epochs.latest):
            for m in epoch.members:
                if m.peer_id:
                    out[m.peer_id] = list(m.addrs)
        if time.monotonic() < self._rotation_grace_until:
            for pid, addrs in self._rotation_grace.items():
                out.setdefault(pid, addrs)
        return out

    def _start_rotation_grace(self, height: int) -> None:
        """After block ``height``, the last of an epoch: keep admitting, for ROTATION_GRACE, the previous
        peer ID of each member that stays but rotated its libp2p identity (not of a removed member)."""
        old, new = self.chain.epoch_at(height), self.chain.epoch_at(height + 1)
        now_at = {m.name: m.peer_id for m in new.members}
        rotated = {m.peer_id: list(m.addrs) for m in old.members  # our own old identity is nobody to admit
                   if m.peer_id and m.name != self.cfg.name and now_at.get(m.name) not in (None, m.peer_id)}
        if rotated:
            self._rotation_grace.update(rotated)  # a second switch within the grace extends the first's
            self._rotation_grace_until = time.monotonic() + ROTATION_GRACE
            self._rotation_grace_started.set()

    async def _rotation_grace_loop(self) -> None:
        while True:
            await self._rotation_grace_started.wait()
            self._rotation_grace_started = trio.Event()
            while (left := self._rotation_grace_until - time.monotonic()) > 0:
                await trio.sleep(left)
            self._rotation_grace = {}
            self._update_net_members()

    def _update_net_members(self) -> None:
        members = self._network_members()
        if members != self._net_members:
            self._net_members = members
            _, removed = self.net.set_members(members)
            for peer in removed:
                self.gossip_backlog.forget(peer)

    def _follow_psk(self, executed: int) -> None:
        """After block ``executed``: open (and persist) our box of every approved PSK rotation, and tell the
        network which PSKs to accept and which to prefer (node.ledger.epochs psk_schedule). A PSK recovered
        by `member psk-recover` for a rotation this node has not executed yet is preferred: the others have
        moved on to it."""
        if self.cfg.psk is None:
            return
        rotations = list(self.chain.state.psk_rotations.values())
        for r in rotations:
            if r.commit in self.psk_keys.keys or r.commit in self._psk_unopened:
                continue
            try:
                psk = self._open_psk_box(r)
            except PskBoxError as exc:
                self._psk_unopened.add(r.commit)
                log.error("PSK rotation from height %d: %s; this node is refused by the others after height %d "
                          "(`radchain member psk-recover`, docs/GOVERNANCE.md)", r.start, exc, r.retire_old_after)
                continue
            self.psk_keys.add(r.commit, psk, r.start)  # durable before the network uses it
        accept, prefer, _missing = psk_schedule(self.cfg.psk, rotations, self.psk_keys.learned, executed)
        known = {r.commit for r in rotations}
        ahead = sorted((start, psk) for c, (psk, start) in self.psk_keys.keys.items() if c not in known)
        for _start, psk in ahead:  # recovered ahead of the chain: newest first
            accept = [psk, *[k for k in accept if k != psk]]
            prefer = psk
        plan = (tuple(accept[:4]), prefer)
        if plan != self._psk_plan:
            self._psk_plan = plan
            self.net.set_psks(*plan)

    def _open_psk_box(self, rotation) -> bytes:
        if any(name == self.cfg.name and key not in self._own_keys for name, key, _box in rotation.boxes):
            self._load_own_keys()  # a rotated member key written while the node runs
        for name, key, _box in rotation.boxes:
            if name == self.cfg.name and key in self._own_keys:
                return open_psk_box(self.genesis.chain_id, rotation.commit, rotation.boxes, name, self._own_keys[key])
        raise PskBoxError(f"no box for {self.cfg.name} sealed to a member key this node holds")

    def _load_own_keys(self) -> None:
        """(Re)read member.key, member.key.next and member.key.old (`radchain member rotate-key` writes them
        while the node runs)."""
        path = self.cfg.member_key_path
        for p in (path, path.with_name(path.name + ".next"), path.with_name(path.name + ".old")):
            try:
                key = load_member_key(p)
            except (OSError, ValueError):
                continue
            self._own_keys.setdefault(bytes(key.verify_key), key)

    def _p2p_identity(self):
        """p2p.key, or p2p.key.next once the member set of the next height lists that identity for us
        (a rotated libp2p identity takes effect when the node restarts at or after its switch height)."""
        from network.identity import peer_id_of

        nxt = self.cfg.p2p_key_path.with_name(self.cfg.p2p_key_path.name + ".next")
        if nxt.exists():
            epoch = self.chain.epoch_at(self.store.height + 1)
            index = epoch.index_of(self.cfg.name)
            candidate = load_or_create_identity(nxt)
            if index is not None and epoch.members[index].peer_id == peer_id_of(candidate):
                return candidate
        return load_or_create_identity(self.cfg.p2p_key_path)

    def _wal_dir(self, epoch):
        wal_dir = self.cfg.wal_dir
        return wal_dir if epoch.start <= 1 else wal_dir.with_name(f"{wal_dir.name}-e{epoch.start}")

    def _make_replica(self, wal: WriteAheadLog):
        """The replica of the epoch of the next height: a fresh PBFT instance (node.runtime.epoch_replica), or an
        Observer when this node is not one of its members (joining, or removed)."""
        epoch = self.chain.epoch_at(self.store.height + 1)
        self.epoch = epoch
        self.peer_ids = [m.peer_id for m in epoch.members]
        self._index_of_peer = {pid: i for i, pid in enumerate(self.peer_ids) if pid}
        if self.sync is not None:
            self.sync.peer_ids = list(self.peer_ids)
        index = epoch.index_of(self.cfg.name)
        if index is not None and epoch.members[index].pubkey not in self._own_keys:
            self._load_own_keys()
        key = None if index is None else self._own_keys.get(epoch.members[index].pubkey)
        if index is not None and key is None:
            log.error("the member set from height %d lists a signing key for %s that this node does not hold "
                      "(keys/member.key, .next, .old): following the chain without voting", epoch.start,
                      self.cfg.name)
        if key is None:
            self.index = -1
            log.warning("not a member of the consortium's current member set (epoch from height %d): "
                        "following the chain by block sync", epoch.start,
                        extra={"fields": {"member": self.cfg.name, "epoch": epoch.start}})
            return Observer(epoch)
        self.index = index
        ccfg = self.cfg.consensus
        # a voted timeout (node.ledger.epochs VOTABLE_PARAMS) overrides this node's configuration in its epoch
        voted_timeout = epoch.param("progress_timeout_ms", None)
        consensus_cfg = ReplicaConfig(
            chain_id=epoch.chain_id, members=epoch.pubkeys, checkpoint_interval=ccfg.checkpoint_interval,
            watermark_window=ccfg.watermark_window, pipeline=ccfg.pipeline,
            progress_timeout=ccfg.progress_timeout if voted_timeout is None else voted_timeout / 1000)
        if self.sync is not None:  # a running node (at construction the RPC app does not exist yet)
            self._apply_params(epoch)
        offset = epoch.start - 1
        replica = Replica(consensus_cfg, index, Ed25519Crypto(key, epoch.pubkeys),
                          EpochApp(self.chain, offset), wal=tuple(wal.records),
                          last_executed=self.store.height - offset)
        return EpochReplica(replica, epoch, self.chain)

    def _apply_params(self, epoch) -> None:
        rate = epoch.param("rpc_rate_limit", None)
        if rate is not None:
            self.rpc.limiter.rate = float(rate)

    def _next_epoch_replica(self):
        """driver.switch factory: the new epoch's replica with its own WAL (the old one is closed)."""
        self._switching_to = None
        old = self.wal
        self.wal = WriteAheadLog(self._wal_dir(self.chain.epoch_at(self.store.height + 1)),
                                 fsync=self.cfg.consensus.wal_fsync)
        old.close()
        self.replica = self._make_replica(self.wal)
        self._last_view = self.replica.view
        me = self.epoch.index_of(self.cfg.name)
        if me is not None and self.epoch.members[me].peer_id not in ("", self.net.peer_id):
            # our libp2p identity was rotated (member.key_rotated --p2p): from this boundary the others admit
            # only the new one, so the network rebuilds its host under keys/p2p.key.next, without a restart
            candidate = self._p2p_identity()
            from network.identity import peer_id_of

            if peer_id_of(candidate) == self.epoch.members[me].peer_id:
                self.net.set_identity(candidate)
                log.info("libp2p identity rotated from height %d: now %s", self.epoch.start, self.net.peer_id)
            else:
                log.error("this member's libp2p identity was rotated from height %d, but keys/p2p.key.next is "
                          "not that identity: the others refuse this node", self.epoch.start)
        self.mempool.release_in_flight()  # what the old epoch proposed past its end is proposable again
        log.info("member set changed", extra={"fields": {
            "epoch": self.epoch.start, "members": list(self.epoch.names), "n": self.epoch.n,
            "quorum": self.epoch.quorum, "index": self.index}})
        return self.replica, self.wal

    def _follow_epochs(self, height: int) -> None:
        """After block ``height``: update the network's member set, and switch replicas at an epoch end."""
        registered = self.chain.state.members.get(self.cfg.name)
        if registered is not None and registered != bytes(self.member_key.verify_key):
            if registered not in self._own_keys:
                self._load_own_keys()
            if registered in self._own_keys:
                self.member_key = self._own_keys[registered]  # our rotation applied: sign txs with the new key
        want = self.chain.epoch_at(height + 1).start
        if want == height + 1 and height > 0:
            self._start_rotation_grace(height)
        self._update_net_members()
        self._follow_psk(height)
        if want != self.epoch.start and want != self._switching_to:
            # once per epoch change: block sync may execute several blocks before the driver switches
            self._switching_to = want
            self.driver.switch(self._next_epoch_replica)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.net.run)
                nursery.start_soon(self.disk.run)
                self.net.serve(SYNC_CHANNEL, self.sync.serve)
                self.net.serve(TX_FETCH_CHANNEL, self.gossip.serve_fetch)
                self.oprf_service.install(self.net)
                await nursery.start(self.tokenizer.run)
                nursery.start_soon(self._oprf_counts_loop)
                nursery.start_soon(self.resharer.run)
                nursery.start_soon(self._inbox_loop)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self.loop_lag.run)
                nursery.start_soon(self._rotation_grace_loop)
                if self.trace is not None:
                    nursery.start_soon(self.trace.run)
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
                        self.gossip_backlog.put(peer, data)  # never waits: past its member's bound, dropped
                except Exception as exc:
                    # Each frame on its own: the handlers turn malformed input into their own errors, so
                    # reaching here is a bug, but one member's frame must not stop this loop (and with it
                    # the node). Scored and logged at most once per member per interval, with the trace.
                    self.peer_scores.penalize(peer, INTERNAL, "frame raised an unexpected error",
                                              f"{channel} frame: {exc.__class__.__name__}: {exc}", exc_info=exc)
            await trio.lowlevel.checkpoint()

    async def _gossip_loop(self) -> None:
        while True:
            first = await self.gossip_backlog.take()
            await self.driver.yield_to_consensus()
            # Then every batch already waiting, up to ~GOSSIP_SLICE of work: one wait per slice rather than
            # per batch, or small batches (a flush every 5 ms) would cap gossip at a batch per wait. The
            # batches waiting together share one worker-thread hand-off for their signature checks.
            started = time.perf_counter()
            group = [first]
            while True:
                size = len(group[0][1])
                while len(group) < GOSSIP_GROUP and size < GOSSIP_GROUP_BYTES:
                    try:
                        group.append(self.gossip_backlog.take_nowait())
                    except trio.WouldBlock:
                        break
                    size += len(group[-1][1])
                await self._check_gossip(group)
                if time.perf_counter() - started > GOSSIP_SLICE:
                    break
                try:
                    group = [self.gossip_backlog.take_nowait()]
                except trio.WouldBlock:
                    break

    async def _check_gossip(self, group: list[tuple[str, bytes]]) -> None:
        if self.cfg.mempool.verify_in_thread and len(group) > 1:
            try:
                await self.gossip.on_batches_threaded(group)
                return
            except Exception:  # a bug, but whose batch? Each on its own below (admission is idempotent)
                log.exception("checking %d tx batches together raised; checking each on its own", len(group))
        for peer, data in group:
            try:
                if self.cfg.mempool.verify_in_thread:
                    await self.gossip.on_batch_threaded(peer, data)
                else:
                    self.gossip.on_batch(peer, data)
            except Exception as exc:
                # Handlers turn malformed input into their own errors, so reaching here is a bug, but one
                # member's batch must not stop gossip from the others: scored, logged once per interval.
                self.peer_scores.penalize(peer, INTERNAL, "tx batch raised an unexpected error",
                                          f"{exc.__class__.__name__}: {exc}", exc_info=exc)

    # ------------------------------------------------------------------ consensus callbacks
    def _build_proposal(self, height: int, allow_empty: bool) -> bytes | None:
        if self.replica.view != self._last_view:
            # A view change abandons what the old primary proposed; make those txs proposable again.
            self._last_view = self.replica.view
            self.mempool.release_in_flight()
        if not allow_empty and self.mempool.available() == 0:
            return None
        txs = self.mempool.take_for_proposal(self.chain.param("max_block_txs", height), height)
        if self.trace is not None:
            self.trace.on_propose(height, txs)
        if self.cfg.mempool.compact_proposals:
            # The PRE-PREPARE is this primary's vote, and after a kill -9 its WAL names these txs by hash only:
            # on disk first (gossip left its copies in memory). A full disk: no proposal until space returns.
            hashes = [tx_hash(raw) for raw in txs]
            try:
                self.mempool.add_many(list(zip(hashes, txs, strict=True)), time.monotonic(), force=True)
            except MempoolFull:
                self.mempool.unmark(hashes)
                return None
            self.gossip.flush_now()  # the txs go out ahead of the proposal naming them
            return self.chain.build_compact_proposal(height, self.index, int(time.time() * 1000), txs, hashes)
        return self.chain.build_proposal(height, self.index, int(time.time() * 1000), txs)

    def _on_commit(self, block, payload: bytes) -> None:
        self._follow_epochs(block.height)
        if self.trace is not None:
            self.trace.on_commit(block)
        self.mempool.remove(block.tx_hashes)
        self.own_txs.on_commit(block.tx_hashes)
        self.mempool.release_in_flight(up_to_height=block.height)
        for h in block.tx_hashes:
            for event in self._commit_waiters.pop(h, ()):
                event.set()
        self.rpc.on_commit(block)  # metrics, WebSocket subscribers
        self.resharer.on_commit(block)  # OPRF key resharing (node.runtime.oprf_resharing)
        self.driver.mempool_changed()

    def _on_state_transfer(self, target: int, peers: tuple[int, ...]) -> None:
        self.sync.request(target, peers)

    def _on_evidence(self, evidence: bytes) -> None:
        """Our replica saw two conflicting signed votes from one member: put the proof on chain."""
        try:
            fields = evidence_tx_fields(evidence)
            offender = self.epoch.members[fields["offender"]].name
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
    async def own_body(self, event: dict) -> tuple[bytes, dict]:
        """The canonical body of the tx recording ``event`` (node.ledger.tx.signable_body), not signed yet:
        EventError for an event the ledger's fields cannot hold, TokenizeError when the consortium's tokens
        cannot be computed now."""
        fields = await event_fields(event, self.tokenizer, chain_id=self.genesis.chain_id,
                                    member=self.cfg.name, client=bytes(self.member_key.verify_key))
        try:
            return signable_body(fields, self.member_key)
        except TxError as exc:
            raise EventError(exc.field, str(exc).split(": ", 1)[-1]) from None

    def sign_own(self, bodies: list[tuple[bytes, dict]]) -> list[Tx | TxError]:
        """own_body results as this node's txs, signed as one batch (or found: node.runtime.own_txs), each
        checked and cached like check_own_tx: per body the Tx, or the TxError saying why it may not be
        admitted now (not authorised, or a ledger rule such as an export without consent)."""
        key = self.member_key
        client = bytes(key.verify_key)
        # A body built before the member's key rotation committed names the old key: built again for the new
        # one, as own_body would build it now (the key is part of the body, so it is another tx either way).
        bodies = [item if item[1]["client"] == client else signable_body({**item[1], "client": client}, key)
                  for item in bodies]
        out: list[Tx | TxError] = []
        # no larger batches than the consortium accepts at the next height (a consensus parameter)
        most = min(self.cfg.mempool.sign_batch, self.chain.param("max_sign_batch", self.store.height + 1))
        for tx in self.own_txs.sign(bodies, key, most):
            try:
                # Our own fresh signature over bytes we encoded and decoded once, or a tx of ours the mempool
                # or the store holds: check_own_tx's trust, no re-decode.
                out.append(self.chain.check_verified_tx(tx))
            except TxError as exc:
                out.append(exc)
        return out

    def tokens_ready(self, event) -> bool:
        """Whether every consortium token `event` needs is in memory (prefetch_tokens would do nothing)."""
        return warm(event, self.tokenizer)

    async def prefetch_tokens(self, event: dict) -> None:
        """Compute (and cache) the consortium tokens `event` needs; raises what own_body would."""
        await prefetch(event, self.tokenizer, chain_id=self.genesis.chain_id, member=self.cfg.name,
                       client=bytes(self.member_key.verify_key))

    def submit(self, raws: list[bytes], checked: bool = True, hashes: list[bytes] | None = None) -> list[dict]:
        """Admit txs (already checked unless checked=False); durable before returning. One answer per tx.
        `hashes`: their tx hashes, when the caller has them."""
        if self.disk.full:
            raise self.mempool.disk_full()  # refused with a retry hint (node/rpc/submit.py: -32004)
        answers, fresh = [], []
        committed = self.chain.committed_tx
        for i, raw in enumerate(raws):
            h = tx_hash(raw) if hashes is None else hashes[i]
            found = committed(h)
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
        for m in (*self.epoch.members, *self.genesis.members):  # the OPRF share holders are genesis members
            if m.peer_id == peer:
                return m.name
        return peer

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
            "view": self.replica.view, "primary": self.epoch.members[self.replica.primary].name,
            "peers": len(self.net.connected_peers()), "members": self.epoch.n,
            "epoch": self.epoch.start, "quorum": self.epoch.quorum, "member": self.index >= 0,
            "mempool": len(self.mempool), "syncing": self.sync.syncing,
            "disk_full": self.disk.full, "psk": self.net.psk_status(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }
