"""PeerNetwork throughput between 4 processes vs raw trio TCP in the same run (all-to-all, 300 B).

`python -m bench.network [--nodes 4] [--messages 10000] [--size 300]`

Each of N processes sends M messages to every other process; the figure is total messages
delivered per second, from a common start signal to the last process having received all of
its (N-1)*M messages. The baseline is the same pattern over plain trio TCP with the same 4+1-byte
framing and the same 256 KiB write coalescing, i.e. what Python + trio can move without libp2p's
Noise, yamux and PSK layers. Both run on the same machine, in the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import trio

from node.testnet import free_ports

_HDR = struct.Struct(">IB")


# ---------------------------------------------------------------------------- workers


async def _wait_go() -> float:
    line = await trio.to_thread.run_sync(sys.stdin.readline)
    assert line.strip() == "GO", line
    return time.time()


async def _p2p_worker(cfg: dict) -> None:
    from network import PeerNetwork
    from network.identity import identity_from_seed, peer_id_of

    i, n, m, size = cfg["index"], cfg["nodes"], cfg["messages"], cfg["size"]
    keys = [identity_from_seed(bytes([90 + k]) * 32) for k in range(n)]
    pids = [peer_id_of(k) for k in keys]
    members = {pids[k]: [f"/ip4/127.0.0.1/tcp/{p}"] for k, p in enumerate(cfg["ports"])}
    net = PeerNetwork(keys[i], members, bytes(32), members[pids[i]][0], lock_dir=cfg["lock_dir"])
    others = [p for k, p in enumerate(pids) if k != i]
    payload = b"x" * size
    expect = (n - 1) * m
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        with trio.fail_after(30):
            await net.wait_connected()
        print("READY", flush=True)
        await _wait_go()
        cpu0 = time.process_time()  # this process's CPU for the burst alone (start-up and connecting left out)
        done = trio.Event()
        end = 0.0

        async def receive() -> None:
            nonlocal end
            got = 0
            while got < expect:
                got += len(await net.receive_batch())
            end = time.time()
            done.set()

        nursery.start_soon(receive)
        for _ in range(m):
            for p in others:
                if not net.send(p, "tx", payload):
                    await net.send_wait(p, "tx", payload)
        await done.wait()
        print("DONE", json.dumps({"end": end, "cpu": time.process_time() - cpu0, "stats": dict(net.stats)}),
              flush=True)
        # stay up until told to exit: others may still be receiving from us
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()


async def _tcp_worker(cfg: dict) -> None:
    i, n, m, size = cfg["index"], cfg["nodes"], cfg["messages"], cfg["size"]
    expect = (n - 1) * m
    got = 0
    done = trio.Event()
    end = 0.0

    # like an application would: each message becomes a bytes object on a bounded channel
    inbox_send, inbox = trio.open_memory_channel[tuple[int, bytes]](10_000)

    async def reader(stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            pos = 0
            while len(buf) - pos >= 5:
                ln, _kind = _HDR.unpack_from(buf, pos)
                if len(buf) - pos - 4 < ln:
                    break
                item = (0, bytes(buf[pos + 5 : pos + 4 + ln]))
                try:
                    inbox_send.send_nowait(item)
                except trio.WouldBlock:
                    await inbox_send.send(item)
                pos += 4 + ln
            del buf[:pos]

    async def consume() -> None:  # drains in batches, like PeerNetwork.receive_batch
        nonlocal got, end
        while got < expect:
            await inbox.receive()
            got += 1
            while got < expect:
                try:
                    inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                got += 1
        end = time.time()
        done.set()

    async def writer(stream: trio.SocketStream) -> None:
        body = b"\x02tx" + b"x" * size
        frame = _HDR.pack(len(body) + 1, 1) + body
        per = max(1, (256 * 1024) // len(frame))
        left = m
        while left:
            k = min(per, left)
            await stream.send_all(frame * k)
            left -= k

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_tcp, reader, cfg["ports"][i], host="127.0.0.1"))
        outs = []
        for k, port in enumerate(cfg["ports"]):
            if k == i:
                continue
            with trio.fail_after(30):
                while True:
                    try:
                        outs.append(await trio.open_tcp_stream("127.0.0.1", port))
                        break
                    except OSError:
                        await trio.sleep(0.05)
        print("READY", flush=True)
        await _wait_go()
        nursery.start_soon(consume)
        async with trio.open_nursery() as senders:
            for s in outs:
                senders.start_soon(writer, s)
        await done.wait()
        print("DONE", json.dumps({"end": end}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- driver


def _run(kind: str, nodes: int, messages: int, size: int) -> dict:
    with tempfile.TemporaryDirectory() as lock_dir:
        ports = free_ports(nodes)
        procs = []
        env = dict(os.environ)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            for i in range(nodes):
                cfg = {"index": i, "nodes": nodes, "messages": messages, "size": size, "ports": ports,
                       "lock_dir": lock_dir}
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.network", "--worker", kind, json.dumps(cfg)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                ))
            for p in procs:
                line = p.stdout.readline()
                if not line.startswith("READY"):
                    raise RuntimeError(f"{kind} worker failed to start: {line!r}")
            start = time.time()
            for p in procs:
                p.stdin.write("GO\n")
                p.stdin.flush()
            reports = []
            for p in procs:
                line = p.stdout.readline()
                if not line.startswith("DONE"):
                    raise RuntimeError(f"{kind} worker failed: {line!r}")
                reports.append(json.loads(line[5:]))
            for p in procs:
                p.stdin.write("EXIT\n")
                p.stdin.flush()
            for p in procs:
                p.wait(timeout=10)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    elapsed = max(r["end"] for r in reports) - start
    total = nodes * (nodes - 1) * messages
    return {"elapsed": elapsed, "msgs_per_s": total / elapsed, "total": total,
            "cpu": sum(r.get("cpu", 0.0) for r in reports), "stats": reports[0].get("stats", {})}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.network")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--messages", type=int, default=10000, help="per sender per peer")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--worker", choices=["p2p", "tcp"], help=argparse.SUPPRESS)
    ap.add_argument("config", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        trio.run(_p2p_worker if args.worker == "p2p" else _tcp_worker, json.loads(args.config))
        return
    print(f"network: {args.nodes} processes all-to-all, {args.messages} x {args.size} B per sender per peer "
          f"(raw TCP: 5x that), {os.cpu_count()} CPUs", flush=True)
    # raw TCP moves the same burst in a fraction of a second: 5x the messages for a stable rate
    tcp = _run("tcp", args.nodes, args.messages * 5, args.size)
    print(f"  raw trio TCP      : {tcp['msgs_per_s']:>9,.0f} msg/s  ({tcp['total']} msgs in {tcp['elapsed']:.2f} s)",
          flush=True)
    p2p = _run("p2p", args.nodes, args.messages, args.size)
    print(f"  PeerNetwork       : {p2p['msgs_per_s']:>9,.0f} msg/s  ({p2p['total']} msgs in {p2p['elapsed']:.2f} s)",
          flush=True)
    s = p2p["stats"]
    if s.get("frames_out"):
        print(f"  node 0: {s.get('frames_out', 0)} frames in {s.get('writes', 0)} writes "
              f"({s.get('bytes_out', 0) / 1e6:.1f} MB), send() found a full queue {s.get('dropped_queue_full', 0)}x "
              f"(then send_wait), connects={s.get('connects', 0)} stream_errors={s.get('stream_errors', 0)} "
              f"inbox_full_waits={s.get('inbox_full_waits', 0)}")
    print(f"  ratio PeerNetwork / raw TCP: {p2p['msgs_per_s'] / tcp['msgs_per_s']:.2f}", flush=True)


if __name__ == "__main__":
    main()
