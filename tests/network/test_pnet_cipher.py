"""The private-network layer's Salsa20 through libsodium is byte for byte the stream py-libp2p's pnet
(pycryptodome) reads and writes, however the stream is cut into messages: a node on this code and a peer
on stock py-libp2p, or on the code before it, must still understand each other."""

from __future__ import annotations

import pytest
from Crypto.Cipher import Salsa20
from hypothesis import given, settings
from hypothesis import strategies as st

from network import pnet


def test_libsodium_is_the_cipher_in_use():
    # the PyNaCl this project pins exports the function; if that ever changes the fallback is silent,
    # so say it here (bench.throughput's "private-network Salsa20" row would read 1.00x)
    assert isinstance(pnet.new_cipher(bytes(32), bytes(8)), pnet._SodiumSalsa20)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=8, max_size=8),
       chunks=st.lists(st.binary(max_size=300) | st.integers(min_value=0, max_value=70_000).map(bytes), max_size=12),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_same_keystream_as_pycryptodome_whatever_the_message_boundaries(key, nonce, chunks, kind):
    ours, theirs, reader = pnet.new_cipher(key, nonce), Salsa20.new(key=key, nonce=nonce), pnet.new_cipher(key, nonce)
    for chunk in chunks:
        sealed = ours.encrypt(kind(chunk))
        assert type(sealed) is bytes and sealed == theirs.encrypt(chunk)
        assert reader.decrypt(sealed) == chunk  # and it reads back


def test_a_stream_split_differently_by_the_reader_still_decrypts():
    # TCP regroups bytes: the writer's message boundaries are not the reader's
    key, nonce = bytes(range(32)), b"\x01" * 8
    data = bytes(range(256)) * 40
    writer = pnet.new_cipher(key, nonce)
    wire = b"".join(writer.encrypt(data[i:i + 97]) for i in range(0, len(data), 97))
    reader = Salsa20.new(key=key, nonce=nonce)
    assert b"".join(reader.decrypt(wire[i:i + 61]) for i in range(0, len(wire), 61)) == data
    ours = pnet.new_cipher(key, nonce)
    assert b"".join(ours.decrypt(wire[i:i + 61]) for i in range(0, len(wire), 61)) == data


def test_bad_key_or_nonce_sizes_are_refused():
    for key, nonce in ((bytes(31), bytes(8)), (bytes(32), bytes(24)), (bytes(32), bytes(7))):
        with pytest.raises(ValueError):
            pnet.new_cipher(key, nonce)
