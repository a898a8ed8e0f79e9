"""``pseudonym_stats``: how many pseudonym evaluations each member answered and refused for whom.

Two sources, both in the answer:

- ``recorded``: the sum of every ``oprf.counts`` tx on chain (each member records, every
  ``[oprf] stats_interval_s``, the points it evaluated and refused per requesting member since its previous
  record). This is what every member sees of everyone, and what cannot be hidden after the fact: a
  dictionary attack through one member's node shows up as a requester whose answered+refused counts run
  far above its hospital's volume.
- ``local``: this node's own live figures: points it answered/refused per requester not yet recorded, its
  tokenizer's batches and cache hits, the key epochs it holds and their public fingerprints, its rate.
"""

from __future__ import annotations

import trio

from node.ledger import oprf
from node.rpc.protocol import Caller, check_known
from node.rpc.render import stored_tx

MAX_RECORDS = 200_000  # oprf.counts txs summed per call (one per member per interval: years of records)
_limiter = trio.CapacityLimiter(1)


def recorded_counts(store, max_records: int = MAX_RECORDS) -> dict:
    """Sum the chain's oprf.counts txs: {(answering member, requester): [answered, refused, records, last ts]}."""
    totals: dict[tuple[str, str], list[int]] = {}
    cursor = None
    seen = 0
    while seen < max_records:
        entries, cursor = store.query("type", "oprf.counts", None, None, cursor, 1000)
        for e in entries:
            seen += 1
            rec = store.get_tx(e.tx_hash)
            if rec is None:
                continue
            fields, _sig = stored_tx(rec[2])
            for requester, answered, refused in fields["oprf_counts"]:
                t = totals.setdefault((fields["member"], requester), [0, 0, 0, 0])
                t[0] += answered
                t[1] += refused
                t[2] += 1
                t[3] = max(t[3], fields["ts"])
        if cursor is None:
            break
    return {"rows": [{"member": m, "requester": r, "answered": a, "refused": f, "records": n, "last_ts": ts}
                     for (m, r), (a, f, n, ts) in sorted(totals.items())],
            "complete": cursor is None}


async def pseudonym_stats(node, params: dict, caller: Caller) -> dict:
    check_known(params, set())
    recorded = await trio.to_thread.run_sync(recorded_counts, node.store, limiter=_limiter)
    names = node.member_name_of_peer
    svc, tok = node.oprf_service, node.tokenizer
    unrecorded = node.unrecorded_oprf_counts()
    local = {
        "member": node.cfg.name,
        "answered": {names(p): n for p, n in sorted(svc.answered.items())},
        "refused": {names(p): n for p, n in sorted(svc.refused.items())},
        "unrecorded": {m: {"answered": a, "refused": r} for m, a, r in unrecorded},
        "refusals": dict(svc.stats),
        "rate": {"points_per_s": node.cfg.oprf.rate, "burst": node.cfg.oprf.burst},
        "tokenizer": {**tok.stats, "cache_hits": tok.cache.hits, "cache_misses": tok.cache.misses},
        "bad_answers": {names(p): n for p, n in sorted(tok.bad_answers.items())},
        "rate_limited_by": {names(p): n for p, n in sorted(tok.rate_limited_by.items())},
        "epoch": tok.epoch,
        "epochs": [{"epoch": e, "t": tok.keys.publics[e].t, "n": tok.keys.publics[e].n,
                    "key_id": oprf.epoch_key_id(tok.keys.publics[e]), "share": e in tok.keys.shares}
                   for e in sorted(tok.keys.publics)],
    }
    return {"recorded": recorded["rows"], "complete": recorded["complete"], "local": local,
            "chain_keys": chain_keys(node.resharer.view)}


def chain_keys(view) -> dict:
    """The key epochs' public parameters as the chain records them (attested by a quorum, or derived from a
    decided resharing/DKG round of `oprf.dealing` txs), and every round: who dealt, who complained, who was
    justified, which dealers the outcome uses (node.ledger.oprf_reshare)."""
    epochs = []
    for e, records in sorted(view.history.items()):
        for r in records:
            epochs.append({"epoch": e, "how": r.how, "epoch_start": r.epoch_start, "in_force_after": r.height,
                           "members": list(r.names), "t": r.public.t, "n": r.public.n,
                           "key_id": oprf.epoch_key_id(r.public),
                           "public_shares": [p.hex() for p in r.public.public_shares]})
    rounds = []
    for (e, start), rnd in sorted(view.rounds.items()):
        rounds.append({"epoch": e, "epoch_start": start, "kind": rnd.kind, "members": list(rnd.new_names),
                       "dealt": [d.dealer for d in rnd.dealings],
                       "complaints": sorted([d, c] for d, c in rnd.complaints),
                       "justified": sorted([d, c] for d, c in rnd.justified),
                       "acks": {d: sorted(a) for d, a in sorted(rnd.acks.items())},
                       "dealers": list(rnd.outcome.dealers) if rnd.outcome else None,
                       "decided_at": rnd.outcome.decided_at if rnd.outcome else None,
                       "abandoned": rnd.abandoned, "ignored": len(rnd.ignored)})
    return {"epochs": epochs, "rounds": rounds, "ignored": len(view.ignored)}
