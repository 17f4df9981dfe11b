"""Paillier fast path on gmpy2, interoperable with ``phe`` (python-paillier).

``phe`` stays the reference implementation and defines the formats: the public key is the
modulus ``n`` with ``g = n + 1``; a ciphertext is an integer ``0 < c < n**2`` with
``gcd(c, n) = 1``; integer plaintexts live in ``[0, n)`` and signed values use phe's
convention (``m mod n``, decoded with ``max_int = n // 3 - 1``). Every ciphertext made here is
an ordinary Paillier ciphertext: phe decrypts it, and this module decrypts phe's.

What is faster than phe
-----------------------
* **Short-exponent randomness** (Damgård, Jurik, Nielsen, "A generalization of Paillier's
  public-key system with applications to electronic voting", §4.1). Key generation picks a
  random ``x`` in ``Z_n^*``, sets ``h = -x**2 mod n`` and publishes ``h_s = h**n mod n**2``
  (an ``n``-th residue, so it never changes the plaintext). An encryption is
  ``c = (1 + m*n) * h_s**a mod n**2`` with a *short* random exponent ``a`` instead of
  ``r**n`` with a 2048-bit ``n``. Because ``h_s`` is fixed, ``h_s**a`` comes from a fixed-base
  table: with 8-bit windows, ``T[i][d] = h_s**(d * 256**i)`` and ``h_s**a`` is the product of
  one table entry per byte of ``a`` -- ``exponent_bits / 8`` modular multiplications and no
  squarings. ``(1 + n)**m = 1 + m*n mod n**2``, so ``g**m`` is one multiplication.
* **Pooled full re-randomization** (:class:`RandomizerPool`): for a holder of the public
  key who re-randomizes many ciphertexts that must hide a computation even from the key
  owner, the product of one table entry per byte over a secret pool of uniform ``r**n``,
  statistically close to a fresh ``r**n`` (leftover hash lemma) at about a ninth of its
  cost.
* **CRT encryption for the key owner**: the owner keeps the tables modulo ``p**2`` and
  ``q**2`` (half-size numbers), computes both halves and recombines them with the CRT.
* **CRT decryption** modulo ``p**2`` and ``q**2`` (as phe does), and homomorphic sums as plain
  modular products with batched, cheap validation.

Choice of the exponent length
-----------------------------
``a`` is uniform in ``[0, 2**ell)`` with ``ell = 2 * kappa`` and ``kappa = max(128, the
NIST SP 800-57 strength of n)``: 256 bits for 2048- to 7679-bit moduli, 384 bits from 7680,
512 bits from 15360. Reasons: the best generic attack on an ``ell``-bit exponent that works
without knowing the group order (Pollard's kangaroo / baby-step giant-step on the
interval) costs ``2**(ell/2)`` group operations, so ``ell = 2*kappa`` gives ``kappa``-bit
security; at 2048 bits that is 128 bits, above the ~112 bits that factoring ``n`` costs, so
the short exponent is not the weakest link. DJN's own choice (``ell = |n|/2``, 1024 bits) is
more conservative but 4x slower; the 2*kappa rule is the usual "short exponent" assumption.

Who can use the short exponent: anybody who does not know the factorization. The key owner
does know the group order, and for random (non-safe) primes the smooth part of ``p - 1`` and
``q - 1`` leaks part of ``a`` (Pohlig-Hellman / van Oorschot-Wiener). That does not matter
for encryption (the owner can decrypt anyway), but it does for *re-randomization that must
hide a computation from the key owner*. Hence :meth:`PaillierPublicKey.rerandomize` uses a
full-size uniform ``r**n`` by default (the output is then distributed exactly like a fresh
encryption, whatever the input); ``full=False`` selects the short-exponent variant, which only
hides from parties without the factorization. For many ciphertexts, a :class:`RandomizerPool`
gives the full variant's guarantee (up to a statistical distance of about ``2**-129`` a
ciphertext) far faster. The owner's
:meth:`PaillierPrivateKey.rerandomize` uses the short exponent.

Security notes
--------------
* Keys below 2048 bits are refused by the safe API (``generate_keypair``, key loading).
  Tests use :func:`_unsafe_generate_keypair_for_tests` and an explicit ``min_bits=``.
* Every function taking a ciphertext validates it (``0 < c < n**2``, ``gcd(c, n) = 1``) and
  raises :class:`InvalidCiphertextError`; a ciphertext sharing a factor with ``n`` would
  factor the key.
* Serialization is JSON / fixed-width bytes only, never pickle. ``repr`` of a private key
  shows a fingerprint of ``n``, never ``p`` or ``q``; error messages never include them.
* Homomorphic results (:meth:`~PaillierPublicKey.add`, :meth:`~PaillierPublicKey.add_many`,
  :meth:`~PaillierPublicKey.mul_plain`) are *not* re-randomized; call ``rerandomize`` before a
  result leaves the process.
* Randomness is injectable for known-answer tests: ``rng`` is ``None`` (``os.urandom``), an
  object with ``getrandbits(k)`` (e.g. ``random.Random(seed)``; never use a seeded generator
  outside tests) or a callable ``f(nbytes) -> bytes`` such as ``os.urandom``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import operator
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol, TypeAlias

import gmpy2
from gmpy2 import mpz

from cleanroom.proto.errors import InvalidInput

__all__ = [
    "MAX_KEY_BITS",
    "MIN_KEY_BITS",
    "InvalidCiphertextError",
    "InvalidCiphertextTypeError",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "PlaintextOverflowError",
    "RandomSource",
    "RandomizerPool",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "djn_exponent_bits",
    "from_phe_encrypted_number",
    "generate_keypair",
    "pool_size",
    "private_key_from_json",
    "private_key_to_json",
    "public_key_from_json",
    "public_key_to_json",
    "raw_ciphertexts_from_bytes",
    "to_phe_encrypted_number",
    "validate_ciphertext",
    "validate_ciphertexts",
]

MIN_KEY_BITS = 2048
"""Smallest modulus the safe API generates or accepts."""
MAX_KEY_BITS = 16384
"""Largest modulus accepted (bounds the work a peer's key can cause)."""
_UNSAFE_FLOOR_BITS = 512
"""Absolute floor, even for the explicitly unsafe test paths."""
_WINDOW_BITS = 8  # one table row per byte of the exponent
_POOL_STATISTICAL_BITS = 128  # a RandomizerPool's distance from uniform: about 2**-129
_FORMAT_VERSION = 1
_PUBLIC_TYPE = "cleanroom.paillier.public_key"
_PRIVATE_TYPE = "cleanroom.paillier.private_key"
_PRIME_CHECK_REPS = 40
_SMALL_PRIMES_PRODUCT = gmpy2.mpz(1)
for _small in range(3, 2000, 2):  # odd primes below 2000, to reject trivially weak moduli
    if gmpy2.is_prime(_small):
        _SMALL_PRIMES_PRODUCT *= _small
del _small

_MPZ_TYPE = type(mpz(0))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class InvalidCiphertextError(InvalidInput):
    """A ciphertext is not a valid Paillier ciphertext for the key.

    ``index`` is the position in a batch, or ``None`` for a single ciphertext.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"ciphertext[{index}]: {message}")
        self.index = index


class InvalidCiphertextTypeError(InvalidCiphertextError, TypeError):
    """A ciphertext is not an integer (both a :class:`TypeError` and an
    :class:`InvalidCiphertextError`)."""


class PlaintextOverflowError(ValueError, OverflowError):
    """A decrypted residue lies in phe's overflow band ``(max_int, n - max_int)``."""


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------


class _GetRandBits(Protocol):
    def getrandbits(self, k: int, /) -> int: ...


RandomSource: TypeAlias = "_GetRandBits | Callable[[int], bytes] | None"
"""``None`` (os.urandom), a ``random.Random``-like object, or ``f(nbytes) -> bytes``."""


class _Rng:
    """Normalized randomness: ``bytes(k)`` and uniform integers."""

    __slots__ = ("_read",)

    def __init__(self, source: RandomSource) -> None:
        if source is None:
            self._read: Callable[[int], bytes] = os.urandom
        elif hasattr(source, "getrandbits"):
            getrandbits = source.getrandbits

            def read(k: int) -> bytes:
                return getrandbits(8 * k).to_bytes(k, "little") if k else b""

            self._read = read
        elif callable(source):
            fn = source

            def read_checked(k: int) -> bytes:
                out = fn(k)
                if not isinstance(out, bytes | bytearray | memoryview):
                    raise TypeError(
                        f"rng callable must return bytes, returned {type(out).__name__}"
                    )
                if len(out) != k:
                    raise ValueError(f"rng callable returned {len(out)} bytes, {k} were asked")
                return bytes(out)

            self._read = read_checked
        else:
            raise TypeError(
                "rng must be None, an object with getrandbits(k) or a callable f(nbytes) -> "
                f"bytes, got {type(source).__name__}"
            )

    def bytes(self, k: int) -> bytes:
        return self._read(k)

    def getrandbits(self, k: int, /) -> int:
        return int(self.bits(k))

    def bits(self, k: int) -> Any:
        """Uniform integer in ``[0, 2**k)`` as an mpz."""
        nbytes = (k + 7) // 8
        x = mpz(int.from_bytes(self._read(nbytes), "big"))
        return x >> (8 * nbytes - k)

    def unit_below(self, n: Any) -> Any:
        """Uniform element of ``Z_n^*`` (rejection sampling)."""
        k = n.bit_length()
        while True:
            r = self.bits(k)
            if 0 < r < n and gmpy2.gcd(r, n) == 1:
                return r


def _as_rng(rng: RandomSource | _Rng) -> _Rng:
    return rng if isinstance(rng, _Rng) else _Rng(rng)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def djn_exponent_bits(n_bits: int) -> int:
    """Length of the DJN short exponent for an ``n_bits`` modulus (see module docstring)."""
    strength = 80
    for bits, level in ((2048, 112), (3072, 128), (7680, 192), (15360, 256)):
        if n_bits >= bits:
            strength = level
    kappa = max(128, strength)
    ell = 2 * kappa
    return -(-ell // _WINDOW_BITS) * _WINDOW_BITS


def _plain_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def _fingerprint(n: Any) -> str:
    nb = int(n).to_bytes((n.bit_length() + 7) // 8, "big")
    return hashlib.sha256(b"cleanroom.paillier.n\x00" + nb).hexdigest()[:16]


def _check_modulus(n: object, min_bits: int) -> Any:
    if isinstance(n, bool) or not isinstance(n, int | _MPZ_TYPE):
        raise TypeError(f"modulus n must be an int, got {type(n).__name__}")
    _check_min_bits(min_bits)
    nm = mpz(n)
    bits = nm.bit_length()
    if bits < min_bits:
        raise ValueError(f"modulus has {bits} bits; at least {min_bits} are required")
    if bits > MAX_KEY_BITS:
        raise ValueError(f"modulus has {bits} bits; at most {MAX_KEY_BITS} are accepted")
    if nm % 2 == 0:
        raise ValueError("modulus n must be odd")
    if gmpy2.gcd(nm, _SMALL_PRIMES_PRODUCT) != 1:
        raise ValueError("modulus n has a small prime factor")
    if gmpy2.is_square(nm):
        raise ValueError("modulus n is a perfect square")
    if gmpy2.is_prime(nm, 1):
        raise ValueError("modulus n is prime")
    return nm


def _check_min_bits(min_bits: object) -> None:
    if isinstance(min_bits, bool) or not isinstance(min_bits, int):
        raise TypeError("min_bits must be an int")
    if min_bits < _UNSAFE_FLOOR_BITS:
        raise ValueError(f"min_bits below {_UNSAFE_FLOOR_BITS} is not supported")


def _check_fixed_base(h_s: object, n: Any, nsquare: Any) -> Any:
    if isinstance(h_s, bool) or not isinstance(h_s, int | _MPZ_TYPE):
        raise TypeError(f"h_s must be an int, got {type(h_s).__name__}")
    hm = mpz(h_s)
    if not 1 < hm < nsquare - 1:
        raise ValueError("h_s must satisfy 1 < h_s < n**2 - 1")
    if gmpy2.gcd(hm, n) != 1:
        raise ValueError("h_s shares a factor with n")
    return hm


def _powers(base: Any, modulus: Any) -> tuple[Any, ...]:
    """``base**d mod modulus`` for every digit ``0 <= d < 2**_WINDOW_BITS``."""
    row = [mpz(1), base]
    x = base
    for _d in range(2, 1 << _WINDOW_BITS):
        x = x * base % modulus
        row.append(x)
    return tuple(row)


class _FixedBaseTable:
    """Rows of digit powers; ``pow(digits)`` multiplies one entry per row (digit ``i`` picks
    from row ``i``), so a power costs one modular multiplication per non-zero digit.

    :meth:`of_base` makes ``T[i][d] = base**(d * 256**i)`` (a fixed-base power for
    little-endian exponent bytes); :meth:`of_bases` makes ``T[i][d] = bases[i]**d``.
    """

    __slots__ = ("modulus", "rows")

    def __init__(self, rows: tuple[tuple[Any, ...], ...], modulus: Any) -> None:
        self.rows = rows
        self.modulus = modulus

    @classmethod
    def of_base(cls, base: Any, modulus: Any, n_digits: int) -> _FixedBaseTable:
        rows: list[tuple[Any, ...]] = []
        b = mpz(base) % modulus
        for _ in range(n_digits):
            row = _powers(b, modulus)
            rows.append(row)
            b = row[-1] * b % modulus  # base**(256**(i+1))
        return cls(tuple(rows), modulus)

    @classmethod
    def of_bases(cls, bases: Iterable[Any], modulus: Any) -> _FixedBaseTable:
        return cls(tuple(_powers(mpz(b) % modulus, modulus) for b in bases), modulus)

    def pow(self, digits: bytes | memoryview) -> Any:
        m = self.modulus
        acc = mpz(1)
        for row, d in zip(self.rows, digits, strict=True):
            if d:
                acc = acc * row[d] % m
        return acc


def _check_ciphertext(c: object, n: Any, nsquare: Any, index: int | None = None) -> Any:
    if isinstance(c, bool) or not isinstance(c, int | _MPZ_TYPE):
        raise InvalidCiphertextTypeError(
            f"ciphertext must be an int, got {type(c).__name__}", index
        )
    if c <= 0:
        raise InvalidCiphertextError(
            "ciphertext is 0; need 0 < c < n**2" if c == 0 else "ciphertext is negative",
            index,
        )
    if c >= nsquare:
        raise InvalidCiphertextError("ciphertext is not below n**2", index)
    c = mpz(c)
    if gmpy2.gcd(c % n, n) != 1:
        raise InvalidCiphertextError("ciphertext shares a factor with n (gcd(c, n) != 1)", index)
    return c


def _check_ciphertexts(cs: Iterable[object], n: Any, nsquare: Any) -> list[Any]:
    """Validate a batch: range checks per element, one gcd for the whole batch."""
    if isinstance(cs, str | bytes | bytearray | memoryview):
        raise TypeError("ciphertexts must be an iterable of ints")
    out: list[Any] = []
    acc = mpz(1)
    for i, c in enumerate(cs):
        if isinstance(c, bool) or not isinstance(c, int | _MPZ_TYPE):
            raise InvalidCiphertextTypeError(
                f"ciphertext must be an int, got {type(c).__name__}", i
            )
        if c <= 0:
            raise InvalidCiphertextError(
                "ciphertext is 0; need 0 < c < n**2" if c == 0 else "ciphertext is negative", i
            )
        if c >= nsquare:
            raise InvalidCiphertextError("ciphertext is not below n**2", i)
        cm = mpz(c)
        acc = acc * (cm % n) % n
        out.append(cm)
    if gmpy2.gcd(acc, n) != 1:  # some element shares a factor with n: find the first one
        for i, cm in enumerate(out):
            _check_ciphertext(cm, n, nsquare, i)
    return out


# --------------------------------------------------------------------------------------------
# Public key
# --------------------------------------------------------------------------------------------


class PaillierPublicKey:
    """Paillier public key ``n`` (``g = n + 1``), optionally with the DJN fixed base ``h_s``.

    With ``h_s``, :meth:`encrypt` uses short-exponent randomness from a fixed-base table mod
    ``n**2`` (built on first use or by :meth:`precompute`); without it (e.g. a key imported
    from phe), encryption uses a full-size ``r**n`` exactly like phe. Two keys are equal when
    their moduli are.
    """

    def __init__(self, n: int, *, h_s: int | None = None, min_bits: int = MIN_KEY_BITS) -> None:
        self._n = _check_modulus(n, min_bits)
        self._nsquare = self._n * self._n
        self._h_s = None if h_s is None else _check_fixed_base(h_s, self._n, self._nsquare)
        self.n: int = int(self._n)
        self.g: int = self.n + 1
        self.nsquare: int = int(self._nsquare)
        self.max_int: int = self.n // 3 - 1
        self.bits: int = self.n.bit_length()
        self.exponent_bits: int = djn_exponent_bits(self.bits)
        self.ciphertext_bytes: int = (self._nsquare.bit_length() + 7) // 8
        self._table: _FixedBaseTable | None = None
        self._lock = threading.Lock()
        self._phe: Any = None

    # -- identity ----------------------------------------------------------------------------

    @property
    def h_s(self) -> int | None:
        """The DJN fixed base ``h**n mod n**2``, or ``None``."""
        return None if self._h_s is None else int(self._h_s)

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of a SHA-256 of ``n``."""
        return _fingerprint(self._n)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PaillierPublicKey):
            return NotImplemented
        return self.n == other.n

    def __hash__(self) -> int:
        return hash(("cleanroom.paillier.public", self.n))

    def __repr__(self) -> str:
        return (
            f"PaillierPublicKey(bits={self.bits}, fingerprint={self.fingerprint}, "
            f"fixed_base={self._h_s is not None})"
        )

    def __reduce__(self) -> tuple[Any, tuple[int, int | None]]:
        # Only (n, h_s) travels (e.g. to worker processes); the table is rebuilt on demand and
        # the key is re-validated on load.
        return (_restore_public_key, (self.n, self.h_s))

    def with_fixed_base(self, rng: RandomSource = None) -> PaillierPublicKey:
        """A copy with a fresh DJN base of our own (one full exponentiation); for holders of a
        public key without ``h_s`` who encrypt many values. Keeps ``h_s`` if already set."""
        if self._h_s is not None:
            return self
        r = _as_rng(rng)
        x = r.unit_below(self._n)
        h = self._n - x * x % self._n
        h_s = gmpy2.powmod(h, self._n, self._nsquare)
        return PaillierPublicKey(self.n, h_s=int(h_s), min_bits=_UNSAFE_FLOOR_BITS)

    # -- encoding ----------------------------------------------------------------------------

    def encode(self, m: int) -> int:
        """Signed or raw plaintext -> residue in ``[0, n)`` (phe convention: ``m mod n``).

        Accepts ``-max_int <= m < n``."""
        m = _plain_int(m, "plaintext")
        if not -self.max_int <= m < self.n:
            raise ValueError("plaintext out of range: need -max_int <= m < n")
        return m % self.n

    def decode(self, x: int) -> int:
        """Residue in ``[0, n)`` -> signed int (phe's ``EncodedNumber.decode`` for exponent 0)."""
        x = _plain_int(x, "residue")
        if not 0 <= x < self.n:
            raise ValueError("residue out of range [0, n)")
        if x <= self.max_int:
            return x
        if x >= self.n - self.max_int:
            return x - self.n
        raise PlaintextOverflowError("overflow detected in decrypted number")

    # -- validation --------------------------------------------------------------------------

    def validate(self, c: object) -> int:
        """Return ``c`` as an int if it is a valid ciphertext, else raise."""
        return int(_check_ciphertext(c, self._n, self._nsquare))

    def validate_many(self, cs: Iterable[object]) -> list[int]:
        return [int(c) for c in _check_ciphertexts(cs, self._n, self._nsquare)]

    # -- encryption --------------------------------------------------------------------------

    def precompute(self) -> None:
        """Build the fixed-base table mod ``n**2`` now (no-op without ``h_s``)."""
        self._get_table()

    def _get_table(self) -> _FixedBaseTable | None:
        if self._h_s is None:
            return None
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self._table = _FixedBaseTable.of_base(
                        self._h_s, self._nsquare, self.exponent_bits // _WINDOW_BITS
                    )
        return self._table

    def _randomizers(self, count: int, rng: _Rng, full: bool) -> list[Any]:
        """``count`` values ``h_s**a`` (short) or ``r**n`` (full) mod ``n**2``."""
        table = None if full else self._get_table()
        if table is None:
            return [
                gmpy2.powmod(rng.unit_below(self._n), self._n, self._nsquare) for _ in range(count)
            ]
        k = self.exponent_bits // _WINDOW_BITS
        buf = memoryview(rng.bytes(k * count))
        return [table.pow(buf[i * k : (i + 1) * k]) for i in range(count)]

    def encrypt(self, m: int, *, rng: RandomSource = None) -> int:
        """Encrypt ``m`` (``-max_int <= m < n``) for the owner of this key."""
        return self.encrypt_many([m], rng=rng)[0]

    def encrypt_many(self, ms: Iterable[int], *, rng: RandomSource = None) -> list[int]:
        """Encrypt a batch (one randomness draw for the whole batch)."""
        residues = [self.encode(m) for m in ms]
        r = _as_rng(rng)
        n, n2 = self._n, self._nsquare
        rs = self._randomizers(len(residues), r, full=self._h_s is None)
        return [int((1 + m * n) * x % n2) for m, x in zip(residues, rs, strict=True)]

    def rerandomize(self, c: int, *, full: bool = True, rng: RandomSource = None) -> int:
        """Same plaintext, fresh randomness.

        ``full=True`` multiplies by ``r**n`` for uniform ``r`` in ``Z_n^*``: the result is
        distributed exactly like a fresh encryption, even for the key owner. ``full=False``
        uses the short-exponent ``h_s**a`` (needs ``h_s``; ~70x faster), which hides only from
        parties that do not know the factorization."""
        return self.rerandomize_many([c], full=full, rng=rng)[0]

    def rerandomize_many(
        self, cs: Iterable[int], *, full: bool = True, rng: RandomSource = None
    ) -> list[int]:
        checked = _check_ciphertexts(cs, self._n, self._nsquare)
        if not full and self._h_s is None:
            raise ValueError("short-exponent re-randomization needs a key with h_s")
        rs = self._randomizers(len(checked), _as_rng(rng), full=full)
        n2 = self._nsquare
        return [int(c * x % n2) for c, x in zip(checked, rs, strict=True)]

    def nth_residues(self, count: int, *, rng: RandomSource = None) -> list[int]:
        """``count`` values ``r**n mod n**2`` for uniform ``r`` in ``Z_n^*``: each is
        distributed exactly like the randomness of a fresh encryption (one full
        exponentiation each). A :class:`RandomizerPool` is made of them."""
        r = _as_rng(rng)
        return [int(x) for x in self._randomizers(count, r, full=True)]

    def randomizer_pool(self, *, rng: RandomSource = None) -> RandomizerPool:
        """A fresh :class:`RandomizerPool` for this key (``pool_size(bits)`` full
        exponentiations; generate its residues on workers with :meth:`nth_residues` to
        spread them)."""
        return RandomizerPool(self, self.nth_residues(pool_size(self.bits), rng=rng))

    # -- homomorphic operations --------------------------------------------------------------

    def add(self, c1: int, c2: int) -> int:
        """``E(a), E(b) -> E(a + b)`` (not re-randomized)."""
        a = _check_ciphertext(c1, self._n, self._nsquare, 0)
        b = _check_ciphertext(c2, self._n, self._nsquare, 1)
        return int(a * b % self._nsquare)

    def add_many(self, cs: Iterable[int]) -> int:
        """``E(m_1), ..., E(m_k) -> E(sum m_i)``: a modular product (not re-randomized).

        The empty sum is ``1``, the trivial encryption of 0."""
        return self.raw_add_many(_check_ciphertexts(cs, self._n, self._nsquare))

    def raw_add_many(self, cs: Iterable[int]) -> int:
        """:meth:`add_many` WITHOUT validating the inputs.

        Only for ciphertexts that already passed :meth:`validate_many` (a run
        sums each received ciphertext into several groups; checking it once is
        enough).  Unvalidated input gives a meaningless result, not an error.
        """
        n2 = self._nsquare
        acc = mpz(1)
        for c in cs:
            acc = acc * c % n2
        return int(acc)

    def mul_plain(self, c: int, k: int) -> int:
        """``E(m), k -> E(k * m mod n)`` for a plaintext int ``k`` (any sign; not
        re-randomized)."""
        cm = _check_ciphertext(c, self._n, self._nsquare)
        k = _plain_int(k, "scalar")
        if -self.n < k < 0:
            return int(gmpy2.powmod(cm, k, self._nsquare))  # inverse, short exponent
        return int(gmpy2.powmod(cm, k % self.n, self._nsquare))

    # -- phe interop -------------------------------------------------------------------------

    def to_phe_public_key(self) -> Any:
        """The equivalent ``phe.PaillierPublicKey``."""
        if self._phe is None:
            from phe import paillier as phe_paillier

            self._phe = phe_paillier.PaillierPublicKey(self.n)
        return self._phe

    @classmethod
    def from_phe(cls, public_key: Any, *, min_bits: int = MIN_KEY_BITS) -> PaillierPublicKey:
        """From a ``phe.PaillierPublicKey`` (no ``h_s``: see :meth:`with_fixed_base`)."""
        from phe import paillier as phe_paillier

        if not isinstance(public_key, phe_paillier.PaillierPublicKey):
            raise TypeError(f"expected phe.PaillierPublicKey, got {type(public_key).__name__}")
        return cls(public_key.n, min_bits=min_bits)


def _restore_public_key(n: int, h_s: int | None) -> PaillierPublicKey:
    return PaillierPublicKey(n, h_s=h_s, min_bits=_UNSAFE_FLOOR_BITS)


def pool_size(n_bits: int) -> int:
    """Residues of a :class:`RandomizerPool` for an ``n_bits`` modulus: one byte digit each
    and ``n_bits + 2 * _POOL_STATISTICAL_BITS`` digit bits in all (288 at 2048 bits)."""
    return -(-(n_bits + 2 * _POOL_STATISTICAL_BITS) // _WINDOW_BITS)


class RandomizerPool:
    """Re-randomization that hides a computation even from the key owner, at about
    ``pool_size(bits)`` modular multiplications a ciphertext instead of one full ``r**n``
    (288 against about 2,600 at 2048 bits).

    The pool is ``m`` independent uniform ``n``-th residues ``R_i = r_i**n mod n**2``
    (:meth:`PaillierPublicKey.nth_residues`), kept secret by whoever re-randomizes. A
    randomizer is ``prod_i R_i**d_i`` for fresh uniform bytes ``d_i``, read from a table of
    each ``R_i``'s 256 powers. Over the pool's draw, ``d -> prod R_i**d_i`` is a universal
    hash into the group of ``n``-th residues (order ``phi(n) < 2**bits``; two digit vectors
    collide with probability ``|G|**-1`` times the number of roots of unity of the gcd of
    their differences, which is 1 except with probability about ``2**-m``). By the leftover
    hash lemma (Impagliazzo, Levin, Luby 1989; Hastad, Impagliazzo, Levin, Luby 1999) with
    ``8m`` bits of digits and ``8m >= bits + 256``, one randomizer is within about ``2**-129``
    of uniform, and ``t`` of them from one pool within ``t * 2**-129`` of ``t`` independent
    uniform ones (a hybrid over the outputs; nobody but the holder sees the pool). A
    re-randomized ciphertext is then distributed like a fresh encryption of its plaintext up
    to that distance -- a statistical statement, so it holds for the key owner too, unlike
    the short exponent (module docstring).

    Only ``n`` and the residues travel when the pool is pickled (e.g. to worker processes or
    as a worker-local secret); the table (about 75,000 numbers mod ``n**2``, ~40 MB at 2048
    bits) is built on the first use in each process. ``repr`` never shows the residues.
    """

    def __init__(self, public_key: PaillierPublicKey, residues: Iterable[int]) -> None:
        _expect_public_key(public_key)
        checked = _check_ciphertexts(residues, public_key._n, public_key._nsquare)
        needed = pool_size(public_key.bits)
        if len(checked) < needed:
            raise ValueError(
                f"a randomizer pool for a {public_key.bits}-bit key needs {needed} residues,"
                f" not {len(checked)}"
            )
        self.public_key = public_key
        self._residues = tuple(checked)
        self._table: _FixedBaseTable | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._residues)

    def __repr__(self) -> str:
        return f"RandomizerPool(n={self.public_key.fingerprint}, residues={len(self)})"

    def __reduce__(self) -> tuple[Any, tuple[int, bytes]]:
        return (_restore_pool, (self.public_key.n, self.to_bytes()))

    def to_bytes(self) -> bytes:
        """The residues, fixed-width big-endian (a secret: the holder's randomness)."""
        return ciphertexts_to_bytes(self._residues, self.public_key)

    @classmethod
    def from_bytes(cls, public_key: PaillierPublicKey, data: bytes) -> RandomizerPool:
        return cls(public_key, ciphertexts_from_bytes(data, public_key))

    def _get_table(self) -> _FixedBaseTable:
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self._table = _FixedBaseTable.of_bases(self._residues, self.public_key._nsquare)
        return self._table

    def rerandomize_many(self, cs: Iterable[int], *, rng: RandomSource = None) -> list[int]:
        """Same plaintexts, fresh randomness (see the class docstring for how fresh)."""
        key = self.public_key
        checked = _check_ciphertexts(cs, key._n, key._nsquare)
        return self.raw_rerandomize_many(checked, rng=rng)

    def raw_rerandomize_many(self, cs: Iterable[Any], *, rng: RandomSource = None) -> list[int]:
        """:meth:`rerandomize_many` WITHOUT validating the inputs (for values this process
        just computed from validated ones)."""
        table = self._get_table()
        values = list(cs)
        m = len(self._residues)
        digits = memoryview(_as_rng(rng).bytes(m * len(values)))
        n2 = self.public_key._nsquare
        return [
            int(mpz(c) * table.pow(digits[i * m : (i + 1) * m]) % n2) for i, c in enumerate(values)
        ]


def _restore_pool(n: int, data: bytes) -> RandomizerPool:
    return RandomizerPool.from_bytes(PaillierPublicKey(n, min_bits=_UNSAFE_FLOOR_BITS), data)


# --------------------------------------------------------------------------------------------
# Private key
# --------------------------------------------------------------------------------------------


class PaillierPrivateKey:
    """Paillier private key (``p``, ``q``) with CRT decryption and CRT encryption.

    ``public_key`` always carries a DJN base ``h_s``: if the given public key has none, a
    fresh one is drawn from ``rng`` (``self.public_key`` is then a new object); a given
    ``h_s`` is checked to be an ``n``-th residue. ``check_primes=False`` skips the primality
    test of ``p`` and ``q`` (only for factors this process just generated).
    ``repr`` never shows ``p`` or ``q``, and the key refuses to be pickled.
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        p: int,
        q: int,
        *,
        rng: RandomSource = None,
        check_primes: bool = True,
    ) -> None:
        if not isinstance(public_key, PaillierPublicKey):
            raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")
        for v, name in ((p, "p"), (q, "q")):
            if isinstance(v, bool) or not isinstance(v, int | _MPZ_TYPE):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        pm, qm = mpz(p), mpz(q)
        n = public_key._n
        if pm <= 1 or qm <= 1 or pm * qm != n:
            raise ValueError("p * q does not equal the public modulus n")
        if pm == qm:
            raise ValueError("p and q must be different")
        if pm > qm:
            pm, qm = qm, pm
        if check_primes and not (
            gmpy2.is_prime(pm, _PRIME_CHECK_REPS) and gmpy2.is_prime(qm, _PRIME_CHECK_REPS)
        ):
            raise ValueError("p and q must be prime")
        if gmpy2.gcd(n, (pm - 1) * (qm - 1)) != 1:
            raise ValueError("gcd(n, (p-1)(q-1)) != 1")
        self._p, self._q = pm, qm
        self._p2, self._q2 = pm * pm, qm * qm
        self._n, self._nsquare = n, public_key._nsquare
        # decryption constants (as phe): hp = L_p(g**(p-1) mod p**2)**-1 mod p
        g = n + 1
        self._hp = gmpy2.invert((gmpy2.powmod(g, pm - 1, self._p2) - 1) // pm, pm)
        self._hq = gmpy2.invert((gmpy2.powmod(g, qm - 1, self._q2) - 1) // qm, qm)
        self._p_inv_q = gmpy2.invert(pm, qm)
        self._q2_inv_p2 = gmpy2.invert(self._q2, self._p2)

        if public_key._h_s is None:
            public_key = PaillierPublicKey(
                public_key.n,
                h_s=int(self._new_fixed_base(_as_rng(rng))),
                min_bits=_UNSAFE_FLOOR_BITS,
            )
        else:
            self._check_owner_fixed_base(public_key._h_s)
        self.public_key: PaillierPublicKey = public_key
        self._tables: tuple[_FixedBaseTable, _FixedBaseTable] | None = None
        self._lock = threading.Lock()
        self._phe: Any = None

    # -- secrets -----------------------------------------------------------------------------

    @property
    def p(self) -> int:
        """Smaller prime factor (secret)."""
        return int(self._p)

    @property
    def q(self) -> int:
        """Larger prime factor (secret)."""
        return int(self._q)

    def __repr__(self) -> str:
        return (
            f"PaillierPrivateKey(bits={self.public_key.bits}, "
            f"fingerprint={self.public_key.fingerprint}, secret)"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(
            "PaillierPrivateKey refuses to be pickled; use private_key_to_json() and store the "
            "result as a secret"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PaillierPrivateKey):
            return NotImplemented
        return self._n == other._n and self._p == other._p

    def __hash__(self) -> int:
        return hash(("cleanroom.paillier.private", self.public_key.n))

    # -- CRT helpers -------------------------------------------------------------------------

    def _crt_n2(self, cp: Any, cq: Any) -> Any:
        """``x mod p**2``, ``x mod q**2`` -> ``x mod n**2``."""
        return cq + self._q2 * ((cp - cq) * self._q2_inv_p2 % self._p2)

    def _new_fixed_base(self, rng: _Rng) -> Any:
        x = rng.unit_below(self._n)
        h = self._n - x * x % self._n  # h = -x**2 mod n
        n = self._n
        hp = gmpy2.powmod(h, n % (self._p * (self._p - 1)), self._p2)
        hq = gmpy2.powmod(h, n % (self._q * (self._q - 1)), self._q2)
        return self._crt_n2(hp, hq)

    def _check_owner_fixed_base(self, h_s: Any) -> None:
        """h_s must be an n-th residue (else encryptions would shift the plaintext) of
        non-trivial order mod p**2 and q**2."""
        for mod2, prime in ((self._p2, self._p), (self._q2, self._q)):
            x = h_s % mod2
            if gmpy2.powmod(x, prime - 1, mod2) != 1:
                raise ValueError("h_s is not an n-th residue modulo n**2")
            if x * x % mod2 == 1:
                raise ValueError("h_s has trivial order")

    def precompute(self) -> None:
        """Build the fixed-base tables mod ``p**2`` and ``q**2`` now."""
        self._get_tables()

    def _get_tables(self) -> tuple[_FixedBaseTable, _FixedBaseTable]:
        if self._tables is None:
            with self._lock:
                if self._tables is None:
                    h_s = self.public_key._h_s
                    k = self.public_key.exponent_bits // _WINDOW_BITS
                    self._tables = (
                        _FixedBaseTable.of_base(h_s % self._p2, self._p2, k),
                        _FixedBaseTable.of_base(h_s % self._q2, self._q2, k),
                    )
        return self._tables

    # -- encryption (key owner) ----------------------------------------------------------------

    def encrypt(self, m: int, *, rng: RandomSource = None) -> int:
        """Encrypt ``m`` (``-max_int <= m < n``) with CRT + short-exponent randomness."""
        return self.encrypt_many([m], rng=rng)[0]

    def encrypt_many(self, ms: Iterable[int], *, rng: RandomSource = None) -> list[int]:
        pk = self.public_key
        residues = [pk.encode(m) for m in ms]
        tp, tq = self._get_tables()
        k = pk.exponent_bits // _WINDOW_BITS
        buf = memoryview(_as_rng(rng).bytes(k * len(residues)))
        n, p2, q2 = self._n, self._p2, self._q2
        out: list[int] = []
        for i, m in enumerate(residues):
            digits = buf[i * k : (i + 1) * k]
            gm = 1 + m * n  # (1 + n)**m mod n**2
            cp = gm % p2 * tp.pow(digits) % p2
            cq = gm % q2 * tq.pow(digits) % q2
            out.append(int(self._crt_n2(cp, cq)))
        return out

    def rerandomize(self, c: int, *, rng: RandomSource = None) -> int:
        """Multiply by a fresh short-exponent ``h_s**a`` (CRT). Hides the input from anyone
        who does not know the factorization, which is everyone but this key's owner."""
        return self.rerandomize_many([c], rng=rng)[0]

    def rerandomize_many(self, cs: Iterable[int], *, rng: RandomSource = None) -> list[int]:
        checked = _check_ciphertexts(cs, self._n, self._nsquare)
        tp, tq = self._get_tables()
        k = self.public_key.exponent_bits // _WINDOW_BITS
        buf = memoryview(_as_rng(rng).bytes(k * len(checked)))
        p2, q2 = self._p2, self._q2
        out: list[int] = []
        for i, c in enumerate(checked):
            digits = buf[i * k : (i + 1) * k]
            cp = c % p2 * tp.pow(digits) % p2
            cq = c % q2 * tq.pow(digits) % q2
            out.append(int(self._crt_n2(cp, cq)))
        return out

    # -- decryption ----------------------------------------------------------------------------

    def _raw_decrypt(self, c: Any) -> Any:
        p, q = self._p, self._q
        mp = (gmpy2.powmod(c, p - 1, self._p2) - 1) // p * self._hp % p
        mq = (gmpy2.powmod(c, q - 1, self._q2) - 1) // q * self._hq % q
        return mp + p * ((mq - mp) * self._p_inv_q % q)

    def decrypt_raw(self, c: int) -> int:
        """Plaintext residue in ``[0, n)``."""
        return int(self._raw_decrypt(_check_ciphertext(c, self._n, self._nsquare)))

    def decrypt(self, c: int) -> int:
        """Signed plaintext (phe's decoding; :class:`PlaintextOverflowError` in the band
        between ``max_int`` and ``n - max_int``)."""
        return self.public_key.decode(self.decrypt_raw(c))

    def decrypt_many(self, cs: Iterable[int]) -> list[int]:
        checked = _check_ciphertexts(cs, self._n, self._nsquare)
        decode = self.public_key.decode
        return [decode(int(self._raw_decrypt(c))) for c in checked]

    # -- phe interop -------------------------------------------------------------------------

    def to_phe_private_key(self) -> Any:
        """The equivalent ``phe.PaillierPrivateKey``."""
        if self._phe is None:
            from phe import paillier as phe_paillier

            self._phe = phe_paillier.PaillierPrivateKey(
                self.public_key.to_phe_public_key(), int(self._p), int(self._q)
            )
        return self._phe

    @classmethod
    def from_phe(
        cls, private_key: Any, *, rng: RandomSource = None, min_bits: int = MIN_KEY_BITS
    ) -> PaillierPrivateKey:
        """From a ``phe.PaillierPrivateKey``; a fresh ``h_s`` is drawn from ``rng``."""
        from phe import paillier as phe_paillier

        if not isinstance(private_key, phe_paillier.PaillierPrivateKey):
            raise TypeError(f"expected phe.PaillierPrivateKey, got {type(private_key).__name__}")
        pub = PaillierPublicKey(private_key.public_key.n, min_bits=min_bits)
        return cls(pub, private_key.p, private_key.q, rng=rng)


# --------------------------------------------------------------------------------------------
# Key generation
# --------------------------------------------------------------------------------------------


def _random_prime(bits: int, rng: _Rng) -> Any:
    """``next_prime`` of a random odd ``bits``-bit number with the top two bits set."""
    top = mpz(3) << (bits - 2)
    while True:
        start = rng.bits(bits) | top | 1
        p = gmpy2.next_prime(start)
        if p.bit_length() == bits and gmpy2.is_prime(p, _PRIME_CHECK_REPS):
            return p


def _generate(
    bits: int, rng: RandomSource, floor: int
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits < floor:
        raise ValueError(f"Paillier keys must have at least {floor} bits, got {bits}")
    if bits > MAX_KEY_BITS:
        raise ValueError(f"Paillier keys may have at most {MAX_KEY_BITS} bits, got {bits}")
    r = _as_rng(rng)
    p_bits, q_bits = (bits + 1) // 2, bits // 2
    while True:
        p = _random_prime(p_bits, r)
        q = _random_prime(q_bits, r)
        if p == q:
            continue
        n = p * q
        if n.bit_length() != bits:
            continue
        if gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:
            continue
        if abs(p - q).bit_length() < q_bits - 100:  # Fermat factoring
            continue
        break
    public = PaillierPublicKey(int(n), min_bits=floor)
    private = PaillierPrivateKey(public, int(p), int(q), rng=r, check_primes=False)
    return private.public_key, private


def generate_keypair(
    bits: int = 2048, *, rng: RandomSource = None
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """New ``(public_key, private_key)``; ``bits >= 2048``. The public key carries ``h_s``."""
    return _generate(bits, rng, MIN_KEY_BITS)


def generate_keypair_on(
    executor: Executor | None, bits: int = 2048
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """``generate_keypair`` in a worker of ``executor`` (here without one): the prime search
    is a second or so of big-integer work that holds the GIL, which a server's event loop
    must not wait behind. Blocks until the keys are there."""
    if executor is None:
        return generate_keypair(bits)
    # A cluster's results are Dask data, which may spill to disk: a key is made beside it.
    executor = getattr(executor, "private_executor", executor)
    private = private_key_from_json(executor.submit(_keypair_json, bits).result())
    return private.public_key, private


def _keypair_json(bits: int) -> str:
    """SECRET. The worker's side of ``generate_keypair_on``: keys refuse pickling, so the
    new private key crosses the process boundary as its JSON."""
    return json.dumps(private_key_to_json(generate_keypair(bits)[1]))


def _unsafe_generate_keypair_for_tests(
    bits: int = 1024, *, rng: RandomSource = None
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """UNSAFE: allows keys down to 512 bits, for fast tests only. Never use for data."""
    return _generate(bits, rng, _UNSAFE_FLOOR_BITS)


# --------------------------------------------------------------------------------------------
# Validation (module-level)
# --------------------------------------------------------------------------------------------


def validate_ciphertext(c: object, public_key: PaillierPublicKey) -> int:
    """Return ``c`` if ``0 < c < n**2`` and ``gcd(c, n) = 1``; else raise
    :class:`InvalidCiphertextError` (:class:`InvalidCiphertextTypeError` for non-ints)."""
    _expect_public_key(public_key)
    return public_key.validate(c)


def validate_ciphertexts(cs: Iterable[object], public_key: PaillierPublicKey) -> list[int]:
    """Batch :func:`validate_ciphertext` (one gcd per batch); the error names the index."""
    _expect_public_key(public_key)
    return public_key.validate_many(cs)


def _expect_public_key(public_key: object) -> None:
    if not isinstance(public_key, PaillierPublicKey):
        raise TypeError(f"expected PaillierPublicKey, got {type(public_key).__name__}")


# --------------------------------------------------------------------------------------------
# phe EncryptedNumber interop
# --------------------------------------------------------------------------------------------


def to_phe_encrypted_number(c: int, public_key: PaillierPublicKey) -> Any:
    """Wrap a ciphertext as ``phe.EncryptedNumber`` (exponent 0)."""
    from phe import paillier as phe_paillier

    c = validate_ciphertext(c, public_key)
    return phe_paillier.EncryptedNumber(public_key.to_phe_public_key(), c, 0)


def from_phe_encrypted_number(
    encrypted: Any, public_key: PaillierPublicKey, *, be_secure: bool = True
) -> int:
    """Integer ciphertext of a ``phe.EncryptedNumber`` holding an integer.

    ``be_secure`` is passed to phe's ``ciphertext()`` (obfuscates a not-yet-obfuscated
    value). A positive exponent is folded in (``mul_plain`` by ``16**exponent``); a negative
    one (a non-integer encoding) is a ValueError."""
    from phe import paillier as phe_paillier

    _expect_public_key(public_key)
    if not isinstance(encrypted, phe_paillier.EncryptedNumber):
        raise TypeError(f"expected phe.EncryptedNumber, got {type(encrypted).__name__}")
    if encrypted.public_key.n != public_key.n:
        raise ValueError("EncryptedNumber was encrypted under a different key")
    exponent = encrypted.exponent
    if isinstance(exponent, bool) or not isinstance(exponent, int):
        raise TypeError("EncryptedNumber.exponent must be an int")
    if exponent < 0:
        raise ValueError(f"EncryptedNumber has exponent {exponent}: not an integer encoding")
    c = public_key.validate(encrypted.ciphertext(be_secure=be_secure))
    if exponent > 0:
        c = public_key.mul_plain(c, phe_paillier.EncodedNumber.BASE**exponent)
    return c


# --------------------------------------------------------------------------------------------
# Serialization (JSON and fixed-width bytes; never pickle)
# --------------------------------------------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _int_to_b64(x: Any) -> str:
    x = int(x)
    raw = x.to_bytes(max(1, (x.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64_to_int(s: object, field: str) -> int:
    if not isinstance(s, str):
        raise TypeError(f"field {field!r} must be a base64url string, got {type(s).__name__}")
    if not _B64URL.fullmatch(s) or len(s) % 4 == 1 or len(s) > 4 * MAX_KEY_BITS // 3 + 8:
        raise ValueError(f"field {field!r} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"field {field!r} is not unpadded base64url") from None
    value = int.from_bytes(raw, "big")
    if _int_to_b64(value) != s:
        raise ValueError(f"field {field!r} is not the canonical encoding of an integer")
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _load_object(
    data: Mapping[str, Any] | str | bytes,
    expected_type: str,
    required: set[str],
    optional: set[str],
) -> Mapping[str, Any]:
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data, object_pairs_hook=_reject_duplicates)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid JSON: {e.msg}") from None
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    keys = set(data)
    if data.get("type") != expected_type:
        raise ValueError(f"expected type {expected_type!r}, got {data.get('type')!r}")
    version = data.get("version")
    if isinstance(version, bool) or version != _FORMAT_VERSION:
        raise ValueError(f"unsupported version {version!r}; expected {_FORMAT_VERSION}")
    missing = required - keys
    if missing:
        raise ValueError(f"missing fields: {sorted(missing)}")
    unknown = keys - required - optional
    if unknown:
        raise ValueError(f"unknown fields: {sorted(map(str, unknown))}")
    return data


def public_key_to_json(public_key: PaillierPublicKey) -> dict[str, Any]:
    """JSON-able dict: ``{"type", "version", "n"[, "h_s"]}``; integers as unpadded
    base64url big-endian."""
    _expect_public_key(public_key)
    out: dict[str, Any] = {
        "type": _PUBLIC_TYPE,
        "version": _FORMAT_VERSION,
        "n": _int_to_b64(public_key.n),
    }
    if public_key.h_s is not None:
        out["h_s"] = _int_to_b64(public_key.h_s)
    return out


def public_key_from_json(
    data: Mapping[str, Any] | str | bytes, *, min_bits: int = MIN_KEY_BITS
) -> PaillierPublicKey:
    """Parse and validate a public key (dict or JSON text). ``min_bits`` below 2048 is for
    tests only."""
    obj = _load_object(data, _PUBLIC_TYPE, {"type", "version", "n"}, {"h_s"})
    n = _b64_to_int(obj["n"], "n")
    h_s = _b64_to_int(obj["h_s"], "h_s") if "h_s" in obj else None
    return PaillierPublicKey(n, h_s=h_s, min_bits=min_bits)


def private_key_to_json(private_key: PaillierPrivateKey) -> dict[str, Any]:
    """SECRET. JSON-able dict with ``p``, ``q``, ``n``, ``h_s``; ``"secret": true``."""
    if not isinstance(private_key, PaillierPrivateKey):
        raise TypeError(f"expected PaillierPrivateKey, got {type(private_key).__name__}")
    pub = private_key.public_key
    assert pub.h_s is not None
    return {
        "type": _PRIVATE_TYPE,
        "version": _FORMAT_VERSION,
        "secret": True,
        "n": _int_to_b64(pub.n),
        "h_s": _int_to_b64(pub.h_s),
        "p": _int_to_b64(private_key.p),
        "q": _int_to_b64(private_key.q),
    }


def private_key_from_json(
    data: Mapping[str, Any] | str | bytes, *, min_bits: int = MIN_KEY_BITS
) -> PaillierPrivateKey:
    """Parse and fully check a private key (primality, ``p*q = n``, ``h_s`` an ``n``-th
    residue)."""
    fields = {"type", "version", "secret", "n", "h_s", "p", "q"}
    obj = _load_object(data, _PRIVATE_TYPE, fields, set())
    if obj["secret"] is not True:
        raise ValueError('private key object must have "secret": true')
    pub = PaillierPublicKey(
        _b64_to_int(obj["n"], "n"), h_s=_b64_to_int(obj["h_s"], "h_s"), min_bits=min_bits
    )
    return PaillierPrivateKey(pub, _b64_to_int(obj["p"], "p"), _b64_to_int(obj["q"], "q"))


def ciphertexts_to_bytes(cs: Iterable[int], public_key: PaillierPublicKey) -> bytes:
    """Concatenated fixed-width big-endian ciphertexts (``public_key.ciphertext_bytes`` each,
    the byte length of ``n**2``). Validates every element first."""
    _expect_public_key(public_key)
    width = public_key.ciphertext_bytes
    return b"".join(int(c).to_bytes(width, "big") for c in public_key.validate_many(cs))


def ciphertexts_from_bytes(
    data: bytes | bytearray | memoryview, public_key: PaillierPublicKey
) -> list[int]:
    """Inverse of :func:`ciphertexts_to_bytes`; validates each ciphertext (the error names the
    index) and the total length."""
    return public_key.validate_many(raw_ciphertexts_from_bytes(data, public_key))


def raw_ciphertexts_from_bytes(
    data: bytes | bytearray | memoryview, public_key: PaillierPublicKey
) -> list[int]:
    """:func:`ciphertexts_from_bytes` WITHOUT validating the values (the total length is
    still checked): only for callers that validate them next, as
    :func:`ciphertexts_from_bytes` does."""
    _expect_public_key(public_key)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    width = public_key.ciphertext_bytes
    if len(view) % width:
        raise InvalidCiphertextError(
            f"ciphertext bytes have length {len(view)}, not a multiple of {width} "
            "(the byte length of n**2)"
        )
    count = len(view) // width
    return [int.from_bytes(view[i * width : (i + 1) * width], "big") for i in range(count)]
