"""Multi-host behaviour on one machine: each node in its own network namespace with its own IP.

Cutting a node's link at the switch (no RST, packets just vanish, like a pulled cable) must not stop the
other three; after the link heals the node catches up and agrees. The 10.x addresses exist only inside the
namespaces this test creates (deploy/netns), so no traffic leaves them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from node.ledger.intake import EXAMPLE_EVENT
from node.testnet import LocalTestnet

NETNS = Path(__file__).resolve().parents[2] / "deploy" / "netns"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip") or not shutil.which("curl"):
        return "needs iproute2 and curl (make sysdeps installs them)"
    probe = f"rcq{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"`ip netns add` failed here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_reason = _unavailable()
pytestmark = [pytest.mark.skipif(_reason is not None, reason=_reason or ""), pytest.mark.timeout(240)]


class NamespacedNet(LocalTestnet):
    """A LocalTestnet whose RPC calls run inside each node's namespace (curl), since the host has no
    address on the namespaces' private switch."""

    def __init__(self, out: Path, prefix: str, subnet: str):
        self.prefix = prefix
        hosts = [f"{subnet}.{i + 1}" for i in range(4)]
        super().__init__(out, 4, hosts=hosts, wrap=[["ip", "netns", "exec", f"{prefix}-{i + 1}"] for i in range(4)])

    def rpc(self, i: int, method: str, params: dict | None = None, timeout: float = 10.0):
        info = self.nodes[i]
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
        out = subprocess.run(
            ["ip", "netns", "exec", f"{self.prefix}-{i + 1}", "curl", "-s", "--max-time", str(int(timeout)),
             "-H", f"Authorization: Bearer {info.token}", "-d", body, info.rpc],
            capture_output=True, text=True, timeout=timeout + 5)
        if out.returncode:
            raise RuntimeError(f"{info.name} unreachable: curl exit {out.returncode}")
        reply = json.loads(out.stdout)
        if "error" in reply:
            raise RuntimeError(f"{info.name} {method}: {reply['error']}")
        return reply["result"]

    def wait_ready(self, indexes=None, timeout: float = 60.0) -> None:
        for i in indexes if indexes is not None else range(4):
            self.wait_until(lambda i=i: self.rpc(i, "status", timeout=2)["height"] >= 0, timeout,
                            f"node {i} answers RPC")


@pytest.fixture
def netns_net(tmp_path):
    prefix = f"rc{os.getpid() % 100000}"
    subnet = f"10.78.{os.getpid() % 250}"
    subprocess.run(["bash", str(NETNS / "up.sh"), "4", prefix, subnet], check=True, capture_output=True)
    net = None
    try:
        net = NamespacedNet(tmp_path / "net", prefix, subnet)
        yield net
    finally:
        if net is not None:
            net.stop_all()
        subprocess.run(["bash", str(NETNS / "down.sh"), prefix], capture_output=True)


def submit(net, node: int, tag: str, count: int) -> list[str]:
    return [net.rpc(node, "submit_event", {"event": {**EXAMPLE_EVENT, "event_id": f"{tag}-{k}",
                                                      "time": int(time.time() * 1000)}})["tx"]
            for k in range(count)]


def committed(net, node: int, hashes: list[str]) -> bool:
    try:
        return all(net.rpc(node, "get_tx", {"hash": h})["status"] == "committed" for h in hashes)
    except RuntimeError as exc:
        if "-32002" in str(exc):  # not found: not committed there (yet)
            return False
        raise


def test_cut_link_others_continue_then_heal_and_catch_up(netns_net):
    net = netns_net
    net.start()
    net.wait_ready()
    first = submit(net, 0, "before", 3)
    for i in range(4):
        net.wait_until(lambda i=i: committed(net, i, first), 60, f"first txs on node {i}")

    subprocess.run(["bash", str(NETNS / "link.sh"), net.prefix, "4", "down"], check=True)
    during = submit(net, 0, "during", 5)
    for i in range(3):
        net.wait_until(lambda i=i: committed(net, i, during), 90, f"txs commit on node {i} while node 3 is cut off")
    assert not committed(net, 3, during), "a node cut off from everyone cannot have committed new txs"

    subprocess.run(["bash", str(NETNS / "link.sh"), net.prefix, "4", "up"], check=True)
    target = net.rpc(0, "status")["height"]
    net.wait_until(lambda: net.rpc(3, "status")["height"] >= target, 90, "healed node catches up")
    assert committed(net, 3, during)
    for h in range(1, target + 1):
        hashes = {net.rpc(i, "get_block", {"height": h})["hash"] for i in range(4)}
        assert len(hashes) == 1, f"nodes disagree at height {h}"
