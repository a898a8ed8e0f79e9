"""Threshold OPRF (node/ledger/oprf.py): RFC 9497 vectors, threshold = single key, DLEQ catches bad members, DKG."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ledger import oprf
from node.ledger.oprf import OprfError

# RFC 9497 appendix A.1.1 (OPRF(ristretto255, SHA-512), mode 0x00) and A.1.2 (VOPRF, mode 0x01), taken from
# the CFRG draft repository's poc/vectors/allVectors.json (the RFC's final vectors, context "OPRFV1-").
SEED = bytes.fromhex("a3" * 32)
KEY_INFO = b"test key"
BLIND = "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"
OPRF_SKSM = "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e"
OPRF_VECTORS = [
    (
        "00",
        "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
        "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
        "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3"
        "ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6",
    ),
    (
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
        "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
        "f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4"
        "f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73",
    ),
]
VOPRF_SKSM = "e6f73f344b79b379f1a0dd37e07ff62e38d9f71345ce62ae3a9bc60b04ccd909"
VOPRF_PKSM = "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e"
# (inputs, blinds, blinded elements, evaluation elements, proof, proof random scalar)
VOPRF_VECTORS = [
    (
        ["00"],
        [BLIND],
        ["863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945"],
        ["aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e"],
        "ddef93772692e535d1a53903db24367355cc2cc78de93b3be5a8ffcc6985dd06"
        "6d4346421d17bf5117a2a1ff0fcb2a759f58a539dfbe857a40bce4cf49ec600d",
        "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e",
    ),
    (
        ["00", "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
        [BLIND, "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e"],
        [
            "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
            "90a0145ea9da29254c3a56be4fe185465ebb3bf2a1801f7124bbbadac751e654",
        ],
        [
            "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
            "cc5ac221950a49ceaa73c8db41b82c20372a4c8d63e5dded2db920b7eee36a2a",
        ],
        "cc203910175d786927eeb44ea847328047892ddf8590e723c37205cb74600b0a"
        "5ab5337c8eb4ceae0494c2cf89529dcf94572ed267473d567aeed6ab873dee08",
        "419c4f4f5052c53c45f3da494d2b67b220d02118e0857cdbcf037f9ea84bbe0c",
    ),
]


def scalar(hexstr: str) -> int:
    return oprf.decode_scalar(bytes.fromhex(hexstr))


# --------------------------------------------------------------------------------- RFC 9497 vectors


def test_rfc9497_oprf_mode_vectors():
    sk, _ = oprf.derive_key_pair(SEED, KEY_INFO)
    assert oprf.encode_scalar(sk).hex() == OPRF_SKSM
    for inp, blinded, evaluated, output in OPRF_VECTORS:
        bi = oprf.blind(bytes.fromhex(inp), scalar(BLIND))
        assert bi.element.hex() == blinded
        z = oprf.blind_evaluate(sk, bi.element)
        assert z.hex() == evaluated
        assert oprf.finalize(bi, z).hex() == output
        assert oprf.evaluate(sk, bytes.fromhex(inp)).hex() == output


def test_rfc9497_voprf_proof_vectors():
    """A one-member sharing is RFC VOPRF: key derivation, evaluation and the (batched) DLEQ proof match."""
    ctx = oprf.CONTEXT_VOPRF
    sk, pk = oprf.derive_key_pair(SEED, KEY_INFO, ctx)
    assert (oprf.encode_scalar(sk).hex(), pk.hex()) == (VOPRF_SKSM, VOPRF_PKSM)
    for inputs, blinds, blinded, evaluated, proof, r in VOPRF_VECTORS:
        bis = [oprf.blind(bytes.fromhex(i), scalar(b), ctx) for i, b in zip(inputs, blinds, strict=True)]
        assert [bi.element.hex() for bi in bis] == blinded
        zs = [oprf.blind_evaluate(sk, bi.element) for bi in bis]
        assert [z.hex() for z in zs] == evaluated
        c = [bi.element for bi in bis]
        got = oprf.generate_proof(sk, oprf.GENERATOR, pk, c, zs, r=scalar(r))
        assert got.hex() == proof
        assert oprf.verify_proof(oprf.GENERATOR, pk, c, zs, got)


# ------------------------------------------------------------------------------------ threshold


def run_threshold(public, shares, blinded_inputs, members):
    partials = [oprf.evaluate_partial(shares[i - 1], [bi.element for bi in blinded_inputs]) for i in members]
    return oprf.combine(public, blinded_inputs, partials)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 7),
    data=st.data(),
    ids=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3),
)
def test_threshold_equals_single_key_for_any_t_of_n(n, data, ids):
    t = data.draw(st.integers(1, n), label="t")
    secret = oprf.random_scalar()
    public, shares = oprf.deal(t, n, epoch=3, secret=secret)
    public.check_consistent()
    members = data.draw(st.permutations(range(1, n + 1)), label="order")[:t]
    inputs = [oprf.token_input(3, "patient", i, "ISSUER") for i in ids]
    bis = [oprf.blind(x) for x in inputs]
    outputs, bad = run_threshold(public, shares, bis, members)
    assert bad == []
    assert [oprf.token_from_output(3, o) for o in outputs] == [
        oprf.tokenize_with_key(secret, 3, "patient", i, "ISSUER") for i in ids
    ]


def test_every_t_subset_gives_the_same_token():
    t, n = 3, 5
    public, shares = oprf.deal(t, n, epoch=1)
    x = oprf.token_input(1, "patient", "1234567", "MPI")
    tokens = set()
    for members in itertools.combinations(range(1, n + 1), t):
        bi = oprf.blind(x)  # a fresh blind each time: the result must not depend on it
        (out,), _ = run_threshold(public, shares, [bi], members)
        tokens.add(oprf.token_from_output(1, out))
    assert len(tokens) == 1


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 7), data=st.data())
def test_fewer_than_t_shares_do_not_give_the_token(n, data):
    t = data.draw(st.integers(2, n), label="t")
    secret = oprf.random_scalar()
    public, shares = oprf.deal(t, n, epoch=1, secret=secret)
    members = data.draw(st.permutations(range(1, n + 1)), label="order")[: t - 1]
    x = oprf.token_input(1, "user", "dr.house")
    bi = oprf.blind(x)
    partials = [oprf.evaluate_partial(shares[i - 1], [bi.element]) for i in members]
    with pytest.raises(OprfError, match="valid partial"):
        oprf.combine(public, [bi], partials)
    # Interpolating t-1 shares as if they were enough (a colluding coalition's best try) gives another value.
    lam = oprf.lagrange_at_zero(members)
    z = oprf._lincomb((lam[i], p.elements[0]) for i, p in zip(members, partials, strict=True))
    assert oprf.finalize(bi, z) != oprf.evaluate(secret, x)


def test_fewer_than_t_answers_refused_even_if_one_member_answers_twice():
    public, shares = oprf.deal(3, 4, epoch=1)
    bi = oprf.blind(oprf.token_input(1, "study", "1.2.3"))
    p1 = oprf.evaluate_partial(shares[0], [bi.element])
    p2 = oprf.evaluate_partial(shares[1], [bi.element])
    with pytest.raises(OprfError):
        oprf.combine(public, [bi], [p1, p2, p1, p2])


# ----------------------------------------------------------------------------- Byzantine members


def lying_partials(share, blinded, how):
    honest = oprf.evaluate_partial(share, blinded)
    other = oprf.random_scalar()
    if how == "wrong-key":  # evaluates with a key of its own choice and proves that key honestly
        z = [oprf._mul(other, b) for b in blinded]
        proof = oprf.generate_proof(other, oprf.GENERATOR, oprf._mul_base(other), blinded, z)
        return oprf.Partial(honest.epoch, honest.index, tuple(z), proof)
    if how == "garbage-point":
        return oprf.Partial(honest.epoch, honest.index, (b"\x01" * 32,) + honest.elements[1:], honest.proof)
    if how == "identity":
        return oprf.Partial(honest.epoch, honest.index, (bytes(32),) + honest.elements[1:], honest.proof)
    if how == "swapped":
        return oprf.Partial(honest.epoch, honest.index, tuple(reversed(honest.elements)), honest.proof)
    if how == "bad-proof":
        proof = bytearray(honest.proof)
        proof[5] ^= 1
        return oprf.Partial(honest.epoch, honest.index, honest.elements, bytes(proof))
    if how == "random-element":  # a valid point, the proof of the honest answer
        return oprf.Partial(
            honest.epoch, honest.index, (oprf._mul_base(other),) + honest.elements[1:], honest.proof
        )
    if how == "replay":  # an honest answer to another request
        return oprf.evaluate_partial(share, [oprf.blind(b"other").element] * len(blinded))
    if how == "wrong-epoch":
        return oprf.Partial(honest.epoch + 1, honest.index, honest.elements, honest.proof)
    if how == "short":
        return oprf.Partial(honest.epoch, honest.index, honest.elements[:-1], honest.proof)
    if how == "high-bit":  # the same element with the encoding's unused top bit set (libsodium ignores it)
        e = honest.elements[0]
        return oprf.Partial(
            honest.epoch, honest.index, (e[:31] + bytes([e[31] | 0x80]),) + honest.elements[1:], honest.proof
        )
    if how == "not-bytes":
        return oprf.Partial(honest.epoch, honest.index, None, None)  # type: ignore[arg-type]
    raise AssertionError(how)


LIES = [
    "wrong-key",
    "garbage-point",
    "identity",
    "swapped",
    "bad-proof",
    "random-element",
    "replay",
    "wrong-epoch",
    "short",
    "high-bit",
    "not-bytes",
]


@pytest.mark.parametrize("how", LIES)
def test_a_lying_member_is_caught_and_the_token_computes_from_the_others(how):
    # n = 4, f = 1, t = f + 1 = 2: one liar among the first answers, two honest members remain.
    secret = oprf.random_scalar()
    public, shares = oprf.deal(2, 4, epoch=7, secret=secret)
    ids = ["PAT-1", "PAT-2"]
    bis = [oprf.blind(oprf.token_input(7, "patient", i, "MPI")) for i in ids]
    blinded = [bi.element for bi in bis]
    partials = [lying_partials(shares[0], blinded, how)] + [
        oprf.evaluate_partial(shares[i], blinded) for i in (1, 2)
    ]
    outputs, bad = oprf.combine(public, bis, partials)
    assert bad == [1]
    assert [oprf.token_from_output(7, o) for o in outputs] == [
        oprf.tokenize_with_key(secret, 7, "patient", i, "MPI") for i in ids
    ]


def test_a_member_cannot_answer_for_another():
    public, shares = oprf.deal(2, 4, epoch=1)
    bi = oprf.blind(b"x")
    p = oprf.evaluate_partial(shares[0], [bi.element])
    impostor = oprf.Partial(p.epoch, 2, p.elements, p.proof)  # member 1's answer claimed as member 2's
    assert oprf.verify_partial(public, [bi.element], p)
    assert not oprf.verify_partial(public, [bi.element], impostor)
    assert not oprf.verify_partial(public, [bi.element], oprf.Partial(p.epoch, 99, p.elements, p.proof))


# -------------------------------------------------------------------------------------- blinding


@settings(max_examples=30, deadline=None)
@given(x=st.binary(max_size=64))
def test_blinded_inputs_are_not_trivially_linkable(x):
    a, b = oprf.blind(x), oprf.blind(x)
    # Two requests for one identifier look unrelated, and neither is the unblinded hash point.
    assert a.element != b.element
    assert oprf.hash_to_group(x) not in (a.element, b.element)
    assert oprf.decode_point(a.element) == a.element
    # Yet both unblind to the same value under one key.
    sk = oprf.random_scalar()
    assert oprf.finalize(a, oprf.blind_evaluate(sk, a.element)) == oprf.finalize(
        b, oprf.blind_evaluate(sk, b.element)
    )
    assert "element" in repr(a) and repr(x) not in repr(a)


# ----------------------------------------------------------------------------------------- tokens


def test_tokens_carry_their_epoch_and_never_collide_across_epochs():
    secret = oprf.random_scalar()
    t1 = oprf.tokenize_with_key(secret, 1, "patient", "PAT-1", "MPI")
    t2 = oprf.tokenize_with_key(secret, 2, "patient", "PAT-1", "MPI")  # same key: still distinct
    assert len(t1) == len(t2) == oprf.TOKEN_BYTES
    assert t1[:2] == b"\x00\x01" and t2[:2] == b"\x00\x02" and t1[2:] != t2[2:]


def test_token_inputs_are_domain_separated_and_length_prefixed():
    ti = oprf.token_input
    assert ti(1, "patient", "AB", "C") != ti(1, "patient", "A", "BC")
    assert ti(1, "study", "1.2") != ti(1, "series", "1.2")
    for bad in [
        (70000, "patient", "x"),
        (1, "", "x"),
        (1, "a\x00b", "x"),
        (1, "patient", ""),
        (1, "patient", "x" * 1025),
        (1, "patient", 5),
    ]:
        with pytest.raises(OprfError):
            ti(*bad)


# ----------------------------------------------------------------------------------- hostile bytes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 31,
        bytes(32),
        b"\xff" * 32,
        b"\x01" + bytes(31),
        None,
        "a" * 32,
        bytes(33),
        oprf.GENERATOR[:31] + bytes([oprf.GENERATOR[31] | 0x80]),  # non-canonical twin of a valid element
    ],
)
def test_decode_point_refuses_malformed(data):
    with pytest.raises(OprfError):
        oprf.decode_point(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=32, max_size=32))
def test_decode_point_accepts_only_canonical_elements(data):
    try:
        p = oprf.decode_point(data)
    except OprfError:
        return
    assert oprf.crypto_scalarmult_ristretto255(oprf.encode_scalar(1), p) == p  # canonical round trip


def test_decode_scalar_refuses_non_canonical():
    with pytest.raises(OprfError):
        oprf.decode_scalar(oprf.ORDER.to_bytes(32, "little"))
    with pytest.raises(OprfError):
        oprf.decode_scalar(b"\x01")
    assert oprf.decode_scalar((oprf.ORDER - 1).to_bytes(32, "little")) == oprf.ORDER - 1


def test_member_refuses_hostile_batches_before_working():
    public, shares = oprf.deal(1, 1, epoch=1)
    good = oprf.blind(b"x").element
    for batch in ([], [good] * (oprf.MAX_BATCH + 1), [good, bytes(32)], [good, b"\xff" * 32], [good, 12]):
        with pytest.raises(OprfError):
            oprf.evaluate_partial(shares[0], batch)


def test_verify_proof_refuses_malformed_proofs():
    sk = oprf.random_scalar()
    pk = oprf._mul_base(sk)
    b = oprf.blind(b"x").element
    z = oprf._mul(sk, b)
    proof = oprf.generate_proof(sk, oprf.GENERATOR, pk, [b], [z])
    assert oprf.verify_proof(oprf.GENERATOR, pk, [b], [z], proof)
    order = oprf.ORDER.to_bytes(32, "little")
    for bad in [b"", proof[:63], proof + b"\x00", order + proof[32:], proof[:32] + order, bytes(64), None]:
        assert not oprf.verify_proof(oprf.GENERATOR, pk, [b], [z], bad)
    assert not oprf.verify_proof(oprf.GENERATOR, pk, [], [], proof)


def test_shares_and_public_parameters_are_checked():
    public, shares = oprf.deal(2, 3, epoch=1)
    with pytest.raises(OprfError):
        oprf.KeyShare(1, shares[1].secret, public)  # share 2's secret under index 1
    tampered = list(public.public_shares)
    tampered[2] = oprf._mul_base(oprf.random_scalar())
    bad_public = oprf.EpochPublic(1, 2, 3, public.public_key, tuple(tampered))
    with pytest.raises(OprfError, match="not a degree-1 sharing"):
        bad_public.check_consistent()
    for t, n in [(0, 3), (4, 3), (1, oprf.MAX_MEMBERS + 1)]:
        with pytest.raises(OprfError):
            oprf.deal(t, n, epoch=1)
    with pytest.raises(OprfError):
        oprf.lagrange_at_zero([1, 1])
    assert "secret" not in repr(shares[0]) and str(shares[0].secret) not in repr(shares[0])


# -------------------------------------------------------------------------- dealer-free generation


def run_dkg(t, n, epoch=1):
    contributions = {j: oprf.dkg_contribution(j, t, n) for j in range(1, n + 1)}
    commitments = {j: c.commitments for j, c in contributions.items()}
    results = [
        oprf.dkg_finish(epoch, t, n, i, commitments, {j: c.shares[i - 1] for j, c in contributions.items()})
        for i in range(1, n + 1)
    ]
    return contributions, results


def test_dkg_members_agree_and_their_shares_evaluate_the_joint_key():
    t, n = 2, 4
    contributions, results = run_dkg(t, n)
    publics = {r[0] for r in results}
    assert len(publics) == 1  # every member derived the same public parameters from the broadcast
    public = publics.pop()
    public.check_consistent()
    observer, none = oprf.dkg_finish(1, t, n, None, {j: c.commitments for j, c in contributions.items()})
    assert observer == public and none is None
    # The joint key is the sum of the dealers' secrets, which nobody knows; the test does, to check.
    joint = sum(c.shares[0] for c in contributions.values())  # f(1), then interpolate f(0) with f(2)
    joint2 = sum(c.shares[1] for c in contributions.values())
    lam = oprf.lagrange_at_zero([1, 2])
    secret = (lam[1] * joint + lam[2] * joint2) % oprf.ORDER
    assert oprf._mul_base(secret) == public.public_key
    shares = [r[1] for r in results]
    bi = oprf.blind(oprf.token_input(1, "patient", "P", "I"))
    (out,), _ = run_threshold(public, shares, [bi], [4, 2])
    assert oprf.token_from_output(1, out) == oprf.tokenize_with_key(secret, 1, "patient", "P", "I")


def test_dkg_detects_a_bad_share_and_a_wrong_degree():
    t, n = 2, 3
    contributions = {j: oprf.dkg_contribution(j, t, n) for j in range(1, n + 1)}
    commitments = {j: c.commitments for j, c in contributions.items()}
    mine = {j: c.shares[0] for j, c in contributions.items()}
    mine[2] = (mine[2] + 1) % oprf.ORDER  # dealer 2 cheats member 1
    assert not oprf.verify_contribution_share(commitments[2], 1, mine[2])
    with pytest.raises(OprfError, match="dealer 2"):
        oprf.dkg_finish(1, t, n, 1, commitments, mine)
    high = dict(commitments)
    high[3] = commitments[3] + (oprf._mul_base(5),)  # degree t: t members alone could not reconstruct
    with pytest.raises(OprfError, match="degree"):
        oprf.dkg_finish(1, t, n, None, high)
    assert not oprf.verify_contribution_share([bytes(32)], 1, 5)


def test_rng_is_not_seeded_from_python_random():
    # Blinds and keys come from os.urandom: reseeding Python's PRNG does not repeat them.
    random.seed(1)
    a = oprf.random_scalar()
    random.seed(1)
    assert oprf.random_scalar() != a


# ------------------------------------------------------------------------------------ key files


def test_epoch_public_and_key_share_round_trip():
    public, shares = oprf.deal(3, 4, epoch=9)
    data = oprf.encode_epoch_public(public)
    assert oprf.decode_epoch_public(data) == public
    assert oprf.epoch_key_id(public) == oprf.epoch_key_id(oprf.decode_epoch_public(data))
    other, _ = oprf.deal(3, 4, epoch=9)
    assert oprf.epoch_key_id(other) != oprf.epoch_key_id(public)
    for s in shares:
        assert oprf.decode_key_share(oprf.encode_key_share(s), public) == s
    with pytest.raises(OprfError):  # a share only loads against its own epoch's public parameters
        oprf.decode_key_share(oprf.encode_key_share(shares[0]), other)


def test_decode_epoch_public_refuses_hostile_or_inconsistent_parameters():
    import msgpack

    public, _ = oprf.deal(2, 4, epoch=1)
    good = [1, public.epoch, public.t, public.n, public.public_key, list(public.public_shares)]
    rogue = list(public.public_shares)
    rogue[3] = oprf._mul_base(oprf.random_scalar())  # a dealer handing member 4 a share off the polynomial
    bad = [
        b"",
        b"\xc1",
        b"\xdd\xff\xff\xff\xff",
        msgpack.packb({"epoch": 1}),
        msgpack.packb(good[:5]),
        msgpack.packb([2] + good[1:]),
        msgpack.packb(good[:2] + [5] + good[3:]),  # t > n
        msgpack.packb(good[:4] + [bytes(32)] + good[5:]),  # identity key
        msgpack.packb(good[:5] + [list(public.public_shares)[:3]]),  # a share missing
        msgpack.packb(good[:5] + [rogue]),
        oprf.encode_epoch_public(public) + b"\x00",
    ]
    for data in bad:
        with pytest.raises(OprfError):
            oprf.decode_epoch_public(data)


def _threshold_token(public, shares, kind="patient", parts=("1234567", "MPI")):
    data = oprf.token_input(public.epoch, kind, *parts)
    bi = oprf.blind(data)
    partials = [oprf.evaluate_partial(s, [bi.element]) for s in shares]
    return oprf.token_from_output(public.epoch, oprf.combine_verified(public, [bi], partials)[0])


@pytest.mark.parametrize("t_new,n_new", [(3, 5), (3, 4), (5, 7), (1, 1)])
def test_reshare_keeps_every_token_for_a_new_member_set(t_new, n_new):
    k = oprf.random_scalar()
    old, old_shares = oprf.deal(3, 4, epoch=2, secret=k)
    dealers = [old_shares[0], old_shares[2], old_shares[3]]  # member 2 is away: any t old members suffice
    contributions = {s.index: oprf.reshare_contribution(s, t_new, n_new) for s in dealers}
    commitments = {i: c.commitments for i, c in contributions.items()}
    public, _ = oprf.reshare_finish(old, t_new, n_new, None, commitments)
    new_shares = []
    for j in range(1, n_new + 1):
        pub_j, share_j = oprf.reshare_finish(old, t_new, n_new, j, commitments,
                                            {i: c.shares[j - 1] for i, c in contributions.items()})
        assert pub_j == public
        new_shares.append(share_j)
    public.check_consistent()
    assert public.public_key == old.public_key and public.epoch == old.epoch and public.n == n_new
    want = oprf.tokenize_with_key(k, 2, "patient", "1234567", "MPI")
    assert _threshold_token(public, random.sample(new_shares, t_new)) == want
    assert _threshold_token(old, old_shares[:3]) == want
    if t_new > 1:  # t_new - 1 new shares still say nothing
        with pytest.raises(OprfError):
            _threshold_token(public, new_shares[: t_new - 1])


def test_reshare_refuses_a_member_that_deals_something_else_or_a_bad_share():
    old, old_shares = oprf.deal(3, 4, epoch=1)
    contributions = {s.index: oprf.reshare_contribution(s, 3, 5) for s in old_shares[:3]}
    forged = oprf.dkg_contribution(2, 3, 5)  # member 2 deals a random secret instead of its share
    commitments = {i: c.commitments for i, c in contributions.items()}
    with pytest.raises(OprfError, match="did not re-share its own key share"):
        oprf.reshare_finish(old, 3, 5, None, {**commitments, 2: forged.commitments})
    shares = {i: c.shares[0] for i, c in contributions.items()}
    with pytest.raises(OprfError, match="share from member 3 does not match"):
        oprf.reshare_finish(old, 3, 5, 1, commitments, {**shares, 3: (shares[3] + 1) % oprf.ORDER})
    with pytest.raises(OprfError, match="need t=3"):
        oprf.reshare_finish(old, 3, 5, None, {1: commitments[1], 2: commitments[2]})
