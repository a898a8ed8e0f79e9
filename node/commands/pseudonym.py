"""`radchain pseudonym`: the consortium's threshold-OPRF pseudonym keys and their on-chain counts.

    radchain pseudonym stats --home H                       # who evaluated how many points for whom
    radchain pseudonym deal --members 4 --epoch 1 --out DIR # trusted dealer: one share file per member
    radchain pseudonym install --home H --share DIR/hosp-a.share --public DIR/epoch-1.public

`deal` is the testnet/pilot path (docs/PSEUDONYMS.md "Key setup"): it draws a key, writes the epoch's public
parameters and one share file per member (member i = position i in genesis), and forgets the key. Hand each
member its own file only, then delete them. The dealer-free path (each member contributes a random sharing
with Feldman commitments) is node.oprf.dkg_*; its message flow is not built yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from node.commands._target import add_target_args, client_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("pseudonym", help="pseudonym key shares and evaluation counts (threshold OPRF)")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("stats", help="evaluations each member answered/refused for whom (on chain) and live")
    add_target_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=stats)
    d = sub.add_parser("deal", help="trusted dealer: a new epoch's public parameters and one share per member")
    d.add_argument("--members", type=int, required=True, help="n, the number of members in genesis order")
    d.add_argument("--epoch", type=int, required=True, help="key epoch number (a new one for every new key)")
    d.add_argument("--threshold", type=int, help="t (default 2f+1 for n = 3f+1)")
    d.add_argument("--genesis", type=Path, help="genesis.json: name the share files after its members")
    d.add_argument("--out", type=Path, required=True)
    d.set_defaults(func=deal)
    i = sub.add_parser("install", help="install an epoch's public parameters and this member's share")
    i.add_argument("--home", type=Path, required=True)
    i.add_argument("--public", type=Path, required=True)
    i.add_argument("--share", type=Path, help="this member's share (omit to only look tokens up)")
    i.set_defaults(func=install)


def stats(args) -> int:
    result = client_from_args(args).call("pseudonym_stats", {})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'MEMBER':<12} {'FOR REQUESTER':<14} {'ANSWERED':>10} {'REFUSED':>9} {'RECORDS':>8}")
    for row in result["recorded"]:
        print(f"{row['member']:<12} {row['requester']:<14} {row['answered']:>10} {row['refused']:>9} "
              f"{row['records']:>8}")
    if not result["recorded"]:
        print("(no oprf.counts records on chain yet)")
    local = result["local"]
    print(f"\nthis node ({local['member']}): epoch {local['epoch']}, rate {local['rate']['points_per_s']:g}/s "
          f"burst {local['rate']['burst']:g} per requester; not yet recorded: {local['unrecorded'] or 'nothing'}")
    print(f"tokenizer: {local['tokenizer']}")
    for e in local["epochs"]:
        print(f"epoch {e['epoch']}: t={e['t']} of n={e['n']}, key id {e['key_id']}, share held: {e['share']}")
    return 0


def deal(args) -> int:
    from node.ledger import oprf
    from node.ledger.genesis import Genesis
    from node.privatefiles import make_private_dir, write_secret
    from node.runtime.tokenizer import oprf_threshold

    n = args.members
    t = args.threshold or oprf_threshold(n)
    names = [f"member-{i}" for i in range(1, n + 1)]
    if args.genesis:
        names = [m.name for m in Genesis.load(args.genesis).members]
        if len(names) != n:
            print(f"--members {n} but {args.genesis} lists {len(names)}", file=sys.stderr)
            return 2
    public, shares = oprf.deal(t, n, args.epoch)
    make_private_dir(args.out)
    write_secret(args.out / f"epoch-{args.epoch}.public", oprf.encode_epoch_public(public))
    for name, share in zip(names, shares, strict=True):
        write_secret(args.out / f"{name}.share", oprf.encode_key_share(share), exclusive=True)
    print(f"epoch {args.epoch}: t={t} of n={n}, key id {oprf.epoch_key_id(public)}; give each member its own "
          f"{args.out}/<name>.share and {args.out}/epoch-{args.epoch}.public, then delete the share files")
    return 0


def install(args) -> int:
    from node.ledger import oprf
    from node.runtime.tokenizer import ensure_local_secrets, write_epoch

    try:
        public = oprf.decode_epoch_public(args.public.read_bytes())
        share = oprf.decode_key_share(args.share.read_bytes(), public) if args.share else None
    except (OSError, oprf.OprfError) as exc:
        print(f"radchain pseudonym install: {exc}", file=sys.stderr)
        return 2
    write_epoch(args.home, public, share)
    ensure_local_secrets(args.home)
    print(f"installed epoch {public.epoch} (key id {oprf.epoch_key_id(public)}) in {args.home}; restart the node")
    return 0
