"""The trickle benchmark measures the steps it names: the library's credit frame per small message, then the
half-window credit, then the read-ahead (fewer socket reads), not the same code three times."""

from __future__ import annotations

import re

from bench import trickle


def test_bench_trickle_measures_each_step(capsys):
    trickle.main(["--messages", "300", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"([\d.]+) WINDOW_UPDATE frames, ([\d.]+) socket reads, CPU \d+ us: ratio [\d.]+x", out)
    assert len(rows) == 3, out
    (lib_credit, lib_reads), (credit, credit_reads), (ahead_credit, ahead_reads) = [tuple(map(float, r)) for r in rows]
    assert lib_credit >= 0.5 and credit < 0.05 and ahead_credit < 0.05, out
    assert ahead_reads < credit_reads, out
