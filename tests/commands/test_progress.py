"""Progress bars on a terminal, silence in a pipe: `radchain verify-chain` on a real store, and the node's
catch-up bar (node.runtime.sync) driven the way catch_up drives it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "interop"))
from ledger_helpers import build_home  # noqa: E402
from pty_run import run_on_pty  # noqa: E402


def test_verify_chain_bar_on_a_terminal_only(tmp_path, consortium):
    home = build_home(tmp_path, consortium, blocks=7, per_block=3)
    argv = [sys.executable, "-m", "node.cli", "verify-chain", "--home", str(home)]
    code, screen = run_on_pty(argv)
    assert code == 0, screen
    assert "verify-chain: 100%|" in screen and "7/7 [" in screen, screen
    assert "verify-chain: OK, 7 blocks" in screen
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "verify-chain: OK, 7 blocks" in piped.stdout
    assert piped.stderr == "" and "%|" not in piped.stdout and "\r" not in piped.stdout


CATCH_UP = """
from node.runtime.sync import _Progress
p = _Progress(10, 60)
for h in range(12, 61, 2):
    p.show(h)
p.close()
print("caught up")
"""


def test_catch_up_bar_on_a_terminal_only():
    argv = [sys.executable, "-c", CATCH_UP]
    code, screen = run_on_pty(argv)
    assert code == 0, screen
    assert "syncing blocks: 100%|" in screen and "50/50 [" in screen, screen
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == "caught up\n" and piped.stderr == ""
