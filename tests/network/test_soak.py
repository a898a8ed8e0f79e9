"""Soak (excluded from `make test`; run with `make soak`): repeated 4-process all-to-all bursts.

The yamux RTT-ping deadlock wedged ~1 burst in 10 before the workaround; every burst must finish.
"""

from __future__ import annotations

import pytest

from bench.network import _run


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_repeated_all_to_all_bursts_never_wedge(request):
    if "soak" not in (request.config.option.markexpr or ""):
        pytest.skip("soak run: select it with -m soak (make soak)")
    rates = []
    for _ in range(15):
        result = _run("p2p", nodes=4, messages=5000, size=300)
        assert result["elapsed"] < 60, result
        rates.append(round(result["msgs_per_s"]))
    print("msgs/s per burst:", rates)
