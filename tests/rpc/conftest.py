"""One real 4-node testnet shared by every test in tests/rpc (each node process takes ~2 s to start on a
small machine). No test stops a node; the fuzz test checks at its end that all four still agree."""

from __future__ import annotations

import tomllib

import pytest
import tomli_w

from node.testnet import LocalTestnet

PACS_TOKEN = "pacs-token-0123456789abcdef"


def _edit_config(home, **rpc) -> None:
    path = home / "config.toml"
    doc = tomllib.loads(path.read_text())
    doc["rpc"].update(rpc)
    path.write_text(tomli_w.dumps(doc))


@pytest.fixture(scope="session")
def net(tmp_path_factory):
    """Nodes 0-3 up and connected. Node 0 also accepts the integrator token PACS_TOKEN; node 3 requires a
    token for reads."""
    testnet = LocalTestnet(tmp_path_factory.mktemp("rpcnet"), 4)
    tokens0 = tomllib.loads((testnet.nodes[0].home / "config.toml").read_text())["rpc"]["tokens"]
    _edit_config(testnet.nodes[0].home, tokens={**tokens0, "pacs": PACS_TOKEN})
    _edit_config(testnet.nodes[3].home, read_requires_token=True)
    testnet.pacs_token = PACS_TOKEN
    testnet.start()
    try:
        # net.rpc sends each node's token (node 3 refuses anonymous reads, so wait_ready() would not do)
        testnet.wait_until(lambda: all(testnet.rpc(i, "status", timeout=2)["peers"] >= 3 for i in range(4)),
                           120, "all four nodes up and connected")
        yield testnet
    finally:
        testnet.stop_all()
