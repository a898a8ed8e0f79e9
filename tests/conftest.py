"""Fixtures every test directory may use: a 4-member test consortium, a LevelDB store and a chain on it.

Shared helpers live in tests/testkit/ (ledger_helpers: signed txs, certificates), importable from any test."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def browser():
    """One headless Debian Chromium for the whole session. Playwright's sync API keeps its own event loop
    running while it is open, so a second sync_playwright() in the same session fails: every browser test
    (explorer pages, the patient access report) shares this one."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        # root needs --no-sandbox; a generous launch timeout: on a loaded 2-core machine launching took ~29 s
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], timeout=180_000)
        try:
            yield b
        finally:
            b.close()
