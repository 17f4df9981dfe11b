"""Set membership and deduplication of fixed-length values, partitioned by their leading
bits so that no process holds a whole set.

The values compared in a PSI session (double-blinded points, truncated) are
pseudorandom, so their leading bits spread them evenly over ``2^k`` buckets; two equal
values always land in the same bucket. A ``Buckets`` store appends each incoming chunk's
values to per-bucket files as they arrive (with their positions, for the side whose
order matters); ``SemiJoin.mask`` then answers "which of the left values are in the
right set" one bucket pair at a time, and ``unique_values`` deduplicates one bucket at a
time.
The per-bucket jobs run on the party's executor (local processes or its Dask workers):
a bucket's bytes travel as the job's argument, so workers need no shared disk, and at
most ``window`` buckets are in flight.

Partitioning by a prefix of the double-blinded value leaks nothing new: the bucket of a
value is a function of the value, which the party holding it already has.

Buckets are sized for a worker's job (about ``BUCKET_BYTES`` a side) either way; a side
under ``MEMORY_BYTES`` keeps them in memory (``Buckets.in_memory``), a larger one in
files, with the same answers. ``Shuffle`` uses the same store with random buckets.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cleanroom.matching.bulk import ByteColumn, ColumnAppender, whole

# A bucket pair of about this many bytes per side is one job: small enough for a worker
# with a few hundred MiB (np.isin sorts both sides, about 4x their size), large enough
# that the per-job overhead is noise.
BUCKET_BYTES = 8 * 1024 * 1024
MAX_BUCKET_BITS = 12
FLUSH_BYTES = 1024 * 1024  # per bucket, before it is appended to its file
BUFFERED_BYTES = 64 * 1024 * 1024  # all buckets of a side: then every bucket is written

# Sets up to this size stay in memory (one bucket, no files).
MEMORY_BYTES = 256 * 1024 * 1024

POSITION = np.dtype("<i8")


def bucket_bits(expected_values: int, value_len: int) -> int:
    """Leading bits that cut ``expected_values`` into buckets of about BUCKET_BYTES."""
    total = max(1, expected_values) * value_len
    bits = 0
    while bits < MAX_BUCKET_BITS and (total >> bits) > BUCKET_BYTES:
        bits += 1
    return bits


def bucket_of(values: np.ndarray, bits: int) -> np.ndarray:
    """Each row's bucket: its first two bytes, big-endian, top ``bits`` bits."""
    if bits == 0:
        return np.zeros(len(values), dtype=np.intp)
    head = values[:, 0].astype(np.intp) << 8
    if values.shape[1] > 1:
        head |= values[:, 1]
    return head >> (16 - bits)


def bucket_groups(which: np.ndarray, buckets: int) -> Iterator[tuple[int, np.ndarray]]:
    """For each non-empty bucket ``b`` of ``which`` (each row's bucket), the rows in it, in
    their original order."""
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(buckets + 1))
    for b in np.flatnonzero(np.diff(bounds)):
        yield int(b), order[bounds[b] : bounds[b + 1]]


def spill_directory(spill_dir: Path | None, prefix: str) -> Path:
    """A new private temporary directory inside ``spill_dir`` (the system's default when
    None), for one session's files; the caller removes it."""
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=spill_dir))


class Buckets:
    """Values of one side, appended chunk by chunk, kept per bucket (on disk, or in
    memory for a small set). ``positioned`` sides also keep each value's position."""

    def __init__(
        self,
        value_len: int,
        bits: int,
        directory: Path | None,
        *,
        positioned: bool,
        name: str = "side",
    ) -> None:
        if value_len < 2:
            raise ValueError("values are at least 2 bytes")
        self.value_len = value_len
        self.bits = bits
        self.positioned = positioned
        self.count = 0
        self._dir = directory
        self._name = name
        self._values: list[list[bytes]] = [[] for _ in range(1 << bits)]
        self._positions: list[list[bytes]] = [[] for _ in range(1 << bits)]
        self._buffered = [0] * (1 << bits)
        self._buffered_total = 0
        self._removed = False

    @classmethod
    def in_memory(cls, value_len: int, *, positioned: bool, bits: int = 0) -> Buckets:
        return cls(value_len, bits, None, positioned=positioned)

    @property
    def buckets(self) -> int:
        return 1 << self.bits

    def add(self, packed: bytes, which: np.ndarray | None = None) -> None:
        """Append a chunk of values (their positions continue from the last chunk's), to
        the buckets of their leading bits or to the buckets ``which`` gives."""
        if len(packed) % self.value_len:
            raise ValueError(f"a chunk of {len(packed)} bytes is not {self.value_len}-byte values")
        rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, self.value_len)
        first = self.count
        self.count += len(rows)
        if self.bits == 0:
            self._values[0].append(bytes(packed))
            if self.positioned:
                self._positions[0].append(np.arange(first, self.count, dtype=POSITION).tobytes())
            self._buffer(0, len(packed))
            return
        if which is None:
            which = bucket_of(rows, self.bits)
        for b, idx in bucket_groups(which, self.buckets):
            self._values[b].append(rows[idx].tobytes())
            if self.positioned:
                self._positions[b].append((idx + first).astype(POSITION).tobytes())
            self._buffer(b, len(idx) * self.value_len)
        if self._buffered_total >= BUFFERED_BYTES:
            self.close()

    def _buffer(self, b: int, nbytes: int) -> None:
        """Count ``nbytes`` just added to bucket ``b``: on disk, a bucket past
        ``FLUSH_BYTES`` is appended to its file."""
        if self._dir is None:
            return
        self._buffered[b] += nbytes
        self._buffered_total += nbytes
        if self._buffered[b] >= FLUSH_BYTES:
            self._flush(b)

    def close(self) -> None:
        """Write what is buffered (before reading buckets back)."""
        if self._dir is not None:
            for b in range(self.buckets):
                self._flush(b)

    def removed(self) -> None:
        """The store's files went (its owner closed): reading it is now an error, never
        an empty bucket."""
        self._removed = True

    def bucket(self, b: int) -> tuple[bytes, bytes]:
        """Bucket ``b``'s values and (positioned sides) positions, packed."""
        if self._removed:
            raise RuntimeError(f"the {self._name} buckets were removed")
        if self._dir is None:
            return b"".join(self._values[b]), b"".join(self._positions[b])
        values = self._path(b, "v")
        positions = self._path(b, "p")
        return (
            values.read_bytes() if values.exists() else b"",
            positions.read_bytes() if positions.exists() else b"",
        )

    def bucket_slices(self, b: int, size: int) -> Iterator[bytes]:
        """Bucket ``b``'s values (not their positions), ``size`` values at a time at most:
        a bucket on disk is read from its file a slice at a time, never whole."""
        if self._removed:
            raise RuntimeError(f"the {self._name} buckets were removed")
        step = max(1, size) * self.value_len
        if self._dir is None:
            packed = b"".join(self._values[b])
            for at in range(0, len(packed), step):
                yield packed[at : at + step]
            return
        self._flush(b)
        path = self._path(b, "v")
        if not path.exists():
            return
        with path.open("rb") as fh:
            while chunk := fh.read(step):
                yield chunk

    def regrouped(self, bits: int) -> Iterator[tuple[int, np.ndarray]]:
        """Rows (``(k, value_len)`` uint8) bucket by bucket of ``bits`` leading bits, in
        bucket order, this side's own buckets joined or split to fit; one bucket of
        ``bits`` is in memory at a time. Values in their order of arrival within a bucket."""
        self.close()
        coarse = min(bits, self.bits)
        span = 1 << (self.bits - coarse)  # own buckets in one of ``coarse`` bits
        for group in range(1 << coarse):
            packed = b"".join(self.bucket(b)[0] for b in range(group * span, (group + 1) * span))
            rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, self.value_len)
            if bits <= self.bits:
                if len(rows):
                    yield group, rows
                continue
            for bucket, idx in bucket_groups(bucket_of(rows, bits), 1 << bits):
                yield bucket, rows[idx]

    def _flush(self, b: int) -> None:
        if not self._values[b]:
            return
        with self._path(b, "v").open("ab") as fh:
            fh.write(b"".join(self._values[b]))
        if self.positioned:
            with self._path(b, "p").open("ab") as fh:
                fh.write(b"".join(self._positions[b]))
        self._values[b].clear()
        self._positions[b].clear()
        self._buffered_total -= self._buffered[b]
        self._buffered[b] = 0

    def _path(self, b: int, kind: str) -> Path:
        assert self._dir is not None
        return self._dir / f"{self._name}-{b:04x}.{kind}"


def sized_buckets(
    value_len: int,
    expected: int,
    memory_bytes: int | None,
    spill_dir: Path | None,
    *,
    prefix: str,
    name: str,
) -> tuple[Buckets, Path | None]:
    """A store for ``expected`` values of one side that a caller spreads over buckets
    itself (``add(..., which)``): one bucket in memory under ``memory_bytes``
    (``MEMORY_BYTES`` by default), else at least two of about ``BUCKET_BYTES`` in files in
    a new directory inside ``spill_dir`` (returned: the caller removes it)."""
    limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
    if expected * value_len < limit:
        return Buckets.in_memory(value_len, positioned=False), None
    directory = spill_directory(spill_dir, prefix)
    bits = max(1, bucket_bits(expected, value_len))
    return Buckets(value_len, bits, directory, positioned=False, name=name), directory


class SemiJoin:
    """Left values (positioned) and right values, bucketed alike; ``mask`` says which
    left positions hold a value of the right set. Files, if any, go with ``close``."""

    def __init__(
        self,
        value_len: int,
        left_expected: int,
        right_expected: int,
        *,
        memory_bytes: int | None = None,
        spill_dir: Path | None = None,
        bits: int | None = None,
    ) -> None:
        """Sides up to ``memory_bytes`` (default MEMORY_BYTES) stay in memory; larger ones
        go to bucket files in a temporary directory inside ``spill_dir``;
        ``bits``: buckets as 2^bits instead of sized by the expected counts."""
        biggest = max(left_expected, right_expected)
        self._dir: Path | None = None
        self._spill_dir = spill_dir
        self._flagged = False
        limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        # Buckets small enough for a worker's job either way; files only for a large set.
        bits = bucket_bits(biggest, value_len) if bits is None else bits
        if biggest * value_len < limit:
            self.left = Buckets.in_memory(value_len, positioned=True, bits=bits)
            self.right = Buckets.in_memory(value_len, positioned=False, bits=bits)
        else:
            self._dir = spill_directory(spill_dir, "semijoin-")
            self.left = Buckets(value_len, bits, self._dir, positioned=True, name="left")
            self.right = Buckets(value_len, bits, self._dir, positioned=False, name="right")

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    async def hit_flags(
        self,
        run: Callable[..., Awaitable[bytes]] | None = None,
        window: int = 4,
        *,
        range_bits: int | None = None,
    ) -> ByteColumn:
        """One byte a left position, in position order: 1 where its value is in the right
        set, else 0. ``run(fn, *args)`` runs a job (on the party's pool); here, without one.

        The bucket jobs find positions in no particular order, so the found positions are
        bucketed again by range of position (in files for a join on disk), then each
        range's flags are written in turn: what is held is one range, never the set. The
        flags stay in memory for a join in memory, else go to an unnamed file, written on
        a thread (the event loop keeps serving). Once a join: the found positions'
        buckets are its own. ``range_bits``: 2^bits ranges instead of sized by the count."""
        if self._flagged:
            raise RuntimeError("a semi-join's hit flags are computed once")
        self._flagged = True
        self.left.close()
        self.right.close()
        count = self.left.count
        bits = bucket_bits(count, POSITION.itemsize) if range_bits is None else range_bits
        span = max(1, -(-count // (1 << bits)))
        if self._dir is None:
            found = Buckets.in_memory(POSITION.itemsize, positioned=False, bits=bits)
        else:
            found = Buckets(POSITION.itemsize, bits, self._dir, positioned=False, name="found")

        def keep(positions: bytes) -> None:
            if positions:
                found.add(positions, np.frombuffer(positions, dtype=POSITION) // span)

        jobs = (
            (semi_join_bucket, *self._pair(b), self.left.value_len)
            for b in range(self.left.buckets)
        )
        await _run_windowed(jobs, run, window, keep)
        found.close()
        return await asyncio.to_thread(self._write_flags, found, count, span)

    def _write_flags(self, found: Buckets, count: int, span: int) -> ByteColumn:
        """Each range's flags in turn, from its found positions."""
        flags = ColumnAppender(
            spill_dir=self._spill_dir, memory_bytes=None if self._dir is None else 0
        )
        for b, start in enumerate(range(0, count, span)):
            part = np.zeros(min(span, count - start), dtype=np.uint8)
            part[np.frombuffer(found.bucket(b)[0], dtype=POSITION) - start] = 1
            flags.append(part.tobytes())
        return flags.finish()

    async def mask(
        self, run: Callable[..., Awaitable[bytes]] | None = None, window: int = 4
    ) -> np.ndarray:
        """``hit_flags`` as booleans, whole (for a small set and for tests)."""
        return np.frombuffer(whole(await self.hit_flags(run, window)), dtype=np.bool_)

    def _pair(self, b: int) -> tuple[bytes, bytes, bytes]:
        values, positions = self.left.bucket(b)
        theirs, _ = self.right.bucket(b)
        return values, positions, theirs

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self.left.removed()
            self.right.removed()


class Shuffle:
    """Values in a uniformly random order without holding them all: each value goes to a
    uniformly random batch as it arrives (in files past ``memory_bytes``), and each batch
    is shuffled as it is read. Every order is equally likely, since nothing in the
    procedure tells one value from another; a small set is one batch, one permutation."""

    def __init__(
        self,
        value_len: int,
        expected: int,
        rng: np.random.Generator,
        *,
        memory_bytes: int | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        self._rng = rng
        self._side, self._dir = sized_buckets(
            value_len, expected, memory_bytes, spill_dir, prefix="shuffle-", name="batch"
        )

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    @property
    def count(self) -> int:
        return self._side.count

    def add(self, packed: bytes) -> None:
        buckets = self._side.buckets
        count = len(packed) // self._side.value_len
        which = self._rng.integers(0, buckets, count) if buckets > 1 else None
        self._side.add(packed, which)

    def chunks(self, size: int) -> Iterator[bytes]:
        """Every value once, in the random order, ``size`` values a chunk (the last may be
        shorter)."""
        self._side.close()
        width = self._side.value_len

        def batches() -> Iterator[bytes]:
            for b in range(self._side.buckets):
                rows = np.frombuffer(self._side.bucket(b)[0], dtype=np.uint8).reshape(-1, width)
                yield rows[self._rng.permutation(len(rows))].tobytes()

        return rechunked(batches(), size * width)

    def close(self) -> None:
        self._side.removed()  # reading it after this is an error, never an empty batch
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PositionedRows:
    """Rows of ``width`` bytes put at positions ``0 .. count - 1`` (each once, in any
    order), read back in position order without holding them all: a row goes, with its
    position, to the bucket of its position's range (in files past ``memory_bytes``),
    and each bucket is sorted by position as it is read."""

    def __init__(
        self,
        width: int,
        count: int,
        *,
        memory_bytes: int | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        self.width = width
        self.count = count
        self._side, self._dir = sized_buckets(
            POSITION.itemsize + width,
            count,
            memory_bytes,
            spill_dir,
            prefix="positioned-",
            name="range",
        )

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    def put(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """``rows`` (uint8 ``(k, width)``) at ``positions`` (k integers)."""
        positions = np.asarray(positions, dtype=POSITION)
        if rows.shape != (len(positions), self.width):
            raise ValueError(f"{rows.shape} rows for {len(positions)} positions of {self.width}")
        if len(positions) and (positions.min() < 0 or positions.max() >= self.count):
            raise ValueError(f"a position outside 0 .. {self.count - 1}")
        records = np.empty((len(rows), POSITION.itemsize + self.width), dtype=np.uint8)
        records[:, : POSITION.itemsize] = positions.view(np.uint8).reshape(-1, POSITION.itemsize)
        records[:, POSITION.itemsize :] = rows
        buckets = self._side.buckets
        which = positions * buckets // self.count if buckets > 1 else None
        self._side.add(records.tobytes(), which)

    def chunks(self, size: int) -> Iterator[bytes]:
        """Every row in position order, ``size`` rows a chunk (the last may be shorter);
        ``ValueError`` if a position is missing or was put twice."""
        self._side.close()
        head = POSITION.itemsize

        def ranges() -> Iterator[bytes]:
            expected = 0
            for b in range(self._side.buckets):
                packed = self._side.bucket(b)[0]
                records = np.frombuffer(packed, dtype=np.uint8).reshape(-1, head + self.width)
                at = np.ascontiguousarray(records[:, :head]).view(POSITION).ravel()
                order = np.argsort(at, kind="stable")
                if not np.array_equal(at[order], np.arange(expected, expected + len(at))):
                    raise ValueError(f"positions from {expected} are missing or repeated")
                expected += len(at)
                yield records[order, head:].tobytes()
            if expected != self.count:
                raise ValueError(f"{expected} of {self.count} positions were put")

        return rechunked(ranges(), size * self.width)

    def close(self) -> None:
        self._side.removed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def rechunked(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``pieces``, in order, cut into chunks of ``size`` (the last shorter)."""
    pending = b""
    for piece in pieces:
        pending += piece
        whole = len(pending) - len(pending) % size
        for start in range(0, whole, size):
            yield pending[start : start + size]
        pending = pending[whole:]
    if pending:
        yield pending


def records_hit(flags: ByteColumn, slots: int, window: int = 1 << 20) -> Iterator[np.ndarray]:
    """Per record (``slots`` consecutive hit flags each), whether any of its slots hit:
    ``window`` records at a time, in order."""
    step = slots * window
    for start in range(0, len(flags), step):
        hits = np.frombuffer(flags[start : start + step], dtype=np.bool_)
        yield np.asarray(hits.reshape(-1, slots).any(axis=1))


def semi_join_bucket(values: bytes, positions: bytes, theirs: bytes, value_len: int) -> bytes:
    """The positions (packed int64) of ``values`` that are in ``theirs`` (one bucket)."""
    if not values or not theirs:
        return b""
    ours = np.frombuffer(values, dtype=np.uint8).reshape(-1, value_len)
    hit = member_rows(ours, np.frombuffer(theirs, dtype=np.uint8).reshape(-1, value_len))
    return np.frombuffer(positions, dtype=POSITION)[hit].tobytes()


def member_rows(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Which rows of ``ours`` (uint8, ``(n, length)``) are rows of ``theirs``: exact.

    The values compared are pseudorandom, so their first 8 bytes as a uint64 nearly
    always decide: sorting and searching integers is several times faster than
    ``np.isin`` over byte strings. A row whose key is found is compared whole with the
    first row of theirs with that key; only when theirs holds one key for different
    values (about n²/2^65) are the rows that failed compared again, as byte strings."""
    length = ours.shape[1]
    if not len(theirs):
        return np.zeros(len(ours), dtype=bool)
    if length < 8:
        return _byte_string_isin(ours, theirs)
    keys = np.ascontiguousarray(theirs[:, :8]).view("<u8").ravel()
    order = np.argsort(keys)
    sorted_keys = keys[order]
    mine = np.ascontiguousarray(ours[:, :8]).view("<u8").ravel()
    at = np.minimum(np.searchsorted(sorted_keys, mine), len(sorted_keys) - 1)
    hit = sorted_keys[at] == mine
    if length == 8:
        return hit
    found = np.flatnonzero(hit)
    same = (ours[found, 8:] == theirs[order[at[found]], 8:]).all(axis=1)
    hit[found] = same
    failed = found[~same]
    if len(failed) and (sorted_keys[1:] == sorted_keys[:-1]).any():
        hit[failed] = _byte_string_isin(ours[failed], theirs)
    return hit


def _byte_string_isin(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """``member_rows`` by ``np.isin`` over the rows as byte strings (any layout)."""
    dtype = np.dtype(f"S{ours.shape[1]}")
    return np.isin(
        np.ascontiguousarray(ours).view(dtype).ravel(),
        np.ascontiguousarray(theirs).view(dtype).ravel(),
    )


def unique_bucket(values: bytes, value_len: int) -> bytes:
    """The distinct values of one bucket, sorted."""
    if not values:
        return b""
    return np.unique(np.frombuffer(values, dtype=np.dtype(f"S{value_len}"))).tobytes()


async def unique_values(
    side: Buckets,
    run: Callable[..., Awaitable[bytes]] | None = None,
    window: int = 4,
    on_bucket: Callable[[bytes], None] | None = None,
) -> int:
    """How many distinct values ``side`` holds, one bucket at a time; ``on_bucket`` gets
    each bucket's distinct values (sorted) as they come."""
    side.close()
    total = 0

    def count(distinct: bytes) -> None:
        nonlocal total
        total += len(distinct) // side.value_len
        if on_bucket is not None:
            on_bucket(distinct)

    jobs = ((unique_bucket, side.bucket(b)[0], side.value_len) for b in range(side.buckets))
    await _run_windowed(jobs, run, window, count)
    return total


async def _run_windowed(
    jobs: Iterable[tuple[Any, ...]],
    run: Callable[..., Awaitable[bytes]] | None,
    window: int,
    each: Callable[[bytes], None],
) -> None:
    """``each`` of the jobs' results, in order, with at most ``window`` jobs in flight (so
    what is held is the window's buckets, not the set)."""
    running: deque[asyncio.Future[bytes]] = deque()
    for fn, *args in jobs:
        if run is None:
            each(fn(*args))
            continue
        if len(running) >= window:
            each(await running.popleft())
        running.append(asyncio.ensure_future(run(fn, *args)))
    while running:
        each(await running.popleft())
