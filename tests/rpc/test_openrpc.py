"""The published OpenRPC document: what rpc.discover serves, docs/openrpc.json and the methods agree."""

from __future__ import annotations

import json
from pathlib import Path

from node.rpc.methods import METHODS
from node.rpc.openrpc import DOCUMENT, dumps

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_openrpc_json_is_the_served_document():
    assert (DOCS / "openrpc.json").read_text() == dumps(), \
        "regenerate: python -m node.rpc.openrpc > docs/openrpc.json"


def test_every_method_is_described_with_params_result_and_documented():
    described = {m["name"]: m for m in DOCUMENT["methods"]}
    assert set(described) == set(METHODS)
    rpc_md = (DOCS / "RPC.md").read_text()
    for name, m in described.items():
        assert m["result"]["schema"] and isinstance(m["params"], list), name
        assert f"`{name}`" in rpc_md, f"docs/RPC.md does not document {name}"
    json.dumps(DOCUMENT)  # serialisable as served
