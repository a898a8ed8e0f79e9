"""The attacker's tests for the `oprf.counts` tx (a member's evaluation counts, node.runtime.tokenizer): any
member may send one, so every malformed shape must be a TxError from the decoder, never a crash or a tx the
state would apply."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from node.ledger.intake import make_tx
from node.ledger.tx import MAX_LIST, TxError, decode_tx

KEY = SigningKey(bytes(range(32)))


def counts_tx(counts, period_ms=60_000) -> bytes:
    return make_tx("oprf.counts", KEY, chain_id="radchain-test", member="hosp-a",
                   oprf_counts=counts, period_ms=period_ms)


def test_well_formed_counts_decode():
    tx = decode_tx(counts_tx([["hosp-b", 120, 3], ["hosp-c", 0, 7]]))
    assert tx.fields["oprf_counts"] == [["hosp-b", 120, 3], ["hosp-c", 0, 7]]


@pytest.mark.parametrize("counts", [
    [],                                            # nothing to record
    [["hosp-b", 1]],                               # short row
    [["hosp-b", 1, 2, 3]],                         # long row
    [["hosp-b", -1, 0]],                           # negative count
    [["hosp-b", 1 << 32, 0]],                      # count past 2^32-1
    [["hosp-b", 0, 0]],                            # an empty row inflates the table for nothing
    [["hosp-b", 1, 0], ["hosp-b", 2, 0]],          # one requester twice
    [["", 1, 0]],                                  # empty name
    [["x" * 65, 1, 0]],                            # name too long
    [[b"hosp-b", 1, 0]],                           # name as bytes
    [["hosp-b", True, 0]],                         # bool is not a count
    [["hosp-b", 1.0, 0]],                          # float is not a count
    [[["hosp-b"], 1, 0]],                          # nested where a name goes
    [[[[[["deep"]]]]]],                            # nesting
    [[f"m{i}", 1, 0] for i in range(MAX_LIST + 1)],  # more rows than any list may hold
    "hosp-b",                                      # not a list at all
])
def test_malformed_counts_are_refused(counts):
    with pytest.raises(TxError):
        decode_tx(counts_tx(counts))


@pytest.mark.parametrize("period_ms", [0, -5, 1 << 63, "60000", 1.5])
def test_bad_period_is_refused(period_ms):
    with pytest.raises(TxError):
        decode_tx(counts_tx([["hosp-b", 1, 0]], period_ms=period_ms))
