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
