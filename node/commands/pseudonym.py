"""`radchain pseudonym`: the consortium's threshold-OPRF pseudonym keys and their on-chain counts.

    radchain pseudonym stats --home H                       # who evaluated how many points for whom
    radchain pseudonym deal --members 4 --epoch 1 --out DIR # trusted dealer: one share file per member
    radchain pseudonym install --home H --share DIR/hosp-a.share --public DIR/epoch-1.public
    radchain pseudonym dkg --epoch 2 --home H              # dealer-free: a new key generated on chain

`deal` is the testnet/pilot path (docs/PSEUDONYMS.md "Key setup"): it draws a key, writes the epoch's public
parameters and one share file per member (member i = position i in genesis), and forgets the key. Hand each
member its own file only, then delete them. `dkg` is the dealer-free path: this member posts the first
`oprf.dealing` of kind dkg for a new key epoch and the current member set; every member's node deals its own
random sharing when it sees it, and the key (known to nobody) is in force once the chain has decided the
round (node.runtime.oprf_resharing; docs/PSEUDONYMS.md). A new testnet can start that way: `radchain testnet
--oprf-dkg`. Membership changes reshare the current key on chain by themselves.
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
    g = sub.add_parser("dkg", help="start dealer-free generation of a new key epoch on chain")
    g.add_argument("--epoch", type=int, required=True, help="the new key epoch (1..65535, not on chain yet)")
    add_target_args(g)
    g.set_defaults(func=dkg)


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
    chain = result.get("chain_keys", {})
    for e in chain.get("epochs", []):
        print(f"on chain: epoch {e['epoch']} ({e['how']}) in force after height {e['in_force_after']}: "
              f"t={e['t']} of {', '.join(e['members'])}, key id {e['key_id']}")
    for r in chain.get("rounds", []):
        state = f"decided at {r['decided_at']} from {', '.join(r['dealers'])}" if r["dealers"] else "open"
        print(f"round: epoch {r['epoch']} {r['kind']} for the members of height {r['epoch_start']}: {state}; "
              f"dealt {', '.join(r['dealt']) or '-'}; complaints {r['complaints'] or '-'}")
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


def dkg(args) -> int:
    from node.ledger import oprf_reshare as rs
    from node.ledger.genesis import Genesis
    from node.ledger.intake import make_tx
    from node.runtime.keys import load_member_key
    from node.runtime.oprf_resharing import save_contribution
    from node.runtime.settings import load_config

    if not args.home:
        print("radchain pseudonym dkg: --home (this member's keys sign the dealing)", file=sys.stderr)
        return 2
    if not 0 < args.epoch < 1 << 16:
        print("--epoch: 1..65535", file=sys.stderr)
        return 2
    cfg = load_config(args.home)
    client = client_from_args(args)
    known = {e["epoch"] for e in client.call("pseudonym_stats", {})["chain_keys"]["epochs"]}
    if args.epoch in known:
        print(f"key epoch {args.epoch} exists on chain already: choose a new one", file=sys.stderr)
        return 2
    v = client.call("validators", {})
    members = [(m["name"], bytes.fromhex(m["pubkey"])) for m in v["validators"]]
    names = [n for n, _ in members]
    if cfg.name not in names:
        print(f"{cfg.name} is not in the current member set", file=sys.stderr)
        return 2
    fields, contrib = rs.dkg_fields(names.index(cfg.name) + 1, args.epoch, [k for _, k in members], v["epoch"])
    save_contribution(cfg.home, (args.epoch, v["epoch"]), contrib)  # to answer complaints, as the node would
    fields.pop("type")
    raw = make_tx("oprf.dealing", load_member_key(cfg.member_key_path), chain_id=Genesis.load(cfg.genesis_path).chain_id,
                  member=cfg.name, **fields)
    answer = client.call("submit_tx", {"tx": raw.hex(), "mode": "commit", "timeout": 30})
    print(f"key epoch {args.epoch}: dealer-free generation started for the {len(names)} members of height "
          f"{v['epoch']} (tx {answer['hash'][:16]}..., {answer['status']}); every member deals when it sees it, "
          f"and new tokens use epoch {args.epoch} once the chain puts it in force (radchain pseudonym stats)")
    return 0
