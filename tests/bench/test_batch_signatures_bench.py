"""bench.batch_signatures measures a check that really checks: its batched form refuses a changed body, a
moved index, another batch's signature and a re-encoding under another batch size, as the per-tx form
refuses a changed body."""

from __future__ import annotations

import msgpack
import pytest
from nacl.signing import SigningKey

from bench.batch_signatures import BatchError, _bodies, _check_batched, _check_each, _sign_batches, _sign_each
from node.ledger.tx import TxError


def _tamper_body(wire: bytes) -> bytes:
    items = msgpack.unpackb(wire)
    items[0] = items[0][:-1] + bytes([items[0][-1] ^ 1])
    return msgpack.packb(items, use_bin_type=True)


def test_both_forms_accept_what_was_signed_and_refuse_a_changed_body():
    key = SigningKey(bytes([3]) * 32)
    client = bytes(key.verify_key)
    bodies = _bodies(10, key)
    each, batched = _sign_each(bodies, key), _sign_batches(bodies, key, 4)
    _check_each(each, client)
    _check_batched(batched, client)
    with pytest.raises(TxError):
        _check_each([_tamper_body(each[5])], client)
    with pytest.raises(BatchError):
        _check_batched([_tamper_body(batched[5])], client)
    body, sig, index, count, path = msgpack.unpackb(batched[5])
    moved = msgpack.packb([body, sig, index ^ 1, count, path], use_bin_type=True)
    with pytest.raises(BatchError):
        _check_batched([moved], client)
    other_sig = msgpack.unpackb(batched[0])[1]  # the first batch's signature on a tx of the second
    with pytest.raises(BatchError):
        _check_batched([msgpack.packb([body, other_sig, index, count, path], use_bin_type=True)], client)
    # leaf 2 of 3 has the same path as leaf 1 of 2 (RFC 9162's unbalanced tree): the signed count refuses it
    three = _sign_batches(bodies[:3], key, 3)
    body, sig, index, count, path = msgpack.unpackb(three[2])
    assert (index, count, len(path)) == (2, 3, 1)
    _check_batched([three[2]], client)
    with pytest.raises(BatchError):
        _check_batched([msgpack.packb([body, sig, 1, 2, path], use_bin_type=True)], client)


def test_the_projection_runs_and_is_part_of_make_bench(capsys):
    from bench import __main__ as bench_main
    from bench import batch_signatures

    assert batch_signatures.main(["--events", "20", "--batch", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "us of signature work saved per tx per node" in out and "bytes batched" in out
    assert "bench.batch_signatures" in bench_main.BENCHMARKS
