"""Base oblivious transfers for the OT extension: Chou-Orlandi over Curve25519.

T. Chou, C. Orlandi, "The Simplest Protocol for Oblivious Transfer"
(LATINCRYPT 2015), batched: one sender point for every transfer.

- The sender picks ``a`` and sends ``A = aG``.
- For each transfer ``j`` with choice bit ``c_j`` the receiver picks ``x_j`` and
  sends ``B_j = x_j·G`` (``c_j = 0``) or ``A + x_j·G`` (``c_j = 1``).
- The sender's two keys are ``KDF(a·B_j)`` and ``KDF(a·(B_j - A))``; the
  receiver's key is ``KDF(x_j·A)``, equal to the one it chose. ``B_j`` is a
  uniform point whatever ``c_j`` is, so the sender learns nothing of the
  choice; the other key needs ``a·x_j·G ± a·A``, a Diffie-Hellman problem.

Scalar multiplications are X25519 (``cryptography``), which works on
u-coordinates only: a point is sent as ``u ‖ v`` (64 bytes, little-endian)
so the one addition each side needs can be done here in affine Montgomery
coordinates. X25519 gives ``x_j·G`` only up to its sign; the keys do not
care (they hash u-coordinates, and ``u(k·P) = u(k·(-P))``), but the point
sent does: the receiver takes ``±x_j·G`` with a *secret random* sign (bit 255
of its secret, which X25519's clamping ignores). Lifting always to the same
root would make the sign of ``v`` in ``B_j`` a function of ``u`` exactly when
``c_j = 0``, and the sender could read half the choices off the points.

Every received point passes the project's X25519 validation (canonical,
not of low order, not on the twist) plus ``v² = u³ + 486662u² + u``. The
sender's point must moreover lie in the prime-order subgroup (``l·A = O, l the group order``,
one scalar multiplication per session): with a small-order component ``T``
in ``A``, ``B_j = A + x_j·G`` would carry ``T`` exactly when ``c_j = 1``, and
the choices, clamped away from the keys, would show in the points. Keys hash
the whole transcript, both points and the transfer's index, so a key from one
transfer, or one session, says nothing about another.

This is the semi-honest variant the KKRT16 protocol needs; the session layer
binds the transcript to the session's nonces.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Final

import gmpy2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from gmpy2 import mpz

from cleanroom.matching.hash_to_curve import montgomery_add
from cleanroom.matching.x25519 import InvalidPointError, validate_point

POINT_BYTES: Final = 64  # u ‖ v
KEY_BYTES: Final = 16

_P: Final = 2**255 - 19
_A: Final = 486662
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)
#: The order of the prime-order subgroup (RFC 7748 §4.1).
_ORDER: Final = 2**252 + 27742317777372353535851937790883648493


def in_prime_subgroup(point: tuple[int, int]) -> bool:
    """``l·P = O``, l the group order: no small-order component (double and add; ~10 ms)."""
    result: tuple[int, int] | None = None
    addend: tuple[int, int] | None = point
    k = _ORDER
    while k:
        if k & 1:
            result = montgomery_add(result, addend)
        addend = montgomery_add(addend, addend)
        k >>= 1
    return result is None


def _lift(u: int) -> tuple[int, int]:
    """A point with u-coordinate ``u`` (either of the two)."""
    rhs = (u * u * u + _A * u * u + u) % _P
    v = int(gmpy2.powmod(mpz(rhs), (_P + 3) // 8, _P))
    if v * v % _P != rhs:
        v = v * _SQRT_M1 % _P
    if v * v % _P != rhs:
        raise InvalidPointError("not on curve25519: u^3 + 486662*u^2 + u is not a square")
    return u, v


def encode_point(point: tuple[int, int]) -> bytes:
    return point[0].to_bytes(32, "little") + point[1].to_bytes(32, "little")


def decode_point(data: bytes, index: int | None = None) -> tuple[int, int]:
    """``u ‖ v`` from a peer, validated; ``InvalidPointError`` says what is wrong."""
    if len(data) != POINT_BYTES:
        raise InvalidPointError(
            f"wrong length: expected {POINT_BYTES} bytes, got {len(data)}", index
        )
    try:
        validate_point(data[:32])
    except InvalidPointError as exc:
        raise InvalidPointError(exc.reason, index) from None
    u = int.from_bytes(data[:32], "little")
    v = int.from_bytes(data[32:], "little")
    if v >= _P:
        raise InvalidPointError("non-canonical encoding: v >= 2^255 - 19", index)
    if (v * v - (u * u * u + _A * u * u + u)) % _P:
        raise InvalidPointError("not on curve25519: v^2 != u^3 + 486662*u^2 + u", index)
    return u, v


def _u_bytes(u: int) -> bytes:
    return u.to_bytes(32, "little")


def _exchange(secret: X25519PrivateKey, u: int, index: int | None) -> bytes:
    try:
        return secret.exchange(X25519PublicKey.from_public_bytes(_u_bytes(u)))
    except ValueError as exc:  # all-zero output: a low-order point
        raise InvalidPointError("low-order point: the X25519 output is all-zero", index) from exc


def _kdf(transcript: bytes, index: int, shared: bytes) -> bytes:
    h = hashlib.sha256(b"cleanroom-base-ot-v1\x00")
    h.update(transcript)
    h.update(index.to_bytes(4, "big"))
    h.update(shared)
    return h.digest()[:KEY_BYTES]


def transcript_hash(context: bytes, sender_point: bytes, receiver_points: bytes) -> bytes:
    """What the keys are bound to: the caller's context (session nonces) and every point."""
    h = hashlib.sha256(b"cleanroom-base-ot-transcript-v1\x00")
    for part in (context, sender_point, receiver_points):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class OtSender:
    """Holds ``a``; turns the receiver's points into the two keys of every transfer."""

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._secret = X25519PrivateKey.from_private_bytes(random_bytes(32))
        u = int.from_bytes(self._secret.public_key().public_bytes_raw(), "little")
        self._point = _lift(u)
        self.message = encode_point(self._point)

    def keys(self, context: bytes, receiver_points: bytes) -> list[tuple[bytes, bytes]]:
        """``(k0, k1)`` per transfer; ``InvalidPointError`` (with its index) for a bad point."""
        if len(receiver_points) % POINT_BYTES:
            raise InvalidPointError(
                f"the receiver's points are not a whole number of {POINT_BYTES}-byte points"
            )
        transcript = transcript_hash(context, self.message, receiver_points)
        minus_a = (self._point[0], (-self._point[1]) % _P)
        out = []
        for j in range(len(receiver_points) // POINT_BYTES):
            b = decode_point(receiver_points[j * POINT_BYTES : (j + 1) * POINT_BYTES], j)
            diff = montgomery_add(b, minus_a)
            if diff is None:
                raise InvalidPointError("the receiver's point equals the sender's", j)
            k0 = _exchange(self._secret, b[0], j)
            k1 = _exchange(self._secret, diff[0], j)
            out.append((_kdf(transcript, 2 * j, k0), _kdf(transcript, 2 * j + 1, k1)))
        return out

    def __repr__(self) -> str:
        return "OtSender(<secret redacted>)"


class OtReceiver:
    """Chooses one key of every transfer; ``choices`` are bits (0/1)."""

    def __init__(
        self,
        sender_message: bytes,
        choices: Sequence[int],
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._sender_message = sender_message
        a = decode_point(sender_message)
        if not in_prime_subgroup(a):
            raise InvalidPointError(
                "the base-OT sender's point has a small-order component (it is not in the"
                " prime-order subgroup)"
            )
        self._a_u = a[0]
        self._choices = [int(c) for c in choices]
        if any(c not in (0, 1) for c in self._choices):
            raise ValueError("choices are bits")
        self._secrets: list[X25519PrivateKey] = []
        points = []
        for c in self._choices:
            raw = random_bytes(32)
            secret = X25519PrivateKey.from_private_bytes(raw)
            p = _lift(int.from_bytes(secret.public_key().public_bytes_raw(), "little"))
            if raw[31] >> 7:  # bit 255: clamped away from the scalar, a free secret bit
                p = (p[0], (-p[1]) % _P)
            b = montgomery_add(a, p) if c else p
            if b is None:  # x·G = -A: probability 2^-252
                raise AssertionError("the receiver drew the sender's own discrete log")
            self._secrets.append(secret)
            points.append(encode_point(b))
        self.message = b"".join(points)

    def keys(self, context: bytes) -> list[bytes]:
        """The chosen key of every transfer."""
        transcript = transcript_hash(context, self._sender_message, self.message)
        return [
            _kdf(transcript, 2 * j + c, _exchange(secret, self._a_u, None))
            for j, (c, secret) in enumerate(zip(self._choices, self._secrets, strict=True))
        ]

    def __repr__(self) -> str:
        return "OtReceiver(<secrets redacted>)"


def receive(
    sender_message: bytes, choices: bytes, context: bytes, secrets: bytes
) -> tuple[bytes, list[bytes]]:
    """The receiver's whole part in one call (for a worker process): its message and the
    chosen keys, for ``choices`` (one 0/1 byte each) and 32 bytes of ``secrets`` each.

    SECRET: ``secrets`` and the keys are the session's; hand them only to the party's
    own worker processes (as the ECDH blinding key is)."""
    stream = iter(secrets[i : i + 32] for i in range(0, len(secrets), 32))
    receiver = OtReceiver(sender_message, list(choices), lambda _n: next(stream))
    return receiver.message, receiver.keys(context)
