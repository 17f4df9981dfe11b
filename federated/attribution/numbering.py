"""Anonymous numbers for a run's events and customers, computed rather than stored.

The brand numbers its events (and customers) afresh per run, so that the partner
learns nothing from the order of the brand's files. A permutation array would cost 8
bytes an event for the whole run; a keyed pseudorandom permutation costs nothing per
event and numbers any part of the set on its own, in whatever order the set is read.

``KeyedPermutation`` is a balanced Feistel network over the smallest even number of
bits that holds the domain, with AES-128 as its round function, and cycle walking to
stay inside a domain that is not a power of two (Black and Rogaway, "Ciphers with
Arbitrary Finite Domains", CT-RSA 2002; the Feistel construction as in NIST SP
800-38G's FF1, with more rounds than the Luby-Rackoff bound needs). It is computed a
whole numpy array at a time: one AES-ECB call per round.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_LEN = 16
ROUNDS = 10
MAX_SIZE = 1 << 56  # the domain size is part of every round's input block
SLICE = 1 << 15  # values per pass through the network


class KeyedPermutation:
    """A pseudorandom permutation of ``0 .. size - 1``, fixed by ``key`` (16 bytes).

    ``perm(values)`` maps an integer array elementwise; equal keys and sizes give equal
    permutations, and without the key the mapping cannot be told from a uniformly
    random one. Secret for the run: it says which anonymous number is which event."""

    def __init__(self, key: bytes, size: int) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"a permutation key is {KEY_LEN} bytes, not {len(key)}")
        if not 0 <= size <= MAX_SIZE:
            raise ValueError(f"a permutation's domain is 0 .. 2^56 values, not {size}")
        self.size = size
        bits = max(2, (size - 1).bit_length())
        self._half = (bits + 1) // 2
        self._mask = np.uint64((1 << self._half) - 1)
        self._tweak = np.uint64(size << 8)
        self._cipher = Cipher(algorithms.AES(key), modes.ECB())

    @classmethod
    def random(cls, rng: np.random.Generator, size: int) -> KeyedPermutation:
        """A fresh permutation, its key drawn from ``rng``."""
        return cls(rng.bytes(KEY_LEN), size)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values)
        if x.size and (x.min() < 0 or x.max() >= self.size):
            raise ValueError(f"a value outside the permutation's domain 0 .. {self.size - 1}")
        out = self._network(x.astype(np.uint64).ravel())
        # Cycle walking: a value that left the domain goes round again until it is back
        # (it always comes back, as the network permutes the larger domain).
        outside = np.flatnonzero(out >= self.size)
        while len(outside):
            out[outside] = self._network(out[outside])
            outside = outside[out[outside] >= self.size]
        return out.astype(np.int64).reshape(x.shape)

    def _network(self, x: np.ndarray) -> np.ndarray:
        """One pass through the network, a slice at a time: the round buffers stay in
        the cache (several times faster than one pass over a large array)."""
        out = np.empty_like(x)
        for at in range(0, len(x), SLICE):
            out[at : at + SLICE] = self._feistel(x[at : at + SLICE])
        return out

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half)
        left, right = x >> half, x & self._mask
        encryptor = self._cipher.encryptor()
        blocks = np.empty((len(x), 2), dtype="<u8")
        for r in range(ROUNDS):
            blocks[:, 0] = self._tweak | np.uint64(r)
            blocks[:, 1] = right
            out = np.frombuffer(encryptor.update(blocks.tobytes()), dtype="<u8")
            left, right = right, left ^ (out[::2] & self._mask)
        return (left << half) | right
