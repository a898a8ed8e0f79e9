"""Fixtures for the ledger tests (helpers live in ledger_helpers.py, importable from the tests)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from ledger_helpers import Consortium  # noqa: E402

from node.ledger.chain import Chain  # noqa: E402
from node.ledger.store import Store  # noqa: E402


@pytest.fixture
def consortium() -> Consortium:
    return Consortium()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "chain")
    yield s
    s.close()


@pytest.fixture
def chain(consortium, store) -> Chain:
    return Chain(consortium.genesis, store)
