"""Framing is sans I/O: round trips under any split, and garbage yields FrameError, nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network import framing

channels = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
frames = st.lists(
    st.one_of(
        st.tuples(st.just("data"), channels, st.binary(max_size=300)),
        st.tuples(st.just("req"), channels, st.binary(max_size=300)),
        st.tuples(st.sampled_from(["ping", "pong", "resp", "err"]), st.just(""), st.binary(max_size=300)),
    ),
    max_size=20,
)
_KIND = {"ping": framing.PING, "pong": framing.PONG, "resp": framing.RESP, "err": framing.ERR}


def _encode(kind, ch, payload):
    if kind == "data":
        return framing.encode_data(ch, payload)
    if kind == "req":
        return framing.encode_req(ch, payload)
    return framing.encode(_KIND[kind], payload)


@settings(max_examples=200, deadline=None)
@given(frames, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50))
def test_round_trip_under_any_split(items, cuts):
    wire = b"".join(_encode(*it) for it in items)
    dec = framing.FrameDecoder()
    out, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out += dec.feed(wire[pos : pos + step])
        pos += step
        i += 1
    assert dec.error is None and dec.buffered == 0
    assert len(out) == len(items)
    for (kind, body), (k, ch, payload) in zip(out, items, strict=True):
        if k in ("data", "req"):
            assert kind == (framing.DATA if k == "data" else framing.REQ)
            assert framing.parse_channel_body(body) == (ch, payload)
        else:
            assert (kind, body) == (_KIND[k], payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_frame_error(junk):
    dec = framing.FrameDecoder(max_frame=1024)
    for kind, body in dec.feed(junk):
        if kind in (framing.DATA, framing.REQ):
            try:
                framing.parse_channel_body(body)
            except framing.FrameError:
                pass
    if dec.error is not None:
        with pytest.raises(framing.FrameError):
            dec.feed(b"")


def test_limits():
    dec = framing.FrameDecoder()
    assert dec.feed(struct.pack(">IB", framing.MAX_FRAME + 1, framing.DATA)) == []
    assert isinstance(dec.error, framing.FrameError)
    with pytest.raises(ValueError):
        framing.encode_data("tx", b"x" * framing.MAX_FRAME)
    for bad in ("", "a b", "é", "x" * 256, "tab\t"):
        with pytest.raises(ValueError):
            framing.check_channel(bad)
    # valid frames before the garbage are returned
    good = framing.encode_data("tx", b"ok")
    dec = framing.FrameDecoder()
    assert dec.feed(good + b"\x00\x00\x00\x02\x63zz") == [(framing.DATA, b"\x02txok")]
    assert dec.error is not None


def test_channel_length_is_checked_even_for_known_channels():
    framing.parse_channel_body(b"\x02txok")  # "tx" is now a known channel
    for bad in (b"\x09tx", b"\x03tx", b"\x00tx"):
        with pytest.raises(framing.FrameError):
            framing.parse_channel_body(bad)
