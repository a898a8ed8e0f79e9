"""The node's tokenizer at the PHI boundary: consortium identifiers by the threshold OPRF, the rest locally.

Kinds (node.pseudonym.CONSORTIUM_KINDS / LOCAL_KINDS; why: docs/PSEUDONYMS.md):
  * patient, study, grantee: the consortium OPRF (node.oprf, node.oprf_service), t = 2f+1 of n members,
    so the same patient gives the same token at every hospital and no member (nor anyone holding one
    member's home) can compute a token alone;
  * series, instance, user, event: HMAC under this hospital's own key (HOME/keys/local-pseudonym.key), so
    tokens of identifiers only this hospital needs to find again never leave its control.

Home layout (all secret files 0600 through node.keys.write_secret):
  HOME/keys/oprf/epoch-<N>.public   the epoch's public parameters (node.oprf.encode_epoch_public)
  HOME/keys/oprf/epoch-<N>.share    this member's share of epoch N's key, and nobody else's
  HOME/keys/local-pseudonym.key     the local HMAC key (hex)
  HOME/keys/token-cache.key         key of the token cache (hex)
  HOME/token-cache/                 LevelDB: HMAC(cache key, OPRF input) -> SecretBox(token)

The token cache holds the tokens this hospital already computed (its own identifiers): the LevelDB key is
a keyed hash of the identifier and the value is sealed, so the directory alone says nothing; with the cache
key it answers "did this hospital tokenize X" for the X one tries, which the hospital knew anyway. It never
answers for an identifier the hospital has not tokenized: that still needs t members online, rate-limited
and counted on chain.

Batching: every caller's cache misses go into one queue; one task drains it into requests of up to
MAX_POINTS points, so a burst of events costs one round of requests per 256 identifiers, not one per event.
All CPU work (blinding, proofs, combination) runs in worker threads inside OprfClient/OprfService.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import plyvel
import trio
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from node.ledger import oprf
from node.ledger.intake import event_to_tx_fields
from node.ledger.oprf import EpochPublic, KeyShare, OprfError
from node.ledger.pseudonym import Pseudonymizer, TokenizeError, normalize
from node.privatefiles import make_private_dir, write_secret
from node.runtime.oprf_service import MAX_POINTS, OprfClient, OprfRefused

__all__ = ["Tokenizer", "TokenCache", "TokenizeError", "EpochKeys", "load_epochs", "write_epoch",
           "load_local_key", "ensure_local_secrets", "KEYS_DIR", "oprf_threshold", "event_fields", "prefetch"]

log = logging.getLogger("radchain.tokenizer")

KEYS_DIR = Path("keys") / "oprf"
QUEUE = 4096  # identifiers waiting for a batch; a full queue makes callers wait (backpressure)
# Tokens kept in memory after their first use, keyed by (epoch, kind, normalised parts): a hit is one dict
# lookup, against an HMAC, a LevelDB get and a SecretBox open for the token cache at rest (~10 us per
# identifier, three identifiers per event on the submit path). Bounded (oldest first out): ~150 B each.
MEMO = 100_000
INFLIGHT = 2  # rounds of OPRF requests under way at once
_EPOCH_FILE = re.compile(r"^epoch-(\d{1,5})\.public$")


# ------------------------------------------------------------------------------------ key files


class EpochKeys:
    """The epochs this node knows: public parameters of each, and this member's share where it has one."""

    def __init__(self, publics: dict[int, EpochPublic], shares: dict[int, KeyShare]) -> None:
        self.publics, self.shares = publics, shares

    @property
    def current(self) -> int | None:
        """New tokens use the newest epoch this member holds a share of."""
        return max(self.shares, default=None)

    @property
    def epochs(self) -> list[int]:
        """Every epoch look-ups search, newest first."""
        return sorted(self.shares, reverse=True)


def write_epoch(home: Path, public: EpochPublic, share: KeyShare | None) -> None:
    """Install an epoch in a home: its public parameters, and this member's own share only."""
    d = make_private_dir(Path(home) / KEYS_DIR)
    write_secret(d / f"epoch-{public.epoch}.public", oprf.encode_epoch_public(public))
    if share is not None:
        assert share.public == public
        write_secret(d / f"epoch-{public.epoch}.share", oprf.encode_key_share(share))


def load_epochs(home: Path) -> EpochKeys:
    d = Path(home) / KEYS_DIR
    publics: dict[int, EpochPublic] = {}
    shares: dict[int, KeyShare] = {}
    if not d.is_dir():
        return EpochKeys(publics, shares)
    for path in sorted(d.iterdir()):
        m = _EPOCH_FILE.match(path.name)
        if not m:
            continue
        try:
            public = oprf.decode_epoch_public(path.read_bytes())
            if public.epoch != int(m.group(1)):
                raise OprfError(f"file names epoch {m.group(1)}, holds epoch {public.epoch}")
            publics[public.epoch] = public
        except (OprfError, OSError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        share_path = path.with_suffix(".share")
        if share_path.exists():
            try:
                shares[public.epoch] = oprf.decode_key_share(share_path.read_bytes(), public)
            except OprfError as exc:
                # a crash between the two renames of a resharing's install (node.runtime.oprf_resharing, which
                # marks it) leaves the new public file next to the old share: recomputed from the chain then
                if not path.with_suffix(".installing").exists():
                    raise ValueError(f"{path}: {exc}") from None
                log.warning("%s: %s; not used (an install was interrupted)", share_path, exc)
    return EpochKeys(publics, shares)


def _load_hex_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{path}: must hold 64 hex digits")
    return key


def ensure_local_secrets(home: Path) -> None:
    """Create this hospital's local pseudonym key and token-cache key if missing (never replaced)."""
    for name in ("local-pseudonym.key", "token-cache.key"):
        path = Path(home) / "keys" / name
        if not path.exists():
            write_secret(path, os.urandom(32).hex() + "\n")


def load_local_key(home: Path) -> bytes:
    return _load_hex_key(Path(home) / "keys" / "local-pseudonym.key")


# ------------------------------------------------------------------------------------ the cache


class TokenCache:
    """Tokens this node computed, at rest in LevelDB: keyed by an HMAC of the OPRF input, values sealed."""

    def __init__(self, home: Path) -> None:
        key = _load_hex_key(Path(home) / "keys" / "token-cache.key")
        self._index_key = hmac.new(key, b"radchain/token-cache/index", hashlib.sha256).digest()
        self._box = SecretBox(hmac.new(key, b"radchain/token-cache/seal", hashlib.sha256).digest())
        self._db = plyvel.DB(str(make_private_dir(Path(home) / "token-cache")), create_if_missing=True)
        self.hits = self.misses = 0

    def _key(self, data: bytes) -> bytes:
        return hmac.new(self._index_key, data, hashlib.sha256).digest()[:20]

    def get(self, data: bytes) -> bytes | None:
        k = self._key(data)
        sealed = self._db.get(k)
        if sealed is None:
            self.misses += 1
            return None
        try:
            # The lookup key is bound in as associated data by prefixing it to the plaintext: a sealed value
            # moved to another key opens but does not match, and is treated as a miss.
            plain = self._box.decrypt(sealed)
        except CryptoError:
            self.misses += 1
            return None
        if plain[:20] != k or len(plain) != 20 + oprf.TOKEN_BYTES:
            self.misses += 1
            return None
        self.hits += 1
        return plain[20:]

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        with self._db.write_batch() as wb:
            for data, token in pairs:
                k = self._key(data)
                wb.put(k, self._box.encrypt(k + token))

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()


# ------------------------------------------------------------------------------------ tokenizer


class _Request:
    __slots__ = ("epoch", "inputs", "result", "error", "done")

    def __init__(self, epoch: int, inputs: list[bytes]) -> None:
        self.epoch, self.inputs = epoch, inputs
        self.result: list[bytes] | None = None
        self.error: Exception | None = None
        self.done = trio.Event()


class Tokenizer:
    """Tokens for the node: `await tokens([(kind, parts), ...])`; local kinds through `local`."""

    def __init__(self, home: Path, net, peer_ids: Sequence[str], own_index: int, *, timeout: float = 10.0) -> None:
        self.keys = load_epochs(home)
        ensure_local_secrets(home)
        self.local = Pseudonymizer(load_local_key(home))
        self.cache = TokenCache(home)
        self._memo: dict[tuple, bytes] = {}  # (epoch, kind, parts) -> token; see MEMO
        self.memo_size = MEMO  # 0: no memory cache (bench.throughput's baseline)
        self.clients: dict[int, OprfClient] = {}
        self.net = net
        for epoch, share in self.keys.shares.items():
            public = self.keys.publics[epoch]
            if public.n != len(peer_ids) or share.index != own_index + 1:
                # reshared to a later member set (node.runtime.oprf_resharing): its order is on chain, and
                # the resharer points this epoch at it once the node has read the chain
                log.info("OPRF epoch %d: share %d of %d is not in genesis order; waiting for the chain's "
                         "member order", epoch, share.index, public.n)
                continue
            others = {pid: i + 1 for i, pid in enumerate(peer_ids) if i != own_index}
            self.clients[epoch] = OprfClient(net, public, others, share, timeout=timeout)
        self.timeout = timeout
        self._send, self._recv = trio.open_memory_channel(QUEUE)
        self._slots = trio.Semaphore(INFLIGHT)
        self._running = False
        self.timeout = timeout
        self.stats = {"requests": 0, "points": 0, "batches": 0, "failures": 0, "rate_limited": 0, "memory_hits": 0}
        self.latencies: list[float] = []  # seconds per batch, for bench/metrics (bounded below)
        self.bad_answers: Counter[str] = Counter()  # peer ID -> answers not used (failed proof, garbage...)
        self.rate_limited_by: Counter[str] = Counter()  # peer ID -> rate-limit refusals received

    @property
    def epoch(self) -> int | None:
        return max(self.clients, default=None)

    def set_epoch(self, public: EpochPublic, share: KeyShare | None, peers: dict[str, int]) -> None:
        """Point an epoch at new public parameters (a resharing put them in force on chain): `peers` maps
        every other member's peer ID to its index in `public`; without a share this node stops computing
        tokens of that epoch (a member outside the new set)."""
        assert share is None or share.public == public
        self.keys.publics[public.epoch] = public
        if share is None:
            self.keys.shares.pop(public.epoch, None)
            self.clients.pop(public.epoch, None)
            return
        self.keys.shares[public.epoch] = share
        self.clients[public.epoch] = OprfClient(self.net, public, peers, share, timeout=self.timeout)

    def close(self) -> None:
        self.cache.close()

    # -------------------------------------------------------------- public API
    async def tokens(self, items: Sequence[tuple[str, tuple[str, ...]]], epoch: int | None = None) -> list[bytes]:
        """Consortium tokens of already-normalised [(kind, parts)] under `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch is None or epoch not in self.clients:
            raise TokenizeError("no_key", "this node holds no OPRF key share (HOME/keys/oprf/): "
                                          "consortium tokens cannot be computed")
        memo = self._memo
        out = [memo.get((epoch, kind, parts)) for kind, parts in items]
        if None not in out:
            # pseudonym_stats' cache_hits: tokens answered without an evaluation, from memory or at rest
            self.cache.hits += len(out)
            self.stats["memory_hits"] += len(out)
            return out  # type: ignore[return-value]
        # Not all in memory: the misses from the cache at rest, then from the consortium.
        keys = {}
        for (kind, parts), tok in zip(items, out, strict=True):
            if tok is None:
                keys[(epoch, kind, parts)] = oprf.token_input(epoch, kind, *parts)
        found: dict[tuple, bytes] = {}
        missing: dict[bytes, tuple] = {}
        for key, x in keys.items():
            tok = self.cache.get(x)
            if tok is None:
                missing[x] = key
            else:
                found[key] = tok
        if missing:
            if not self._running:  # a node that is not serving (yet): say so rather than wait forever
                raise TokenizeError("unavailable", "consortium tokens unavailable: the node is not running")
            ordered = sorted(missing)
            for start in range(0, len(ordered), MAX_POINTS):
                req = _Request(epoch, ordered[start:start + MAX_POINTS])
                # Bounded: a round asks every member with `timeout` each; a queue backed up behind rounds
                # that long is itself the answer (the caller retries; the DICOM spool does).
                with trio.move_on_after(4 * self.timeout) as scope:
                    await self._send.send(req)
                    await req.done.wait()
                if scope.cancelled_caught:
                    raise TokenizeError("unavailable", "consortium tokens unavailable: no answer in time")
                if req.error is not None:
                    raise req.error
                assert req.result is not None and len(req.result) == len(req.inputs)
                for x, tok in zip(req.inputs, req.result, strict=True):
                    found[missing[x]] = tok
        assert len(found) == len(keys)
        for key, tok in found.items():
            self._remember(key, tok)
        return [tok if tok is not None else found[(epoch, kind, parts)]
                for (kind, parts), tok in zip(items, out, strict=True)]

    def memoized(self, items: Sequence[tuple[str, tuple[str, ...]]]) -> bool:
        """Whether every [(kind, parts)] already has its current-epoch token in memory (no await needed)."""
        epoch, memo = self.epoch, self._memo
        for kind, parts in items:
            if (epoch, kind, parts) not in memo:
                return False
        return True

    def _remember(self, key: tuple, token: bytes) -> None:
        memo = self._memo
        if key not in memo and self.memo_size > 0:
            if len(memo) >= self.memo_size:
                del memo[next(iter(memo))]
            memo[key] = token

    async def token(self, kind: str, *values: str, epoch: int | None = None) -> bytes:
        return (await self.tokens([(kind, normalize(kind, *values))], epoch))[0]

    async def all_epochs(self, kind: str, *values: str) -> list[bytes]:
        """The identifier's token in every epoch this node holds, newest first (audit look-ups)."""
        parts = normalize(kind, *values)
        if not self.clients:
            raise TokenizeError("no_key", "this node holds no OPRF key share (HOME/keys/oprf/): "
                                          "consortium tokens cannot be computed")
        return [(await self.tokens([(kind, parts)], e))[0] for e in sorted(self.clients, reverse=True)]

    # -------------------------------------------------------------- batching
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._serve(nursery)
        finally:
            self._running = False

    async def _serve(self, nursery) -> None:
        while True:
            # Up to INFLIGHT rounds at once (one's network wait overlaps the other's CPU); while both are
            # out, new identifiers accumulate and leave together in the next round.
            await self._slots.acquire()
            try:
                first = await self._recv.receive()
            except trio.EndOfChannel:
                self._slots.release()
                return
            batch = [first]
            total = len(first.inputs)
            while total < MAX_POINTS:  # everything already waiting joins this round, up to one request
                try:
                    nxt = self._recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(nxt)
                total += len(nxt.inputs)
            by_epoch: dict[int, list[_Request]] = {}
            for r in batch:
                by_epoch.setdefault(r.epoch, []).append(r)
            nursery.start_soon(self._run_batch, by_epoch)

    async def _run_batch(self, by_epoch: dict[int, list[_Request]]) -> None:
        try:
            for epoch, reqs in by_epoch.items():
                await self._evaluate(epoch, reqs)
        finally:
            self._slots.release()

    async def _evaluate(self, epoch: int, reqs: list[_Request]) -> None:
        unique = sorted({x for r in reqs for x in r.inputs})
        client = self.clients[epoch]
        results: dict[bytes, bytes] = {}
        error: Exception | None = None
        started = trio.current_time()
        report: dict = {}
        try:
            for start in range(0, len(unique), MAX_POINTS):
                chunk = unique[start:start + MAX_POINTS]
                report = {}
                try:
                    outputs = await client.evaluate(chunk, report)
                finally:
                    self._note_bad(report)
                results.update(zip(chunk, (oprf.token_from_output(epoch, o) for o in outputs), strict=True))
        except OprfError as exc:
            error = self._explain(exc, report)
        except Exception as exc:  # a bug here must fail these callers, not stop the loop (and the node)
            log.exception("consortium tokenization raised")
            error = TokenizeError("unavailable", f"consortium tokens unavailable: {type(exc).__name__}")
        self.stats["batches"] += 1
        self.stats["requests"] += len(reqs)
        self.stats["points"] += len(unique)
        if error is None:
            try:
                self.cache.put_many(list(results.items()))
            except plyvel.Error as exc:  # e.g. a full disk: the tokens are still good, only not cached
                log.warning("token cache write failed: %s", exc)
            if len(self.latencies) < 100_000:
                self.latencies.append(trio.current_time() - started)
        for r in reqs:
            if error is None:
                r.result = [results[x] for x in r.inputs]
            else:
                r.error = error
            r.done.set()

    def _note_bad(self, report: dict) -> None:
        errors = report.get("errors", {})
        for peer, err in errors.items():
            if isinstance(err, OprfRefused) and err.code == "rate_limited":
                self.rate_limited_by[peer] += 1
            else:
                self.bad_answers[peer] += 1
        for peer, why in report.get("bad", {}).items():
            if peer not in errors:  # answered, but unusable: failed DLEQ proof, wrong index
                self.bad_answers[peer] += 1
                log.warning("member %s answered a pseudonym evaluation unusably: %s", peer, why)

    def _explain(self, exc: OprfError, report: dict) -> TokenizeError:
        refusals = [e for e in report.get("errors", {}).values() if isinstance(e, OprfRefused)]
        limited = [e for e in refusals if e.code == "rate_limited"]
        if limited:
            self.stats["rate_limited"] += 1
            retry = max((e.retry_after for e in limited if e.retry_after is not None), default=None)
            return TokenizeError("rate_limited", f"pseudonym evaluation refused by rate limit: {exc}", retry)
        self.stats["failures"] += 1
        log.warning("consortium tokenization failed: %s", exc)
        return TokenizeError("unavailable", f"consortium tokens unavailable: {exc}")


def oprf_threshold(n: int) -> int:
    """t = 2f + 1 for n = 3f + 1 members (docs/PSEUDONYMS.md, "Choice of t"); 1 for a consortium of one."""
    assert n >= 1
    return 2 * ((n - 1) // 3) + 1


# ------------------------------------------------------------------------------------ raw events


class _Slot:
    """Where a consortium token goes in the fields pass 1 builds: filled in once the tokens are known."""

    __slots__ = ("item",)

    def __init__(self, item: tuple[str, tuple[str, ...]]) -> None:
        self.item = item


class _Collect:
    """One pass over a raw event: validates it, computes the local tokens and leaves a _Slot for each
    consortium identifier (listed in `items`)."""

    def __init__(self, local: Pseudonymizer) -> None:
        self.local = local
        self.items: list[tuple[str, tuple[str, ...]]] = []
        self.series, self.instance, self.user, self.event = local.series, local.instance, local.user, local.event

    def _want(self, kind: str, *values) -> _Slot:
        item = (kind, normalize(kind, *values))
        self.items.append(item)
        return _Slot(item)

    def patient(self, patient_id: str, issuer: str) -> _Slot:
        return self._want("patient", patient_id, issuer)

    def study(self, uid: str) -> _Slot:
        return self._want("study", uid)

    def grantee(self, grantee: str) -> _Slot:
        return self._want("grantee", grantee)


class _Resolved(_Collect):
    """The same calls answered from tokens already known ({(kind, parts): token}): offline tools, tests."""

    def __init__(self, local: Pseudonymizer, tokens: dict) -> None:
        super().__init__(local)
        self.tokens = tokens

    def _want(self, kind: str, *values) -> bytes:  # type: ignore[override]
        return self.tokens[(kind, normalize(kind, *values))]


def _consortium_items(event) -> list[tuple[str, tuple[str, ...]]] | None:
    """The consortium identifiers a well-formed event names, read straight from its fields; None when
    anything is unusual (the full pass then decides). prefetch's shortcut: no event_to_tx_fields pass."""
    try:
        items = [("patient", normalize("patient", event["patient_id"], event["issuer"]))]
        if "study_uid" in event:
            items.append(("study", normalize("study", event["study_uid"])))
        if "grantee" in event:
            items.append(("grantee", normalize("grantee", event["grantee"])))
    except (KeyError, TypeError, ValueError):  # PseudonymError is a ValueError
        return None
    return items


def warm(event, tokenizer: Tokenizer) -> bool:
    """Whether every consortium token `event` needs is in memory already, so prefetch has nothing to do
    (a few dict lookups: a hospital's identifiers repeat). False when unsure; never raises."""
    if not isinstance(event, dict):
        return False
    items = _consortium_items(event)
    return items is not None and tokenizer.memoized(items)


async def prefetch(event: dict, tokenizer: Tokenizer, **kwargs) -> None:
    """The OPRF round only: the tokens land in the caches for event_fields to find. An event whose tokens
    are all in memory already costs a few dict lookups (`warm`)."""
    if warm(event, tokenizer):
        return
    collect = _Collect(tokenizer.local)
    event_to_tx_fields(event, collect, **kwargs)
    if collect.items:
        await tokenizer.tokens(sorted(set(collect.items)))


async def event_fields(event: dict, tokenizer: Tokenizer, **kwargs) -> dict:
    """node.events.event_to_tx_fields with consortium tokens from the OPRF (EventError, TokenizeError).

    One pass: every validation error surfaces before any request; the consortium tokens then fill the
    slots the pass left (top-level fields: patient, study, grantee)."""
    collect = _Collect(tokenizer.local)
    fields = event_to_tx_fields(event, collect, **kwargs)
    if not collect.items:
        return fields
    wanted = list(dict.fromkeys(collect.items))
    tokens = dict(zip(wanted, await tokenizer.tokens(wanted), strict=True))
    filled = 0
    for name, value in fields.items():
        if type(value) is _Slot:
            fields[name] = tokens[value.item]
            filled += 1
    assert filled == len(collect.items), "a consortium token slot outside the top-level fields"
    return fields
