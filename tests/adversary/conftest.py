"""Byzantine-member tests with real node processes. Makes byzantine_net.py importable (pytest runs with
--import-mode=importlib) and gives each test its own testnets, stopped afterwards."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from byzantine_net import ByzantineTestnet  # noqa: E402


@pytest.fixture
def byzantine_testnet(tmp_path):
    nets: list[ByzantineTestnet] = []

    def make(n: int, adversaries: dict, **kwargs) -> ByzantineTestnet:
        net = ByzantineTestnet(tmp_path / f"net{len(nets)}", n, adversaries, **kwargs)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.stop_all()
