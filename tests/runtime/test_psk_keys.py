"""keys/psk.json (node.runtime.psk_keys): the PSKs a node learned survive a restart, stay private, and a
damaged file is an error that names it, not a silent fall-back to the old key."""

from __future__ import annotations

import json

import pytest

from node.runtime.psk_keys import PskKeys


def test_learned_psks_are_persisted_private_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "psk.json"
    keys = PskKeys(path)
    assert keys.learned == {}
    assert keys.add(b"\x01" * 32, b"\xaa" * 32, 17) and not keys.add(b"\x01" * 32, b"\xbb" * 32, 17)
    assert keys.add(b"\x02" * 32, b"\xcc" * 32, 33)
    assert path.stat().st_mode & 0o777 == 0o600
    again = PskKeys(path)  # a restart (after kill -9: the write was atomic and fsynced)
    assert again.keys == {b"\x01" * 32: (b"\xaa" * 32, 17), b"\x02" * 32: (b"\xcc" * 32, 33)}
    assert not list(path.parent.glob(".psk.json.*"))  # no temporary left behind


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"00": {"psk": "aa", "start": 1}}',
    json.dumps({"01" * 32: {"psk": "aa" * 31, "start": 1}}).encode(),
    json.dumps({"01" * 32: {"psk": "aa" * 32, "start": "1"}}).encode(),
    json.dumps({"01" * 32: {"psk": "aa" * 32}}).encode(),
    json.dumps({"zz" * 32: {"psk": "aa" * 32, "start": 1}}).encode(),
    b"{" * 100_000,
])
def test_a_damaged_key_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "psk.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="psk.json"):
        PskKeys(path)
