"""node.tokenizer pieces that need no network: the token cache at rest, key files, the RPC errors a spool sees."""

from __future__ import annotations

import plyvel
import pytest

from node.dicom.delivery import Deliverer, RetryLater
from node.ledger import oprf
from node.rpc.submit import tokenize_error
from node.runtime.tokenizer import TokenCache, TokenizeError, ensure_local_secrets, load_epochs, write_epoch


def test_cache_is_sealed_keyed_and_refuses_moved_or_tampered_values(tmp_path):
    ensure_local_secrets(tmp_path)
    cache = TokenCache(tmp_path)
    x1, x2 = oprf.token_input(1, "patient", "1234567", "MPI"), oprf.token_input(1, "patient", "7654321", "MPI")
    t1, t2 = b"\x00\x01" + b"a" * 14, b"\x00\x01" + b"b" * 14
    cache.put_many([(x1, t1), (x2, t2)])
    assert cache.get(x1) == t1 and cache.get(x2) == t2 and cache.get(x1 + b"x") is None
    cache.close()
    db = plyvel.DB(str(tmp_path / "token-cache"))
    items = dict(db.iterator())
    raw = b"".join(k + v for k, v in items.items())
    for secret in (b"1234567", t1, t2):
        assert secret not in raw  # neither the identifier nor the token at rest
    (k1, v1), (k2, v2) = sorted(items.items())
    db.put(k1, v2)  # a sealed value moved to another identifier's slot
    db.put(k2, v2[:-1] + bytes([v2[-1] ^ 1]))  # a tampered value
    db.close()
    cache = TokenCache(tmp_path)
    assert cache.get(x1) is None and cache.get(x2) is None
    cache.close()
    # another home's cache key opens nothing
    (tmp_path / "keys" / "token-cache.key").write_text("00" * 32)
    other = TokenCache(tmp_path)
    assert other.get(x1) is None
    other.close()


def test_epoch_files_hold_one_share_and_refuse_a_wrong_one(tmp_path):
    public, shares = oprf.deal(3, 4, epoch=7)
    write_epoch(tmp_path, public, shares[1])
    keys = load_epochs(tmp_path)
    assert keys.current == 7 and keys.shares[7].index == 2 and keys.publics[7] == public
    assert oct((tmp_path / "keys" / "oprf" / "epoch-7.share").stat().st_mode & 0o777) == "0o600"
    other_public, other_shares = oprf.deal(3, 4, epoch=7)
    (tmp_path / "keys" / "oprf" / "epoch-7.share").write_bytes(oprf.encode_key_share(other_shares[1]))
    with pytest.raises(ValueError, match="epoch-7.public"):
        load_epochs(tmp_path)


@pytest.mark.parametrize("exc", [TokenizeError("unavailable", "only 1 of t=3 valid partial evaluations"),
                                 TokenizeError("rate_limited", "refused by rate limit", 0.4),
                                 TokenizeError("rate_limited", "refused by rate limit", None)])
def test_pseudonym_refusals_are_retried_by_the_dicom_spool_not_dead_lettered(exc):
    err = tokenize_error(exc)
    assert err.data["reason"].startswith("pseudonym_") and err.data["retry_after"] > 0
    verdict = Deliverer._classify({"jsonrpc": "2.0", "id": 1, "error": err.to_json()}, 200)
    assert isinstance(verdict, RetryLater), verdict


# ------------------------------------------------------------------ the submit path's token work (issue 17)

import hashlib  # noqa: E402

from node.ledger.intake import EXAMPLE_EVENT, EventError, event_to_tx_fields  # noqa: E402
from node.ledger.pseudonym import normalize  # noqa: E402
from node.runtime.tokenizer import Tokenizer, _Resolved, event_fields, prefetch  # noqa: E402

KW = {"chain_id": "c", "member": "hosp-a", "client": b"k" * 32}
EVENTS = [
    {**EXAMPLE_EVENT, "event_id": "e1", "time": 1_800_000_000_000},
    {**EXAMPLE_EVENT, "event_id": "e2", "time": 1_800_000_000_001, "series_uids": ["1.2.3", "1.2.4"],
     "sop_instance_uids": ["1.2.3.1"], "actor_ae": "CT1", "peer_ae": "PACS", "modality": "CT"},
    {"type": "query", "patient_id": " PAT-9 ", "issuer": "HOSP-A", "actor": "dr.who", "purpose": "TREAT",
     "event_id": "e3", "time": 1_800_000_000_002},
    {"type": "instances.stored", "patient_id": "PAT-1", "issuer": "HOSP-A", "study_uid": "1.2.840.1\x00",
     "actor": "MODALITY1", "actor_ae": "MODALITY1", "purpose": "TREAT", "event_id": "e4", "time": 1_800_000_000_003},
    {"type": "consent.granted", "patient_id": "PAT-1", "issuer": "HOSP-A", "grantee": "dr.jones",
     "scope": "ALL", "purpose": "TREAT", "actor": "dr.smith", "event_id": "e5", "time": 1_800_000_000_004},
]


def _consortium(event) -> list:
    items = [("patient", normalize("patient", event["patient_id"], event["issuer"]))]
    if "study_uid" in event:
        items.append(("study", normalize("study", event["study_uid"])))
    if "grantee" in event:
        items.append(("grantee", normalize("grantee", event["grantee"])))
    return items


def _tokenizer(home, epochs=(1,)) -> Tokenizer:
    """A tokenizer that is not running (no network): only what its caches hold can be answered."""
    ensure_local_secrets(home)
    for epoch in epochs:
        public, shares = oprf.deal(3, 4, epoch=epoch)
        write_epoch(home, public, shares[0])
    return Tokenizer(home, None, ["p0", "p1", "p2", "p3"], 0)


def _at_rest(tok: Tokenizer, items, epoch: int = 1) -> dict:
    """Tokens for `items` into the cache at rest (as an earlier OPRF round would have put them)."""
    tokens = {item: hashlib.sha256(oprf.token_input(epoch, item[0], *item[1])).digest()[:16] for item in items}
    tok.cache.put_many([(oprf.token_input(epoch, k, *parts), t) for (k, parts), t in tokens.items()])
    return tokens


async def test_repeated_identifiers_are_answered_from_memory_not_the_cache_at_rest(tmp_path):
    tok = _tokenizer(tmp_path)
    items = [item for e in EVENTS for item in _consortium(e)]
    known = _at_rest(tok, items)
    at_rest = tok.cache.get
    asked: list[bytes] = []
    tok.cache.get = lambda x: asked.append(x) or at_rest(x)  # count the reads of the cache at rest
    first = await tok.tokens(items)
    assert first == [known[i] for i in items]
    assert len(asked) == len(set(items)) and tok.cache.misses == 0
    hits = tok.cache.hits
    assert await tok.tokens(items) == first  # from memory: the cache at rest is not read again
    assert len(asked) == len(set(items))
    # pseudonym_stats' cache_hits counts them (answered without an evaluation), memory_hits says where
    assert tok.cache.hits == hits + len(items) and tok.stats["memory_hits"] == len(items)
    # bounded, oldest out: still right, the evicted ones come from the cache at rest again
    tok._memo.clear()
    tok.memo_size = 2
    assert await tok.tokens(items) == first and len(tok._memo) == 2
    tok.memo_size = 0  # off (the benchmark's baseline)
    tok._memo.clear()
    assert await tok.tokens(items) == first and not tok._memo
    tok.close()


async def test_memory_keeps_epochs_apart(tmp_path):
    tok = _tokenizer(tmp_path, epochs=(1, 2))
    items = _consortium(EVENTS[0])
    one, two = _at_rest(tok, items, 1), _at_rest(tok, items, 2)
    assert one != two
    for _ in range(2):  # cold, then from memory
        assert await tok.tokens(items, 1) == [one[i] for i in items]
        assert await tok.tokens(items, 2) == [two[i] for i in items]
        assert await tok.tokens(items) == [two[i] for i in items]  # the current epoch is the newest
    tok.close()


@pytest.mark.parametrize("event", EVENTS, ids=[e["type"] + "-" + e["event_id"] for e in EVENTS])
async def test_one_pass_gives_the_fields_of_the_two_pass_reading(tmp_path, event):
    """event_fields reads the event once now; its fields (so the tx bytes and hash) are those the earlier
    two passes gave: pass 1 listing the identifiers, pass 2 (_Resolved) with their tokens."""
    tok = _tokenizer(tmp_path)
    known = _at_rest(tok, _consortium(event))
    fields = await event_fields(event, tok, **KW)
    assert fields == event_to_tx_fields(event, _Resolved(tok.local, known), **KW)
    assert all(type(v) is not object and not hasattr(v, "item") for v in fields.values())
    assert fields["patient"] == known[_consortium(event)[0]]
    tok.close()


async def test_a_bad_event_is_refused_before_any_token_request_and_unknown_identifiers_need_the_consortium(tmp_path):
    tok = _tokenizer(tmp_path)  # not running: any request would fail with TokenizeError("unavailable")
    with pytest.raises(EventError, match="purpose"):
        await event_fields({**EVENTS[0], "purpose": "FUN"}, tok, **KW)
    with pytest.raises(EventError, match="patient_id"):
        await event_fields({**EVENTS[0], "patient_id": ""}, tok, **KW)
    with pytest.raises(TokenizeError) as info:
        await event_fields(EVENTS[0], tok, **KW)
    assert info.value.code == "unavailable"
    tok.close()


async def test_prefetch_returns_at_once_only_when_every_token_is_in_memory(tmp_path):
    tok = _tokenizer(tmp_path)
    _at_rest(tok, _consortium(EVENTS[0]))
    await prefetch(EVENTS[0], tok, **KW)  # from the cache at rest into memory
    await prefetch(EVENTS[0], tok, **KW)  # now the shortcut
    assert tok.memoized(_consortium(EVENTS[0]))
    # a new study: the full pass and a request (which fails: the tokenizer is not running)
    with pytest.raises(TokenizeError):
        await prefetch({**EVENTS[0], "study_uid": "9.9.9"}, tok, **KW)
    # malformed identifiers never take the shortcut: the full pass reports them
    for bad in ({**EVENTS[0], "patient_id": 7}, {**EVENTS[0], "study_uid": ""}, ["not", "an", "event"]):
        with pytest.raises(EventError):
            await prefetch(bad, tok, **KW)
    # the rest of the event is submit_event's to judge (prepare_event ignores prefetch's errors anyway)
    await prefetch({**EVENTS[0], "purpose": "FUN"}, tok, **KW)
    with pytest.raises(EventError, match="purpose"):
        await event_fields({**EVENTS[0], "purpose": "FUN"}, tok, **KW)
    tok.close()
