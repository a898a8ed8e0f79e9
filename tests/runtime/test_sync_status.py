"""The members' status exchange (node/runtime/sync.py): what a member says about itself (height, view, mempool,
peers, last block time) is bounded and validated on decode, and a lying member cannot break a reader."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.explorer.data import ago, fmt_time
from node.runtime.sync import (
    MAX_STATUS_BYTES,
    MAX_TIME_MS,
    PeerStatus,
    SyncError,
    decode_status,
    decode_status_report,
)


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


FULL = {"height": 7, "head": b"\x01" * 32, "view": 2, "mempool": 13, "peers": 3, "time": 1_800_000_000_000}


def test_full_report_decodes_and_old_members_still_do():
    assert decode_status_report(pack(FULL)) == PeerStatus(7, 2, 13, 3, 1_800_000_000_000)
    assert decode_status(pack(FULL)) == 7
    # a member that reports only its height (before this change) is shown with the rest unknown
    assert decode_status_report(pack({"height": 5, "head": b""})) == PeerStatus(5)


BAD = [
    pack({**FULL, "view": -1}),
    pack({**FULL, "view": 1 << 63}),
    pack({**FULL, "mempool": 1 << 32}),
    pack({**FULL, "mempool": "13"}),
    pack({**FULL, "mempool": 1.5}),
    pack({**FULL, "peers": True}),  # bool is an int in Python, not here
    pack({**FULL, "peers": 1 << 16}),
    pack({**FULL, "time": MAX_TIME_MS + 1}),  # datetime cannot show it: it would break the page
    pack({**FULL, "time": -5}),
    pack({**FULL, "view": [1]}),
    pack({**FULL, "height": None}),
    pack({"view": 1, "mempool": 2}),  # no height
    pack({**FULL, **{f"k{i}": i for i in range(8)}}),  # more fields than any status has
    pack({**FULL, "head": b"x" * 65}),
    pack({**FULL, "pad": "x" * 17}),
    pack(list(FULL.items())),
    b"\x81\xa6height" + b"\xcf" + b"\xff" * 8,  # uint64 over 2^63
    b"\x8f",  # truncated map
    b"\xc1",  # never-used byte
    pack(FULL) + b"\xc0" * MAX_STATUS_BYTES,  # over MAX_STATUS_BYTES (checked before decoding)
    pack(FULL) + b"\xc0",  # trailing data
    b"\x00" * (MAX_STATUS_BYTES + 1),
    bytearray(pack(FULL)),  # not bytes
]


@pytest.mark.parametrize("reply", BAD)
def test_malformed_or_oversized_status_is_refused_with_sync_error(reply):
    with pytest.raises(SyncError):
        decode_status_report(reply)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["height", "head", "view", "mempool", "peers", "time", "x"]),
                    st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.binary(max_size=80), st.text(max_size=20),
                              st.none(), st.booleans(), st.floats()),
                    max_size=8).map(pack)))
def test_any_reply_decodes_to_a_showable_status_or_sync_error(reply):
    """An attacker's status answer: either refused with SyncError, or every value can be shown."""
    try:
        report = decode_status_report(reply)
    except SyncError:
        return
    assert len(reply) <= MAX_STATUS_BYTES
    for value in (report.height, report.view, report.mempool, report.peers, report.time):
        assert value is None or (type(value) is int and value >= 0)
    fmt_time(report.time)  # never raises: a lying member cannot break the consortium page
    ago(report.time)
