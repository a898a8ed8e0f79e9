"""Ledger state (node/ledger/state.py): the member/client registry and its votes.

What a member relies on: the registry changes only by a quorum of current members voting with their member
keys; every member sees the same writes and the same state root for the same txs (execution is
deterministic); and a node that restarts rebuilds exactly the state it had from the stored writes."""

from __future__ import annotations

import hashlib

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from consensus.certificate import quorum
from node.ledger.genesis import Genesis, Member
from node.ledger.intake import make_tx
from node.ledger.state import STATE_DOMAIN, LedgerState, consent_key, next_state_root
from node.ledger.tx import decode_tx

CHAIN = "radchain-state-test"
MEMBER_KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
CLIENT_KEYS = [SigningKey(bytes([0x40 + i]) * 32) for i in range(4)]  # one extra client key per member
NEWCOMER_KEYS = [SigningKey(bytes([0x80 + i]) * 32) for i in range(3)]
NAMES = ["hosp-a", "hosp-b", "hosp-c", "hosp-d"]
NEW_NAMES = ["hosp-e", "hosp-f", "hosp-g"]
PATIENT = b"P" * 16


def _genesis() -> Genesis:
    members = tuple(Member(n, bytes(k.verify_key), f"peer{i}", (f"/ip4/127.0.0.1/tcp/{7000 + i}",),
                           f"http://127.0.0.1:{8000 + i}", (bytes(CLIENT_KEYS[i].verify_key),))
                    for i, (n, k) in enumerate(zip(NAMES, MEMBER_KEYS, strict=True)))
    return Genesis(CHAIN, "2026-11-27T00:00:00+00:00", members, {})


GENESIS = _genesis()
_nonce = iter(range(1 << 30))


def tx(tx_type: str, member: str, key: SigningKey, **fields):
    raw = make_tx(tx_type, key, chain_id=CHAIN, member=member, ts=1_800_000_000_000,
                  nonce=next(_nonce).to_bytes(16, "big"), **fields)
    return decode_tx(raw)


def run(state: LedgerState, txs, height: int | None = None) -> tuple[list, list[bool]]:
    """Apply txs as one block's execution does: an unauthorised signer is rejected before the state sees it.
    Each call is the next block (membership changes take effect relative to it) unless `height` says which
    block the txs belong to."""
    state.height = state.height + 1 if height is None else height
    writes, applied = [], []
    for t in txs:
        f = t.fields
        ok = state.authorized(f["member"], f["client"]) and state.apply(t, t.hash, writes)
        applied.append(ok)
    return writes, applied


def stored_view(genesis_writes, *blocks) -> dict:
    """What the store holds: the last write of each key (None deletes)."""
    kv = dict(genesis_writes)
    for writes in blocks:
        for k, v in writes:
            if v is None:
                kv.pop(k, None)
            else:
                kv[k] = v
    return kv


def same_state(a: LedgerState, b: LedgerState) -> bool:
    return (a.members, a.client_of, a.votes, a.root) == (b.members, b.client_of, b.votes, b.root)


def test_a_member_is_added_only_by_a_quorum_of_distinct_member_keys():
    state, _ = LedgerState.from_genesis(GENESIS)
    new_key = bytes(NEWCOMER_KEYS[0].verify_key)
    vote = dict(subject="hosp-e", subject_key=new_key)
    assert quorum(4) == 3
    # the same member voting three times, and a member's client key (not its member key), do not count
    _, applied = run(state, [tx("member.added", "hosp-a", MEMBER_KEYS[0], **vote),
                             tx("member.added", "hosp-a", MEMBER_KEYS[0], **vote),
                             tx("member.added", "hosp-b", CLIENT_KEYS[1], **vote),
                             tx("member.added", "hosp-b", MEMBER_KEYS[1], **vote)])
    assert applied == [True, True, False, True]
    assert "hosp-e" not in state.members and not state.authorized("hosp-e", new_key)
    writes, applied = run(state, [tx("member.added", "hosp-c", MEMBER_KEYS[2], **vote)])
    assert applied == [True]
    assert state.members["hosp-e"] == new_key and state.authorized("hosp-e", new_key)
    assert state.votes == {}  # the applied vote is gone, and its stored record deleted
    assert any(k.startswith(b"vote/") and v is None for k, v in writes)
    # the newcomer may now vote with its member key, and is counted in the next quorum (3 of 5 -> 4 of 5)
    assert quorum(5) == 4


def test_removing_a_member_revokes_all_its_keys_and_the_member_key_cannot_be_removed_alone():
    state, _ = LedgerState.from_genesis(GENESIS)
    d_member, d_client = bytes(MEMBER_KEYS[3].verify_key), bytes(CLIENT_KEYS[3].verify_key)
    _, applied = run(state, [tx("client.removed", "hosp-d", MEMBER_KEYS[3], subject_key=d_member),
                             tx("client.removed", "hosp-d", CLIENT_KEYS[3], subject_key=d_client),
                             tx("client.removed", "hosp-a", MEMBER_KEYS[0], subject_key=d_client)])
    assert applied == [False, False, False]  # own member key; a client key asking; another member's key
    assert state.authorized("hosp-d", d_client)
    run(state, [tx("member.removed", NAMES[i], MEMBER_KEYS[i], subject="hosp-d") for i in range(3)])
    assert "hosp-d" not in state.members
    assert not state.authorized("hosp-d", d_member) and not state.authorized("hosp-d", d_client)
    # hosp-d's txs are now refused before the state sees them
    assert run(state, [tx("consent.granted", "hosp-d", MEMBER_KEYS[3], patient=PATIENT, grantee=b"\x0d" * 16,
                          scope="ALL", purpose="TREAT")])[1] == [False]


def test_consent_grant_and_revoke_write_their_keys_and_the_root_follows_the_writes():
    state, genesis_writes = LedgerState.from_genesis(GENESIS)
    grant = tx("consent.granted", "hosp-a", CLIENT_KEYS[0], patient=PATIENT, grantee=b"\x0e" * 16, scope="IMG-CT",
               purpose="TREAT", expires=5)
    revoke = tx("consent.revoked", "hosp-a", CLIENT_KEYS[0], patient=PATIENT, grantee=b"\x0e" * 16, scope="IMG-CT")
    w1, _ = run(state, [grant])
    key = consent_key("consent", PATIENT, b"\x0e" * 16, "IMG-CT")
    # the first consent also records the patient's home member (node.ledger.research)
    assert [k for k, _ in w1] == [b"home/" + PATIENT, key] and w1[0][1] == b"hosp-a"
    assert msgpack.unpackb(w1[1][1]) == {"expires": 5, "purpose": "TREAT", "member": "hosp-a",
                                         "tx": grant.hash, "ts": 1_800_000_000_000}
    w2, _ = run(state, [revoke])
    assert w2 == [(key, None), (consent_key("research", PATIENT, b"\x0e" * 16, "IMG-CT"), None)]
    r0 = state.root
    r1 = next_state_root(r0, 1, w1)
    assert r1 != r0 and next_state_root(r1, 2, []) == r1  # a block without writes keeps the root
    assert next_state_root(r1, 2, w2) != next_state_root(r1, 3, w2)  # the height is committed to
    assert r0 == hashlib.sha256(STATE_DOMAIN + GENESIS.hash() + msgpack.packb(
        [list(w) for w in genesis_writes], use_bin_type=True)).digest()


# ------------------------------------------------------------------ property: any sequence of registry txs

SIGNERS = [(NAMES[i], MEMBER_KEYS[i]) for i in range(4)] + [(NAMES[i], CLIENT_KEYS[i]) for i in range(4)] + \
          [(NEW_NAMES[i], NEWCOMER_KEYS[i]) for i in range(3)]
ALL_KEYS = MEMBER_KEYS + CLIENT_KEYS + NEWCOMER_KEYS

op_st = st.tuples(st.sampled_from(["member.added", "member.removed", "client.added", "client.removed"]),
                  st.integers(0, len(SIGNERS) - 1), st.integers(0, 2), st.integers(0, len(ALL_KEYS) - 1))


def _op_tx(kind, signer, subject, key):
    name, skey = SIGNERS[signer]
    if kind == "member.added":
        return tx(kind, name, skey, subject=NEW_NAMES[subject],
                  subject_key=bytes(NEWCOMER_KEYS[subject].verify_key))
    if kind == "member.removed":
        return tx(kind, name, skey, subject=(NAMES + NEW_NAMES)[subject * 2 % 7])
    return tx(kind, name, skey, subject_key=bytes(ALL_KEYS[key].verify_key))


@settings(max_examples=80, deadline=None)
@given(blocks=st.lists(st.lists(op_st, max_size=6), min_size=1, max_size=6))
def test_any_registry_history_is_deterministic_quorum_bound_and_rebuilds_from_its_writes(blocks):
    live, genesis_writes = LedgerState.from_genesis(GENESIS)
    twin, _ = LedgerState.from_genesis(GENESIS)
    stored = []
    pending: dict[tuple, set[str]] = {}  # test oracle: distinct authorised voters per open proposal
    for height, ops in enumerate(blocks, start=1):
        txs = [_op_tx(*op) for op in ops]
        writes = []
        for t in txs:
            f = t.fields
            before = dict(live.members)
            # one tx at a time, all in block `height`: an epoch boundary counted per call was the test's
            # own bug (16 calls crossed one; the twin's 3 blocks did not)
            w, (ok,) = run(live, [t], height)
            writes += w
            proposal = (f["type"], f.get("subject"), f.get("subject_key", b""))
            if ok and f["type"].startswith("member."):
                pending.setdefault(proposal, set()).add(f["member"])
            if live.members != before:
                # the registry moved only because a quorum of the members at that moment voted for it
                voters = pending.pop(proposal)
                assert len(voters & before.keys()) >= quorum(len(before))
                assert f["client"] == before[f["member"]]  # by a member key
        # invariants: every member's key is its own client; every client key belongs to a member
        for name, key in live.members.items():
            assert live.client_of[key] == name
        assert set(live.client_of.values()) <= live.members.keys()
        live.root = next_state_root(live.root, height, writes)
        twin_writes, _ = run(twin, txs, height)
        twin.root = next_state_root(twin.root, height, twin_writes)
        assert twin_writes == writes and twin.root == live.root  # same txs: same writes, same root
        stored.append(writes)
    # restart: the state rebuilt from the stored writes is the live state
    kv = stored_view(genesis_writes, *stored)
    rebuilt = LedgerState.load(GENESIS, sorted(kv.items()), live.root)
    assert same_state(rebuilt, live)
