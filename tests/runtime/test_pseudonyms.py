"""Issue 13 on real node processes: consortium pseudonyms by the threshold OPRF (t = 3 of 4).

One 4-node testnet for the module (each start costs seconds); tests run in file order and the last one
changes the key epoch. Node 2 is the over-rate requester, so the other tests do not share its buckets."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time

import httpx
import msgpack
import pytest
import trio

from network import PeerNetwork
from network.identity import load_or_create_identity, peer_id_of
from node.ledger import oprf
from node.ledger.intake import EXAMPLE_EVENT
from node.ledger.pseudonym import Pseudonymizer
from node.runtime.oprf_service import CHANNEL, decode_request
from node.runtime.settings import load_config
from node.runtime.tokenizer import load_epochs, write_epoch
from node.testnet import LocalTestnet

pytestmark = pytest.mark.timeout(240)

RATE, BURST = 2.0, 40  # per requester; the over-rate test asks for more than BURST fresh points at once
_ids = itertools.count()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    testnet = LocalTestnet(tmp_path_factory.mktemp("pseudonet"), 4,
                           config_extra={"oprf": {"rate": RATE, "burst": BURST, "stats_interval_s": 1.0}})
    testnet.start()
    try:
        testnet.wait_ready(timeout=120)
        yield testnet
    finally:
        testnet.stop_all()


def event(patient: str, study: str, **extra) -> dict:
    return {**EXAMPLE_EVENT, "patient_id": patient, "issuer": "REGION-MPI", "study_uid": study,
            "event_id": f"pseudo-{next(_ids)}", "time": int(time.time() * 1000), **extra}


def submit(net, i: int, ev: dict) -> dict:
    answer = net.rpc(i, "submit_event", {"event": ev, "mode": "commit", "timeout": 30}, timeout=60)
    assert answer["status"] == "committed", answer
    return net.rpc(i, "get_tx", {"hash": answer["hash"], "receipt": False})["tx"]


def test_same_patient_at_two_hospitals_gets_one_token(net):
    a = submit(net, 0, event("1234567", "1.2.826.0.1.1"))
    b = submit(net, 1, event("1234567", "1.2.826.0.1.1"))
    other = submit(net, 1, event("1234568", "1.2.826.0.1.2"))
    assert a["patient"] == b["patient"] and a["study"] == b["study"]
    assert other["patient"] != a["patient"]
    assert a["patient"].startswith("0001")  # key epoch 1 is the token's prefix
    # Local kinds (user) are per hospital: the same actor at two hospitals is two different tokens.
    assert a["user"] != b["user"]
    # A repeated identifier comes from the requester's encrypted cache: no new evaluation.
    before = net.rpc(0, "pseudonym_stats")["local"]["tokenizer"]
    submit(net, 0, event("1234567", "1.2.826.0.1.1"))
    after = net.rpc(0, "pseudonym_stats")["local"]["tokenizer"]
    assert after["points"] == before["points"] and after["cache_hits"] > before["cache_hits"]


# ------------------------------------------------------------------ key material in one home

_HEX = re.compile(rb"[0-9a-fA-F]{64}")


def _candidates(home) -> set[bytes]:
    """Every 32-byte value one home yields as hex, msgpack bin, a whole file or an aligned window."""
    found: set[bytes] = set()
    for path in home.rglob("*"):
        if not path.is_file() or path.stat().st_size > 8 << 20:
            continue
        data = path.read_bytes()
        found.update(bytes.fromhex(m.decode()) for m in _HEX.findall(data))
        for m in re.finditer(rb"\xc4\x20", data):  # msgpack bin8 of length 32
            found.add(data[m.end():m.end() + 32])
        if len(data) <= 64 << 10:
            found.update(data[j:j + 32] for j in range(0, max(0, len(data) - 31), 8))
    return {c for c in found if len(c) == 32}


def _reproduces(candidates: set[bytes], token: bytes, patient: tuple[str, str]) -> list[str]:
    epoch = int.from_bytes(token[:2], "big")
    hits = []
    for c in candidates:
        if Pseudonymizer(c).patient(*patient) == token:  # the old shared HMAC key
            hits.append(f"HMAC key {c.hex()[:8]}…")
        for k in {int.from_bytes(c, "little") % oprf.ORDER, int.from_bytes(c, "big") % oprf.ORDER} - {0}:
            if oprf.tokenize_with_key(k, epoch, "patient", *patient) == token:  # the whole OPRF key
                hits.append(f"OPRF key {c.hex()[:8]}…")
    return hits


def test_no_file_in_one_home_computes_a_token_offline(net, tmp_path):
    patient = ("7654321", "REGION-MPI")
    token = bytes.fromhex(submit(net, 1, event(*patient[:1], "1.2.826.0.1.3"))["patient"])
    home = net.nodes[0].home  # not the submitter: a member that never saw this patient
    candidates = _candidates(home)
    assert len(candidates) > 50, "the scan reads the home"
    assert _reproduces(candidates, token, patient) == []
    # The scan does find a key when one is there: t = 3 homes' shares, combined, are the key.
    shares = [load_epochs(net.nodes[i].home).shares[1] for i in range(3)]
    lam = oprf.lagrange_at_zero([s.index for s in shares])
    k = sum(lam[s.index] * s.secret for s in shares) % oprf.ORDER
    (tmp_path / "leak").write_bytes(oprf.encode_scalar(k))
    assert _reproduces(_candidates(tmp_path), token, patient) == [f"OPRF key {oprf.encode_scalar(k).hex()[:8]}…"]


# ------------------------------------------------------------------ over-rate requester

def test_over_rate_requester_is_refused_and_counted_on_chain(net):
    # One JSON-RPC batch of BURST events (2 fresh points each, twice the burst): the node asks for them in one
    # round, refused, then call by call, each 2 points, far faster than the 2 points/s refill. Independent of
    # how fast this machine is, some calls must be refused.
    t0 = time.monotonic()
    calls = [{"jsonrpc": "2.0", "id": j, "method": "submit_event",
              "params": {"event": event(f"9{j:06d}", f"1.2.826.0.9.{j}"), "mode": "sync"}} for j in range(BURST)]
    replies = httpx.post(net.nodes[2].rpc, json=calls, timeout=120,
                         headers={"Authorization": f"Bearer {net.nodes[2].token}"}).json()
    refused = next((r["error"] for r in replies if "error" in r), None)
    assert any("result" in r for r in replies), replies[:2]  # within the burst: answered
    assert refused is not None, "a member kept answering beyond its burst"
    assert refused["code"] == -32005 and refused["data"]["reason"] == "pseudonym_rate_limited", refused
    assert "rate limit" in refused["message"] and refused["data"]["retry_after"] > 0
    # Enough members refused that fewer than t answered (n - t + 1 = 2 at least): each counted what it refused
    # to hosp-c, and records it on chain for every member to see.
    refusers = set(net.rpc(2, "pseudonym_stats")["local"]["rate_limited_by"])
    assert len(refusers) >= 2 and "hosp-c" not in refusers, refusers

    def on_chain(i: int = 0) -> bool:
        rows = net.rpc(i, "pseudonym_stats")["recorded"]
        return {r["member"] for r in rows if r["requester"] == "hosp-c" and r["refused"] > 0} == refusers

    started = time.monotonic()
    net.wait_until(on_chain, 30, "refusals to hosp-c recorded on chain by the members that refused")
    print(f"refusals on chain {time.monotonic() - started:.1f} s after the refused request")
    # Committed as seen by node 0: nodes 1 and 3, read below, may apply those blocks a moment later.
    for i in (1, 3):
        net.wait_until(lambda i=i: on_chain(i), 30, f"the refusals recorded on node {i} too")
    info = net.nodes[1]
    table = subprocess.run([sys.executable, "-m", "node.cli", "pseudonym", "stats", "--url", info.rpc,
                            "--token", info.token], capture_output=True, text=True, timeout=60, check=True).stdout
    assert any(line.split()[:2] == [m, "hosp-c"] for m in refusers for line in table.splitlines()), table
    # What they answered before refusing is on chain too, and bounded by the burst plus the refill.
    rows = net.rpc(3, "pseudonym_stats")["recorded"]
    answered = {r["member"]: r["answered"] for r in rows if r["requester"] == "hosp-c"}
    assert all(0 < answered.get(m, 0) <= BURST + RATE * (time.monotonic() - t0) for m in refusers), answered


# ------------------------------------------------------------------ a lying member, f = 1 down

async def _liar(home, members, asked: list, tmp_path):
    cfg = load_config(home)
    net = PeerNetwork(load_or_create_identity(home / "keys" / "p2p.key"), members, cfg.psk, cfg.p2p_listen,
                      lock_dir=str(tmp_path))
    real = load_epochs(home).shares[1]
    wrong = oprf.deal(real.public.t, real.public.n, 1)[1][real.index - 1]  # another key, an honest proof of it

    async def handle(peer: str, payload: bytes) -> bytes:
        _epoch, points = decode_request(payload)
        asked.append(len(points))
        p = oprf.evaluate_partial(wrong, points)
        return msgpack.packb({"ok": True, "epoch": p.epoch, "index": p.index, "elements": list(p.elements),
                              "proof": p.proof}, use_bin_type=True)

    net.serve(CHANNEL, handle)
    return net


async def test_lying_member_is_caught_by_its_proof_and_f_down_still_tokenizes(net, tmp_path):
    patient = ("5550001", "1.2.826.0.5.1")
    honest = submit(net, 0, event(*patient))  # all four up
    # f = 1 member down: still t = 3 members (the requester's own share counts).
    net.kill(3)
    down = await trio.to_thread.run_sync(lambda: submit(net, 1, event(*patient)))
    fresh_down = await trio.to_thread.run_sync(lambda: submit(net, 1, event("5550002", "1.2.826.0.5.2")))
    assert down["patient"] == honest["patient"]
    # hosp-d comes back as a liar: its genuine identity, answers from a wrong key (valid DLEQ for that key).
    members = {peer_id_of(load_or_create_identity(i.home / "keys" / "p2p.key")): [i.p2p] for i in net.nodes}
    asked: list = []
    liar = await _liar(net.nodes[3].home, members, asked, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(liar.run)
        honest_pids = [peer_id_of(load_or_create_identity(net.nodes[i].home / "keys" / "p2p.key")) for i in range(3)]
        with trio.fail_after(30):
            await liar.wait_connected(honest_pids)
        before = (await trio.to_thread.run_sync(lambda: net.rpc(1, "pseudonym_stats")))["local"]["bad_answers"]

        def liar_reported() -> bool:
            # Fresh identifiers until the liar's answer arrives before the honest ones (a race it may lose).
            ev = event(f"555{next(_ids):04d}", f"1.2.826.0.5.{next(_ids)}")
            tx = submit(net, 1, ev)
            assert tx["patient"]  # the token computed from the honest members all the same
            bad = net.rpc(1, "pseudonym_stats")["local"]["bad_answers"]
            return bad.get("hosp-d", 0) > before.get("hosp-d", 0)

        await trio.to_thread.run_sync(lambda: net.wait_until(liar_reported, 60, "hosp-d's bad partial detected"))
        assert asked, "the liar was asked"
        # With the liar answering, tokens are the honest ones: same patient, same token as before.
        again = await trio.to_thread.run_sync(lambda: submit(net, 1, event("5550002", "1.2.826.0.5.2")))
        assert again["patient"] == fresh_down["patient"]
        nursery.cancel_scope.cancel()
    log = (net.nodes[1].home / "node.log").read_text()
    assert "DLEQ proof failed" in log
    net.start(3)
    await trio.to_thread.run_sync(lambda: net.wait_ready(timeout=90))


# ------------------------------------------------------------------ key epochs

def test_epoch_change_new_tokens_and_one_audit_trail(net):
    patient = ("3141592", "REGION-MPI")
    old = submit(net, 0, event(patient[0], "1.2.826.0.7.1", type="instances.stored"))
    net.stop_all()
    public, shares = oprf.deal(3, 4, epoch=2)  # a new key: each home gets its own share of epoch 2
    for info, share in zip(net.nodes, shares, strict=True):
        write_epoch(info.home, public, share)
    net.start()
    net.wait_ready(timeout=120)
    new = submit(net, 1, event(patient[0], "1.2.826.0.7.1", type="instances.stored"))
    assert old["patient"].startswith("0001") and new["patient"].startswith("0002")
    assert old["patient"] != new["patient"] and old["study"] != new["study"]
    height = net.height(1)
    net.wait_until(lambda: all(net.height(i) >= height for i in range(4)), 60, "every node has both events")
    # One trail across epochs, asked with the raw identifier at a third node.
    trail = net.rpc(2, "audit_trail", {"patient_id": patient[0], "issuer": patient[1]})
    assert {e["patient"] for e in trail["entries"]} == {old["patient"], new["patient"]}
    assert len(trail["entries"]) == 2
    by_study = net.rpc(3, "audit_trail", {"study_uid": "1.2.826.0.7.1"})
    assert len(by_study["entries"]) == 2
    # Paging across epochs: one entry per page, both found, in time order.
    first = net.rpc(2, "audit_trail", {"patient_id": patient[0], "issuer": patient[1], "limit": 1})
    second = net.rpc(2, "audit_trail", {"patient_id": patient[0], "issuer": patient[1], "limit": 1,
                                        "cursor": first["next_cursor"]})
    assert [e["hash"] for e in first["entries"] + second["entries"]] == [e["hash"] for e in trail["entries"]]
    # prior imaging of the patient lists the stores of both epochs (the study's token differs per epoch)
    prior = net.rpc(2, "prior_imaging", {"patient_id": patient[0], "issuer": patient[1]})
    assert {s["study"] for s in prior["studies"]} == {old["study"], new["study"]}
    stats = net.rpc(0, "pseudonym_stats")["local"]
    assert stats["epoch"] == 2 and [e["epoch"] for e in stats["epochs"]] == [1, 2]
