"""Fixtures for the research-sharing tests: the ledger helpers of tests/node and the DICOM helpers of
tests/dicom (Orthanc, the audit proxy, sample files) are reused, not copied."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "node"))
sys.path.insert(0, os.path.join(HERE, "..", "dicom"))

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
