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
    p.add_argument("--tls", help="HOST:PORT for syslog over mutual TLS ([dicom] atna_tls)")
    p.add_argument("--tcp", help="HOST:PORT for plain syslog over TCP, --allow senders only ([dicom] atna_tcp)")
    p.add_argument("--udp", help="HOST:PORT for plain syslog over UDP, --allow senders only ([dicom] atna_udp)")
    p.add_argument("--allow", action="append", metavar="[SOURCE@]ADDR[/PREFIX]",
                   help="who may send over plain TCP/UDP (repeatable; [dicom] atna_allow, default loopback)")
    p.add_argument("--cert", help="TLS certificate chain, PEM ([dicom] atna_cert)")
    p.add_argument("--key", help="TLS private key, PEM ([dicom] atna_key)")
    p.add_argument("--client-ca", help="CA that signs sender certificates; required with --tls "
                                        "([dicom] atna_client_ca)")
    p.add_argument("--no-deliver", action="store_true", help="only spool; another process delivers")
    p.set_defaults(func=run)


def run(args) -> int:
    import trio

    from node.dicom.atna import AtnaReceiver, listeners_from, serve_all
    from node.dicom.delivery import Deliverer, deliver_in_background
    from node.dicom.settings import SettingsError, load_settings
    from node.dicom.spool import Spool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.home)
        if args.allow:
            settings.atna_allow = args.allow
        listeners = listeners_from(settings, tcp=args.tcp, tls=args.tls, udp=args.udp, cert=args.cert,
                                   key=args.key, client_ca=args.client_ca)
        if not listeners:
            raise SettingsError("nothing to listen on: give --tls, --tcp and/or --udp (or [dicom] atna_*)")
        receiver = AtnaReceiver(Spool(settings.spool_dir), purpose=settings.purpose,
                                default_issuer=settings.default_issuer, allow=settings.atna_allow)
    except (SettingsError, ValueError, OSError) as exc:
        print(f"radchain atna-receiver: {exc}", file=sys.stderr)
        return 2
    deliverer = None
    if not args.no_deliver and settings.rpc_url:
        deliverer = Deliverer(receiver.spool, settings.rpc_url, settings.rpc_token)

    async def main():
        async with trio.open_nursery() as nursery:
            if deliverer is not None:
                nursery.start_soon(deliver_in_background, deliverer)
            started = await serve_all(receiver, listeners, nursery)
            for kind, addr in started.items():
                print(f"atna-receiver {kind} listening on {addr[0]}:{addr[1]}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
