"""One real 4-node testnet for tests/interop, with CT studies imported through the DICOM hook."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from interop_helpers import TODAY, _ct_files, radchain  # noqa: E402

from node.testnet import LocalTestnet  # noqa: E402


@pytest.fixture(scope="session")
def net(tmp_path_factory):
    out = tmp_path_factory.mktemp("priornet")
    testnet = LocalTestnet(out / "net", 4)
    testnet.start()
    try:
        testnet.wait_until(lambda: all(testnet.rpc(i, "status", timeout=2)["peers"] >= 3 for i in range(4)),
                           120, "all four nodes up and connected")
        d = out / "dicom"
        _ct_files(d / "a", 3, patient="PRIOR-1", issuer="HOSP-A", body_part="HEAD", day=TODAY - timedelta(days=10))
        _ct_files(d / "b", 2, patient="PRIOR-1", issuer="HOSP-A", body_part="HEAD", day=TODAY - timedelta(days=4))
        _ct_files(d / "b-chest", 1, patient="PRIOR-1", issuer="HOSP-A", body_part="CHEST",
                  day=TODAY - timedelta(days=200))
        _ct_files(d / "other", 1, patient="PRIOR-2", issuer="HOSP-A", body_part="HEAD", day=TODAY)
        for i, folder in ((0, "a"), (1, "b"), (1, "b-chest"), (0, "other")):
            radchain("dicom-import", "--home", str(testnet.nodes[i].home), str(d / folder))
        testnet.out = out / "net"
        yield testnet
    finally:
        testnet.stop_all()


