"""Chaos under steady load, as CometBFT's e2e runner does it (make soak): real node processes, one fault at
a time (f = 1 of 4). For CHAOS_SECONDS (default 300) every 10 s a random member is killed with SIGKILL and
restarted, or frozen with SIGSTOP for a few seconds and thawed; then, in network namespaces, the primary's
link is cut for 10 s, CHAOS_PARTITIONS times; one member's data directory (a tmpfs) is filled up and
freed again: it refuses txs, stays up and resumes by itself. Afterwards no acknowledged tx is lost, every
member holds byte-identical blocks, and every member caught up within 10 s of the last fault ending.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from byzantine_net import Submitted, chain_of, log_tail

from node.ledger.intake import EXAMPLE_EVENT
from node.testnet import LocalTestnet, rpc_call

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "300"))
FAULT_EVERY = 10.0
CATCH_UP = 10.0

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(CHAOS_SECONDS) + 300)]


class SteadyLoad(threading.Thread):
    """Submits events to random members at a steady rate; remembers every acknowledged tx (the RPC answered
    pending or committed: the member has it durably)."""

    def __init__(self, net: LocalTestnet, rate: float = 20.0):
        super().__init__(daemon=True)
        self.net, self.interval = net, 1.0 / rate
        self.acked: list[Submitted] = []
        self.refused = 0
        self.stop = threading.Event()
        self.rng = random.Random(1)

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            i = self.rng.randrange(len(self.net.nodes))
            k += 1
            event = {**EXAMPLE_EVENT, "event_id": f"chaos-{k}", "time": int(time.time() * 1000)}
            try:
                tx = self.net.rpc(i, "submit_event", {"event": event}, timeout=3)["tx"]
                self.acked.append(Submitted(tx, i, time.monotonic()))
            except (httpx.HTTPError, RuntimeError, KeyError):
                self.refused += 1  # a member that is down or frozen: the client would retry elsewhere
            time.sleep(self.interval)


def heights(net: LocalTestnet) -> dict[int, int | None]:
    out = {}
    for i in range(len(net.nodes)):
        try:
            out[i] = net.height(i)
        except (httpx.HTTPError, RuntimeError, KeyError):
            out[i] = None
    return out


def test_kill_and_freeze_random_members_under_load(tmp_path):
    net = LocalTestnet(tmp_path / "net", 4)
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "0")) or None)
    load = SteadyLoad(net)
    try:
        net.start()
        net.wait_ready()
        load.start()
        faults = []
        end = time.monotonic() + CHAOS_SECONDS
        step = 0
        while time.monotonic() < end:
            victim = rng.randrange(4)
            t0 = time.monotonic()
            if step % 5 == 2:  # freeze: the process keeps its sockets but answers nothing
                p = net.procs[victim]
                p.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(3, 6))
                p.send_signal(signal.SIGCONT)
                faults.append(("sigstop", victim))
            else:
                net.kill(victim)
                time.sleep(rng.uniform(0.5, 3))
                net.start(victim)
                faults.append(("kill -9", victim))
            for i, p in enumerate(net.procs):
                assert p is not None and p.poll() is None, (
                    f"member {net.nodes[i].name} exited by itself during chaos:\n{log_tail(net.nodes[i])}")
            step += 1
            time.sleep(max(0.0, FAULT_EVERY - (time.monotonic() - t0)))
        fault_end = time.monotonic()

        # Every member catches up within CATCH_UP seconds of the last fault ending (load still running).
        target = max(h for h in heights(net).values() if h is not None)
        while True:
            now = heights(net)
            if all(h is not None and h >= target for h in now.values()):
                break
            assert time.monotonic() - fault_end < CATCH_UP, (
                f"members not caught up to height {target} within {CATCH_UP:.0f} s of the last fault "
                f"({faults[-1]}): {now}")
            time.sleep(0.2)
        caught_up_after = time.monotonic() - fault_end
        load.stop.set()
        load.join()

        # No acknowledged tx lost: every one commits on every member.
        want = {s.tx for s in load.acked}
        assert len(want) >= CHAOS_SECONDS, f"only {len(want)} txs acknowledged: the load did not run"
        deadline = time.monotonic() + 60
        while True:
            chains = {i: chain_of(net, i) for i in range(4)}
            missing = {i: len(want - {t for b in c for t in b.txs}) for i, c in chains.items()}
            if not any(missing.values()):
                break
            assert time.monotonic() < deadline, f"acknowledged txs missing per member after chaos: {missing}"
            time.sleep(1)
        upto = min(len(c) for c in chains.values())
        for i in range(1, 4):
            for a, b in zip(chains[0][:upto], chains[i][:upto], strict=True):
                assert (a.hash, a.header) == (b.hash, b.header), f"members 0 and {i} differ at height {a.height}"
        print(f"chaos: {len(faults)} faults in {CHAOS_SECONDS:.0f} s, {len(want)} txs acknowledged "
              f"({load.refused} refused while a member was down), 0 lost, {upto} identical blocks, "
              f"caught up {caught_up_after:.1f} s after the last fault")
    finally:
        load.stop.set()
        for p in net.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
        net.stop_all()


# ---------------------------------------------------------------------------------------------------------
# Partitioning the primary needs network namespaces (deploy/netns): root, iproute2 and curl.

NETNS = Path(__file__).resolve().parents[2] / "deploy" / "netns"
PARTITIONS = int(os.environ.get("CHAOS_PARTITIONS", "3"))


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip") or not shutil.which("curl"):
        return "needs iproute2 and curl (make sysdeps installs them)"
    probe = f"rcx{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"`ip netns add` failed here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NamespacedNet(LocalTestnet):
    """Node i in namespace PREFIX-(i+1) on a private switch; RPC goes through curl inside the namespace."""

    def __init__(self, out: Path, prefix: str, subnet: str):
        self.prefix = prefix
        hosts = [f"{subnet}.{i + 1}" for i in range(4)]
        super().__init__(out, 4, hosts=hosts, wrap=[["ip", "netns", "exec", f"{prefix}-{i + 1}"] for i in range(4)])

    def rpc(self, i: int, method: str, params: dict | None = None, timeout: float = 10.0):
        info = self.nodes[i]
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
        try:
            out = subprocess.run(
                ["ip", "netns", "exec", f"{self.prefix}-{i + 1}", "curl", "-s", "--max-time", str(max(1, int(timeout))),
                 "-H", f"Authorization: Bearer {info.token}", "-d", body, info.rpc],
                capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{info.name} unreachable: curl hung") from None
        if out.returncode:
            raise RuntimeError(f"{info.name} unreachable: curl exit {out.returncode}")
        reply = json.loads(out.stdout)
        if "error" in reply:
            raise RuntimeError(f"{info.name} {method}: {reply['error']}")
        return reply["result"]

    def link(self, i: int, state: str) -> None:
        subprocess.run(["bash", str(NETNS / "link.sh"), self.prefix, str(i + 1), state], check=True)


def test_partition_the_primary_under_load(tmp_path):
    reason = _netns_unavailable()  # probed here, not at collection: make test collects this file too
    if reason:
        pytest.skip(reason)
    prefix, subnet = f"rx{os.getpid() % 100000}", f"10.79.{os.getpid() % 250}"
    subprocess.run(["bash", str(NETNS / "up.sh"), "4", prefix, subnet], check=True, capture_output=True)
    net = NamespacedNet(tmp_path / "net", prefix, subnet)
    load = SteadyLoad(net, rate=10.0)
    try:
        net.start()
        net.wait_until(lambda: all(net.rpc(i, "status", timeout=2)["peers"] == 3 for i in range(4)), 60,
                       "four members connected")
        load.start()
        cut = []
        for _ in range(PARTITIONS):
            time.sleep(5)
            status = net.rpc((cut[-1] + 1) % 4 if cut else 0, "status")
            primary = next(i for i, info in enumerate(net.nodes) if info.name == status["primary"])
            net.link(primary, "down")  # the primary's cable pulled: its packets vanish, no RST
            cut.append(primary)
            time.sleep(10)
            for i, p in enumerate(net.procs):
                assert p.poll() is None, f"member {net.nodes[i].name} exited:\n{log_tail(net.nodes[i])}"
            net.link(primary, "up")
        fault_end = time.monotonic()
        target = max(h for h in heights(net).values() if h is not None)
        while True:
            now = heights(net)
            if all(h is not None and h >= target for h in now.values()):
                break
            assert time.monotonic() - fault_end < CATCH_UP, (
                f"members not caught up to height {target} within {CATCH_UP:.0f} s of healing member {cut[-1]}: {now}")
            time.sleep(0.3)
        caught_up_after = time.monotonic() - fault_end
        time.sleep(2)
        load.stop.set()
        load.join()
        want = {s.tx for s in load.acked}
        assert len(want) >= 10 * PARTITIONS, f"only {len(want)} txs acknowledged: the load did not run"
        deadline = time.monotonic() + 60
        while True:
            chains = {i: chain_of(net, i) for i in range(4)}
            missing = {i: len(want - {t for b in c for t in b.txs}) for i, c in chains.items()}
            if not any(missing.values()):
                break
            assert time.monotonic() < deadline, f"acknowledged txs missing per member after partitions: {missing}"
            time.sleep(1)
        upto = min(len(c) for c in chains.values())
        for i in range(1, 4):
            for a, b in zip(chains[0][:upto], chains[i][:upto], strict=True):
                assert (a.hash, a.header) == (b.hash, b.header), f"members 0 and {i} differ at height {a.height}"
        print(f"partitions: primary cut {PARTITIONS} times for 10 s ({[net.nodes[i].name for i in cut]}), "
              f"{len(want)} txs acknowledged, 0 lost, {upto} identical blocks, caught up "
              f"{caught_up_after:.1f} s after the last heal")
    finally:
        load.stop.set()
        net.stop_all()
        subprocess.run(["bash", str(NETNS / "down.sh"), prefix], capture_output=True)


# ---------------------------------------------------------------------------------------------------------
# A full disk: one member's data directory on a small tmpfs (root only) that the test fills up.

def _tmpfs_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    probe = Path(f"/tmp/rc-tmpfs-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True,
                           text=True)
        if r.returncode:
            return f"cannot mount a tmpfs here: {r.stderr.strip()}"
        subprocess.run(["umount", str(probe)], capture_output=True)
        return None
    finally:
        probe.rmdir()


def _fill(directory: Path) -> Path:
    """Write zeros until the filesystem is full; the file is removed to give the space back."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


def _disk_full_line(log: str) -> str | None:
    """A log line (the `msg` of a JSON line, not a traceback) saying the disk is full."""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        msg = str(entry.get("msg", "")).lower() if isinstance(entry, dict) else ""
        if entry.get("level") in ("error", "critical") and ("disk" in msg or "no space" in msg):
            return line
    return None


def test_full_disk_stops_one_member_cleanly_and_it_resumes(tmp_path):
    reason = _tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    net = LocalTestnet(tmp_path / "net", 4)
    victim = 3
    data = net.nodes[victim].home / "data"
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data)], check=True)
    load = SteadyLoad(net, rate=10.0)
    try:
        net.start()
        net.wait_ready()
        load.start()
        time.sleep(5)
        filler = _fill(data)
        before = {i: net.height(i) for i in range(3)}
        # The full member refuses client txs with a retry error (node/runtime/diskspace.py), and stays up.
        refusal = {}

        def refused() -> bool:
            event = {**EXAMPLE_EVENT, "event_id": f"full-{time.monotonic()}", "time": int(time.time() * 1000)}
            reply = rpc_call(net.nodes[victim].rpc, "submit_event", {"event": event}, net.nodes[victim].token)
            refusal.update(reply.get("error") or {})
            return bool(refusal)
        net.wait_until(refused, 10, "the full member refuses a tx")
        assert refusal["code"] == -32004 and refusal["data"]["retry_after"] > 0, refusal
        time.sleep(10)
        for i in range(3):  # the others carry on
            assert net.procs[i].poll() is None
            assert net.height(i) > before[i], f"{net.nodes[i].name} stopped committing while {victim} is full"
        assert net.procs[victim].poll() is None, f"the full member exited:\n{log_tail(net.nodes[victim])}"
        log = (net.nodes[victim].home / "node.log").read_text(errors="replace")
        assert _disk_full_line(log), f"no clear disk-full log line from the full member:\n{log[-3000:]}"
        filler.unlink()  # space returns: the member resumes by itself, no restart
        fault_end = time.monotonic()
        target = max(net.height(i) for i in range(3))
        net.wait_until(lambda: net.height(victim) >= target, CATCH_UP, "the full member resumes and catches up")
        caught_up = time.monotonic() - fault_end
        assert net.procs[victim].poll() is None, "the member exited instead of resuming"
        load.stop.set()
        load.join()
        want = {s.tx for s in load.acked}
        deadline = time.monotonic() + 60
        while True:
            chains = {i: chain_of(net, i) for i in range(4)}
            missing = {i: len(want - {t for b in c for t in b.txs}) for i, c in chains.items()}
            if not any(missing.values()):
                break
            assert time.monotonic() < deadline, f"acknowledged txs missing per member after the full disk: {missing}"
            time.sleep(1)
        upto = min(len(c) for c in chains.values())
        for i in range(1, 4):
            for a, b in zip(chains[0][:upto], chains[i][:upto], strict=True):
                assert (a.hash, a.header) == (b.hash, b.header), f"members 0 and {i} differ at height {a.height}"
        print(f"disk full: member {net.nodes[victim].name} refused txs ({refusal['message']}), stayed up, caught "
              f"up {caught_up:.1f} s after space returned; {len(want)} txs acknowledged, 0 lost, {upto} "
              f"identical blocks")
    finally:
        load.stop.set()
        net.stop_all()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
