"""verify-chain and receipts: a clean chain verifies; any flipped byte is found at its height; a writer
killed with SIGKILL at an arbitrary instant leaves a store that reopens and verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ledger_helpers import Consortium, build_home

from node.cli import main as cli
from node.ledger.store import Store
from node.ledger.verifier import (
    Receipt,
    ReceiptError,
    VerifyError,
    make_receipt,
    verify_chain,
    verify_receipt,
)

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def verify(home, **kw) -> int:
    with Store(home / "data" / "chain", create=False) as s:
        return verify_chain(s, Consortium().genesis, **kw)


def flip(home, key: bytes, offset: int) -> None:
    with Store(home / "data" / "chain", create=False) as s:
        value = bytearray(s.db.get(key))
        value[offset % len(value)] ^= 0x01
        s.db.put(key, bytes(value))


def test_clean_chain_verifies_with_cli(tmp_path, consortium, capsys):
    home = build_home(tmp_path, consortium)
    assert cli(["verify-chain", "--home", str(home)]) == 0
    assert "OK, 5 blocks" in capsys.readouterr().out


def test_every_flipped_byte_of_a_block_is_found_at_its_height(tmp_path, consortium):
    home = build_home(tmp_path, consortium, blocks=4, per_block=3)
    key = b"B" + (3).to_bytes(8, "big")
    with Store(home / "data" / "chain", create=False) as s:
        original = s.db.get(key)
        for offset in range(len(original)):
            value = bytearray(original)
            value[offset] ^= 0x01
            s.db.put(key, bytes(value))
            with pytest.raises(VerifyError) as info:
                verify_chain(s, consortium.genesis, signatures=False)
            assert info.value.height == 3, (offset, info.value)
        s.db.put(key, original)
        assert verify_chain(s, consortium.genesis) == 4


def test_cli_names_the_height_of_a_tampered_block(tmp_path, consortium, capsys):
    home = build_home(tmp_path, consortium)
    flip(home, b"B" + (4).to_bytes(8, "big"), 60)
    assert cli(["verify-chain", "--home", str(home)]) == 1
    assert "FAILED at height 4" in capsys.readouterr().out


@pytest.mark.parametrize("what, height", [("tx", 2), ("certificate", 2), ("index", 2), ("state", 3),
                                          ("head", 5)])
def test_tampered_records_are_found(tmp_path, consortium, what, height):
    home = build_home(tmp_path, consortium)
    with Store(home / "data" / "chain", create=False) as s:
        block = s.get_block(2)
        assert block is not None
        if what == "tx":  # a byte inside the body/signature of a tx of block 2
            value = bytearray(s.db.get(b"T" + block.tx_hashes[1]))
            value[-10] ^= 1
            s.db.put(b"T" + block.tx_hashes[1], bytes(value))
        elif what == "certificate":
            value = bytearray(s.db.get(b"C" + (2).to_bytes(8, "big")))
            value[-5] ^= 1
            s.db.put(b"C" + (2).to_bytes(8, "big"), bytes(value))
        elif what == "index":  # drop the patient-index entry of a tx of block 2
            key = next(k for k in s.db.iterator(prefix=b"Ip", include_value=False)
                       if k[-12:] == (2).to_bytes(8, "big") + (0).to_bytes(4, "big"))
            s.db.delete(key)
        elif what == "state":  # the client key registered by the client.added tx of block 3
            s.db.put(b"Sclient/" + b"\x33" * 32, b"mallory")
        else:
            value = bytearray(s.db.get(b"Mhead"))
            value[20] ^= 1
            s.db.put(b"Mhead", bytes(value))
    with pytest.raises(VerifyError) as info:
        verify(home)
    assert info.value.height == height, info.value


def test_receipts_verify_offline(tmp_path, consortium):
    home = build_home(tmp_path, consortium, blocks=2, per_block=5)
    with Store(home / "data" / "chain", create=False) as s:
        h = s.get_block(2).tx_hashes[3]
        receipt = Receipt.decode(make_receipt(s, h).encode())
    tx, header = verify_receipt(receipt, consortium.genesis.member_pubkeys, "radchain-test")
    assert tx.hash == h and header.height == 2
    bad = Receipt(receipt.tx, receipt.index + 1, receipt.path, receipt.proposal_header, receipt.certificate)
    with pytest.raises(ReceiptError, match="Merkle"):
        verify_receipt(bad, consortium.genesis.member_pubkeys, "radchain-test")
    others = tuple(bytes([k]) * 32 for k in range(4))
    with pytest.raises(ReceiptError, match="certificate"):
        verify_receipt(receipt, others, "radchain-test")


@pytest.mark.parametrize("change", [
    {"tx": 2**32},                   # bytes(2**32) would allocate 4 GiB
    {"header": 2**40}, {"cert": [1, 2]}, {"index": -1}, {"index": 2**64 - 1}, {"index": "3"},
    {"path": [2**32]}, {"path": [b"\x00" * 31]}, {"path": "x"}, {"extra": 1},
])
def test_hostile_binary_receipts_are_refused_without_allocating(change):
    import msgpack
    m = {"tx": b"t", "index": 0, "path": [b"\x00" * 32], "header": b"h", "cert": b"c"}
    m.update(change)
    with pytest.raises(ReceiptError, match="undecodable"):
        Receipt.decode(msgpack.packb(m, use_bin_type=True))
    with pytest.raises(ReceiptError, match="undecodable"):
        Receipt.decode(msgpack.packb([m], use_bin_type=True))


def test_kill_9_mid_stream_leaves_a_consistent_store(tmp_path, consortium):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    consortium.genesis.save(home / "genesis.json")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    survived = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), str(home), "40"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        try:
            target = survived + 4 + round_  # kill at a different point of the stream each round
            last = survived
            while last < target:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                last = int(line.split()[1])
            os.kill(proc.pid, signal.SIGKILL)  # while it is building/writing the next block
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with Store(home / "data" / "chain", create=False) as s:
            assert s.height >= last  # every block reported written survived
            assert verify_chain(s, consortium.genesis) == s.height
            survived = s.height
    result = subprocess.run([sys.executable, "-m", "node.cli", "verify-chain", "--home", str(home)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK, {survived} blocks" in result.stdout


@pytest.mark.parametrize("index", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_json_receipt_with_a_non_finite_index_is_malformed_not_a_crash(tmp_path, index):
    from node.ledger.verifier import load_receipt

    path = tmp_path / "r.json"
    path.write_text('{"tx": "00", "index": ' + index + ', "path": [], "proposal_header": "", "certificate": ""}')
    with pytest.raises(ReceiptError, match="malformed receipt"):
        load_receipt(path)
