"""`radchain testnet --nodes N --out DIR [--run]`: write a local network's homes; optionally run it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("testnet", help="create (and with --run, run) a local N-node network")
    p.add_argument("--nodes", type=int, default=4, help="number of member nodes, at least 4 (default 4)")
    p.add_argument("--out", type=Path, default=Path("testnet"), help="directory for the node homes")
    p.add_argument("--base-port", type=int, default=26600,
                   help="node i listens on BASE+2i (p2p) and BASE+2i+1 (RPC); default 26600")
    p.add_argument("--hosts", help="comma-separated IPs, one per node (e.g. namespaces from deploy/netns); "
                                   "default: all on 127.0.0.1")
    p.add_argument("--oprf-dkg", action="store_true",
                   help="no dealer: the members generate the pseudonym key on chain (docs/PSEUDONYMS.md)")
    p.add_argument("--run", action="store_true",
                   help="run the nodes in the foreground (created first if absent); Ctrl-C stops all")
    p.set_defaults(func=run)


def run(args) -> int:
    from node import testnet

    manifest = args.out / "testnet.json"
    if manifest.exists():
        nodes = testnet.load(args.out)
        if not args.run:
            print(f"{manifest} exists already; remove {args.out} to create a new network", file=sys.stderr)
            return 1
        from node.runtime.settings import ConfigError, load_config

        for info in nodes:
            try:
                load_config(info.home)
            except ConfigError as exc:  # e.g. made by a version that kept tokens in clear
                print(f"{exc}\n(or remove {args.out} to create a new network)", file=sys.stderr)
                return 2
    else:
        hosts = args.hosts.split(",") if args.hosts else None
        if hosts and len(hosts) != args.nodes:
            print(f"--hosts lists {len(hosts)} addresses for {args.nodes} nodes", file=sys.stderr)
            return 2
        params = {"oprf_dkg_epoch": 1} if args.oprf_dkg else None
        nodes = testnet.generate(args.nodes, args.out, base_port=args.base_port, hosts=hosts, params=params)
        print(f"created a {len(nodes)}-node network in {args.out}/ ({manifest})")
    if not args.run:
        return 0
    return _run(nodes, args.out)


def _run(nodes, out: Path) -> int:
    import signal

    from node import testnet
    from node.ledger.intake import EXAMPLE_EVENT

    def _terminate(signum, frame):  # SIGTERM (e.g. from a supervisor) stops the nodes like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    procs = [testnet.start_node(info) for info in nodes]
    try:
        testnet.wait_ready(nodes, timeout=90, peers=len(nodes) - 1)
        print(f"\nRadChain testnet: {len(nodes)} nodes agreeing (logs: {out}/<node>/node.log)")
        for info in nodes:
            print(f"  {info.name:8s} RPC {info.rpc}")
        first = nodes[0]
        print("\nSubmit an event (identifiers stay on this node; only keyed pseudonyms go on chain):")
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "submit_event",
                           "params": {"event": EXAMPLE_EVENT}})
        print(f"  curl -s {first.rpc} -H 'Authorization: Bearer {first.token}' -d '{body}'")
        print(f"Tokens (operator: admin; reader: read only) are in {out}/testnet.json; "
              "`radchain token add/revoke/list --home HOME` manages them.")
        print(f"  .venv/bin/radchain submit --testnet {out} --node {first.name} "
              "--type instances.accessed --patient-id PAT-1 --issuer HOSP-A --study-uid 1.2.840.1 "
              "--actor dr.smith --purpose TREAT")
        _self_check(nodes)
        print("\nCtrl-C stops the network.")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [info.name for info, p in zip(nodes, procs, strict=True) if p.poll() is not None]
        print(f"node(s) {', '.join(dead)} stopped; see their node.log. Stopping the others.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except TimeoutError as exc:
        print(f"testnet did not come up: {exc}", file=sys.stderr)
        return 1
    finally:
        testnet.stop(procs)


def _self_check(nodes) -> None:
    """Submit the example event on the first node and show it committed on every node."""
    from node import testnet
    from node.ledger.intake import EXAMPLE_EVENT

    first = nodes[0]
    answer = testnet.rpc_call(first.rpc, "submit_event", {"event": EXAMPLE_EVENT}, first.token)
    tx = answer["result"]["tx"]
    deadline = time.monotonic() + 30
    seen = {}
    while len(seen) < len(nodes) and time.monotonic() < deadline:
        for info in nodes:
            if info.name not in seen:
                reply = testnet.rpc_call(info.rpc, "get_tx", {"hash": tx}, info.read_token or info.token)
                if reply.get("result", {}).get("status") == "committed":
                    seen[info.name] = reply["result"]["height"]
        time.sleep(0.2)
    heights = sorted(set(seen.values()))
    if len(seen) == len(nodes):
        print(f"\nself-check: example event tx {tx[:16]}… committed at height {heights[0]} on all "
              f"{len(nodes)} nodes")
    else:
        print(f"\nself-check: tx {tx[:16]}… committed on {sorted(seen)} only", file=sys.stderr)
