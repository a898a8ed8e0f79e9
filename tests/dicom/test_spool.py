"""The spool: durable, 0600, delivered at least once against a real HTTP JSON-RPC peer, dead letters."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest
from dicom_helpers import RpcRecorder, wait_for

from node.dicom.delivery import Deliverer, RetryLater
from node.dicom.spool import Spool


def ev(i: int, **kw) -> dict:
    return {"type": "instances.stored", "patient_id": f"P{i}", "issuer": "H", "study_uid": f"1.2.3.{i}",
            "actor": "CT1", "purpose": "TREAT", "time": 1_700_000_000_000 + i, **kw}


def test_put_is_durable_private_and_ordered(tmp_path):
    spool = Spool(tmp_path / "spool")
    ids = [spool.put(ev(i), source="test") for i in range(5)]
    assert all(i.startswith("dcm-") for i in ids)
    pending = spool.pending()
    assert [Spool.load(p)["event"]["event_id"] for p in pending] == ids
    for p in pending:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    for d in (spool.root, spool.pending_dir, spool.dead_dir, spool.tmp):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert spool.put(ev(9, event_id="src-42"), source="test") == "src-42"  # the source's id is kept
    assert not list(spool.tmp.iterdir())


def test_delivery_in_order_with_batches(tmp_path):
    rpc = RpcRecorder().start()
    try:
        spool = Spool(tmp_path / "spool")
        ids = spool.put_many([ev(i) for i in range(250)], source="test")
        d = Deliverer(spool, rpc.url, rpc.token)
        assert d.run_once() == 250
        d.close()
        assert [e["event_id"] for e in rpc.events] == ids
        assert rpc.batches == 3 and spool.count() == 0
        delivered = spool.delivered()
        assert set(delivered) == set(ids) and all(len(r["tx"]) == 64 for r in delivered.values())
    finally:
        rpc.stop()


def test_refused_event_goes_to_dead_letters_and_the_rest_continue(tmp_path):
    rpc = RpcRecorder().start()
    rpc.refuse_types = {"query"}
    try:
        spool = Spool(tmp_path / "spool")
        spool.put(ev(1), source="test")
        spool.put({**ev(2), "type": "query"}, source="test")
        spool.put(ev(3), source="test")
        (spool.pending_dir / "00000000000000000000-corrupt.json").write_text("{not json")
        d = Deliverer(spool, rpc.url, rpc.token)
        assert d.run_once() == 4
        d.close()
        assert [e["patient_id"] for e in rpc.events] == ["P1", "P3"]
        dead = [json.loads(p.read_text()) for p in spool.dead()]
        reasons = sorted(x["reason"] for x in dead)
        assert "type refused by test" in reasons[0] + reasons[1]
        assert any(r.startswith("corrupt spool file") for r in reasons)
        assert spool.count() == 0
    finally:
        rpc.stop()


def test_node_down_then_up_loses_nothing(tmp_path):
    rpc = RpcRecorder()
    spool = Spool(tmp_path / "spool")
    ids = spool.put_many([ev(i) for i in range(20)], source="test")
    d = Deliverer(spool, rpc.url, rpc.token, timeout=2)
    try:
        d.run_once()
        raise AssertionError("delivery to a stopped node must raise RetryLater")
    except RetryLater as exc:
        assert "unreachable" in str(exc)
    assert spool.count() == 20
    stop = threading.Event()
    t = threading.Thread(target=d.run_forever, args=(stop,), daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # the deliverer is now backing off against a closed port
        more = spool.put_many([ev(100 + i) for i in range(5)], source="test")
        rpc.start()
        wait_for(lambda: spool.count() == 0, 15, what="spool drained after the node came back")
        assert set(rpc.unique()) == set(ids + more)
    finally:
        stop.set()
        t.join(10)
        rpc.stop()


def test_bad_token_is_retried_not_dead_lettered(tmp_path):
    rpc = RpcRecorder().start()
    try:
        spool = Spool(tmp_path / "spool")
        spool.put(ev(1), source="test")
        d = Deliverer(spool, rpc.url, "wrong-token-000000000000")
        try:
            d.run_once()
            raise AssertionError("expected RetryLater")
        except RetryLater as exc:
            assert "-32001" in str(exc)
        d.close()
        assert spool.count() == 1 and not spool.dead() and rpc.unauthorized == 1
    finally:
        rpc.stop()


def test_one_deliverer_per_spool(tmp_path):
    rpc = RpcRecorder().start()
    try:
        spool = Spool(tmp_path / "spool")
        spool.put(ev(1), source="test")
        a = Deliverer(spool, rpc.url, rpc.token)
        b = Deliverer(Spool(tmp_path / "spool"), rpc.url, rpc.token)
        assert a.run_once() == 1
        assert b.run_once() == -1  # a holds the lock
        a.close()
        spool.put(ev(2), source="test")
        assert b.run_once() == 1
        b.close()
    finally:
        rpc.stop()


def test_crash_leftovers_in_tmp_are_swept(tmp_path):
    spool = Spool(tmp_path / "spool")
    junk = spool.tmp / "123-half.json"
    junk.write_text('{"event": ')
    old = time.time() - 3600
    os.utime(junk, (old, old))
    assert spool.sweep_tmp() == 1 and spool.count() == 0


BROKEN_ANSWERS = {
    # the node was stopped (SIGTERM) after it sent the headers of its answer: the proxy's deliverer died with
    # http.client.IncompleteRead and took the proxy, and the modality's association, down with it
    "truncated-body": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1207\r\n\r\n[{\"jsonrpc\"",
    "garbage-status-line": b"SSH-2.0-OpenSSH_9.2\r\n",
    "endless-header": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
    # JSON of the wrong shape: an unhashable id was a TypeError out of the deliverer
    "odd-json-ids": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
                    b'[{"id": [1], "result": {"tx": "00"}}, 7]',
}


@pytest.mark.parametrize("answer", BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys())
def test_a_broken_http_answer_keeps_the_events_and_the_deliverer_alive(tmp_path, answer):
    """Whatever a stopping node (or another program on its port) sends back, the events stay in the spool
    and are delivered once a real node answers on that port."""
    rpc = RpcRecorder()
    listener = socket.create_server(("127.0.0.1", rpc.port))
    answered = threading.Event()

    def read_request(conn) -> None:
        # the whole request before answering: closing with unread bytes sends a RST that can overtake the
        # answer, and the deliverer's silent retry on a fresh connection would then wait for nobody
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536) or b"\r\n\r\n"
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk

    def broken_node():
        listener.settimeout(10)
        try:
            while True:  # every connection (the deliverer retries once silently) gets the broken answer
                conn, _ = listener.accept()
                with conn:
                    read_request(conn)
                    conn.sendall(answer)
                    conn.shutdown(socket.SHUT_WR)
                answered.set()
        except OSError:  # the listener closed (or nobody came)
            pass

    server = threading.Thread(target=broken_node, daemon=True)
    server.start()
    spool = Spool(tmp_path / "spool")
    ids = spool.put_many([ev(i) for i in range(3)], source="test")
    d = Deliverer(spool, rpc.url, rpc.token, timeout=5)
    # RetryLater is the outcome that matters (IncompleteRead escaped as a crash); which words it carries
    # depends on where the answer broke off (on a starved machine the client can time out first)
    with pytest.raises(RetryLater):
        d.run_once()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the broken node's thread
    listener.close()
    server.join(15)
    assert answered.is_set() and spool.count() == 3 and not spool.dead()
    rpc.start()
    try:
        stop = threading.Event()
        t = threading.Thread(target=d.run_forever, args=(stop,), daemon=True)
        t.start()
        wait_for(lambda: spool.count() == 0, 15, what="spool drained once a real node answered")
        assert set(rpc.unique()) == set(ids)
        stop.set()
        t.join(10)
    finally:
        rpc.stop()
