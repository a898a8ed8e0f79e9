"""A test-only member whose node skips its own research-rule check at admission (`radchain start` otherwise).

    python tests/research/forcing_node.py HOME

Everything else is the real node: it signs, gossips, proposes and executes as usual, so a rule-breaking tx
submitted to it reaches a block when it is the primary, and every validator (itself included) must reject
it at execution. Kept under tests/: never part of the installed package.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from node.cli import main  # noqa: E402
from node.ledger.state import LedgerState  # noqa: E402

LedgerState.rule_violation = lambda self, fields, now_ms: None  # admission only; execution still decides

if __name__ == "__main__":
    sys.exit(main(["start", "--home", sys.argv[1]]))
