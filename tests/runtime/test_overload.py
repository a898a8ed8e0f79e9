"""Four real node processes pushed past their capacity: backpressure instead of collapse.

Clients that ignore every hint flood all four nodes with JSON-RPC batches of submit_event. The nodes must
refuse the excess with a retry error carrying `retry_after` (HTTP 429 for a plain client), keep agreeing
in view 0, and commit every tx they accepted; the SDK and the DICOM spool deliverer, which honour the
delay, get everything in.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time

import httpx
import pytest

from node.client import RadChainClient
from node.dicom.delivery import Deliverer
from node.dicom.spool import Spool
from node.ledger.intake import EXAMPLE_EVENT
from node.rpc.errors import MEMPOOL_FULL, RATE_LIMITED
from node.testnet import wait_ready

pytestmark = pytest.mark.timeout(180)

PUSH_SECONDS = 8.0
BATCH = 200

_ids = itertools.count()


def _event(tag: str) -> dict:
    return {**EXAMPLE_EVENT, "event_id": f"{tag}-{next(_ids)}", "time": int(time.time() * 1000)}


def _flood(url: str, token: str, tag: str, until: float, out: dict) -> None:
    try:
        _flood_until(url, token, tag, until, out)
    except Exception as exc:  # reported by the test, not lost in a thread
        out["crash"] = repr(exc)


def _flood_until(url: str, token: str, tag: str, until: float, out: dict) -> None:
    """An unthrottled client: batch after batch, never waiting, whatever the node answers."""
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        while time.monotonic() < until:
            calls = [{"jsonrpc": "2.0", "id": i, "method": "submit_event", "params": {"event": _event(tag)}}
                     for i in range(BATCH)]
            started = time.monotonic()
            response = http.post(url, json=calls)
            took = time.monotonic() - started
            # Far past capacity all the same (8,000 tx/s offered); unpaced, the four threads would take a
            # whole core of the nodes' two just encoding refused batches.
            time.sleep(max(0.0, 0.1 - took))
            replies = response.json()
            if isinstance(replies, dict):  # the whole request refused: the per-address rate limit
                replies = [replies]
            for reply in replies:
                if "result" in reply:
                    out["accepted"].append(reply["result"]["tx"])
                else:
                    out["errors"].append(reply["error"])
            if all("error" in r for r in replies):
                out["refused_batches"].append((response.status_code, response.headers.get("retry-after"), took))


def _scan_committed(net, node: int, seen: set[str], height: int) -> int:
    """Add the txs of blocks above `height` on `node` to `seen`; returns the new height scanned."""
    while True:
        page = net.rpc(node, "blocks", {"from": height + 1})
        if not page["blocks"]:
            return height
        for block in page["blocks"]:
            seen.update(block["txs"])
            height = block["height"]


def test_overloaded_testnet_refuses_with_retry_after_and_loses_nothing(testnet, tmp_path):
    # A low floor so the backlog limit is what decides, from the first seconds on; and a tenth of a second of
    # commits as that limit, not 2 s: on a quiet machine the four nodes commit most of what these clients
    # offer, and with 2 s they refused only in the first second, before the commit rate was known (a plain
    # call that came later was never refused, one run in five)
    net = testnet(4, config_extra={"mempool": {"min_backlog": 300, "busy_after_s": 0.1}})
    net.start()
    # the full mesh, not only RPC (served before the first sessions are up): "view 0 throughout" below
    # must not depend on whether the flood began while a backup still dialled the primary
    wait_ready(net.nodes, timeout=60, peers=3)
    until = time.monotonic() + PUSH_SECONDS
    floods = [{"accepted": [], "errors": [], "refused_batches": []} for _ in range(4)]
    threads = [threading.Thread(target=_flood, args=(net.nodes[i].rpc, net.nodes[i].token, f"flood{i}", until,
                                                     floods[i]), daemon=True) for i in range(4)]
    for t in threads:
        t.start()

    # A plain HTTP client gets 429 + Retry-After on a refused single call.
    plain = []
    while time.monotonic() < until and not any(r.status_code == 429 for r in plain):
        plain.append(httpx.post(net.nodes[3].rpc, headers={"Authorization": f"Bearer {net.nodes[3].token}"},
                                json={"jsonrpc": "2.0", "id": 1, "method": "submit_event",
                                      "params": {"event": _event("plain")}}, timeout=30))
        time.sleep(0.01)
    # Meanwhile the well-behaved clients: the SDK and the DICOM spool deliverer honour retry_after.
    with RadChainClient(net.nodes[1].rpc, net.nodes[1].token, retry_busy=60) as sdk:
        sdk_answers = sdk.submit_events([_event("sdk") for _ in range(300)])
    spool = Spool(tmp_path / "spool")
    spool_ids = spool.put_many([_event("spool") for _ in range(300)], source="test")
    deliverer = Deliverer(spool, net.nodes[2].rpc, net.nodes[2].token)
    assert deliverer.drain(time.monotonic() + 60), deliverer.last_error
    for t in threads:
        t.join(timeout=60)

    assert [f.get("crash") for f in floods] == [None] * 4
    accepted = [h for f in floods for h in f["accepted"]]
    errors = [e for f in floods for e in f["errors"]]
    refused = [b for f in floods for b in f["refused_batches"]]
    assert accepted, "the nodes admitted nothing under load"
    assert errors, "pushed past capacity, no call was refused"
    # Every refusal is the busy error (or the per-address rate limit, hit by these clients too), with a
    # usable delay; nothing else went wrong.
    assert MEMPOOL_FULL in {e["code"] for e in errors}
    assert {e["code"] for e in errors} <= {MEMPOOL_FULL, RATE_LIMITED}, errors[:3]
    assert all(0 < e["data"]["retry_after"] <= 5 for e in errors)
    assert all(status == 429 and int(after) >= 1 for status, after, _ in refused)
    # A fully refused batch of 200 costs the node no signing: answered without waiting for the backlog (the
    # 100 ms goal is measured by `make bench` with separate client processes; here 5 client threads share
    # one interpreter and the machine runs other tests).
    assert statistics.median(took for *_, took in refused) < 0.5
    busy = next((r for r in plain if r.status_code == 429), None)
    assert busy is not None, f"{len(plain)} single calls during the flood, none refused"
    assert int(busy.headers["retry-after"]) >= 1 and busy.json()["error"]["data"]["retry_after"] > 0

    # The SDK and the deliverer got every event in despite the refusals.
    assert all(isinstance(a, dict) and a["status"] in ("pending", "committed") for a in sdk_answers), \
        [a for a in sdk_answers if not isinstance(a, dict)][:3]
    assert spool.count() == 0 and not spool.dead()
    assert set(spool.delivered()) == set(spool_ids)

    # Every accepted tx commits, and nobody ever suspected the primary.
    wanted = (set(accepted) | {a["tx"] for a in sdk_answers} | {r["tx"] for r in spool.delivered().values()}
              | {r.json()["result"]["tx"] for r in plain if r.status_code == 200})
    committed: set[str] = set()
    scanned = [0]

    def all_committed() -> bool:
        scanned[0] = _scan_committed(net, 0, committed, scanned[0])
        return wanted <= committed

    net.wait_until(all_committed, 60, f"all {len(wanted)} accepted txs committed")
    statuses = [net.rpc(i, "status") for i in range(4)]
    assert [s["view"] for s in statuses] == [0, 0, 0, 0], statuses
    height = min(s["height"] for s in statuses)
    heads = {net.rpc(i, "get_block", {"height": height})["hash"] for i in range(4)}
    assert len(heads) == 1
