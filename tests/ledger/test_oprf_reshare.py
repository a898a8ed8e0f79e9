"""The OPRF key's resharing / DKG flow as the chain decides it (node/ledger/oprf_reshare.py), and the
attacker's tests for every input of it: the `oprf.dealing` tx decoder and each kind of lying dealing."""

from __future__ import annotations

import itertools

import pytest
from nacl.signing import SigningKey

from node.ledger import oprf
from node.ledger import oprf_reshare as rs
from node.ledger.intake import make_tx
from node.ledger.oprf_reshare import ChainView
from node.ledger.tx import MAX_LIST, TxError, decode_tx

NAMES = ["hosp-a", "hosp-b", "hosp-c", "hosp-d"]
KEYS = {name: SigningKey(bytes([i + 1]) * 32) for i, name in enumerate([*NAMES, "hosp-e", "hosp-x"])}
JOIN = 9  # governance epoch with hosp-e added (its switch: the end of block 8)
LEAVE = 10  # governance epoch with hosp-d removed (in these tests the windows, not the switch, come last)
SECRET = 0x1234567890ABCDEF


WINDOW = 4000  # complaint window (ms); justifications get 8000: with a block per second, 4 and 8 blocks
JUSTIFY_WINDOW = 9  # blocks from a dealing to the first block past its justification window


class View(ChainView):
    """A ChainView fed one block per second of agreed time (block h at h * 1000 ms)."""

    def __init__(self, members_of):
        super().__init__(members_of, complaint_ms=WINDOW)

    def add(self, height, pos, member, fields):
        if height > self.height + 1:
            self.advance(height - 1)
        super().add(height, pos, member, fields, height * 1000)

    def advance(self, height):
        for h in range(self.height + 1, height + 1):
            super().advance(h, h * 1000)


def pk(name: str) -> bytes:
    return bytes(KEYS[name].verify_key)


EPOCHS = {
    1: [(n, pk(n)) for n in NAMES],
    JOIN: [(n, pk(n)) for n in [*NAMES, "hosp-e"]],
    LEAVE: [(n, pk(n)) for n in ["hosp-a", "hosp-b", "hosp-c", "hosp-e"]],
}


@pytest.fixture(scope="module")
def dealt():
    public, shares = oprf.deal(3, 4, epoch=1, secret=SECRET)
    return public, {n: s for n, s in zip(NAMES, shares, strict=True)}


def attested_view(public) -> ChainView:
    view = View(EPOCHS.get)
    for pos, name in enumerate(NAMES[:3]):
        view.add(1, pos, name, rs.public_fields(public, 1))
    return view


def token(share_list, public, patient="1234567") -> bytes:
    """The token of a patient through t shares (threshold evaluation, proofs checked)."""
    data = oprf.token_input(public.epoch, "patient", patient, "ISSUER")
    bi = oprf.blind(data)
    partials = [oprf.evaluate_partial(s, [bi.element]) for s in share_list]
    outputs, bad = oprf.combine(public, [bi], partials)
    assert not bad
    return oprf.token_from_output(public.epoch, outputs[0])


def reference(patient="1234567") -> bytes:
    return oprf.tokenize_with_key(SECRET, 1, "patient", patient, "ISSUER")


def ack_good(view, height, oprf_epoch, start, dealer, pos=100, skip=()):
    """Every new member (but `skip`) whose box from `dealer` opened and matched acks it in block `height`."""
    rnd = view.rounds[(oprf_epoch, start)]
    for i, (name, _) in enumerate(EPOCHS[start]):
        if name not in skip and dealer in rnd.check_boxes(name, KEYS[name])[0]:
            view.add(height, pos + i, name, rs.ack_fields(oprf_epoch, start, dealer))


def run_reshare(view, shares, start, dealers, height=2, tamper=None, ack=True):
    """Old members `dealers` deal for governance epoch `start`, one per block from `height`; the new members
    whose boxes are good ack each dealing in its block."""
    members = [k for _, k in EPOCHS[start]]
    contributions = {}
    for pos, name in enumerate(dealers):
        fields, c = rs.reshare_fields(shares[name], members, start)
        if tamper and name in tamper:
            fields = tamper[name](fields, c)
        view.add(height + pos, 0, name, fields)
        rnd = view.rounds.get((1, start))
        if ack and rnd is not None and name in {d.dealer for d in rnd.dealings}:
            ack_good(view, height + pos, 1, start, name)
        contributions[name] = c
    return contributions, height + len(dealers) - 1


def test_attested_public_is_recorded_at_quorum_only(dealt):
    public, _ = dealt
    view = View(EPOCHS.get)
    view.add(1, 0, "hosp-a", rs.public_fields(public, 1))
    view.add(1, 1, "hosp-a", rs.public_fields(public, 1))  # one member twice is one attestation
    view.add(1, 2, "hosp-b", rs.public_fields(public, 1))
    assert view.current(1) is None
    fake, _ = oprf.deal(3, 4, epoch=1)
    view.add(2, 0, "hosp-x", rs.public_fields(fake, 1))  # not a member: ignored
    view.add(2, 1, "hosp-c", rs.public_fields(public, 1))
    rec = view.current(1)
    assert rec.public == public and rec.names == tuple(NAMES) and rec.height == 2
    assert view.current(1, height=2) is None and view.current(1, height=3) == rec  # in force from height 3


def test_join_reshares_the_same_key_and_every_token_stays(dealt):
    public, shares = dealt
    view = attested_view(public)
    _, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"])
    view.advance(last + JUSTIFY_WINDOW - 1)
    assert view.current(1).public == public  # windows open: the old parameters stay in force
    view.advance(last + JUSTIFY_WINDOW)
    rec = view.current(1)
    assert rec.how == "reshare" and rec.names == tuple(n for n, _ in EPOCHS[JOIN])
    assert rec.public.public_key == public.public_key and rec.public.n == 5 and rec.public.t == 3
    rnd = view.rounds[(1, JOIN)]
    new = {n: rnd.my_share(n, KEYS[n]) for n, _ in EPOCHS[JOIN]}
    assert all(s is not None and s.public == rec.public for s in new.values())
    for subset in itertools.combinations(new.values(), 3):
        assert token(subset, rec.public) == reference()  # hosp-e among them or not: the same token


def test_removed_member_old_share_is_useless_with_new_ones(dealt):
    public, shares = dealt
    view = attested_view(public)
    _, last = run_reshare(view, shares, LEAVE, ["hosp-a", "hosp-b", "hosp-d"])
    view.advance(last + JUSTIFY_WINDOW)
    rec = view.current(1)
    assert rec.names == ("hosp-a", "hosp-b", "hosp-c", "hosp-e")
    rnd = view.rounds[(1, LEAVE)]
    new = {n: rnd.my_share(n, KEYS[n]) for n in rec.names}
    assert token([new["hosp-a"], new["hosp-b"], new["hosp-e"]], rec.public) == reference()
    # hosp-d's old share k_4 with two new shares: a KeyShare of the new parameters at index 4 is hosp-e's
    # slot; forcing the old scalar into it is refused, and Lagrange arithmetic on it gives a wrong key.
    with pytest.raises(oprf.OprfError):
        oprf.KeyShare(4, shares["hosp-d"].secret, rec.public)
    lam = oprf.lagrange_at_zero([1, 2, 4])
    k = (lam[1] * new["hosp-a"].secret + lam[2] * new["hosp-b"].secret + lam[4] * shares["hosp-d"].secret) % oprf.ORDER
    assert oprf.tokenize_with_key(k, 1, "patient", "1234567", "ISSUER") != reference()
    # and an old-parameter share no longer verifies against what is in force
    bi = oprf.blind(oprf.token_input(1, "patient", "1234567", "ISSUER"))
    assert not oprf.verify_partial(rec.public, [bi.element], oprf.evaluate_partial(shares["hosp-d"], [bi.element]))


def _bad_box_for(victim):
    def tamper(fields, c):
        j = [n for n, _ in EPOCHS[JOIN]].index(victim)
        fields["boxes"][j] = rs.seal_box(oprf.random_scalar(), pk(victim))  # opens, but not on the polynomial
        return fields
    return tamper


def test_lying_dealer_is_excluded_after_an_unanswered_complaint(dealt):
    public, shares = dealt
    view = attested_view(public)
    _, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c", "hosp-d"],
                          tamper={"hosp-b": _bad_box_for("hosp-e")})
    rnd = view.rounds[(1, JOIN)]
    good, bad = rnd.check_boxes("hosp-e", KEYS["hosp-e"])
    assert bad == ["hosp-b"] and set(good) == {"hosp-a", "hosp-c", "hosp-d"}
    view.add(last, 1, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-b"))
    view.advance(last + JUSTIFY_WINDOW)
    rec = view.current(1)
    assert rec.how == "reshare" and rnd.outcome.dealers == ("hosp-a", "hosp-c", "hosp-d")
    new = [rnd.my_share(n, KEYS[n]) for n in ("hosp-b", "hosp-d", "hosp-e")]
    assert token(new, rec.public) == reference()


def test_false_complaint_is_dismissed_by_justification(dealt):
    public, shares = dealt
    view = attested_view(public)
    contribs, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"])
    view.add(last, 1, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-a"))  # a lie: hosp-a's box is good
    # a justification with a wrong share does not count; the right one does
    view.add(last + 1, 0, "hosp-a", rs.justify_fields(1, JOIN, "hosp-e", oprf.random_scalar()))
    view.add(last + 1, 1, "hosp-a", rs.justify_fields(1, JOIN, "hosp-e", contribs["hosp-a"].shares[4]))
    view.advance(last + JUSTIFY_WINDOW)
    rnd = view.rounds[(1, JOIN)]
    assert rnd.outcome.dealers == ("hosp-a", "hosp-b", "hosp-c")
    assert token([rnd.my_share(n, KEYS[n]) for n in ("hosp-a", "hosp-c", "hosp-e")], view.current(1).public) == reference()


def test_new_shares_take_over_at_the_governance_switch_not_before(dealt):
    public, shares = dealt
    view = attested_view(public)
    late = 200
    EPOCHS[late] = EPOCHS[JOIN]
    try:
        _, last = run_reshare(view, shares, late, ["hosp-a", "hosp-b", "hosp-c"])
        view.advance(last + JUSTIFY_WINDOW)
        assert view.rounds[(1, late)].outcome is not None and view.current(1).public == public
        view.advance(late - 1)
        assert view.current(1).height == late - 1 and view.current(1).public.n == 5
    finally:
        del EPOCHS[late]


def test_unjustified_round_short_of_t_keeps_the_old_parameters(dealt):
    public, shares = dealt
    view = attested_view(public)
    _, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"],
                          tamper={"hosp-b": _bad_box_for("hosp-e")})
    view.add(last, 1, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-b"))
    view.advance(last + 10 * JUSTIFY_WINDOW)
    assert view.current(1).public == public  # two qualified dealings < t = 3: the old set keeps answering
    _, last = run_reshare(view, shares, JOIN, ["hosp-d"], height=last + 10 * JUSTIFY_WINDOW + 1)
    view.advance(last + JUSTIFY_WINDOW)
    assert view.rounds[(1, JOIN)].outcome.dealers == ("hosp-a", "hosp-c", "hosp-d")


def test_dkg_members_agree_and_a_cheating_dealer_is_excluded():
    view = View(EPOCHS.get)
    members = [k for _, k in EPOCHS[1]]
    contribs = {}
    for i, name in enumerate(NAMES, 1):
        fields, contribs[name] = rs.dkg_fields(i, 1, members, 1)
        if name == "hosp-a":
            fields["boxes"][2] = rs.seal_box(oprf.random_scalar(), pk("hosp-c"))
        view.add(1 + i, 0, name, fields)
        ack_good(view, 1 + i, 1, 1, name)
    rnd = view.rounds[(1, 1)]
    assert rnd.check_boxes("hosp-c", KEYS["hosp-c"])[1] == ["hosp-a"]
    view.add(6, 0, "hosp-c", rs.complaint_fields(1, 1, "hosp-a"))
    view.advance(6 + JUSTIFY_WINDOW)
    rec = view.current(1)
    assert rec.how == "dkg" and rnd.outcome.dealers == ("hosp-b", "hosp-c", "hosp-d")
    lam = oprf.lagrange_at_zero([1, 2, 3])  # k = sum over the qualified dealers of f_j(0)
    key = sum(lam[i] * contribs[n].shares[i - 1] for n in rnd.outcome.dealers for i in (1, 2, 3)) % oprf.ORDER
    shares = [rnd.my_share(n, KEYS[n]) for n in NAMES]
    for subset in itertools.combinations(shares, 3):
        assert token(subset, rec.public) == oprf.tokenize_with_key(key, 1, "patient", "1234567", "ISSUER")


# ----------------------------------------------------------------------------------- hostile dealings


def _wrong_first_commitment(fields, c):
    fields["commitments"][0] = oprf.GENERATOR  # re-shares something other than its recorded K_i
    return fields


def _too_few_commitments(fields, c):
    fields["commitments"] = fields["commitments"][:2]
    return fields


def _missing_box(fields, c):
    fields["boxes"] = fields["boxes"][:-1]
    return fields


def _bad_point(fields, c):
    fields["commitments"][1] = b"\xff" * 32
    return fields


@pytest.mark.parametrize("tamper", [_wrong_first_commitment, _too_few_commitments, _missing_box, _bad_point])
def test_publicly_invalid_dealing_is_ignored_and_the_round_completes(dealt, tamper):
    public, shares = dealt
    view = attested_view(public)
    _, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c", "hosp-d"], tamper={"hosp-a": tamper})
    rnd = view.rounds[(1, JOIN)]
    assert [d.dealer for d in rnd.dealings] == ["hosp-b", "hosp-c", "hosp-d"]
    assert any(m == "hosp-a" for _, m, _ in rnd.ignored)
    view.advance(last + JUSTIFY_WINDOW)
    assert token([rnd.my_share(n, KEYS[n]) for n in ("hosp-a", "hosp-b", "hosp-e")], view.current(1).public) == reference()


def test_box_for_someone_else_is_a_complaint(dealt):
    public, shares = dealt

    def swap(fields, c):
        fields["boxes"][4] = rs.seal_box(c.shares[4], pk("hosp-a"))  # hosp-e's share, sealed to hosp-a
        return fields

    view = attested_view(public)
    run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"], tamper={"hosp-c": swap})
    assert view.rounds[(1, JOIN)].check_boxes("hosp-e", KEYS["hosp-e"])[1] == ["hosp-c"]


def test_non_member_wrong_epoch_and_duplicate_dealings_do_not_count(dealt):
    public, shares = dealt
    view = attested_view(public)
    members = [k for _, k in EPOCHS[JOIN]]
    first, _ = rs.reshare_fields(shares["hosp-a"], members, JOIN)
    second, _ = rs.reshare_fields(shares["hosp-a"], members, JOIN)
    view.add(2, 0, "hosp-a", first)
    view.add(2, 1, "hosp-a", second)  # only the first counts
    view.add(2, 2, "hosp-e", rs.reshare_fields(shares["hosp-b"], members, JOIN)[0])  # holds no old share
    other_key, other_shares = oprf.deal(3, 4, epoch=2)
    view.add(2, 3, "hosp-b", rs.reshare_fields(other_shares[1], members, JOIN)[0])  # key epoch 2: no record
    view.add(2, 4, "hosp-b", rs.reshare_fields(shares["hosp-b"], members, 5)[0])  # no governance epoch at 5
    view.add(2, 5, "hosp-b", rs.reshare_fields(shares["hosp-b"], [k for _, k in EPOCHS[1]], 1)[0])  # not later
    rnd = view.rounds[(1, JOIN)]
    assert [(d.dealer, d.commitments[1]) for d in rnd.dealings] == [("hosp-a", first["commitments"][1])]
    assert len(rnd.ignored) == 2 and len(view.ignored) == 3
    # a complaint from outside the new set, or against someone who has not dealt, is ignored too
    view.add(3, 0, "hosp-x", rs.complaint_fields(1, JOIN, "hosp-a"))
    view.add(3, 1, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-c"))
    assert rnd.complaints == {}


def dealing_tx(**fields) -> bytes:
    base = {"oprf_kind": "reshare", "oprf_epoch": 1, "epoch_start": JOIN,
            "commitments": [oprf.GENERATOR] * 3, "boxes": [bytes(80)] * 5}
    base.update(fields)
    base = {k: v for k, v in base.items() if v is not None}
    return make_tx("oprf.dealing", KEYS["hosp-a"], chain_id="radchain-test", member="hosp-a", **base)


def test_well_formed_dealing_decodes():
    tx = decode_tx(dealing_tx())
    assert tx.fields["oprf_kind"] == "reshare" and len(tx.fields["boxes"]) == 5


@pytest.mark.parametrize("fields", [
    {"oprf_kind": "steal"},                                   # unknown kind
    {"oprf_epoch": 0}, {"oprf_epoch": 1 << 16},               # key epoch out of range
    {"epoch_start": 0},                                       # no governance epoch 0
    {"commitments": []},                                      # empty
    {"commitments": [oprf.GENERATOR] * 65},                   # more than any threshold here
    {"commitments": [b"\x01" * 31]},                          # short point
    {"commitments": [[oprf.GENERATOR]]},                      # nested
    {"commitments": [[[[[[b"deep"]]]]]]},                     # deeply nested
    {"boxes": [bytes(81)] * 5},                               # box of the wrong size
    {"boxes": [bytes(80)] * (MAX_LIST + 1)},                  # too many boxes
    {"boxes": "not a list"},
    {"share": bytes(33)},                                     # oversized scalar
    {"oprf_public": bytes(12 * 1024 + 1)},                    # oversized public parameters
    {"oprf_kind": None},                                      # required field missing
])
def test_malformed_dealing_is_refused_by_the_decoder(fields):
    with pytest.raises(TxError):
        decode_tx(dealing_tx(**fields))


def test_fields_of_another_kind_are_ignored_by_the_flow(dealt):
    public, shares = dealt
    view = attested_view(public)
    fields, _ = rs.reshare_fields(shares["hosp-a"], [k for _, k in EPOCHS[JOIN]], JOIN)
    view.add(2, 0, "hosp-a", {**fields, "share": bytes(32)})  # a reshare carrying a share in clear
    view.add(2, 1, "hosp-a", {**rs.ack_fields(1, JOIN, "hosp-a"), "commitments": fields["commitments"]})
    assert (1, JOIN) not in view.rounds and len(view.ignored) == 2


def test_box_opens_only_for_its_member():
    box = rs.seal_box(12345, pk("hosp-e"))
    assert rs.open_box(box, KEYS["hosp-e"]) == 12345
    for bad in (box[:-1], bytes(80), box[:-1] + bytes([box[-1] ^ 1])):
        with pytest.raises(rs.DealingError):
            rs.open_box(bad, KEYS["hosp-e"])
    with pytest.raises(rs.DealingError):
        rs.open_box(box, KEYS["hosp-a"])


def test_windows_are_in_block_time_late_complaints_and_justifications_do_not_count(dealt):
    public, shares = dealt
    view = attested_view(public)
    contribs, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"],
                                 tamper={"hosp-b": _bad_box_for("hosp-e")})
    # hosp-a's dealing is at height 2 (time 2 s): a complaint at 7 s is past its 4 s window
    view.add(7, 0, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-a"))
    # hosp-b's (height 3): a complaint in time, but the justification (a genuine one) after 8 s
    view.add(7, 1, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-b"))
    view.add(12, 0, "hosp-b", rs.justify_fields(1, JOIN, "hosp-e", contribs["hosp-b"].shares[4]))
    rnd = view.rounds[(1, JOIN)]
    assert list(rnd.complaints) == [("hosp-b", "hosp-e")] and rnd.justified == {}
    view.advance(40)
    assert view.current(1).public == public  # hosp-b excluded: 2 < t qualified, the old set stays
    # block times that go backwards are read as their running maximum: nothing reopens
    super(View, view).add(41, 0, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-c"), 1000)
    assert ("hosp-c", "hosp-e") not in rnd.complaints


# ------------------------------------------------------------------ the review's attacks (oprf-review.md)


class RuledView(View):
    """A View with the rules every node supplies: member-key signers only, DKG only for the governance epoch
    in force, dealings only for member sets no later block can change (here: every start <= height + 7)."""

    def __init__(self, members_of=EPOCHS.get, complaint_ms=WINDOW):
        ChainView.__init__(self, members_of, complaint_ms, key_ok=lambda m, k: k == pk(m),
                           epoch_at=lambda h: max(s for s in EPOCHS if s <= h), fixed_through=lambda h: h + 7)

    def add(self, height, pos, member, fields, signer="member"):
        if height > self.height + 1:
            self.advance(height - 1)
        ChainView.add(self, height, pos, member, fields, height * 1000,
                      pk(member) if signer == "member" else signer)


def test_a_client_key_cannot_post_dealings_in_its_members_name(dealt):
    """#1: a stolen client key of hosp-e must not complain as hosp-e (dealers would then publish hosp-e's
    sub-shares), nor deal or ack as a member. Execution rejects it; the view ignores it too."""
    from node.ledger.block import APPLIED, REJECTED
    from node.ledger.chain import execute_txs
    from node.ledger.genesis import Genesis, Member
    from node.ledger.state import LedgerState

    client = SigningKey(b"\x77" * 32)
    members = tuple(Member(n, pk(n), f"peer{i}", (), "", (bytes(client.verify_key),) if n == "hosp-a" else ())
                    for i, n in enumerate(NAMES))
    genesis = Genesis("c", "2026-11-27T00:00:00+00:00", members, {})
    state, _ = LedgerState.from_genesis(genesis)
    fields = {k: v for k, v in rs.complaint_fields(1, JOIN, "hosp-b").items() if k != "type"}
    by_client = decode_tx(make_tx("oprf.dealing", client, chain_id="c", member="hosp-a", **fields))
    by_member = decode_tx(make_tx("oprf.dealing", KEYS["hosp-a"], chain_id="c", member="hosp-a", **fields))
    statuses, _, _ = execute_txs(state, 1, [by_client, by_member], lambda h: True, lambda k, v: None)
    assert list(statuses) == [REJECTED, APPLIED]

    public, shares = dealt
    view = RuledView()
    for pos, name in enumerate(NAMES[:3]):
        view.add(1, pos, name, rs.public_fields(public, 1))
    run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"])
    thief = bytes(client.verify_key)
    view.add(5, 0, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-a"), signer=thief)
    view.add(5, 1, "hosp-d", rs.reshare_fields(shares["hosp-d"], [k for _, k in EPOCHS[JOIN]], JOIN)[0],
             signer=thief)
    rnd = view.rounds[(1, JOIN)]
    assert rnd.complaints == {} and [d.dealer for d in rnd.dealings] == ["hosp-a", "hosp-b", "hosp-c"]
    assert sum("member key" in why for _, _, why in view.ignored) == 2


def test_primary_skewing_timestamps_cannot_get_a_junk_dealing_chosen(dealt):
    """#2 (attack.py s1): a Byzantine primary and dealer backdates its junk dealing's block by the skew and
    stamps the next one ahead by as much, so the complaint window closes before the complaints land. No
    honest member can ack a box that does not open: the junk never counts, the honest dealings do, and
    every new member derives its share (nobody is left to erase its old one for nothing)."""
    import os

    public, shares = dealt
    view = ChainView(EPOCHS.get, complaint_ms=rs.COMPLAINT_MS)
    view.seed_genesis(public, NAMES)
    t0, skew = 1_000_000_000, 30_000
    assert rs.complaint_window({}, skew) == rs.COMPLAINT_MS
    view.advance(1, t0 - skew)
    junk, _ = rs.reshare_fields(shares["hosp-d"], [k for _, k in EPOCHS[JOIN]], JOIN)
    junk["boxes"] = [os.urandom(rs.BOX_BYTES) for _ in junk["boxes"]]
    view.add(2, 0, "hosp-d", junk, t0 - skew)
    view.advance(2, t0 - skew)
    view.advance(3, t0 + skew)
    rnd = view.rounds[(1, JOIN)]
    for h, name in enumerate(["hosp-a", "hosp-b", "hosp-c"], 4):
        fields, _ = rs.reshare_fields(shares[name], [k for _, k in EPOCHS[JOIN]], JOIN)
        view.add(h, 0, name, fields, t0 + 1000)
        for i, (m, _) in enumerate(EPOCHS[JOIN]):
            good, bad = rnd.check_boxes(m, KEYS[m])
            for dealer in good:
                view.add(h, 1 + i * 10, m, rs.ack_fields(1, JOIN, dealer), t0 + 1000)
            assert "hosp-d" in bad
        view.advance(h, t0 + 1000)
    for h in range(7, 30):
        view.advance(h, t0 + (h - 6) * skew)
    assert rnd.outcome is not None and rnd.outcome.dealers == ("hosp-a", "hosp-b", "hosp-c")
    new = {m: rnd.my_share(m, KEYS[m]) for m, _ in EPOCHS[JOIN]}
    assert all(s is not None for s in new.values())
    assert token([new["hosp-a"], new["hosp-d"], new["hosp-e"]], view.current(1).public) == reference()


def test_complaint_window_must_exceed_what_clock_skew_can_eat():
    """#2: the window is refused at genesis unless >= 4 x max_clock_skew_ms, and a vote raising the skew
    past a quarter of it is rejected (else a primary's timestamps could close it early)."""
    from node.ledger.genesis import Genesis, GenesisError, Member
    from node.ledger.state import LedgerState

    with pytest.raises(ValueError, match="max_clock_skew_ms"):
        rs.complaint_window({"oprf_complaint_ms": 60_000}, 30_000)
    members = [Member(n, pk(n), f"peer{i}", (), "", ()).to_json() for i, n in enumerate(NAMES)]
    base = {"chain_id": "c", "genesis_time": "2026-11-27T00:00:00+00:00", "members": members}
    with pytest.raises(GenesisError, match="oprf_complaint_ms"):
        Genesis.from_json({**base, "params": {"oprf_complaint_ms": 60_000}})
    genesis = Genesis.from_json({**base, "params": {"oprf_complaint_ms": 8000, "max_clock_skew_ms": 2000}})
    state, _ = LedgerState.from_genesis(genesis)

    def vote(member, value):
        t = decode_tx(make_tx("params.changed", KEYS[member], chain_id="c", member=member,
                              param="max_clock_skew_ms", value=value))
        return state.apply(t, t.hash, [])
    assert not vote("hosp-a", 2001)  # 4 x 2001 > 8000
    assert vote("hosp-a", 1500)


def test_one_dkg_round_per_key_epoch_the_next_one_only_for_the_set_in_force():
    """#3 (attack.py s2): a second round for key epoch 1 (here: for an older governance epoch), a DKG for
    key epoch 65535 (would pin the tokenizer's newest epoch), and a DKG for a set not in force are ignored."""
    view = RuledView()
    for i, (name, _) in enumerate(EPOCHS[JOIN]):
        fields, _ = rs.dkg_fields(i + 1, 1, [k for _, k in EPOCHS[JOIN]], JOIN)
        view.add(JOIN, i, name, fields)
    assert list(view.rounds) == [(1, JOIN)]
    for i, (name, _) in enumerate(EPOCHS[1]):
        view.add(JOIN + 1, i, name, rs.dkg_fields(i + 1, 1, [k for _, k in EPOCHS[1]], 1)[0])  # old set
        view.add(JOIN + 1, 10 + i, name, rs.dkg_fields(i + 1, 65535, [k for _, k in EPOCHS[JOIN]], JOIN)[0])
        view.add(JOIN + 1, 20 + i, name, rs.dkg_fields(i + 1, 2, [k for _, k in EPOCHS[1]], 1)[0])  # not in force
    assert list(view.rounds) == [(1, JOIN)]
    whys = [why for _, _, why in view.ignored]
    assert sum("already exists or has a round" in w for w in whys) == 4
    assert sum("only the next one" in w for w in whys) == 4
    assert sum("not the one in force" in w for w in whys) == 4


def test_a_dealing_for_a_member_set_that_may_still_change_is_ignored(dealt):
    """#4 (attack.py s3): whether a dealing counts must not depend on when a node reads the member sets: a
    dealing naming a governance epoch that a later block could still create or rewrite is ignored, live and
    on replay alike."""
    public, shares = dealt
    fields, _ = rs.reshare_fields(shares["hosp-a"], [k for _, k in EPOCHS[JOIN]], JOIN)

    def feed(members_of):
        view = RuledView(members_of)
        for pos, name in enumerate(NAMES[:3]):
            view.add(1, pos, name, rs.public_fields(public, 1))
        view.add(1, 3, "hosp-a", fields)  # at height 1 the set starting at JOIN = 9 may still change
        return list(view.rounds), [w for *_, w in view.ignored]
    live, replay = feed({1: EPOCHS[1]}.get), feed(EPOCHS.get)
    assert live[0] == replay[0] == []
    assert "may still change" in replay[1][-1]


def test_running_maximum_of_block_time_is_the_same_live_and_on_replay(dealt):
    """#5 (runmax.py): a node that saw a far-ahead block before the first dealing, and one that replays
    from the first dealing, must judge a complaint the same way: both feed exactly the blocks
    ChainView.feeds() asks for."""
    public, shares = dealt
    f, _ = rs.reshare_fields(shares["hosp-d"], [k for _, k in EPOCHS[JOIN]], JOIN)
    t = 10**9

    def run(live):
        v = ChainView(EPOCHS.get, complaint_ms=60_000)
        v.seed_genesis(public, NAMES)
        blocks = [(2, t + 30_000, []), (3, t + 1_000, [("hosp-d", f)]),
                  (4, t + 70_000, [("hosp-e", rs.complaint_fields(1, JOIN, "hosp-d"))])]
        for h, ts, txs in blocks:
            if h == 2 and not live:
                continue  # a replay starts at the first dealing
            if v.feeds(bool(txs)):
                for pos, (m, fields) in enumerate(txs):
                    v.add(h, pos, m, fields, ts)
                v.advance(h, ts)
        return dict(v.rounds[(1, JOIN)].complaints)
    assert run(True) == run(False) == {}  # 69 s after the dealing's block: late, for both


def test_a_hostile_public_attestation_costs_no_decoding(dealt):
    """#6: an attestation whose member count is not the governance epoch's is refused before the costly
    consistency check; one attestation per member and key epoch counts."""
    import time

    big, _ = oprf.deal(150, 300, epoch=5)
    view = RuledView()
    started = time.perf_counter()
    view.add(1, 0, "hosp-a", rs.public_fields(big, 1))
    assert time.perf_counter() - started < 0.5 and view.ignored[-1][2].startswith("public: ")
    other, _ = oprf.deal(3, 4, epoch=1)
    public, _ = dealt
    view.add(2, 0, "hosp-a", rs.public_fields(other, 1))
    view.add(2, 1, "hosp-a", rs.public_fields(public, 1))  # a second attestation by hosp-a: ignored
    view.add(2, 2, "hosp-b", rs.public_fields(public, 1))
    view.add(2, 3, "hosp-c", rs.public_fields(public, 1))
    assert view.current(1) is None  # b and c only: a's vote went to the other parameters
    view.add(3, 0, "hosp-d", rs.public_fields(public, 1))
    assert view.current(1).public == public
    far, _ = oprf.deal(3, 4, epoch=9)
    view.add(4, 0, "hosp-a", rs.public_fields(far, 1))  # epochs come in order: 9 is not the next one (2)
    assert "not the next one" in view.ignored[-1][2]


def test_a_lost_dealing_is_posted_again_from_what_was_dealt(dealt):
    """#8: the re-posted dealing (boxes sealed afresh) is the same sharing: it counts and gives the same key;
    and a dealing for the largest member set resharing supports fits in a tx."""
    public, shares = dealt
    keys = [k for _, k in EPOCHS[JOIN]]
    view = attested_view(public)
    contribs = {}
    for pos, name in enumerate(["hosp-a", "hosp-b", "hosp-c"]):
        _, contribs[name] = rs.reshare_fields(shares[name], keys, JOIN)  # the first tx got lost
        view.add(2 + pos, 0, name, rs.fields_from_contribution("reshare", 1, JOIN, contribs[name], keys))
        ack_good(view, 2 + pos, 1, JOIN, name)
    view.advance(4 + JUSTIFY_WINDOW)
    rnd = view.rounds[(1, JOIN)]
    assert token([rnd.my_share(n, KEYS[n]) for n in ("hosp-b", "hosp-d", "hosp-e")], view.current(1).public) == reference()
    n = rs.MAX_RESHARE_MEMBERS
    many = [bytes(SigningKey(i.to_bytes(32, "big")).verify_key) for i in range(1, n + 1)]
    fields, _ = rs.dkg_fields(1, 2, many, 1)
    fields.pop("type")
    assert len(make_tx("oprf.dealing", KEYS["hosp-a"], chain_id="c", member="hosp-a", **fields)) <= 16 * 1024


def test_an_excluded_dealer_may_deal_again_and_the_round_completes(dealt):
    """#10: hosp-b's first dealing is excluded (its complaint unanswered: e.g. it was down); with only three
    old members able to deal (t = 3) the round would stall for good unless its fresh dealing counts."""
    public, shares = dealt
    view = attested_view(public)
    _, last = run_reshare(view, shares, JOIN, ["hosp-a", "hosp-b", "hosp-c"],
                          tamper={"hosp-b": _bad_box_for("hosp-e")})
    view.add(last, 1, "hosp-e", rs.complaint_fields(1, JOIN, "hosp-b"))
    view.advance(last + JUSTIFY_WINDOW)
    rnd = view.rounds[(1, JOIN)]
    assert rnd.outcome is None and view.current(1).public == public
    again = last + JUSTIFY_WINDOW + 1
    run_reshare(view, shares, JOIN, ["hosp-b"], height=again)
    assert rnd.complaints == {} and len(rnd.dealings) == 4
    view.advance(again + JUSTIFY_WINDOW)
    assert rnd.outcome.dealers == ("hosp-a", "hosp-c", "hosp-b")
    assert token([rnd.my_share(n, KEYS[n]) for n in ("hosp-a", "hosp-d", "hosp-e")], view.current(1).public) == reference()


def test_an_abandoned_dkg_round_neither_waits_forever_nor_blocks_the_next():
    """#12: one member opens a DKG round nobody joins. While it is open no other DKG round opens (one member
    cannot pile up rounds); after DKG_GIVE_UP windows it is abandoned (the view stops waiting for it, its
    epoch number is spent) and the members generate the next key epoch."""
    view = RuledView()
    keys = [k for _, k in EPOCHS[1]]
    view.add(1, 0, "hosp-a", rs.dkg_fields(1, 1, keys, 1)[0])
    view.add(2, 0, "hosp-b", rs.dkg_fields(2, 2, keys, 1)[0])
    assert list(view.rounds) == [(1, 1)] and "another DKG round is open" in view.ignored[-1][2]
    assert view.pending()
    view.advance(2 + rs.DKG_GIVE_UP * WINDOW // 1000)
    assert view.rounds[(1, 1)].abandoned and not view.pending()
    start = view.height + 1  # by now the member set in force is LEAVE's
    leave = [k for _, k in EPOCHS[LEAVE]]
    for i, (name, _) in enumerate(EPOCHS[LEAVE], 1):
        view.add(start, i, name, rs.dkg_fields(i, 2, leave, LEAVE)[0])
        ack_good(view, start, 2, LEAVE, name, pos=10 * i)
    view.add(start + 1, 0, "hosp-d", rs.ack_fields(1, 1, "hosp-a"))  # into the abandoned round: ignored
    view.advance(start + JUSTIFY_WINDOW)
    assert view.current(2).how == "dkg" and view.current(1) is None
