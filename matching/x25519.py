"""Commutative blinding for ECDH-PSI on Curve25519, via X25519 (RFC 7748).

Why: each party blinds every hashed identifier ``u = hash_to_curve(id)`` with its own secret
scalar, ``blind_k(u) = X25519(k, u)``.  X25519 clamps scalars to multiples of the cofactor,
so scalar multiplications compose and commute:
``X25519(a, X25519(b, u)) == X25519(b, X25519(a, u))``.  Doubly blinded values can therefore
be compared for equality without either party learning the other's identifiers.

Points that arrive from the other party are untrusted.  :func:`validate_point` rejects, with
a precise :class:`InvalidPointError`:

* a wrong length (RFC 7748 §5 inputs are exactly 32 bytes);
* non-canonical encodings (top bit set, or ``u >= 2^255 - 19``): X25519 would silently mask
  or reduce them (RFC 7748 §5), giving one point several encodings, which breaks equality
  matching and lets a peer probe us with values we never produced;
* the small-order points (RFC 7748 §6.1 "all-zero" outputs; 0, 1, p - 1 and the two order-8
  u-coordinates): blinding them yields a fixed value independent of the key;
* points on the quadratic twist (``u^3 + 486662 u^2 + u`` not a square mod p): X25519 accepts
  them, but the twist has a different group order, so results would not be in the group
  that our own hash-to-curve points live in.

Points of mixed order (prime-order component plus a small-order one) are accepted: clamping
multiplies by 8 and removes the small component, so blinding still lands in the prime-order
subgroup and stays commutative.  A full subgroup check would cost a second scalar
multiplication per point.

Hot path: :func:`blind_batch` works on packed bytes so it can run in a
:class:`concurrent.futures.ProcessPoolExecutor` worker; validation costs ~2 µs per point
(one Legendre symbol), small next to the ~50-60 µs X25519 operation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, NoReturn

import gmpy2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from gmpy2 import mpz

from cleanroom.proto.errors import InvalidInput

__all__ = [
    "POINT_SIZE",
    "SECRET_SIZE",
    "BlindingKey",
    "InvalidPointError",
    "blind_batch",
    "validate_point",
]

#: Size of an encoded u-coordinate and of a secret scalar (RFC 7748 §5).
POINT_SIZE: Final = 32
SECRET_SIZE: Final = 32

_P_INT: Final = 2**255 - 19
_P: Final = mpz(_P_INT)
_A: Final = mpz(486662)

#: Canonical u-coordinates of the points of small order (dividing 8) on curve25519, plus the
#: order-4 twist point u = p - 1.  Their non-canonical aliases (u + p, top bit set) are
#: already rejected by the canonical-encoding check.
_LOW_ORDER_U: Final[dict[int, str]] = {
    0: "order 2 (u = 0)",
    1: "order 4 (u = 1)",
    _P_INT - 1: "order 4 on the twist (u = p - 1)",
    0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0: "order 8",
    0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F: "order 8",
}
_LOW_ORDER: Final = frozenset(mpz(u) for u in _LOW_ORDER_U)


class InvalidPointError(InvalidInput):
    """A received point must not be blinded; ``index`` locates it within a batch.

    ``reason`` says why (wrong length, non-canonical, low order, not on the curve).  The
    exception pickles with its fields so it survives the trip back from a worker process.
    """

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        where = "" if index is None else f" at index {index}"
        super().__init__(f"invalid X25519 point{where}: {reason}")

    def __reduce__(self) -> tuple[type[InvalidPointError], tuple[str, int | None]]:
        return (type(self), (self.reason, self.index))


def _require_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


def _raise_invalid(u: bytes, index: int | None) -> NoReturn:
    """Raise the precise error for a point that failed the fast test (checks in RFC order)."""
    if len(u) != POINT_SIZE:
        raise InvalidPointError(f"wrong length: expected {POINT_SIZE} bytes, got {len(u)}", index)
    if u[-1] & 0x80:
        raise InvalidPointError("non-canonical encoding: the top bit (bit 255) is set", index)
    x = mpz.from_bytes(u, "little")
    if x >= _P:
        raise InvalidPointError("non-canonical encoding: u >= 2^255 - 19", index)
    if x in _LOW_ORDER:
        raise InvalidPointError(f"low-order point, {_LOW_ORDER_U[int(x)]}: u = {u.hex()}", index)
    if gmpy2.legendre(x * (x * (x + _A) + 1) % _P, _P) != 1:
        raise InvalidPointError(
            "not on curve25519: u^3 + 486662*u^2 + u is not a square mod p "
            "(the point is on the quadratic twist)",
            index,
        )
    raise AssertionError("_raise_invalid called on a valid point")


def _is_valid(u: bytes) -> bool:
    """Fast accept test for a 32-byte encoding (same rules as :func:`validate_point`)."""
    x = mpz.from_bytes(u, "little")
    return not (
        x >= _P  # also catches the top bit
        or x in _LOW_ORDER
        or gmpy2.legendre(x * (x * (x + _A) + 1) % _P, _P) != 1
    )


def validate_point(u: bytes | bytearray | memoryview) -> None:
    """Raise :class:`InvalidPointError` unless ``u`` is a canonical, non-low-order encoding of
    a point on curve25519 (see the module docstring for why each rule exists).

    Outputs of ``hash_to_curve`` and X25519 outputs on valid points always pass.
    """
    u = _require_bytes("u", u)
    if len(u) != POINT_SIZE or not _is_valid(u):
        _raise_invalid(u, None)


def _exchange_error(index: int | None) -> InvalidPointError:
    # cryptography raises ValueError when the shared secret is all-zero (RFC 7748 §6.1).
    return InvalidPointError("low-order point: the X25519 output is all-zero", index)


class BlindingKey:
    """A party's secret blinding scalar (32 random bytes, clamped by X25519 itself).

    Never printed and never pickled by accident; use :meth:`secret_bytes` deliberately to hand
    the key to the party's own worker processes (see :func:`blind_batch`).
    """

    __slots__ = ("_private_key", "_secret")

    def __init__(self, secret: bytes) -> None:
        secret = _require_bytes("secret", secret)
        if len(secret) != SECRET_SIZE:
            raise ValueError(f"secret must be {SECRET_SIZE} bytes, got {len(secret)}")
        self._secret = secret
        self._private_key = X25519PrivateKey.from_private_bytes(secret)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> BlindingKey:
        """Create a fresh key from ``rng(32)``; ``rng`` is injectable for known-answer tests."""
        secret = rng(SECRET_SIZE)
        if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
            raise ValueError(f"rng must return {SECRET_SIZE} bytes")
        return cls(secret)

    @classmethod
    def from_secret_bytes(cls, secret: bytes) -> BlindingKey:
        """Rebuild a key from :meth:`secret_bytes` (e.g. inside a worker process)."""
        return cls(secret)

    def secret_bytes(self) -> bytes:
        """The raw 32-byte secret.  SECRET: only for the party's own processes/storage."""
        return self._secret

    def blind(self, u: bytes | bytearray | memoryview) -> bytes:
        """``X25519(k, u)`` after :func:`validate_point` (raises :class:`InvalidPointError`)."""
        validate_point(u)
        try:
            return self._private_key.exchange(X25519PublicKey.from_public_bytes(bytes(u)))
        except ValueError as exc:  # unreachable after validation; kept as a safety net
            raise _exchange_error(None) from exc

    def __repr__(self) -> str:
        return "BlindingKey(<secret redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "BlindingKey is not picklable (it holds a secret); pass key.secret_bytes() "
            "explicitly to trusted worker processes"
        )


def blind_batch(secret: bytes, packed_points: bytes, *, validate: bool = True) -> bytes:
    """Blind many points: ``X25519(secret, u_i)`` for each 32-byte ``u_i`` in ``packed_points``.

    Returns the concatenated 32-byte results in input order.  Module-level and bytes-only so it
    can be submitted to a :class:`concurrent.futures.ProcessPoolExecutor`.  With ``validate``
    (the default; required for points from the other party) every input is checked before any
    work is done and the first bad one raises :class:`InvalidPointError` naming its index.
    ``validate=False`` is for points we produced ourselves (hash_to_curve or our own blinding);
    low-order inputs still raise, but non-canonical/twist inputs are then processed as X25519
    does (masked and reduced).
    """
    secret = _require_bytes("secret", secret)
    packed = _require_bytes("packed_points", packed_points)
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"secret must be {SECRET_SIZE} bytes, got {len(secret)}")
    n, rem = divmod(len(packed), POINT_SIZE)
    if rem:
        raise InvalidPointError(
            f"wrong length: packed input is {len(packed)} bytes, not a multiple of "
            f"{POINT_SIZE}; the last point has only {rem} bytes",
            n,
        )
    if validate:
        P, A, LOW = _P, _A, _LOW_ORDER
        legendre = gmpy2.legendre
        from_bytes = mpz.from_bytes
        for i, off in enumerate(range(0, len(packed), POINT_SIZE)):
            x = from_bytes(packed[off : off + POINT_SIZE], "little")
            if x >= P or x in LOW or legendre(x * (x * (x + A) + 1) % P, P) != 1:
                _raise_invalid(packed[off : off + POINT_SIZE], i)
    exchange = X25519PrivateKey.from_private_bytes(secret).exchange
    load = X25519PublicKey.from_public_bytes
    out: list[bytes] = []
    append = out.append
    off = 0
    try:
        for off in range(0, len(packed), POINT_SIZE):
            append(exchange(load(packed[off : off + POINT_SIZE])))
    except ValueError as exc:
        raise _exchange_error(off // POINT_SIZE) from exc
    return b"".join(out)
