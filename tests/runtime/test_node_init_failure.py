"""A Node whose construction fails after it opened its stores releases them: the home can be opened again
(LevelDB's lock, the mempool's and the WAL file), by a retry or an operator's tool, without a restart."""

from __future__ import annotations

import shutil

import pytest

from node import testnet
from node.ledger.store import Store
from node.runtime.mempool import Mempool
from node.runtime.node import Node
from node.runtime.settings import load_config
from node.runtime.wal_file import WriteAheadLog


def test_init_failing_after_the_store_opened_releases_every_lock(tmp_path):
    nodes = testnet.generate(4, tmp_path / "net", base_port=testnet.free_base_port(8))
    cfg = load_config(nodes[0].home)
    # The libp2p identity is checked after the chain store, the mempool and the WAL are open: give node 0
    # node 1's identity, so __init__ fails there.
    own = cfg.p2p_key_path.read_bytes()
    shutil.copy(nodes[1].home / "keys" / "p2p.key", cfg.p2p_key_path)

    with pytest.raises(ValueError, match="not the libp2p identity") as failed:
        Node(cfg)
    assert failed.value.__traceback__ is not None  # the half-built node is still referenced from here

    with Store(cfg.chain_dir, create=False) as store:  # plyvel raises IOError ("lock") while one is open
        assert store.height == 0
    Mempool(cfg.home / "data" / "mempool", cfg.mempool.max_txs).close()
    WriteAheadLog(cfg.wal_dir).close()

    # and once the operator puts the right key back, a retry in the same process opens everything again
    cfg.p2p_key_path.write_bytes(own)
    node = Node(cfg)
    try:
        assert node.store.height == 0 and node.index == 0
    finally:
        node.close()
