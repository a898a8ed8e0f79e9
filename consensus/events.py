"""Events the runtime feeds into Replica.handle()."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class MessageReceived:
    sender: int  # replica id as authenticated by the transport
    data: bytes


@dataclass(frozen=True)
class TimerFired:
    timer: Hashable


@dataclass(frozen=True)
class ProposalReady:
    """The node's answer to RequestProposal(height): a payload for that height (may be an empty block)."""
    height: int
    payload: bytes


@dataclass(frozen=True)
class WorkPending:
    """Transactions waiting in the mempool (0 = idle), and the oldest one the node holds: an id (e.g. its
    hash; b"" = none) and how long the node has held it, in seconds (consensus has no clock). The replica
    complains about the primary when it has held the same tx for config.request_timeout."""
    count: int
    oldest: bytes = b""
    oldest_age: float = 0.0


@dataclass(frozen=True)
class Executed:
    """The node applied the committed block at height; state_digest feeds checkpoints."""
    height: int
    state_digest: bytes


@dataclass(frozen=True)
class StateTransferred:
    """The node synced blocks (with certificates) up to height; answers every RequestStateTransfer."""
    height: int
    state_digest: bytes


Event = MessageReceived | TimerFired | ProposalReady | WorkPending | Executed | StateTransferred
