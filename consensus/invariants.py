"""Invariant checks (TigerBeetle style): a broken invariant is a bug in this replica, never a peer's doing, so
it stops the replica loudly instead of becoming a counter. Hostile input is refused before it can reach
one of these (decode errors, failed signature or proof checks: Replica.stats["drop_<reason>"])."""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """The replica's state broke one of its invariants. Replica.handle() lets it propagate: the runtime
    must stop (and restart from its WAL), the simulator reports it as a violation."""


def check(condition: bool, what: str) -> None:
    """Raise InvariantViolation(what) unless condition holds. Unlike `assert`, never compiled away (-O)."""
    if not condition:
        raise InvariantViolation(what)
