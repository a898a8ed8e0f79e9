"""The whole DICOM hook as one trio task, for a node runtime (or any supervisor) to own in its nursery.

    async with trio.open_nursery() as nursery:
        await nursery.start(node.dicom.service.run_dicom_hook, home)

Starts what HOME/config.toml `[dicom]` configures: the audit proxy (`proxy_listen` + `pacs`), the ATNA
listeners (`atna_tcp`, `atna_tls`, `atna_udp`), and one spool deliverer to this node's RPC. Cancelling the
scope stops them; events already acknowledged are in the spool and are delivered on the next start.
`task_status.started()` reports {"proxy": (host, port) | None, "atna": {kind: (host, port)}}.
"""

from __future__ import annotations

import trio

from node.dicom.settings import load_settings, parse_hostport, parse_pacs


async def run_dicom_hook(home, *, deliver: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
    from node.dicom.atna import AtnaReceiver, listeners_from, serve_all
    from node.dicom.delivery import Deliverer, deliver_in_background
    from node.dicom.proxy import DicomProxy, pynetdicom_locator, pynetdicom_resolver
    from node.dicom.spool import Spool

    settings = load_settings(home)
    listeners = listeners_from(settings)  # before anything starts: a bad ATNA setting stops the hook cleanly
    spool = Spool(settings.spool_dir)
    spool.sweep_tmp()
    started: dict = {"proxy": None, "atna": {}}
    async with trio.open_nursery() as nursery:
        if deliver and settings.rpc_url:
            nursery.start_soon(deliver_in_background, Deliverer(spool, settings.rpc_url, settings.rpc_token))
        if settings.proxy_listen and settings.pacs:
            pacs = parse_pacs(settings.pacs)
            proxy = DicomProxy(spool, pacs=pacs, listen=parse_hostport(settings.proxy_listen, "proxy_listen"),
                               purpose=settings.purpose, default_issuer=settings.default_issuer,
                               allowed_aets=settings.allowed_aets, resolver=pynetdicom_resolver(pacs),
                               locator=pynetdicom_locator(pacs))
            started["proxy"] = await nursery.start(proxy.serve)
        if listeners:
            receiver = AtnaReceiver(spool, purpose=settings.purpose, default_issuer=settings.default_issuer,
                                    allow=settings.atna_allow)
            started["atna"] = await serve_all(receiver, listeners, nursery)
        task_status.started(started)
