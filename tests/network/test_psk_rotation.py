"""PSK rotation without a stop (network.pnet): real py-libp2p hosts on 127.0.0.1 accept a set of PSKs,
dial with the preferred one, fall back to an older one, and refuse a retired one."""

from __future__ import annotations

import os

import pytest
import trio
from network_testkit import PSK, Roster, running, wait_for

from network.pnet import MAX_ACCEPTED, PskRing, fingerprint

NEW = bytes(range(100, 132))


async def _roundtrip(a, b, payload: bytes) -> None:
    assert a.send(b.peer_id, "consensus", payload)
    with trio.fail_after(10):
        while True:
            sender, channel, got = await b.inbox.receive()
            if got == payload:
                assert (sender, channel) == (a.peer_id, "consensus")
                return


def _all_under(net, key: bytes) -> bool:
    conns = net.psk_status()["connections"]
    return bool(conns) and set(conns) == {fingerprint(key)}


@pytest.mark.timeout(60)
async def test_rotation_overlap_then_drop_moves_every_connection_to_the_new_key():
    r = Roster(3, seed=210)
    a, b, c = r.net(0), r.net(1), r.net(2)  # c keeps only the old key: a member that left, say
    async with running(a, b):
        await _roundtrip(a, b, b"before")
        for net in (a, b):  # both learned the new key: accept both, prefer the new one
            assert net.set_psks([PSK, NEW], NEW) == 0  # nothing is retired yet
        await _roundtrip(b, a, b"overlap")
        for net in (a, b):  # the drop height: connections under the old key are closed and redialled
            net.set_psks([NEW], NEW)
        await wait_for(lambda: _all_under(a, NEW) and _all_under(b, NEW)
                       and b.peer_id in a.connected_peers() and a.peer_id in b.connected_peers(), timeout=20)
        await _roundtrip(a, b, b"after")
        refused_before = a.psk_ring.stats["refused"]
        async with running(c, connect=False):
            # c dials a and b with the retired key: refused at the first bytes, again and again
            await wait_for(lambda: a.psk_ring.stats["refused"] > refused_before, timeout=10)
            assert c.peer_id not in a.connected_peers() and c.peer_id not in b.connected_peers()
            assert c.connected_peers() == []
        await _roundtrip(b, a, b"still fine")


@pytest.mark.timeout(60)
async def test_a_node_that_prefers_the_new_key_falls_back_to_the_old_one_for_a_peer_that_lags():
    r = Roster(2, seed=220)
    a, b = r.net(0), r.net(1)
    a.set_psks([PSK, NEW], NEW)  # a committed the rotation and passed the boundary, b has not yet
    async with running(a, b, timeout=20):
        await _roundtrip(a, b, b"x")
        await _roundtrip(b, a, b"y")
        # a's dial under the new key was refused by b at its first bytes; the redial used the old key
        assert a.psk_ring.stats["dial_fallbacks"] >= 1 and b.psk_ring.stats["refused"] >= 1
        assert _all_under(a, PSK) and _all_under(b, PSK)  # b only knows the old key


@pytest.mark.timeout(60)
async def test_garbage_instead_of_a_nonce_does_not_stop_the_listener():
    r = Roster(2, seed=230)
    a, b = r.net(0), r.net(1)
    async with running(a, connect=False):
        port = int(a.listen.value_for_protocol("tcp"))
        for junk in (os.urandom(64), b"\x00" * 3, os.urandom(4096), b""):
            with trio.fail_after(10):
                sock = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    if junk:
                        await sock.send_all(junk)
                    await sock.send_eof()
                    while await sock.receive_some(4096):  # a closes it; it never answers in clear
                        pass
                except trio.BrokenResourceError:
                    pass
                finally:
                    await sock.aclose()
        assert a.psk_ring.stats["refused"] >= 2  # 64 and 4096 random bytes: no key decrypts them
        async with running(b, connect=False):  # and a genuine member still gets in
            await wait_for(lambda: b.peer_id in a.connected_peers() and a.peer_id in b.connected_peers(), 20)
            await _roundtrip(b, a, b"hello")


def test_ring_refuses_malformed_key_sets():
    ring = PskRing([PSK], PSK)
    for accept, prefer in (([PSK], NEW), ([PSK[:31]], PSK[:31]), ([PSK, NEW], b"x" * 33),
                           ([bytes([i]) * 32 for i in range(MAX_ACCEPTED + 1)], bytes(32))):
        with pytest.raises(ValueError):
            ring.set(accept, prefer)
    assert ring.accepted == (PSK,) and ring.prefer == PSK  # unchanged
    ring.set([PSK, NEW], NEW)
    assert ring.accepted == (NEW, PSK)
    assert ring.dial_key(("127.0.0.1", 1)) == NEW
    ring.dial_failed(("127.0.0.1", 1), NEW)
    assert ring.dial_key(("127.0.0.1", 1)) == PSK  # next dial to that address: the older key
    ring.dial_failed(("127.0.0.1", 1), PSK)
    assert ring.dial_key(("127.0.0.1", 1)) == NEW  # round the ring
    assert ring.dial_key(("127.0.0.1", 2)) == NEW
