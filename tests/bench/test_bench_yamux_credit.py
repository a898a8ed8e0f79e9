"""The yamux credit benchmark compares the two rules it names: the library's (a credit frame per small
message) against network/patches.py's (once per half window), not the same rule twice."""

from __future__ import annotations

import re

from bench import yamux_credit


def test_bench_yamux_credit_measures_both_rules(capsys):
    yamux_credit.main(["--messages", "300", "--rounds", "1"])
    out = capsys.readouterr().out
    credits = [float(x) for x in re.findall(r"([\d.]+) WINDOW_UPDATE frames per message", out)]
    assert len(credits) == 2, out
    library, patch = credits
    assert library >= 0.5 and patch < 0.05, out
    assert re.search(r"ratio: frames [\d.]+x, CPU [\d.]+x", out), out
