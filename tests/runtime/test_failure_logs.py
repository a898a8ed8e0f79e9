"""A testnet test that fails shows the last lines of each node's log in its failure report; one that passes
shows none. Run as a separate pytest process on a test file of its own, with this directory's conftest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node.testnet import LOG_TAIL_LINES

REPO = Path(__file__).resolve().parents[2]
CONFTEST = Path(__file__).with_name("conftest.py")

INNER = '''
def write_log(net, marker):
    for info in net.nodes:
        with open(info.home / "node.log", "w") as f:
            for i in range(100):
                f.write(f"{marker} {info.name} line {i}\\n")


def test_passes(testnet):
    write_log(testnet(4), "QUIET")


def test_fails(testnet):
    net = testnet(4)
    write_log(net, "LOUD")
    assert net.nodes[0].name == "no such member"
'''


def test_a_failed_testnet_test_reports_each_nodes_last_log_lines(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "1 failed, 1 passed" in text, text
    assert text.count("Captured node logs") == 1, text
    first = 100 - LOG_TAIL_LINES
    for name in ("hosp-a", "hosp-b", "hosp-c", "hosp-d"):
        assert f"LOUD {name} line 99" in text and f"LOUD {name} line {first}\n" in text, text
        assert f"LOUD {name} line {first - 1}\n" not in text, text  # the tail only
    assert "QUIET" not in text  # a passing test prints nothing of its nodes


def test_log_tail_reads_whole_lines_from_the_end_of_a_big_log(tmp_path):
    from types import SimpleNamespace

    from node.testnet import log_tail

    home = SimpleNamespace(home=tmp_path)
    assert log_tail(home) == []  # a node that never logged
    lines = [f"record {i:06d} " + "x" * 90 for i in range(2000)]  # 200 KB: more than the 64 KB read
    (tmp_path / "node.log").write_text("\n".join(lines) + "\n")
    assert log_tail(home) == lines[-LOG_TAIL_LINES:]
    small = log_tail(home, lines=10_000, max_bytes=1000)  # the read starts inside a line: that line is left out
    assert small and small == lines[-len(small):] and len(small) == 1000 // 105  # 105 bytes a line
