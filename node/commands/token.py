"""`radchain token add|revoke|list --home DIR`: the node's RPC tokens, without restarting it.

Tokens live hashed in HOME/tokens.json (node.rpc.auth); `add` prints the new token once and never stores it
in clear (keep it in the integrator's own secret store). A running node re-reads the file on its next
request, so an added token works, and a revoked one stops working, at once.

    radchain token add --home /var/lib/radchain --name pacs --roles submit,read
    radchain token add --home ... --name old-pacs --roles submit,read --token "$OLD"   # keep an existing value
    radchain token revoke --home /var/lib/radchain --name pacs
    radchain token list --home /var/lib/radchain
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("token", help="add, revoke or list this node's RPC tokens (no restart needed)")
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a token with roles (read, submit, admin); prints it once")
    add.add_argument("--home", required=True, type=Path)
    add.add_argument("--name", required=True, help="who holds it, e.g. pacs, auditor, dicom")
    add.add_argument("--roles", required=True, help="comma-separated: read, submit, admin (admin implies both)")
    add.add_argument("--token", help="use this value (at least 16 characters) instead of a new random one; "
                                     "to move a token from an old config.toml (env RADCHAIN_NEW_TOKEN works too)")
    add.set_defaults(func=_add)
    rev = sub.add_parser("revoke", help="revoke a token by name (takes effect on the next request)")
    rev.add_argument("--home", required=True, type=Path)
    rev.add_argument("--name", required=True)
    rev.set_defaults(func=_revoke)
    ls = sub.add_parser("list", help="list token names, roles and when they were added (never the tokens)")
    ls.add_argument("--home", required=True, type=Path)
    ls.set_defaults(func=_list)


def _store(args) -> Path:
    if not (args.home / "config.toml").exists():
        raise SystemExit(f"radchain token: {args.home} is not a node home (no config.toml)")
    return args.home / "tokens.json"


def _add(args) -> int:
    import os

    from node.rpc.auth import TokenError, add_token, parse_roles

    try:
        roles = parse_roles(args.roles)
        token = add_token(_store(args), args.name, roles, args.token or os.environ.get("RADCHAIN_NEW_TOKEN"))
    except TokenError as exc:
        print(f"radchain token add: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"token {args.name!r} ({', '.join(roles)}) added; it is shown only this once", file=sys.stderr)
    return 0


def _revoke(args) -> int:
    from node.rpc.auth import TokenError, revoke_token

    try:
        revoke_token(_store(args), args.name)
    except TokenError as exc:
        print(f"radchain token revoke: {exc}", file=sys.stderr)
        return 2
    print(f"token {args.name!r} revoked", file=sys.stderr)
    return 0


def _list(args) -> int:
    from node.rpc.auth import TokenError, read_store

    try:
        entries = read_store(_store(args))
    except TokenError as exc:
        print(f"radchain token list: {exc}", file=sys.stderr)
        return 2
    for name, entry in sorted(entries.items()):
        print(f"{name}\t{','.join(entry['roles'])}\t{entry.get('added', '?')}")
    return 0
