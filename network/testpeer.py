"""A stand-alone echo peer for tests and benchmarks: `python -m network.testpeer --key K --listen MA ...`.

Runs one PeerNetwork. Every inbound message (peer, channel, data) is sent back to that peer on
"echo:" + channel unless the channel starts with "echo:" or is "sink" (counted only); requests on
"echo" are answered with their payload, on "sleep" after sleeping <payload as float> seconds.
Prints "READY <peer_id> <listen addrs>" on stdout once listening and "STATS <json>" when it gets
a message on channel "stats". With `--probe SECONDS` it also broadcasts a sequence number on "ping"
at that interval, prints "ECHO <peer> <seq>" for each echo that comes back, and prints
"PEERS <peer,...>" whenever the set of connected peers changes (used by the netns test).
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from .identity import load_or_create_identity, peer_id_of
from .peer_network import PeerNetwork


async def _main(args: argparse.Namespace) -> None:
    identity = load_or_create_identity(args.key)
    with open(args.members) as f:
        members = json.load(f)
    psk = bytes.fromhex(args.psk) if args.psk else None
    net = PeerNetwork(identity, members, psk, args.listen, lock_dir=args.lock_dir)

    async def echo(peer: str, data: bytes) -> bytes:
        return data

    async def sleep(peer: str, data: bytes) -> bytes:
        await trio.sleep(float(data))
        return b"slept"

    net.serve("echo", echo)
    net.serve("sleep", sleep)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        print("READY", peer_id_of(identity), " ".join(net.listen_addrs), flush=True)
        if args.probe:
            nursery.start_soon(_probe, net, args.probe)
        received = 0
        async for peer, channel, data in net.inbox:
            received += 1
            if channel == "echo:ping" and args.probe:
                print("ECHO", peer, int(data), flush=True)
            elif channel == "stats":
                print("STATS", json.dumps({"received": received, **net.stats}), flush=True)
            elif channel != "sink" and not channel.startswith("echo:"):
                if not net.send(peer, "echo:" + channel, data):
                    await net.send_wait(peer, "echo:" + channel, data)


async def _probe(net: PeerNetwork, interval: float) -> None:
    seq = 0
    last: list[str] | None = None
    while True:
        peers = sorted(net.connected_peers())
        if peers != last:
            print("PEERS", ",".join(peers), flush=True)
            last = peers
        seq += 1
        net.broadcast("ping", str(seq).encode())
        await trio.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m network.testpeer")
    ap.add_argument("--key", required=True, help="identity file (created if missing)")
    ap.add_argument("--members", required=True, help="JSON file {peer_id: [multiaddr, ...]}")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--psk", default="", help="64 hex chars")
    ap.add_argument("--lock-dir", default=None)
    ap.add_argument("--probe", type=float, default=0.0, help="broadcast a probe every SECONDS")
    args = ap.parse_args(argv)
    try:
        trio.run(_main, args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
