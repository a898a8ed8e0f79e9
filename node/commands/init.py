"""`radchain init`: prepare one hospital's node home for a multi-host consortium.

Each hospital runs `init`, sends the printed member entry (public data only) to the consortium's
coordinator, who assembles genesis.json with `radchain genesis` and returns it. The network PSK travels out
of band in a secrets file (`radchain secrets`). No pseudonym key does: each member receives only its own
share of the consortium's OPRF key (`radchain pseudonym deal` / `install`, docs/PSEUDONYMS.md "Key setup"),
and this hospital's local pseudonym key is generated here and never leaves the home.

Whatever the umask, the home and keys/ are 0700 and every file written here 0600. The operator's RPC token
(admin) is stored hashed in HOME/tokens.json and in clear in HOME/keys/operator.token, for local tools.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("init", help="create keys and config for one node of a multi-host consortium")
    p.add_argument("--home", required=True, type=Path)
    p.add_argument("--name", required=True, help="this member's name, e.g. the hospital's short name")
    p.add_argument("--p2p", required=True, help="p2p listen multiaddr, e.g. /ip4/10.1.0.5/tcp/26656")
    p.add_argument("--rpc", default="127.0.0.1:26657", help="RPC listen HOST:PORT (default 127.0.0.1:26657)")
    p.add_argument("--secrets", type=Path, help="consortium secrets JSON {psk} (hex)")
    p.add_argument("--join", type=Path, metavar="GENESIS",
                   help="join a running consortium: copy its genesis.json here and print what 2f+1 of its "
                        "members must approve (`radchain member propose-add ...`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from network.identity import load_or_create_identity, peer_id_of
    from node.privatefiles import make_private_dir, write_secret
    from node.runtime.keys import create_member_key
    from node.runtime.settings import write_config
    from node.runtime.tokenizer import ensure_local_secrets
    from node.testnet import add_operator_token

    # Anything created below (including by libraries) is private to this user, even under umask 000.
    os.umask(0o077)
    if (args.home / "config.toml").exists():
        print(f"radchain init: {args.home}/config.toml exists; refusing to overwrite keys", file=sys.stderr)
        return 1
    if args.secrets:
        secrets = json.loads(args.secrets.read_text())
        psk = bytes.fromhex(secrets["psk"])
        if "pseudonym_key" in secrets:
            print(f"{args.secrets}: ignoring pseudonym_key (the shared HMAC key is gone; destroy that file's "
                  "copies): members get OPRF key shares with `radchain pseudonym install`", file=sys.stderr)
    else:
        psk = os.urandom(32)
        print("no --secrets given: generated a new PSK (a consortium of one until it is replaced by the "
              "consortium's)", file=sys.stderr)
    make_private_dir(args.home / "keys")
    key = create_member_key(args.home / "keys" / "member.key")
    identity = load_or_create_identity(args.home / "keys" / "p2p.key")
    write_config(args.home, name=args.name, p2p_listen=args.p2p, rpc_listen=args.rpc, psk=psk)
    ensure_local_secrets(args.home)
    add_operator_token(args.home)
    entry = {"name": args.name, "pubkey": bytes(key.verify_key).hex(), "peer_id": peer_id_of(identity),
             "p2p": [args.p2p], "rpc": f"http://{args.rpc}", "clients": []}
    write_secret(args.home / "member.json", json.dumps(entry, indent=2) + "\n")  # public, but nobody else's to edit
    if args.join:
        from node.ledger.genesis import Genesis, GenesisError

        try:
            genesis = Genesis.load(args.join)
        except GenesisError as exc:
            print(f"radchain init: {exc}", file=sys.stderr)
            return 2
        if genesis.member(args.name) is not None:
            print(f"radchain init: {args.name!r} is already a founding member of {genesis.chain_id}", file=sys.stderr)
            return 2
        genesis.save(args.home / "genesis.json")
        print(f"To join {genesis.chain_id}, 2f+1 of its current members run (the first proposes, the others "
              f"approve the proposal id it prints, or run the same command):")
        print(f"  radchain member propose-add --name {args.name} --member-key {entry['pubkey']} "
              f"--p2p-key {entry['peer_id']} --addr {args.p2p} --home <their home>")
        print(f"Then start this node (radchain start --home {args.home}): it syncs the chain from genesis and "
              f"votes from the height at which the new member set takes effect.")
        return 0
    print(json.dumps(entry, indent=2))
    print(f"member entry written to {args.home}/member.json; operator token (admin) in "
          f"{args.home}/keys/operator.token; more tokens: radchain token add --home {args.home}", file=sys.stderr)
    return 0
