"""A real local testnet: node processes, real py-libp2p on loopback, real LevelDB."""

from __future__ import annotations

import pytest

from node.testnet import LocalTestnet


@pytest.fixture
def testnet(tmp_path):
    nets: list[LocalTestnet] = []

    def make(n: int = 4, **kwargs) -> LocalTestnet:
        net = LocalTestnet(tmp_path / f"net{len(nets)}", n, **kwargs)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.stop_all()
