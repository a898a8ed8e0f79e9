"""Fixtures for the DICOM hook tests: a JSON-RPC recorder standing in for the node, a node home, and one
real Orthanc (with the RadChain plugin) per session. Helpers live in dicom_helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dicom_helpers import Orthanc, RpcRecorder, need, write_home  # noqa: E402


@pytest.fixture
def rpc():
    r = RpcRecorder().start()
    yield r
    r.stop()


@pytest.fixture
def home(tmp_path, rpc):
    return write_home(tmp_path / "home", f"127.0.0.1:{rpc.port}", rpc.token)


@pytest.fixture(scope="session")
def orthanc_rpc():
    """The JSON-RPC peer the Orthanc plugin's deliverer sends to."""
    r = RpcRecorder().start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, orthanc_rpc):
    need("Orthanc", "storescu")
    if not Path("/usr/share/orthanc/plugins/libOrthancPython.so").exists():
        pytest.skip("orthanc-python is not installed (run `bash deploy/install-system-deps.sh test`)")
    root = tmp_path_factory.mktemp("orthanc")
    o = Orthanc(root)
    write_home(o.home, f"127.0.0.1:{orthanc_rpc.port}", orthanc_rpc.token)
    o.start()
    yield o
    o.stop()
