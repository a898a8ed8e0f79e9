"""Replica configuration: the consortium (chain id, member keys) and protocol tuning with defaults."""

from __future__ import annotations

from dataclasses import dataclass

from .certificate import max_faulty, quorum


@dataclass(frozen=True)
class Config:
    chain_id: str
    members: tuple[bytes, ...]  # ed25519 public keys; index = replica id
    # K: a checkpoint every K heights. PBFT (Castro & Liskov 2002, sec. 4.3) takes K=100 requests; a block
    # already batches ~2,000 txs, so 16 blocks keep the unstable log (and the WAL) short.
    checkpoint_interval: int = 16
    # L: heights accepted above the last stable checkpoint (high watermark = low + L). PBFT suggests L = 2K;
    # 4K lets a checkpoint take a while to become stable without stalling the pipeline.
    watermark_window: int = 64
    # Heights the primary keeps in flight (proposed, not yet committed).
    pipeline: int = 4
    # A backup with pending work votes a view change if nothing commits for this long.
    progress_timeout: float = 5.0
    # Waiting for NEW-VIEW once 2f+1 VIEW-CHANGEs for the view are in; doubles per consecutive view change.
    view_change_timeout: float = 5.0
    # Timeouts double per consecutive view change without a commit, at most 2**max_backoff times and never
    # beyond max_timeout seconds. Doubling exists so a timeout eventually exceeds the real message delay and
    # block execution time (PBFT liveness); both are under ~2 s here, so 30 s is ample, and a hospital waits
    # at most half a minute per failed view change (5, 10, 20, 30, 30 s) instead of 160 s.
    max_backoff: int = 5
    max_timeout: float = 30.0
    # A backup that has held the same pending tx this long complains about the primary; f+1 complaints in a
    # view start a view change (PBFT's per-request timer; consensus/fairness.py). Well above the ~2 s of
    # backlog admission control allows, so an honest primary under load is not replaced.
    request_timeout: float = 10.0
    # Throughput floor (Aardvark): over this many busy ticks, a view delivering less than this fraction of the
    # best rate of the last views gets complaints.
    throughput_window: int = 8
    throughput_floor: float = 0.25
    # Status gossip and retransmission of this replica's in-flight messages (lost messages, restarted peers).
    retransmit_interval: float = 1.0
    # A state transfer that has not answered by then is asked again.
    state_transfer_timeout: float = 20.0
    # Committed blocks pushed to a lagging peer per status message.
    catchup_batch: int = 4
    # Largest accepted message (a pre-prepare carries the ~1 MB payload).
    max_message_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        if len(self.members) < 1:
            raise ValueError("at least one member")
        if self.checkpoint_interval < 1 or self.pipeline < 1:
            raise ValueError("checkpoint_interval and pipeline must be positive")
        # L >= 2K: a replica that restarted and missed one checkpoint still reaches the next one in-window.
        if self.watermark_window < 2 * self.checkpoint_interval or self.watermark_window % self.checkpoint_interval:
            raise ValueError("watermark_window must be a multiple of checkpoint_interval, at least twice it")
        if self.request_timeout <= 0 or self.throughput_window < 1 or not 0 <= self.throughput_floor < 1:
            raise ValueError("request_timeout, throughput_window and throughput_floor out of range")
        if self.max_timeout <= 0:
            raise ValueError("max_timeout must be positive")
        if self.pipeline > self.watermark_window:
            raise ValueError("pipeline must fit in the watermark window")

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        return max_faulty(self.n)

    @property
    def quorum(self) -> int:
        return quorum(self.n)

    def primary(self, view: int) -> int:
        return view % self.n
