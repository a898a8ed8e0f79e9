"""Issue 9, defect 1 via RPC: the tx with a bin key in its body map was a -32603 internal error with a
traceback in the log; it is a -32003 rejection whose data names the field. Same for its relatives."""

from __future__ import annotations

import msgpack
import pytest

from node.rpc.errors import REJECTED
from node.testnet import rpc_call


def _raw(body_map: dict) -> bytes:
    return msgpack.packb([msgpack.packb(body_map, use_bin_type=True), bytes(64)], use_bin_type=True)


CASES = [
    (_raw({"type": "instances.accessed", b"zz": 1}), "b'zz'"),
    (_raw({b"zz": 1, "type": "instances.accessed"}), "b'zz'"),
    (_raw({"type": ["instances.accessed"]}), "type"),
    (_raw({"type": "query", "zz": {b"k": [1]}}), "zz"),
    (b"\x92\xc4\x03\x81\xa1a\xc4\x40" + bytes(64), "body"),
]


@pytest.mark.parametrize("raw, field", CASES)
@pytest.mark.parametrize("mode", ["sync", "commit"])
def test_malformed_tx_is_a_rejection_naming_the_field(net, raw, field, mode):
    info = net.nodes[1]
    reply = rpc_call(info.rpc, "submit_tx", {"tx": raw.hex(), "mode": mode, "timeout": 1}, info.token)
    err = reply["error"]
    assert err["code"] == REJECTED, err
    assert err["data"]["field"] == field and err["message"].startswith(f"rejected: {field}: "), err
    assert net.rpc(1, "status")["node"] == info.name  # and the node still answers
