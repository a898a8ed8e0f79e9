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
    """Transactions waiting in the mempool (0 = idle)."""
    count: int


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
