"""WebSocket subscriptions: history then live, and resumption after the client dies without losing an event."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from node.client import RadChainClient, Subscription
from node.ledger.intake import EXAMPLE_EVENT

pytestmark = pytest.mark.timeout(150)

_ids = itertools.count()


def events(study: str, n: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{**EXAMPLE_EVENT, "study_uid": study, "event_id": f"ws-{study}-{next(_ids)}", "time": now + i}
            for i in range(n)]


def submit(info, evs: list[dict], mode: str = "sync") -> list[str]:
    with RadChainClient(info.rpc, info.token) as rc:
        answers = rc.batch([("submit_event", {"event": e, "mode": mode}) for e in evs])
    assert all(isinstance(a, dict) for a in answers), answers
    return [a["hash"] for a in answers]


def follow(info, study: str, from_height: int, out_path) -> subprocess.Popen:
    out = open(out_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "node.cli", "audit", "--url", info.rpc, "--token", info.token,
                             "--study", study, "--follow", "--from-height", str(from_height), "--json"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def complete_lines(path) -> list[dict]:
    text = path.read_bytes().decode(errors="replace")
    lines = text.split("\n")[:-1]  # a line cut by kill -9 has no newline
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def test_follower_killed_mid_stream_resumes_without_losing_an_event(net, tmp_path):
    study = f"1.2.840.77.{os.getpid()}"
    writer, reader = net.nodes[0], net.nodes[1]
    submitted = submit(writer, events(study, 15))  # history before anyone listens
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = follow(reader, study, 1, first_out)
    try:
        wait_for(lambda: len(complete_lines(first_out)) >= 15, 60, "history delivered to the first follower")
        for _ in range(5):  # live events while it listens
            submitted += submit(writer, events(study, 4))
            time.sleep(0.2)
        wait_for(lambda: len(complete_lines(first_out)) >= 20, 60, "some live events delivered")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # mid-stream: no goodbye, maybe half a line
        first.wait()
    submitted += submit(writer, events(study, 10))  # while no one listens

    seen = complete_lines(first_out)
    last = seen[-1]
    second = follow(reader, study, last["height"], second_out)  # resume from the last event's block
    try:
        submitted += submit(writer, events(study, 5))
        wanted = set(submitted)
        wait_for(lambda: wanted <= {e["hash"] for e in seen + complete_lines(second_out)}, 60,
                 "every event delivered across the two followers")
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    resumed = complete_lines(second_out)
    # the second follower starts at the last event's block: at most that block is repeated, nothing skipped
    assert all((e["height"], e["index"]) >= (last["height"], 0) for e in resumed)
    positions = [(e["height"], e["index"]) for e in seen + resumed]
    unique = sorted(set(positions))
    assert len(unique) == len(set(submitted)) == len(submitted)


async def test_sdk_subscription_blocks_and_events_resume_by_position(net):
    info = net.nodes[2]
    study = f"1.2.840.78.{os.getpid()}"
    hashes = await trio.to_thread.run_sync(submit, net.nodes[0], events(study, 6))
    got: list[dict] = []
    with trio.fail_after(60):
        async with Subscription(info.rpc, "events", from_height=1, filter={"study_uid": study},
                                token=info.token) as sub:
            async for ev in sub:
                got.append(ev)
                if len(got) == 3:
                    break
        position, resume_at = sub.position, sub.next_height
        more = await trio.to_thread.run_sync(submit, net.nodes[1], events(study, 3))
        async with Subscription(info.rpc, "events", from_height=resume_at, after=position,
                                filter={"study_uid": study}, token=info.token) as sub2:
            async for ev in sub2:
                got.append(ev)
                if len(got) == 9:
                    break
    assert sorted(e["hash"] for e in got) == sorted(hashes + more)
    assert len({e["hash"] for e in got}) == 9

    heights: list[int] = []
    with trio.fail_after(60):
        async with Subscription(info.rpc, "blocks", from_height=1, token=info.read_token) as blocks:
            async for block in blocks:
                heights.append(block["height"])
                if block["height"] >= 3:
                    break
    assert heights[:3] == [1, 2, 3]


async def test_websocket_auth_and_bad_requests(net):
    closed = net.nodes[3]  # requires a token for reads
    await trio.to_thread.run_sync(submit, net.nodes[0], events("1.2.840.79", 1), "commit")  # height >= 1
    ws_url = closed.rpc.replace("http://", "ws://") + "/ws"
    with trio.fail_after(30):
        # no token, a wrong one, or one without the read role: refused at the handshake (HTTP 403)
        for query in ("", "?token=not-a-token-not-a-token", f"?token={net.submit_only_token}"):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(ws_url + query):
                    pass
            assert rejected.value.status_code == 403, query
        async with open_websocket_url(ws_url + f"?token={closed.read_token}") as ws:
            for request, code in [
                ("nonsense", -32700),
                (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"kind": "txs"}}), -32602),
                (json.dumps({"jsonrpc": "2.0", "id": 2, "method": "subscribe",
                             "params": {"kind": "events", "filter": {"study": "zz"}}}), -32602),
                (json.dumps({"jsonrpc": "2.0", "id": 3, "method": "status"}), -32601),
            ]:
                await ws.send_message(request)
                assert json.loads(await ws.get_message())["error"]["code"] == code
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "subscribe",
                                              "params": {"kind": "blocks", "from_height": 1}}))
            reply = json.loads(await ws.get_message())
            assert reply["result"]["subscription"]
            note = json.loads(await ws.get_message())
            assert note["params"]["type"] == "block" and note["params"]["height"] == 1
    # the SDK without a token: refused before any event is read
    with trio.fail_after(30):
        with pytest.raises(ConnectionRejected):
            async with Subscription(net.nodes[1].rpc, "events", filter={"patient_id": "P", "issuer": "I"},
                                    reconnect=False) as sub:
                async for _ in sub:
                    pass
