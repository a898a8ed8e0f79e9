"""Permissioning: Noise only, PSK, and the peer-ID allow-list hold against real libp2p hosts."""

from __future__ import annotations

from contextlib import asynccontextmanager

import libp2p
import multiaddr
import pytest
import trio
from libp2p.crypto.ed25519 import Ed25519PrivateKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from network_testkit import PSK, Roster, free_port, running

from network import framing
from network.host import build_host
from network.peer_network import MSG_PROTOCOL, REQ_PROTOCOL
from network.security import NOISE_PROTOCOL_ID, noise_only_security


@asynccontextmanager
async def raw_host(host):
    """Run an attacker-controlled libp2p host on a free port."""
    async with host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")]):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await host.close()


async def _try_connect_and_inject(host, target, timeout: float = 4) -> str:
    """Dial target, open a message stream and write a DATA frame. Returns how far it got."""
    pid = ID.from_base58(target.peer_id)
    info = PeerInfo(pid, [multiaddr.Multiaddr(a) for a in target.listen_addrs])
    try:
        with trio.fail_after(timeout):
            await host.connect(info)
            stream = await host.new_stream(pid, [MSG_PROTOCOL])
            await stream.write(framing.encode_data("consensus", b"forged"))
            await stream.read(1)  # the target must reset it; a read that returns means it was not
            return "injected"
    except trio.TooSlowError:
        return "timeout"
    except Exception as e:
        return f"refused: {type(e).__name__}"


async def _assert_inbox_empty(net) -> None:
    with trio.move_on_after(0.3):
        item = await net.inbox.receive()
        pytest.fail(f"non-member traffic reached the inbox: {item}")


def test_only_noise_is_offered():
    r = Roster(1, seed=120)
    net = r.net(0)
    host = build_host(net.identity, {net.peer_id}, PSK, net.listen)
    offered = list(host.get_network().upgrader.security_multistream.transports)
    assert offered == [NOISE_PROTOCOL_ID]
    assert PLAINTEXT_PROTOCOL_ID not in offered


@pytest.mark.timeout(60)
async def test_non_member_with_valid_noise_can_neither_connect_nor_inject():
    r = Roster(2, seed=130)
    a, b = r.net(0), r.net(1)
    outsider = create_new_key_pair(b"\x99" * 32)
    # the outsider has the PSK and accepts everyone itself: only the allow-list can stop it
    host = build_host(outsider, set(r.pids) | {ID.from_pubkey(outsider.public_key).to_base58()}, PSK,
                      multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"))
    async with running(a, b), raw_host(host):
        outcome = await _try_connect_and_inject(host, a)
        assert outcome.startswith("refused") or outcome == "timeout", outcome
        assert a.stats["rejected_handshakes"] >= 1
        await _assert_inbox_empty(a)
        # members still talk
        assert a.send(b.peer_id, "tx", b"ok")
        with trio.fail_after(5):
            assert await b.inbox.receive() == (a.peer_id, "tx", b"ok")


@pytest.mark.timeout(60)
async def test_claiming_a_members_peer_id_without_its_key_is_refused():
    r = Roster(2, seed=140)
    a = r.net(0)
    victim_pub = r.keys[1].public_key  # the attacker knows the victim's public key only

    class ClaimedKey(Ed25519PrivateKey):  # signs with the attacker's key, presents the victim's
        def get_public_key(self):
            return victim_pub

    forged_priv = create_new_key_pair(b"\x77" * 32).private_key
    forged_priv.__class__ = ClaimedKey
    forged = KeyPair(forged_priv, victim_pub)
    assert ID.from_pubkey(forged.public_key).to_base58() == r.pids[1]
    own = create_new_key_pair(b"\x78" * 32)  # the swarm refuses a forged pair as its own identity
    any_port = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")

    def attacker(sec_transport):
        return libp2p.new_host(key_pair=own, psk=PSK.hex(), listen_addrs=[any_port], sec_opt=sec_transport)

    # 1) plaintext (no proof of possession): the target does not offer it at all
    plaintext = attacker({PLAINTEXT_PROTOCOL_ID: InsecureTransport(forged)})
    # 2) Noise with the forged key pair: the handshake signature does not verify against the victim key
    noise = attacker(noise_only_security(forged, set(r.pids)))

    # Control: the same plaintext attack against a host with libp2p's default security table succeeds,
    # and that host's stream handler believes it talks to the victim.
    default_host = libp2p.new_host(key_pair=create_new_key_pair(b"\x79" * 32), psk=PSK.hex(),
                                   listen_addrs=[any_port])
    seen = []

    async def handler(stream):
        seen.append(stream.muxed_conn.peer_id.to_base58())
        await stream.close()

    default_host.set_stream_handler(MSG_PROTOCOL, handler)
    async with raw_host(default_host), raw_host(attacker({PLAINTEXT_PROTOCOL_ID: InsecureTransport(forged)})) as h:
        pid = default_host.get_id()
        with trio.fail_after(5):
            await h.connect(PeerInfo(pid, default_host.get_addrs()))
            await (await h.new_stream(pid, [MSG_PROTOCOL])).write(b"x")
            while not seen:
                await trio.sleep(0.01)
        assert seen == [r.pids[1]]  # impersonation works against the default stack

    async with running(a, connect=False):
        for host in (plaintext, noise):
            async with raw_host(host):
                outcome = await _try_connect_and_inject(host, a)
                assert outcome.startswith("refused") or outcome == "timeout", outcome
        await _assert_inbox_empty(a)
        assert a.connected_peers() == []


@pytest.mark.timeout(60)
async def test_wrong_or_missing_psk_is_refused():
    r = Roster(2, seed=150)
    a = r.net(0)
    member_key = r.keys[1]  # a genuine member key, but the wrong network key
    async with running(a, connect=False):
        for psk in (bytes(32), None):
            host = build_host(member_key, set(r.pids), psk, multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"))
            async with raw_host(host):
                # a PSK mismatch garbles the multistream header: libp2p's dial hangs until its upgrade
                # timeout (~10 s per attempt), so a short bound is enough to show nothing gets through
                outcome = await _try_connect_and_inject(host, a, timeout=2.5)
                assert outcome.startswith("refused") or outcome == "timeout", outcome
        await _assert_inbox_empty(a)
        assert a.connected_peers() == []


@pytest.mark.timeout(30)
async def test_second_instance_on_same_port_is_refused(tmp_path):
    from network.host import PortInUse

    r = Roster(1, seed=160)
    a = r.net(0, lock_dir=str(tmp_path))
    async with running(a, connect=False):
        with pytest.raises(PortInUse):
            await r.net(0, lock_dir=str(tmp_path)).run()
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        with pytest.raises(PortInUse):  # a different lock dir still finds the live listener
            await r.net(0, lock_dir=str(other_dir)).run()


@pytest.mark.timeout(30)
async def test_streams_from_non_members_are_reset_even_past_the_handshake():
    # Defence in depth: should the allow-list ever let a non-member through (here we widen it on
    # purpose), every stream handler still checks muxed_conn.peer_id against the members.
    r = Roster(1, seed=190)
    outsider = create_new_key_pair(b"\x98" * 32)
    outsider_id = ID.from_pubkey(outsider.public_key).to_base58()
    a = r.net(0)
    a._allowed = a._allowed | {outsider_id}  # test-only: bypass the handshake gate
    host = build_host(outsider, {outsider_id, a.peer_id}, PSK, multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"))
    async with running(a, connect=False), raw_host(host):
        pid = ID.from_base58(a.peer_id)
        with trio.fail_after(5):
            await host.connect(PeerInfo(pid, [multiaddr.Multiaddr(a.listen_addrs[0])]))
        for proto in (MSG_PROTOCOL, REQ_PROTOCOL):
            # the stream is reset as soon as it is negotiated (the opener often sees new_stream fail)
            with trio.fail_after(5), pytest.raises((BaseLibp2pError, EOFError)):
                stream = await host.new_stream(pid, [proto])
                await stream.write(framing.encode_data("consensus", b"forged"))
                while await stream.read(1):
                    pass
                raise EOFError
        assert a.stats["rejected_streams"] == 2
        await _assert_inbox_empty(a)
