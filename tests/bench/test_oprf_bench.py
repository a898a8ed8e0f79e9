"""The OPRF benchmark runs end to end on a small batch (keeps bench/oprf.py from rotting) and is listed."""

from __future__ import annotations

import re

from bench import __main__ as bench_main
from bench import oprf as bench_oprf


def test_bench_oprf_small_run(capsys):
    assert bench_oprf.main(["--batch", "5", "--t", "2", "--n", "3", "--rounds", "1", "--net-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "t=2 of n=3, batch 5 identifiers" in out
    evals = float(re.search(r"(\d+) evals/s per member", out).group(1))
    assert evals > 0
    assert re.search(r"ratio threshold/HMAC\s+:\s+\d+x", out)
    assert re.search(r"tokenize 1 fresh id\s+: p50\s+\d+\.\d ms", out)
    assert "bench.oprf" in bench_main.BENCHMARKS
