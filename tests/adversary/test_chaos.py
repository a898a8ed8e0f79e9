"""Chaos under steady load, as CometBFT's e2e runner does it (make soak): real node processes, one fault at
a time (f = 1 of 4) for CHAOS_SECONDS (default 300): every 10 s a random member is killed with SIGKILL and
restarted, or frozen with SIGSTOP for a few seconds and thawed. Afterwards no acknowledged tx is lost, every
member holds byte-identical blocks, and every member caught up within 10 s of the last fault ending.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import httpx
import pytest
from byzantine_net import Submitted, chain_of, log_tail

from node.testnet import EXAMPLE_EVENT, LocalTestnet

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
