"""Proposals, validation, execution into blocks, and what the store answers afterwards."""

from __future__ import annotations

import pytest
from ledger_helpers import CHAIN_ID, T0, Consortium
from nacl.signing import SigningKey

from consensus.certificate import Certificate
from node.ledger.block import APPLIED, DUPLICATE, REJECTED, Block, ProposalHeader
from node.ledger.chain import Chain, ChainError, ProposalError, proposal_digest
from node.ledger.merkle import merkle_root
from node.ledger.store import Store
from node.ledger.tx import tx_hash


def test_commit_blocks_and_query_indexes(consortium, chain, store):
    c = consortium
    txs = [c.tx(i % 4) for i in range(30)]
    b1 = c.commit(chain, txs[:20])
    b2 = c.commit(chain, txs[20:], proposer=1, view=3)
    assert store.height == 2 and store.head == b2.hash
    assert b2.header.prev_hash == b1.hash and b1.header.prev_hash == c.genesis.hash()
    assert b2.header.proposer == 1 and Certificate.decode(store.get_certificate(2)).view == 3
    assert store.get_block(1) == b1 and store.get_block_by_hash(b2.hash) == b2
    assert [b.height for b in store.blocks(1)] == [1, 2]
    h, i, raw = store.get_tx(b2.tx_hashes[4])
    assert (h, i, raw) == (2, 4, txs[24])
    # every applied tx is in the time index, in client-timestamp order
    entries, cursor = store.query("time", b"", limit=1000)
    assert len(entries) == 30 and cursor is None
    assert [e.ts for e in entries] == sorted(e.ts for e in entries)
    # member index
    entries, _ = store.query("member", "hosp-b")
    assert len(entries) == sum(1 for k in range(30) if k % 4 == 1)
    # patient index across members
    pat = c.pseudo.patient("PAT-3", "HOSP-A")
    got = {e.tx_hash for e in store.query("patient", pat)[0]}
    assert got and all(store.get_tx(x) for x in got)
    assert got == {h for b in (b1, b2) for h in b.tx_hashes
                   if chain_tx_field(store, h, "patient") == pat}
    # actor and type
    assert len(store.query("actor", c.pseudo.user("dr.smith"), limit=100)[0]) == 30
    assert len(store.query("type", "instances.accessed", limit=100)[0]) == 30


def chain_tx_field(store, h, name):
    from node.ledger.tx import decode_tx
    return decode_tx(store.get_tx(h)[2]).fields.get(name)


def test_query_pagination_and_time_window(consortium, chain, store):
    c = consortium
    c.commit(chain, [c.tx(0, ts=T0 + k) for k in range(25)])
    pages, cursor = [], None
    while True:
        page, cursor = store.query("member", "hosp-a", cursor=cursor, limit=10)
        pages.append(page)
        if cursor is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [e.ts for p in pages for e in p] == [T0 + k for k in range(25)]
    window, _ = store.query("member", "hosp-a", since_ms=T0 + 5, until_ms=T0 + 8)
    assert [e.ts for e in window] == [T0 + 5, T0 + 6, T0 + 7]


def test_duplicates_are_skipped_not_indexed_twice(consortium, chain, store):
    c = consortium
    a, b = c.tx(0), c.tx(1)
    c.commit(chain, [a])
    payload = chain.build_proposal(2, 0, T0, [b, a])
    chain.validate_proposal(2, payload, now_ms=T0)  # an already-committed tx may be re-proposed (pipelining)
    blk = chain.execute(payload, c.certificate(chain, payload, 2))
    assert blk.statuses == bytes([APPLIED, DUPLICATE])
    assert store.get_tx(blk.tx_hashes[1])[:2] == (1, 0)  # still points at its first inclusion
    assert len(store.query("time", b"")[0]) == 2


def test_proposal_digest_is_the_header_hash(consortium, chain):
    c = consortium
    txs = [c.tx(0), c.tx(1)]
    payload = chain.build_proposal(1, 2, T0, txs)
    from node.ledger.tx import tx_hash
    header = ProposalHeader(CHAIN_ID, 1, 2, T0, 2, merkle_root([tx_hash(t) for t in txs]))
    assert proposal_digest(payload) == header.digest() == chain.digest(payload)


@pytest.mark.parametrize("mutate, reason", [
    (lambda c, ch: ch.build_proposal(2, 0, T0, [c.tx(0)]), "height"),
    (lambda c, ch: ch.build_proposal(1, 9, T0, [c.tx(0)]), "proposer"),
    (lambda c, ch: ch.build_proposal(1, 0, T0 + 60_000, [c.tx(0)]), "timestamp"),
    (lambda c, ch: ch.build_proposal(1, 0, T0, [c.tx(0)] * 2), "twice"),
    (lambda c, ch: ch.build_proposal(1, 0, T0, [c.tx(0, signer=SigningKey(b"\x55" * 32))]), "not authorised"),
    (lambda c, ch: ch.build_proposal(1, 0, T0, [c.tx(0)[:-1] + b"\x00"]), "tx 0: signature"),
    (lambda c, ch: ch.build_proposal(1, 0, T0, [b"junk"]), "tx 0"),
    (lambda c, ch: b"\x92\xc4\x01\x00\x90", "proposal header"),
    (lambda c, ch: b"not msgpack at all", "payload"),
])
def test_validate_rejects(consortium, chain, mutate, reason):
    payload = mutate(consortium, chain)
    with pytest.raises(ProposalError, match=reason):
        chain.validate_proposal(1, payload, now_ms=T0)
    assert chain.validate(1, payload) is False


def test_validate_rejects_wrong_tx_root_and_count(consortium, chain):
    from node.ledger.block import encode_payload
    c = consortium
    txs = [c.tx(0), c.tx(1)]
    good = ProposalHeader.decode(__import__("msgpack").unpackb(chain.build_proposal(1, 0, T0, txs))[0])
    bad_root = ProposalHeader(CHAIN_ID, 1, 0, T0, 2, b"\x00" * 32)
    with pytest.raises(ProposalError, match="tx_root"):
        chain.validate_proposal(1, encode_payload(bad_root, txs), now_ms=T0)
    with pytest.raises(ProposalError, match="tx_count"):
        chain.validate_proposal(1, encode_payload(good, txs[:1]), now_ms=T0)


def test_execute_requires_a_valid_certificate(consortium, chain, store):
    c = consortium
    payload = chain.build_proposal(1, 0, T0, [c.tx(0)])
    with pytest.raises(ChainError, match="2 valid signatures, 3 needed"):
        chain.execute(payload, c.certificate(chain, payload, 1, signers=(0, 1)))
    other = chain.build_proposal(1, 0, T0, [c.tx(1)])
    with pytest.raises(ChainError, match="does not match"):
        chain.execute(payload, c.certificate(chain, other, 1))
    with pytest.raises(ChainError, match="certificate"):
        chain.execute(payload, b"garbage")
    assert store.height == 0
    chain.execute(payload, c.certificate(chain, payload, 1))  # not validated locally: decoded and verified here
    assert store.height == 1


def test_client_keys_and_consent_state(consortium, chain, store):
    c = consortium
    new_client = SigningKey(b"\x44" * 32)
    # hosp-b adds a client key with its member key; a tx signed by that key is then accepted
    add = c.tx(1, "client.added", subject_key=bytes(new_client.verify_key))
    blk = c.commit(chain, [add])
    assert blk.statuses == bytes([APPLIED]) and blk.header.state_root != store.initial_state_root()
    assert chain.state.authorized("hosp-b", bytes(new_client.verify_key))
    c.commit(chain, [c.tx(1, signer=new_client)])
    # a client key may not add clients: rejected at execution (kept in the block, no effect)
    sneaky = c.tx(1, "client.added", signer=new_client, subject_key=b"\x01" * 32)
    root_before = store.state_root
    blk = c.commit(chain, [sneaky])
    assert blk.statuses == bytes([REJECTED]) and store.state_root == root_before
    assert store.tx_status(blk.tx_hashes[0]) == REJECTED
    # consent registry
    pat = c.pseudo.patient("P9", "I")
    c.commit(chain, [c.tx(2, "consent.granted", patient=pat, grantee=c.pseudo.grantee("uni"), scope="ALL",
                          purpose="HRESCH")])
    assert len(list(store.state_items(b"consent/" + pat))) == 1
    c.commit(chain, [c.tx(2, "consent.revoked", patient=pat, grantee=c.pseudo.grantee("uni"), scope="ALL")])
    assert list(store.state_items(b"consent/" + pat)) == []


def test_member_added_needs_a_quorum_of_votes(consortium, chain):
    from consensus.certificate import quorum
    c = consortium
    newkey = bytes(SigningKey(b"\x66" * 32).verify_key)
    need = quorum(4)
    votes = [c.tx(i, "member.added", subject="hosp-e", subject_key=newkey) for i in range(need)]
    c.commit(chain, votes[:-1])
    assert "hosp-e" not in chain.state.members
    c.commit(chain, votes[-1:])
    assert chain.state.members["hosp-e"] == newkey and chain.state.authorized("hosp-e", newkey)
    # five members now: removal needs quorum(5) votes (consensus.certificate.quorum)
    removes = [c.tx(i, "member.removed", subject="hosp-e") for i in range(quorum(5))]
    c.commit(chain, removes[:-1])
    assert "hosp-e" in chain.state.members
    c.commit(chain, removes[-1:])
    assert "hosp-e" not in chain.state.members and not chain.state.authorized("hosp-e", newkey)


def test_reopen_restores_head_and_state(consortium, tmp_path):
    c = consortium
    s = Store(tmp_path / "db")
    ch = Chain(c.genesis, s)
    newc = SigningKey(b"\x45" * 32)
    c.commit(ch, [c.tx(3, "client.added", subject_key=bytes(newc.verify_key)), c.tx(0)])
    head, root = s.head, s.state_root
    s.close()
    s2 = Store(tmp_path / "db")
    ch2 = Chain(c.genesis, s2)
    assert (s2.height, s2.head, s2.state_root) == (1, head, root)
    assert ch2.state.authorized("hosp-d", bytes(newc.verify_key))
    blk = c.commit(ch2, [c.tx(3, signer=newc)])
    assert blk.header.prev_hash == head
    s2.close()
    other = Consortium()
    other.genesis = type(c.genesis)("other-chain", c.genesis.genesis_time, c.genesis.members, {})
    with pytest.raises(ChainError, match="another genesis"):
        Chain(other.genesis, Store(tmp_path / "db"))


def test_a_store_written_with_snappy_compression_opens_and_grows(consortium, tmp_path):
    """Stores before 2026-12-03 were written compressed (LevelDB's default); the store now writes
    uncompressed tables, and an upgraded node must read its old ones and go on."""
    import plyvel

    c = consortium
    s = Store(tmp_path / "db")
    first = [c.tx(i) for i in range(4)]
    c.commit(Chain(c.genesis, s), first)
    s.close()
    old = plyvel.DB(str(tmp_path / "db"), compression="snappy")
    old.compact_range()  # every table rewritten by the old code's options
    old.close()
    s = Store(tmp_path / "db")
    ch = Chain(c.genesis, s)
    assert s.height == 1 and [s.get_tx(tx_hash(r))[2] for r in first] == first
    c.commit(ch, [c.tx(0)])
    s.db.compact_range()
    assert s.height == 2 and s.get_tx(tx_hash(first[0]))[2] == first[0]
    s.close()


def test_store_payload_round_trip_for_sync(consortium, chain, store, tmp_path):
    c = consortium
    txs = [c.tx(i % 4) for i in range(7)]
    blk = c.commit(chain, txs)
    payload = store.get_payload(1)
    assert proposal_digest(payload) == blk.header.proposal_digest
    # a second node fed (payload, certificate) derives the identical block
    s2 = Store(tmp_path / "node2")
    ch2 = Chain(c.genesis, s2)
    blk2 = ch2.execute(payload, store.get_certificate(1))
    assert blk2 == blk and Block.decode(s2.get_block_record(1)) == blk
    s2.close()


def test_tx_proofs_verify_against_block_root(consortium, chain, store):
    c = consortium
    blk = c.commit(chain, [c.tx(i % 4) for i in range(13)])
    for h in blk.tx_hashes:
        proof = store.tx_proof(h)
        assert proof.height == 1 and proof.verify(h, blk.header.tx_root)
        assert not proof.verify(h, b"\x00" * 32)
    assert store.tx_proof(b"\x00" * 32) is None


def test_member_type_and_time_queries_merge_in_timestamp_order(consortium, chain, store):
    c = consortium
    txs = []
    for k in range(40):  # timestamps interleave across members and types
        tx_type = ("instances.accessed", "export", "query", "instances.stored")[k % 4]
        txs.append(c.tx(k % 3, tx_type, ts=T0 + 1000 - k * 7 % 23 * 10 + k))
    c.commit(chain, txs[:25])
    c.commit(chain, txs[25:])
    from node.ledger.tx import decode_tx
    fields = {decode_tx(t).hash: decode_tx(t).fields for t in txs}

    def collect(name, key, limit=7, **kw):
        out, cursor = [], None
        while True:
            page, cursor = store.query(name, key, cursor=cursor, limit=limit, **kw)
            out += page
            if cursor is None:
                return out

    everything = collect("time", b"")
    assert len(everything) == 40
    assert [(e.ts, e.height, e.index) for e in everything] == sorted((e.ts, e.height, e.index) for e in everything)
    for member in ("hosp-a", "hosp-b", "hosp-c", "hosp-d"):
        got = collect("member", member)
        assert {e.tx_hash for e in got} == {h for h, f in fields.items() if f["member"] == member}
        assert [e.ts for e in got] == sorted(e.ts for e in got)
    got = collect("type", "export", limit=3)
    assert {e.tx_hash for e in got} == {h for h, f in fields.items() if f["type"] == "export"}
    window = collect("time", b"", since_ms=T0 + 900, until_ms=T0 + 960)
    assert {e.tx_hash for e in window} == {h for h, f in fields.items() if T0 + 900 <= f["ts"] < T0 + 960}
    with pytest.raises(Exception, match="unknown index"):
        store.query("colour", b"x")


def test_check_tx_admits_once_and_refuses_foreign_or_unauthorised(consortium, chain):
    c = consortium
    raw = c.tx(0)
    tx = chain.check_tx(raw)
    assert chain.check_tx(raw) is tx  # cached: verified once
    from node.ledger.tx import TxError
    with pytest.raises(TxError, match="not authorised"):
        chain.check_tx(c.tx(0, signer=SigningKey(b"\x99" * 32)))
    from node.ledger.intake import make_tx
    foreign = make_tx("instances.accessed", c.keys[0], chain_id="other", member="hosp-a", ts=T0,
                      patient=b"p" * 16, study=b"s" * 16, user=b"u" * 16, purpose="TREAT", outcome=0, action="R")
    with pytest.raises(TxError, match="chain"):
        chain.check_tx(foreign)
    with pytest.raises(TxError):
        chain.check_tx(b"\x00")


@pytest.mark.parametrize("bits", [3, 27])  # 8 bits: every probe says "maybe", so the store decides
def test_duplicates_detected_across_restart_whatever_the_filter_says(consortium, tmp_path, bits):
    c = consortium
    s = Store(tmp_path / "db")
    ch = Chain(c.genesis, s, seen_filter_bits=bits)
    old = [c.tx(i % 4) for i in range(20)]
    c.commit(ch, old)
    s.close()
    s = Store(tmp_path / "db")
    ch = Chain(c.genesis, s, seen_filter_bits=bits)  # filter rebuilt from the stored tx keys
    new = [c.tx(i % 4) for i in range(20)]
    payload = ch.build_proposal(2, 0, T0, old[5:10] + new)
    blk = ch.execute(payload, c.certificate(ch, payload, 2))
    assert blk.statuses == bytes([DUPLICATE] * 5 + [APPLIED] * 20)
    assert len(s.query("time", b"", limit=1000)[0]) == 40
    s.close()


@pytest.mark.parametrize("bits", [3, 27])
def test_committed_lookups_through_the_filter_agree_with_the_store(consortium, tmp_path, bits):
    """Chain.committed_tx / has_committed (the RPC's and gossip's "already committed?") answer exactly what
    the store does, before and after a restart, whether the filter says "absent" or "maybe"."""
    c = consortium
    s = Store(tmp_path / "db")
    ch = Chain(c.genesis, s, seen_filter_bits=bits)
    old = [c.tx(i % 4) for i in range(20)]
    c.commit(ch, old)
    fresh = [c.tx(i % 4) for i in range(20)]
    for _ in range(2):
        for raw in old + fresh:
            h = tx_hash(raw)
            assert ch.committed_tx(h) == s.get_tx(h)
            assert ch.has_committed(h) is s.has_tx(h) is (raw in old)
        s.close()
        s = Store(tmp_path / "db")
        ch = Chain(c.genesis, s, seen_filter_bits=bits)
    s.close()


def test_index_type_codes_never_change():
    """The (member, type) index stores one code byte per tx type: stores on disk depend on these values."""
    from node.ledger.store import TYPE_CODES

    assert TYPE_CODES == {
        "instances.stored": 1, "instances.accessed": 2, "query": 3, "transfer.begin": 4,
        "instances.transferred": 5, "export": 6, "import": 7, "study.deleted": 8, "deidentified": 9,
        "consent.granted": 10, "consent.revoked": 11, "research.access.granted": 12, "member.added": 13,
        "member.removed": 14, "client.added": 15, "client.removed": 16, "evidence.equivocation": 17,
        "research.project.registered": 18, "research.project.approved": 19, "consent.vote": 20,
        "member.key_rotated": 21, "params.changed": 22, "oprf.counts": 23,
        "network.psk_rotated": 24,
        "oprf.dealing": 25,
    }
