"""run_dicom_hook: the proxy, ATNA listener and deliverer from [dicom], as one trio task a runtime can own."""

from __future__ import annotations

import socket

import trio
from dicom_helpers import audit_xml, frame, free_port, run_tool, syslog, write_home


async def test_run_dicom_hook_from_config(rpc, orthanc, tmp_path):
    from node.dicom.service import run_dicom_hook

    pport, aport = free_port(), free_port()
    home = write_home(tmp_path / "svc", f"127.0.0.1:{rpc.port}", rpc.token, proxy_listen=f"127.0.0.1:{pport}",
                      pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", atna_tcp=f"127.0.0.1:{aport}")
    async with trio.open_nursery() as nursery:
        started = await nursery.start(run_dicom_hook, home)
        assert started["proxy"][1] == pport and started["atna"]["tcp"][1] == aport
        await trio.to_thread.run_sync(lambda: run_tool(["echoscu", "-aet", "SVC", "-aec", "ORTHANC", "127.0.0.1",
                                                        str(pport)]))

        def send():
            with socket.create_connection(("127.0.0.1", aport), timeout=10) as s:
                s.sendall(frame(syslog(audit_xml(study="1.2.99.500"))))
        await trio.to_thread.run_sync(send)
        with trio.fail_after(20):
            while not any(e.get("study_uid") == "1.2.99.500" for e in rpc.unique().values()):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_hook_atna_tls_from_config_is_mutual(rpc, tmp_path):
    """[dicom] atna_tls with atna_client_ca: a sender with a CA-signed certificate is delivered; without
    atna_client_ca the hook refuses to start (no anonymous TLS)."""
    import ssl

    import pytest
    from dicom_helpers import make_pki

    from node.dicom.service import run_dicom_hook
    from node.dicom.settings import SettingsError

    pki = make_pki(tmp_path / "pki")
    port = free_port()
    keys = {"atna_cert": str(pki["server"]), "atna_key": str(pki["server_key"])}
    bad = write_home(tmp_path / "no-ca", None, None, atna_tls=f"127.0.0.1:{port}", **keys)
    with pytest.raises(SettingsError, match="atna_client_ca"):
        await run_dicom_hook(bad)
    home = write_home(tmp_path / "svc", f"127.0.0.1:{rpc.port}", rpc.token, atna_tls=f"127.0.0.1:{port}",
                      atna_client_ca=str(pki["ca"]), **keys)
    async with trio.open_nursery() as nursery:
        started = await nursery.start(run_dicom_hook, home)
        assert started["atna"]["tls"][1] == port

        def send():
            ctx = ssl.create_default_context(cafile=str(pki["ca"]))
            ctx.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(frame(syslog(audit_xml(study="1.2.99.501", source="orthanc-a"))))
        await trio.to_thread.run_sync(send)
        with trio.fail_after(20):
            while not any(e.get("study_uid") == "1.2.99.501" for e in rpc.unique().values()):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
