"""Tests for cleanroom.matching.hash_to_curve against RFC 9380 and between its two code paths."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from cleanroom.matching import hash_to_curve as h2c
from cleanroom.matching.hash_to_curve import (
    expand_message_xmd,
    hash_to_curve,
    hash_to_curve_batch,
    hash_to_curve_xy,
    hash_to_field,
    map_to_curve_elligator2,
)

P = 2**255 - 19
A = 486662
ORDER = 2**252 + 27742317777372353535851937790883648493  # prime subgroup order (RFC 7748 §4.1)

Q128 = b"q128_" + b"q" * 128
A512 = b"a512_" + b"a" * 512

# --- RFC 9380 Appendix J.4.1, curve25519_XMD:SHA-512_ELL2_RO_ ----------------------------------
J41_DST = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_RO_"
# (msg, P.x, P.y, u[0], u[1], Q0.x, Q0.y, Q1.x, Q1.y) as printed in the RFC (big-endian hex).
J41_VECTORS = [
    (
        b"",
        "2de3780abb67e861289f5749d16d3e217ffa722192d16bbd9d1bfb9d112b98c0",
        "3b5dc2a498941a1033d176567d457845637554a2fe7a3507d21abd1c1bd6e878",
        "005fe8a7b8fef0a16c105e6cadf5a6740b3365e18692a9c05bfbb4d97f645a6a",
        "1347edbec6a2b5d8c02e058819819bee177077c9d10a4ce165aab0fd0252261a",
        "36b4df0c864c64707cbf6cf36e9ee2c09a6cb93b28313c169be29561bb904f98",
        "6cd59d664fb58c66c892883cd0eb792e52055284dac3907dd756b45d15c3983d",
        "3fa114783a505c0b2b2fbeef0102853c0b494e7757f2a089d0daae7ed9a0db2b",
        "76c0fe7fec932aaafb8eefb42d9cbb32eb931158f469ff3050af15cfdbbeff94",
    ),
    (
        b"abc",
        "2b4419f1f2d48f5872de692b0aca72cc7b0a60915dd70bde432e826b6abc526d",
        "1b8235f255a268f0a6fa8763e97eb3d22d149343d495da1160eff9703f2d07dd",
        "49bed021c7a3748f09fa8cdfcac044089f7829d3531066ac9e74e0994e05bc7d",
        "5c36525b663e63389d886105cee7ed712325d5a97e60e140aba7e2ce5ae851b6",
        "16b3d86e056b7970fa00165f6f48d90b619ad618791661b7b5e1ec78be10eac1",
        "4ab256422d84c5120b278cbdfc4e1facc5baadffeccecf8ee9bf3946106d50ca",
        "7ec29ddbf34539c40adfa98fcb39ec36368f47f30e8f888cc7e86f4d46e0c264",
        "10d1abc1cae2d34c06e247f2141ba897657fb39f1080d54f09ce0af128067c74",
    ),
    (
        b"abcdef0123456789",
        "68ca1ea5a6acf4e9956daa101709b1eee6c1bb0df1de3b90d4602382a104c036",
        "2a375b656207123d10766e68b938b1812a4a6625ff83cb8d5e86f58a4be08353",
        "6412b7485ba26d3d1b6c290a8e1435b2959f03721874939b21782df17323d160",
        "24c7b46c1c6d9a21d32f5707be1380ab82db1054fde82865d5c9e3d968f287b2",
        "71de3dadfe268872326c35ac512164850860567aea0e7325e6b91a98f86533ad",
        "26a08b6e9a18084c56f2147bf515414b9b63f1522e1b6c5649f7d4b0324296ec",
        "5704069021f61e41779e2ba6b932268316d6d2a6f064f997a22fef16d1eaeaca",
        "50483c7540f64fb4497619c050f2c7fe55454ec0f0e79870bb44302e34232210",
    ),
    (
        Q128,
        "096e9c8bae6c06b554c1ee69383bb0e82267e064236b3a30608d4ed20b73ac5a",
        "1eb5a62612cafb32b16c3329794645b5b948d9f8ffe501d4e26b073fef6de355",
        "5e123990f11bbb5586613ffabdb58d47f64bb5f2fa115f8ea8df0188e0c9e1b5",
        "5e8553eb00438a0bb1e7faa59dec6d8087f9c8011e5fb8ed9df31cb6c0d4ac19",
        "7a94d45a198fb5daa381f45f2619ab279744efdd8bd8ed587fc5b65d6cea1df0",
        "67d44f85d376e64bb7d713585230cdbfafc8e2676f7568e0b6ee59361116a6e1",
        "30506fb7a32136694abd61b6113770270debe593027a968a01f271e146e60c18",
        "7eeee0e706b40c6b5174e551426a67f975ad5a977ee2f01e8e20a6d612458c3b",
    ),
    (
        A512,
        "1bc61845a138e912f047b5e70ba9606ba2a447a4dade024c8ef3dd42b7bbc5fe",
        "623d05e47b70e25f7f1d51dda6d7c23c9a18ce015fe3548df596ea9e38c69bf1",
        "20f481e85da7a3bf60ac0fb11ed1d0558fc6f941b3ac5469aa8b56ec883d6d7d",
        "017d57fd257e9a78913999a23b52ca988157a81b09c5442501d07fed20869465",
        "02d606e2699b918ee36f2818f2bc5013e437e673c9f9b9cdc15fd0c5ee913970",
        "29e9dc92297231ef211245db9e31767996c5625dfbf92e1c8107ef887365de1e",
        "38920e9b988d1ab7449c0fa9a6058192c0c797bb3d42ac345724341a1aa98745",
        "24dcc1be7c4d591d307e89049fd2ed30aae8911245a9d8554bf6032e5aa40d3d",
    ),
]

# --- RFC 9380 Appendix K.3, expand_message_xmd(SHA-512) ----------------------------------------
K3_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
K3_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (
        b"abcdef0123456789",
        0x20,
        "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58",
    ),
    (Q128, 0x20, "7336234ee9983902440f6bc35b348352013becd88938d2afec44311caf8356b3"),
    (A512, 0x20, "57b5f7e766d5be68a6bfe1768e3c2b7f1228b3e4b3134956dd73a59b954c66f4"),
    (
        b"",
        0x80,
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    ),
    (
        b"abc",
        0x80,
        "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11"
        "bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134"
        "7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843"
        "1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
    ),
    (
        b"abcdef0123456789",
        0x80,
        "3f721f208e6199fe903545abc26c837ce59ac6fa45733f1baaf0222f8b7acb04"
        "24814fcb5eecf6c1d38f06e9d0a6ccfbf85ae612ab8735dfdf9ce84c372a77c8"
        "f9e1c1e952c3a61b7567dd0693016af51d2745822663d0c2367e3f4f0bed827f"
        "eecc2aaf98c949b5ed0d35c3f1023d64ad1407924288d366ea159f46287e61ac",
    ),
    (
        Q128,
        0x80,
        "b799b045a58c8d2b4334cf54b78260b45eec544f9f2fb5bd12fb603eaee70db7"
        "317bf807c406e26373922b7b8920fa29142703dd52bdf280084fb7ef69da78af"
        "df80b3586395b433dc66cde048a258e476a561e9deba7060af40adf30c64249c"
        "a7ddea79806ee5beb9a1422949471d267b21bc88e688e4014087a0b592b695ed",
    ),
    (
        A512,
        0x80,
        "05b0bfef265dcee87654372777b7c44177e2ae4c13a27f103340d9cd11c86cb2"
        "426ffcad5bd964080c2aee97f03be1ca18e30a1f14e27bc11ebbd650f305269c"
        "c9fb1db08bf90bfc79b42a952b46daf810359e7bc36452684784a64952c343c5"
        "2e5124cd1f71d474d5197fefc571a92929c9084ffe1112cf5eea5192ebff330b",
    ),
]


def _on_curve(x: int, y: int) -> bool:
    return (y * y - (x**3 + A * x * x + x)) % P == 0


def _ladder_x(k: int, u: int) -> tuple[int, int]:
    """Plain x-only Montgomery ladder (RFC 7748 §5, without clamping): projective x(k * P)."""
    x2, z2, x3, z3 = 1, 0, u, 1
    for bit in reversed(range(k.bit_length())):
        if (k >> bit) & 1:
            x2, x3, z2, z3 = x3, x2, z3, z2
        a, b = x2 + z2, x2 - z2
        c, d = x3 + z3, x3 - z3
        da, cb = d * a % P, c * b % P
        aa, bb = a * a % P, b * b % P
        e = aa - bb
        x3, z3 = (da + cb) ** 2 % P, u * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
        if (k >> bit) & 1:
            x2, x3, z2, z3 = x3, x2, z3, z2
    return x2, z2


# --- RFC vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("msg", "length", "expected"), K3_VECTORS)
def test_expand_message_xmd_rfc9380_k3(msg: bytes, length: int, expected: str) -> None:
    assert expand_message_xmd(msg, K3_DST, length).hex() == expected


@pytest.mark.parametrize("vector", J41_VECTORS, ids=lambda v: repr(v[0][:8]))
def test_rfc9380_j41_vectors(vector: tuple[Any, ...]) -> None:
    msg, px, py, u0, u1, q0x, q0y, q1x, q1y = vector
    assert hash_to_field(msg, J41_DST, 2) == [int(u0, 16), int(u1, 16)]
    assert map_to_curve_elligator2(int(u0, 16)) == (int(q0x, 16), int(q0y, 16))
    assert map_to_curve_elligator2(int(u1, 16)) == (int(q1x, 16), int(q1y, 16))
    assert hash_to_curve_xy(msg, J41_DST) == (int(px, 16), int(py, 16))
    assert hash_to_curve(msg, J41_DST) == int(px, 16).to_bytes(32, "little")
    if msg:  # the batch API needs msg_len >= 1
        assert hash_to_curve_batch(msg, len(msg), J41_DST) == int(px, 16).to_bytes(32, "little")


def test_rfc9380_j41_vectors_are_on_curve_and_in_prime_subgroup() -> None:
    for vector in J41_VECTORS:
        x, y = int(vector[1], 16), int(vector[2], 16)
        assert _on_curve(x, y)
        assert _ladder_x(ORDER, x)[1] == 0  # ORDER * P is the identity


# --- batch fast path vs reference ---------------------------------------------------------------


@pytest.mark.parametrize("msg_len", [1, 7, 32, 64, 200])
def test_batch_equals_single_on_random_inputs(msg_len: int) -> None:
    rng = random.Random(1234 + msg_len)
    n = 64 if msg_len != 32 else 300
    packed = rng.randbytes(n * msg_len)
    for dst in (J41_DST, b"cleanroom-test-v1", b"x" * 255):
        out = hash_to_curve_batch(packed, msg_len, dst)
        assert len(out) == 32 * n
        for i in range(n):
            msg = packed[i * msg_len : (i + 1) * msg_len]
            assert out[32 * i : 32 * (i + 1)] == hash_to_curve(msg, dst), (dst, i)


def test_batch_expand_message_matches_reference() -> None:
    for msg_len in (1, 32, 129):
        packed = os.urandom(msg_len * 9)
        uniform = h2c._uniform_bytes_batch(packed, 9, msg_len, K3_DST)
        for i in range(9):
            msg = packed[i * msg_len : (i + 1) * msg_len]
            assert uniform[96 * i : 96 * (i + 1)] == expand_message_xmd(msg, K3_DST, 96)


def test_batch_accepts_bytes_like_and_empty() -> None:
    packed = os.urandom(32 * 5)
    expected = hash_to_curve_batch(packed, 32, J41_DST)
    assert hash_to_curve_batch(bytearray(packed), 32, J41_DST) == expected
    assert hash_to_curve_batch(memoryview(packed), 32, bytearray(J41_DST)) == expected
    assert hash_to_curve_batch(b"", 32, J41_DST) == b""


def test_batch_outputs_are_valid_prime_order_points() -> None:
    out = hash_to_curve_batch(os.urandom(32 * 20), 32, J41_DST)
    for i in range(20):
        x = int.from_bytes(out[32 * i : 32 * (i + 1)], "little")
        assert 1 < x < P
        assert pow(x**3 + A * x * x + x, (P - 1) // 2, P) == 1  # on the curve, not the twist
        assert _ladder_x(ORDER, x)[1] == 0
        assert _ladder_x(ORDER // 2, x)[1] != 0  # not the identity either


def test_fast_map_matches_rfc_straight_line_map() -> None:
    """Drive the inverse-square-root map with edge cases and random 48-byte inputs.

    Unreduced inputs (>= p) matter because the batch path skips the ``mod p`` on ``u``.
    """
    rng = random.Random(99)
    us = [0, 1, 2, P - 1, P, P + 1, 2 * P, 2**384 - 1, 2**255, 2**256 - 1]
    us += [rng.getrandbits(384) for _ in range(400)]
    xs, ys = h2c._map_batch(b"".join(u.to_bytes(48, "big") for u in us))
    seen_square = seen_nonsquare = False
    for u, x, y in zip(us, xs, ys, strict=True):
        ref_x, ref_y = map_to_curve_elligator2(u % P)
        assert (int(x) % P, int(y)) == (ref_x, ref_y), u
        assert _on_curve(ref_x, ref_y)
        square = ref_x == -A * pow(1 + 2 * u * u, -1, P) % P  # x1 chosen: g(x1) is a square
        seen_square |= square
        seen_nonsquare |= not square
    assert seen_square and seen_nonsquare


def test_sum_and_clear_flags_degenerate_pairs() -> None:
    q = map_to_curve_elligator2(12345)
    neg_q = (q[0], -q[1] % P)
    _, zs = h2c._sum_and_clear_batch([q[0], q[0], q[0], q[0]], [q[1], q[1], q[1], neg_q[1]])
    assert [int(z) % P for z in zs] == [0, 0]  # Q + Q and Q + (-Q) both need the slow path


def test_batch_falls_back_to_reference_for_degenerate_elements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = h2c._sum_and_clear_batch

    def with_degenerate(xs: list[Any], ys: list[Any]) -> tuple[list[Any], list[Any]]:
        Xs, Zs = real(xs, ys)
        Zs[1] = Zs[1] * 0
        Zs[3] = Zs[3] * 0
        return Xs, Zs

    monkeypatch.setattr(h2c, "_sum_and_clear_batch", with_degenerate)
    packed = os.urandom(32 * 5)
    out = hash_to_curve_batch(packed, 32, J41_DST)
    assert out == b"".join(hash_to_curve(packed[32 * i : 32 * i + 32], J41_DST) for i in range(5))


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["abc", 123, None, ["a"]])
def test_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError):
        hash_to_curve(bad, J41_DST)
    with pytest.raises(TypeError):
        hash_to_curve(b"abc", bad)
    with pytest.raises(TypeError):
        hash_to_curve_xy(bad, J41_DST)
    with pytest.raises(TypeError):
        expand_message_xmd(bad, K3_DST, 32)
    with pytest.raises(TypeError):
        hash_to_curve_batch(bad, 3, J41_DST)


def test_type_errors_for_lengths() -> None:
    with pytest.raises(TypeError):
        expand_message_xmd(b"", K3_DST, 32.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash_to_curve_batch(b"abc", "3", J41_DST)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash_to_curve_batch(b"abc", True, J41_DST)


def test_expand_message_xmd_rfc_limits() -> None:
    expand_message_xmd(b"m", b"d" * 255, 32)  # the maximum DST length is fine
    with pytest.raises(ValueError, match="255"):
        expand_message_xmd(b"m", b"d" * 256, 32)
    with pytest.raises(ValueError, match="empty"):
        expand_message_xmd(b"m", b"", 32)
    assert len(expand_message_xmd(b"m", K3_DST, 255 * 64)) == 255 * 64  # ell = 255
    with pytest.raises(ValueError, match="ell"):
        expand_message_xmd(b"m", K3_DST, 255 * 64 + 1)
    with pytest.raises(ValueError):
        expand_message_xmd(b"m", K3_DST, 65536)
    with pytest.raises(ValueError, match="positive"):
        expand_message_xmd(b"m", K3_DST, 0)
    with pytest.raises(ValueError, match="positive"):
        expand_message_xmd(b"m", K3_DST, -1)


def test_hash_to_curve_value_errors() -> None:
    with pytest.raises(ValueError):
        hash_to_curve(b"abc", b"")
    with pytest.raises(ValueError):
        hash_to_curve(b"abc", b"d" * 256)
    with pytest.raises(ValueError, match="multiple"):
        hash_to_curve_batch(b"x" * 33, 32, J41_DST)
    with pytest.raises(ValueError, match="positive"):
        hash_to_curve_batch(b"", 0, J41_DST)
    with pytest.raises(ValueError):
        hash_to_curve_batch(b"x" * 32, 32, b"d" * 256)
    with pytest.raises(ValueError):
        hash_to_curve_batch(b"x" * 32, 32, b"")


def test_batch_function_is_picklable() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(hash_to_curve_batch)) is hash_to_curve_batch
