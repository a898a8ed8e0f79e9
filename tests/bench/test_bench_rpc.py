"""The RPC benchmark runs end to end on a small ledger (it rotted once: audit_trail began asking the node's
tokenizer, and the benchmark's stand-in node had none, so `make bench` died half way)."""

from __future__ import annotations

import json

from bench import rpc


def test_bench_rpc_small_run(capsys):
    assert rpc.main(["--txs", "4000", "--block", "1000", "--queries", "10", "--submit", "400"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["txs"] == 4000
    # every study's history was found (the handler asserts a non-empty page), over HTTP too
    assert result["audit"]["handler_raw"]["p99"] > 0
    for impl in ("stdlib", "orjson", "orjson+1w"):  # the RPC as it was, and this code, in the same server
        assert result["http_audit"][impl]["p99"] > 0
        assert result["submit_tps"][f"batch100_{impl}"] > 0 and result["submit_tps"][f"single_{impl}"] > 0
    assert result["codec_us"]["encode_orjson_us"] > 0
