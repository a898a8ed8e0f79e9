"""PeerNetworks in separate Linux network namespaces: talk, cut one link, heal, traffic resumes.

Uses deploy/netns/*.sh. The 10.x addresses exist only inside the namespaces the test creates (the
bridge itself lives in a namespace too), so no traffic reaches the host's own network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from network_testkit import PSK, PeerProc

from network.identity import identity_from_seed, peer_id_of

NETNS = Path(__file__).resolve().parents[2] / "deploy" / "netns"
N = 3


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"rcp{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_reason = _netns_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def _sh(*args: str) -> str:
    return subprocess.run(["bash", *map(str, args)], check=True, capture_output=True, text=True).stdout


@pytest.mark.timeout(90)
async def test_nodes_in_namespaces_talk_survive_a_cut_and_resume(tmp_path):
    prefix = f"rn{os.getpid() % 100000}"
    subnet = "10.77.0"
    keys = [identity_from_seed(bytes([200 + i]) * 32) for i in range(N)]
    pids = [peer_id_of(k) for k in keys]
    addrs = [f"/ip4/{subnet}.{i + 1}/tcp/7000" for i in range(N)]
    members = tmp_path / "members.json"
    members.write_text(json.dumps({p: [a] for p, a in zip(pids, addrs, strict=True)}))
    procs: list[PeerProc] = []
    _sh(NETNS / "up.sh", N, prefix, subnet)
    try:
        for i, k in enumerate(keys):
            key = tmp_path / f"p2p{i}.key"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, k.private_key.serialize())
            os.close(fd)
            argv = ["--key", str(key), "--members", str(members), "--listen", addrs[i],
                    "--psk", PSK.hex(), "--lock-dir", str(tmp_path)]
            if i == 0:
                argv += ["--probe", "0.1"]
            procs.append(PeerProc(argv, prefix=["ip", "netns", "exec", f"{prefix}-{i + 1}"]))
        a = procs[0]
        for p in procs:
            await p.wait_line(lambda s: s.startswith("READY"), timeout=60)  # a py-libp2p start-up on a busy host

        def peers_line(want: set[str]):
            return lambda s: s.startswith("PEERS") and set(filter(None, s[6:].split(","))) == want

        def echo_from(pid: str, after_seq: int = 0):
            return lambda s: s.startswith("ECHO ") and s.split()[1] == pid and int(s.split()[2]) > after_seq

        # full mesh over the namespaces' own IPs; probes echoed by both peers
        i, _ = await a.wait_line(peers_line({pids[1], pids[2]}), timeout=20)
        await a.wait_line(echo_from(pids[1]), start=i)
        await a.wait_line(echo_from(pids[2]), start=i)

        # cut node 3's link at the switch: no RST, only the heartbeat notices
        cut_at = len(a.lines)
        t0 = trio.current_time()
        _sh(NETNS / "link.sh", prefix, 3, "down")
        i, _ = await a.wait_line(peers_line({pids[1]}), timeout=10, start=cut_at)
        detect_s = trio.current_time() - t0
        assert 2.5 < detect_s < 8, detect_s
        last_seq = max((int(s.split()[2]) for s in a.lines if s.startswith("ECHO ")), default=0)
        await a.wait_line(echo_from(pids[1], last_seq), start=i)  # the healthy peer keeps answering

        # heal: node 3 is redialled and answers again (including the probes queued during the cut)
        healed_at = len(a.lines)
        t0 = trio.current_time()
        _sh(NETNS / "link.sh", prefix, 3, "up")
        await a.wait_line(peers_line({pids[1], pids[2]}), timeout=15, start=healed_at)
        heal_s = trio.current_time() - t0
        await a.wait_line(echo_from(pids[2], last_seq), start=healed_at)
        print(f"netns: cut detected in {detect_s:.2f} s, link back {heal_s:.2f} s after heal")
    finally:
        for p in procs:
            p.kill()
        _sh(NETNS / "down.sh", prefix)
