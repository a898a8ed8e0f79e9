"""The ports tests and benchmarks listen on are never ones an outgoing connection can take meanwhile."""

from __future__ import annotations

import socket

from node.testnet import free_base_port, free_ports


def _ephemeral_range() -> range:
    lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    return range(lo, hi + 1)


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    ephemeral = _ephemeral_range()
    ports = free_ports(50) + free_ports(50)
    base = free_base_port(8)
    ports += list(range(base, base + 8))
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    assert not [p for p in ports if p in ephemeral]
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_handed_out_recently_is_never_handed_out_again(monkeypatch):
    """Past half the range the oldest ports are forgotten, never the ones just handed out (a caller may not
    have bound them yet): in a range of 40, each port differs from the 10 handed out before it."""
    import node.testnet as tn

    monkeypatch.setattr(tn, "_ISSUED_PORTS", {})
    monkeypatch.setattr(tn, "_TEST_PORT_LOW", 23000)
    monkeypatch.setattr(tn, "_TEST_PORT_HIGH", 23040)
    issued = [tn.free_port() for _ in range(200)]
    for i, port in enumerate(issued):
        assert port not in issued[max(0, i - 10):i], (i, port)
