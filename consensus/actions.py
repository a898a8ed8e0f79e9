"""Actions Replica returns; the runtime performs them in list order (a Persist is durable before the next)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    to: int
    data: bytes


@dataclass(frozen=True)
class Broadcast:
    """Send to every other member."""
    data: bytes


@dataclass(frozen=True)
class Persist:
    """Append to the write-ahead log and fsync before performing any later action of the same list."""
    record: bytes


@dataclass(frozen=True)
class SetTimer:
    """(Re)arm a timer: an existing timer with the same id is replaced."""
    timer: Hashable
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    timer: Hashable


@dataclass(frozen=True)
class RequestProposal:
    height: int


@dataclass(frozen=True)
class Commit:
    """Execute this block: emitted exactly once per height, in height order, never for heights <= last_executed."""
    height: int
    payload: bytes
    digest: bytes
    certificate: bytes  # consensus.certificate.Certificate.encode()


@dataclass(frozen=True)
class RequestStateTransfer:
    """Sync committed blocks with certificates from peers (at least up to target_height), then StateTransferred."""
    target_height: int
    peers: tuple[int, ...]


@dataclass(frozen=True)
class ReportEvidence:
    """Two conflicting signed messages from one member (consensus.evidence.decode_evidence/verify_evidence)."""
    evidence: bytes


Action = Send | Broadcast | Persist | SetTimer | CancelTimer | RequestProposal | Commit | RequestStateTransfer | ReportEvidence
