"""Threshold OPRF over the consortium network: batched partial evaluations, rate-limited per requester.

Member side (`OprfService`, served on channel "oprf" of network.PeerNetwork's request/response):
  request  = msgpack {"v": 1, "epoch": int, "points": [32-byte blinded elements, 1..MAX_POINTS]}
  response = msgpack {"ok": true, "epoch", "index", "elements": [...], "proof": 64 bytes}
           | msgpack {"ok": false, "error": "rate_limited" | "malformed" | "unknown_epoch", "message": str,
                      "retry_after": float seconds (rate_limited only)}
Every requester (a member's peer ID; PeerNetwork admits members only) has a token bucket charged one token
per point: `rate` points per second sustained, `burst` at once. A refusal is answered (not dropped), so the
requester sees a clear error, and counted per requester next to the points answered; those counts are what
a member will periodically record on chain (not built yet).

Requester side (`OprfClient`): blinds the inputs, evaluates its own share locally (if it holds one), asks
every other member concurrently, verifies each answer's DLEQ proof as it arrives and stops at t valid
partials; members that answered garbage are reported in `last_bad`.

Evaluation and verification run in a worker thread (libsodium calls release the GIL through ctypes), one at
a time per service, so a large batch never stalls the trio loop that carries consensus traffic.
node/runtime/tokenizer.py holds one client per epoch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import trio

from network import RequestError, RequestTimeout
from node.ledger import oprf
from node.ledger.oprf import BlindedInput, EpochPublic, KeyShare, OprfError, Partial

__all__ = [
    "CHANNEL",
    "MAX_POINTS",
    "OprfService",
    "OprfClient",
    "OprfRefused",
    "RateLimiter",
    "TokenBucket",
    "encode_request",
    "decode_request",
    "decode_response",
]

CHANNEL = "oprf"
MAX_POINTS = 256  # per request: bounds a member's CPU per request (~80 ms at 0.3 ms/point) and the frame size
MAX_REQUEST_BYTES = 64 + MAX_POINTS * (oprf.POINT_BYTES + 2)
MAX_RESPONSE_BYTES = 256 + MAX_POINTS * (oprf.POINT_BYTES + 2) + 1024  # error messages are short
VERSION = 1
# A member whose connection is being re-made (it or we just restarted, a stale stream was reset, its OPRF
# service not installed yet) fails its first request at once; it is asked again for this long, backing off,
# within the call's own timeout. A member that stays down costs a failing call at most this long (~5 requests);
# one whose service answered (partials, a refusal, a bad proof) is never re-asked.
RETRY_UNREACHABLE_S = 3.0
RETRY_FIRST_PAUSE_S = 0.1


class OprfRefused(OprfError):
    """A member refused to evaluate (rate limit, unknown epoch, malformed request)."""

    def __init__(self, member: str, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{member} refused: {code}: {message}")
        self.member, self.code, self.retry_after = member, code, retry_after


# ------------------------------------------------------------------------------------ wire format


def encode_request(epoch: int, points: Sequence[bytes]) -> bytes:
    return msgpack.packb({"v": VERSION, "epoch": epoch, "points": list(points)}, use_bin_type=True)


def _unpack(data: bytes, max_bytes: int, max_array: int) -> dict:
    if not isinstance(data, bytes | bytearray) or len(data) > max_bytes:
        raise OprfError(f"message: over {max_bytes} bytes")
    try:
        # Limits apply before allocation: a hostile peer cannot make us build big containers.
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            max_bin_len=1024,
            max_str_len=1024,
            max_array_len=max_array,
            max_map_len=8,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise OprfError(f"message: not valid msgpack ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise OprfError("message: not a map")
    return obj


def decode_request(data: bytes) -> tuple[int, list[bytes]]:
    obj = _unpack(data, MAX_REQUEST_BYTES, MAX_POINTS)
    if set(obj) != {"v", "epoch", "points"} or obj["v"] != VERSION:
        raise OprfError("request: unexpected fields or version")
    epoch, points = obj["epoch"], obj["points"]
    if type(epoch) is not int or not 0 <= epoch < 1 << 16:
        raise OprfError("request: bad epoch")
    if not isinstance(points, list) or not 0 < len(points) <= MAX_POINTS:
        raise OprfError(f"request: need 1..{MAX_POINTS} points")
    return epoch, [oprf.decode_point(p, f"point {j}") for j, p in enumerate(points)]


def _encode_partial(p: Partial) -> bytes:
    return msgpack.packb(
        {"ok": True, "epoch": p.epoch, "index": p.index, "elements": list(p.elements), "proof": p.proof},
        use_bin_type=True,
    )


def _encode_refusal(code: str, message: str, retry_after: float | None = None) -> bytes:
    body: dict = {"ok": False, "error": code, "message": message[:200]}
    if retry_after is not None:
        body["retry_after"] = round(retry_after, 3)
    return msgpack.packb(body, use_bin_type=True)


def decode_response(member: str, data: bytes) -> Partial:
    """A member's answer: a Partial (not yet verified), or OprfRefused / OprfError."""
    obj = _unpack(data, MAX_RESPONSE_BYTES, MAX_POINTS)
    if obj.get("ok") is False:
        code, msg, retry = obj.get("error"), obj.get("message"), obj.get("retry_after")
        if not isinstance(code, str) or not isinstance(msg, str):
            raise OprfError(f"{member}: malformed refusal")
        if retry is not None and (not isinstance(retry, int | float) or not 0 <= retry < 1e6):
            retry = None
        raise OprfRefused(member, code, msg, retry)
    if obj.get("ok") is not True or set(obj) != {"ok", "epoch", "index", "elements", "proof"}:
        raise OprfError(f"{member}: malformed response")
    elements, proof = obj["elements"], obj["proof"]
    if not isinstance(elements, list) or not all(isinstance(e, bytes) for e in elements):
        raise OprfError(f"{member}: malformed elements")
    if not isinstance(proof, bytes) or type(obj["epoch"]) is not int or type(obj["index"]) is not int:
        raise OprfError(f"{member}: malformed response")
    return Partial(obj["epoch"], obj["index"], tuple(elements), proof)


# ------------------------------------------------------------------------------------ rate limits


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # capacity
    tokens: float = field(default=-1.0)
    stamp: float | None = None

    def take(self, n: int, now: float) -> float:
        """Take n tokens: 0.0 when granted, else the seconds until n tokens will be there (nothing taken)."""
        if self.stamp is None:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        if n > self.burst or self.rate <= 0:
            return math.inf  # never grantable in one request
        return (n - self.tokens) / self.rate


class RateLimiter:
    """One bucket per requester; `limits` overrides the default (rate, burst) for a given requester."""

    def __init__(self, rate: float, burst: float, limits: Mapping[str, tuple[float, float]] | None = None):
        assert rate >= 0 and burst >= 1
        self.default = (rate, burst)
        self.limits = dict(limits or {})
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, requester: str, n: int, now: float) -> float:
        b = self._buckets.get(requester)
        if b is None:
            b = self._buckets[requester] = TokenBucket(*self.limits.get(requester, self.default))
        return b.take(n, now)


# ---------------------------------------------------------------------------------------- service


class OprfService:
    """A member's side. `shares` maps epoch -> this member's KeyShare for that epoch."""

    def __init__(
        self,
        shares: Mapping[int, KeyShare],
        limiter: RateLimiter,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.shares = dict(shares)
        self.limiter = limiter
        self.clock = clock
        self.answered: Counter[str] = Counter()  # points evaluated, per requester
        self.refused: Counter[str] = Counter()  # points refused by the rate limit, per requester
        self.stats: Counter[str] = Counter()
        self._cpu = trio.CapacityLimiter(1)

    def install(self, net) -> None:
        net.serve(CHANNEL, self.handle)

    async def handle(self, requester: str, payload: bytes) -> bytes:
        try:
            epoch, points = decode_request(payload)
        except OprfError as e:
            self.stats["malformed"] += 1
            return _encode_refusal("malformed", str(e))
        share = self.shares.get(epoch)
        if share is None:
            self.stats["unknown_epoch"] += 1
            return _encode_refusal("unknown_epoch", f"no key share for epoch {epoch}")
        wait = self.limiter.take(requester, len(points), self.clock())
        if wait:
            self.refused[requester] += len(points)
            self.stats["rate_limited"] += 1
            return _encode_refusal(
                "rate_limited",
                f"rate limit exceeded: {len(points)} points requested",
                None if math.isinf(wait) else wait,
            )
        partial = await trio.to_thread.run_sync(oprf.evaluate_partial, share, points, limiter=self._cpu)
        self.answered[requester] += len(points)
        return _encode_partial(partial)


# ----------------------------------------------------------------------------------------- client


class OprfClient:
    """A requester's side: threshold evaluation of many inputs in one round of requests."""

    def __init__(
        self,
        net,
        public: EpochPublic,
        members: Mapping[str, int],
        own_share: KeyShare | None = None,
        timeout: float = 10.0,
    ) -> None:
        """`members` maps every other member's peer ID to its share index in `public`."""
        assert all(1 <= i <= public.n for i in members.values())
        assert own_share is None or own_share.public == public
        self.net, self.public, self.members = net, public, dict(members)
        self.own_share, self.timeout = own_share, timeout
        self.last_bad: dict[str, str] = {}  # peer ID (or "self") -> why its answer was not used
        self.last_errors: dict[str, Exception] = {}  # peer ID -> the exception (OprfRefused: code, retry_after)
        self._cpu = trio.CapacityLimiter(1)

    async def evaluate(self, inputs: Sequence[bytes], report: dict | None = None) -> list[bytes]:
        """RFC 9497 outputs (64 bytes) for `inputs`; raises OprfError if fewer than t members answer validly.

        `report`, if given, receives this call's {"bad": {peer: why}, "errors": {peer: exception}} (concurrent
        calls each get their own; `last_bad` / `last_errors` hold the latest call's)."""
        if not 0 < len(inputs) <= MAX_POINTS:
            raise OprfError(f"evaluate: 1..{MAX_POINTS} inputs per call")
        bis: list[BlindedInput] = [oprf.blind(x) for x in inputs]
        blinded = [bi.element for bi in bis]
        t = self.public.t
        good: dict[int, Partial] = {}
        bad: dict[str, str] = {}
        errors: dict[str, Exception] = {}
        payload = encode_request(self.public.epoch, blinded)

        async with trio.open_nursery() as nursery:

            deadline = trio.current_time() + self.timeout
            retry_until = trio.current_time() + min(RETRY_UNREACHABLE_S, self.timeout)

            async def request(peer: str) -> bytes:
                pause = RETRY_FIRST_PAUSE_S
                while True:
                    try:
                        return await self.net.request(peer, CHANNEL, payload, timeout=deadline - trio.current_time())
                    except RequestTimeout:
                        raise
                    except RequestError:
                        if trio.current_time() + pause >= retry_until:
                            raise
                    await trio.sleep(pause)
                    pause *= 2

            async def ask(peer: str, index: int) -> None:
                try:
                    raw = await request(peer)
                    partial = decode_response(peer, raw)
                except Exception as e:  # network failure, refusal, garbage: that member is skipped
                    bad[peer] = f"{type(e).__name__}: {e}"
                    errors[peer] = e
                    return
                if partial.index != index:
                    bad[peer] = f"answered as member {partial.index}, is member {index}"
                    return
                ok = await trio.to_thread.run_sync(
                    oprf.verify_partial, self.public, blinded, partial, limiter=self._cpu
                )
                if not ok:
                    bad[peer] = "DLEQ proof failed"
                elif len(good) < t:
                    good[index] = partial
                    if len(good) == t:
                        nursery.cancel_scope.cancel()

            if self.own_share is not None:
                own = await trio.to_thread.run_sync(
                    oprf.evaluate_partial, self.own_share, blinded, limiter=self._cpu
                )
                good[own.index] = own
            for peer, index in self.members.items():
                if len(good) < t:
                    nursery.start_soon(ask, peer, index)
        self.last_bad, self.last_errors = bad, errors
        if report is not None:
            report.update(bad=bad, errors=errors)
        if len(good) < t:
            reasons = "; ".join(f"{p}: {r}" for p, r in sorted(bad.items()))
            raise OprfError(f"only {len(good)} of t={t} valid partial evaluations ({reasons})")
        return await trio.to_thread.run_sync(
            oprf.combine_verified, self.public, bis, list(good.values()), limiter=self._cpu
        )

    async def tokenize(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[bytes]:
        """Tokens for [(kind, parts), ...] under this client's epoch."""
        epoch = self.public.epoch
        outputs = await self.evaluate([oprf.token_input(epoch, kind, *parts) for kind, parts in items])
        return [oprf.token_from_output(epoch, o) for o in outputs]
