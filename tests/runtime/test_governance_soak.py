"""`make soak`: a live consortium grows from 4 to 7 hospitals under load, one approval round at a time, then
survives f = 2 of 7 stopped, then shrinks and grows again for a few cycles (issue 12)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from consensus.certificate import quorum
from node.ledger.epochs import switch_height
from node.runtime.settings import load_config
from node.testnet import LocalTestnet

sys.path.insert(0, os.path.dirname(__file__))  # the helpers of the make-test governance run
from test_governance import (  # noqa: E402
    EPOCH_INTERVAL,
    PSK_RETIRE,
    Load,
    assert_nothing_lost,
    assert_one_chain,
    certificate,
    cli,
    vote,
)

pytestmark = pytest.mark.soak
CYCLES = int(os.environ.get("RADCHAIN_GOV_CYCLES", "2"))


PSK: list[bytes] = []  # the current consortium PSK once rotated (a joining hospital gets it out of band)


def add(net: LocalTestnet, voters: list[int]) -> int:
    """Approve a new hospital with exactly quorum(n) of the current members; start it; its switch height."""
    info, fields = net.add_node()
    i = len(net.nodes) - 1
    if PSK:  # its config gets the current PSK, not genesis's (retired by a rotation)
        cfg = info.home / "config.toml"
        cfg.write_text(cfg.read_text().replace(load_config(info.home).psk.hex(), PSK[-1].hex()))
        assert load_config(info.home).psk == PSK[-1]
    net.start(i)
    need = quorum(len(voters))
    for v in voters[:need]:
        approving = vote(net, v, "member.added", **fields)
    return switch_height(approving["height"], EPOCH_INTERVAL) + 1


def remove(net: LocalTestnet, voters: list[int], name: str) -> int:
    for v in voters[:quorum(len(voters))]:
        approving = vote(net, v, "member.removed", subject=name)
    return switch_height(approving["height"], EPOCH_INTERVAL) + 1


def rotate_psk(net: LocalTestnet, members: list[int], removed: int) -> None:
    """A fresh PSK approved by quorum(n) members through the CLI; waits past the drop height. The removed
    member (still running) knew the old PSK: afterwards it is refused at the transport too."""
    homes = [str(net.nodes[i].home) for i in members]
    first = cli("member", "rotate-psk", "--home", homes[0]).stdout
    proposal = first.split("proposal ")[1].split()[0].rstrip(":;")
    for h in homes[1:quorum(len(members))]:
        cli("member", "approve", proposal[:12], "--home", h)
    rot = net.rpc(members[0], "validators")["psk_rotations"][-1]
    net.wait_until(lambda: min(net.height(i) for i in members) >= rot["retire_old_after"] + 1, 120,
                   "past the PSK drop height")
    doc = json.loads((net.nodes[members[0]].home / "keys" / "psk.json").read_text())
    PSK.append(bytes.fromhex(doc[rot["commit"]]["psk"]))
    refused = sum(net.rpc(i, "status")["psk"].get("refused", 0) for i in members)
    net.wait_until(lambda: sum(net.rpc(i, "status")["psk"].get("refused", 0) for i in members) > refused, 30,
                   "the removed member's dials refused under the retired PSK")
    assert net.rpc(removed, "status")["peers"] == 0


def settle(net: LocalTestnet, members: list[int], start: int) -> None:
    net.wait_until(lambda: all(net.rpc(i, "status")["member"] and net.rpc(i, "status")["epoch"] >= start
                               for i in members), 120, f"members {members} in the set from {start}")
    top = net.height(members[0])
    net.wait_until(lambda: min(net.height(i) for i in members) >= top + 2, 120, "commits in the new set")


def test_grow_to_seven_stop_f_then_shrink_and_grow_again(testnet):
    net: LocalTestnet = testnet(4, params={"epoch_interval": EPOCH_INTERVAL, "psk_retire_blocks": PSK_RETIRE})
    net.start()
    net.wait_ready(timeout=60)
    members = [0, 1, 2, 3]
    with Load(net, [0, 1]) as load:
        for n in (5, 6, 7):  # one at a time, each approved by quorum(n - 1) of the current set
            start = add(net, members)
            members.append(len(net.nodes) - 1)
            settle(net, members, start)
            v = net.rpc(0, "validators")
            assert len(v["validators"]) == n and v["quorum"] == quorum(n)
            newest = certificate(net, 0, net.height(0))
            assert len(newest.signatures) >= quorum(n)
        # f = 2 of 7 stopped: the other 5 (= quorum(7)) still commit
        net.kill(5)
        net.kill(6)
        top = net.height(0)
        net.wait_until(lambda: net.height(0) >= top + 3, 90, "commits with 2 of 7 stopped")
        net.start(5)
        net.start(6)
        net.wait_until(lambda: min(net.height(i) for i in members) >= net.height(0) - 2, 120, "all back")
        for _ in range(CYCLES):  # shrink by one (the newest), then grow by a fresh hospital
            gone = members[-1]
            start = remove(net, members, net.nodes[gone].name)
            members.remove(gone)
            settle(net, members, start)
            rotate_psk(net, members, gone)
            net.kill(gone)
            start = add(net, members)
            members.append(len(net.nodes) - 1)
            settle(net, members, start)
    assert_nothing_lost(net, [members[-1]], load.acked, timeout=120)
    assert_one_chain(net, members, timeout=120)
    net.stop_all()
    out = cli("verify-chain", "--home", str(net.nodes[members[-1]].home), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
