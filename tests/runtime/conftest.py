"""A real local testnet: node processes, real py-libp2p on loopback, real LevelDB."""

from __future__ import annotations

import pytest

from node.testnet import LocalTestnet, log_tail

# A failed test shows the last lines of each of its nodes' logs in its failure report (so in CI's kept output
# too): a test that fails once in many runs is explained by these lines or not at all.
LOG_LINE_CHARS = 400


def node_log_tails(nets: list[LocalTestnet]) -> str:
    out = []
    for k, net in enumerate(nets):
        for info in net.nodes:
            out.append(f"--- testnet {k}, {info.name}: last lines of {info.home / 'node.log'}")
            out.extend(line[:LOG_LINE_CHARS] for line in log_tail(info))
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    nets = getattr(item, "testnets", None)
    if report.when == "call" and report.failed and nets:
        report.sections.append(("Captured node logs", node_log_tails(nets)))


@pytest.fixture
def testnet(tmp_path, request):
    nets: list[LocalTestnet] = []
    request.node.testnets = nets

    def make(n: int = 4, **kwargs) -> LocalTestnet:
        net = LocalTestnet(tmp_path / f"net{len(nets)}", n, **kwargs)
        nets.append(net)
        return net

    yield make
    for net in nets:
        net.stop_all()
