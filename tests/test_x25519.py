"""Tests for cleanroom.matching.x25519: RFC 7748 answers, commutativity and point validation."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cleanroom.matching.hash_to_curve import hash_to_curve, hash_to_curve_batch
from cleanroom.matching.x25519 import (
    BlindingKey,
    InvalidPointError,
    blind_batch,
    validate_point,
)

P = 2**255 - 19
A = 486662
DST = b"cleanroom-x25519-test"
BASE = (9).to_bytes(32, "little")

# RFC 7748 §6.1
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 7748 §5.2 (the second input u has its top bit set: it is a non-canonical encoding)
VEC1 = (
    bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
    bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
    bytes.fromhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
)
VEC2 = (
    bytes.fromhex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
    bytes.fromhex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493"),
    bytes.fromhex("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
)
ITER_1 = bytes.fromhex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
ITER_1000 = bytes.fromhex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")

# Canonical u-coordinates of small order (the usual curve25519 blocklist, canonical part).
ORDER8_A = 325606250916557431795983626356110631294008115727848805560023387167927233504
ORDER8_B = 39382357235489614581723060781553021112529911719440698176882885853963445705823
LOW_ORDER_CANONICAL = [0, 1, P - 1, ORDER8_A, ORDER8_B]


def enc(u: int) -> bytes:
    return u.to_bytes(32, "little")


def low_order_encodings() -> list[bytes]:
    """All 32-byte strings that RFC 7748 §5 decoding (mask bit 255, reduce mod p) maps to a
    low-order u: each canonical value, its alias u + p when below 2^255, each with or without
    the top bit."""
    out = []
    for u in LOW_ORDER_CANONICAL:
        for alias in (u, u + P):
            if alias < 2**255:
                out += [enc(alias), enc(alias + 2**255)]
    return out


def classic_blocklist() -> list[bytes]:
    """The widely circulated 12-entry curve25519 blocklist: u + k*p below 2^256, unmasked."""
    return [enc(v) for u in LOW_ORDER_CANONICAL for v in (u, u + P, u + 2 * P) if v < 2**256]


def points(n: int, seed: int = 0) -> bytes:
    return hash_to_curve_batch(random.Random(seed).randbytes(32 * n), 32, DST)


def twist_points(n: int) -> list[bytes]:
    rng = random.Random(7)
    out: list[bytes] = []
    while len(out) < n:
        u = rng.randrange(2, P - 1)
        if pow(u**3 + A * u * u + u, (P - 1) // 2, P) == P - 1:
            out.append(enc(u))
    return out


def x_only_double(x: int, z: int) -> tuple[int, int]:
    s, d = x + z, x - z
    aa, bb = s * s % P, d * d % P
    e = aa - bb
    return aa * bb % P, e * (bb + 121666 * e) % P


# --- known answers -------------------------------------------------------------------------------


def test_rfc7748_section_6_1_key_agreement() -> None:
    alice = BlindingKey.from_secret_bytes(ALICE_PRIV)
    bob = BlindingKey.from_secret_bytes(BOB_PRIV)
    assert alice.blind(BASE) == ALICE_PUB
    assert bob.blind(BASE) == BOB_PUB
    assert alice.blind(BOB_PUB) == SHARED
    assert bob.blind(ALICE_PUB) == SHARED
    assert blind_batch(ALICE_PRIV, BASE + BOB_PUB) == ALICE_PUB + SHARED


def test_rfc7748_section_5_2_vectors() -> None:
    scalar, u, out = VEC1
    assert BlindingKey.from_secret_bytes(scalar).blind(u) == out
    assert blind_batch(scalar, u) == out
    scalar, u, out = VEC2
    # X25519 masks the top bit; our validation refuses such an encoding instead.
    assert blind_batch(scalar, u, validate=False) == out
    with pytest.raises(InvalidPointError, match="top bit"):
        BlindingKey.from_secret_bytes(scalar).blind(u)


def test_rfc7748_iterated() -> None:
    k = u = BASE
    k, u = BlindingKey.from_secret_bytes(k).blind(u), k
    assert k == ITER_1
    for _ in range(999):
        # intermediate u values may be twist points, so use the unvalidated path
        k, u = blind_batch(k, u, validate=False), k
    assert k == ITER_1000


# --- commutativity -------------------------------------------------------------------------------


def test_blinding_commutes_on_hash_to_curve_points() -> None:
    pts = points(50)
    a, b = BlindingKey.generate(), BlindingKey.generate()
    ab = blind_batch(a.secret_bytes(), blind_batch(b.secret_bytes(), pts))
    ba = blind_batch(b.secret_bytes(), blind_batch(a.secret_bytes(), pts))
    assert ab == ba
    for i in range(0, 50, 7):
        u = pts[32 * i : 32 * (i + 1)]
        assert a.blind(b.blind(u)) == b.blind(a.blind(u)) == ab[32 * i : 32 * (i + 1)]
    assert len(set(ab[i : i + 32] for i in range(0, len(ab), 32))) == 50


def test_hash_to_curve_and_blinded_outputs_validate() -> None:
    pts = points(200, seed=3)
    key = BlindingKey.generate()
    blinded = blind_batch(key.secret_bytes(), pts)
    for buf in (pts, blinded):
        for i in range(0, len(buf), 32):
            validate_point(buf[i : i + 32])
    validate_point(hash_to_curve(b"", DST))
    assert blind_batch(key.secret_bytes(), pts, validate=False) == blinded


def test_blind_batch_empty() -> None:
    assert blind_batch(os.urandom(32), b"") == b""


# --- keys ----------------------------------------------------------------------------------------


def counter_rng(seed: bytes) -> Callable[[int], bytes]:
    calls = [0]

    def rng(n: int) -> bytes:
        calls[0] += 1
        return hashlib.shake_256(seed + calls[0].to_bytes(4, "big")).digest(n)

    return rng


def test_injectable_rng_gives_deterministic_keys() -> None:
    k1 = BlindingKey.generate(counter_rng(b"seed"))
    k2 = BlindingKey.generate(counter_rng(b"seed"))
    k3 = BlindingKey.generate(counter_rng(b"other"))
    assert k1.secret_bytes() == k2.secret_bytes() != k3.secret_bytes()
    assert k1.secret_bytes() == hashlib.shake_256(b"seed" + (1).to_bytes(4, "big")).digest(32)
    pts = points(3)
    assert blind_batch(k1.secret_bytes(), pts) == blind_batch(k2.secret_bytes(), pts)
    requested: list[int] = []

    def spy(n: int) -> bytes:
        requested.append(n)
        return bytes(range(n))

    assert BlindingKey.generate(spy).secret_bytes() == bytes(range(32))
    assert requested == [32]


def test_generate_uses_fresh_randomness_by_default() -> None:
    assert BlindingKey.generate().secret_bytes() != BlindingKey.generate().secret_bytes()


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33])
def test_bad_secret_lengths(bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BlindingKey.from_secret_bytes(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        blind_batch(bad, points(1))
    with pytest.raises(ValueError, match="32 bytes"):
        BlindingKey.generate(lambda n: bad)


def test_secret_type_errors() -> None:
    with pytest.raises(TypeError):
        BlindingKey.from_secret_bytes("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        blind_batch("00" * 32, points(1))  # type: ignore[arg-type]


def test_repr_and_pickle_hide_the_secret() -> None:
    secret = bytes(range(1, 33))
    key = BlindingKey.from_secret_bytes(secret)
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key])):
        assert secret.hex() not in text
        assert repr(secret)[2:-1] not in text
        assert "redacted" in text
    with pytest.raises(TypeError, match="secret_bytes"):
        pickle.dumps(key)
    assert not hasattr(key, "__dict__")


# --- validation ----------------------------------------------------------------------------------


def assert_rejected(u: bytes, why: str) -> None:
    with pytest.raises(InvalidPointError, match=why) as info:
        validate_point(u)
    assert info.value.index is None
    with pytest.raises(InvalidPointError, match=why):
        BlindingKey.generate().blind(u)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_rejects_wrong_length(length: int) -> None:
    assert_rejected(b"\x09" * length, f"wrong length: expected 32 bytes, got {length}")


@pytest.mark.parametrize("u", [P, P + 1, P + 9, 2**255 - 1])
def test_rejects_non_canonical_values(u: int) -> None:
    assert_rejected(enc(u), r"non-canonical encoding: u >= 2\^255 - 19")


def test_rejects_top_bit_set() -> None:
    valid = points(1)
    flipped = valid[:31] + bytes([valid[31] | 0x80])
    assert_rejected(flipped, "top bit")
    # ... which X25519 itself would silently treat as the valid point:
    k = X25519PrivateKey.generate()
    assert k.exchange(X25519PublicKey.from_public_bytes(flipped)) == k.exchange(
        X25519PublicKey.from_public_bytes(valid)
    )


@pytest.mark.parametrize("u", LOW_ORDER_CANONICAL)
def test_rejects_every_canonical_low_order_point(u: int) -> None:
    assert_rejected(enc(u), "low-order point")


def test_low_order_list_is_right_and_complete_for_x25519() -> None:
    encodings = low_order_encodings()
    assert len(encodings) == 14
    key = X25519PrivateKey.generate()
    for u in encodings:
        with pytest.raises(ValueError):  # cryptography: all-zero shared secret
            key.exchange(X25519PublicKey.from_public_bytes(u))
        with pytest.raises(InvalidPointError, match=r"low-order|non-canonical"):
            validate_point(u)
        with pytest.raises(InvalidPointError, match="all-zero") as info:
            blind_batch(os.urandom(32), points(2) + u, validate=False)
        assert info.value.index == 2
    for value in LOW_ORDER_CANONICAL:  # 8 * P is the identity
        x, z = value, 1
        for _ in range(3):
            x, z = x_only_double(x, z)
        assert z == 0


def test_classic_blocklist_is_rejected() -> None:
    blocklist = classic_blocklist()
    assert len(blocklist) == 12
    for u in blocklist:
        with pytest.raises(InvalidPointError, match=r"low-order|non-canonical"):
            validate_point(u)


def test_rejects_twist_points() -> None:
    for u in twist_points(5):
        assert_rejected(u, "not on curve25519.*twist")
        # X25519 would have happily computed something for it:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(u))


@pytest.mark.parametrize(
    "garbage",
    [b"\xff" * 32, b"\x80" * 32, b"\xee" * 32, hashlib.sha256(b"garbage").digest()[:31] + b"\xf0"],
)
def test_rejects_garbage_bytes(garbage: bytes) -> None:
    with pytest.raises(InvalidPointError):
        validate_point(garbage)


def test_random_bytes_are_accepted_exactly_when_on_the_curve() -> None:
    rng = random.Random(5)
    for _ in range(200):
        raw = rng.randbytes(32)
        u = int.from_bytes(raw, "little")
        ok = (
            u < P
            and u not in LOW_ORDER_CANONICAL
            and pow(u**3 + A * u * u + u, (P - 1) // 2, P) == 1
        )
        if ok:
            validate_point(raw)
        else:
            with pytest.raises(InvalidPointError):
                validate_point(raw)


@pytest.mark.parametrize("bad", ["00" * 32, 9, None, [0] * 32])
def test_validate_point_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError):
        validate_point(bad)
    with pytest.raises(TypeError):
        blind_batch(os.urandom(32), bad)


def test_bytes_like_points_are_accepted() -> None:
    pt = points(1)
    validate_point(bytearray(pt))
    validate_point(memoryview(pt))
    key = BlindingKey.generate()
    assert key.blind(bytearray(pt)) == key.blind(pt)


# --- batch errors name the index -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (enc(0), "low-order point, order 2"),
        (enc(ORDER8_A), "low-order point, order 8"),
        (enc(P), "non-canonical"),
        (b"\xff" * 32, "top bit"),
        (twist_points(1)[0], "twist"),
    ],
)
def test_batch_error_names_index(bad: bytes, why: str) -> None:
    pts = points(10)
    packed = pts[: 32 * 7] + bad + pts[32 * 8 :]
    with pytest.raises(InvalidPointError, match=f"at index 7: .*{why}") as info:
        blind_batch(os.urandom(32), packed)
    assert info.value.index == 7
    assert why.split(",")[0] in info.value.reason


def test_batch_reports_first_bad_index() -> None:
    pts = points(6)
    packed = pts[:64] + enc(1) + pts[96:128] + enc(0) + pts[160:]
    with pytest.raises(InvalidPointError) as info:
        blind_batch(os.urandom(32), packed)
    assert info.value.index == 2


def test_batch_trailing_partial_point() -> None:
    packed = points(3) + b"\x01\x02\x03"
    with pytest.raises(InvalidPointError, match="wrong length") as info:
        blind_batch(os.urandom(32), packed)
    assert info.value.index == 3


def test_invalid_point_error_survives_pickling() -> None:
    err = InvalidPointError("low-order point, order 4 (u = 1): u = 01", 41)
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, InvalidPointError)
    assert issubclass(InvalidPointError, ValueError)
    assert (copy.index, copy.reason, str(copy)) == (err.index, err.reason, str(err))
    assert str(err) == "invalid X25519 point at index 41: low-order point, order 4 (u = 1): u = 01"


def test_blind_batch_is_picklable() -> None:
    assert pickle.loads(pickle.dumps(blind_batch)) is blind_batch
