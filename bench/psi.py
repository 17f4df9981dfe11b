"""PSI match benchmark: brand-node process vs partner process over loopback.

    python bench/psi.py --n 100000 [--protocol ecdh|kkrt] [--compare-openmined]
                        [--compare-secretflow] [--dask-scheduler local:N]

Brand rows are user0..user{N-1}; partner rows user{N/2}..user{3N/2-1}
(50% overlap). The brand audience is uploaded first (not timed), and the
partner hashes its identifiers to the curve before connecting
(``partner_prepare_seconds``, reported, not in ``seconds``), just as the
brand node does at upload. ``seconds`` runs from the partner's first
message to its written result file.
``floor_seconds`` is measured in the same run: for ECDH the 4N X25519
operations the protocol needs, spread over the same number of worker
processes; for KKRT (``--protocol kkrt``; the partner's prepared work is its
item blocks) the AES blocks and bit-matrix transposes it cannot avoid, on one
core (``common.measure_kkrt_floor``). ``bytes_on_wire`` counts the serialized
messages both ways. ``--compare-secretflow`` runs SecretFlow's RR22 on the
same two files in the same run (``bench/secretflow.py``: spu in a virtual
environment of its own). ``--dask-scheduler local:N`` runs both parties'
crypto on Dask (the node with ``CLEANROOM_DASK_SCHEDULER``) and, in the same
run, the same match on local processes first: ``ratio_to_process_pool`` is
the processes' seconds over Dask's (above 1: Dask is faster). Prints one JSON
line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RssSampler,
    high_water_kb,
    measure_floor,
    measure_kkrt_floor,
    retry_until_up,
    start_node,
    work_dir,
    write_csv,
)
from secretflow import run_rr22

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import (
    Connection,
    load_partner_set,
    prepare_points,
    run_psi,
    upload_audience,
    write_match_output,
)
from cleanroom.matching.kkrt import partner_items
from cleanroom.matching.messages import Protocol, PsiMethod
from cleanroom.matching.workers import CryptoPool, default_workers

COLUMNS = parse_id_columns("email")
OPTIONS = NormalizeOptions()


def run_openmined(brand: list[str], partner: list[str]) -> float | None:
    try:
        import private_set_intersection.python as psi  # type: ignore[import-not-found]
    except ImportError:
        return None
    start = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(partner), brand, psi.DataStructure.RAW)
    request = client.CreateRequest(partner)
    response = server.ProcessRequest(request)
    hits = client.GetIntersection(setup, response)
    elapsed = time.perf_counter() - start
    if len(hits) != len(partner) // 2:
        raise AssertionError(f"openmined found {len(hits)} matches, expected {len(partner) // 2}")
    return elapsed


def one_run(
    node_dir: Path,
    n: int,
    workers: int,
    method: PsiMethod,
    chunk_size: int,
    dask_scheduler: str | None,
    high_water: dict[str, float] | None = None,
    cpu_at_start: dict[int, float] | None = None,
) -> tuple[float, float, Any, RssSampler, Any]:
    """One match of partner.csv against brand.csv (both in ``node_dir``'s parent), both
    parties' crypto on local processes or on ``dask_scheduler``: (seconds, prepare
    seconds, the run, the RSS sampler, the outcome). ``high_water`` gets this process's
    peak RSS (MB) after each step (upload, load, prepare, psi, output): where it rises
    is the step that set it. ``cpu_at_start`` gets each process's CPU seconds as the
    timed part starts (``RssSampler.cpu_seconds``)."""

    def mark(step: str) -> None:
        if high_water is not None:
            high_water[step] = round(high_water_kb(os.getpid()) / 1024, 1)

    work = node_dir.parent
    brand_csv, partner_csv, out_csv = work / "brand.csv", work / "partner.csv", work / "out.csv"
    env = {"CLEANROOM_CHUNK_SIZE": str(chunk_size)}
    if dask_scheduler:
        env["CLEANROOM_DASK_SCHEDULER"] = dask_scheduler
    node = start_node(node_dir, workers, env=env)
    try:
        admin = Connection(node.target, node.tokens["admin"])
        retry_until_up(
            node,
            lambda: asyncio.run(
                upload_audience(
                    admin, name="bench", path=brand_csv, id_columns=COLUMNS, options=OPTIONS
                )
            ),
        )
        mark("upload")
        data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
        mark("load")
        with (
            CryptoPool.open(dask_scheduler, workers) as pool,
            RssSampler({"brand": node.process.pid, "partner": os.getpid()}) as rss,
        ):
            start = time.perf_counter()
            items = None
            if method is PsiMethod.KKRT:
                items = partner_items(data)
            else:
                data = asyncio.run(prepare_points(data, pool))
            prepare_seconds = time.perf_counter() - start
            mark("prepare")
            if cpu_at_start is not None:
                cpu_at_start.update(rss.cpu_seconds)
            start = time.perf_counter()
            run = asyncio.run(
                run_psi(
                    Connection(node.target, node.tokens["partner"]),
                    "bench",
                    Protocol.MATCH,
                    data,
                    pool=pool,
                    method=method,
                    items=items,
                )
            )
            outcome = run.session.outcome
            assert outcome is not None
            mark("psi")
            write_match_output(partner_csv, out_csv, outcome.matched_on, COLUMNS)
            seconds = time.perf_counter() - start
            mark("output")
        # Partner row i holds identifier n//2 + i: the first n - n//2 rows match, on email.
        matched_on, window = outcome.matched_on, 1 << 20
        if len(matched_on) != n:
            raise AssertionError(f"the match result has {len(matched_on)} rows, not {n}")
        for start in range(0, n, window):
            part = matched_on[start : start + window]
            if not np.array_equal(part == 0, np.arange(start, start + len(part)) < n - n // 2):
                raise AssertionError("the match result differs from the plaintext answer")
    finally:
        node.stop()
    return seconds, prepare_seconds, run, rss, outcome


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--protocol", choices=["ecdh", "kkrt"], default="ecdh")
    parser.add_argument("--compare-openmined", action="store_true")
    parser.add_argument("--compare-secretflow", action="store_true")
    parser.add_argument(
        "--dask-scheduler",
        help="both parties' crypto on Dask (local:N or an address); also runs the same"
        " match on local processes for ratio_to_process_pool",
    )
    parser.add_argument("--skip-floor", action="store_true", help="for quick smoke runs")
    args = parser.parse_args()
    n, workers = args.n, args.workers
    method = PsiMethod(args.protocol)

    work = work_dir("cleanroom-bench-")
    brand_csv, partner_csv = work / "brand.csv", work / "partner.csv"
    write_csv(brand_csv, 0, n)
    write_csv(partner_csv, n // 2, n)
    runs = {}
    if args.dask_scheduler:
        # The same session on local processes first, in the same run: the ratio's base.
        runs["processes"] = one_run(work / "proc", n, workers, method, args.chunk_size, None)
    measured = one_run(work / "node", n, workers, method, args.chunk_size, args.dask_scheduler)
    seconds, prepare_seconds, run, rss, outcome = measured

    if args.skip_floor:
        floor = None
    elif method is PsiMethod.KKRT:
        floor = measure_kkrt_floor(n, n)
    else:
        floor = measure_floor(4 * n, workers, args.chunk_size)
    openmined = None
    if args.compare_openmined:
        openmined = run_openmined(
            [f"user{i}@example.com" for i in range(n)],
            [f"user{i}@example.com" for i in range(n // 2, n // 2 + n)],
        )
    secretflow: dict[str, object] = {}
    if args.compare_secretflow:
        secretflow = run_rr22(brand_csv, partner_csv, n - n // 2, work / "secretflow")
    sf_seconds = secretflow.get("secretflow_rr22_seconds")
    result = {
        "bench": "psi",
        "protocol": method.value,
        "n": n,
        "workers": workers,
        "executor": f"dask {args.dask_scheduler}" if args.dask_scheduler else "processes",
        "seconds": round(seconds, 3),
        "partner_prepare_seconds": round(prepare_seconds, 3),
        "floor_seconds": round(floor, 3) if floor else None,
        "ratio_to_floor": round(seconds / floor, 3) if floor else None,
        "openmined_seconds": round(openmined, 3) if openmined else None,
        "speedup_vs_openmined": round(openmined / seconds, 3) if openmined else None,
        "peak_rss_mb": round(rss.peak_process_mb, 1),
        "peak_rss_tree_mb": {k: round(v, 1) for k, v in rss.peak_tree_mb.items()},
        "matched": int(outcome.matched_records),
        "bytes_on_wire": run.bytes_sent + run.bytes_received,
        **secretflow,
        "speedup_vs_secretflow": (
            round(sf_seconds / seconds, 3) if isinstance(sf_seconds, float) else None
        ),
    }
    if not args.compare_secretflow:
        result.pop("speedup_vs_secretflow")
    if "processes" in runs:
        base = runs["processes"][0]
        result["process_pool_seconds"] = round(base, 3)
        result["ratio_to_process_pool"] = round(base / seconds, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
