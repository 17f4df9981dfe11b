"""Homomorphic sums over the brand's encrypted labels, computed by the partner.

``Enc(T_j) = Π_i Enc(y_i)^{x_ij}`` over the training rows (DESIGN.md §7),
computed without one exponentiation per entry: ``label_sums`` buckets the
rows of a slice (in a worker process) so that each row costs about one
modular multiplication per numeric feature and one per block of eight
two-valued features; ``multiply`` joins the slices.

The holdout's quality metrics are sums too, so the brand decrypts a handful of
numbers instead of a label per row (``holdout_sums``): with the holdout sorted
by score, the suffix sums ``S_k = Σ_{i ≥ k} y_i`` give the seeds in every top
tier directly, and the Mann-Whitney rank sum of the seeds (hence the AUC) is
``Σ_h Δ_h S_{start(h)}`` over the groups of equal scores, ``Δ_h`` the rise of
twice the mid-rank from one group to the next. Two multiplications per
holdout row in all.

Every function takes and returns ciphertexts as plain ``int``; ``n2`` is the
square of the brand's modulus. Nothing here re-randomizes: results leave the
partner only masked and re-randomized by its state machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
from gmpy2 import mpz


def _mpz_list(packed: bytes, width: int) -> list[mpz]:
    return [mpz(int.from_bytes(packed[i : i + width], "big")) for i in range(0, len(packed), width)]


BINARY_BLOCK = 8  # 0/1 features bucketed together: one multiplication per row per block


@dataclass
class _Mults:
    """Modular multiplications of ciphertexts done (an exponentiation counts its
    square-and-multiply steps): what ``he_multiplications`` reports."""

    count: int = 0

    def powmod(self, base: mpz, exponent: int, modulus: mpz) -> mpz:
        self.count += max(0, exponent.bit_length() - 1) + max(0, exponent.bit_count() - 1)
        return gmpy2.powmod(base, exponent, modulus)


def _product(cts: list[mpz], rows: np.ndarray, modulus: mpz, mults: _Mults) -> mpz | None:
    acc = None
    for i in rows.tolist():
        acc = cts[i] if acc is None else acc * cts[i] % modulus
    mults.count += max(0, len(rows) - 1)
    return acc


def _buckets(cts: list[mpz], codes: np.ndarray, modulus: mpz, mults: _Mults) -> dict[int, mpz]:
    """``{code: Π Enc(y_i) over the rows with that code}`` for every code > 0."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.concatenate([starts[1:], [len(codes)]])
    out: dict[int, mpz] = {}
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        code = int(ordered[start])
        if code > 0:
            product = _product(cts, order[start:end], modulus, mults)
            assert product is not None
            out[code] = product
    return out


@dataclass(frozen=True)
class SliceSums:
    """``Enc(T_j)`` per feature then ``Enc(Σy)`` over a slice, and the multiplications spent."""

    ciphertexts: list[int]
    multiplications: int


def label_sums(n2: int, packed_ciphertexts: bytes, width: int, values: np.ndarray) -> SliceSums:
    """``Enc(T_j)`` for every feature ``j``, then ``Enc(Σy)``, over one slice of rows.

    ``packed_ciphertexts``: one fixed-width big-endian ``Enc(y_i)`` per row of
    ``values`` (non-negative ints, rows x features). A feature constant in the
    slice is ``Enc(Σy)^lo``. Features with two values in the slice, ``lo`` and
    ``hi`` (0/1 flags, one-hot columns, and a standardized flag, whose two
    values are far from 0 and 1), go in blocks of
    ``BINARY_BLOCK``: rows are bucketed by their block's pattern of ``x = hi``
    (one multiplication per row and block), each feature multiplies the
    buckets with its bit set into ``B_j``, and ``Enc(T_j) = Enc(Σy)^lo ·
    B_j^(hi - lo)``. Any other feature buckets rows by value and sums by parts,
    ``Π_v G_v^v = Π_k Π_{v ≥ k} G_v``: two multiplications per possible value
    instead of an exponentiation each. An empty product is 1, a valid
    encryption of 0 without randomness, which the caller masks.
    """
    modulus = mpz(n2)
    mults = _Mults()
    cts = _mpz_list(packed_ciphertexts, width)
    values = np.asarray(values)
    if values.ndim != 2 or len(cts) != len(values):
        raise ValueError(f"{len(cts)} ciphertexts for {len(values)} rows")
    if len(values) and int(values.min()) < 0:
        raise ValueError("feature values must be non-negative integers")
    d = values.shape[1]
    maxima = values.max(axis=0).tolist() if len(values) else [0] * d
    minima = values.min(axis=0).tolist() if len(values) else [0] * d
    everything = _product(cts, np.arange(len(cts)), modulus, mults)
    total_y = everything if everything is not None else mpz(1)
    sums: list[mpz] = [mpz(1)] * d
    constant = [j for j in range(d) if minima[j] == maxima[j]]
    for j in constant:  # T_j = lo · Σy (an all-zero column: 1, the empty product)
        sums[j] = mults.powmod(total_y, minima[j], modulus)
    two_valued = [
        j
        for j in range(d)
        if minima[j] < maxima[j]
        and not ((values[:, j] != minima[j]) & (values[:, j] != maxima[j])).any()
    ]
    for first in range(0, len(two_valued), BINARY_BLOCK):
        block = two_valued[first : first + BINARY_BLOCK]
        codes = np.zeros(len(values), dtype=np.int64)
        for bit, j in enumerate(block):
            codes |= (values[:, j] == maxima[j]).astype(np.int64) << bit
        buckets = _buckets(cts, codes, modulus, mults)
        for bit, j in enumerate(block):
            acc = mpz(1)
            for code, c in buckets.items():
                if code >> bit & 1:
                    acc = acc * c % modulus
                    mults.count += 1
            lo, hi = minima[j], maxima[j]
            acc = mults.powmod(acc, hi - lo, modulus)  # B_j^(hi - lo) ...
            if lo:  # ... · Enc(Σy)^lo
                acc = acc * mults.powmod(total_y, lo, modulus) % modulus
                mults.count += 1
            sums[j] = acc
    chosen = {*constant, *two_valued}
    for j in range(d):
        if j in chosen:
            continue
        buckets = _buckets(cts, values[:, j].astype(np.int64), modulus, mults)
        at_least = mpz(1)  # Π_{v >= k} G_v
        total = mpz(1)
        for v in range(maxima[j], 0, -1):
            bucket = buckets.get(v)
            if bucket is not None:
                at_least = at_least * bucket % modulus
                mults.count += 1
            if at_least != 1:
                total = total * at_least % modulus
                mults.count += 1
        sums[j] = total
    out = [int(c) for c in sums] + [int(total_y)]
    return SliceSums(out, mults.count)


def multiply(n2: int, parts: Sequence[SliceSums]) -> SliceSums:
    """Element-wise products of the slices' sums: the sums over all their rows."""
    modulus = mpz(n2)
    out = [mpz(1)] * len(parts[0].ciphertexts) if parts else []
    for part in parts:
        out = [a * b % modulus for a, b in zip(out, part.ciphertexts, strict=True)]
    spent = sum(p.multiplications for p in parts) + max(0, len(parts) - 1) * len(out)
    return SliceSums([int(c) for c in out], spent)


@dataclass(frozen=True)
class HoldoutSums:
    """Encrypted sums over the holdout: seeds, twice their rank sum, seeds per top tier."""

    seeds: int
    rank_sum2: int
    top: tuple[int, ...]  # one per tier, in the tiers' order
    multiplications: int = 0


def tier_sizes(rows: int, percents: Sequence[float]) -> list[int]:
    """How many of ``rows`` each top tier holds (at least one row each)."""
    return [min(rows, max(1, math.ceil(rows * p / 100))) for p in percents]


def holdout_sums(
    n2: int, packed_ciphertexts: bytes, width: int, scores: np.ndarray, percents: Sequence[float]
) -> HoldoutSums:
    """See the module docstring; ties in ``scores`` get their mid-rank."""
    modulus = mpz(n2)
    mults = _Mults()
    cts = _mpz_list(packed_ciphertexts, width)
    if len(cts) != len(scores) or not cts:
        raise ValueError(f"{len(cts)} ciphertexts for {len(scores)} holdout scores")
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    n = len(cts)
    suffix: list[mpz] = [mpz(1)] * (n + 1)  # suffix[k] = Π_{i >= k} c_sorted[i]
    for k in range(n - 1, -1, -1):
        suffix[k] = suffix[k + 1] * cts[int(order[k])] % modulus
    mults.count += n
    starts = np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))
    sizes = np.diff(np.concatenate([starts, [n]]))
    rank_sum2 = mpz(1)
    previous = 0
    for start, size in zip(starts.tolist(), sizes.tolist(), strict=True):
        # 2 * mid-rank of the group: 2 * start + size + 1 (ranks from 1).
        rise = 2 * start + size + 1 - previous
        previous = 2 * start + size + 1
        rank_sum2 = rank_sum2 * mults.powmod(suffix[start], rise, modulus) % modulus
        mults.count += 1
    top = tuple(int(suffix[n - k]) for k in tier_sizes(n, percents))
    return HoldoutSums(int(suffix[0]), int(rank_sum2), top, mults.count)


def auc_from_sums(seeds: int, rank_sum2: int, rows: int) -> float | None:
    """The Mann-Whitney AUC from the decrypted sums (None without seeds or non-seeds)."""
    negatives = rows - seeds
    if seeds <= 0 or negatives <= 0:
        return None
    return (rank_sum2 / 2 - seeds * (seeds + 1) / 2) / (seeds * negatives)
