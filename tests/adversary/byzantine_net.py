"""Real testnets with Byzantine members: honest `radchain start` processes next to adversary.py processes,
a steady load of txs submitted to honest members, and the checks a hospital cares about.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.ledger.intake import EXAMPLE_EVENT
from node.testnet import LocalTestnet, NodeInfo, poll, rpc_call, start_node

ADVERSARY = Path(__file__).resolve().with_name("adversary.py")
BUSY = -32004  # JSON-RPC "node busy, submit again after data.retry_after seconds" (docs/RPC.md)
RETRY_FOR = 10.0
_ids = itertools.count()


def start_adversary(info: NodeInfo, behaviour: str, victim: str | None = None,
                    channels: str | None = None) -> subprocess.Popen:
    """adversary.py for one node home, in its own session, output appended to HOME/node.log."""
    cmd = [sys.executable, str(ADVERSARY), "--home", str(info.home), "--behaviour", behaviour]
    if victim:
        cmd += ["--victim", victim]
    if channels:
        cmd += ["--channels", channels]
    with open(info.home / "node.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def log_tail(info: NodeInfo, lines: int = 30) -> str:
    try:
        return "\n".join((info.home / "node.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def view_change_lines(net: ByzantineTestnet, per_node: int = 8) -> str:
    """The honest members' last log lines about views: when a latency bound fails, whether the view change
    was slow (and why) or never happened is the first thing to know."""
    out = []
    for i in net.honest:
        try:
            lines = (net.nodes[i].home / "node.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [line[:300] for line in lines if "view" in line.lower()][-per_node:]
        out += [f"{net.nodes[i].name}: {line}" for line in hits]
    return "\n".join(out) or "(none logged)"


class ByzantineTestnet(LocalTestnet):
    """A LocalTestnet where the members in `adversaries` (index -> behaviour, or (behaviour, victim name[,
    channels]) as start_adversary takes them) run adversary.py instead of the honest node."""

    def __init__(self, out: Path, n: int, adversaries: dict, **kwargs):
        super().__init__(out, n, **kwargs)
        self.adversaries = {i: (b, None) if isinstance(b, str) else tuple(b) for i, b in adversaries.items()}
        self.honest = [i for i in range(n) if i not in self.adversaries]

    def start(self, i: int | None = None) -> None:
        for j in ([i] if i is not None else range(len(self.nodes))):
            if j in self.adversaries:
                self.procs[j] = start_adversary(self.nodes[j], *self.adversaries[j])
            else:
                self.procs[j] = start_node(self.nodes[j], self.wrap[j])

    def assert_honest_alive(self) -> None:
        for i in self.honest:
            p = self.procs[i]
            if p is not None and p.poll() is not None:
                raise AssertionError(f"honest node {self.nodes[i].name} died (exit code {p.returncode}) next to "
                                     f"{self.describe()}; its log ends:\n{log_tail(self.nodes[i])}")

    def wait_ready(self, indexes=None, timeout: float = 60.0) -> None:
        """Until the honest members answer `status`; fails at once if one of them exits meanwhile."""
        deadline = time.monotonic() + timeout
        for i in (indexes if indexes is not None else self.honest):
            def up(i=i) -> bool:
                self.assert_honest_alive()
                return self.rpc(i, "status", timeout=2)["height"] >= 0
            poll(up, max(0.1, deadline - time.monotonic()), f"{self.nodes[i].name} ready")

    def assert_adversaries_alive(self) -> None:
        """The misbehaving members must still be running, or a test would only show that a crashed member
        is tolerated."""
        for i in self.adversaries:
            p = self.procs[i]
            if p is None or p.poll() is not None:
                raise AssertionError(f"adversary {self.nodes[i].name} is not running (exit code "
                                     f"{None if p is None else p.returncode}); its log ends:\n{log_tail(self.nodes[i])}")

    def describe(self) -> str:
        return ", ".join(f"{self.nodes[i].name} ({a[0]})" for i, a in self.adversaries.items())

    def index_of(self, name: str) -> int:
        return next(i for i, info in enumerate(self.nodes) if info.name == name)


@dataclass
class Block:
    height: int
    hash: str
    header: dict
    txs: list[str]


def chain_of(net: LocalTestnet, i: int) -> list[Block]:
    """Every block node i holds, oldest first (paged `blocks` calls)."""
    out: list[Block] = []
    start = 1
    while True:
        page = net.rpc(i, "blocks", {"from": start}, timeout=10)
        out += [Block(b["height"], b["hash"], b["header"], b["txs"]) for b in page["blocks"]]
        if page["next"] is None:
            return out
        start = page["next"]


@dataclass
class Submitted:
    tx: str
    node: int
    at: float


@dataclass
class Load:
    """Txs submitted to honest members, one per member per round."""
    net: ByzantineTestnet
    to: list[int]
    submitted: list[Submitted] = field(default_factory=list)
    busy: int = 0  # "retry after" answers (admission backpressure)

    def round(self) -> None:
        for i in self.to:
            event = {**EXAMPLE_EVENT, "event_id": f"evt-{next(_ids)}-{i}-{time.time_ns()}",
                     "time": int(time.time() * 1000)}
            self.submitted.append(Submitted(self.submit(i, event), i, time.monotonic()))

    def submit(self, i: int, event: dict) -> str:
        """The tx hash once member i acknowledged the event. A "busy, retry after" answer (JSON-RPC -32004)
        is honoured for up to RETRY_FOR seconds, as node.client does; any other failure fails the test."""
        info = self.net.nodes[i]
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                reply = rpc_call(info.rpc, "submit_event", {"event": event}, info.token, timeout=10)
            except httpx.HTTPError as exc:
                self.net.assert_honest_alive()
                raise AssertionError(f"honest node {info.name} failed a submission next to "
                                     f"{self.net.describe()}: {exc!r}") from None
            if "result" in reply:
                return reply["result"]["tx"]
            error = reply.get("error") or {}
            if error.get("code") == BUSY and time.monotonic() < deadline:
                self.busy += 1
                time.sleep(min(1.0, float((error.get("data") or {}).get("retry_after", 0.2))))
                continue
            raise AssertionError(f"honest node {info.name} refused a submission next to {self.net.describe()}: "
                                 f"{error}")

    def run(self, seconds: float, interval: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.round()
            self.net.assert_honest_alive()
            time.sleep(interval)


def committed(net: ByzantineTestnet, i: int) -> set[str]:
    return {tx for b in chain_of(net, i) for tx in b.txs}


def assert_bounded_latency(load: Load, bound: float) -> None:
    """Every tx submitted to an honest member at least `bound` seconds ago is committed on that member:
    a Byzantine member may cost a view change, never a hospital's records."""
    now = time.monotonic()
    net = load.net
    for i in load.to:
        due = [s for s in load.submitted if s.node == i and now - s.at >= bound]
        done = committed(net, i)
        late = [s for s in due if s.tx not in done]
        assert not late, (f"{len(late)} of {len(due)} txs submitted to honest {net.nodes[i].name} more than "
                          f"{bound:.0f} s ago are not committed (height {net.height(i)}, view "
                          f"{net.rpc(i, 'status')['view']}) next to {net.describe()}; load average "
                          f"{os.getloadavg()[0]:.1f}; view changes seen:\n{view_change_lines(net)}")


def assert_all_committed_and_agreed(load: Load, timeout: float, start_heights: dict[int, int]) -> list[Block]:
    """All submitted txs commit on every honest member, heights moved, and every honest member holds
    byte-identical blocks (hash and header) at every height. Returns the agreed chain."""
    net = load.net
    want = {s.tx for s in load.submitted}
    deadline = time.monotonic() + timeout
    while True:
        net.assert_honest_alive()
        missing = {i: len(want - committed(net, i)) for i in net.honest}
        if not any(missing.values()):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"txs submitted to honest members not committed within {timeout:.0f} s "
                                 f"(missing per node {missing}) next to {net.describe()}")
        time.sleep(0.5)
    chains = {i: chain_of(net, i) for i in net.honest}
    for i in net.honest:
        assert len(chains[i]) > start_heights[i], f"{net.nodes[i].name} did not commit"
    upto = min(len(c) for c in chains.values())
    ref_i = net.honest[0]
    for i in net.honest[1:]:
        for a, b in zip(chains[ref_i][:upto], chains[i][:upto], strict=True):
            assert (a.hash, a.header) == (b.hash, b.header), (
                f"honest {net.nodes[ref_i].name} and {net.nodes[i].name} hold different blocks at height "
                f"{a.height} next to {net.describe()}:\n{a.header}\n{b.header}")
    net.assert_honest_alive()
    return chains[ref_i]


def run_case(make_testnet, n: int, adversaries: dict, load_seconds: float, bound: float, idle: float = 0.0,
             settle: float = 30.0):
    """Start n members (`adversaries`: index -> (behaviour, victim name)), load the honest ones for
    `load_seconds`, and check: bounded latency, adversaries still running, no honest process died, every
    tx committed everywhere, identical blocks. `idle` seconds without load come before the final checks."""
    net = make_testnet(n, adversaries)
    net.start()
    net.wait_ready(net.honest)
    # The latency bound counts from each tx's acknowledgment, and a node answers RPC before its first sessions
    # are up: the honest members connected to each other first, or the first txs also pay for the dialling.
    honest_names = {net.nodes[i].name for i in net.honest}

    def meshed(i: int) -> bool:
        net.assert_honest_alive()
        connected = {p["name"] for p in net.rpc(i, "peers", timeout=5)["peers"] if p["connected"]}
        return honest_names - {net.nodes[i].name} <= connected

    for i in net.honest:
        net.wait_until(lambda i=i: meshed(i), 60, f"{net.nodes[i].name} connected to the other honest members")
    start_heights = {i: net.height(i) for i in net.honest}
    load = Load(net, net.honest)
    load.run(load_seconds)
    net.assert_adversaries_alive()
    assert_bounded_latency(load, bound)
    # An idle spell: the sync safety net then asks peers for their height (a liar answers).
    end = time.monotonic() + idle
    while time.monotonic() < end:
        net.assert_honest_alive()
        time.sleep(0.5)
    chain = assert_all_committed_and_agreed(load, settle, start_heights)
    return net, load, chain
