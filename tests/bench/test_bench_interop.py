"""The interop benchmark times look-ups that find something. It rotted silently once: bench.rpc's ledger began
writing the nodes' OPRF tokens while this benchmark still queried HMAC tokens, so every look-up found nothing
and the prior-imaging goal read "met (0.0 ms)"."""

from __future__ import annotations

import re

from bench import interop


def test_bench_interop_queries_patients_the_ledger_holds(capsys):
    assert interop.main(["--txs", "6000", "--queries", "20"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"patient max (\d+) mean (\d+), patient_stored max (\d+) mean (\d+)", out)
    assert found, out
    patient_max, patient_mean, stored_max, stored_mean = map(int, found.groups())
    assert patient_mean > 0 and stored_max > 0, out  # each queried patient's events, and some stores, are found
    assert "goal: prior_imaging p99 <= 50 ms" in out
