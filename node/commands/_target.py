"""Which node a client command talks to: --url/--token, --home (its config), or --testnet DIR --node NAME."""

from __future__ import annotations

import os
from pathlib import Path


def add_target_args(p) -> None:
    g = p.add_argument_group("node to talk to")
    g.add_argument("--url", help="node RPC URL, e.g. http://127.0.0.1:26601 (env RADCHAIN_URL)")
    g.add_argument("--token", help="integrator bearer token (env RADCHAIN_TOKEN)")
    g.add_argument("--home", type=Path, help="use the RPC address and operator token (keys/operator.token) of this node home")
    g.add_argument("--testnet", type=Path, help="a testnet directory (testnet.json)")
    g.add_argument("--node", help="with --testnet: the node's name (default: the first)")


def client_from_args(args):
    from node.client import RadChainClient

    url = args.url or os.environ.get("RADCHAIN_URL")
    token = args.token or os.environ.get("RADCHAIN_TOKEN")
    if args.home:
        from node.runtime.settings import load_config

        cfg = load_config(args.home)
        url = url or cfg.rpc_url
        from node.rpc.auth import local_token

        token = token or local_token(cfg.home)
    elif args.testnet:
        from node import testnet

        nodes = testnet.load(args.testnet)
        chosen = [n for n in nodes if n.name == args.node] if args.node else nodes[:1]
        if not chosen:
            raise SystemExit(f"no node {args.node!r} in {args.testnet}/testnet.json")
        url, token = url or chosen[0].rpc, token or chosen[0].token
    if not url:
        raise SystemExit("say which node: --url, --home or --testnet (or set RADCHAIN_URL)")
    return RadChainClient(url, token)
