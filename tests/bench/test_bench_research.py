"""The research benchmark runs end to end on a small input (it rotted once: consent grantees became tokens
in issue 13 and the benchmark still wrote a name, so `make bench` died at it)."""

from __future__ import annotations

import re

from bench import research


def test_bench_research_small_run(capsys):
    research.main(["--txs", "500", "--block", "250", "--rounds", "1"])
    out = capsys.readouterr().out
    gate = re.search(r"export gate: 500 research exports executed at ([\d,]+) tx/s.*ratio (\d\.\d+)", out)
    assert gate and float(gate.group(2)) > 0, out
    assert re.search(r"de-identification: \d+ instances/s", out), out
