"""Threshold OPRF pseudonyms: 2HashDH over ristretto255, RFC 9497 OPRF(ristretto255, SHA-512), key Shamir-shared.

Pure module: no I/O, no clock; ristretto255 arithmetic comes from libsodium (bound below); randomness only
from `os.urandom` through `random_scalar` (the deterministic helpers take the caller's scalars instead, which
is how the RFC 9497 test vectors are checked).

The function computed is RFC 9497's OPRF (mode 0x00) with key k:

    F(k, x) = SHA-512(len16(x) || x || len16(e) || e || "Finalize"),  e = Encode(k * HashToGroup(x))

and nobody ever holds k. The key is Shamir-shared: member i holds k_i = f(i) for a random polynomial f of
degree t-1 with f(0) = k, and publishes K_i = k_i * G. To evaluate x, a requester:

  1. blinds: B = r * HashToGroup(x) for a fresh random scalar r (the members see only B, a uniformly random
     group element independent of x);
  2. asks members for partials Z_i = k_i * B, each with a DLEQ proof that log_G(K_i) = log_B(Z_i)
     (RFC 9497 section 2.2: Chaum-Pedersen, Fiat-Shamir, batched over many points with composites, under
     the VOPRF context string so a one-member deployment is exactly RFC 9497 VOPRF);
  3. drops every partial whose proof fails, combines any t valid ones with Lagrange coefficients at 0:
     Z = sum lambda_i Z_i = k * B;
  4. unblinds N = r^-1 * Z = k * HashToGroup(x) and finalizes as above.

RadChain tokens bind the key epoch twice: the epoch is part of the OPRF input (so epochs never collide even
under one key) and is the token's 2-byte prefix (so a reader sees which key produced it, and `audit_trail`
can search every epoch). Threat model and choice of t: docs/PSEUDONYMS.md, "Threshold OPRF".

Every byte string from a peer (points, scalars, proofs) goes through `decode_point` / `decode_scalar`,
which refuse wrong lengths, non-canonical encodings and the identity, raising `OprfError`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgpack


class OprfError(ValueError):
    """Malformed or invalid OPRF material: a bad encoding, a failed proof, too few valid partials."""


# PyNaCl (1.6) does not bind libsodium's ristretto255 API, so the few calls needed are bound here with
# ctypes to the system libsodium (>= 1.0.18; Debian/Ubuntu package libsodium23), the same C library PyNaCl
# bundles. Buffers are fixed-size and every return code is checked.
_SODIUM_NAMES = ("libsodium.so.23", "libsodium.so.26", ctypes.util.find_library("sodium"))


def _load_sodium() -> ctypes.CDLL:
    for name in _SODIUM_NAMES:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.crypto_core_ristretto255_from_hash  # noqa: B018 (raises AttributeError before 1.0.18)
        except (OSError, AttributeError):
            continue
        if lib.sodium_init() < 0:
            raise ImportError("libsodium: sodium_init failed")
        return lib
    raise ImportError("node.ledger.oprf needs the system libsodium >= 1.0.18 (apt-get install libsodium23)")


_sodium = _load_sodium()


def crypto_core_ristretto255_from_hash(h: bytes) -> bytes:
    assert len(h) == 64
    out = ctypes.create_string_buffer(32)
    rc = _sodium.crypto_core_ristretto255_from_hash(out, h)
    assert rc == 0
    return out.raw


def crypto_core_ristretto255_is_valid_point(p: bytes) -> bool:
    assert len(p) == 32
    return _sodium.crypto_core_ristretto255_is_valid_point(p) == 1


def crypto_core_ristretto255_add(p: bytes, q: bytes) -> bytes:
    assert len(p) == 32 and len(q) == 32
    out = ctypes.create_string_buffer(32)
    if _sodium.crypto_core_ristretto255_add(out, p, q) != 0:
        raise OprfError("ristretto255 add: invalid point")
    return out.raw


def crypto_scalarmult_ristretto255(n: bytes, p: bytes) -> bytes:
    assert len(n) == 32 and len(p) == 32
    out = ctypes.create_string_buffer(32)
    if _sodium.crypto_scalarmult_ristretto255(out, n, p) != 0:
        raise OprfError("ristretto255 scalar multiplication: invalid point or identity result")
    return out.raw


def _scalar_mul(x: bytes, y: bytes) -> bytes:
    out = ctypes.create_string_buffer(32)
    _sodium.crypto_core_ristretto255_scalar_mul(out, x, y)
    return out.raw


def _scalar_sub(x: bytes, y: bytes) -> bytes:
    out = ctypes.create_string_buffer(32)
    _sodium.crypto_core_ristretto255_scalar_sub(out, x, y)
    return out.raw


def crypto_scalarmult_ristretto255_base(n: bytes) -> bytes:
    assert len(n) == 32
    out = ctypes.create_string_buffer(32)
    if _sodium.crypto_scalarmult_ristretto255_base(out, n) != 0:
        raise OprfError("ristretto255 base multiplication: zero scalar")
    return out.raw


__all__ = [
    "OprfError",
    "ORDER",
    "Partial",
    "KeyShare",
    "EpochPublic",
    "BlindedInput",
    "Contribution",
    "TOKEN_BYTES",
    "MAX_BATCH",
    "MAX_MEMBERS",
    "random_scalar",
    "hash_to_group",
    "hash_to_scalar",
    "derive_key_pair",
    "blind",
    "blind_evaluate",
    "finalize",
    "evaluate",
    "generate_proof",
    "verify_proof",
    "split_secret",
    "deal",
    "encode_epoch_public",
    "decode_epoch_public",
    "epoch_key_id",
    "encode_key_share",
    "decode_key_share",
    "lagrange_at_zero",
    "evaluate_partial",
    "verify_partial",
    "combine",
    "combine_verified",
    "token_input",
    "token_from_output",
    "tokenize_with_key",
    "dkg_contribution",
    "verify_contribution_share",
    "dkg_finish",
    "reshare_contribution",
    "reshare_finish",
    "feldman_public_share",
    "encode_scalar",
    "decode_scalar",
    "decode_point",
]

# Order of the ristretto255 group (RFC 9496).
ORDER = 2**252 + 27742317777372353535851937790883648493

MODE_OPRF = 0x00
MODE_VOPRF = 0x01
IDENTIFIER = b"ristretto255-SHA512"
CONTEXT_OPRF = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + IDENTIFIER
# Partial evaluations are proven under the VOPRF context: with t = n = 1 a member's answer is exactly an
# RFC 9497 VOPRF BlindEvaluate, which the tests check against the RFC's proof vectors.
CONTEXT_VOPRF = b"OPRFV1-" + bytes([MODE_VOPRF]) + b"-" + IDENTIFIER

POINT_BYTES = 32
SCALAR_BYTES = 32
PROOF_BYTES = 64
OUTPUT_BYTES = 64
# 2-byte epoch || 14 bytes of OPRF output: the 16 bytes every token field and index key of the ledger has
# (node.tx.TOKEN_BYTES). 112 bits keep collisions negligible (birthday bound ~2^56 identifiers per epoch);
# guessing does not depend on the length (a guesser compares whole tokens).
TOKEN_BYTES = 16
MAX_BATCH = 1024  # points per request: bounds a peer's work per message (callers may impose less)
MAX_MEMBERS = 1000  # share indices are 1..MAX_MEMBERS
MAX_INPUT_BYTES = 4096
IDENTITY = bytes(32)
_TOKEN_DOMAIN = b"radchain/pseudonym/oprf/v1/"


# ---------------------------------------------------------------------------------------- primitives


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _lp(data: bytes) -> bytes:
    """RFC 9497's I2OSP(len(x), 2) || x."""
    assert len(data) < 1 << 16
    return _i2osp(len(data), 2) + data


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512 (b_in_bytes 64, s_in_bytes 128)."""
    assert 0 < len(dst) <= 255 and 0 < length <= 255 * 64
    ell = -(-length // 64)
    dst_prime = dst + _i2osp(len(dst), 1)
    b0 = hashlib.sha512(bytes(128) + msg + _i2osp(length, 2) + b"\x00" + dst_prime).digest()
    b = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [b]
    for i in range(2, ell + 1):
        b = hashlib.sha512(
            bytes(x ^ y for x, y in zip(b0, b, strict=True)) + _i2osp(i, 1) + dst_prime
        ).digest()
        out.append(b)
    return b"".join(out)[:length]


def hash_to_group(msg: bytes, context: bytes = CONTEXT_OPRF) -> bytes:
    """hash_to_ristretto255 (RFC 9380 appendix B) with DST "HashToGroup-" || context."""
    point = crypto_core_ristretto255_from_hash(expand_message_xmd(msg, b"HashToGroup-" + context, 64))
    if point == IDENTITY:  # probability ~2^-252; RFC 9497 Blind() refuses it
        raise OprfError("input hashes to the identity element")
    return point


def hash_to_scalar(msg: bytes, context: bytes, dst: bytes | None = None) -> int:
    uniform = expand_message_xmd(msg, dst if dst is not None else b"HashToScalar-" + context, 64)
    return int.from_bytes(uniform, "little") % ORDER


def random_scalar() -> int:
    """Uniform in [1, ORDER): 64 random bytes reduced (bias ~2^-259)."""
    while True:
        s = int.from_bytes(os.urandom(64), "little") % ORDER
        if s:
            return s


def encode_scalar(s: int) -> bytes:
    assert 0 <= s < ORDER
    return s.to_bytes(SCALAR_BYTES, "little")


def decode_scalar(data: bytes, what: str = "scalar") -> int:
    if not isinstance(data, bytes | bytearray) or len(data) != SCALAR_BYTES:
        raise OprfError(f"{what}: must be {SCALAR_BYTES} bytes")
    s = int.from_bytes(data, "little")
    if s >= ORDER:
        raise OprfError(f"{what}: not a canonical scalar")
    return s


def decode_point(data: bytes, what: str = "point") -> bytes:
    """A peer's point: canonical ristretto255 encoding, not the identity (RFC 9497 DeserializeElement)."""
    if not isinstance(data, bytes | bytearray) or len(data) != POINT_BYTES:
        raise OprfError(f"{what}: must be {POINT_BYTES} bytes")
    data = bytes(data)
    # libsodium 1.0.18's ristretto255 decoder ignores the top bit of the last byte, so two encodings would
    # decode to one element; RFC 9496 Decode requires s < p, which a set top bit violates: refuse it here.
    if data[31] & 0x80 or data == IDENTITY or not crypto_core_ristretto255_is_valid_point(data):
        raise OprfError(f"{what}: not a valid ristretto255 element")
    return data


def _mul(s: int, point: bytes) -> bytes:
    # libsodium refuses a product equal to the identity; with s in [1, ORDER) and a non-identity point of
    # prime order that cannot happen, so a failure here is a bug, not an input error.
    s %= ORDER
    assert s != 0
    return crypto_scalarmult_ristretto255(encode_scalar(s), point)


def _mul_base(s: int) -> bytes:
    s %= ORDER
    assert s != 0
    return crypto_scalarmult_ristretto255_base(encode_scalar(s))


def _add(p: bytes | None, q: bytes) -> bytes:
    return q if p is None else crypto_core_ristretto255_add(p, q)


def _lincomb(pairs: Iterable[tuple[int, bytes]]) -> bytes:
    acc = None
    for s, point in pairs:
        acc = _add(acc, _mul(s, point))
    assert acc is not None
    return acc


GENERATOR = _mul_base(1)

# ------------------------------------------------------------------------ RFC 9497 single-key OPRF


def derive_key_pair(seed: bytes, info: bytes, context: bytes = CONTEXT_OPRF) -> tuple[int, bytes]:
    """RFC 9497 section 3.2.1 DeriveKeyPair."""
    derive_input = seed + _lp(info)
    for counter in range(256):
        sk = hash_to_scalar(derive_input + _i2osp(counter, 1), context, dst=b"DeriveKeyPair" + context)
        if sk:
            return sk, _mul_base(sk)
    raise OprfError("DeriveKeyPair: no non-zero scalar")  # pragma: no cover (probability 2^-2000)


@dataclass(frozen=True, slots=True)
class BlindedInput:
    """What the requester keeps (input, blind) and what it sends (`element`)."""

    input: bytes
    blind: int
    element: bytes

    def __repr__(self) -> str:  # the input may be an identifier: never print it
        return f"BlindedInput(element={self.element.hex()[:16]}...)"


def blind(data: bytes, r: int | None = None, context: bytes = CONTEXT_OPRF) -> BlindedInput:
    """RFC 9497 Blind(): B = r * HashToGroup(input)."""
    if not isinstance(data, bytes) or len(data) > MAX_INPUT_BYTES:
        raise OprfError(f"input: must be bytes of at most {MAX_INPUT_BYTES}")
    r = random_scalar() if r is None else r
    if not 0 < r < ORDER:
        raise OprfError("blind: must be a non-zero scalar")
    return BlindedInput(data, r, _mul(r, hash_to_group(data, context)))


def blind_evaluate(sk: int, blinded_element: bytes) -> bytes:
    return _mul(sk, decode_point(blinded_element, "blinded element"))


def finalize(bi: BlindedInput, evaluated_element: bytes) -> bytes:
    """RFC 9497 Finalize(): unblind and hash to the 64-byte output."""
    n = _mul(pow(bi.blind, -1, ORDER), decode_point(evaluated_element, "evaluated element"))
    return hashlib.sha512(_lp(bi.input) + _lp(n) + b"Finalize").digest()


def evaluate(sk: int, data: bytes, context: bytes = CONTEXT_OPRF) -> bytes:
    """RFC 9497 Evaluate(): the PRF computed by whoever holds the whole key (tests, dealer checks)."""
    n = _mul(sk, hash_to_group(data, context))
    return hashlib.sha512(_lp(data) + _lp(n) + b"Finalize").digest()


# ------------------------------------------------------------------------------- DLEQ (RFC 9497 2.2)


def _composites(
    b: bytes, c: Sequence[bytes], d: Sequence[bytes], context: bytes, k: int | None = None
) -> tuple[bytes, bytes]:
    """ComputeComposites (k None, verifier) or ComputeCompositesFast (k given, prover)."""
    assert len(c) == len(d) and c
    seed_dst = b"Seed-" + context
    seed = hashlib.sha512(_lp(b) + _lp(seed_dst)).digest()
    ds = [
        hash_to_scalar(_lp(seed) + _i2osp(i, 2) + _lp(ci) + _lp(di) + b"Composite", context)
        for i, (ci, di) in enumerate(zip(c, d, strict=True))
    ]
    # A zero d_i (probability 2^-252 each) simply drops that term; _mul refuses zero, so skip it here.
    m = _lincomb((di, ci) for di, ci in zip(ds, c, strict=True) if di)
    if k is not None:
        return m, _mul(k, m)
    return m, _lincomb((di, dd) for di, dd in zip(ds, d, strict=True) if di)


def _challenge(b: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes, context: bytes) -> int:
    return hash_to_scalar(_lp(b) + _lp(m) + _lp(z) + _lp(t2) + _lp(t3) + b"Challenge", context)


def generate_proof(
    k: int,
    a: bytes,
    b: bytes,
    c: Sequence[bytes],
    d: Sequence[bytes],
    r: int | None = None,
    context: bytes = CONTEXT_VOPRF,
) -> bytes:
    """Proof that log_a(b) = log_c[i](d[i]) for all i, serialized c || s (64 bytes)."""
    m, z = _composites(b, c, d, context, k=k)
    r = random_scalar() if r is None else r
    t2, t3 = _mul(r, a), _mul(r, m)
    ch = _challenge(b, m, z, t2, t3, context)
    # s = r - c*k in libsodium's constant-time scalar arithmetic: k is a member's key share and this runs on
    # every request, whose response time a requester observes (Python's big-integer product is not
    # constant-time in its operands).
    s = _scalar_sub(encode_scalar(r), _scalar_mul(encode_scalar(ch), encode_scalar(k)))
    return encode_scalar(ch) + s


def verify_proof(
    a: bytes, b: bytes, c: Sequence[bytes], d: Sequence[bytes], proof: bytes, context: bytes = CONTEXT_VOPRF
) -> bool:
    if not isinstance(proof, bytes | bytearray) or len(proof) != PROOF_BYTES:
        return False
    try:
        ch, s = decode_scalar(proof[:32], "proof c"), decode_scalar(proof[32:], "proof s")
    except OprfError:
        return False
    if not c or len(c) != len(d):
        return False
    m, z = _composites(b, c, d, context)
    # s or c may be zero only for a forged proof; a zero term contributes the identity, which _lincomb cannot
    # represent, so such a proof is refused outright (an honest one has them zero with probability 2^-252).
    if ch == 0 or s == 0:
        return False
    t2 = _lincomb(((s, a), (ch, b)))
    t3 = _lincomb(((s, m), (ch, z)))
    return hmac.compare_digest(encode_scalar(_challenge(b, m, z, t2, t3, context)), proof[:32])


# ----------------------------------------------------------------------------- Shamir and threshold


def _poly_eval(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for a in reversed(coeffs):
        acc = (acc * x + a) % ORDER
    return acc


def split_secret(
    secret: int, t: int, n: int, coeffs: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """Shamir: returns (polynomial coefficients a_0 = secret .. a_{t-1}, shares f(1) .. f(n))."""
    _check_tn(t, n)
    if not 0 < secret < ORDER:
        raise OprfError("secret: must be a non-zero scalar")
    poly = [secret] + (list(coeffs) if coeffs is not None else [random_scalar() for _ in range(t - 1)])
    assert len(poly) == t
    return poly, [_poly_eval(poly, i) for i in range(1, n + 1)]


def _check_tn(t: int, n: int) -> None:
    if type(t) is not int or type(n) is not int or not 1 <= t <= n <= MAX_MEMBERS:
        raise OprfError(f"threshold: need 1 <= t <= n <= {MAX_MEMBERS}, got t={t} n={n}")


def lagrange_at_zero(indices: Sequence[int]) -> dict[int, int]:
    """Coefficients lambda_i with f(0) = sum lambda_i f(i) for a polynomial of degree < len(indices)."""
    if len(set(indices)) != len(indices) or not all(
        type(i) is int and 1 <= i <= MAX_MEMBERS for i in indices
    ):
        raise OprfError("share indices: must be distinct integers in 1..MAX_MEMBERS")
    out = {}
    for i in indices:
        num = den = 1
        for j in indices:
            if j != i:
                num = num * j % ORDER
                den = den * (j - i) % ORDER
        out[i] = num * pow(den, -1, ORDER) % ORDER
    return out


@dataclass(frozen=True, slots=True)
class EpochPublic:
    """Public parameters of one key epoch: everyone (every node, the chain) may know them."""

    epoch: int
    t: int
    n: int
    public_key: bytes  # k * G
    public_shares: tuple[bytes, ...]  # K_i = k_i * G for i = 1..n (index i at position i-1)

    def __post_init__(self) -> None:
        if type(self.epoch) is not int or not 0 <= self.epoch < 1 << 16:
            raise OprfError("epoch: must be an integer in 0..65535")
        _check_tn(self.t, self.n)
        if len(self.public_shares) != self.n:
            raise OprfError("public shares: need one per member")
        decode_point(self.public_key, "public key")
        for i, p in enumerate(self.public_shares, 1):
            decode_point(p, f"public share {i}")

    def share_key(self, index: int) -> bytes:
        if type(index) is not int or not 1 <= index <= self.n:
            raise OprfError(f"share index {index!r}: not a member of epoch {self.epoch}")
        return self.public_shares[index - 1]

    def check_consistent(self) -> None:
        """The public shares lie on one polynomial of degree t-1 through the public key (dealer audit)."""
        for start in range(0, self.n - self.t + 1):
            idx = list(range(start + 1, start + self.t + 1))
            lam = lagrange_at_zero(idx)
            if _lincomb((lam[i], self.share_key(i)) for i in idx) != self.public_key:
                raise OprfError(
                    f"epoch {self.epoch}: public shares are not a degree-{self.t - 1} sharing of the key"
                )


def encode_epoch_public(public: EpochPublic) -> bytes:
    """Canonical bytes of an epoch's public parameters (for genesis/governance records and key files)."""
    return msgpack.packb(
        [1, public.epoch, public.t, public.n, public.public_key, list(public.public_shares)],
        use_bin_type=True,
    )


def decode_epoch_public(data: bytes) -> EpochPublic:
    """Hostile bytes -> EpochPublic, refusing anything that is not a consistent degree-(t-1) sharing."""
    if not isinstance(data, bytes | bytearray) or len(data) > 64 + MAX_MEMBERS * (POINT_BYTES + 2):
        raise OprfError("epoch public parameters: too long")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            max_bin_len=POINT_BYTES,
            max_str_len=0,
            max_array_len=MAX_MEMBERS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:
        raise OprfError(f"epoch public parameters: not valid msgpack ({type(e).__name__})") from None
    if not isinstance(obj, list) or len(obj) != 6 or obj[0] != 1 or not isinstance(obj[5], list):
        raise OprfError("epoch public parameters: unexpected layout")
    _, epoch, t, n, key, shares = obj
    public = EpochPublic(epoch, t, n, key, tuple(shares))
    if encode_epoch_public(public) != bytes(data):
        raise OprfError("epoch public parameters: not canonical")
    # Inconsistent shares would make different t-subsets compute different tokens: refuse them up front.
    public.check_consistent()
    return public


def epoch_key_id(public: EpochPublic) -> str:
    """Short public fingerprint for operators to compare across nodes (like Pseudonymizer.key_id)."""
    return hashlib.sha256(b"radchain/oprf/key-id/" + encode_epoch_public(public)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyShare:
    """Member `index`'s share of epoch `public.epoch`'s key. Secret: lives in one member's key store only."""

    index: int
    secret: int
    public: EpochPublic

    def __post_init__(self) -> None:
        if not 0 < self.secret < ORDER or _mul_base(self.secret) != self.public.share_key(self.index):
            raise OprfError(f"key share {self.index}: does not match its public share")

    def __repr__(self) -> str:  # never print the share
        return f"KeyShare(epoch={self.public.epoch}, index={self.index})"


def encode_key_share(share: KeyShare) -> bytes:
    """Secret bytes of a member's share (to be kept like a signing key: 0600, never on chain or in logs)."""
    return msgpack.packb([1, share.public.epoch, share.index, encode_scalar(share.secret)], use_bin_type=True)


def decode_key_share(data: bytes, public: EpochPublic) -> KeyShare:
    if not isinstance(data, bytes | bytearray) or len(data) > 64:
        raise OprfError("key share: must be at most 64 bytes")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            max_bin_len=SCALAR_BYTES,
            max_str_len=0,
            max_array_len=4,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:
        raise OprfError(f"key share: not valid msgpack ({type(e).__name__})") from None
    if not isinstance(obj, list) or len(obj) != 4 or obj[0] != 1 or obj[1] != public.epoch:
        raise OprfError("key share: unexpected layout or epoch")
    if type(obj[2]) is not int:
        raise OprfError("key share: bad index")
    return KeyShare(obj[2], decode_scalar(obj[3], "key share"), public)


def deal(t: int, n: int, epoch: int, secret: int | None = None) -> tuple[EpochPublic, list[KeyShare]]:
    """Trusted dealer (testnets): a fresh key, Shamir-split; the dealer must then forget it."""
    k = random_scalar() if secret is None else secret
    _, shares = split_secret(k, t, n)
    public = EpochPublic(epoch, t, n, _mul_base(k), tuple(_mul_base(s) for s in shares))
    return public, [KeyShare(i, s, public) for i, s in enumerate(shares, 1)]


@dataclass(frozen=True, slots=True)
class Partial:
    """One member's answer to a batch: Z_i[j] = k_i * B[j], with one batched DLEQ proof."""

    epoch: int
    index: int
    elements: tuple[bytes, ...]
    proof: bytes


def evaluate_partial(share: KeyShare, blinded: Sequence[bytes], r: int | None = None) -> Partial:
    """Member side: every blinded point is hostile input, decoded (and refused) before any work."""
    if not 0 < len(blinded) <= MAX_BATCH:
        raise OprfError(f"batch: need 1..{MAX_BATCH} points, got {len(blinded)}")
    points = [decode_point(b, f"blinded element {j}") for j, b in enumerate(blinded)]
    evaluated = [_mul(share.secret, p) for p in points]
    proof = generate_proof(
        share.secret, GENERATOR, share.public.share_key(share.index), points, evaluated, r=r
    )
    return Partial(share.public.epoch, share.index, tuple(evaluated), proof)


def verify_partial(public: EpochPublic, blinded: Sequence[bytes], partial: Partial) -> bool:
    """Requester side: the partial answers exactly our points under the member's published share."""
    if not isinstance(partial, Partial) or partial.epoch != public.epoch:
        return False
    if type(partial.index) is not int or not 1 <= partial.index <= public.n:
        return False
    if not isinstance(partial.elements, tuple | list) or len(partial.elements) != len(blinded) or not blinded:
        return False
    try:
        evaluated = [decode_point(e, "evaluated element") for e in partial.elements]
    except OprfError:
        return False
    try:
        return verify_proof(
            GENERATOR, public.share_key(partial.index), list(blinded), evaluated, partial.proof
        )
    except OprfError:  # e.g. a composite that is the identity: only a forged answer gets there
        return False


def combine(
    public: EpochPublic, blinded_inputs: Sequence[BlindedInput], partials: Iterable[Partial]
) -> tuple[list[bytes], list[int]]:
    """Verify partials, combine the first t valid ones, unblind and finalize.

    Returns (64-byte RFC 9497 outputs, one per input; indices of members whose partial failed its proof).
    Raises OprfError when fewer than t members gave a valid partial.
    """
    blinded = [bi.element for bi in blinded_inputs]
    good: dict[int, Partial] = {}
    bad: list[int] = []
    for p in partials:
        if len(good) == public.t:
            break
        idx = getattr(p, "index", None)
        if idx in good:
            continue  # a duplicate answer from one member counts once
        if verify_partial(public, blinded, p):
            good[p.index] = p
        else:
            bad.append(idx)
    if len(good) < public.t:
        raise OprfError(f"only {len(good)} valid partial evaluations, need t={public.t} (invalid from {bad})")
    return combine_verified(public, blinded_inputs, list(good.values())), bad


def combine_verified(
    public: EpochPublic, blinded_inputs: Sequence[BlindedInput], partials: Sequence[Partial]
) -> list[bytes]:
    """Lagrange-combine, unblind, finalize t partials the caller has already checked with `verify_partial`."""
    by_index = {p.index: p for p in partials}
    if len(by_index) != public.t or len(partials) != public.t:
        raise OprfError(f"combine: need exactly t={public.t} partials from distinct members")
    idx = sorted(by_index)
    lam = lagrange_at_zero(idx)
    outputs = []
    for j, bi in enumerate(blinded_inputs):
        z = _lincomb((lam[i], by_index[i].elements[j]) for i in idx)
        outputs.append(finalize(bi, z))
    return outputs


# ------------------------------------------------------------------------------------ RadChain tokens


def token_input(epoch: int, kind: str, *parts: str) -> bytes:
    """The OPRF input for one identifier: domain, epoch, kind, length-prefixed parts (as node/ledger/pseudonym.py)."""
    if type(epoch) is not int or not 0 <= epoch < 1 << 16:
        raise OprfError("epoch: must be an integer in 0..65535")
    if not isinstance(kind, str) or not kind.isascii() or not 0 < len(kind) <= 32 or "\x00" in kind:
        raise OprfError("kind: 1..32 ASCII characters")
    out = [_TOKEN_DOMAIN, _i2osp(epoch, 2), kind.encode(), b"\x00"]
    for part in parts:
        if not isinstance(part, str):
            raise OprfError("identifier parts: must be strings")
        data = part.encode("utf-8")
        if not 0 < len(data) <= 1024:
            raise OprfError("identifier part: 1..1024 bytes")
        out.append(_lp(data))
    data = b"".join(out)
    assert len(data) <= MAX_INPUT_BYTES or not parts
    return data


def token_from_output(epoch: int, output: bytes) -> bytes:
    assert len(output) == OUTPUT_BYTES
    return _i2osp(epoch, 2) + output[: TOKEN_BYTES - 2]


def tokenize_with_key(secret: int, epoch: int, kind: str, *parts: str) -> bytes:
    """Reference (whole-key) token: what the threshold protocol must reproduce. Tests and dealer checks only."""
    return token_from_output(epoch, evaluate(secret, token_input(epoch, kind, *parts)))


# ------------------------------------------------------------------- dealer-free generation (Feldman)


@dataclass(frozen=True, slots=True)
class Contribution:
    """Member `dealer`'s random sharing in a joint-Feldman DKG.

    `commitments` (C_m = a_m * G) are broadcast (on chain); `shares[i-1]` = f(i) goes to member i only,
    encrypted to it. Member i checks its share against the commitments before accepting it.
    """

    dealer: int
    commitments: tuple[bytes, ...]
    shares: tuple[int, ...]

    def __repr__(self) -> str:
        return f"Contribution(dealer={self.dealer}, t={len(self.commitments)})"


def dkg_contribution(dealer: int, t: int, n: int) -> Contribution:
    _check_tn(t, n)
    poly, shares = split_secret(random_scalar(), t, n)
    return Contribution(dealer, tuple(_mul_base(a) for a in poly), tuple(shares))


def feldman_public_share(commitments: Sequence[bytes], index: int) -> bytes:
    """sum_m C_m * index^m = f(index) * G, computed from public commitments only."""
    return _lincomb((pow(index, m, ORDER), c) for m, c in enumerate(commitments))


def verify_contribution_share(commitments: Sequence[bytes], index: int, share: int) -> bool:
    try:
        points = [decode_point(c, f"commitment {m}") for m, c in enumerate(commitments)]
    except OprfError:
        return False
    if not points or not 0 < share < ORDER:
        return False
    return _mul_base(share) == feldman_public_share(points, index)


def dkg_finish(
    epoch: int,
    t: int,
    n: int,
    index: int | None,
    commitments: Mapping[int, Sequence[bytes]],
    my_shares: Mapping[int, int] | None = None,
) -> tuple[EpochPublic, KeyShare | None]:
    """Combine the qualified dealers' contributions (those nobody complained about: decided on chain).

    Every member computes the same EpochPublic from the broadcast commitments; member `index` also sums the
    shares it received (my_shares[dealer]) into its key share. Joint-Feldman lets a rushing adversary bias
    the public key slightly (Gennaro et al. 1999); for an OPRF key that bias does not help evaluate it.
    """
    _check_tn(t, n)
    if len(commitments) < t:
        raise OprfError(f"DKG: {len(commitments)} qualified dealers, need at least t={t}")
    for dealer, comms in commitments.items():
        if len(comms) != t:
            raise OprfError(f"DKG: dealer {dealer} committed to degree {len(comms) - 1}, need {t - 1}")
    # Commitments add: C_m = sum over dealers of their C_{j,m}; shares add the same way.
    summed = [
        _lincomb((1, decode_point(commitments[d][m], f"commitment {d}/{m}")) for d in sorted(commitments))
        for m in range(t)
    ]
    public = EpochPublic(
        epoch, t, n, summed[0], tuple(feldman_public_share(summed, i) for i in range(1, n + 1))
    )
    if index is None:
        return public, None
    if my_shares is None or set(my_shares) != set(commitments):
        raise OprfError("DKG: need exactly one share from every qualified dealer")
    for dealer, s in my_shares.items():
        if not verify_contribution_share(commitments[dealer], index, s):
            raise OprfError(f"DKG: share from dealer {dealer} does not match its commitments (complain)")
    return public, KeyShare(index, sum(my_shares.values()) % ORDER, public)


# ------------------------------------------------------------------- resharing (same key, new member set)


def reshare_contribution(share: KeyShare, t_new: int, n_new: int) -> Contribution:
    """Old member `share.index` re-deals its own share to a new member set: f(0) = k_i, degree t_new - 1.

    The first commitment is k_i * G, which must equal the member's published K_i: a member cannot re-share
    anything but its real share (reshare_finish checks it). Shares go to the new members as in the DKG.
    """
    _check_tn(t_new, n_new)
    poly, shares = split_secret(share.secret, t_new, n_new)
    return Contribution(share.index, tuple(_mul_base(a) for a in poly), tuple(shares))


def reshare_finish(
    old: EpochPublic,
    t_new: int,
    n_new: int,
    index: int | None,
    commitments: Mapping[int, Sequence[bytes]],
    my_shares: Mapping[int, int] | None = None,
) -> tuple[EpochPublic, KeyShare | None]:
    """New shares of the same key (and epoch, so every token stays the same) for n_new members.

    `commitments` maps old member index -> its reshare commitments (the qualified ones, decided on chain);
    the first old.t of them (in index order) are combined with Lagrange coefficients at 0:
    k'_j = sum lambda_i f_i(j), so k'(0) = sum lambda_i k_i = k. New member `index` also gets its share.
    """
    _check_tn(t_new, n_new)
    dealers = sorted(commitments)[: old.t]
    if len(dealers) < old.t:
        raise OprfError(f"reshare: {len(dealers)} qualified old members, need t={old.t}")
    points: dict[int, list[bytes]] = {}
    for d in dealers:
        comms = commitments[d]
        if len(comms) != t_new:
            raise OprfError(f"reshare: member {d} committed to degree {len(comms) - 1}, need {t_new - 1}")
        points[d] = [decode_point(c, f"commitment {d}/{m}") for m, c in enumerate(comms)]
        if points[d][0] != old.share_key(d):
            raise OprfError(f"reshare: member {d} did not re-share its own key share")
    lam = lagrange_at_zero(dealers)
    summed = [_lincomb((lam[d], points[d][m]) for d in dealers) for m in range(t_new)]
    public = EpochPublic(
        old.epoch, t_new, n_new, summed[0], tuple(feldman_public_share(summed, j) for j in range(1, n_new + 1))
    )
    assert public.public_key == old.public_key  # the same key: Lagrange at 0 of the old shares
    if index is None:
        return public, None
    if my_shares is None or not set(dealers) <= set(my_shares):
        raise OprfError("reshare: need a share from every combined old member")
    for d in dealers:
        if not verify_contribution_share(commitments[d], index, my_shares[d]):
            raise OprfError(f"reshare: share from member {d} does not match its commitments (complain)")
    return public, KeyShare(index, sum(lam[d] * my_shares[d] for d in dealers) % ORDER, public)
