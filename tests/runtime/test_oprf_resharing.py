"""The OPRF key reshared on chain when a member joins (issue 13), on real node processes.

A 4-member testnet (t = 3) records a patient; a fifth hospital is approved by governance; the old members
post `oprf.dealing` txs, hosp-e opens its sealed box, and from the switch the five members hold new shares
of the same key (t = 3 of 5). With two founders stopped, a founder can only tokenize with hosp-e's partial
(checked against the on-chain public share), and finds the patient recorded before the join: same token.
"""

from __future__ import annotations

import re
import time

import pytest

from node.ledger import oprf
from node.ledger.intake import EXAMPLE_EVENT
from node.runtime.tokenizer import load_epochs
from node.testnet import LocalTestnet
from tests.runtime.test_governance import EPOCH_INTERVAL, JOIN_OUTPUT, Load, cli, join

pytestmark = pytest.mark.timeout(300)


def test_joining_member_gets_a_share_by_the_on_chain_flow_and_tokens_stay(testnet, tmp_path):
    net: LocalTestnet = testnet(4, params={"epoch_interval": EPOCH_INTERVAL})
    net.start()
    net.wait_ready(timeout=60)
    before = dict(EXAMPLE_EVENT, patient_id="7654321", issuer="REGION-MPI", study_uid="1.2.826.0.9.1",
                  event_id="reshare-before", time=int(time.time() * 1000))
    answer = net.rpc(0, "submit_event", {"event": before, "mode": "commit", "timeout": 30}, timeout=60)
    token = net.rpc(0, "get_tx", {"hash": answer["hash"], "receipt": False})["tx"]["patient"]
    old_public = load_epochs(net.nodes[0].home).publics[1]

    with Load(net, [0, 2]):  # blocks keep coming: the flow's windows are counted in blocks
        join(net, tmp_path)
        net.start(4)
        propose = [line.split() for line in JOIN_OUTPUT if line.strip().startswith("radchain member propose-add")]
        argv = [a if a != "<their" else "--home" for a in propose[0][1:] if a != "home>"]
        argv[argv.index("--home") + 1] = str(net.nodes[0].home)
        proposal = cli(*argv).stdout.split("proposal ")[1].split()[0].rstrip(":;")
        last = ""
        for i in (1, 2):
            last = cli("member", "approve", proposal[:12], "--home", str(net.nodes[i].home)).stdout
        switch = int(re.search(r"new member set starts at height (\d+)", last).group(1))

        def reshared(i: int) -> bool:
            keys = load_epochs(net.nodes[i].home)
            return 1 in keys.shares and keys.publics[1].n == 5

        net.wait_until(lambda: all(reshared(i) for i in range(5)), 120, "every member holds a share of 3-of-5")
        assert net.height(0) >= switch - 1

    keys = [load_epochs(net.nodes[i].home) for i in range(5)]
    public = keys[0].publics[1]
    assert all(k.publics[1] == public for k in keys), "every member installed the same public parameters"
    assert public.public_key == old_public.public_key and public.t == 3  # the same key: tokens unchanged
    assert keys[4].shares[1].index == 5
    assert all(k.shares[1].secret != s.secret for k in keys[:4] for s in [keys[4].shares[1]])

    # two founders down: hosp-d (which never tokenized this patient: no cache) reaches t = 3 only with
    # hosp-a's and hosp-e's partials, each proof checked against the public share the chain's flow gave;
    # the pre-join event is found by its raw patient: the same token
    net.kill(1)
    net.kill(2)
    found = net.rpc(3, "audit_trail", {"patient_id": "7654321", "issuer": "REGION-MPI"}, timeout=60)
    assert [e["patient"] for e in found["entries"]] == [token], found
    assert oprf.decode_point(public.share_key(5)) == keys[4].shares[1].public.share_key(5)
