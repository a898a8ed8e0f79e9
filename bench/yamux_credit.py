"""Yamux receive-window credit: py-libp2p 0.8.1's rule against network/patches.py's, in the same run.

`python -m bench.yamux_credit [--messages 4000] [--size 300] [--rounds 3]`

Two PeerNetworks in one process exchange a trickle: each 300 B message is sent once the previous one
has arrived (what a node's consensus votes and small gossip batches look like when the load is not a
burst), so every message is its own yamux DATA frame. The library's rule answers most of those frames
with a WINDOW_UPDATE frame; the patch credits once per half window. Printed per message: yamux frames
written (both ends), and the process CPU (both ends, so both the sending and the handling of a credit
frame count), best of the alternated rounds.
"""

from __future__ import annotations

import argparse
import collections
import struct
import tempfile
import time

import trio
from libp2p.stream_muxer.yamux import yamux as _yamux

from network import patches

_HDR = _yamux.YAMUX_HEADER_FORMAT


async def _trickle(messages: int, size: int) -> dict:
    from network import PeerNetwork
    from network.identity import identity_from_seed, peer_id_of
    from node.testnet import free_ports

    frames: collections.Counter = collections.Counter()
    write_frame = _yamux.Yamux._write_frame

    async def counting(self, data: bytes) -> None:
        frames[struct.unpack(_HDR, data[:_yamux.HEADER_SIZE])[1]] += 1
        await write_frame(self, data)

    keys = [identity_from_seed(bytes([120 + k]) * 32) for k in range(2)]
    pids = [peer_id_of(k) for k in keys]
    members = {pid: [f"/ip4/127.0.0.1/tcp/{p}"] for pid, p in zip(pids, free_ports(2), strict=True)}
    payload = b"x" * size
    _yamux.Yamux._write_frame = counting
    try:
        with tempfile.TemporaryDirectory() as lock_dir:
            a, b = (PeerNetwork(keys[i], members, bytes(32), members[pids[i]][0], lock_dir=lock_dir)
                    for i in range(2))
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run)
                await nursery.start(b.run)
                with trio.fail_after(30):
                    await a.wait_connected([b.peer_id])
                    await b.wait_connected([a.peer_id])
                frames.clear()
                cpu0 = time.process_time()
                with trio.fail_after(120):
                    for _ in range(messages):
                        if not a.send(b.peer_id, "tx", payload):
                            await a.send_wait(b.peer_id, "tx", payload)
                        await b.inbox.receive()
                cpu = time.process_time() - cpu0
                nursery.cancel_scope.cancel()
    finally:
        _yamux.Yamux._write_frame = write_frame
    return {"cpu_us": cpu / messages * 1e6, "data": frames[_yamux.TYPE_DATA] / messages,
            "credit": frames[_yamux.TYPE_WINDOW_UPDATE] / messages}


def _measure(rule, messages: int, size: int) -> dict:
    _yamux.YamuxStream._auto_tune_and_send_window_update = rule
    try:
        return trio.run(_trickle, messages, size)
    finally:
        _yamux.YamuxStream._auto_tune_and_send_window_update = patches._credit_at_half_window


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.yamux_credit")
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    patches.apply_patches()
    runs: dict[str, list[dict]] = {"library": [], "patch": []}
    for _ in range(args.rounds):
        runs["library"].append(_measure(patches._ORIG_CREDIT, args.messages, args.size))
        runs["patch"].append(_measure(patches._credit_at_half_window, args.messages, args.size))
    best = {k: min(v, key=lambda r: r["cpu_us"]) for k, v in runs.items()}
    lib, new = best["library"], best["patch"]
    print(f"yamux credit, 2 PeerNetworks in one process, {args.messages} x {args.size} B one at a time, best of "
          f"{args.rounds} alternated rounds:", flush=True)
    for name, r in (("py-libp2p 0.8.1's rule (baseline)", lib), ("half-window credit (network/patches.py)", new)):
        print(f"  {name:40s}: {r['data']:.2f} DATA + {r['credit']:.2f} WINDOW_UPDATE frames per message, "
              f"CPU {r['cpu_us']:.0f} us per message (both ends)", flush=True)
    print(f"  ratio: frames {(new['data'] + new['credit']) / (lib['data'] + lib['credit']):.2f}x, "
          f"CPU {new['cpu_us'] / lib['cpu_us']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
