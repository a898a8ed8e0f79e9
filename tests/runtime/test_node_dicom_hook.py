"""`radchain start` runs the DICOM hook configured in [dicom] inside the node's own nursery."""

from __future__ import annotations

import socket
import time

import pytest

from node.testnet import free_base_port

pytestmark = pytest.mark.timeout(180)

AUDIT = (b'<AuditMessage><EventIdentification EventActionCode="R" EventDateTime="2026-11-27T10:00:00Z" '
         b'EventOutcomeIndicator="0"><EventID csd-code="110103" codeSystemName="DCM" originalText="x"/>'
         b'</EventIdentification><ActiveParticipant UserID="viewer-9" UserName="dr.who" UserIsRequestor="true"/>'
         b'<AuditSourceIdentification AuditSourceID="viewer-host"/>'
         b'<ParticipantObjectIdentification ParticipantObjectID="1.2.826.0.1.3680043.77.1" '
         b'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode '
         b'csd-code="110180" codeSystemName="DCM"/></ParticipantObjectIdentification>'
         b'<ParticipantObjectIdentification ParticipantObjectID="PAT-HOOK-1^^^HOSP-A" ParticipantObjectTypeCode="1" '
         b'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode code="2"/>'
         b'</ParticipantObjectIdentification></AuditMessage>')


def test_atna_message_to_a_node_with_a_dicom_section_is_committed_everywhere(testnet):
    net = testnet(4)
    atna_port = free_base_port(1)
    with open(net.nodes[0].home / "config.toml", "a") as fh:
        fh.write(f'\n[dicom]\natna_tcp = "127.0.0.1:{atna_port}"\nissuer = "HOSP-A"\npurpose = "TREAT"\n')
    net.start()
    net.wait_ready()

    message = b"<85>1 2026-11-27T10:00:01.000Z viewer-host VIEWER - IHE+RFC-3881 - \xef\xbb\xbf" + AUDIT
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", atna_port), timeout=5) as s:
                s.sendall(str(len(message)).encode() + b" " + message)
            break
        except OSError:
            assert time.monotonic() < deadline, "the node's ATNA listener never came up"
            time.sleep(0.2)

    def recorded(i: int) -> bool:
        txs = net.rpc(i, "audit_trail", {"type": "instances.accessed"})
        return len(txs["entries"]) == 1

    for i in range(4):
        net.wait_until(lambda i=i: recorded(i), 60, f"the ATNA event is committed on node {i}")
