"""bench.batch_signatures times the node's real signing and checking code, and what it times really checks:
both arms give txs that decode and verify, the batched arm one signature per batch of at most its size."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from bench.batch_signatures import bodies_of_the_load, check, sign
from node.ledger.tx import TxError, encode_tx


def test_both_arms_sign_what_the_node_accepts_and_a_changed_body_is_refused():
    key = SigningKey(bytes([3]) * 32)
    bodies = bodies_of_the_load(40, key)
    each, batched = sign(bodies, key, 1), sign(bodies, key, 16)
    check(each)
    check(batched)
    assert len({tx.sig for tx in each}) == 40 and len({tx.sig for tx in batched}) == 3  # 40: 14, 13, 13
    assert [tx.body for tx in each] == [tx.body for tx in batched]
    tx = batched[5]
    changed = tx.body[:-1] + bytes([tx.body[-1] ^ 1])
    with pytest.raises(TxError):
        check([type(tx)(encode_tx(changed, tx.sig, tx.proof), b"", changed, tx.sig, tx.fields, tx.proof)])


def test_it_runs_and_is_part_of_make_bench(capsys):
    from bench import __main__ as bench_main
    from bench import batch_signatures

    assert batch_signatures.main(["--events", "20", "--batch", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "us of signature work saved per tx per node" in out and "bytes batched" in out
    assert "bench.batch_signatures" in bench_main.BENCHMARKS
