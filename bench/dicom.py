"""C-STORE throughput through the DICOM audit proxy vs straight into Orthanc, measured in the same run.

200 CT instances (pydicom's CT_small.dcm with new UIDs) per run, TCP_NODELAY=1 for storescu and Orthanc
(shared/notes/dicom.md: without it every DIMSE waits ~40 ms for Nagle). The proxy runs as the real
`radchain dicom-proxy` command and spools every event with fsync (no node: delivery is not on the modality's
path anyway). Two cases:

- one association (one storescu): each instance is a request and an answer in turn, so every microsecond
  the proxy adds is waited for;
- several modalities at once (`--modalities`, default 4 storescu processes, the instances split between them):
  the machine's CPU is the bound, shared by Orthanc, the modalities and the proxy.

Two placements (`--placement`, both by default on a machine with two CPUs or more):

- shared: every process on every CPU, as on one small server; the proxy's CPU is taken from Orthanc's;
- separate: Orthanc (both of them) and the modalities pinned to the first CPU, the proxy and the bare relay
  to the others, as when the proxy runs on the RadChain node's host and not on the PACS's. Orthanc has the same
  one CPU whether it is reached directly or through the proxy, so the ratio is the hop and the recording
  alone, without the CPU they take from the PACS.

Targets: Orthanc directly (the baseline), a bare trio byte relay (`bench.tcp_relay`: the hop alone, no
parsing, no spool), the audit proxy, and a second Orthanc running RadChain's plugin (deploy/orthanc: the hook
inside the PACS, no hop; every stored instance spooled with fsync before Orthanc answers). Runs alternate to
spread machine noise; medians compared. Goal: proxy/direct >= 0.9.

    python -m bench.dicom [--instances 200] [--rounds 3] [--modalities 4] [--placement both]
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


def _storescu(port: int, files: list[Path], aet: str, modalities: int = 1, cpus: set[int] | None = None) -> float:
    """Seconds for `modalities` storescu processes (one association each) to store `files` between them
    (on `cpus` only, when given)."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", f"{aet}{k}", "-aec", "ORTHANC", "127.0.0.1", str(port),
                               *map(str, files[k::modalities])],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin)
             for k in range(modalities)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"storescu failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    finally:
        for proc in procs:  # one failed or hung: the others must not outlive the run
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return time.perf_counter() - t0


def _pin(proc: subprocess.Popen | None, cpus: set[int]) -> None:
    """Every thread of `proc` on `cpus` only (threads it starts later inherit the mask of their creator)."""
    if proc is None:
        return
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that just ended
            pass


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _machine_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine (every process and the kernel: loopback TCP, fsync) so far."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
REPO = Path(__file__).resolve().parent.parent


def _start_orthanc(root: Path, plugin_home: Path | None = None) -> tuple[subprocess.Popen, int]:
    """An Orthanc with its own storage (and RadChain's plugin spooling into plugin_home when given): its
    process and DICOM port, once it answers."""
    http_port, dicom_port = free_port(), free_port()
    cfg = {"Name": "BENCH", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "storage"),
           "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
           "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
           "Plugins": [], "SaveJobs": False}
    if plugin_home is not None:
        cfg["Plugins"] = [str(PYTHON_PLUGIN)]
        cfg["PythonScript"] = str(REPO / "deploy" / "orthanc" / "radchain_plugin.py")
        cfg["RadChain"] = {"Home": str(plugin_home), "SourceDir": str(REPO), "RecordDicomStores": True,
                           "Deliver": False}
    root.mkdir(parents=True, exist_ok=True)
    (root / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def up():
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}) with {root / 'orthanc.json'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1):
                return True
        except OSError:
            return False
    _wait(up, 30, "Orthanc did not start")
    _wait(lambda: _port_open(dicom_port), 10, "Orthanc DICOM port")
    return proc, dicom_port


def _bench_home(path: Path) -> Path:
    path.mkdir()
    (path / "config.toml").write_text('[node]\nname = "bench"\n[dicom]\nissuer = "BENCH"\n')
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.dicom")
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modalities", type=int, default=4)
    ap.add_argument("--placement", choices=("shared", "separate", "both"), default="both")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    placements = ["shared", "separate"] if args.placement == "both" else [args.placement]
    if "separate" in placements and len(cpus) < 2:
        print("bench.dicom: one CPU, so no separate placement")
        placements = ["shared"]
    pacs_cpus, proxy_cpus = {cpus[0]}, set(cpus[1:])
    for tool in ("Orthanc", "storescu"):
        if shutil.which(tool) is None:
            print(f"bench.dicom: {tool} not installed (bash deploy/install-system-deps.sh test)")
            return 1
    work = Path(tempfile.mkdtemp(prefix="radchain-bench-dicom-"))
    orthanc = proxy = relay = plugged = None
    try:
        orthanc, dicom_port = _start_orthanc(work / "orthanc")
        home = _bench_home(work / "home")
        plugin_home = _bench_home(work / "plugin-home")
        if PYTHON_PLUGIN.exists():
            plugged, plugged_port = _start_orthanc(work / "orthanc-plugin", plugin_home)
        else:
            print(f"bench.dicom: {PYTHON_PLUGIN} missing (Debian's orthanc-python): no plugin row")
        proxy_port = free_port()
        radchain = str(Path(sys.executable).parent / "radchain")
        proxy = subprocess.Popen([radchain, "dicom-proxy", "--home", str(home), "--listen",
                                  f"127.0.0.1:{proxy_port}", "--pacs", f"ORTHANC@127.0.0.1:{dicom_port}",
                                  "--no-deliver"], env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: _port_open(proxy_port), 20, "proxy did not start")
        relay_port = free_port()
        relay = subprocess.Popen([sys.executable, "-m", "bench.tcp_relay", str(relay_port), str(dicom_port)],
                                 env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        _wait(lambda: _port_open(relay_port), 20, "relay did not start")
        targets = [("direct", dicom_port), ("relay", relay_port), ("proxy", proxy_port)]
        if plugged is not None:
            targets.append(("plugin", plugged_port))
        cpu_of = {"direct": orthanc, "relay": relay, "proxy": proxy, "plugin": plugged}
        for label, port in targets:  # first-association costs
            _storescu(port, _make_instances(work / f"warm-{label}", 10), "WARMUP")
        pending = {"proxy": home / "spool" / "pending", "plugin": plugin_home / "spool" / "pending"}
        warm = {label: len(list(d.glob("*.json"))) for label, d in pending.items()}
        rates: dict[tuple[str, int, str], list[float]] = {}
        cases = sorted({1, args.modalities})  # `--modalities 1` measures the single association once
        cpu = {}  # (placement, associations, target) -> CPU seconds of the process doing the target's work
        machine = {}  # (placement, associations, target) -> CPU seconds of the whole machine
        for r in range(args.rounds):
            for placement in placements:
                separate = placement == "separate"
                for proc in (orthanc, plugged):
                    _pin(proc, pacs_cpus if separate else set(cpus))
                for proc in (proxy, relay):
                    _pin(proc, proxy_cpus if separate else set(cpus))
                for k in cases:
                    for label, port in targets:
                        files = _make_instances(work / f"{label}-{k}-{r}", args.instances)
                        proc = cpu_of.get(label)
                        cpu0 = _cpu_seconds(proc.pid) if proc else 0.0
                        machine0 = _machine_cpu_seconds()
                        secs = _storescu(port, files, "B" + label[0].upper(), modalities=k,
                                         cpus=pacs_cpus if separate else None)
                        key = (placement, k, label)
                        machine[key] = machine.get(key, 0.0) + _machine_cpu_seconds() - machine0
                        if proc:
                            cpu[key] = cpu.get(key, 0.0) + _cpu_seconds(proc.pid) - cpu0
                        rates.setdefault((placement, k, label), []).append(args.instances / secs)
                        print(f"  round {r + 1}, {placement}, {k} association(s), {label:6s}: {args.instances} "
                              f"instances in {secs:.2f} s = {args.instances / secs:.0f} inst/s", flush=True)
                        shutil.rmtree(work / f"{label}-{k}-{r}")
        spooled = {label: len(list(d.glob("*.json"))) - warm[label] for label, d in pending.items()}
        expected = args.instances * args.rounds * len(cases) * len(placements)

        def ms_per_instance(placement: str, k: int, label: str, of: dict | None = None) -> float:
            return (cpu if of is None else of)[(placement, k, label)] / (args.instances * args.rounds) * 1000

        print(f"C-STORE into Orthanc, {args.instances} x 39 KB CT per run, TCP_NODELAY=1, medians of "
              f"{args.rounds} alternated runs (every instance spooled with fsync: proxy "
              f"{spooled['proxy']}/{expected}" + (f", plugin {spooled['plugin']}/{expected}" if plugged else "")
              + "):")
        for placement in placements:
            if placement == "shared":
                print(f"  shared: every process on all {len(cpus)} CPUs")
            else:
                print(f"  separate: Orthanc and the modalities on CPU {cpus[0]}, the proxy and the relay on "
                      f"CPU {','.join(map(str, cpus[1:]))}")
            for k in cases:
                med = {label: statistics.median(rates[(placement, k, label)]) for label, _ in targets}
                d = med["direct"]
                case = "one association" if k == 1 else f"{k} modalities at once"
                print(f"    {case}: direct {d:.0f} inst/s (baseline, Orthanc CPU "
                      f"{ms_per_instance(placement, k, 'direct'):.2f} ms/inst); bare relay {med['relay']:.0f} "
                      f"inst/s = {med['relay'] / d:.2f}x (the hop alone, relay CPU "
                      f"{ms_per_instance(placement, k, 'relay'):.2f} ms/inst); audit proxy {med['proxy']:.0f} "
                      f"inst/s = {med['proxy'] / d:.2f}x (goal >= 0.9x), proxy CPU "
                      f"{ms_per_instance(placement, k, 'proxy'):.2f} ms/inst")
                if placement == "shared":
                    # What bounds the ratio when the machine is the limit: at 0.9x the whole machine may spend
                    # direct/0.9 per instance, so the hop plus the audit may add a ninth of direct's cost
                    whole = {label: ms_per_instance(placement, k, label, machine) for label, _ in targets}
                    busy = whole["direct"] * d / 1000
                    print(f"      whole machine: direct {whole['direct']:.2f} ms/inst of CPU ({busy:.2f} CPUs "
                          f"busy); 0.9x leaves {whole['direct'] / 0.9 - whole['direct']:.2f} ms/inst for the hop "
                          f"and the audit; the bare relay adds {whole['relay'] - whole['direct']:.2f}, the audit "
                          f"proxy {whole['proxy'] - whole['direct']:.2f}"
                          + ("" if busy > 0.8 * len(cpus) else " (CPU is not the limit here: an association "
                             "waits for each answer, so the hop's latency is)"))
                if plugged is not None:
                    print(f"      Orthanc + RadChain plugin {med['plugin']:.0f} inst/s = {med['plugin'] / d:.2f}x, "
                          f"Orthanc CPU {ms_per_instance(placement, k, 'plugin'):.2f} ms/inst (the hook inside "
                          f"the PACS, no hop)")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        return 0
    finally:
        for proc in (relay, proxy, orthanc, plugged):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
