"""Closed-loop attribution benchmark: brand-node process vs partner process.

    python bench/attribution.py --conversions 100000 --exposure-rows 1000000

Synthetic data with realistic repetition of users and days. The brand's
conversions are uploaded first (not in ``seconds``; reported as
``conversions_upload_seconds``: the upload hashes the brand's tokens to the
curve). ``seconds`` runs from the partner reading its exposure log to the
stored report id (hashing, tokens, the whole protocol). ``floor_seconds`` is
this run's own X25519 operations (each side blinds its distinct tokens once
and re-blinds every token of the other) and Paillier encryptions, each at its
single-operation speed measured in the same run, divided over the workers.
The X25519 speed is that of the same number of worker processes blinding
``--floor-sample`` points all at once, sustained, just before and just after
the run (the mean of both): a short burst on one idle core runs faster on
this VM than minutes on every core, so that is how the run's operations are
timed, and consecutive 10-second samples on this VM differ by up to 25%,
hence ~30 seconds each. ``phe.encrypt`` and the fast path are
timed side by side, per process, 2048-bit keys. Prints one JSON line at the
end; the run's phases go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from common import RssSampler, measure_floor, retry_until_up, start_node, work_dir

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.attribution import (
    AttributionRequest,
    prepare_attribution,
    run_attribution,
    upload_conversions,
)
from cleanroom.client.sdk import Connection
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.federated.attribution.tokens import LaggedPoints
from cleanroom.federated.paillier import generate_keypair
from cleanroom.matching.workers import CryptoPool, default_workers
from cleanroom.server.attribution import AttributionService
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import SqlStore


def paillier_rates(samples: int = 200, fast_per_slow: int = 10) -> tuple[float, float]:
    """Encryptions per second: fast path (key owner) and phe, interleaved.

    The fast path gets ``fast_per_slow`` times the samples: 200 of its
    encryptions last ~40 ms, short enough for this VM's jitter to move the
    rate (and the floor) by a third between runs.
    """
    public, private = generate_keypair(2048)
    phe_key = public.to_phe_public_key()
    private.precompute()
    values = [random.getrandbits(40) for _ in range(samples)]
    fast = slow = 0.0
    for start in range(0, samples, 25):
        part = values[start : start + 25]
        t = time.perf_counter()
        for v in part * fast_per_slow:
            private.encrypt(v)
        fast += time.perf_counter() - t
        t = time.perf_counter()
        for v in part:
            phe_key.encrypt(v)
        slow += time.perf_counter() - t
    return samples * fast_per_slow / fast, samples / slow


def brand_point_count(data_dir: Path, token: str, id_types: tuple[str, ...], max_lag: int) -> int:
    """The distinct tokens the brand blinded: read from its stored conversions, after the run."""
    store = SqlStore(ServerSettings(data_dir=data_dir).resolved_database_url())
    try:
        principal = store.authenticate(token)
        assert principal is not None
        _, data = AttributionService(store, data_dir).load(principal, "sales")
        # Only types both sides hold are tokenized; each part's distinct tokens, once.
        return sum(
            len(LaggedPoints.of(part.id_type, part.digest, part.day, max_lag + 1).first_item)
            for part in data.identifier_parts(id_types)
        )
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversions", type=int, default=100_000)
    parser.add_argument("--exposure-rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--floor-sample",
        type=int,
        default=1_200_000,
        help="X25519 operations timed for the floor, before and after the run",
    )
    args = parser.parse_args()
    # The run's timeline (phases, counts; never data) goes to stderr.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)9.0f ms  %(message)s"
    )
    n_conv, n_rows, workers = args.conversions, args.exposure_rows, args.workers

    work = work_dir("cleanroom-bench-attr-")
    synth = synthesize_attribution(
        work / "data",
        customers=max(100, n_conv // 2),
        conversions=n_conv,
        partner_users=max(100, n_rows // 8),
        exposure_rows=n_rows,
        campaigns=5,
        seed=args.seed,
        days=30,
    )
    node = start_node(work / "node", workers)
    options = NormalizeOptions(default_region="US")
    try:
        admin = Connection(node.target, node.tokens["admin"])
        upload_start = time.perf_counter()
        retry_until_up(
            node,
            lambda: asyncio.run(
                upload_conversions(
                    admin,
                    name="sales",
                    path=synth.conversions_path,
                    id_columns=parse_id_columns("email,phone"),
                    options=options,
                    customer_column="customer_id",
                    time_column="ts",
                    value_column="value",
                )
            ),
        )
        upload_seconds = time.perf_counter() - upload_start
        request = AttributionRequest(
            conversions="sales",
            exposures=synth.exposures_path,
            id_columns=parse_id_columns("email,phone,maid"),
            options=options,
            spend=synth.spend_path,
        )
        # Sustained X25519 speed of the worker pool, before and after the run.
        pool_seconds_per_op = [measure_floor(args.floor_sample, workers) / args.floor_sample]
        with (
            CryptoPool.processes(workers) as pool,
            RssSampler({"brand": node.process.pid, "partner": os.getpid()}) as rss,
        ):
            start = time.perf_counter()
            prepared = prepare_attribution(request, pool.executor)
            prepare_seconds = time.perf_counter() - start
            logging.info("partner read and validated its exposure log in %.1f s", prepare_seconds)
            report_id = asyncio.run(
                run_attribution(Connection(node.target, node.tokens["partner"]), prepared)
            )
            seconds = time.perf_counter() - start
        partner = prepared.partner
        accepted = partner.accepted
        assert accepted is not None and report_id
        partner_tokens = int(sum(partner.cell_tokens))
        partner_points = partner.point_count
        brand_tokens = int(accepted.brand_tokens)
    finally:
        node.stop()
    brand_points = brand_point_count(
        work / "node", node.tokens["partner"], accepted.id_types, accepted.max_lag
    )

    # Each side blinds its distinct points once and re-blinds every token of the other.
    x25519_ops = partner_points + brand_tokens + brand_points + partner_tokens
    paillier_ops = int(accepted.events)
    pool_seconds_per_op.append(measure_floor(args.floor_sample, workers) / args.floor_sample)
    per_x25519 = float(np.mean(pool_seconds_per_op)) * workers  # one worker's time per operation
    fast_rate, phe_rate = paillier_rates()
    floor = (x25519_ops * per_x25519 + paillier_ops / fast_rate) / workers
    print(
        json.dumps(
            {
                "bench": "attribution",
                "conversions": n_conv,
                "exposure_rows": n_rows,
                "workers": workers,
                "seconds": round(seconds, 3),
                "partner_prepare_seconds": round(prepare_seconds, 3),
                "conversions_upload_seconds": round(upload_seconds, 3),
                "x25519_ops": x25519_ops,
                "paillier_ops": paillier_ops,
                "partner_tokens": partner_tokens,
                "brand_tokens": brand_tokens,
                "partner_points": partner_points,
                "brand_points": brand_points,
                "x25519_us": round(per_x25519 * 1e6, 2),
                "x25519_us_before_after": [
                    round(t * workers * 1e6, 2) for t in pool_seconds_per_op
                ],
                "floor_seconds": round(floor, 3),
                "ratio_to_floor": round(seconds / floor, 3),
                "paillier_encrypt_per_s": round(fast_rate, 1),
                "phe_encrypt_per_s": round(phe_rate, 1),
                "speedup_vs_phe": round(fast_rate / phe_rate, 2),
                "peak_rss_mb": round(rss.peak_process_mb, 1),
                "peak_rss_tree_mb": {k: round(v, 1) for k, v in rss.peak_tree_mb.items()},
                "report_id": report_id,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
