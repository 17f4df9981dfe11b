"""Day-bound tokens T(id, day) and the bulk operations on them.

Each side hashes and blinds each distinct (identifier type, digest, day) once,
however many cells, events or lags it serves; comparisons are vectorized
joins on truncated double-blinded values.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.audiences.upload import DIGEST_LEN
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import MEMORY_BYTES, Buckets, bucket_bits, spill_directory
from cleanroom.matching.workers import dst_for

TOKEN_MSG_LEN = DIGEST_LEN + 4  # digest || day (uint32, big-endian)
DAY_DST_SUFFIX = "-day"
POINT_CHUNK = 8192  # token points per worker job


# ------------------------------------------------------------------ shared helpers


def day_dst(id_type: str) -> bytes:
    return dst_for(id_type + DAY_DST_SUFFIX)


def token_messages(digests: np.ndarray, days: np.ndarray) -> bytes:
    """Pack ``digest || day`` messages (digests: uint8 (n, 32); days: int)."""
    out = np.empty((len(digests), TOKEN_MSG_LEN), dtype=np.uint8)
    out[:, :DIGEST_LEN] = digests
    out[:, DIGEST_LEN:] = days.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out.tobytes()


def distinct_keys(
    type_codes: np.ndarray, digests: np.ndarray, days: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Number each distinct (type, digest, day) in order of first appearance.

    Returns the key of every element and, per key, the index of its first element.

    Both parties hash and blind every distinct token message once, however many
    cells, events or lags it serves: blinding is deterministic, so the values on
    the wire are the same, only the work is not repeated. Keys are grouped by a
    64-bit mix of their fields (one hash pass over millions of rows), then
    checked field by field; a collision falls back to grouping by the fields.
    """
    types = np.asarray(type_codes, dtype=np.int64)
    day = np.asarray(days, dtype=np.int64)
    digest = np.ascontiguousarray(digests, dtype=np.uint8)
    keys = pd.factorize(key_mix(types, digest, day))[0].astype(np.int64)
    first = first_of_each(keys)
    rep = first[keys]
    if (
        np.array_equal(digest, digest[rep])
        and np.array_equal(day, day[rep])
        and np.array_equal(types, types[rep])
    ):
        return keys, first
    keys = exact_distinct_keys(types, digest, day)
    return keys, first_of_each(keys)


_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


def key_mix(types: np.ndarray, digests: np.ndarray, days: np.ndarray) -> np.ndarray:
    """A 64-bit mix of (type, digest, day); digests are SHA-256 outputs, so already uniform."""
    words = digests.view("<u8")
    mixed = words[:, 0] ^ (words[:, 1] * _MIX[0]) ^ (words[:, 2] * _MIX[1])
    tag = (days.astype(np.uint64) << np.uint64(8)) | types.astype(np.uint64)
    return mixed ^ (words[:, 3] * _MIX[2]) ^ (tag * _MIX[3])  # products wrap mod 2^64


def exact_distinct_keys(types: np.ndarray, digests: np.ndarray, days: np.ndarray) -> np.ndarray:
    """``distinct_keys`` by grouping on every field (the collision fallback)."""
    words = digests.view("<u8")
    frame = pd.DataFrame({"type": types, "day": days})
    for i in range(words.shape[1]):
        frame[f"w{i}"] = words[:, i]
    return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy(dtype=np.int64)


def first_of_each(keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each key (keys numbered 0..k-1)."""
    return np.unique(keys, return_index=True)[1]


PRECOMPUTED_LAGS = 8  # points stored at upload: lags 0..7 cover the default windows


@dataclass(frozen=True)
class LaggedPoints:
    """The distinct messages T(id, day - lag) of identifiers over lags ``0..lags-1``.

    ``keys[i, lag]`` numbers the distinct (type, digest, day) of identifier
    ``i`` at ``lag``; ``first_item`` gives, per key, the flat (i * lags + lag)
    position where it first appears.
    """

    keys: np.ndarray  # int64 (m, lags)
    first_item: np.ndarray  # int64 per key
    type_codes: np.ndarray  # uint8 per key
    messages: np.ndarray  # uint8 (k, TOKEN_MSG_LEN) per key
    dsts: tuple[bytes, ...]

    @classmethod
    def of(
        cls, id_types: np.ndarray, digests: np.ndarray, days: np.ndarray, lags: int
    ) -> LaggedPoints:
        """``id_types`` (str), ``digests`` and ``days`` are per identifier."""
        n = len(digests)
        item_id = np.repeat(np.arange(n), lags)
        item_days = days[item_id] - np.tile(np.arange(lags), n)
        names, codes = np.unique(np.asarray(id_types).astype(str), return_inverse=True)
        keys, first = distinct_keys(codes[item_id], digests[item_id], item_days)
        return cls(
            keys=keys.reshape(n, lags),
            first_item=first,
            type_codes=codes[item_id[first]].astype(np.uint8),
            messages=np.frombuffer(
                token_messages(digests[item_id[first]], item_days[first]), dtype=np.uint8
            ).reshape(-1, TOKEN_MSG_LEN),
            dsts=tuple(day_dst(str(t)) for t in names),
        )

    def per_identifier(self, hashed: bytes) -> np.ndarray:
        """uint8 (m, lags, 32): every key's point (``hashed``, in key order) per identifier."""
        return np.frombuffer(hashed, dtype=np.uint8).reshape(-1, POINT_LEN)[self.keys]

    def hash_jobs(
        self, select: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, tuple[Any, ...]]]:
        """Per ``POINT_CHUNK`` of the selected keys (default all): the keys, ``hash_mixed`` args."""
        keys = np.arange(len(self.first_item)) if select is None else select
        out: list[tuple[np.ndarray, tuple[Any, ...]]] = []
        for start in range(0, len(keys), POINT_CHUNK):
            part = keys[start : start + POINT_CHUNK]
            job = (
                self.messages[part].tobytes(),
                self.type_codes[part].tobytes(),
                self.dsts,
                TOKEN_MSG_LEN,
            )
            out.append((part, job))
        return out


RunMany = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def map_jobs(
    run: Callable[..., object],
    run_many: RunMany | None,
    fn: Callable[..., Any],
    jobs: list[tuple[Any, ...]],
) -> list[Any]:
    """Run ``fn`` over ``jobs`` through the worker pool (all at once when it can)."""
    if run_many is not None:
        return run_many(fn, jobs)
    return [run(fn, *args) for args in jobs]


def types_kept(
    id_type: np.ndarray, wanted: tuple[str, ...]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per identifier: its type's code into the sorted type names, and whether
    the type is one of ``wanted``. One factorize: comparing millions of strings
    costs more."""
    codes, uniques = pd.factorize(np.asarray(id_type, dtype=object), sort=True)
    names = [str(t) for t in uniques]
    keep = np.isin(codes, [i for i, t in enumerate(names) if t in wanted])
    return codes, names, keep


def equal_pairs(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``left[i] == right[j]``: equal-width byte strings, 8+ bytes.

    Sorts ``left`` by its first 8 bytes as an integer, looks every ``right``
    value up by binary search, then checks the remaining bytes of each
    candidate pair. Vectorized throughout: a pandas merge of millions of
    values takes seconds, this a fraction of one. Both sides may repeat values.
    """
    width = left.dtype.itemsize
    if right.dtype.itemsize != width or width < 8:
        raise ValueError("equal_pairs needs byte strings of one width, at least 8 bytes")
    lbytes = np.ascontiguousarray(left).view(np.uint8).reshape(-1, width)
    rbytes = np.ascontiguousarray(right).view(np.uint8).reshape(-1, width)
    lkey = np.ascontiguousarray(lbytes[:, :8]).view("<u8").ravel()
    rkey = np.ascontiguousarray(rbytes[:, :8]).view("<u8").ravel()
    order = np.argsort(lkey, kind="stable")
    sorted_keys = lkey[order]
    lo = np.searchsorted(sorted_keys, rkey, side="left")
    counts = np.searchsorted(sorted_keys, rkey, side="right") - lo
    j = np.repeat(np.arange(len(rkey), dtype=np.int64), counts)
    # Position k of right value r's run of equal keys is lo[r] + k.
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    i = order[np.repeat(lo, counts) + np.arange(len(j), dtype=np.int64) - run_start]
    same = np.all(lbytes[i, 8:] == rbytes[j, 8:], axis=1)
    return i[same].astype(np.int64), j[same]


class TokenJoin:
    """The partner's side of the intersection: its cells' values (re-blinded by the brand)
    and the brand's tokens (re-blinded here), each row kept with its labels, in buckets of
    the value's leading bits, in memory for a small run and in files past
    ``memory_bytes`` (default ``semijoin.MEMORY_BYTES``) a side.

    ``matches`` then joins one bucket pair at a time: equal values always share a bucket,
    so no process holds either side whole. Bucketing by a prefix of a value the partner
    holds tells it nothing new."""

    def __init__(
        self,
        value_len: int,
        cell_tokens: int,
        brand_tokens: int,
        *,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
        bits: int | None = None,
    ) -> None:
        """``bits``: 2^bits buckets, instead of buckets sized by the token counts."""
        self.value_len = value_len
        self.cell_row = value_len + 4  # value | cell (uint32 LE)
        self.brand_row = value_len + 5  # value | anonymous event (uint32 LE) | lag
        biggest = max(cell_tokens * self.cell_row, brand_tokens * self.brand_row)
        if bits is None:
            bits = bucket_bits(max(cell_tokens, brand_tokens), self.brand_row)
        limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._dir: Path | None = None
        if biggest < limit:
            self.cells = Buckets.in_memory(self.cell_row, positioned=False, bits=bits)
            self.brand = Buckets.in_memory(self.brand_row, positioned=False, bits=bits)
        else:
            self._dir = spill_directory(spill_dir, "attribution-")
            self.cells = Buckets(self.cell_row, bits, self._dir, positioned=False, name="cells")
            self.brand = Buckets(self.brand_row, bits, self._dir, positioned=False, name="brand")

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    def add_cell(self, cell: int, values: bytes) -> None:
        rows = np.empty((len(values) // self.value_len, self.cell_row), dtype=np.uint8)
        rows[:, : self.value_len] = np.frombuffer(values, dtype=np.uint8).reshape(len(rows), -1)
        rows[:, self.value_len :] = np.array([cell], dtype="<u4").view(np.uint8)
        self.cells.add(rows.tobytes())

    def add_brand(self, values: bytes, events: bytes, lags: bytes) -> None:
        """Re-blinded brand tokens with their anonymous events (uint32 LE) and lags."""
        rows = np.empty((len(values) // self.value_len, self.brand_row), dtype=np.uint8)
        rows[:, : self.value_len] = np.frombuffer(values, dtype=np.uint8).reshape(len(rows), -1)
        rows[:, self.value_len : -1] = np.frombuffer(events, dtype=np.uint8).reshape(-1, 4)
        rows[:, -1] = np.frombuffer(lags, dtype=np.uint8)
        self.brand.add(rows.tobytes())

    def matches(self, cell_window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(event, cell, lag) of every brand token found in a cell with its lag within
        ``cell_window[cell]`` days, bucket by bucket (int64 arrays, in no set order)."""
        self.cells.close()
        self.brand.close()
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        width = self.value_len
        for b in range(self.cells.buckets):
            ours = np.frombuffer(self.cells.bucket(b)[0], dtype=np.uint8).reshape(-1, self.cell_row)
            theirs = self.brand.bucket(b)[0]
            if not len(ours) or not theirs:
                continue
            brand = np.frombuffer(theirs, dtype=np.uint8).reshape(-1, self.brand_row)
            i, j = equal_pairs(
                np.ascontiguousarray(ours[:, :width]).view(f"S{width}").ravel(),
                np.ascontiguousarray(brand[:, :width]).view(f"S{width}").ravel(),
            )
            cell = np.ascontiguousarray(ours[i, width:]).view("<u4").ravel().astype(np.int64)
            event = np.ascontiguousarray(brand[j, width:-1]).view("<u4").ravel().astype(np.int64)
            lag = brand[j, -1].astype(np.int64)
            ok = lag <= cell_window[cell]
            found.append((event[ok], cell[ok], lag[ok]))
        if not found:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        event, cell, lag = (np.concatenate(column) for column in zip(*found, strict=True))
        return event, cell, lag

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
