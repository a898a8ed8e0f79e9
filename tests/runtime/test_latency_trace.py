"""node/runtime/latency_trace.py: the stages it reports for a tx are the ones that tx went through."""

from __future__ import annotations

import hashlib
import logging
import time
from types import SimpleNamespace

from node.runtime.latency_trace import LatencyTrace


def test_a_proposed_and_committed_tx_is_reported_in_each_stage(caplog):
    raw = b"a tx"
    h = hashlib.sha256(raw).digest()
    now = time.monotonic()
    tx = SimpleNamespace(fields={"ts": int(time.time() * 1000) - 300})  # its client built it 300 ms ago
    node = SimpleNamespace(
        mempool=SimpleNamespace(_arrival={h: now - 0.2}, get=lambda _h: raw),
        chain=SimpleNamespace(verified=lambda _h: tx), cfg=SimpleNamespace(name="hosp-a"),
        driver=SimpleNamespace(_exec_times=[0.06]), replica=SimpleNamespace(is_primary=True))
    trace = LatencyTrace(node)
    trace.on_propose(7, [raw])
    trace.committed(7)
    trace.on_commit(SimpleNamespace(height=7, tx_hashes=(h,)))
    s = trace.samples
    assert 190 <= s["wait_propose"][0] < 1000 and 190 <= s["here"][0] < 1000
    assert 290 <= s["e2e"][0] < 1100
    assert 50 <= s["to_here"][0] <= 150  # 300 ms since the client, 200 of them here
    assert 0 <= s["agree"][0] < 500 and 0 <= s["consensus"][0] < 500
    with caplog.at_level(logging.INFO, logger="radchain.latency"):
        trace._report()
    assert "latency trace hosp-a primary=True" in caplog.text and "e2e p50" in caplog.text
    assert trace.samples == {} and trace.proposed == {}
