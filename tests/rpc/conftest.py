"""One real 4-node testnet shared by every test in tests/rpc (each node process takes ~2 s to start on a
small machine). No test stops a node; the fuzz test checks at its end that all four still agree."""

from __future__ import annotations

import tomllib

import pytest
import tomli_w

from node.rpc.auth import READ, SUBMIT, add_token
from node.testnet import LocalTestnet

PACS_TOKEN = "pacs-token-0123456789abcdef"
SUBMIT_ONLY_TOKEN = "hook-token-0123456789abcdef"  # on node 3: submit role only


def _edit_config(home, **rpc) -> None:
    path = home / "config.toml"
    doc = tomllib.loads(path.read_text())
    doc["rpc"].update(rpc)
    path.write_text(tomli_w.dumps(doc))


@pytest.fixture(scope="session")
def net(tmp_path_factory):
    """Nodes 0-3 up and connected, each with its operator (admin) and reader (read) tokens. Node 0 also
    accepts the integrator token PACS_TOKEN (submit, read)."""
    testnet = LocalTestnet(tmp_path_factory.mktemp("rpcnet"), 4)
    add_token(testnet.nodes[0].home / "tokens.json", "pacs", [SUBMIT, READ], PACS_TOKEN)
    # reads need a token by default; node 3 says so explicitly, as an operator would
    _edit_config(testnet.nodes[3].home, read_requires_token=True)
    add_token(testnet.nodes[3].home / "tokens.json", "hook", [SUBMIT], SUBMIT_ONLY_TOKEN)
    testnet.pacs_token = PACS_TOKEN
    testnet.submit_only_token = SUBMIT_ONLY_TOKEN
    testnet.start()
    try:
        testnet.wait_until(lambda: all(testnet.rpc(i, "status", timeout=2)["peers"] >= 3 for i in range(4)),
                           120, "all four nodes up and connected")
        yield testnet
    finally:
        testnet.stop_all()
