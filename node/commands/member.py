"""`radchain member ...`: governance of the consortium's member set, by signed votes on chain.

    radchain member propose-add --name N --member-key K --p2p-key P --addr A   (vote to add a hospital)
    radchain member approve ID                                                  (vote for an open proposal)
    radchain member propose-remove N                                            (vote to remove a member)
    radchain member rotate-key [--p2p] [--addr A]                               (replace this member's keys)
    radchain member propose-param NAME VALUE                                    (vote a consortium parameter)
    radchain member rotate-psk                                                  (vote a fresh consortium PSK)
    radchain member psk-recover --url URL                                       (a node down through a rotation)
    radchain member status                                                      (member set, proposals)
    radchain member history --out FILE                                          (for verify-receipt --history)

Votes are member.added / member.removed txs signed with this hospital's member key (HOME/keys/member.key,
so --home or --testnet/--node is needed to vote). A proposal takes effect once 2f+1 of the current members
approved it, at the first epoch boundary after the approving block (node.ledger.epochs): `status` shows the
approvals so far and the height at which an approved set starts. A joining hospital's `radchain init
--join GENESIS` prints the exact propose-add command for the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from node.commands._target import add_target_args, client_from_args
from node.ledger.epochs import VOTABLE_PARAMS as VOTABLE


def register(subparsers) -> None:
    p = subparsers.add_parser("member", help="propose, approve and inspect member-set changes")
    sub = p.add_subparsers(dest="member_cmd", required=True)
    add = sub.add_parser("propose-add", help="vote to add a hospital (its init prints these values)")
    add.add_argument("--name", required=True, help="the joining member's name")
    add.add_argument("--member-key", required=True, help="its member (signing) public key, 64 hex digits")
    add.add_argument("--p2p-key", required=True, help="its libp2p peer ID (12D3KooW...)")
    add.add_argument("--addr", required=True, help="its p2p multiaddr, e.g. /ip4/10.1.0.9/tcp/26656")
    approve = sub.add_parser("approve", help="vote for an open proposal (its id from `member status`)")
    approve.add_argument("id", help="proposal id (hex, a unique prefix is enough)")
    approve.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                         help="how long to wait for the proposal to reach this node (default 10): it commits on "
                              "the proposer's node first, and ours may apply that block a moment later")
    remove = sub.add_parser("propose-remove", help="vote to remove a member")
    remove.add_argument("name", help="the member to remove")
    rotate = sub.add_parser("rotate-key", help="replace this member's signing key (and with --p2p its libp2p "
                                               "identity) from the next epoch boundary; no vote needed")
    rotate.add_argument("--p2p", action="store_true", help="also a new libp2p identity (the running node "
                                                           "switches to it at the switch height printed)")
    rotate.add_argument("--addr", help="a new p2p multiaddr for this member")
    param = sub.add_parser("propose-param", help="vote to set a consortium parameter (2f+1 needed)")
    param.add_argument("name", help="one of: " + ", ".join(sorted(VOTABLE)))
    param.add_argument("value", type=int)
    sub.add_parser("rotate-psk", help="propose a fresh consortium PSK, sealed to every member (2f+1 needed)")
    sub.add_parser("psk-recover", help="fetch the PSK rotations from a member's RPC (--url) and open this "
                                       "member's boxes into HOME/keys/psk.json (a node down through a rotation)")
    sub.add_parser("status", help="the current member set, approved later sets and open proposals")
    hist = sub.add_parser("history", help="save the member history (verify-receipt --history)")
    hist.add_argument("--out", type=Path, required=True)
    for q in (add, approve, remove, rotate, param, sub.choices["status"], hist, sub.choices["rotate-psk"],
              sub.choices["psk-recover"]):
        add_target_args(q)
        q.add_argument("--json", action="store_true", help="print the RPC answer as JSON")
        q.set_defaults(func=run)


def _home(args) -> Path:
    if args.home:
        return args.home
    if args.testnet:
        from node import testnet

        nodes = testnet.load(args.testnet)
        chosen = [n for n in nodes if n.name == args.node] if args.node else nodes[:1]
        if chosen:
            return chosen[0].home
    raise SystemExit("voting signs with this hospital's member key: say --home HOME (or --testnet DIR --node N)")


def _sign_and_submit(args, client, tx_type: str, **fields) -> int:
    from node.client import RpcCallError
    from node.ledger.genesis import Genesis
    from node.ledger.intake import make_tx
    from node.ledger.state import proposal_id, proposal_what
    from node.runtime.keys import load_member_key
    from node.runtime.settings import load_config

    home = _home(args)
    cfg = load_config(home)
    key = load_member_key(cfg.member_key_path)
    genesis = Genesis.load(cfg.genesis_path)
    chain_id = genesis.chain_id
    nxt = cfg.member_key_path.with_name(cfg.member_key_path.name + ".next")
    raw = make_tx(tx_type, key, chain_id=chain_id, member=cfg.name, **fields)
    try:
        answer = client.submit_tx(raw, mode="commit", timeout=30)
    except RpcCallError as exc:
        # our rotation is recorded but the epoch has not switched yet: txs are signed with the new key
        if not (exc.code == -32003 and "not authorised" in exc.message and nxt.exists()):
            raise
        raw = make_tx(tx_type, load_member_key(nxt), chain_id=chain_id, member=cfg.name, **fields)
        answer = client.submit_tx(raw, mode="commit", timeout=30)
    pid = proposal_id(proposal_what({"type": tx_type, **fields})).hex() if tx_type != "member.key_rotated" else ""
    ok = answer["status"] == "committed" and answer.get("outcome") == "applied"
    if args.json:
        print(json.dumps({"proposal": pid, **answer}))
        return 0 if ok else 1
    what = fields.get("subject") or fields.get("param") or cfg.name
    if tx_type == "network.psk_rotated":
        what = "commitment " + fields["psk_commit"].hex()[:16]
    print(f"{cfg.name} voted {tx_type} {what}: tx {answer['hash']} {answer['status']}"
          + (f" at height {answer['height']}" if "height" in answer else "") + (f"; proposal {pid}" if pid else ""))
    v = client.validators()
    if any(p["id"] == pid for p in v.get("proposals", [])):
        _print_status(v, only=pid)
    elif answer.get("outcome") == "applied" and "height" in answer:
        from node.ledger.epochs import switch_height

        start = switch_height(answer["height"], genesis.param("epoch_interval")) + 1
        print(f"proposal approved at height {answer['height']}: the new member set starts at height {start}")
    else:
        print(f"vote not counted ({answer.get('outcome', answer['status'])}): see `radchain member status`")
    return 0 if ok else 1


def _print_status(v: dict, only: str | None = None) -> None:
    if only is None:
        names = ", ".join(m["name"] for m in v["validators"])
        print(f"member set from height {v['epoch']}: n={len(v['validators'])} f={v['max_faulty']} "
              f"quorum={v['quorum']} ({names}); view {v['view']}")
        for e in v.get("pending", []):
            print(f"approved: from height {e['start']}: n={e['n']} f={e['f']} quorum={e['quorum']} "
                  f"({', '.join(m['name'] for m in e['members'])})")
    for p in v.get("proposals", []):
        if only is None or p["id"] == only:
            print(f"proposal {p['id']}: {p['type']} {p['subject']}: {len(p['approvals'])} of {p['needed']} "
                  f"approvals ({', '.join(p['approvals'])})")


def _rotate(args, client) -> int:
    """New keys go to keys/member.key.next (and keys/p2p.key.next); the node signs txs with the new key from
    the block that records the rotation and votes with it from the next epoch boundary. A later rotation
    first retires the previous one (member.key -> member.key.old, .next -> member.key)."""
    from network.identity import load_or_create_identity, peer_id_of
    from node.runtime.keys import create_member_key, load_member_key
    from node.runtime.settings import load_config

    cfg = load_config(_home(args))
    keys = cfg.member_key_path
    nxt, old = keys.with_name(keys.name + ".next"), keys.with_name(keys.name + ".old")
    registered = bytes.fromhex(next((m["pubkey"] for m in client.validators()["validators"]
                                     if m["name"] == cfg.name), "00"))
    if nxt.exists():
        if bytes(load_member_key(nxt).verify_key) != registered:
            print(f"radchain member: {nxt} exists and is not in use yet: a rotation is under way", file=sys.stderr)
            return 1
        keys.replace(old)
        nxt.replace(keys)
    fields = {"subject_key": bytes(create_member_key(nxt).verify_key)}
    if args.p2p:
        p2p_next = cfg.p2p_key_path.with_name(cfg.p2p_key_path.name + ".next")
        p2p_next.unlink(missing_ok=True)
        fields["peer_id"] = peer_id_of(load_or_create_identity(p2p_next))
    if args.addr:
        fields["addr"] = args.addr
    return _sign_and_submit(args, client, "member.key_rotated", **fields)


def _registry(v: dict) -> dict[str, bytes]:
    """Every member's current member key: the latest approved set (each registry change writes one)."""
    latest = v["pending"][-1]["members"] if v.get("pending") else v["validators"]
    return {m["name"]: bytes.fromhex(m["pubkey"]) for m in latest}


def _own_member_keys(cfg) -> list:
    from node.runtime.keys import load_member_key

    path = cfg.member_key_path
    out = []
    for p in (path, path.with_name(path.name + ".next"), path.with_name(path.name + ".old")):
        try:
            out.append(load_member_key(p))
        except (OSError, ValueError):
            pass
    return out


def _open_my_box(cfg, chain_id: str, commit: bytes, boxes: list) -> bytes:
    """Our PSK from a rotation's boxes (checked against its commitment); PskBoxError says why not."""
    from node.ledger.epochs import PskBoxError, open_psk_box

    mine = [bytes(k) for n, k, _ in boxes if n == cfg.name]
    keys = [k for k in _own_member_keys(cfg) if bytes(k.verify_key) in mine] or _own_member_keys(cfg)[:1]
    if not keys:
        raise PskBoxError(f"no member key in {cfg.member_key_path.parent}")
    return open_psk_box(chain_id, commit, boxes, cfg.name, keys[0])


def _hex_boxes(boxes) -> list:
    return [[n, bytes.fromhex(k), bytes.fromhex(b)] for n, k, b in boxes]


def _rotate_psk(args, client) -> int:
    """A fresh PSK, sealed to every member's current member key, and its commitment: our own vote."""
    import os

    from node.ledger.epochs import psk_commitment, seal_psk
    from node.ledger.genesis import Genesis
    from node.runtime.settings import load_config

    cfg = load_config(_home(args))
    chain_id = Genesis.load(cfg.genesis_path).chain_id
    psk = os.urandom(32)
    boxes = seal_psk(psk, _registry(client.validators()))
    commit = psk_commitment(chain_id, psk)
    del psk  # this process forgets it; every node (ours included) opens its own box once it is approved
    return _sign_and_submit(args, client, "network.psk_rotated", psk_commit=commit, psk_boxes=boxes)


def _recover_psk(args, client) -> int:
    """Open this member's box of every approved rotation (read from any member's RPC) into keys/psk.json."""
    from node.ledger.epochs import PskBoxError
    from node.ledger.genesis import Genesis
    from node.runtime.psk_keys import PskKeys
    from node.runtime.settings import load_config

    cfg = load_config(_home(args))
    chain_id = Genesis.load(cfg.genesis_path).chain_id
    store = PskKeys(cfg.member_key_path.parent / "psk.json")
    rotations = client.validators().get("psk_rotations", [])
    failed = 0
    for r in rotations:
        commit = bytes.fromhex(r["commit"])
        try:
            psk = _open_my_box(cfg, chain_id, commit, _hex_boxes(r["boxes"]))
        except PskBoxError as exc:
            failed += 1
            print(f"rotation from height {r['start']}: {exc}", file=sys.stderr)
            continue
        added = store.add(commit, psk, r["start"])
        print(f"rotation from height {r['start']} (commitment {r['commit'][:16]}...): "
              f"{'saved to ' + str(store.path) if added else 'already known'}")
    if not rotations:
        print("no PSK rotation on chain: the genesis PSK is current")
    else:
        print("start (or restart) the node: it dials with the newest PSK and catches up by block sync")
    return 1 if failed else 0


def _open_proposals(client, prefix: str, wait: float) -> list[dict]:
    """The open proposals whose id starts with prefix, polled for up to `wait` seconds while there are none: a
    colleague's proposal is committed on their node first and applied on ours a moment later, so approving
    right after hearing of it must not fail on that moment."""
    import time

    deadline = time.monotonic() + max(0.0, wait)
    said = False
    while True:
        matches = [p for p in client.validators().get("proposals", []) if p["id"].startswith(prefix)]
        if matches or time.monotonic() >= deadline:
            return matches
        if not said:
            print(f"radchain member: no open proposal {prefix} on this node yet; waiting up to {wait:g} s",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(0.2)


def run(args) -> int:
    from node.client import RpcCallError

    client = client_from_args(args)
    try:
        cmd = args.member_cmd
        if cmd == "status":
            v = client.validators()
            print(json.dumps(v, indent=2)) if args.json else _print_status(v)
            return 0
        if cmd == "history":
            doc = client.call("member_history")
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"wrote {args.out}: {len(doc['txs'])} membership txs through height {doc['through']}")
            return 0
        if cmd == "propose-add":
            try:
                key = bytes.fromhex(args.member_key)
            except ValueError:
                key = b""
            if len(key) != 32:
                print("radchain member: --member-key must be 64 hex digits", file=sys.stderr)
                return 2
            return _sign_and_submit(args, client, "member.added", subject=args.name, subject_key=key,
                                    peer_id=args.p2p_key, addr=args.addr)
        if cmd == "propose-remove":
            return _sign_and_submit(args, client, "member.removed", subject=args.name)
        if cmd == "propose-param":
            lo, hi = VOTABLE.get(args.name, (1, 0))
            if not lo <= args.value <= hi:
                print(f"radchain member: {args.name} must be one of {', '.join(sorted(VOTABLE))} with a value in "
                      f"its range ({lo}..{hi})" if hi else f"radchain member: no votable parameter {args.name!r}",
                      file=sys.stderr)
                return 2
            return _sign_and_submit(args, client, "params.changed", param=args.name, value=args.value)
        if cmd == "rotate-key":
            return _rotate(args, client)
        if cmd == "rotate-psk":
            return _rotate_psk(args, client)
        if cmd == "psk-recover":
            return _recover_psk(args, client)
        if cmd == "approve":
            matches = _open_proposals(client, args.id.lower(), args.wait)
            if len(matches) != 1:
                print(f"radchain member: {'no' if not matches else 'more than one'} open proposal {args.id}",
                      file=sys.stderr)
                return 1
            p = matches[0]
            if p["type"] == "network.psk_rotated":
                # approve only a PSK we can take: our box opens to the committed key (else we are shut out)
                from node.ledger.epochs import PskBoxError
                from node.ledger.genesis import Genesis
                from node.runtime.settings import load_config

                cfg = load_config(_home(args))
                commit = bytes.fromhex(p["psk_commit"])
                try:
                    _open_my_box(cfg, Genesis.load(cfg.genesis_path).chain_id, commit, _hex_boxes(p["psk_boxes"]))
                except PskBoxError as exc:
                    print(f"radchain member: refusing to approve PSK rotation {p['id'][:16]}: {exc}", file=sys.stderr)
                    return 1
                return _sign_and_submit(args, client, p["type"], psk_commit=commit)
            if p["type"] == "params.changed":
                return _sign_and_submit(args, client, p["type"], param=p["param"], value=p["value"])
            fields = {"subject": p["subject"]}
            if p["type"] == "member.added":
                fields["subject_key"] = bytes.fromhex(p["subject_key"])
                if "peer_id" in p:
                    fields["peer_id"], fields["addr"] = p["peer_id"], p["addr"]
            return _sign_and_submit(args, client, p["type"], **fields)
    except RpcCallError as exc:
        print(f"radchain member: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.member_cmd)  # pragma: no cover - argparse requires one of the above
