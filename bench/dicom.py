"""C-STORE throughput through the DICOM audit proxy vs straight into Orthanc, measured in the same run.

Two rows, each against its own baseline (straight into Orthanc) in the same run, runs alternating
direct/proxy to spread machine noise, medians compared (goal >= 0.9x for both):

* one association: 200 CT instances (pydicom's CT_small.dcm with new UIDs) over one storescu association;
* several modalities at once: the same number of instances over 4 concurrent storescu associations
  (different calling AE titles), where the proxy's spool writes concurrent events with one fsync.

TCP_NODELAY=1 for storescu and Orthanc (shared/notes/dicom.md: without it every DIMSE waits ~40 ms for
Nagle). The proxy runs as the real `radchain dicom-proxy` command and spools every event with fsync (no node:
delivery is not on the modality's path anyway). For the single association the bench also measures what
bounds it: the round trip the extra hop adds per DIMSE (C-ECHO through the proxy vs direct), the spool's
fsync (staged while the PACS stores), and the proxy's CPU per instance.

    python -m bench.dicom [--instances 200] [--rounds 3] [--modalities 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from node.testnet import free_port

ENV = {**os.environ, "TCP_NODELAY": "1"}


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _make_instances(out: Path, n: int) -> list[Path]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    base = dcmread(get_testdata_file("CT_small.dcm", download=False))
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = base.copy()
        ds.PatientID = "BENCH-PAT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        p = out / f"i{i:04d}.dcm"
        ds.save_as(p)
        paths.append(p)
    return paths


def _storescu(port: int, files: list[Path], aet: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["storescu", "-aet", aet, "-aec", "ORTHANC", "127.0.0.1", str(port), *map(str, files)],
                   env=ENV, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def _storescu_parallel(port: int, groups: list[list[Path]], aet: str) -> float:
    """One storescu association per group, all at once; seconds until the last one finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", f"{aet}{i}", "-aec", "ORTHANC", "127.0.0.1", str(port),
                               *map(str, files)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i, files in enumerate(groups)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"storescu exited {p.returncode}: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - t0


def _echo_ms(port: int, n: int) -> float:
    """Milliseconds per C-ECHO over one association (echoscu --repeat): the round trip of one DIMSE."""
    t0 = time.perf_counter()
    subprocess.run(["echoscu", "-aet", "BENCH_ECHO", "-aec", "ORTHANC", "--repeat", str(n), "127.0.0.1",
                    str(port)], env=ENV, check=True, capture_output=True, timeout=120)
    return (time.perf_counter() - t0) * 1000 / n


def _fsync_ms(root: Path, n: int = 100) -> float:
    """Median milliseconds of one spool.stage (write + fsync of one event file) on the bench's file system."""
    from node.dicom.spool import Spool

    spool = Spool(root)
    event = {"type": "instances.stored", "patient_id": "BENCH-PAT", "digest": "0" * 64, "pad": "x" * 600}
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        spool.stage(event, source="bench")
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _spool_counts(home: Path) -> tuple[int, int]:
    """(flushes, events) of the proxy's staged segments sealed so far (journal "segment-sealed")."""
    flushes = events = 0
    path = home / "spool" / "journal.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if record.get("what") == "segment-sealed":
            flushes += record["flushes"]
            events += record["events"]
    return flushes, events


def _pending_events(home: Path) -> int:
    from node.dicom.spool import Spool

    return sum(len(Spool.load_all(p)) for p in (home / "spool" / "pending").glob("*.json"))


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def _cpu_seconds(pid: int) -> float:
    return sum(_cpu_split(pid))


def _start_orthanc(work: Path) -> tuple[subprocess.Popen, int]:
    http_port, dicom_port = free_port(), free_port()
    cfg = {"Name": "BENCH", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "storage"),
           "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
           "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
           "Plugins": [], "SaveJobs": False}
    (work / "orthanc.json").write_text(json.dumps(cfg))
    orthanc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)

    def up():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1):
                return True
        except OSError:
            return False
    _wait(up, 30, "Orthanc did not start")
    _wait(lambda: _port_open(dicom_port), 10, "Orthanc DICOM port")
    return orthanc, dicom_port


def _start_proxy(home: Path, dicom_port: int) -> tuple[subprocess.Popen, int]:
    home.mkdir()
    (home / "config.toml").write_text('[node]\nname = "bench"\n[dicom]\nissuer = "BENCH"\n')
    proxy_port = free_port()
    radchain = str(Path(sys.executable).parent / "radchain")
    proxy = subprocess.Popen([radchain, "dicom-proxy", "--home", str(home), "--listen",
                              f"127.0.0.1:{proxy_port}", "--pacs", f"ORTHANC@127.0.0.1:{dicom_port}",
                              "--no-deliver"], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(lambda: _port_open(proxy_port), 30, "proxy did not start")
    return proxy, proxy_port


def _row(title: str, n: int, direct: list[float], via: list[float]) -> float:
    d, p = statistics.median(direct), statistics.median(via)
    print(f"{title}: direct {d:.0f} inst/s (rounds {', '.join(f'{x:.0f}' for x in direct)}), "
          f"through the audit proxy {p:.0f} inst/s (rounds {', '.join(f'{x:.0f}' for x in via)}): "
          f"ratio {p / d:.2f}x (goal >= 0.9x)", flush=True)
    return p / d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.dicom")
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modalities", type=int, default=4, help="concurrent associations in the second row")
    ap.add_argument("--only", choices=("single", "concurrent"), help="run one row only")
    args = ap.parse_args(argv)
    for tool in ("Orthanc", "storescu", "echoscu"):
        if shutil.which(tool) is None:
            print(f"bench.dicom: {tool} not installed (bash deploy/install-system-deps.sh test)")
            return 1
    work = Path(tempfile.mkdtemp(prefix="radchain-bench-dicom-"))
    orthanc = proxy = None
    n, m = args.instances, args.modalities
    try:
        orthanc, dicom_port = _start_orthanc(work)
        home = work / "home"
        proxy, proxy_port = _start_proxy(home, dicom_port)
        pid = proxy.pid
        load0 = os.getloadavg()[0]
        _storescu(dicom_port, _make_instances(work / "warm", 10), "WARMUP")  # first-association costs
        _storescu(proxy_port, _make_instances(work / "warmp", 10), "WARMUP")
        expected = 10
        rows = {}
        if args.only != "concurrent":
            direct, via, cpu, user, system = [], [], 0.0, 0.0, 0.0
            for r in range(args.rounds):
                for label, port, out in (("direct", dicom_port, direct), ("proxy", proxy_port, via)):
                    files = _make_instances(work / f"{label}{r}", n)
                    u0, s0 = _cpu_split(pid)
                    secs = _storescu(port, files, "BENCH_" + label.upper())
                    if label == "proxy":
                        u1, s1 = _cpu_split(pid)
                        user, system = user + u1 - u0, system + s1 - s0
                        cpu = user + system
                        expected += n
                    out.append(n / secs)
                    print(f"  one association, round {r + 1} {label:6s}: {n} instances in {secs:.2f} s = "
                          f"{n / secs:.0f} inst/s", flush=True)
                    shutil.rmtree(work / f"{label}{r}")
            rows["single"] = (direct, via, cpu)
            user_system = (user, system)
        time.sleep(1.0)  # the last segment of the first row is sealed (SEGMENT_AGE)
        files0, events0 = _spool_counts(home)
        if args.only != "single":
            direct, via, cpu = [], [], 0.0
            per = max(1, n // m)
            for r in range(args.rounds):
                for label, port, out in (("direct", dicom_port, direct), ("proxy", proxy_port, via)):
                    groups = [_make_instances(work / f"c{label}{r}-{i}", per) for i in range(m)]
                    cpu0 = _cpu_seconds(pid)
                    secs = _storescu_parallel(port, groups, "BENCH_" + label.upper()[:5])
                    if label == "proxy":
                        cpu += _cpu_seconds(pid) - cpu0
                        expected += per * m
                    out.append(per * m / secs)
                    print(f"  {m} associations, round {r + 1} {label:6s}: {per * m} instances in {secs:.2f} s = "
                          f"{per * m / secs:.0f} inst/s", flush=True)
                    for i in range(m):
                        shutil.rmtree(work / f"c{label}{r}-{i}")
            rows["concurrent"] = (direct, via, cpu)
        # what bounds one association: the extra hop per DIMSE, the fsync, the proxy's CPU
        echo_direct = statistics.median(_echo_ms(dicom_port, 200) for _ in range(3))
        echo_proxy = statistics.median(_echo_ms(proxy_port, 200) for _ in range(3))
        fsync = _fsync_ms(work / "fsync-spool")
        time.sleep(1.0)
        files1, events1 = _spool_counts(home)
        spooled = _pending_events(home)
        load1 = os.getloadavg()[0]
        print(f"C-STORE into Orthanc, 39 KB CT, TCP_NODELAY=1, every instance spooled with fsync "
              f"({spooled} events for {expected} instances); load average {load0:.1f} at the start, "
              f"{load1:.1f} at the end, {os.cpu_count()} CPUs")
        if "single" in rows:
            direct, via, cpu = rows["single"]
            user, system = user_system
            _row(f"one association, {n} instances", n, direct, via)
            per_direct = 1000 / statistics.median(direct)
            per_proxy = 1000 / statistics.median(via)
            print(f"  what bounds it: {per_proxy:.2f} ms per instance through the proxy vs {per_direct:.2f} ms "
                  f"direct (+{per_proxy - per_direct:.2f} ms). storescu waits for each answer before sending the "
                  f"next instance, so every step of the proxy on the instance's path adds to that: the extra hop "
                  f"costs {echo_proxy - echo_direct:.2f} ms per DIMSE round trip (C-ECHO {echo_proxy:.2f} ms "
                  f"through the proxy vs {echo_direct:.2f} ms direct); the spool's fsync ({fsync:.2f} ms median "
                  f"here) runs while Orthanc stores ({per_direct:.2f} ms per instance); proxy CPU "
                  f"{cpu / (n * args.rounds) * 1000:.2f} ms per instance (user {user / (n * args.rounds) * 1000:.2f}, "
                  f"system {system / (n * args.rounds) * 1000:.2f})", flush=True)
        if "concurrent" in rows:
            direct, via, cpu = rows["concurrent"]
            _row(f"{m} associations at once, {per * m} instances", per * m, direct, via)
            print(f"  proxy CPU {cpu / (per * m * args.rounds) * 1000:.2f} ms per instance; group commit: "
                  f"{events1 - events0} events in {files1 - files0} flushes "
                  f"({(events1 - events0) / max(1, files1 - files0):.2f} events per flush)", flush=True)
        return 0
    finally:
        for proc in (proxy, orthanc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
