"""Gossip with signature checks in a worker thread (TxGossip.on_batch_threaded, node.ledger.sigbatch): the
same outcomes as the inline path for every mix of valid, forged, foreign, malformed, repeated and committed
txs, and the verified-tx cache it fills never vouches for a forgery (a proposal carrying one is refused)."""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

sys.path.insert(0, str(next(Path(__file__).parents[1].rglob("ledger_helpers.py")).parent))
from ledger_helpers import T0, Consortium  # noqa: E402

from node.ledger.chain import Chain, ProposalError  # noqa: E402
from node.ledger.sigbatch import verify_txs  # noqa: E402
from node.ledger.store import Store  # noqa: E402
from node.ledger.tx import decode_tx, tx_hash  # noqa: E402
from node.runtime.gossip import TxGossip  # noqa: E402
from node.runtime.mempool import Mempool  # noqa: E402
from node.runtime.peerscore import PeerScores  # noqa: E402
from node.runtime.settings import MempoolConfig  # noqa: E402

C = Consortium()
STRANGER = SigningKey(b"\x99" * 32)


class Member:
    def __init__(self, path: Path):
        self.store = Store(path / "chain")
        self.chain = Chain(C.genesis, self.store)
        self.mempool = Mempool(path / "mempool", 1000)
        self.admitted = 0
        self.gossip = TxGossip(lambda ch, data: 3, self.chain, self.mempool, MempoolConfig(),
                               on_admitted=self.on_admitted, scores=PeerScores(log_interval=10.0))

    def on_admitted(self) -> None:
        self.admitted += 1

    def close(self) -> None:
        self.mempool.close()
        self.store.close()


def forge(raw: bytes, at: int = -1) -> bytes:
    b = bytearray(raw)
    b[at] ^= 1
    return bytes(b)


# One pool of txs the property draws from: valid ones from every member, forgeries of them (signature
# and body bytes flipped), a well-signed tx of an unregistered key, garbage, and one tx committed before.
VALID = [C.tx(i % 4) for i in range(6)]
POOL = VALID + [forge(VALID[0]), forge(VALID[1], 20), C.tx(2, signer=STRANGER), b"\xc1junk", b""]
COMMITTED = C.tx(3)


def outcome(m: Member) -> tuple:
    return (sorted(raw for raw in set(POOL) if tx_hash(raw) in m.mempool), m.gossip.stats["txs_admitted"],
            m.gossip.stats["txs_refused"], m.gossip.scores.score("peer-a") > 0, m.admitted)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.sampled_from(POOL + [COMMITTED]), max_size=12), min_size=1, max_size=4))
async def test_threaded_and_inline_checks_admit_and_refuse_the_same_txs(tmp_path_factory, batches):
    inline, threaded = (Member(tmp_path_factory.mktemp(name)) for name in ("inline", "threaded"))
    try:
        for m in (inline, threaded):
            C.commit(m.chain, [COMMITTED])
        for batch in batches:
            frame = msgpack.packb(batch, use_bin_type=True)
            inline.gossip.on_batch("peer-a", frame)
            await threaded.gossip.on_batch_threaded("peer-a", frame)
        assert outcome(threaded) == outcome(inline)
        admitted = set(outcome(threaded)[0])
        assert admitted <= set(VALID)  # never a forgery, a stranger's tx or a committed one
        assert admitted == {raw for b in batches for raw in b if raw in VALID}
    finally:
        inline.close()
        threaded.close()


def grouped_outcome(m: Member) -> tuple:
    return (sorted(raw for raw in set(POOL) if tx_hash(raw) in m.mempool), m.gossip.stats["txs_admitted"],
            m.gossip.scores.score("peer-a") > 0, m.gossip.scores.score("peer-b") > 0, m.admitted > 0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.sampled_from(["peer-a", "peer-b"]),
                                  st.lists(st.sampled_from(POOL + [COMMITTED]), max_size=12)
                                  | st.just(None)),  # None: a malformed frame
                        min_size=1, max_size=6))
async def test_batches_checked_together_end_as_if_checked_one_by_one(tmp_path_factory, batches):
    """The node's gossip loop hands the batches waiting together to one worker-thread call
    (on_batches_threaded): the same txs are admitted, and each member is scored for its own batches only."""
    one, group = (Member(tmp_path_factory.mktemp(name)) for name in ("one", "group"))
    try:
        for m in (one, group):
            C.commit(m.chain, [COMMITTED])
        frames = [(peer, b"\xc1" if b is None else msgpack.packb(b, use_bin_type=True)) for peer, b in batches]
        for peer, frame in frames:
            await one.gossip.on_batch_threaded(peer, frame)
        await group.gossip.on_batches_threaded(frames)
        assert grouped_outcome(group) == grouped_outcome(one)
        assert set(grouped_outcome(group)[0]) <= set(VALID)
    finally:
        one.close()
        group.close()


async def test_a_forgery_is_neither_admitted_nor_cached_so_a_proposal_carrying_it_is_refused(tmp_path):
    m = Member(tmp_path)
    try:
        good, forged = VALID[0], forge(VALID[1])
        await m.gossip.on_batch_threaded("peer-a", msgpack.packb([forged, good], use_bin_type=True))
        assert tx_hash(good) in m.mempool and tx_hash(forged) not in m.mempool
        assert m.chain.verified(tx_hash(good)) is not None
        assert m.chain.verified(tx_hash(forged)) is None
        assert m.gossip.scores.score("peer-a") > 0
        payload = m.chain.build_proposal(1, 0, T0, [good, forged])
        with pytest.raises(ProposalError, match="signature"):
            m.chain.validate_proposal(1, payload, now_ms=T0)
        m.chain.validate_proposal(1, m.chain.build_proposal(1, 0, T0, [good]), now_ms=T0)
    finally:
        m.close()


def test_verify_txs_checks_each_signature_against_its_own_body():
    txs = [decode_tx(r, verify=False) for r in VALID[:2]]
    # the signature of one tx on the body of another, under the same key: not a valid tx
    swapped = decode_tx(msgpack.packb([txs[0].body, txs[1].sig], use_bin_type=True), verify=False)
    assert verify_txs([*txs, swapped]) == [True, True, False]


async def test_a_tx_a_proposal_brought_first_is_not_checked_again_when_its_gossip_copy_arrives(tmp_path,
                                                                                                monkeypatch):
    """The primary proposes its clients' txs as it gossips them, so a replica often checks a tx's signature
    in validate_proposal before the gossip copy arrives; that copy must not be checked a second time (it
    was, for about a sixth of each replica's txs: bench.throughput). A forgery in a proposal is cached by
    nothing, so its gossip copy is still checked and refused; a well-signed tx of a key no member registered,
    which a Byzantine primary proposes, is cached as well-signed, and its gossip copy is still refused."""
    import node.ledger.sigbatch as sigbatch

    m = Member(tmp_path)
    checked = []
    real = sigbatch.verify_tx
    monkeypatch.setattr(sigbatch, "verify_tx", lambda body, sig, client, proof=b"": (checked.append(sig), real(body, sig, client, proof)))
    try:
        proposed, forged = VALID[2], forge(VALID[3])
        m.chain.validate_proposal(1, m.chain.build_proposal(1, 0, T0, [proposed]), now_ms=T0)
        with pytest.raises(ProposalError, match="signature"):
            m.chain.validate_proposal(1, m.chain.build_proposal(1, 0, T0, [forged]), now_ms=T0)
        stranger = C.tx(2, signer=STRANGER)
        with pytest.raises(ProposalError):
            m.chain.validate_proposal(1, m.chain.build_proposal(1, 0, T0, [stranger]), now_ms=T0)
        assert m.chain.verified(tx_hash(proposed)) is not None and m.chain.verified(tx_hash(forged)) is None
        await m.gossip.on_batch_threaded("peer-a", msgpack.packb([proposed, forged, stranger], use_bin_type=True))
        assert tx_hash(proposed) in m.mempool and tx_hash(forged) not in m.mempool
        assert tx_hash(stranger) not in m.mempool  # authorisation is judged again, the cache vouches for bytes only
        assert checked == [decode_tx(forged, verify=False).sig]  # neither cached tx was checked again
        assert m.gossip.scores.score("peer-a") > 0  # the forgery still counts against its sender
    finally:
        m.close()


def test_verify_txs_skips_what_the_event_loop_verified_meanwhile_and_only_that(monkeypatch):
    """A batch waits in the worker thread while the event loop checks a proposal naming some of its txs:
    those are not checked again; the others are, a forgery still fails."""
    import node.ledger.sigbatch as sigbatch

    txs = [decode_tx(r, verify=False) for r in (VALID[0], VALID[1], forge(VALID[2]))]
    known = {txs[0].hash: txs[0]}
    checked = []
    real = sigbatch.verify_tx
    monkeypatch.setattr(sigbatch, "verify_tx", lambda body, sig, client, proof=b"": (checked.append(sig), real(body, sig, client, proof)))
    assert verify_txs(txs, known.get) == [True, True, False]
    assert checked == [txs[1].sig, txs[2].sig]


def test_a_tx_the_worker_thread_checked_is_not_checked_again_by_a_proposal_before_its_batch_is_taken(
        tmp_path, monkeypatch):
    """The worker thread caches each tx as soon as its signature verifies (not when the event loop takes the
    batch's results), so a proposal the event loop validates in between does not check it again; a forgery
    is cached by nothing and the proposal carrying it is refused."""
    import node.ledger.tx as txmod

    m = Member(tmp_path)
    checks = []
    real = txmod._sign_open
    monkeypatch.setattr(txmod, "_sign_open", lambda signed, client: (checks.append(1), real(signed, client))[1])
    try:
        raws = [VALID[0], VALID[1], forge(VALID[2])]
        txs = [decode_tx(r, verify=False) for r in raws]
        assert verify_txs(txs, m.chain.verified, m.chain.remember_verified) == [True, True, False]
        assert len(checks) == 3
        m.chain.validate_proposal(1, m.chain.build_proposal(1, 0, T0, raws[:2]), now_ms=T0)
        assert len(checks) == 3  # both came from the cache the worker thread filled
        assert m.chain.verified(txs[2].hash) is None
        with pytest.raises(ProposalError, match="signature"):
            m.chain.validate_proposal(1, m.chain.build_proposal(1, 0, T0, raws), now_ms=T0)
    finally:
        m.close()
