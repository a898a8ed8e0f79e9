"""JSON-RPC against a real 4-node testnet: plain HTTP and SDK submits, reads from other nodes, receipts
checked offline (and tampered ones refused), auth, batches, limits, metrics."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import httpx
import pytest
from nacl.signing import SigningKey

from node.client import RadChainClient, RpcCallError
from node.ledger.intake import EXAMPLE_EVENT, make_tx
from node.runtime.keys import load_member_key

pytestmark = pytest.mark.timeout(120)

_ids = itertools.count()


def post(url: str, body, token: str | None = None, timeout: float = 30.0) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={**headers, "Content-Type": "application/json"},
                      timeout=timeout)


def event(study: str = "1.2.840.99.1", **extra) -> dict:
    return {**EXAMPLE_EVENT, "study_uid": study, "event_id": f"rpc-test-{next(_ids)}",
            "time": int(time.time() * 1000), **extra}


def member_tx(net, i: int = 0, key: SigningKey | None = None, study_token: bytes = b"\x01" * 16) -> bytes:
    info = net.nodes[i]
    key = key or load_member_key(info.home / "keys" / "member.key")
    return make_tx("instances.accessed", key, chain_id="radchain-testnet", member=info.name,
                   patient=b"\x02" * 16, study=study_token, user=b"\x03" * 16, purpose="TREAT", outcome=0,
                   action="R")


def radchain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------------- writes

def test_plain_json_submit_commit_then_read_from_other_nodes(net):
    n0, n1, n2 = net.nodes[:3]
    ev = event("1.2.840.99.2")
    reply = post(n0.rpc, {"jsonrpc": "2.0", "id": "a", "method": "submit_event",
                          "params": {"event": ev, "mode": "commit", "timeout": 30}}, n0.token).json()
    assert reply["id"] == "a" and reply["result"]["status"] == "committed", reply
    h, height = reply["result"]["hash"], reply["result"]["height"]
    assert reply["result"]["outcome"] == "applied"

    # Same event again (same event_id): same tx, same answer, nothing new recorded.
    again = post(n0.rpc, {"jsonrpc": "2.0", "id": 2, "method": "submit_event",
                          "params": {"event": ev, "mode": "commit"}}, n0.token).json()["result"]
    assert again == reply["result"]

    # Another node knows it at the same height; its read-only token reads it.
    net.wait_until(lambda: net.height(1) >= height, 30, "node 1 has the block")
    got = post(n1.rpc, {"jsonrpc": "2.0", "id": 3, "method": "get_tx", "params": {"hash": h}},
               n1.read_token).json()["result"]
    assert got["status"] == "committed" and got["height"] == height and got["tx"]["member"] == "hosp-a"

    # audit_trail on a third node: by pseudonym token or by raw identifier, with a read token.
    study_token = got["tx"]["study"]
    net.wait_until(lambda: net.height(2) >= height, 30, "node 2 has the block")
    page = post(n2.rpc, {"jsonrpc": "2.0", "id": 4, "method": "audit_trail",
                         "params": {"study": study_token}}, n2.read_token).json()["result"]
    assert [e["hash"] for e in page["entries"]] == [h] and page["next_cursor"] is None
    raw = post(n2.rpc, {"jsonrpc": "2.0", "id": 5, "method": "audit_trail",
                        "params": {"study_uid": "1.2.840.99.2"}}, n2.token).json()["result"]
    assert raw["entries"] == page["entries"]
    by_patient = post(n2.rpc, {"jsonrpc": "2.0", "id": 6, "method": "audit_trail",
                               "params": {"patient_id": ev["patient_id"], "issuer": ev["issuer"],
                                          "study": study_token, "type": "instances.accessed"}},
                      n2.token).json()["result"]
    assert [e["hash"] for e in by_patient["entries"]] == [h]


def test_sdk_submit_tx_modes_idempotent_and_rejections(net):
    with RadChainClient(net.nodes[0].rpc, net.pacs_token) as rc:  # the "pacs" integrator's own token
        raw = member_tx(net)
        committed = rc.submit_tx(raw, mode="commit", timeout=30)
        assert committed["status"] == "committed", committed
        # resubmitting in every mode answers the same committed height
        for mode in ("async", "sync", "commit"):
            assert rc.submit_tx(raw.hex(), mode=mode) == committed

        # sync: checked and durably pending (or already committed by the time it answers)
        raw2 = member_tx(net)
        answer = rc.submit_tx(raw2, mode="sync")
        assert answer["status"] in ("pending", "committed")
        assert rc.wait_committed(answer["hash"], 30)["status"] == "committed"

        # async: answered before the check; get_tx gives the outcome
        raw3 = member_tx(net)
        answer = rc.submit_tx(raw3, mode="async")
        assert answer["status"] == "pending" and answer["checked"] is False
        assert rc.wait_committed(answer["hash"], 30)["status"] == "committed"

        # commit with a timeout too short to commit: a definite "pending" with the hash, never an error
        raw4 = member_tx(net)
        answer = rc.submit_tx(raw4, mode="commit", timeout=0.001)
        assert answer["status"] in ("pending", "committed")
        if answer["status"] == "pending":
            assert answer["timeout"] is True and answer["hash"]
        assert rc.wait_committed(answer["hash"], 30)["status"] == "committed"

        # a key that is not registered: rejected with the reason, and get_tx remembers why
        stranger = member_tx(net, key=SigningKey.generate())
        with pytest.raises(RpcCallError) as err:
            rc.submit_tx(stranger, mode="sync")
        assert err.value.code == -32003 and "not authorised" in err.value.message
        assert rc.get_tx(err.value.data["hash"])["status"] == "rejected"
        # async: same rejection, seen through get_tx
        stranger2 = member_tx(net, key=SigningKey.generate())
        h = rc.submit_tx(stranger2, mode="async")["hash"]
        final = rc.wait_committed(h, 10)
        assert final["status"] == "rejected" and "not authorised" in final["reason"]

        # malformed: not hex, not a tx, bad event field
        with pytest.raises(RpcCallError) as err:
            rc.submit_tx("xyz")
        assert err.value.code == -32602
        with pytest.raises(RpcCallError) as err:
            rc.submit_tx(b"\x92\xc4\x01a\xc4\x01b")
        assert err.value.code == -32003 and "sig" in err.value.message
        with pytest.raises(RpcCallError) as err:
            rc.submit_event({**event(), "purpose": "FUN"})
        assert err.value.code == -32003 and err.value.data == {"field": "purpose"}
        with pytest.raises(RpcCallError) as err:
            rc.submit_event(event(), mode="eventually")
        assert err.value.code == -32602


def test_batch_of_commit_mode_submits_waits_concurrently(net):
    n0 = net.nodes[0]
    calls = [{"jsonrpc": "2.0", "id": i, "method": "submit_event",
              "params": {"event": event("1.2.840.99.3"), "mode": "commit", "timeout": 30}} for i in range(20)]
    calls.append({"jsonrpc": "2.0", "method": "status"})  # a notification: no reply
    calls.append({"jsonrpc": "2.0", "id": "bad", "method": "no_such_method"})
    calls.append(17)
    started = time.monotonic()
    replies = post(n0.rpc, calls, n0.token, timeout=60).json()
    elapsed = time.monotonic() - started
    by_id = {r["id"]: r for r in replies}
    assert len(replies) == 22  # 20 submits, the unknown method, the invalid item
    assert all(by_id[i]["result"]["status"] == "committed" for i in range(20))
    heights = {by_id[i]["result"]["height"] for i in range(20)}
    assert len(heights) <= 3, heights  # admitted together, committed together
    assert by_id["bad"]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600
    assert elapsed < 30


def test_every_failure_is_a_json_rpc_error(net):
    url = net.nodes[1].rpc
    cases = [
        (b"{not json", -32700), (b'{"jsonrpc": "2.0", "id": NaN, "method": "status"}', -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get_block", "params": {"height": Infinity}}', -32700),
        (b"[]", -32600), (b'"x"', -32600), (b'{"jsonrpc": "1.0", "method": "status"}', -32600),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "status"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": [1]}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get_tx", "params": {"hash": "00"}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get_tx", "params": {"hash": "' + b"0" * 64 + b'"}}', -32002),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get_block", "params": {"height": 99999999}}', -32002),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "blocks", "params": {"from": 0}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "audit_trail", "params": {"study": "zz"}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "audit_trail", "params": {"studdy": "1"}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "audit_trail", "params": {"type": "x", "limit": 5}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "audit_trail", "params": {"member": "a", "cursor": "00"}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "audit_trail", "params": {"member": "a", "since": "yesterday"}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "mempool", "params": {"limit": true}}', -32602),
    ]
    for body, code in cases:
        reply = post(url, body, net.nodes[1].read_token)
        assert reply.status_code == 200, body
        err = reply.json()["error"]
        assert err["code"] == code and err["message"], (body, err)
    # body over the node's limit: HTTP 413 and a JSON-RPC error
    big = post(url, b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": {"x": "' + b"a" * (2 << 20) + b'"}}')
    assert big.status_code == 413 and big.json()["error"]["code"] == -32006
    assert net.rpc(1, "status")["node"] == "hosp-b"


def test_requests_without_a_valid_token_are_refused(net):
    n0, n3 = net.nodes[0], net.nodes[3]
    submit = {"jsonrpc": "2.0", "id": 1, "method": "submit_event", "params": {"event": event()}}
    for token in (None, "wrong-token-wrong-token", n3.token):  # node 3's token is not valid on node 0
        err = post(n0.rpc, submit, token).json()["error"]
        assert err["code"] == -32001 and "Bearer" in err["message"]
    submit_tx = {"jsonrpc": "2.0", "id": 1, "method": "submit_tx", "params": {"tx": member_tx(net).hex()}}
    assert post(n0.rpc, submit_tx).json()["error"]["code"] == -32001
    # raw identifiers are a pseudonymization oracle: they need a token even where reads are open
    err = post(n0.rpc, {"jsonrpc": "2.0", "id": 1, "method": "audit_trail",
                        "params": {"patient_id": "PAT-1", "issuer": "HOSP-A"}}).json()["error"]
    assert err["code"] == -32001
    # node 3 requires a token for reads too (rpc.read_requires_token)
    status = {"jsonrpc": "2.0", "id": 1, "method": "status"}
    assert post(n3.rpc, status).json()["error"]["code"] == -32001
    assert post(n3.rpc, status, n3.token).json()["result"]["node"] == "hosp-d"
    assert httpx.get(n3.rpc + "/metrics").status_code == 401
    assert httpx.get(n3.rpc + "/metrics", headers={"Authorization": f"Bearer {n3.token}"}).status_code == 200
    assert httpx.get(n3.rpc + "/health").text == "ok"


# ---------------------------------------------------------------------------------------------- receipts

def test_receipt_verifies_offline_and_tampered_receipts_do_not(net, tmp_path):
    info = net.nodes[0]
    with RadChainClient(info.rpc, info.token) as rc:
        answer = rc.submit_event(event("1.2.840.99.4"), mode="commit", timeout=30)
    assert answer["status"] == "committed"
    net.wait_until(lambda: net.height(2) >= answer["height"], 30, "node 2 has the block")
    # fetched from another node with the CLI, checked with nothing but genesis.json
    path = tmp_path / "receipt.json"
    out = radchain("query", "--url", net.nodes[2].rpc, "--token", net.nodes[2].read_token, "--tx", answer["hash"],
                   "--save-receipt", str(path))
    assert out.returncode == 0, out.stderr
    genesis = str(info.home / "genesis.json")
    ok = radchain("verify-receipt", str(path), "--genesis", genesis)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VALID" in ok.stdout and answer["hash"] in ok.stdout

    receipt = json.loads(path.read_text())

    def flip(hex_text: str, at: int) -> str:
        raw = bytearray(bytes.fromhex(hex_text))
        raw[at] ^= 0x01
        return raw.hex()

    from consensus.certificate import Certificate

    cert = Certificate.decode(bytes.fromhex(receipt["certificate"]))
    two_sigs = Certificate(cert.height, cert.view, cert.digest, cert.signatures[:2]).encode().hex()
    forged_sig = Certificate(cert.height, cert.view, cert.digest,
                             ((cert.signatures[0][0], bytes(64)),) + cert.signatures[1:]).encode().hex()
    tampered = {
        "tx byte": {**receipt, "tx": flip(receipt["tx"], len(bytes.fromhex(receipt["tx"])) // 2)},
        "other index": {**receipt, "index": receipt["index"] + 1},
        "header": {**receipt, "proposal_header": flip(receipt["proposal_header"], 20)},
        "2 of 4 signatures": {**receipt, "certificate": two_sigs},
        "forged signature": {**receipt, "certificate": forged_sig},
        "claimed height": {**receipt, "height": receipt["height"] + 1},
        "missing field": {k: v for k, v in receipt.items() if k != "path"},
    }
    if receipt["path"]:
        tampered["path"] = {**receipt, "path": [flip(receipt["path"][0], 0)] + receipt["path"][1:]}
    for what, doc in tampered.items():
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(doc))
        result = radchain("verify-receipt", str(bad), "--genesis", genesis)
        assert result.returncode == 1, (what, result.stdout, result.stderr)
        assert "INVALID" in result.stdout, what

    # a receipt checked against another consortium's genesis proves nothing
    other = tmp_path / "other-genesis.json"
    doc = json.loads((info.home / "genesis.json").read_text())
    signer = next(m for m in doc["members"] if m["name"] == receipt["signers"][0])
    signer["pubkey"] = bytes(SigningKey.generate().verify_key).hex()  # one of the signers is a stranger there
    other.write_text(json.dumps(doc))
    result = radchain("verify-receipt", str(path), "--genesis", str(other))
    assert result.returncode == 1 and "certificate" in result.stdout
    assert radchain("verify-receipt", str(tmp_path / "absent.json"), "--genesis", genesis).returncode == 2


# ---------------------------------------------------------------------------------------------- reads

def test_reads_blocks_validators_peers_mempool_metrics(net):
    with RadChainClient(net.nodes[1].rpc, net.nodes[1].token) as rc:  # operator: peers needs admin
        height = rc.status()["height"]
        assert height >= 1
        blocks = list(rc.blocks(1))
        assert [b["height"] for b in blocks] == list(range(1, len(blocks) + 1)) and len(blocks) >= height
        assert blocks[0]["header"]["prev_hash"] and blocks[0]["certificate"]
        assert rc.get_block(1)["hash"] == blocks[0]["hash"]
        page = rc.call("blocks", {"from": 1, "to": 1})
        assert len(page["blocks"]) == 1 and (page["next"] == 2 or page["height"] == 1)
        vals = rc.validators()
        assert [v["name"] for v in vals["validators"]] == ["hosp-a", "hosp-b", "hosp-c", "hosp-d"]
        assert vals["quorum"] == 3 and sum(v["primary"] for v in vals["validators"]) == 1
        assert [v["self"] for v in vals["validators"]] == [False, True, False, False]
        # a session silent for 3.5 s on a slow host is redialled: all three are connected again soon
        net.wait_until(lambda: rc.peers()["connected"] == 3, 30, "hosp-b connected to its three peers")
        peers = rc.peers()
        assert peers["connected"] == 3 and {p["name"] for p in peers["peers"]} == {"hosp-a", "hosp-c", "hosp-d"}
        pool = rc.mempool()
        assert pool["size"] >= 0 and pool["max"] > 0 and isinstance(pool["txs"], list)
        assert rc.discover()["openrpc"].startswith("1.")
        assert rc.health()
        text = rc.metrics()
    for name in ("radchain_height", "radchain_view", "radchain_view_changes_total", "radchain_peers",
                 "radchain_mempool_txs", "radchain_txs_committed_total", "radchain_syncing",
                 'radchain_commit_latency_seconds_bucket{le="+Inf"}', "radchain_commit_latency_seconds_count"):
        assert f"\n{name} " in "\n" + text, name
    # the counters of what a block costs a node (docs/PERFORMANCE.md, "What a block costs"): a node that
    # agreed blocks with its peers has sent and received frames and made WAL records durable
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['radchain_p2p_frames_total{direction="out"}'] > 0 and values['radchain_p2p_frames_total{direction="in"}'] > 0
    assert values['radchain_p2p_bytes_total{direction="in"}'] > values['radchain_p2p_frames_total{direction="in"}']
    assert 0 < values["radchain_p2p_writes_total"] <= values['radchain_p2p_frames_total{direction="out"}']
    assert values["radchain_consensus_events_total"] > 0
    # every view-change trigger is exposed (tests/runtime/test_agreement.py sees one move when a primary dies)
    triggers = {k: v for k, v in values.items() if k.startswith("radchain_view_change_triggers_total")}
    assert sorted(triggers) == sorted(f'radchain_view_change_triggers_total{{trigger="{t}"}}' for t in (
        "progress_timeout", "request_timeout", "throughput_floor", "view_change_timeout", "complaints", "joined"))
    assert all(v >= 0 and v == int(v) for v in triggers.values())
    assert values["radchain_progress_waits_total"] >= 0
    gossip = {k: v for k, v in values.items() if k.startswith("radchain_gossip_txs_total")}
    assert sorted(gossip) == sorted(f'radchain_gossip_txs_total{{result="{r}"}}' for r in (
        "admitted", "refused", "rebroadcast")) and all(v >= 0 and v == int(v) for v in gossip.values())
    dropped = {k: v for k, v in values.items() if k.startswith("radchain_consensus_dropped_total{reason=")}
    assert dropped and all(v >= 0 for v in dropped.values())
    assert 0 < values["radchain_wal_flushes_total"] <= values["radchain_wal_records_total"]
    # every durable flush fsynced once, and the histogram's buckets add up
    fsyncs = values["radchain_wal_fsync_seconds_count"]
    assert fsyncs == values['radchain_wal_fsync_seconds_bucket{le="+Inf"}'] > 0
    assert fsyncs <= values["radchain_wal_flushes_total"] and values["radchain_wal_fsync_seconds_sum"] > 0
    assert values['radchain_wal_fsync_seconds_bucket{le="0.001"}'] <= values['radchain_wal_fsync_seconds_bucket{le="5"}'] <= fsyncs
    # node 0 took the submits above: its histogram has observations
    metrics0 = httpx.get(net.nodes[0].rpc + "/metrics", headers={"Authorization": f"Bearer {net.nodes[0].read_token}"}).text
    count = next(line for line in metrics0.splitlines() if line.startswith("radchain_commit_latency_seconds_count"))
    assert int(count.split()[1]) > 0


def test_a_batch_of_events_is_signed_once_and_an_event_sent_again_in_another_batch_keeps_its_tx(net, tmp_path):
    """node.runtime.own_txs on four real nodes: the events of one JSON-RPC batch share one signature (the
    other members check it once), each tx still verifies alone as a receipt, and resubmitting events in a
    differently made-up batch (or alone) gives their first txs, recorded once."""
    info = net.nodes[0]
    study = "1.2.840.99.77"
    events = [event(study, time=1_700_000_100_000 + i) for i in range(8)]
    with RadChainClient(info.rpc, info.token) as rc:
        first = rc.batch([("submit_event", {"event": e, "mode": "commit", "timeout": 30}) for e in events[:6]])
        assert all(a["status"] == "committed" for a in first), first
        hashes = [a["hash"] for a in first]
        height = max(a["height"] for a in first)
        net.wait_until(lambda: net.height(1) >= height, 30, "node 1 has the blocks")
        got = [net.rpc(1, "get_tx", {"hash": h}) for h in hashes]
        assert len({g["tx"]["sig"] for g in got}) == 1 and all(g["tx"].get("proof") for g in got)
        (tmp_path / "receipt.json").write_text(json.dumps(got[3]))
        checked = radchain("verify-receipt", str(tmp_path / "receipt.json"), "--genesis",
                           str(info.home / "genesis.json"))
        assert checked.returncode == 0, checked.stdout + checked.stderr

        again = rc.batch([("submit_event", {"event": e, "mode": "commit", "timeout": 30})
                          for e in (events[1], events[6], events[4], events[7])])
        assert [again[0]["hash"], again[2]["hash"]] == [hashes[1], hashes[4]]
        assert again[0]["status"] == again[2]["status"] == "committed"
        assert again[1]["status"] == again[3]["status"] == "committed" and again[1]["hash"] not in hashes
        alone = rc.call("submit_event", {"event": events[0], "mode": "commit"})
        assert alone["hash"] == hashes[0] and alone["height"] == first[0]["height"]
        trail = list(rc.audit_trail_all(study_uid=study, limit=50))
        assert sorted(e["hash"] for e in trail) == sorted(hashes + [again[1]["hash"], again[3]["hash"]])

        # one event a ledger rule refuses (an export for a project nobody registered) is refused alone
        mixed = rc.batch([("submit_event", {"event": e, "mode": "commit", "timeout": 30}) for e in (
            event(study), event(study, type="export", project="NOPE-1", purpose="HRESCH"), event(study))])
        assert isinstance(mixed[1], RpcCallError) and "not registered" in str(mixed[1])
        assert mixed[0]["status"] == mixed[2]["status"] == "committed", mixed


def test_audit_trail_pages_with_a_cursor(net):
    info = net.nodes[0]
    study = "1.2.840.99.5"
    with RadChainClient(info.rpc, info.token) as rc:
        answers = rc.batch([("submit_event", {"event": event(study, time=1_700_000_000_000 + i), "mode": "commit"})
                            for i in range(7)])
        assert all(a["status"] == "committed" for a in answers), answers
        everything = list(rc.audit_trail_all(study_uid=study, limit=3))
        assert [e["hash"] for e in everything] == [a["hash"] for a in answers]  # oldest event time first
        first = rc.audit_trail(study_uid=study, limit=3)
        assert len(first["entries"]) == 3 and first["next_cursor"]
        window = rc.audit_trail(study_uid=study, since=1_700_000_000_002, until="2023-11-14T22:13:21Z")
        assert [e["ts"] - 1_700_000_000_000 for e in window["entries"]] == [2, 3, 4, 5, 6]
        # combined filters still page to the same answer
        combined = list(rc.audit_trail_all(study_uid=study, member="hosp-a", actor="dr.smith", limit=2))
        assert [e["hash"] for e in combined] == [a["hash"] for a in answers]
        assert rc.audit_trail(study_uid=study, member="hosp-b")["entries"] == []
    out = radchain("audit", "--url", info.rpc, "--token", info.token, "--study", study, "--json")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["hash"] for line in out.stdout.splitlines()] == [a["hash"] for a in answers]
    table = radchain("audit", "--url", info.rpc, "--token", info.token, "--study", study, "--limit", "3")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 1 + 3 and "instances.accessed" in table.stdout
    assert table.stdout.split()[0] == "HEIGHT"  # the header row, then 3 entries
    refused = radchain("audit", "--url", info.rpc, "--study", study)  # raw identifier, no token
    assert refused.returncode == 1 and "token" in refused.stderr
