"""A large match on one machine: both parties' crypto on Dask, every process measured.

    python bench/scale.py --n 10000000 [--dask-scheduler local:2]

An N x N ECDH match with 50 % overlap (``bench/psi.py``'s data and session: the brand
node a process of its own, the partner this one), both parties on a Dask
``LocalCluster`` of ``--workers`` workers each. ``seconds`` runs from the partner's
first message to its written result file; ``floor_seconds`` is the 4N X25519
operations the protocol needs, on the same number of worker processes, at the rate
measured in the same run (2M operations before the match and 2M after, scaled; both
are printed). Prints one JSON line with
``peak_rss_mb`` per process (the kernel's high-water mark): the brand node, the
partner and every Dask worker of both; ``cpu_seconds_timed`` is the CPU time each
process used in the timed part (sampled, so to about half a second).
"""

from __future__ import annotations

import argparse
import json
import sys

from common import cpu_by_process, measure_floor, peaks_by_process, work_dir, write_csv
from psi import one_run

from cleanroom.matching.messages import PsiMethod

FLOOR_SAMPLE = 2_000_000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--dask-scheduler", default=None, help="default: local:WORKERS")
    args = parser.parse_args()
    n = args.n
    scheduler = args.dask_scheduler or f"local:{args.workers}"
    work = work_dir("cleanroom-bench-scale-")
    write_csv(work / "brand.csv", 0, n)
    write_csv(work / "partner.csv", n // 2, n)
    # The floor's rate is sustained blinding on the same workers (FLOOR_SAMPLE operations,
    # about half a minute here), scaled to the 4N operations: timing all 4N would double a
    # run of half an hour. This VM's speed drifts by as much as the margin in question
    # over a run, so the rate is the mean of one sample before the match and one after.
    sample = min(4 * n, FLOOR_SAMPLE)
    floor_before = measure_floor(sample, args.workers, args.chunk_size) * (4 * n) / sample
    high_water: dict[str, float] = {}
    cpu_at_start: dict[int, float] = {}
    seconds, prepare_seconds, run, rss, outcome = one_run(
        work / "node",
        n,
        args.workers,
        PsiMethod.ECDH,
        args.chunk_size,
        scheduler,
        high_water,
        cpu_at_start,
    )
    floor_after = measure_floor(sample, args.workers, args.chunk_size) * (4 * n) / sample
    floor = (floor_before + floor_after) / 2
    peaks = peaks_by_process(rss)
    result = {
        "bench": "scale",
        "protocol": "ecdh",
        "n": n,
        "executor": f"dask {scheduler}",
        "seconds": round(seconds, 3),
        "partner_prepare_seconds": round(prepare_seconds, 3),
        "floor_seconds": round(floor, 3),
        "floor_seconds_before_after": [round(floor_before, 3), round(floor_after, 3)],
        "ratio_to_floor": round(seconds / floor, 3),
        "matched": int(outcome.matched_records),
        "bytes_on_wire": run.bytes_sent + run.bytes_received,
        "peak_rss_mb": peaks,
        "partner_high_water_mb_after": high_water,
        "cpu_seconds_timed": cpu_by_process(rss, cpu_at_start),
        "max_process_rss_mb": max(peaks.values()),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
