"""genesis.json loading: valid files round-trip, invalid ones fail naming the field."""

from __future__ import annotations

import json

import pytest

from node.ledger.genesis import Genesis, GenesisError


def test_round_trip(consortium, tmp_path):
    g = consortium.genesis
    g.save(tmp_path)
    loaded = Genesis.load(tmp_path)
    assert loaded == g and loaded.hash() == g.hash()
    assert loaded.member_pubkeys == tuple(m.pubkey for m in g.members)
    assert loaded.members[0].allowed_keys[0] == g.members[0].pubkey and len(loaded.members[0].allowed_keys) == 2
    assert loaded.param("max_block_txs") == 2000


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("chain_id"), "chain_id"),
    (lambda d: d.update(extra=1), "extra: unknown field"),
    (lambda d: d.update(members=[]), "members"),
    (lambda d: d["members"][1].update(pubkey="zz"), r"members\[1\].pubkey"),
    (lambda d: d["members"][1].update(name=d["members"][0]["name"]), "duplicate member name"),
    (lambda d: d["members"][2].update(clients=["00"]), r"members\[2\].clients\[0\]"),
    (lambda d: d["members"][0].update(p2p="x"), "p2p"),
    (lambda d: d.update(params={"max_block_txs": 0}), "max_block_txs"),
    (lambda d: d.update(genesis_time="soon"), "genesis_time"),
])
def test_bad_files(consortium, tmp_path, edit, message):
    data = consortium.genesis.to_json()
    edit(data)
    (tmp_path / "genesis.json").write_text(json.dumps(data))
    with pytest.raises(GenesisError, match=message):
        Genesis.load(tmp_path)


def test_missing_and_not_json(tmp_path):
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(tmp_path)
    (tmp_path / "genesis.json").write_text("{nope")
    with pytest.raises(GenesisError, match="not JSON"):
        Genesis.load(tmp_path)
