"""Partitioned dedupe and semi-join of sets that do not fit a worker, on Dask.

    python bench/semijoin.py --values 30000000 --memory-limit 256MiB --workers 2

Left: ``--values`` pseudorandom 16-byte values (a comparison value's length), a tenth
of them twice. Right: every other left value and as many fresh ones. Both go into
bucket files chunk by chunk (``matching.semijoin``); the distinct left values are
counted and the left positions found in the right set are marked, one bucket per job,
on a ``LocalCluster`` whose workers may hold ``--memory-limit`` each (a worker above
it is killed by its nanny). Checks both answers, and that no worker was restarted;
prints one JSON line: seconds per phase, each worker's peak RSS (the kernel's
high-water mark), this process's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cleanroom.matching.cluster import DaskExecutor
from cleanroom.matching.semijoin import Buckets, SemiJoin, bucket_bits, unique_values
from cleanroom.matching.workers import CryptoPool

VALUE_LEN = 16
CHUNK = 1 << 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def left_chunk(start: int, stop: int) -> np.ndarray:
    """Values start..stop-1 of the left side (value i is a function of i alone)."""
    out = np.empty((stop - start, VALUE_LEN), dtype=np.uint8)
    for lo in range(start, stop, CHUNK):
        hi = min(stop, lo + CHUNK)
        rng = np.random.default_rng([7, lo])
        out[lo - start : hi - start] = rng.integers(0, 256, (hi - lo, VALUE_LEN), np.uint8)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--values", type=int, default=30_000_000)
    parser.add_argument("--memory-limit", default="256MiB")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = args.values - args.values % CHUNK if args.values >= CHUNK else args.values
    repeats = n // 10

    pool = CryptoPool.dask(f"local:{args.workers}", memory_limit=args.memory_limit)
    executor = pool.executor
    assert isinstance(executor, DaskExecutor)
    workers_before = executor.client.run(os.getpid)
    result: dict[str, object] = {"bench": "semijoin", "values": n, "workers": args.workers}
    result["memory_limit"] = args.memory_limit
    spill = Path(tempfile.mkdtemp(prefix="cleanroom-bench-semijoin-"))
    try:
        start = time.perf_counter()
        join = SemiJoin(VALUE_LEN, n + repeats, n, memory_bytes=0, spill_dir=spill)
        bits = bucket_bits(n + repeats, VALUE_LEN)
        dedupe = Buckets(VALUE_LEN, bits, spill, positioned=False, name="dedupe")
        for lo in range(0, n, CHUNK):
            rows = left_chunk(lo, min(n, lo + CHUNK))
            join.left.add(rows.tobytes())
            dedupe.add(rows.tobytes())
            right = rows[::2].copy()
            fresh = np.random.default_rng([9, lo]).integers(0, 256, right.shape, np.uint8)
            join.right.add(np.concatenate([right, fresh]).tobytes())
        for lo in range(0, repeats, CHUNK):  # a tenth of the values, again
            rows = left_chunk(lo, min(repeats, lo + CHUNK))
            join.left.add(rows.tobytes())
            dedupe.add(rows.tobytes())
        result["partition_seconds"] = round(time.perf_counter() - start, 3)

        start = time.perf_counter()
        distinct = asyncio.run(unique_values(dedupe, pool.run, window=2 * args.workers))
        result["dedupe_seconds"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        hits = asyncio.run(join.mask(pool.run, window=2 * args.workers))
        result["semijoin_seconds"] = round(time.perf_counter() - start, 3)
        join.close()

        # Value i < n is in the right set iff i is even; the repeats are values 0..repeats-1.
        want = np.concatenate([np.arange(n) % 2 == 0, np.arange(repeats) % 2 == 0])
        if distinct != n:
            raise AssertionError(f"{distinct} distinct values, expected {n}")
        if not np.array_equal(hits, want):
            raise AssertionError(f"{int(hits.sum())} hits, expected {int(want.sum())}")
        worker_peaks = executor.client.run(peak_rss_mb)
        workers_after = executor.client.run(os.getpid)
        restarted = sorted(set(workers_before.values()) ^ set(workers_after.values()))
        result.update(
            {
                "distinct": distinct,
                "matched": int(hits.sum()),
                "bucket_bits": join.left.bits,
                "bytes_per_side_mb": round((n + repeats) * VALUE_LEN / 2**20, 1),
                "worker_peak_rss_mb": sorted(round(v, 1) for v in worker_peaks.values()),
                "killed_workers": len(restarted) // 2,
                "client_peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
        if restarted:
            raise AssertionError(f"workers were restarted: {restarted}")
    finally:
        pool.close()
        shutil.rmtree(spill, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
