"""Hashing identifiers to Curve25519 points (RFC 9380, suite ``curve25519_XMD:SHA-512_ELL2_RO_``).

Why this exists: ECDH-PSI blinds ``H(id)`` with each party's secret scalar.  The protocol is
only secure if nobody knows the discrete log of ``H(id)``, so ``H`` must be a *random-oracle*
hash to the curve (RFC 9380 §3 ``hash_to_curve``, the ``_RO_`` suites), not "hash to a scalar
times a generator" nor the non-uniform ``encode_to_curve``.  The output is the 32-byte
little-endian u-coordinate, i.e. exactly the X25519 public-key encoding (RFC 7748 §5), so it
can be fed straight into :mod:`cleanroom.matching.x25519`.

Two implementations live here on purpose:

* :func:`hash_to_curve` / :func:`hash_to_curve_xy` follow the RFC text step by step
  (§5.2 hash_to_field, Appendix G.2.1 map_to_curve, affine point addition, §7 clear_cofactor).
  They are the readable reference and are checked against the Appendix J.4.1 vectors.
* :func:`hash_to_curve_batch` is the hot path (millions of SHA-256 digests).  It computes the
  same function with far fewer interpreter-level operations: one gmpy2 exponentiation per
  Elligator 2 map that yields both the square root *and* ``1/xd`` (an "inverse square root"
  trick, so no separate inversion), x-only projective doublings for the cofactor, and a single
  Montgomery batch inversion shared by the whole batch.  It is tested element-wise against the
  reference.  Degenerate inputs (probability ~2^-250) fall back to the reference path.

Timing side channels: gmpy2 is not constant time.  Inputs here are hashed identifiers of the
party running the code, on its own machines; we accept that trade-off for speed.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import gmpy2
import numpy as np
from gmpy2 import mpz

__all__ = [
    "DEFAULT_SUITE_ID",
    "expand_message_xmd",
    "hash_to_curve",
    "hash_to_curve_batch",
    "hash_to_curve_xy",
    "hash_to_field",
    "map_to_curve_elligator2",
]

#: RFC 9380 §8.5 suite identifier; applications must still use their own DST (§3.1).
DEFAULT_SUITE_ID: Final = b"curve25519_XMD:SHA-512_ELL2_RO_"


def _pick_sha512() -> Callable[..., Any]:
    """Return the SHA-512 constructor with the lowest per-call overhead.

    Why: the batch path hashes three tiny (1-2 block) messages per element.  OpenSSL's EVP
    wrapper behind :func:`hashlib.sha512` costs ~1 µs of setup per call; CPython's built-in
    implementation (``_sha512`` up to 3.11, ``_sha2`` from 3.12) is about twice as fast for such
    sizes.  Both compute standard SHA-512, so the fallback is purely a speed difference.
    """
    for name in ("_sha512", "_sha2"):
        try:
            return importlib.import_module(name).sha512  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha512


_sha512: Final = _pick_sha512()

# --- curve25519 parameters (RFC 7748 §4.1) and Elligator 2 constants (RFC 9380 §6.7.1) -------
_P_INT: Final = 2**255 - 19
_J_INT: Final = 486662  # Montgomery A coefficient (B = 1)
_L: Final = 48  # RFC 9380 §5: L = ceil((ceil(log2(p)) + k) / 8) with k = 128
_B_IN_BYTES: Final = 64  # SHA-512 output size
_R_IN_BYTES: Final = 128  # SHA-512 block size
_SQRT_M1_INT: Final = pow(2, (_P_INT - 1) // 4, _P_INT)  # a square root of -1 (2 is a non-square)

# RFC 9380 Appendix G.2.1 constants.
_C1_INT: Final = (_P_INT + 3) // 8
_C2_INT: Final = pow(2, _C1_INT, _P_INT)
_C3_INT: Final = _SQRT_M1_INT
_C4_INT: Final = (_P_INT - 5) // 8

_P: Final = mpz(_P_INT)
_C4: Final = mpz(_C4_INT)
_SQRT_M1: Final = mpz(_SQRT_M1_INT)


def _require_bytes(name: str, value: object) -> bytes:
    """Accept bytes-like input only; a ``str`` id must be encoded by the caller (no guessing)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


def _check_dst(dst: bytes) -> None:
    """RFC 9380 §3.1: tags MUST be non-empty; §5.3.1: abort if len(DST) > 255."""
    if len(dst) == 0:
        raise ValueError("dst must not be empty (RFC 9380 §3.1)")
    if len(dst) > 255:
        raise ValueError(
            f"dst is {len(dst)} bytes; RFC 9380 §5.3.1 allows at most 255 "
            "(derive a shorter tag as in §5.3.3)"
        )


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 §5.3.1 ``expand_message_xmd`` instantiated with SHA-512.

    Raises :class:`ValueError` where the RFC says ABORT (``len(DST) > 255``,
    ``ell > 255``, ``len_in_bytes > 65535``), for an empty DST (§3.1) and for a non-positive
    ``len_in_bytes``; :class:`TypeError` for non-bytes arguments.
    """
    msg = _require_bytes("msg", msg)
    dst = _require_bytes("dst", dst)
    if not isinstance(len_in_bytes, int) or isinstance(len_in_bytes, bool):
        raise TypeError(f"len_in_bytes must be int, got {type(len_in_bytes).__name__}")
    _check_dst(dst)
    if len_in_bytes < 1:
        raise ValueError(f"len_in_bytes must be positive, got {len_in_bytes}")
    ell = -(-len_in_bytes // _B_IN_BYTES)
    if ell > 255 or len_in_bytes > 65535:
        raise ValueError(
            f"len_in_bytes={len_in_bytes} too large: RFC 9380 §5.3.1 requires ell <= 255 "
            f"(at most {255 * _B_IN_BYTES} bytes with SHA-512) and len_in_bytes <= 65535"
        )
    dst_prime = dst + bytes([len(dst)])
    z_pad = bytes(_R_IN_BYTES)
    l_i_b_str = len_in_bytes.to_bytes(2, "big")
    msg_prime = z_pad + msg + l_i_b_str + b"\x00" + dst_prime
    b_0 = _sha512(msg_prime).digest()
    b_i = _sha512(b_0 + b"\x01" + dst_prime).digest()
    blocks = [b_i]
    for i in range(2, ell + 1):
        mixed = (int.from_bytes(b_0, "big") ^ int.from_bytes(b_i, "big")).to_bytes(
            _B_IN_BYTES, "big"
        )
        b_i = _sha512(mixed + bytes([i]) + dst_prime).digest()
        blocks.append(b_i)
    return b"".join(blocks)[:len_in_bytes]


def hash_to_field(msg: bytes, dst: bytes, count: int = 2) -> list[int]:
    """RFC 9380 §5.2 ``hash_to_field`` for GF(2^255 - 19) (m = 1, L = 48)."""
    uniform = expand_message_xmd(msg, dst, count * _L)
    return [int.from_bytes(uniform[_L * i : _L * (i + 1)], "big") % _P_INT for i in range(count)]


def _sgn0(x: int) -> int:
    """RFC 9380 §4.1 sgn0 for m = 1: the parity of the canonical representative."""
    return x % 2


def map_to_curve_elligator2(u: int) -> tuple[int, int]:
    """RFC 9380 Appendix G.2.1 ``map_to_curve_elligator2_curve25519``, returned in affine form.

    This is the straight-line procedure of the RFC (one exponentiation, no branches on secret
    data in the original; here Python ``if`` stands in for CMOV).  Returns ``(x, y)`` on
    ``y^2 = x^3 + 486662 x^2 + x``.
    """
    p = _P_INT
    u %= p
    tv1 = u * u % p
    tv1 = 2 * tv1 % p
    xd = (tv1 + 1) % p  # nonzero: -1 is a square mod p but -1/2 is not
    x1n = -_J_INT % p
    tv2 = xd * xd % p
    gxd = tv2 * xd % p
    gx1 = _J_INT * tv1 % p
    gx1 = gx1 * x1n % p
    gx1 = (gx1 + tv2) % p
    gx1 = gx1 * x1n % p
    tv3 = gxd * gxd % p
    tv2 = tv3 * tv3 % p
    tv3 = tv3 * gxd % p
    tv3 = tv3 * gx1 % p
    tv2 = tv2 * tv3 % p
    y11 = int(gmpy2.powmod(tv2, _C4_INT, p))
    y11 = y11 * tv3 % p
    y12 = y11 * _C3_INT % p
    tv2 = y11 * y11 % p
    tv2 = tv2 * gxd % p
    e1 = tv2 == gx1
    y1 = y11 if e1 else y12
    x2n = x1n * tv1 % p
    y21 = y11 * u % p
    y21 = y21 * _C2_INT % p
    y22 = y21 * _C3_INT % p
    gx2 = gx1 * tv1 % p
    tv2 = y21 * y21 % p
    tv2 = tv2 * gxd % p
    e2 = tv2 == gx2
    y2 = y21 if e2 else y22
    tv2 = y1 * y1 % p
    tv2 = tv2 * gxd % p
    e3 = tv2 == gx1
    xn = x1n if e3 else x2n
    y = y1 if e3 else y2
    e4 = _sgn0(y) == 1
    if e3 != e4:
        y = -y % p
    return xn * pow(xd, -1, p) % p, y


_Affine: TypeAlias = tuple[int, int] | None  # None is the point at infinity


def montgomery_add(a: _Affine, b: _Affine) -> _Affine:
    """Complete affine addition on the Montgomery curve (chord/tangent, identity = None)."""
    if a is None:
        return b
    if b is None:
        return a
    p = _P_INT
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        lam = (3 * x1 * x1 + 2 * _J_INT * x1 + 1) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - _J_INT - x1 - x2) % p
    y3 = (lam * (x1 - x3) - y1) % p
    return x3, y3


def _hash_to_point(msg: bytes, dst: bytes) -> _Affine:
    """RFC 9380 §3 hash_to_curve: two field elements, two maps, add, clear the cofactor."""
    u0, u1 = hash_to_field(msg, dst, 2)
    r = montgomery_add(map_to_curve_elligator2(u0), map_to_curve_elligator2(u1))
    for _ in range(3):  # clear_cofactor: h_eff = 8 = 2^3 (RFC 9380 §8.5)
        r = montgomery_add(r, r)
    return r


def hash_to_curve_xy(msg: bytes, dst: bytes) -> tuple[int, int]:
    """Affine Montgomery ``(x, y)`` of ``hash_to_curve(msg)`` (reference implementation).

    Raises :class:`ValueError` in the (cryptographically unreachable) case that the result is
    the point at infinity, which has no affine coordinates.
    """
    msg = _require_bytes("msg", msg)
    dst = _require_bytes("dst", dst)
    point = _hash_to_point(msg, dst)
    if point is None:
        raise ValueError("hash_to_curve produced the point at infinity")
    return point


def _encode_u(point: _Affine) -> bytes:
    """RFC 7748 §5 encoding of the u-coordinate; the point at infinity encodes as u = 0."""
    return (0 if point is None else point[0]).to_bytes(32, "little")


def hash_to_curve(msg: bytes, dst: bytes) -> bytes:
    """Hash ``msg`` to curve25519 and return the 32-byte little-endian u-coordinate.

    Suite ``curve25519_XMD:SHA-512_ELL2_RO_`` (RFC 9380 §8.5).  The result is always a point of
    the prime-order subgroup, hence a valid, non-low-order X25519 input.
    """
    msg = _require_bytes("msg", msg)
    dst = _require_bytes("dst", dst)
    return _encode_u(_hash_to_point(msg, dst))


# --- batch hot path -----------------------------------------------------------------------------

# Constants for the inverse-square-root form of the map (see _map_batch).
_A: Final = mpz(_J_INT)
_NEG_A: Final = mpz(-_J_INT)
_A3: Final = mpz(_J_INT**3)
# RFC 7748 §5 writes z_2 = E * (AA + a24 * E) with a24 = (A - 2) / 4; since AA = BB + E this
# equals E * (BB + (A + 2) / 4 * E), which is the form used below.
_A24: Final = mpz((_J_INT + 2) // 4)
_P_MINUS_1: Final = _P - 1
_A_SQRT_M1: Final = _A * _SQRT_M1 % _P
_NEG_A_SQRT_M1: Final = -_A * _SQRT_M1 % _P
_ONE_MINUS_I: Final = (1 - _SQRT_M1) % _P  # sqrt(-2i): (1 - i)^2 = -2i
_ONE_PLUS_I: Final = (1 + _SQRT_M1) % _P  # sqrt(2i): (1 + i)^2 = 2i


def _uniform_bytes_batch(packed: bytes, n: int, msg_len: int, dst: bytes) -> bytes:
    """``expand_message_xmd(msg_i, dst, 96)`` for every message, concatenated (96 bytes each).

    Same computation as :func:`expand_message_xmd` with ``ell = 2``, restructured so the
    per-element work is three SHA-512 calls: the all-zero first block ``Z_pad`` is absorbed
    once and its state copied, and the ``b_0 XOR b_1`` and row assembly are done with numpy
    over the whole batch.
    """
    dst_prime = dst + bytes([len(dst)])
    sha = _sha512
    # b_0 = H(Z_pad || msg || I2OSP(96, 2) || I2OSP(0, 1) || DST_prime)
    tail0 = (2 * _L).to_bytes(2, "big") + b"\x00" + dst_prime
    rows0 = np.empty((n, msg_len + len(tail0)), np.uint8)
    rows0[:, :msg_len] = np.frombuffer(packed, np.uint8).reshape(n, msg_len)
    rows0[:, msg_len:] = np.frombuffer(tail0, np.uint8)
    buf0 = rows0.tobytes()
    w0 = rows0.shape[1]
    copy_zpad_state = sha(bytes(_R_IN_BYTES)).copy
    b0_list: list[bytes] = []
    append = b0_list.append
    for off in range(0, n * w0, w0):
        h = copy_zpad_state()
        h.update(buf0[off : off + w0])
        append(h.digest())
    # b_1 = H(b_0 || I2OSP(1, 1) || DST_prime)
    suffix1 = b"\x01" + dst_prime
    b1_list = [sha(b0 + suffix1).digest() for b0 in b0_list]
    b0_arr = np.frombuffer(b"".join(b0_list), np.uint8).reshape(n, _B_IN_BYTES)
    b1_arr = np.frombuffer(b"".join(b1_list), np.uint8).reshape(n, _B_IN_BYTES)
    # b_2 = H(strxor(b_0, b_1) || I2OSP(2, 1) || DST_prime)
    suffix2 = b"\x02" + dst_prime
    rows2 = np.empty((n, _B_IN_BYTES + len(suffix2)), np.uint8)
    np.bitwise_xor(b0_arr, b1_arr, out=rows2[:, :_B_IN_BYTES])
    rows2[:, _B_IN_BYTES:] = np.frombuffer(suffix2, np.uint8)
    buf2 = rows2.tobytes()
    w2 = rows2.shape[1]
    b2_list = [sha(buf2[off : off + w2]).digest() for off in range(0, n * w2, w2)]
    uniform = np.empty((n, 2 * _L), np.uint8)
    uniform[:, :_B_IN_BYTES] = b1_arr
    b2_arr = np.frombuffer(b"".join(b2_list), np.uint8).reshape(n, _B_IN_BYTES)
    uniform[:, _B_IN_BYTES:] = b2_arr[:, : 2 * _L - _B_IN_BYTES]
    return uniform.tobytes()


def _gmpy2_records(uniform: bytes) -> bytes:
    """Re-lay 48-byte big-endian field elements as gmpy2 ``to_binary`` records (vectorised).

    Why: :func:`gmpy2.from_binary` on ``b"\\x01\\x01" + little-endian magnitude`` (type mpz,
    positive) is the cheapest way to get an mpz from bytes, ~30% faster than
    ``mpz.from_bytes``; numpy does the byte reversal for the whole batch at once.
    """
    n = len(uniform) // _L
    records = np.empty((n, _L + 2), np.uint8)
    records[:, :2] = 1
    records[:, 2:] = np.frombuffer(uniform, np.uint8).reshape(n, _L)[:, ::-1]
    return records.tobytes()


def _map_batch(uniform: bytes) -> tuple[list[Any], list[Any]]:
    """Elligator 2 (RFC 9380 §6.7.1) for every 48-byte field element, affine (x, y) lists.

    Same output as :func:`map_to_curve_elligator2` (tested), computed with one exponentiation
    that also yields ``1/xd``.  With ``t = 2u^2``, ``xd = 1 + t``, ``x1 = -A/xd``:

    * ``g(x1) = G / xd^3`` where ``G = A^3 t - A xd^2``;
    * ``R = (G xd^3)^((p-5)/8)`` satisfies ``R^2 G xd^3 = eps``, a 4th root of unity, with
      ``eps = +-1`` iff ``g(x1)`` is a square (p = 5 mod 8, so sqrt(-1) is a non-square);
    * hence ``(G R)^2 = eps g(x1)`` (a square root up to a known factor),
      ``k = G R^2 xd^2 = eps / xd`` (the inverse of ``xd`` for free) and ``eps = k xd``.

    Square case: ``x = x1``, ``y = G R`` (times sqrt(-1) if eps = -1), sign with sgn0(y) = 1.
    Otherwise ``x = x2 = -A - x1`` and ``g(x2) = t g(x1)``: ``y = G R u f`` with
    ``f^2 = 2/eps`` (``f = 1 -+ i``), sign with sgn0(y) = 0, exactly as the RFC prescribes.

    Values are reduced mod p only where it pays: ``u``, ``G``, ``x`` and the exponentiation
    base stay unreduced (GMP reduces the base internally without a Python-level operation).
    """
    P, A, NEG_A, A3 = _P, _A, _NEG_A, _A3
    C4, SQRT_M1, P_MINUS_1 = _C4, _SQRT_M1, _P_MINUS_1
    A_I, NEG_A_I, ONE_MINUS_I, ONE_PLUS_I = _A_SQRT_M1, _NEG_A_SQRT_M1, _ONE_MINUS_I, _ONE_PLUS_I
    powmod = gmpy2.powmod
    from_binary = gmpy2.from_binary
    records = _gmpy2_records(uniform)
    width = _L + 2
    xs: list[Any] = []
    ys: list[Any] = []
    x_append = xs.append
    y_append = ys.append
    for off in range(0, len(records), width):
        u = from_binary(records[off : off + width])  # unreduced: only used mod p
        t = u * u * 2 % P
        xd = t + 1
        xd2 = xd * xd % P
        G = A3 * t - A * xd2
        R = powmod(G * xd2 * xd, C4, P)
        GR = G * R % P
        k = GR * R * xd2 % P  # = eps / xd
        eps = k * xd % P
        if eps == 1:  # g(x1) square, (G R)^2 = g(x1)
            x = NEG_A * k
            y = GR if GR.is_odd() else P - GR
        elif eps == P_MINUS_1:  # g(x1) square, (G R i)^2 = g(x1); 1/xd = -k
            x = A * k
            y = GR * SQRT_M1 % P
            if not y.is_odd():
                y = P - y
        elif eps == SQRT_M1:  # non-square: 1/xd = -i k, x2 = -A - x1
            x = NEG_A - A_I * k
            y = GR * u * ONE_MINUS_I % P
            if y.is_odd():
                y = P - y
        else:  # eps == -i: 1/xd = i k
            x = NEG_A - NEG_A_I * k
            y = GR * u * ONE_PLUS_I % P
            if y.is_odd():
                y = P - y
        x_append(x)
        y_append(y)
    return xs, ys


def _sum_and_clear_batch(xs: list[Any], ys: list[Any]) -> tuple[list[Any], list[Any]]:
    """Projective x-only ``8 * (Q0 + Q1)`` for consecutive pairs of affine points.

    Chord addition gives ``x3 = ((y1 - y0)^2 - (A + x0 + x1)(x1 - x0)^2) / (x1 - x0)^2``; the
    three doublings use the RFC 7748 ladder doubling formulas on (X : Z).  Denominators are
    left in Z (unreduced on output) and inverted once per batch.  If ``x0 == x1`` (or the result
    is the identity) Z is 0 mod p and the caller recomputes that element with the reference
    code.
    """
    P, A, A24 = _P, _A, _A24
    X_out: list[Any] = []
    Z_out: list[Any] = []
    X_append = X_out.append
    Z_append = Z_out.append
    it_x = iter(xs)
    it_y = iter(ys)
    for x0, x1, y0, y1 in zip(it_x, it_x, it_y, it_y, strict=True):
        D = x1 - x0
        N = y1 - y0
        Z = D * D % P
        X = (N * N - (x0 + x1 + A) * Z) % P
        s = X + Z
        d = X - Z
        AA = s * s
        BB = d * d
        C = AA - BB
        X = AA * BB % P
        Z = C * (BB + A24 * C) % P
        s = X + Z
        d = X - Z
        AA = s * s
        BB = d * d
        C = AA - BB
        X = AA * BB % P
        Z = C * (BB + A24 * C) % P
        s = X + Z
        d = X - Z
        AA = s * s
        BB = d * d
        C = AA - BB
        X_append(AA * BB)  # left unreduced: _encode_batch reduces anyway
        Z_append(C * (BB + A24 * C))
    return X_out, Z_out


def _encode_batch(Xs: list[Any], Zs: list[Any]) -> list[bytes] | None:
    """``x = X / Z`` for all elements with one inversion (Montgomery's trick), as 32-byte LE.

    Returns None if some ``Z`` is 0 mod p (the product then is 0 and has no inverse).
    """
    P = _P
    m = len(Zs)
    prefix: list[Any] = [None] * m
    acc = mpz(1)
    for j, z in enumerate(Zs):
        prefix[j] = acc
        acc = acc * z % P
    if not acc:
        return None
    inv = gmpy2.invert(acc, P)
    out: list[bytes] = [b""] * m
    for j in range(m - 1, -1, -1):
        out[j] = (Xs[j] * inv * prefix[j] % P).to_bytes(32, "little")
        inv = inv * Zs[j] % P
    return out


def hash_to_curve_batch(
    packed_msgs: bytes | bytearray | memoryview, msg_len: int, dst: bytes | bytearray | memoryview
) -> bytes:
    """:func:`hash_to_curve` for many equal-length messages at once (the PSI hot path).

    ``packed_msgs`` is the concatenation of ``len(packed_msgs) // msg_len`` messages; the result
    is the concatenation of their 32-byte outputs in the same order, byte-for-byte equal to
    calling :func:`hash_to_curve` on each.  Module-level and taking only bytes/ints so it can be
    shipped to a :class:`concurrent.futures.ProcessPoolExecutor`.
    """
    packed = _require_bytes("packed_msgs", packed_msgs)
    dst = _require_bytes("dst", dst)
    if not isinstance(msg_len, int) or isinstance(msg_len, bool):
        raise TypeError(f"msg_len must be int, got {type(msg_len).__name__}")
    if msg_len < 1:
        raise ValueError(f"msg_len must be positive, got {msg_len}")
    if len(packed) % msg_len:
        raise ValueError(f"len(packed_msgs)={len(packed)} is not a multiple of msg_len={msg_len}")
    _check_dst(dst)
    n = len(packed) // msg_len
    if n == 0:
        return b""
    uniform = _uniform_bytes_batch(packed, n, msg_len, dst)
    xs, ys = _map_batch(uniform)
    Xs, Zs = _sum_and_clear_batch(xs, ys)
    out = _encode_batch(Xs, Zs)
    if out is None:  # some Z = 0 mod p: x0 == x1 or the identity (probability ~2^-250)
        degenerate = [j for j, z in enumerate(Zs) if not z % _P]
        for j in degenerate:
            Zs[j] = mpz(1)
        out = _encode_batch(Xs, Zs)
        assert out is not None
        for j in degenerate:  # recompute exactly with the reference code
            out[j] = _encode_u(_hash_to_point(packed[j * msg_len : (j + 1) * msg_len], dst))
    return b"".join(out)
