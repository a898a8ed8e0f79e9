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
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from consensus.config import Config as ConsensusConfig
from consensus.crypto import Ed25519Crypto
from consensus.replica import Replica
from network import PeerNetwork
from network.identity import load_or_create_identity
from node.chain import Chain
from node.config import NodeConfig
from node.driver import ConsensusDriver
from node.events import event_to_tx_fields, make_tx, sign_tx
from node.evidence import evidence_tx_fields
from node.genesis import Genesis
from node.gossip import CHANNEL as TX_CHANNEL
from node.gossip import TxGossip
from node.keys import load_member_key
from node.mempool import Mempool
from node.pseudonym import Pseudonymizer
from node.rpc.methods import METHODS
from node.rpc.server import JsonRpcApp
from node.store import Store
from node.sync import CHANNEL as SYNC_CHANNEL
from node.sync import BlockSync
from node.tx import tx_hash
from node.wal import WriteAheadLog

log = logging.getLogger("radchain.node")

CONSENSUS_CHANNEL = "consensus"


class Node:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.genesis = Genesis.load(cfg.genesis_path)
        self.index = self.genesis.index_of(cfg.name)
        self.member_key = load_member_key(cfg.member_key_path)
        if bytes(self.member_key.verify_key) != self.genesis.members[self.index].pubkey:
            raise ValueError(f"{cfg.member_key_path} is not the key genesis lists for member {cfg.name!r}")
        self.pseudonymizer = Pseudonymizer(cfg.pseudonym_key)
        self.started_at = time.time()

        self.store = Store(cfg.chain_dir, sync=cfg.store_sync)
        self.chain = Chain(self.genesis, self.store)
        self.mempool = Mempool(cfg.home / "data" / "mempool", cfg.mempool.max_txs)
        self.wal = WriteAheadLog(cfg.wal_dir, fsync=cfg.consensus.wal_fsync)

        self.peer_ids = [m.peer_id for m in self.genesis.members]
        self._index_of_peer = {pid: i for i, pid in enumerate(self.peer_ids)}
        identity = load_or_create_identity(cfg.p2p_key_path)
        self.net = PeerNetwork(identity, {m.peer_id: list(m.p2p) for m in self.genesis.members},
                               cfg.psk, cfg.p2p_listen, lock_dir=str(cfg.home / "data"))
        if self.net.peer_id != self.peer_ids[self.index]:
            raise ValueError(f"{cfg.p2p_key_path} is not the libp2p identity genesis lists for {cfg.name!r}")

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
            on_evidence=self._on_evidence)
        self.gossip = TxGossip(self.net.broadcast, self.chain, self.mempool, cfg.mempool,
                               on_admitted=self.driver.mempool_changed)
        self.sync = BlockSync(self.net, self.chain, self.driver, self.peer_ids)
        self.rpc = JsonRpcApp(self, METHODS, cfg.rpc.tokens, cfg.rpc.read_requires_token,
                              cfg.rpc.max_body_bytes, cfg.rpc.rate_limit_per_second)
        self._last_view = self.replica.view
        self._commit_waiters: dict[bytes, list[trio.Event]] = {}
        # Txs acknowledged as pending before a restart come back unless they committed meanwhile.
        self.mempool.restore(self.store.has_tx, time.monotonic())

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.net.run)
                self.net.serve(SYNC_CHANNEL, self.sync.serve)
                nursery.start_soon(self._inbox_loop)
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

    def close(self) -> None:
        self.wal.close()
        self.mempool.close()
        self.store.close()

    async def _serve_rpc(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        config = HypercornConfig()
        config.bind = [self.cfg.rpc.listen]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.keep_alive_timeout = 30
        await hypercorn_serve(self.rpc.app, config, task_status=task_status)

    async def _inbox_loop(self) -> None:
        while True:
            try:
                batch = await self.net.receive_batch()
            except trio.EndOfChannel:
                return
            for peer, channel, data in batch:
                index = self._index_of_peer.get(peer)
                if index is None:
                    continue  # network/ admits members only; defence in depth
                if channel == CONSENSUS_CHANNEL:
                    self.driver.message(index, data)
                elif channel == TX_CHANNEL:
                    self.gossip.on_batch(peer, data)
            await trio.lowlevel.checkpoint()

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
            raw = make_tx("evidence.equivocation", self.member_key, chain_id=self.genesis.chain_id,
                          member=self.cfg.name, **fields)
            offender = self.genesis.members[fields["offender"]].name
            self.submit([raw], checked=False)
        except Exception:  # a report we cannot turn into a valid tx must not stop consensus
            log.exception("replica reported evidence that cannot become a tx")
            return
        log.warning("equivocation by member %s recorded as evidence", offender)

    # ------------------------------------------------------------------ transactions
    def event_to_tx(self, event: dict) -> bytes:
        fields = event_to_tx_fields(event, self.pseudonymizer, chain_id=self.genesis.chain_id,
                                    member=self.cfg.name, client=bytes(self.member_key.verify_key))
        raw = sign_tx(fields, self.member_key)
        self.chain.check_own_tx(raw)  # admission then finds it checked and skips re-verifying our signature
        return raw

    def submit(self, raws: list[bytes], checked: bool = True) -> list[dict]:
        """Admit txs (already checked unless checked=False); durable before returning. One answer per tx."""
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

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        head = self.store.head
        return {
            "node": self.cfg.name, "chain_id": self.genesis.chain_id,
            "height": self.store.height, "head": head.hex() if head else None,
            "view": self.replica.view, "primary": self.genesis.members[self.replica.primary].name,
            "peers": len(self.net.connected_peers()), "members": len(self.genesis.members),
            "mempool": len(self.mempool), "syncing": self.sync.syncing,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
