"""`radchain atna-receiver`: DICOM audit messages (ATNA, syslog) from existing systems become events."""

from __future__ import annotations

import logging
import signal
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "atna-receiver", help="receive DICOM audit messages over syslog (TCP, TLS, UDP) into the spool",
        description="An ATNA Audit Record Repository front: RFC 5424 syslog carrying PS3.15 A.5 audit "
                    "messages over TCP (RFC 6587 octet counting), TLS (RFC 5425) and UDP (RFC 5426). "
                    "Imaging events are spooled and delivered to the node. Defaults from [dicom] atna_*.")
    p.add_argument("--home", required=True, help="node home directory (config.toml, spool/)")
    p.add_argument("--tcp", help="HOST:PORT for syslog over TCP ([dicom] atna_tcp)")
    p.add_argument("--tls", help="HOST:PORT for syslog over TLS ([dicom] atna_tls)")
    p.add_argument("--udp", help="HOST:PORT for syslog over UDP ([dicom] atna_udp)")
    p.add_argument("--cert", help="TLS certificate chain, PEM ([dicom] atna_cert)")
    p.add_argument("--key", help="TLS private key, PEM ([dicom] atna_key)")
    p.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--no-deliver", action="store_true", help="only spool; another process delivers")
    p.set_defaults(func=run)


def run(args) -> int:
    import trio

    from node.dicom.atna import AtnaReceiver, server_ssl_context
    from node.dicom.delivery import Deliverer, deliver_in_background
    from node.dicom.settings import SettingsError, load_settings, parse_hostport
    from node.dicom.spool import Spool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.home)
        tcp = args.tcp or settings.atna_tcp
        tls = args.tls or settings.atna_tls
        udp = args.udp or settings.atna_udp
        if not (tcp or tls or udp):
            raise SettingsError("nothing to listen on: give --tcp, --tls and/or --udp (or [dicom] atna_*)")
        ctx = None
        if tls:
            cert, key = args.cert or settings.atna_cert, args.key or settings.atna_key
            if not cert or not key:
                raise SettingsError("--tls needs --cert and --key (or [dicom] atna_cert / atna_key)")
            home = settings.home
            ctx = server_ssl_context(str(home / cert), str(home / key),
                                     str(home / args.client_ca) if args.client_ca else None)
        addrs = {k: parse_hostport(v, f"--{k}") for k, v in (("tcp", tcp), ("tls", tls), ("udp", udp)) if v}
    except (SettingsError, OSError) as exc:
        print(f"radchain atna-receiver: {exc}", file=sys.stderr)
        return 2
    spool = Spool(settings.spool_dir)
    receiver = AtnaReceiver(spool, purpose=settings.purpose, default_issuer=settings.default_issuer)
    deliverer = None
    if not args.no_deliver and settings.rpc_url:
        deliverer = Deliverer(spool, settings.rpc_url, settings.rpc_token)

    async def main():
        async with trio.open_nursery() as nursery:
            if deliverer is not None:
                nursery.start_soon(deliver_in_background, deliverer)
            for kind, (host, port) in addrs.items():
                if kind == "udp":
                    addr = await nursery.start(lambda task_status, h=host, p=port:
                                               receiver.serve_udp(h, p, task_status=task_status))
                else:
                    addr = await nursery.start(lambda task_status, h=host, p=port, k=kind:
                                               receiver.serve_tcp(h, p, ssl_context=ctx if k == "tls" else None,
                                                                  task_status=task_status))
                print(f"atna-receiver {kind} listening on {addr[0]}:{addr[1]}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
