"""Partitioned semi-join and dedupe: the same answers as numpy on the whole set."""

from __future__ import annotations

import asyncio
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.synth import synthesize
from cleanroom.client.sdk import Connection, load_partner_set, run_psi, upload_audience
from cleanroom.matching import semijoin
from cleanroom.matching.bulk import FileBytes, whole, whole_array
from cleanroom.matching.messages import Protocol
from cleanroom.matching.semijoin import (
    Buckets,
    SemiJoin,
    Shuffle,
    bucket_bits,
    bucket_of,
    unique_values,
)
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.datasets import open_dataset
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import eventually, plaintext_match

OPTIONS = NormalizeOptions(default_region="US")
COLUMNS = parse_id_columns("email,phone,maid")


def values(n: int, value_len: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, value_len), dtype=np.uint8)


def chunks(rows: np.ndarray, size: int) -> list[bytes]:
    return [rows[i : i + size].tobytes() for i in range(0, len(rows), size)]


def reference(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    dtype = np.dtype(f"S{ours.shape[1]}")
    return np.isin(ours.view(dtype).ravel(), theirs.view(dtype).ravel())


@pytest.mark.parametrize("memory_bytes", [0, 1 << 30])  # forced to disk, and in memory
@pytest.mark.parametrize(("n_ours", "n_theirs"), [(0, 0), (1, 0), (0, 5), (5000, 3000)])
def test_mask_equals_numpy_isin(
    n_ours: int, n_theirs: int, memory_bytes: int, tmp_path: Path
) -> None:
    rng = np.random.default_rng(n_ours + n_theirs)
    value_len = 10
    theirs = values(n_theirs, value_len, rng)
    ours = values(n_ours, value_len, rng)
    if n_ours and n_theirs:  # a real overlap, and duplicates on both sides
        ours[::3] = theirs[rng.integers(0, n_theirs, size=len(ours[::3]))]
        theirs[1::7] = theirs[0]
    join = SemiJoin(
        value_len, n_ours, n_theirs, memory_bytes=memory_bytes, spill_dir=tmp_path / "spill"
    )
    for chunk in chunks(ours, 777):
        join.left.add(chunk)
    for chunk in chunks(theirs, 500):
        join.right.add(chunk)
    assert join.on_disk is (memory_bytes == 0)
    got = asyncio.run(join.mask())
    np.testing.assert_array_equal(got, reference(ours, theirs))
    join.close()
    assert not list((tmp_path / "spill").glob("*"))  # the bucket files went with it


def test_many_buckets_on_a_pool_give_the_same_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ours, theirs = values(60_000, 8, rng), values(40_000, 8, rng)
    ours[::5] = theirs[: len(ours[::5])]
    join = SemiJoin(8, len(ours), len(theirs), memory_bytes=0, spill_dir=tmp_path, bits=6)
    for chunk in chunks(ours, 4096):
        join.left.add(chunk)
    for chunk in chunks(theirs, 4096):
        join.right.add(chunk)
    with ThreadPoolExecutor(2) as pool:

        async def run(fn: Any, *args: Any) -> bytes:
            return await asyncio.wrap_future(pool.submit(fn, *args))

        got = asyncio.run(join.mask(run, window=3))
    sides = [*tmp_path.rglob("left-*.v"), *tmp_path.rglob("right-*.v")]
    assert len(sides) == 128  # both sides spread over the 64 buckets
    np.testing.assert_array_equal(got, reference(ours, theirs))
    assert got.sum() >= len(ours[::5])
    join.close()


@pytest.mark.parametrize("memory_bytes", [0, 1 << 30])
@pytest.mark.parametrize("range_bits", [0, 1, 5])
def test_hit_flags_written_a_range_at_a_time_are_the_mask(
    tmp_path: Path, memory_bytes: int, range_bits: int
) -> None:
    """Found positions come back bucket by bucket in no order; bucketed again by range of
    position, the flags are written range by range and equal numpy's isin, in memory or
    in a file (the ranges' files next to the sides', all gone with the join)."""
    rng = np.random.default_rng(range_bits)
    ours, theirs = values(9_001, 6, rng), values(4_000, 6, rng)
    ours[::4] = theirs[rng.integers(0, len(theirs), size=len(ours[::4]))]
    spill = tmp_path / "spill"
    join = SemiJoin(6, len(ours), len(theirs), memory_bytes=memory_bytes, spill_dir=spill)
    for chunk in chunks(ours, 1000):
        join.left.add(chunk)
    for chunk in chunks(theirs, 1000):
        join.right.add(chunk)
    flags = asyncio.run(join.hit_flags(range_bits=range_bits))
    assert isinstance(flags, FileBytes if join.on_disk else bytes)
    if join.on_disk:
        assert len(list(spill.rglob("found-*.v"))) == 1 << range_bits
    want = reference(ours, theirs)
    assert len(flags) == len(ours)
    np.testing.assert_array_equal(np.frombuffer(whole(flags), dtype=np.uint8), want)
    with pytest.raises(RuntimeError, match="once"):
        asyncio.run(join.hit_flags())
    join.close()
    assert not list(spill.rglob("*"))


def test_unique_count_equals_numpy_unique(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    rows = values(50_000, 6, rng)
    rows[1::2] = rows[::2][: len(rows[1::2])]  # half of them repeat
    side = Buckets(6, 5, tmp_path, positioned=False)
    for chunk in chunks(rows, 3000):
        side.add(chunk)
    seen: list[bytes] = []
    count = asyncio.run(unique_values(side, on_bucket=seen.append))
    want = np.unique(rows.view("S6").ravel())
    assert count == len(want)
    got = np.frombuffer(b"".join(seen), dtype="S6")
    assert np.sort(got).tobytes() == want.tobytes()


def test_buckets_split_by_leading_bits_evenly() -> None:
    rng = np.random.default_rng(1)
    rows = values(1 << 16, 16, rng)
    which = bucket_of(rows, 4)
    assert which.min() == 0 and which.max() == 15
    counts = np.bincount(which)
    assert counts.min() > 0.9 * (1 << 12) and counts.max() < 1.1 * (1 << 12)
    # The bucket is the top bits of the first two bytes, big-endian.
    assert bucket_of(np.array([[0xAB, 0xCD, 0]], dtype=np.uint8), 12)[0] == 0xABC
    assert bucket_bits(10, 16) == 0
    assert bucket_bits(100_000_000, 16) == 8  # 1.6 GB in 6.25 MB buckets


@pytest.mark.parametrize("bits", [0, 2])
def test_buckets_on_disk_are_written_as_they_fill_and_read_back_in_slices(
    bits: int, tmp_path: Path
) -> None:
    """Past FLUSH_BYTES a bucket goes to its file before ``close`` (also with one bucket),
    and ``bucket_slices`` gives its values back in order, a slice at a time."""
    side = Buckets(9, bits, tmp_path, positioned=False)
    rows = np.random.default_rng(5).integers(0, 256, (300_000, 9), dtype=np.uint8)
    which = np.zeros(len(rows), dtype=np.int64)
    side.add(rows.tobytes(), which if bits else None)
    assert (tmp_path / "side-0000.v").stat().st_size >= semijoin.FLUSH_BYTES
    side.close()
    slices = list(side.bucket_slices(0, 65_536))
    assert [len(s) for s in slices[:-1]] == [65_536 * 9] * (len(slices) - 1)
    assert b"".join(slices) == rows.tobytes()
    side.removed()
    with pytest.raises(RuntimeError, match="removed"):
        next(side.bucket_slices(0, 10))


def test_a_chunk_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    side = Buckets(8, 2, tmp_path, positioned=False)
    with pytest.raises(ValueError, match="8-byte values"):
        side.add(os.urandom(12))


def test_sessions_compare_through_bucket_files_and_leave_none(
    node: Node, process_pool: CryptoPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MATCH (the partner compares) and overlap (the brand does) through on-disk buckets,
    as large sets do: the plaintext answers, and no bucket file left behind."""
    result = synthesize(
        tmp_path / "data", brand_rows=300, partner_rows=250, overlap=0.4, seed=2,
        default_region="US",
    )  # fmt: skip
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    asyncio.run(
        upload_audience(
            admin, name="spilled", path=result.brand_path, id_columns=COLUMNS, options=OPTIONS
        )
    )
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(semijoin, "MEMORY_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(spill))  # both parties' default spill dir
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    data, _ = load_partner_set(result.partner_path, COLUMNS, OPTIONS)
    conn = Connection(node.target, node.tokens["acme"][Role.PARTNER])
    match = asyncio.run(run_psi(conn, "spilled", Protocol.MATCH, data, pool=process_pool))
    overlap = asyncio.run(run_psi(conn, "spilled", Protocol.CARDINALITY, data, pool=process_pool))
    brand = pd.read_csv(result.brand_path, dtype=str, keep_default_na=False)
    partner = pd.read_csv(result.partner_path, dtype=str, keep_default_na=False)
    want = plaintext_match(brand, partner, COLUMNS, OPTIONS)
    assert match.session.outcome is not None
    got = [
        COLUMNS[i].id_type if i >= 0 else "" for i in whole_array(match.session.outcome.matched_on)
    ]
    assert got == want
    assert overlap.result is not None
    assert overlap.result.intersection == sum(1 for w in want if w) > 20
    assert len(made) >= 2  # the partner's MATCH buckets and the brand's overlap buckets
    eventually(lambda: not any(p.exists() for p in made), what="the bucket files to go")


@pytest.mark.parametrize("memory_bytes", [0, 1 << 30])
def test_shuffle_returns_every_value_once_in_chunks(memory_bytes: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = values(20_000, 8, rng)
    shuffle = Shuffle(8, len(rows), rng, memory_bytes=memory_bytes, spill_dir=tmp_path)
    for chunk in chunks(rows, 999):
        shuffle.add(chunk)
    assert shuffle.on_disk is (memory_bytes == 0)
    out = list(shuffle.chunks(512))
    assert [len(c) for c in out[:-1]] == [512 * 8] * (len(out) - 1)
    got = np.frombuffer(b"".join(out), dtype="S8")
    assert np.sort(got).tobytes() == np.sort(rows.view("S8").ravel()).tobytes()
    assert not np.array_equal(got, rows.view("S8").ravel())  # and not in arrival order
    shuffle.close()
    assert list(tmp_path.rglob("*")) == []


def test_a_bucketed_shuffle_puts_any_value_anywhere_alike(tmp_path: Path) -> None:
    """Where the first value arrived ends up, over many shuffles: uniform over the
    positions (chi-square over 8 position ranges, far from its 0.1 % critical value)."""
    rng = np.random.default_rng(12)
    n, trials, ranges = 64, 1500, 8
    rows = np.arange(n, dtype=">u2").view(np.uint8).reshape(n, 2)
    seen = np.zeros(ranges, dtype=int)
    for _ in range(trials):
        shuffle = Shuffle(2, n, rng, memory_bytes=0, spill_dir=tmp_path)
        shuffle.add(rows.tobytes())
        order = np.frombuffer(b"".join(shuffle.chunks(16)), dtype=">u2")
        shuffle.close()
        seen[int(np.flatnonzero(order == 0)[0]) * ranges // n] += 1
    expected = trials / ranges
    chi2 = float(((seen - expected) ** 2 / expected).sum())
    assert chi2 < 24.3, seen  # 7 degrees of freedom


def test_an_upload_deduplicated_by_bucket_stores_what_one_pass_stores(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node hashes and deduplicates an upload one bucket of digests at a time: with
    buckets of 1 KiB (16 a type here) the stored audience equals the one-bucket one."""
    result = synthesize(
        tmp_path / "data", brand_rows=400, partner_rows=10, overlap=0.1, seed=6,
        default_region="US",
    )  # fmt: skip
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])

    def stored(name: str) -> pd.DataFrame:
        asyncio.run(
            upload_audience(
                admin, name=name, path=result.brand_path, id_columns=COLUMNS, options=OPTIONS
            )
        )
        store = node.store()
        try:
            tenant = store.find_tenant("acme")
            assert tenant is not None
            [record] = [a for a in store.list_audiences(tenant.tenant_id) if a.name == name]
        finally:
            store.close()
        return open_dataset(node.data_dir / record.path).read_all().to_pandas()

    whole = stored("one-bucket")
    monkeypatch.setattr(semijoin, "BUCKET_BYTES", 1024)
    assert semijoin.bucket_bits(300, 32) > 3
    bucketed = stored("bucketed")
    pd.testing.assert_frame_equal(bucketed, whole)
    assert whole["digest"].is_unique and len(whole) > 300
    for _id_type, part in whole.groupby("id_type", sort=False):
        assert part["digest"].is_monotonic_increasing  # sorted within a type, as before


@pytest.mark.parametrize("length", [2, 7, 8, 9, 13, 32])
def test_member_rows_equal_numpy_isin_even_when_keys_collide(length: int) -> None:
    """Rows decided by their first 8 bytes, then compared whole: exact, also when theirs
    holds one key for several values (forced here, rare in a session) and repeats."""
    rng = np.random.default_rng(length)
    theirs = values(3_000, length, rng)
    ours = values(2_000, length, rng)
    ours[::3] = theirs[rng.integers(0, len(theirs), size=len(ours[::3]))]
    if length > 8:
        # Same first 8 bytes, other tails: in theirs (several values a key) and in ours.
        theirs[100:140, :8] = theirs[99, :8]
        ours[1:40, :8] = theirs[99, :8]
        ours[40] = theirs[120]  # a member whose key's first row in theirs differs
        theirs[1::7] = theirs[0]
    want = reference(ours, theirs)
    np.testing.assert_array_equal(semijoin.member_rows(ours, theirs), want)
    assert want.sum() > 0
    assert not semijoin.member_rows(ours[:0], theirs).any()
    assert not semijoin.member_rows(ours, theirs[:0]).any()
