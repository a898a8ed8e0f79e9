"""The ledger benchmark runs end to end on a small input (keeps bench/ledger.py from rotting)."""

from __future__ import annotations

import re

from bench import ledger


def test_bench_ledger_small_run(capsys):
    assert ledger.main(["--txs", "1000", "--block", "250", "--rounds", "1", "--no-sync"]) == 0
    out = capsys.readouterr().out
    assert "1000 signed txs" in out
    raw, led = (float(x) for x in re.findall(r"(\d+) tx/s  \(", out)[:2])
    assert raw > 0 and led > 0
    assert re.search(r"ratio ledger/raw\s+:\s+\d+\.\d\dx", out)
