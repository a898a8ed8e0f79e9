"""ATNA out to rsyslog (Debian's, nobody here wrote it) over RFC 5425 TLS with mutual authentication:
events from the testnet arrive as RFC 5424 messages carrying PS3.15 A.5 XML that parses back to the
right EventIDs, tokens and members; --state resumes without resending; a forwarder without a client
certificate the repository trusts delivers nothing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from interop_helpers import radchain

sys.path.insert(0, str(Path(__file__).parents[1] / "dicom"))
from dicom_helpers import make_pki  # noqa: E402

from node.testnet import free_port

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("rsyslogd") is None,
                                 reason="needs Debian's rsyslog + rsyslog-gnutls (deploy/install-system-deps.sh test)")]


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    d = tmp_path_factory.mktemp("rsyslog")
    pki = make_pki(d / "pki")
    port = free_port()
    out = d / "audit.log"
    (d / "work").mkdir()
    conf = d / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{d / 'work'}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{pki['ca']}"
       DefaultNetstreamDriverCertFile="{pki['server']}"
       DefaultNetstreamDriverKeyFile="{pki['server_key']}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="line" type="string" string="%syslogfacility%|%syslogseverity%|%msgid%|%app-name%|%msg%\\n")
action(type="omfile" file="{out}" template="line")
''')
    check = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(d / "rsyslogd.pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "rsyslogd did not start listening"
            time.sleep(0.1)
    try:
        yield {"port": port, "out": out, "pki": pki, "dir": d}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _records(out: Path) -> list[tuple[str, str, str, ET.Element]]:
    if not out.exists():
        return []
    recs = []
    # complete lines only: rsyslog's omfile writes through a buffer, so a poll can catch a line half written
    for line in out.read_text(encoding="utf-8").split("\n")[:-1]:
        fac, sev, msgid, app, msg = line.split("|", 4)
        recs.append((fac, sev, msgid, ET.fromstring(msg.lstrip("\ufeff").strip())))
    return recs


def forward(net, rsyslog, *extra: str, check: bool = True):
    pki = rsyslog["pki"]
    return radchain("atna-forward", "--testnet", str(net.out), "--node", net.nodes[3].name,
                    "--to", f"127.0.0.1:{rsyslog['port']}", "--ca", str(pki["ca"]), *extra, check=check)


def test_events_reach_rsyslog_over_tls_as_dicom_audit_messages(net, rsyslog):
    pki = rsyslog["pki"]
    net.wait_until(lambda: len(net.rpc(3, "audit_trail", {"patient_id": "PRIOR-1", "issuer": "HOSP-A"})["entries"]) >= 6,
                   60, "PRIOR-1's imports committed")
    trail = net.rpc(3, "audit_trail", {"patient_id": "PRIOR-1", "issuer": "HOSP-A", "limit": 1000})["entries"]
    patient = trail[0]["patient"]
    state = rsyslog["dir"] / "atna.cursor"
    res = forward(net, rsyslog, "--cert", str(pki["client"]), "--key", str(pki["client_key"]),
                  "--type", "instances.stored", "--state", str(state))
    sent = int(res.stdout.split()[1])
    assert sent >= len(trail) >= 6

    def arrived():
        return len(_records(rsyslog["out"])) >= sent

    net.wait_until(arrived, 30, "rsyslog wrote every message")
    recs = _records(rsyslog["out"])
    assert len(recs) == sent
    assert all((fac, sev, msgid) == ("10", "5", "IHE+RFC-3881") for fac, sev, msgid, _ in recs)
    mine = [x for *_, x in recs if any(p.get("ParticipantObjectID") == patient
                                       for p in x.iter("ParticipantObjectIdentification"))]
    assert len(mine) == len(trail)
    for x in mine:
        assert x.find("EventIdentification/EventID").get("csd-code") == "110104"
        assert x.find("EventIdentification").get("EventActionCode") == "C"
        assert x.find("AuditSourceIdentification").get("AuditSourceID") in (net.nodes[0].name, net.nodes[1].name)
        assert "PRIOR-1" not in ET.tostring(x, encoding="unicode")  # only tokens travel
    # a second run with the state file sends nothing old
    again = forward(net, rsyslog, "--cert", str(pki["client"]), "--key", str(pki["client_key"]),
                    "--type", "instances.stored", "--state", str(state))
    assert again.stdout.startswith("sent 0 ")


def test_a_forwarder_the_repository_does_not_trust_delivers_nothing(net, rsyslog):
    pki = rsyslog["pki"]
    before = len(_records(rsyslog["out"]))
    forward(net, rsyslog, "--cert", str(pki["rogue"]), "--key", str(pki["rogue_key"]), check=False)
    forward(net, rsyslog, check=False)  # no client certificate at all
    # then a trusted forwarder: once its messages are in, the untrusted ones would have been too
    ok = forward(net, rsyslog, "--cert", str(pki["client"]), "--key", str(pki["client_key"]),
                 "--member", net.nodes[1].name, "--type", "instances.stored")
    sent = int(ok.stdout.split()[1])
    assert sent > 0
    net.wait_until(lambda: len(_records(rsyslog["out"])) >= before + sent, 30, "the trusted messages arrived")
    recs = _records(rsyslog["out"])[before:]
    assert len(recs) == sent
    assert {x.find("AuditSourceIdentification").get("AuditSourceID") for *_, x in recs} == {net.nodes[1].name}
