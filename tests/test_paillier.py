"""Paillier fast path (cleanroom.federated.paillier): correctness, phe interop, validation,
serialization. 1024-bit keys via the explicitly unsafe test helper, except one 2048-bit test."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import random

import gmpy2
import pytest
from phe import paillier as phe_paillier

from cleanroom.federated import paillier as P
from cleanroom.federated.paillier import (
    InvalidCiphertextError,
    InvalidCiphertextTypeError,
    PaillierPrivateKey,
    PaillierPublicKey,
    PlaintextOverflowError,
)

BITS = 1024  # test-only; the safe API refuses it


@pytest.fixture(scope="module")
def keys() -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    return P._unsafe_generate_keypair_for_tests(BITS)


@pytest.fixture(scope="module")
def pk(keys: tuple[PaillierPublicKey, PaillierPrivateKey]) -> PaillierPublicKey:
    return keys[0]


@pytest.fixture(scope="module")
def sk(keys: tuple[PaillierPublicKey, PaillierPrivateKey]) -> PaillierPrivateKey:
    return keys[1]


@pytest.fixture(scope="module")
def peer_pk(pk: PaillierPublicKey) -> PaillierPublicKey:
    """What a peer holds: the public key as received over the wire (with h_s)."""
    return P.public_key_from_json(json.dumps(P.public_key_to_json(pk)), min_bits=BITS)


def b64(x: int) -> str:
    raw = x.to_bytes(max(1, (x.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64_leading_zero(x: int) -> str:
    raw = b"\x00" + x.to_bytes((x.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ------------------------------------------------------------------------------------------
# Round trips and homomorphic operations
# ------------------------------------------------------------------------------------------


def test_roundtrip_owner_and_public(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    values = [0, 1, 2, 12345, 2**64 - 1, pk.max_int, -1, -(2**63), -pk.max_int]
    for enc in (sk.encrypt_many, pk.encrypt_many, peer_pk.encrypt_many):
        cs = enc(values)
        assert all(isinstance(c, int) and 0 < c < pk.nsquare for c in cs)
        assert sk.decrypt_many(cs) == values
        assert [sk.decrypt(c) for c in cs] == values
    assert sk.decrypt(sk.encrypt(42)) == 42
    assert sk.decrypt(peer_pk.encrypt(-42)) == -42
    # probabilistic: same plaintext, different ciphertexts
    assert len(set(sk.encrypt_many([7] * 8))) == 8


def test_public_key_without_fixed_base(sk: PaillierPrivateKey) -> None:
    bare = PaillierPublicKey(sk.public_key.n, min_bits=BITS)
    assert bare.h_s is None
    assert sk.decrypt_many(bare.encrypt_many([5, -5])) == [5, -5]  # full r**n path
    own = bare.with_fixed_base()
    assert own.h_s is not None and own.h_s != sk.public_key.h_s
    assert sk.decrypt(own.encrypt(99)) == 99


def test_negative_numbers_and_ranges(pk: PaillierPublicKey, sk: PaillierPrivateKey) -> None:
    c = sk.encrypt(-5)
    assert sk.decrypt(c) == -5
    assert sk.decrypt_raw(c) == pk.n - 5
    # raw residues are accepted as plaintexts: n - 1 is -1
    assert sk.decrypt(pk.encrypt(pk.n - 1)) == -1
    # phe's overflow band
    mid = pk.encrypt(pk.max_int + 1)
    assert sk.decrypt_raw(mid) == pk.max_int + 1
    with pytest.raises(PlaintextOverflowError) as info:
        sk.decrypt(mid)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OverflowError)
    for bad in (pk.n, -pk.max_int - 1, 10 * pk.n):
        with pytest.raises(ValueError, match="out of range"):
            sk.encrypt(bad)
    for bad_type in (1.5, "3", None, True):
        with pytest.raises(TypeError):
            pk.encrypt(bad_type)  # type: ignore[arg-type]


def test_homomorphic_add_sum_mul(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    rnd = random.Random(3)
    xs = [rnd.randrange(-(2**40), 2**40) for _ in range(50)]
    cs = peer_pk.encrypt_many(xs)
    assert sk.decrypt(peer_pk.add(cs[0], cs[1])) == xs[0] + xs[1]
    assert sk.decrypt(peer_pk.add_many(cs)) == sum(xs)
    assert sk.decrypt(peer_pk.add_many(iter(cs))) == sum(xs)
    assert peer_pk.add_many([]) == 1 and sk.decrypt(1) == 0
    # The unchecked sum (for ciphertexts validated once on arrival) is the same product.
    assert peer_pk.raw_add_many(peer_pk.validate_many(cs)) == peer_pk.add_many(cs)
    assert peer_pk.raw_add_many([]) == 1
    for k in (0, 1, 3, -1, -7, 2**30, -(2**30)):
        assert sk.decrypt(peer_pk.mul_plain(cs[2], k)) == xs[2] * k
    # weighted sum: sum k_i * x_i
    ks = [rnd.randrange(-1000, 1000) for _ in xs]
    weighted = peer_pk.add_many(peer_pk.mul_plain(c, k) for c, k in zip(cs, ks, strict=True))
    assert sk.decrypt(weighted) == sum(k * x for k, x in zip(ks, xs, strict=True))
    # a scalar in residue form (k mod n) means the same thing
    assert sk.decrypt(peer_pk.mul_plain(cs[3], pk.n - 2)) == -2 * xs[3]
    with pytest.raises(TypeError):
        peer_pk.mul_plain(cs[0], 2.0)  # type: ignore[arg-type]


def test_rerandomize(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    c = sk.encrypt(-123)
    variants = [
        sk.rerandomize(c),
        peer_pk.rerandomize(c),  # full r**n
        peer_pk.rerandomize(c, full=False),  # short exponent
        *peer_pk.rerandomize_many([c, c], full=True),
        *sk.rerandomize_many([c, c]),
    ]
    assert len({c, *variants}) == len(variants) + 1
    assert all(sk.decrypt(v) == -123 for v in variants)
    bare = PaillierPublicKey(pk.n, min_bits=BITS)
    assert sk.decrypt(bare.rerandomize(c)) == -123
    with pytest.raises(ValueError, match="h_s"):
        bare.rerandomize(c, full=False)
    with pytest.raises(InvalidCiphertextError):
        peer_pk.rerandomize(0)


def test_randomizer_pool_rerandomizes_like_a_full_r_to_the_n(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    assert P.pool_size(2048) == 288 and P.pool_size(BITS) == 160
    pool = peer_pk.randomizer_pool(rng=random.Random(3))
    assert len(pool) == P.pool_size(BITS)
    residues = P.ciphertexts_from_bytes(pool.to_bytes(), pk)
    assert all(sk.decrypt_raw(r) == 0 for r in residues)  # n-th residues: Enc(0)'s randomness
    xs = [-123, 0, 1, pk.max_int]
    cs = sk.encrypt_many(xs)
    fresh = pool.rerandomize_many(cs)
    assert sk.decrypt_many(fresh) == xs
    assert len({*cs, *fresh}) == 2 * len(xs)
    assert (
        phe_paillier.PaillierPrivateKey(pk.to_phe_public_key(), sk.p, sk.q).decrypt(
            P.to_phe_encrypted_number(fresh[0], pk)
        )
        == -123
    )

    # known answer: the randomizer is prod R_i**d_i for the source's bytes d_i, in order
    def digits(k: int) -> bytes:
        return bytes((7 * i + 3) % 256 for i in range(k))

    got = pool.rerandomize_many(cs[:2], rng=digits)
    d = digits(2 * len(pool))
    for j, c in enumerate(cs[:2]):
        want = c
        for r, e in zip(residues, d[j * len(pool) : (j + 1) * len(pool)], strict=True):
            want = want * pow(r, e, pk.nsquare) % pk.nsquare
        assert got[j] == want
    # only n and the residues travel; the copy draws the same randomizers from the same bytes
    copy = pickle.loads(pickle.dumps(pool))
    assert copy.rerandomize_many(cs[:2], rng=digits) == got
    assert (
        P.RandomizerPool.from_bytes(pk, pool.to_bytes()).rerandomize_many(cs[:1], rng=digits)
        == got[:1]
    )
    assert str(residues[0])[:40] not in repr(pool) and pk.fingerprint in repr(pool)

    with pytest.raises(ValueError, match="needs 160 residues, not 159"):
        P.RandomizerPool(pk, residues[:-1])
    with pytest.raises(InvalidCiphertextError):
        P.RandomizerPool(pk, [*residues[:-1], pk.n])
    with pytest.raises(InvalidCiphertextError):
        pool.rerandomize_many([cs[0], 0])
    with pytest.raises(TypeError):
        P.RandomizerPool(pk.n, residues)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# phe interop
# ------------------------------------------------------------------------------------------


def test_phe_decrypts_fast_path_ciphertexts(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    phe_sk = sk.to_phe_private_key()
    assert isinstance(phe_sk, phe_paillier.PaillierPrivateKey)
    assert phe_sk.public_key == pk.to_phe_public_key()
    values = [0, 17, -17, 2**62, -(2**62), pk.max_int, -pk.max_int]
    for cs in (sk.encrypt_many(values), peer_pk.encrypt_many(values)):  # owner CRT, public
        wrapped = [P.to_phe_encrypted_number(c, pk) for c in cs]
        assert all(isinstance(w, phe_paillier.EncryptedNumber) for w in wrapped)
        assert [phe_paillier.PaillierPrivateKey.decrypt(phe_sk, w) for w in wrapped] == values
        assert [phe_sk.raw_decrypt(c) for c in cs] == [v % pk.n for v in values]
    # an independent phe private key object built from p, q only
    phe_sk2 = phe_paillier.PaillierPrivateKey(phe_paillier.PaillierPublicKey(pk.n), sk.p, sk.q)
    c = peer_pk.encrypt(-99)
    assert phe_sk2.decrypt(phe_paillier.EncryptedNumber(phe_sk2.public_key, c)) == -99


def test_fast_path_decrypts_phe_ciphertexts(pk: PaillierPublicKey, sk: PaillierPrivateKey) -> None:
    phe_pk = pk.to_phe_public_key()
    values = [0, 5, -5, 2**50, -(2**50)]
    encs = [phe_pk.encrypt(v) for v in values]
    cs = [P.from_phe_encrypted_number(e, pk) for e in encs]
    assert sk.decrypt_many(cs) == values
    assert sk.decrypt(phe_pk.raw_encrypt(77)) == 77


def test_keys_generated_by_phe() -> None:
    phe_pk, phe_sk = phe_paillier.generate_paillier_keypair(n_length=BITS)
    with pytest.raises(ValueError, match="at least 2048"):
        PaillierPublicKey.from_phe(phe_pk)
    with pytest.raises(ValueError, match="at least 2048"):
        PaillierPrivateKey.from_phe(phe_sk)
    ours = PaillierPrivateKey.from_phe(phe_sk, min_bits=BITS)
    pub = PaillierPublicKey.from_phe(phe_pk, min_bits=BITS)
    assert pub == ours.public_key and pub.h_s is None and ours.public_key.h_s is not None
    assert ours.decrypt(P.from_phe_encrypted_number(phe_pk.encrypt(-31337), pub)) == -31337
    c = ours.encrypt(31337)
    assert phe_sk.decrypt(P.to_phe_encrypted_number(c, pub)) == 31337
    assert phe_sk.decrypt(P.to_phe_encrypted_number(pub.encrypt(-8), pub)) == -8
    with pytest.raises(TypeError):
        PaillierPublicKey.from_phe(pub)
    with pytest.raises(TypeError):
        PaillierPrivateKey.from_phe(ours)


def test_homomorphic_sums_agree_with_phe(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    phe_pk, phe_sk = pk.to_phe_public_key(), sk.to_phe_private_key()
    rnd = random.Random(11)
    xs = [rnd.randrange(-(2**32), 2**32) for _ in range(20)]
    ours = peer_pk.encrypt_many(xs)
    theirs = [phe_pk.encrypt(x) for x in xs]
    # phe sums our ciphertexts, we sum phe's, mixed sums
    phe_sum = sum(P.to_phe_encrypted_number(c, pk) for c in ours[1:]) + P.to_phe_encrypted_number(
        ours[0], pk
    )
    assert phe_sk.decrypt(phe_sum) == sum(xs)
    our_sum = peer_pk.add_many(P.from_phe_encrypted_number(e, pk) for e in theirs)
    assert sk.decrypt(our_sum) == sum(xs)
    assert phe_sk.decrypt(P.to_phe_encrypted_number(our_sum, pk)) == sum(xs)
    mixed = peer_pk.add(ours[0], P.from_phe_encrypted_number(theirs[1], pk))
    assert sk.decrypt(mixed) == xs[0] + xs[1]
    # scalar multiplication agrees with phe's
    assert phe_sk.decrypt(theirs[2] * -3) == sk.decrypt(peer_pk.mul_plain(ours[2], -3))


def test_phe_encrypted_number_conversion_errors(
    pk: PaillierPublicKey, sk: PaillierPrivateKey
) -> None:
    phe_pk = pk.to_phe_public_key()
    with pytest.raises(ValueError, match="not an integer encoding"):
        P.from_phe_encrypted_number(phe_pk.encrypt(1.5), pk)
    other_pk, _ = phe_paillier.generate_paillier_keypair(n_length=BITS)
    with pytest.raises(ValueError, match="different key"):
        P.from_phe_encrypted_number(other_pk.encrypt(1), pk)
    with pytest.raises(TypeError):
        P.from_phe_encrypted_number(sk.encrypt(1), pk)
    # positive exponent: value = encoding * 16**exponent
    e = phe_paillier.EncryptedNumber(phe_pk, sk.encrypt(3), exponent=2)
    assert sk.decrypt(P.from_phe_encrypted_number(e, pk)) == 3 * 256
    with pytest.raises(InvalidCiphertextError):
        P.from_phe_encrypted_number(
            phe_paillier.EncryptedNumber(phe_pk, pk.nsquare), pk, be_secure=False
        )
    with pytest.raises(InvalidCiphertextError):
        P.to_phe_encrypted_number(0, pk)


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def test_invalid_ciphertexts_rejected(pk: PaillierPublicKey, sk: PaillierPrivateKey) -> None:
    n2 = pk.nsquare
    cases: list[tuple[object, str]] = [
        (0, "is 0"),
        (-1, "negative"),
        (-n2, "negative"),
        (n2, "not below n\\*\\*2"),
        (n2 + 1, "not below n\\*\\*2"),
        (sk.p, "shares a factor"),
        (sk.q * 12345, "shares a factor"),
        (pk.n, "shares a factor"),
    ]
    for bad, msg in cases:
        with pytest.raises(InvalidCiphertextError, match=msg):
            P.validate_ciphertext(bad, pk)
    for bad_type in ("12", 1.0, None, True, b"\x01", [5]):
        with pytest.raises(InvalidCiphertextTypeError, match="must be an int") as info:
            P.validate_ciphertext(bad_type, pk)
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    good = sk.encrypt(1)
    assert P.validate_ciphertext(good, pk) == good
    assert P.validate_ciphertext(gmpy2.mpz(good), pk) == good
    assert P.validate_ciphertexts([good, gmpy2.mpz(good)], pk) == [good, good]
    with pytest.raises(TypeError):
        P.validate_ciphertext(good, sk)  # type: ignore[arg-type]


def test_batch_validation_names_the_index(pk: PaillierPublicKey, sk: PaillierPrivateKey) -> None:
    cs = sk.encrypt_many(range(6))
    for i, bad, msg in ((3, sk.p * 7, "shares a factor"), (0, 0, "is 0"), (5, "x", "int")):
        batch: list[object] = list(cs)
        batch[i] = bad
        with pytest.raises(InvalidCiphertextError, match=rf"ciphertext\[{i}\]: .*{msg}") as info:
            P.validate_ciphertexts(batch, pk)
        assert info.value.index == i


def test_every_peer_facing_operation_validates(
    pk: PaillierPublicKey, sk: PaillierPrivateKey, peer_pk: PaillierPublicKey
) -> None:
    good = sk.encrypt(1)
    bad = sk.q * 3
    calls = [
        lambda: peer_pk.add(good, bad),
        lambda: peer_pk.add(pk.nsquare, good),
        lambda: peer_pk.add_many([good, good, bad]),
        lambda: peer_pk.mul_plain(bad, 3),
        lambda: peer_pk.rerandomize(bad),
        lambda: peer_pk.rerandomize(bad, full=False),
        lambda: sk.rerandomize(bad),
        lambda: sk.decrypt(bad),
        lambda: sk.decrypt_raw(-good),
        lambda: sk.decrypt_many([good, bad]),
        lambda: P.ciphertexts_to_bytes([good, bad], pk),
    ]
    for call in calls:
        with pytest.raises(InvalidCiphertextError):
            call()
    with pytest.raises(TypeError):
        sk.decrypt("1")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Serialization
# ------------------------------------------------------------------------------------------


def test_public_key_json_roundtrip_and_tampering(pk: PaillierPublicKey) -> None:
    d = P.public_key_to_json(pk)
    assert d["type"] == "cleanroom.paillier.public_key" and d["version"] == 1
    assert set(d) == {"type", "version", "n", "h_s"}
    text = json.dumps(d)
    back = P.public_key_from_json(text, min_bits=BITS)
    assert back == pk and back.h_s == pk.h_s
    assert P.public_key_from_json(d, min_bits=BITS).n == pk.n
    assert P.public_key_from_json(text.encode(), min_bits=BITS).n == pk.n
    with pytest.raises(ValueError, match="at least 2048"):
        P.public_key_from_json(d)  # the default refuses 1024-bit keys

    def load(**changes: object) -> None:
        obj = {**d, **changes}
        P.public_key_from_json({k: v for k, v in obj.items() if v is not None}, min_bits=BITS)

    bad_values: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"type": "cleanroom.paillier.private_key"}, ValueError, "expected type"),
        ({"version": 2}, ValueError, "unsupported version"),
        ({"version": True}, ValueError, "unsupported version"),
        ({"n": None}, ValueError, "missing"),
        ({"extra": 1}, ValueError, "unknown fields"),
        ({"n": pk.n}, TypeError, "base64url string"),
        ({"n": d["n"] + "="}, ValueError, "base64url"),
        ({"n": b64_leading_zero(pk.n)}, ValueError, "canonical"),
        ({"n": d["n"][:-1] + "+"}, ValueError, "base64url"),
        ({"n": b64(pk.n + 1)}, ValueError, "odd"),
        ({"n": b64(pk.n * 3)}, ValueError, "small prime"),
        ({"n": b64(int(gmpy2.next_prime(pk.n)))}, ValueError, "prime"),
        ({"h_s": b64(1)}, ValueError, "h_s"),
        ({"h_s": b64(pk.nsquare + 5)}, ValueError, "h_s"),
        ({"h_s": b64(pk.n * 2)}, ValueError, "h_s"),
    ]
    for changes, exc, msg in bad_values:
        with pytest.raises(exc, match=msg):
            load(**changes)
    with pytest.raises(ValueError, match="duplicate"):
        P.public_key_from_json(text[:-1] + ', "n": "' + d["n"] + '"}', min_bits=BITS)
    with pytest.raises(ValueError, match="invalid JSON"):
        P.public_key_from_json("{", min_bits=BITS)
    with pytest.raises(TypeError):
        P.public_key_from_json(["n"], min_bits=BITS)  # type: ignore[arg-type]
    bare = P.public_key_to_json(PaillierPublicKey(pk.n, min_bits=BITS))
    assert "h_s" not in bare
    assert P.public_key_from_json(bare, min_bits=BITS).h_s is None


def test_private_key_json_roundtrip_and_tampering(
    pk: PaillierPublicKey, sk: PaillierPrivateKey
) -> None:
    d = P.private_key_to_json(sk)
    assert d["secret"] is True and d["type"] == "cleanroom.paillier.private_key"
    back = P.private_key_from_json(json.dumps(d), min_bits=BITS)
    assert back == sk and back.public_key.h_s == pk.h_s
    c = pk.encrypt(-4)
    assert back.decrypt(c) == -4 and sk.decrypt(back.encrypt(4)) == 4
    with pytest.raises(ValueError, match="at least 2048"):
        P.private_key_from_json(d)
    for changes, msg in (
        ({"secret": False}, "secret"),
        ({"p": b64(sk.p + 2)}, "does not equal"),
        ({"p": b64(1), "q": b64(pk.n)}, "does not equal"),
        ({"h_s": b64(pk.h_s * (1 + pk.n) % pk.nsquare)}, "n-th residue"),  # type: ignore[operator]
    ):
        with pytest.raises(ValueError, match=msg) as info:
            P.private_key_from_json({**d, **changes}, min_bits=BITS)
        assert str(sk.p) not in str(info.value) and str(sk.q) not in str(info.value)


def test_ciphertext_bytes_roundtrip_and_tampering(
    pk: PaillierPublicKey, sk: PaillierPrivateKey
) -> None:
    width = pk.ciphertext_bytes
    assert width == (pk.nsquare.bit_length() + 7) // 8
    cs = sk.encrypt_many([1, -2, 3, 0])
    blob = P.ciphertexts_to_bytes(cs, pk)
    assert isinstance(blob, bytes) and len(blob) == 4 * width
    assert P.ciphertexts_from_bytes(blob, pk) == cs
    assert P.ciphertexts_from_bytes(bytearray(blob), pk) == cs
    assert P.ciphertexts_from_bytes(memoryview(blob), pk) == cs
    assert P.ciphertexts_from_bytes(b"", pk) == [] and P.ciphertexts_to_bytes([], pk) == b""
    for cut in (blob[:-1], blob + b"\x00", blob[: width - 3]):
        with pytest.raises(InvalidCiphertextError, match="not a multiple"):
            P.ciphertexts_from_bytes(cut, pk)
    for i, chunk, msg in (
        (2, bytes(width), "is 0"),
        (1, pk.nsquare.to_bytes(width, "big"), "not below"),
        (3, b"\xff" * width, "not below"),
        (0, (sk.p * 5).to_bytes(width, "big"), "shares a factor"),
    ):
        tampered = blob[: i * width] + chunk + blob[(i + 1) * width :]
        with pytest.raises(InvalidCiphertextError, match=rf"ciphertext\[{i}\]: .*{msg}"):
            P.ciphertexts_from_bytes(tampered, pk)
        # The raw split leaves the values to its caller's validation.
        raw = P.raw_ciphertexts_from_bytes(tampered, pk)
        assert raw[i] == int.from_bytes(chunk, "big")
        with pytest.raises(InvalidCiphertextError, match=rf"ciphertext\[{i}\]: .*{msg}"):
            pk.validate_many(raw)
    with pytest.raises(InvalidCiphertextError, match="not a multiple"):
        P.raw_ciphertexts_from_bytes(blob[:-1], pk)
    with pytest.raises(TypeError):
        P.ciphertexts_from_bytes("00" * width, pk)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Keys, randomness, secrets
# ------------------------------------------------------------------------------------------


def test_small_keys_rejected_by_safe_api(pk: PaillierPublicKey) -> None:
    for bits in (512, 1024, 2047):
        with pytest.raises(ValueError, match="at least 2048"):
            P.generate_keypair(bits)
    with pytest.raises(TypeError):
        P.generate_keypair("2048")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2048"):
        PaillierPublicKey(pk.n)
    with pytest.raises(ValueError):
        P._unsafe_generate_keypair_for_tests(256)
    with pytest.raises(ValueError):
        PaillierPublicKey(pk.n, min_bits=256)
    assert P.djn_exponent_bits(2048) == 256 and P.djn_exponent_bits(3072) == 256
    assert P.djn_exponent_bits(7680) == 384 and P.djn_exponent_bits(BITS) == 256


def test_2048_bit_roundtrip() -> None:
    pub, priv = P.generate_keypair()
    assert pub.bits == 2048 and pub.exponent_bits == 256
    assert pub.ciphertext_bytes == 512
    peer = P.public_key_from_json(P.public_key_to_json(pub))
    values = [0, 1, -1, 2**63, -(2**63)]
    cs = priv.encrypt_many(values) + peer.encrypt_many(values)
    assert priv.decrypt_many(cs) == values + values
    phe_sk = priv.to_phe_private_key()
    assert [phe_sk.decrypt(P.to_phe_encrypted_number(c, pub)) for c in cs] == values + values
    assert priv.decrypt(P.from_phe_encrypted_number(pub.to_phe_public_key().encrypt(-9), pub)) == -9
    assert priv.decrypt(peer.add_many(cs)) == 0
    blob = P.ciphertexts_to_bytes(cs, pub)
    assert P.ciphertexts_from_bytes(blob, peer) == cs


def test_injectable_rng_known_answer() -> None:
    pub, priv = P._unsafe_generate_keypair_for_tests(BITS, rng=random.Random(20240601))
    pub2, priv2 = P._unsafe_generate_keypair_for_tests(BITS, rng=random.Random(20240601))
    assert (pub.n, pub.h_s, priv.p, priv.q) == (pub2.n, pub2.h_s, priv2.p, priv2.q)
    assert pub.fingerprint == "2e0d26b237d9f6b2"
    assert pub.h_s is not None

    m = 123456789
    c_owner = priv.encrypt(m, rng=random.Random(7))
    c_public = pub.encrypt(m, rng=random.Random(7))
    assert c_owner == c_public == priv2.encrypt(m, rng=random.Random(7))
    # independent recomputation: c = (1 + m n) * h_s**a mod n**2 with a = next 256 bits
    a = random.Random(7).getrandbits(pub.exponent_bits)
    assert c_owner == (1 + m * pub.n) * pow(pub.h_s, a, pub.nsquare) % pub.nsquare
    digest = hashlib.sha256(c_owner.to_bytes(pub.ciphertext_bytes, "big")).hexdigest()
    assert digest[:16] == "1d4cde8b7f53cb4b"
    assert priv.decrypt(c_owner) == m
    # a batch takes one draw for all items: item i uses bytes [32 i, 32 i + 32)
    batch = priv.encrypt_many([1, 2], rng=random.Random(8))
    both = random.Random(8).getrandbits(512)
    assert batch[1] == (1 + 2 * pub.n) * pow(pub.h_s, both >> 256, pub.nsquare) % pub.nsquare
    assert batch[0] == (1 + pub.n) * pow(pub.h_s, both & (2**256 - 1), pub.nsquare) % pub.nsquare

    # a callable byte source (os.urandom-like) and a rerandomization KAT
    def zeros(k: int) -> bytes:
        return bytes(k)

    assert priv.encrypt(5, rng=zeros) == 1 + 5 * pub.n  # a = 0: the trivial randomizer
    c2 = priv.rerandomize(c_owner, rng=random.Random(9))
    b = random.Random(9).getrandbits(256)
    assert c2 == c_owner * pow(pub.h_s, b, pub.nsquare) % pub.nsquare
    with pytest.raises(ValueError, match="returned 3 bytes"):
        priv.encrypt(1, rng=lambda k: b"abc")
    with pytest.raises(TypeError):
        priv.encrypt(1, rng=lambda k: "x" * k)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError):
        priv.encrypt(1, rng=42)  # type: ignore[arg-type]


def test_repr_hides_secrets(sk: PaillierPrivateKey, pk: PaillierPublicKey) -> None:
    texts = [repr(sk), str(sk), f"{sk}", f"{sk!r}", repr([sk]), repr(pk)]
    for secret in (sk.p, sk.q):
        for form in (str(secret), hex(secret)[2:], b64(secret)):
            for t in texts:
                assert form[:12] not in t
    assert pk.fingerprint in repr(sk) and "secret" in repr(sk)
    with pytest.raises(ValueError) as info:
        PaillierPrivateKey(pk, sk.p, sk.q + 2)
    assert str(sk.p) not in str(info.value)
    assert sk.p < sk.q and sk.p * sk.q == pk.n


def test_pickling(pk: PaillierPublicKey, sk: PaillierPrivateKey) -> None:
    """Public keys travel to worker processes as (n, h_s); private keys never pickle."""
    pk.precompute()
    back = pickle.loads(pickle.dumps(pk))
    assert back == pk and back.h_s == pk.h_s and back._table is None
    assert len(pickle.dumps(pk)) < 4 * pk.ciphertext_bytes
    with pytest.raises(TypeError, match="private_key_to_json"):
        pickle.dumps(sk)
