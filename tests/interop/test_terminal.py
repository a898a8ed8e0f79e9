"""Terminal habits on real nodes: `radchain dicom-import` draws a progress bar on a terminal and writes
nothing of it into a pipe; `radchain audit` prints a header row in table mode (terminal and pipe alike),
none with --json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from interop_helpers import TODAY, _ct_files, radchain
from pty_run import run_on_pty

pytestmark = pytest.mark.timeout(180)

# tqdm's bar: "dicom-import: 100%|█████| 4/4 [00:00<00:00, ...file/s]"
BAR = re.compile(r"dicom-import: +100%\|.*\| 4/4 \[")


def test_dicom_import_bar_on_a_terminal_only(net, tmp_path):
    home = str(net.nodes[3].home)
    _ct_files(tmp_path / "tty", 4, patient="TERM-1", issuer="HOSP-T", body_part="HEAD", day=TODAY)
    _ct_files(tmp_path / "pipe", 4, patient="TERM-2", issuer="HOSP-T", body_part="HEAD",
              day=TODAY - timedelta(days=1))
    code, screen = run_on_pty([sys.executable, "-m", "node.cli", "dicom-import", "--home", home,
                               str(tmp_path / "tty")])
    assert code == 0, screen
    assert BAR.search(screen), screen
    assert "spooled 4 instance(s) of 1 study(ies)" in screen
    piped = radchain("dicom-import", "--home", home, str(tmp_path / "pipe"))
    assert "spooled 4 instance(s) of 1 study(ies)" in piped.stdout
    for stream in (piped.stdout, piped.stderr):  # not a trace of the bar: no percentage, no \r redraws
        assert "%|" not in stream and "\r" not in stream and "it/s" not in stream and "file/s" not in stream
    # both imports reached the ledger (the bar did not change what is recorded)
    for patient in ("TERM-1", "TERM-2"):
        net.wait_until(lambda p=patient: len(json.loads(radchain(
            "prior-imaging", "--testnet", str(net.out), "--node", net.nodes[3].name, "--json",
            "--patient-id", p, "--issuer", "HOSP-T").stdout)["studies"]) == 1, 60, f"{patient} committed")


def test_audit_prints_a_header_row_in_table_mode(net):
    target = ["--testnet", str(net.out), "--node", net.nodes[2].name]
    filt = ["--patient", "PRIOR-1", "--issuer", "HOSP-A", "--type", "instances.stored"]

    def rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    net.wait_until(lambda: len(rows(radchain("audit", *target, *filt).stdout)) >= 1 + 6, 60,
                   "PRIOR-1's six stored instances listed")
    piped = rows(radchain("audit", *target, *filt).stdout)
    assert piped[0].split()[:5] == ["HEIGHT", "TIME", "(UTC)", "TYPE", "MEMBER"], piped[0]
    assert len(piped) == 1 + 6 and all(" instances.stored " in r for r in piped[1:])
    assert sum(r.split()[0] == "HEIGHT" for r in piped) == 1
    # the columns line up: TYPE starts where each row's type starts
    assert {r.index("instances.stored") for r in piped[1:]} == {piped[0].index("TYPE")}
    code, screen = run_on_pty([sys.executable, "-m", "node.cli", "audit", *target, *filt])
    assert code == 0, screen
    assert rows(screen)[0].startswith(piped[0].rstrip()[:40]) and len(rows(screen)) == 1 + 6
    as_json = rows(radchain("audit", *target, *filt, "--json").stdout)
    assert len(as_json) == 6 and all(json.loads(r)["type"] == "instances.stored" for r in as_json)


def test_benchmark_bar_on_a_terminal_only():
    argv = [sys.executable, "-m", "bench.interop", "--txs", "2000", "--queries", "5"]
    code, screen = run_on_pty(argv, timeout=120)
    assert code == 0, screen
    assert re.search(r"building ledger: +100%\|.*\| 2000/2000 \[", screen), screen
    assert re.search(r"queries: +100%\|.*\| 40/40 \[", screen), screen
    assert "goal: prior_imaging p99" in screen
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "goal: prior_imaging p99" in piped.stdout
    assert "%|" not in piped.stdout + piped.stderr and "\r" not in piped.stdout + piped.stderr
