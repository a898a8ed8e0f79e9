"""One consensus Replica per epoch, seen by the driver as if there were one replica for the whole chain.

Reconfiguration is epoch-based (node.ledger.epochs; as BFT-SMaRt and CometBFT do at a height): when the member
set changes after block S, the node retires the epoch's Replica and starts a fresh one with the new
Config (members, f, quorum), view 0, its own WAL and its own consensus chain id. The replica of an epoch
starting at height B counts heights from 1: its height h is block B - 1 + h. To the replica a new epoch
is a new PBFT chain (empty WAL, stable checkpoint 0, watermarks from 0), so nothing inside consensus/
changes, while certificates state their epoch-local height, signed under the epoch's chain id: checked
by height with ``Epoch.local`` (node.ledger.chain, node.ledger.verifier).

``EpochReplica`` translates heights both ways (events in, actions out) and, once retired (the node
executed the epoch's last block), answers nothing. Its actions are produced lazily, one at a time, so a
Commit or RequestProposal past the epoch's last block that the retired replica had already queued in the
same action list is dropped instead of executed (no block of a new epoch ever commits under the old set).
``Observer`` stands in for a node that is not a member of the current epoch (a joining hospital syncing
up to its switch height, or a removed one): no votes, blocks only by block sync.
"""

from __future__ import annotations

import dataclasses

from consensus import actions as A
from consensus import events as E

__all__ = ["EpochReplica", "Observer", "EpochApp"]

_HEIGHT_EVENTS = (E.ProposalReady, E.Executed, E.StateTransferred)


class EpochApp:
    """The consensus app interface (digest, validate) of the chain for one epoch's local heights."""

    def __init__(self, chain, offset: int):
        self.chain, self.offset = chain, offset

    def digest(self, payload: bytes) -> bytes:
        return self.chain.digest(payload)

    def validate(self, height: int, payload: bytes) -> bool:
        return self.chain.validate(height + self.offset, payload)


class EpochReplica:
    def __init__(self, replica, epoch, chain):
        self.replica = replica
        self.epoch = epoch
        self.offset = epoch.start - 1
        self.chain = chain
        self.retired = False
        self.stats = replica.stats

    def __getattr__(self, name: str):
        # anything else (config, crypto, ...) is the inner replica's: in epoch 0 (offset 0) heights coincide
        return getattr(self.replica, name)

    # the read-only view the driver and runtime use, in chain heights
    @property
    def view(self) -> int:
        return self.replica.view

    @property
    def primary(self) -> int:
        return self.replica.primary

    @property
    def is_primary(self) -> bool:
        return self.replica.is_primary

    @property
    def highest_proposed(self) -> int:
        return self.replica.highest_proposed + self.offset

    @property
    def last_committed(self) -> int:
        return self.replica.last_committed + self.offset

    def _past_epoch(self, height: int) -> bool:
        """Block ``height`` belongs to a later epoch (known once the approving block executed)."""
        return self.chain.epoch_known(height) and self.chain.epoch_at(height).start != self.epoch.start

    def start(self):
        return self._out(self.replica.start())

    def handle(self, event):
        if self.retired:
            return ()
        if isinstance(event, _HEIGHT_EVENTS):
            local = event.height - self.offset
            if local < 1:
                return ()  # a block of an earlier epoch (a replayed commit): not this replica's business
            event = dataclasses.replace(event, height=local)
        return self._out(self.replica.handle(event) or ())

    def _out(self, actions):
        off = self.offset
        for action in actions:
            if self.retired:
                return
            if isinstance(action, A.Commit | A.RequestProposal):
                height = action.height + off
                if self._past_epoch(height):
                    continue  # the member set changes before this height: never under this one
                yield dataclasses.replace(action, height=height)
            elif isinstance(action, A.RequestStateTransfer):
                yield dataclasses.replace(action, target_height=action.target_height + off)
            else:
                yield action


class Observer:
    """A node outside the current member set: it follows the chain by block sync only."""

    def __init__(self, epoch):
        self.epoch = epoch
        self.retired = False
        from collections import Counter

        self.stats = Counter()

    view = 0
    primary = 0
    is_primary = False
    highest_proposed = 0
    last_committed = 0

    def start(self):
        return ()

    def handle(self, event):
        return ()
