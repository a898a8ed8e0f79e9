"""Fuzz the JSON-RPC endpoint of a real running node with thousands of generated inputs (hypothesis:
3,500 requests, batches of up to 8 calls among them).

Properties: every answer is a well-formed JSON-RPC 2.0 answer (or 204 for notifications), every error has
an integer code and a message, no input reaches the internal-error path (-32603: that would be a bug in a
handler), and afterwards the node is up, still agrees with the other three, and still commits.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ledger.intake import EXAMPLE_EVENT
from node.rpc.methods import METHODS

pytestmark = pytest.mark.timeout(300)

TARGET = 2  # the fuzzed node
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5) |
                           st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)
PARAM_NAMES = ["hash", "tx", "mode", "timeout", "event", "height", "from", "to", "limit", "cursor", "receipt",
               "study", "study_uid", "patient", "patient_id", "issuer", "actor", "user", "ae", "member", "type",
               "since", "until"]
hexish = st.text(alphabet="0123456789abcdefABCDEFx", max_size=80)
param_values = json_values | hexish | st.sampled_from(["async", "sync", "commit", "instances.accessed", "hosp-a"])
event_like = st.fixed_dictionaries({}, optional={k: json_scalars | st.just(v) for k, v in EXAMPLE_EVENT.items()})
calls = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_scalars, "method": st.sampled_from(sorted(METHODS)) | st.text(max_size=20)},
    optional={"id": st.integers() | st.text(max_size=10) | st.none() | json_values,
              "params": st.dictionaries(st.sampled_from(PARAM_NAMES), param_values | event_like, max_size=4)
              | json_values})


@pytest.fixture(scope="module")
def client(net):
    info = net.nodes[TARGET]
    with httpx.Client(headers={"Authorization": f"Bearer {info.token}"}, timeout=30) as http:
        yield info.rpc, http


def check_answer(reply: httpx.Response, sent) -> None:
    assert reply.status_code in (200, 204, 413, 429), reply.status_code
    if reply.status_code == 204:
        return
    body = reply.json()
    answers = body if isinstance(body, list) else [body]
    if isinstance(body, list):
        assert isinstance(sent, list) and 0 < len(body) <= len(sent)
    for answer in answers:
        assert answer["jsonrpc"] == "2.0" and "id" in answer
        assert ("result" in answer) != ("error" in answer), answer
        if "error" in answer:
            err = answer["error"]
            assert isinstance(err["code"], int) and isinstance(err["message"], str) and err["message"]
            assert err["code"] != -32603, f"internal error for {json.dumps(sent)[:300]}"


@settings(max_examples=700, **SETTINGS)
@given(body=st.binary(max_size=300))
def test_fuzz_raw_bytes(client, body):
    url, http = client
    check_answer(http.post(url, content=body), None)


@settings(max_examples=800, **SETTINGS)
@given(value=json_values)
def test_fuzz_any_json(client, value):
    url, http = client
    check_answer(http.post(url, json=value), value)


@settings(max_examples=2000, **SETTINGS)
@given(payload=calls | st.lists(calls, min_size=1, max_size=8))
def test_fuzz_rpc_shaped_calls(client, payload):
    url, http = client
    for item in payload if isinstance(payload, list) else [payload]:
        params = item.get("params") if isinstance(item, dict) else None
        if isinstance(params, dict) and params.get("mode") == "commit":
            params["timeout"] = 0.05  # keep commit-mode waits short
    check_answer(http.post(url, content=json.dumps(payload).encode()), payload)


def test_node_survives_and_stays_consistent_after_fuzzing(net):
    info = net.nodes[TARGET]
    assert net.rpc(TARGET, "status")["node"] == info.name
    ev = {**EXAMPLE_EVENT, "event_id": f"after-fuzz-{time.time_ns()}", "time": int(time.time() * 1000)}
    answer = net.rpc(TARGET, "submit_event", {"event": ev, "mode": "commit", "timeout": 30}, timeout=45)
    assert answer["status"] == "committed"
    height = answer["height"]
    net.wait_until(lambda: all(net.height(i) >= height for i in range(4)), 60, "all nodes at the new height")
    for h in range(1, height + 1):
        assert len({net.rpc(i, "get_block", {"height": h})["hash"] for i in range(4)}) == 1, f"fork at {h}"
    metrics = httpx.get(info.rpc + "/metrics", headers={"Authorization": f"Bearer {info.token}"}).text
    assert 'radchain_rpc_errors_total{code="-32603"}' not in metrics
