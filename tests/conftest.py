"""Fixtures every test directory may use: a 4-member test consortium, a LevelDB store and a chain on it.

Shared helpers live in tests/testkit/ (ledger_helpers: signed txs, certificates), importable from any test."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "testkit"))

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
