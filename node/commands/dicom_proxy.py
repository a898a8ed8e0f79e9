"""`radchain dicom-proxy`: the DICOM audit proxy between modalities/viewers and the PACS."""

from __future__ import annotations

import logging
import signal
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dicom-proxy", help="relay DICOM to the PACS and record every association and operation",
        description="Listens for DICOM associations, relays them to the PACS and records C-STORE, C-FIND, "
                    "C-GET and C-MOVE as events in HOME/spool, which delivers them to the node. "
                    "Defaults come from the [dicom] section of HOME/config.toml.")
    p.add_argument("--home", required=True, help="node home directory (config.toml, spool/)")
    p.add_argument("--listen", help="HOST:PORT to accept associations on ([dicom] proxy_listen)")
    p.add_argument("--pacs", help="the real PACS as AET@HOST:PORT ([dicom] pacs)")
    p.add_argument("--allow-ae", action="append", default=None, metavar="AET",
                   help="calling AE title to let through (repeatable; default [dicom] allowed_aets, or any)")
    p.add_argument("--no-deliver", action="store_true", help="only spool; another process delivers")
    p.add_argument("--no-resolve", action="store_true",
                   help="do not C-FIND the PACS for the patient of a C-MOVE that names only a study")
    p.set_defaults(func=run)


def run(args) -> int:
    import trio

    from node.dicom.delivery import Deliverer
    from node.dicom.proxy import DicomProxy, pynetdicom_locator, pynetdicom_resolver, run_proxy
    from node.dicom.settings import SettingsError, load_settings, parse_hostport, parse_pacs
    from node.dicom.spool import Spool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.home)
        listen = args.listen or settings.proxy_listen
        pacs = args.pacs or settings.pacs
        if not listen or not pacs:
            raise SettingsError("need --listen and --pacs (or [dicom] proxy_listen and pacs in config.toml)")
        listen_addr = parse_hostport(listen, "--listen")
        pacs_addr = parse_pacs(pacs)
    except SettingsError as exc:
        print(f"radchain dicom-proxy: {exc}", file=sys.stderr)
        return 2
    spool = Spool(settings.spool_dir)
    spool.sweep_tmp()
    deliverer = None
    if not args.no_deliver:
        if settings.rpc_url:
            deliverer = Deliverer(spool, settings.rpc_url, settings.rpc_token)
        else:
            logging.warning("no [rpc] listen in %s/config.toml: events stay in the spool", args.home)
    proxy = DicomProxy(
        spool, pacs=pacs_addr, listen=listen_addr, purpose=settings.purpose,
        default_issuer=settings.default_issuer,
        allowed_aets=args.allow_ae if args.allow_ae is not None else settings.allowed_aets,
        resolver=None if args.no_resolve else pynetdicom_resolver(pacs_addr),
        locator=pynetdicom_locator(pacs_addr))

    async def main():
        async with trio.open_nursery() as nursery:
            address = await nursery.start(run_proxy, proxy, deliverer)
            print(f"dicom-proxy listening on {address[0]}:{address[1]}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
