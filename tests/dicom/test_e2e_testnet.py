"""End to end on a real 4-node testnet (`radchain testnet` + `radchain start`, separate processes):
dcmtk -> audit proxy -> Orthanc, ATNA syslog, folder import -> spool -> node RPC -> PBFT -> every node;
the node stopped during a storescu burst; verify-image and duplicates; no PHI in any node's LevelDB."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from dicom_helpers import (
    DEFLATED_LE,
    RADCHAIN,
    ProcessHandle,
    deflate_bomb,
    dicom_file,
    free_port,
    ident_elements,
    make_instances,
    nested_sequences,
    run_tool,
    sample_file,
    start_proxy,
    truncated_meta_file,
    wait_for,
)

from node.dicom.rawdicom import EXPLICIT_LE
from node.testnet import rpc_call

pytestmark = pytest.mark.timeout(240)

PHI_FILES = ["CT_small.dcm", "MR_small.dcm"]


class LiveTestnet:
    def __init__(self, out: Path):
        from node.testnet import free_base_port

        self.out = out
        base = free_base_port(8)
        run_tool([RADCHAIN, "testnet", "--nodes", "4", "--out", str(out), "--base-port", str(base)])
        self.nodes = json.loads((out / "testnet.json").read_text())["nodes"]
        self.procs: dict[str, ProcessHandle] = {}

    def start(self, name: str | None = None):
        for n in self.nodes:
            if name is None or n["name"] == name:
                home = Path(n["home"])
                self.procs[n["name"]] = ProcessHandle([RADCHAIN, "start", "--home", str(home)],
                                                      home / "node.log").start()

    def stop(self, name: str | None = None):
        for n, p in self.procs.items():
            if name is None or n == name:
                p.stop(signal.SIGTERM)

    def restart_stopped(self) -> None:
        """Bring back any node a test stopped and left down (it failed before restarting it), so that one
        failure does not turn into 'connection refused' in every later test of this module."""
        down = [name for name, p in self.procs.items() if not p.running()]
        for name in down:
            self.start(name)
        if down:
            wait_for(self.ready, 90, 0.2, f"{down} back and connected")

    def node(self, name: str) -> dict:
        return next(n for n in self.nodes if n["name"] == name)

    def rpc(self, name: str, method: str, params: dict | None = None):
        n = self.node(name)
        r = rpc_call(n["rpc"], method, params, n["token"], timeout=10)
        if "error" in r:
            raise RuntimeError(f"{name} {method}: {r['error']}")
        return r["result"]

    def ready(self, names=None) -> bool:
        try:
            return all(self.rpc(n["name"], "status")["peers"] >= 3 for n in self.nodes
                       if names is None or n["name"] in names)
        except (httpx.HTTPError, RuntimeError, KeyError):
            return False

    def committed_everywhere(self, tx_hashes: list[str]) -> bool:
        try:
            for n in self.nodes:
                for h in tx_hashes:
                    if self.rpc(n["name"], "get_tx", {"hash": h}).get("status") != "committed":
                        return False
            return True
        except (httpx.HTTPError, RuntimeError):
            return False


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    out = tmp_path_factory.mktemp("testnet")
    tn = LiveTestnet(out)
    tn.start()
    try:
        wait_for(tn.ready, 90, 0.2, "4 nodes up and connected")
    except AssertionError:
        tn.stop()
        logs = "\n".join((Path(n["home"]) / "node.log").read_text()[-1500:] for n in tn.nodes)
        raise AssertionError(f"testnet did not come up:\n{logs}") from None
    yield tn
    tn.stop()


@pytest.fixture(autouse=True)
def _whole_testnet_after_each_test(request):
    yield
    if "testnet" in request.fixturenames:
        request.getfixturevalue("testnet").restart_stopped()


def delivered(home: Path) -> dict[str, dict]:
    path = home / "spool" / "delivered.jsonl"
    if not path.exists():
        return {}
    return {d["event_id"]: d for d in map(json.loads, path.read_text().splitlines())}


def spool_empty(home: Path) -> bool:
    return not list((home / "spool" / "pending").glob("*.json"))


def test_dicom_traffic_reaches_every_node(testnet, orthanc, tmp_path):
    home = Path(testnet.node("hosp-a")["home"])
    files = [sample_file(n) for n in PHI_FILES]
    gen, study = make_instances(tmp_path / "gen", 3, patient_id="RC-E2E-PAT-1", patient_name="E2e^Radchain")
    proxy, port = start_proxy(home, orthanc)
    try:
        run_tool(["storescu", "-aet", "CT_E2E", "-aec", "ORTHANC", "127.0.0.1", str(port),
                  *map(str, files + gen)])
        run_tool(["findscu", "-aet", "FIND_E2E", "-aec", "ORTHANC", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study}", "-k", "PatientID=", "127.0.0.1", str(port)])
        rx = tmp_path / "rx"
        rx.mkdir()
        run_tool(["getscu", "-aet", "GET_E2E", "-aec", "ORTHANC", "-od", str(rx), "-S", "-k",
                  "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)])
        scp_dir = tmp_path / "scp"
        scp_dir.mkdir()
        scp = ProcessHandle(["storescp", "-aet", "STORESCP", "-od", str(scp_dir), str(orthanc.store_scp_port)],
                            tmp_path / "storescp.log", ready_port=orthanc.store_scp_port).start()
        try:
            run_tool(["movescu", "-aet", "MOVE_E2E", "-aec", "ORTHANC", "-aem", "STORESCP", "-S", "-k",
                      "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)])
        finally:
            scp.stop()
        # 5 stores + 1 query + 1 accessed + 1 transfer.begin, all delivered and committed on all 4 nodes
        wait_for(lambda: spool_empty(home) and len(delivered(home)) >= 8, 60, 0.2, "proxy events delivered")
        txs = [d["tx"] for d in delivered(home).values()]
        wait_for(lambda: testnet.committed_everywhere(txs), 60, 0.5, "every tx committed on every node")
    finally:
        proxy.stop()
    chain = [testnet.rpc("hosp-d", "get_tx", {"hash": h})["tx"] for h in txs]
    kinds = sorted(t["type"] for t in chain)
    assert kinds.count("instances.stored") == 5
    assert {"query", "instances.accessed", "transfer.begin"} <= set(kinds)
    assert all(t["member"] == "hosp-a" for t in chain)
    by_ae = {t.get("ae"): t for t in chain}
    assert by_ae["GET_E2E"]["n_instances"] == 3 and by_ae["MOVE_E2E"]["peer_ae"] == "STORESCP"
    from node.dicom.rawdicom import inspect_file
    digests = {t["digest"] for t in chain if t["type"] == "instances.stored"}
    assert {inspect_file(f.read_bytes()).digest for f in files + gen} == digests

    # ATNA: a syslog audit message in -> tx on every node
    from dicom_helpers import audit_xml, frame, syslog
    home_b = Path(testnet.node("hosp-b")["home"])
    tcp = free_port()
    atna = ProcessHandle([RADCHAIN, "atna-receiver", "--home", str(home_b), "--tcp", f"127.0.0.1:{tcp}"],
                         tmp_path / "atna.log", ready_port=tcp).start()
    try:
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(frame(syslog(audit_xml(patient="RC-E2E-ATNA^^^HOSP-B", study="1.2.826.0.1.99.77"))))
        wait_for(lambda: spool_empty(home_b) and delivered(home_b), 30, 0.2, "ATNA event delivered")
        atna_tx = [d["tx"] for d in delivered(home_b).values()]
        wait_for(lambda: testnet.committed_everywhere(atna_tx), 60, 0.5, "ATNA tx on every node")
        t = testnet.rpc("hosp-c", "get_tx", {"hash": atna_tx[0]})["tx"]
        assert t["type"] == "instances.accessed" and t["member"] == "hosp-b" and t["ae"] == "VIEWER1"
    finally:
        atna.stop()


def test_node_stopped_during_storescu_burst(testnet, orthanc, tmp_path):
    home = Path(testnet.node("hosp-c")["home"])
    files, study = make_instances(tmp_path / "burst", 150, patient_id="RC-E2E-BURST",
                                  patient_name="Burst^Radchain")
    proxy, port = start_proxy(home, orthanc)
    try:
        before = set(delivered(home))
        storescu = subprocess.Popen(["storescu", "-aet", "CT_BURST", "-aec", "ORTHANC", "127.0.0.1", str(port),
                                     *map(str, files)], env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: len(delivered(home)) > len(before) or storescu.poll() is not None, 30, 0.01,
                 "first deliveries")
        assert storescu.poll() is None, "the burst ended before the node could be stopped"
        testnet.stop("hosp-c")  # the node goes down mid-burst; the modality must not notice
        if storescu.wait(60) != 0:
            journal = home / "spool" / "journal.jsonl"
            raise AssertionError(
                f"storescu failed while the node was down:\n{storescu.stdout.read().decode(errors='replace')}"
                f"\n--- proxy log ---\n{proxy.log.read_text()[-3000:]}"
                f"\n--- spool journal ---\n{journal.read_text()[-2000:] if journal.exists() else ''}"
                f"\n--- orthanc log ---\n{(orthanc.root / 'orthanc.log').read_text()[-2000:]}")
        testnet.start("hosp-c")
        wait_for(lambda: spool_empty(home), 90, 0.2, "spool drained after the node restarted")
        new = {k: v for k, v in delivered(home).items() if k not in before}
        assert len(new) >= 150
        txs = [d["tx"] for d in new.values()]
        wait_for(lambda: testnet.committed_everywhere(txs), 90, 0.5, "every burst tx on every node")
        stored = [testnet.rpc("hosp-a", "get_tx", {"hash": h})["tx"] for h in txs]
        assert len({t["instances"][0] for t in stored if t["type"] == "instances.stored"}) == 150
    finally:
        proxy.stop()


def test_verify_image_and_duplicate_study(testnet, tmp_path):
    files, study = make_instances(tmp_path / "dup", 3, patient_id="RC-E2E-DUP", patient_name="Dup^Radchain")
    for name in ("hosp-a", "hosp-b"):
        home = Path(testnet.node(name)["home"])
        run_tool([RADCHAIN, "dicom-import", "--home", str(home), str(tmp_path / "dup")], timeout=90)
        txs = [d["tx"] for k, d in delivered(home).items() if k.startswith("import-")]
        wait_for(lambda txs=txs: testnet.committed_everywhere(txs), 60, 0.5, f"{name} import committed")
    home_d = Path(testnet.node("hosp-d")["home"])
    out = run_tool([RADCHAIN, "verify-image", "--home", str(home_d), str(files[0])])
    assert "UNCHANGED" in out.stdout and "DUPLICATE: the same content is stored at hosp-a, hosp-b" in out.stdout
    assert f"duplicate study {study}: stored at hosp-a, hosp-b" in out.stdout
    from pydicom import dcmread
    ds = dcmread(files[1])
    ds.PatientName = "Edited^Header"
    ds.save_as(tmp_path / "meta.dcm")
    arr = bytearray(ds.PixelData)
    arr[500] ^= 0x55
    ds.PixelData = bytes(arr)
    ds.save_as(tmp_path / "pixels.dcm")
    other, _ = make_instances(tmp_path / "other", 1)
    # ALTERED needs the instance's token, which only the recording hospital (its local key) computes.
    home_a = Path(testnet.node("hosp-a")["home"])
    res = run_tool([RADCHAIN, "verify-image", "--home", str(home_a), "--json", str(tmp_path / "meta.dcm"),
                    str(tmp_path / "pixels.dcm"), str(other[0])], check=False)
    verdicts = [json.loads(line) for line in res.stdout.splitlines()]
    assert [v["verdict"] for v in verdicts] == ["METADATA-CHANGED", "ALTERED", "NOT-RECORDED"]
    assert res.returncode == 1
    # hostile files (issue 10 item 4): a deflate bomb, 3000 nested sequences and a truncated meta element
    # are each a clean NOT-DICOM verdict next to a good file; dicom-import skips them, counts them and goes
    # on, and the node commits what it imported
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a_bomb.dcm").write_bytes(dicom_file(deflate_bomb(), DEFLATED_LE))
    (bad / "b_nested.dcm").write_bytes(dicom_file(ident_elements() + nested_sequences(3000), EXPLICIT_LE))
    (bad / "c_truncated.dcm").write_bytes(truncated_meta_file())
    shutil.copy(files[2], bad / "d_good.dcm")
    res = run_tool([RADCHAIN, "verify-image", "--home", str(home_d), "--json", str(bad)], check=False, timeout=90)
    verdicts = {Path(v["file"]).name: v for v in map(json.loads, res.stdout.splitlines())}
    assert [verdicts[n]["verdict"] for n in sorted(verdicts)] == ["NOT-DICOM"] * 3 + ["UNCHANGED"], res.stdout
    assert "64 MiB cap" in verdicts["a_bomb.dcm"]["detail"]
    assert "nested deeper than 64" in verdicts["b_nested.dcm"]["detail"]
    assert "Traceback" not in res.stderr
    home_c = Path(testnet.node("hosp-c")["home"])
    imp = run_tool([RADCHAIN, "dicom-import", "--home", str(home_c), str(bad)], check=False, timeout=90)
    assert imp.returncode == 1 and "spooled 1 instance(s) of 1 study(ies); 3 file(s) skipped" in imp.stdout, imp
    def committed():
        txs = [d["tx"] for k, d in delivered(home_c).items() if k.startswith("import-")]
        return len(txs) == 1 and testnet.committed_everywhere(txs)
    wait_for(committed, 60, 0.5, "hosp-c import committed on every node")


def test_orthanc_plugin_events_reach_every_node(testnet, tmp_path):
    """A second Orthanc whose plugin spools into hosp-d's home and delivers to hosp-d's RPC."""
    from dicom_helpers import Orthanc

    home = Path(testnet.node("hosp-d")["home"])
    o = Orthanc(tmp_path / "orthanc-d")
    o.home = home
    o.start()
    try:
        files, study = make_instances(tmp_path / "pd", 1, patient_id="RC-E2E-PLUGIN", patient_name="Plugin^Radchain")
        up = o.post("/instances", files[0].read_bytes(), "application/dicom")
        o.get(f"/instances/{up['ID']}/file", headers={"X-Forwarded-User": "dr.e2e"})
        wait_for(lambda: spool_empty(home) and len(delivered(home)) >= 2, 30, 0.2, "plugin events delivered")
        txs = [d["tx"] for d in delivered(home).values()]
        wait_for(lambda: testnet.committed_everywhere(txs), 60, 0.5, "plugin txs on every node")
        kinds = sorted(testnet.rpc("hosp-a", "get_tx", {"hash": h})["tx"]["type"] for h in txs)
        assert kinds == ["instances.accessed", "instances.stored"]
    finally:
        o.stop()


def _phi_strings() -> list[bytes]:
    from pydicom import dcmread
    out = {b"RC-E2E-PAT-1", b"E2e^Radchain", b"RC-E2E-PLUGIN", b"Plugin^Radchain", b"RC-E2E-BURST", b"Burst^Radchain", b"RC-E2E-DUP", b"Dup^Radchain",
           b"RC-E2E-ATNA", b"1.2.826.0.1.99.77"}
    for name in PHI_FILES:
        ds = dcmread(sample_file(name))
        for value in (ds.PatientName, ds.PatientID, ds.StudyInstanceUID):
            s = str(value).strip()
            if s:
                out.add(s.encode())
    return sorted(out)


def _strings_in(value: bytes):
    """Every string found by decoding a LevelDB value as msgpack/JSON/UTF-8 (best effort)."""
    import msgpack

    found = [value.decode("latin-1")]
    try:
        obj = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except Exception:
        try:
            obj = json.loads(value)
        except Exception:
            obj = None
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            found.append(o)
        elif isinstance(o, bytes):
            found.append(o.decode("latin-1"))
            try:
                stack.append(msgpack.unpackb(o, raw=False, strict_map_key=False))
            except Exception:
                pass
        elif isinstance(o, dict):
            stack += list(o.keys()) + list(o.values())
        elif isinstance(o, (list, tuple)):
            stack += list(o)
    return found


def test_no_phi_in_any_nodes_leveldb(testnet):
    """Last in this module: stops the nodes (LevelDB is locked while a node runs) and scans every key and
    value of every node's chain store for the test patients' names, IDs and study UIDs."""
    import plyvel

    heights = [testnet.rpc(n["name"], "status")["height"] for n in testnet.nodes]
    assert min(heights) > 0
    testnet.stop()
    phi = _phi_strings()
    scanned = 0
    for n in testnet.nodes:
        db = plyvel.DB(str(Path(n["home"]) / "data" / "chain"), create_if_missing=False)
        try:
            for key, value in db.iterator():
                scanned += 1
                for blob in (key, value):
                    for s in phi:
                        assert s not in blob, f"{s!r} in raw LevelDB bytes of {n['name']}"
                    texts = _strings_in(blob)
                    for s in phi:
                        assert not any(s.decode() in t for t in texts), f"{s!r} in {n['name']} (decoded)"
        finally:
            db.close()
    assert scanned > 100
