"""Small messages one at a time: what the transport's per-message costs are, step by step, in the same run.

`python -m bench.trickle [--messages 4000] [--size 300] [--rounds 3]`

Two PeerNetworks in one process exchange a trickle: each 300 B message is sent once the previous one has
arrived (what a node's consensus votes and small gossip batches look like below the maximum load), so every
message is its own yamux DATA frame and its own Noise message. Three arms, alternated, best of the rounds:

1. py-libp2p 0.8.1 as it comes (the baseline): it answers most DATA frames it reads with a WINDOW_UPDATE
   frame, and Noise reads each message as a 2-byte length and then its body (two socket reads);
2. receive-window credit once per half window (network/patches.py, patch 3);
3. and the private-network layer reading ahead (network/pnet.py READ_AHEAD): this code.

Printed per message: yamux frames written and socket reads (both ends), and the process CPU (both ends,
so both the sending and the handling of a frame count).
"""

from __future__ import annotations

import argparse
import collections
import struct
import tempfile
import time

import trio
from libp2p.io.trio import TrioTCPStream
from libp2p.stream_muxer.yamux import yamux as _yamux

from network import patches, pnet

_HDR = _yamux.YAMUX_HEADER_FORMAT


async def _trickle(messages: int, size: int) -> dict:
    from network import PeerNetwork
    from network.identity import identity_from_seed, peer_id_of
    from node.testnet import free_ports

    frames: collections.Counter = collections.Counter()
    reads = [0]
    write_frame, tcp_read = _yamux.Yamux._write_frame, TrioTCPStream.read

    async def counting_write(self, data: bytes) -> None:
        frames[struct.unpack(_HDR, data[:_yamux.HEADER_SIZE])[1]] += 1
        await write_frame(self, data)

    async def counting_read(self, n=None):
        reads[0] += 1
        return await tcp_read(self, n)

    keys = [identity_from_seed(bytes([120 + k]) * 32) for k in range(2)]
    pids = [peer_id_of(k) for k in keys]
    members = {pid: [f"/ip4/127.0.0.1/tcp/{p}"] for pid, p in zip(pids, free_ports(2), strict=True)}
    payload = b"x" * size
    _yamux.Yamux._write_frame, TrioTCPStream.read = counting_write, counting_read
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
                reads[0] = 0
                cpu0 = time.process_time()
                with trio.fail_after(120):
                    for _ in range(messages):
                        if not a.send(b.peer_id, "tx", payload):
                            await a.send_wait(b.peer_id, "tx", payload)
                        await b.inbox.receive()
                cpu = time.process_time() - cpu0
                nursery.cancel_scope.cancel()
    finally:
        _yamux.Yamux._write_frame, TrioTCPStream.read = write_frame, tcp_read
    return {"cpu_us": cpu / messages * 1e6, "data": frames[_yamux.TYPE_DATA] / messages,
            "credit": frames[_yamux.TYPE_WINDOW_UPDATE] / messages, "reads": reads[0] / messages}


ARMS = {  # name: (yamux credit rule, pnet read-ahead bytes)
    "py-libp2p 0.8.1 as it comes (baseline)": (patches._ORIG_CREDIT, 0),
    "+ half-window credit (network/patches.py)": (patches._credit_at_half_window, 0),
    "+ pnet read-ahead (this code)": (patches._credit_at_half_window, pnet.READ_AHEAD),
}


def _measure(rule, read_ahead: int, messages: int, size: int) -> dict:
    saved = _yamux.YamuxStream._auto_tune_and_send_window_update, pnet.READ_AHEAD
    _yamux.YamuxStream._auto_tune_and_send_window_update, pnet.READ_AHEAD = rule, read_ahead
    try:
        return trio.run(_trickle, messages, size)
    finally:  # what was in effect before (the patch, unless apply_patches skipped it)
        _yamux.YamuxStream._auto_tune_and_send_window_update, pnet.READ_AHEAD = saved


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.trickle")
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    patches.apply_patches()
    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    for _ in range(args.rounds):
        for name, (rule, read_ahead) in ARMS.items():
            runs[name].append(_measure(rule, read_ahead, args.messages, args.size))
    best = {name: min(v, key=lambda r: r["cpu_us"]) for name, v in runs.items()}
    base = best[next(iter(ARMS))]
    print(f"trickle, 2 PeerNetworks in one process, {args.messages} x {args.size} B one at a time, best of "
          f"{args.rounds} alternated rounds (per message, both ends):", flush=True)
    for name, r in best.items():
        print(f"  {name:42s}: {r['data']:.2f} DATA + {r['credit']:.2f} WINDOW_UPDATE frames, {r['reads']:.2f} "
              f"socket reads, CPU {r['cpu_us']:.0f} us: ratio {r['cpu_us'] / base['cpu_us']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
