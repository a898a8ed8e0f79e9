"""Threshold OPRF between real py-libp2p hosts: same token at two hospitals, f down, a liar, rate limits."""

from __future__ import annotations

import os
import sys

import msgpack
import pytest
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "network"))

from network_testkit import Roster, running, wait_for  # noqa: E402

from node.ledger import oprf  # noqa: E402
from node.ledger.oprf import OprfError  # noqa: E402
from node.runtime.oprf_service import (  # noqa: E402
    CHANNEL,
    MAX_POINTS,
    RETRY_UNREACHABLE_S,
    OprfClient,
    OprfService,
    RateLimiter,
    TokenBucket,
    decode_request,
    decode_response,
    encode_request,
)

N, F = 4, 1
T = 2 * F + 1  # docs/PSEUDONYMS.md, "Choice of t"


class LyingService(OprfService):
    """A Byzantine member: answers on time, with well-formed but wrong evaluations."""

    async def handle(self, requester, payload):
        raw = await super().handle(requester, payload)
        obj = msgpack.unpackb(raw)
        if obj.get("ok"):
            obj["elements"] = [oprf._mul(7, e) for e in obj["elements"]]
        return msgpack.packb(obj, use_bin_type=True)


def consortium(seed: int, rate: float = 1e6, burst: float = 1e6, liar: int | None = None):
    roster = Roster(N, seed=seed)
    secret = oprf.random_scalar()
    public, shares = oprf.deal(T, N, epoch=1, secret=secret)
    nets = [roster.net(i) for i in range(N)]
    services = []
    for i, net in enumerate(nets):
        cls = LyingService if i == liar else OprfService
        svc = cls({1: shares[i]}, RateLimiter(rate, burst))
        svc.install(net)
        services.append(svc)

    def client(i: int, timeout: float = 10.0) -> OprfClient:
        others = {roster.pids[j]: j + 1 for j in range(N) if j != i}
        return OprfClient(nets[i], public, others, own_share=shares[i], timeout=timeout)

    return roster, nets, services, client, secret


PATIENTS = [("patient", (f"{1000000 + k:07d}", "REGION-MPI")) for k in range(20)]


@pytest.mark.timeout(120)
async def test_two_hospitals_get_the_same_tokens_and_the_whole_key_result():
    roster, nets, services, client, secret = consortium(seed=130)
    async with running(*nets):
        a = await client(0).tokenize(PATIENTS)
        b = await client(2).tokenize(PATIENTS[:5])
    assert a[:5] == b
    assert a == [oprf.tokenize_with_key(secret, 1, k, *p) for k, p in PATIENTS]
    assert len(set(a)) == len(PATIENTS)
    # each answering member counted what it evaluated for whom (only blinded points, never the identifiers)
    assert services[1].answered[roster.pids[0]] in (0, len(PATIENTS))
    assert sum(s.answered[roster.pids[0]] for s in services) >= (T - 1) * len(PATIENTS)


class RecordingService(OprfService):
    """An honest-but-curious member: keeps every request it receives."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[bytes] = []

    async def handle(self, requester, payload):
        self.seen.append(payload)
        return await super().handle(requester, payload)


@pytest.mark.timeout(120)
async def test_a_curious_member_sees_only_fresh_blinded_points():
    roster, nets, services, client, secret = consortium(seed=135)
    curious = RecordingService(services[1].shares, services[1].limiter)
    curious.install(nets[1])
    ids = PATIENTS[:3]
    async with running(*nets[:3]):  # member 4 down: member 2's answer is needed, so its request completes
        c = client(0, timeout=5.0)
        first = await c.tokenize(ids)
        assert await c.tokenize(ids) == first  # the same identifiers, asked again
    assert len(curious.seen) == 2
    seen = [decode_request(p)[1] for p in curious.seen]
    hashed = {oprf.hash_to_group(oprf.token_input(1, k, *p)) for k, p in ids}
    # Neither the identifiers nor their hash points travel, and a repeat request is not recognisable.
    assert not hashed & set(seen[0] + seen[1])
    assert not set(seen[0]) & set(seen[1])
    for _kind, p in ids:
        for part in p:
            assert all(part.encode() not in raw for raw in curious.seen)


@pytest.mark.timeout(120)
async def test_tokenization_works_with_f_members_down():
    roster, nets, services, client, secret = consortium(seed=140)
    down = 3
    async with running(*[n for i, n in enumerate(nets) if i != down]):
        c = client(0, timeout=5.0)
        tokens = await c.tokenize(PATIENTS[:3])
    assert tokens == [oprf.tokenize_with_key(secret, 1, k, *p) for k, p in PATIENTS[:3]]


@pytest.mark.timeout(120)
async def test_a_member_unreachable_at_first_is_asked_again_and_one_that_stays_down_fails_the_call_soon():
    """t = 3 of 4 with member 4 down: member 3 is needed, and it starts only after the first requests to it have
    failed (as when it or the requester has just restarted). A member that stays down ends the call within
    the retry window, with the reason named."""
    roster, nets, services, client, secret = consortium(seed=145)
    async with running(*nets[:2]) as nursery:
        c = client(0, timeout=20.0)

        async def start_member_3_after_failed_requests():
            await wait_for(lambda: nets[0].stats["requests_failed"] >= 2, timeout=10)
            await nursery.start(nets[2].run)

        nursery.start_soon(start_member_3_after_failed_requests)
        tokens = await c.tokenize(PATIENTS[:2])
        assert tokens == [oprf.tokenize_with_key(secret, 1, k, *p) for k, p in PATIENTS[:2]]
        assert services[2].answered[roster.pids[0]] == 2, "member 3 answered once it was up"

        down = OprfClient(nets[0], c.public, {roster.pids[3]: 4}, own_share=c.own_share, timeout=20.0)
        t0 = trio.current_time()
        with pytest.raises(OprfError, match=f"only 1 of t=3 .*{roster.pids[3]}: RequestError"):
            await down.tokenize(PATIENTS[2:3])
        assert trio.current_time() - t0 < RETRY_UNREACHABLE_S + 2.0


class SlowService(OprfService):
    """An honest member that answers late, so the liar's answer is always examined first."""

    async def handle(self, requester, payload):
        await trio.sleep(1.0)
        return await super().handle(requester, payload)


@pytest.mark.timeout(120)
async def test_a_lying_member_is_detected_and_the_token_still_computes():
    roster, nets, services, client, secret = consortium(seed=150, liar=1)
    for j in (2, 3):  # the honest members answer after the liar
        slow = SlowService(services[j].shares, services[j].limiter)
        slow.install(nets[j])
    async with running(*nets):
        c = client(0)
        tokens = await c.tokenize(PATIENTS[:4])
        assert tokens == [oprf.tokenize_with_key(secret, 1, k, *p) for k, p in PATIENTS[:4]]
        assert c.last_bad == {roster.pids[1]: "DLEQ proof failed"}
        # With the liar and one honest member down, only t-1 valid partials remain: a clear failure.
        c2 = OprfClient(nets[0], c.public, {roster.pids[1]: 2, roster.pids[2]: 3}, own_share=c.own_share)
        with pytest.raises(OprfError, match="DLEQ proof failed"):
            await c2.tokenize(PATIENTS[:1])


@pytest.mark.timeout(120)
async def test_an_over_rate_requester_is_refused_clearly_and_counted():
    roster, nets, services, client, secret = consortium(seed=160, rate=0.001, burst=10)
    async with running(*nets):
        c = client(0)
        assert len(await c.tokenize(PATIENTS[:10])) == 10  # within the burst
        with pytest.raises(OprfError, match="rate_limited"):
            await c.tokenize(PATIENTS[10:12])
        assert "rate limit exceeded" in " ".join(c.last_bad.values())
        # Members whose first request was cancelled once t answers were in were never charged and may answer
        # now; the call failed, so at least two (all but t-2 of the N-1 asked) refused, each both points.
        refusers = [s.refused[roster.pids[0]] for s in services if s.refused[roster.pids[0]]]
        assert len(refusers) >= N - 1 - (T - 2) and set(refusers) == {2}
        assert all(s.answered[roster.pids[0]] <= 10 for s in services)
        # Another member's budget is its own: hospital 2 is not slowed by hospital 0's excess.
        assert len(await client(2).tokenize(PATIENTS[:2])) == 2


@pytest.mark.timeout(120)
async def test_hostile_requests_get_an_error_and_the_member_keeps_serving():
    roster, nets, services, client, secret = consortium(seed=170)
    a, b = nets[0], nets[1]
    good = oprf.blind(b"x").element
    hostile = [
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 1, "epoch": 1, "points": []}),
        msgpack.packb({"v": 1, "epoch": 1, "points": [bytes(32)]}),
        msgpack.packb({"v": 1, "epoch": 1, "points": [b"\xff" * 32]}),
        msgpack.packb({"v": 1, "epoch": 1, "points": [good] * (MAX_POINTS + 1)}),
        msgpack.packb({"v": 1, "epoch": -1, "points": [good]}),
        msgpack.packb({"v": 1, "epoch": 1, "points": [good], "extra": 1}),
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\x91" * 100_000,  # deep nesting
    ]
    async with running(*nets):
        for payload in hostile:
            raw = await a.request(b.peer_id, CHANNEL, payload, timeout=10)
            with pytest.raises(OprfError, match="malformed"):
                decode_response(b.peer_id, raw)
        raw = await a.request(b.peer_id, CHANNEL, encode_request(9, [good]), timeout=10)
        with pytest.raises(OprfError, match="unknown_epoch"):
            decode_response(b.peer_id, raw)
        assert services[1].stats["malformed"] == len(hostile)
        assert services[1].answered[a.peer_id] == 0
        # still serving
        assert len(await client(0).tokenize(PATIENTS[:1])) == 1


def test_request_codec_round_trip_and_bounds():
    pts = [oprf.blind(b"%d" % i).element for i in range(3)]
    assert decode_request(encode_request(5, pts)) == (5, pts)
    with pytest.raises(OprfError):
        decode_request(encode_request(5, pts) + b"\x00" * 100_000)


def test_token_bucket():
    b = TokenBucket(rate=2.0, burst=10)
    assert b.take(10, now=0.0) == 0.0
    assert b.take(1, now=0.0) == pytest.approx(0.5)
    assert b.take(1, now=0.5) == 0.0
    assert b.take(11, now=100.0) == float("inf")  # more than a burst: never
    assert b.take(4, now=100.0) == 0.0 and b.take(6, now=100.0) == 0.0 and b.take(1, now=100.0) > 0
