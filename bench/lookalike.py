"""Lookalike benchmark: brand-node process vs partner process, against a centralized fit.

    python bench/lookalike.py --partner-users 1000000 --customers 100000 --matched 50000

A synthetic world (``federated/lookalike/synth.py``): the partner's users with
email, phone and/or mobile ad id and ``--binary`` 0/1 plus ``--numeric``
numeric features, the brand's CRM with a seed tier. The CRM upload is not in
``seconds``; ``seconds`` runs from the partner reading its users and
features to the confirmed package on disk (matching, labels, sums, fit,
holdout, scoring, tiers).

``auc_private`` is the brand's holdout AUC (as the node stored it: with
``--epsilon`` the partner is told no metric); ``auc_centralized`` is
scikit-learn's ``LogisticRegression`` (same features, same C = 1/l2, same
split) fit on the pooled data in the same run. ``floor_seconds`` is the
run's own crypto at its single-operation speed measured in the same run,
divided over the workers: X25519 scalar multiplications (each side blinds
its points and re-blinds the other's, dummies included), hash-to-curve of
the partner's slots, Paillier encryptions (the brand's labels, the
partner's masks and re-randomizations) and HE multiplications (modular
multiplications mod n², as the partner counted them). The X25519 speed is
that of the worker pool blinding ``--floor-sample`` points at once,
sustained, before and after the run (see bench/attribution.py).
``score_seconds_per_million`` is plaintext scoring of the whole base.
``he_score_seconds`` is HE scoring of a brand-owned model (``--he-features``
of the partner's columns, half 0/1 and half numeric on 16 levels, random
weights) over every partner user, from the hello to the tiers on disk, with
the feature file already read (``he_score_read_seconds``). Prints one JSON
line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import pandas as pd
from common import RssSampler, measure_floor, retry_until_up, start_node, work_dir
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.lookalike import (
    LookalikeRequest,
    prepare_lookalike,
    run_lookalike,
    shared_id_columns,
)
from cleanroom.client.scoring import ScoreRequest, prepare_score, run_score, upload_model
from cleanroom.client.sdk import Connection, SeedLabels, upload_audience
from cleanroom.federated.lookalike.messages import LookalikeMode
from cleanroom.federated.lookalike.partner import score_rows
from cleanroom.federated.lookalike.reference import brand_labels, pooled_labels
from cleanroom.federated.lookalike.synth import synthesize_lookalike
from cleanroom.federated.paillier import generate_keypair
from cleanroom.matching.workers import DUMMY_DST, CryptoPool, default_workers, hash_points
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import SqlStore


def _hash_sample(count: int) -> float:
    digests = os.urandom(32 * count)
    start = time.perf_counter()
    hash_points(digests, DUMMY_DST)
    return time.perf_counter() - start


def hash_seconds_per_op(workers: int, count: int = 20_000) -> float:
    """One worker's time per hash-to-curve, with every worker busy."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        list(ex.map(_hash_sample, [64] * workers))
        times = list(ex.map(_hash_sample, [count] * workers))
    return float(np.mean(times)) / count


def paillier_seconds() -> tuple[float, float]:
    """Seconds per key-owner encryption of a 0/1 label, and per multiplication mod n²."""
    public, private = generate_keypair(2048)
    private.precompute()
    labels = [0, 1] * 500
    start = time.perf_counter()
    private.encrypt_many(labels)
    per_encryption = (time.perf_counter() - start) / len(labels)
    cts = [gmpy2.mpz(c) for c in private.encrypt_many(labels[:200])]
    n2 = gmpy2.mpz(public.n) ** 2
    acc = gmpy2.mpz(1)
    start = time.perf_counter()
    for _ in range(50):
        for c in cts:
            acc = acc * c % n2
    per_multiplication = (time.perf_counter() - start) / (50 * len(cts))
    return per_encryption, per_multiplication


def he_score(
    node: Any, synth: Any, features: int, pool: CryptoPool, work: Path, seed: int
) -> dict[str, Any]:
    """Register a model over ``features`` of the partner's columns and score every user."""
    rng = np.random.default_rng(seed)
    binary = list(synth.binary[: features // 2])
    numeric = list(synth.numeric[: features - len(binary)])
    frame = pd.read_csv(synth.features_path, usecols=numeric, nrows=50_000)
    spec: list[dict[str, Any]] = [{"name": name} for name in binary]
    for name in numeric:
        low, high = np.percentile(frame[name], [1, 99])
        spec.append({"name": name, "min": float(low), "max": float(high), "levels": 16})
    model = {
        "features": spec,
        "weights": rng.normal(0, 1, len(spec)).round(4).tolist(),
        "intercept": -2.0,
    }
    path = work / "model.json"
    path.write_text(json.dumps(model))
    upload_model(Connection(node.target, node.tokens["admin"]), "bench", path)
    start = time.perf_counter()
    prepared = prepare_score(
        ScoreRequest(model="bench", features=synth.features_path, out_dir=work / "scored"),
        pool.executor,
    )
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    manifest = asyncio.run(run_score(Connection(node.target, node.tokens["partner"]), prepared))
    seconds = time.perf_counter() - start
    logging.info("HE scoring of %d users in %.1f s", manifest["scored"], seconds)
    return {
        "users": manifest["scored"],
        "seconds": round(seconds, 3),
        "read_seconds": round(read_seconds, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partner-users", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--matched", type=int, default=50_000)
    parser.add_argument("--binary", type=int, default=30)
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--mode", choices=[m.value for m in LookalikeMode], default="hidden-seed")
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--epsilon", type=float, default=0.0)
    parser.add_argument(
        "--no-match-first",
        action="store_true",
        help="matched: exchange every row's slots instead of matching first (OT-extension)",
    )
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--floor-sample", type=int, default=600_000)
    parser.add_argument(
        "--he-features", type=int, default=20, help="features of the HE-scored model (0: skip)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)9.0f ms  %(message)s"
    )
    workers = args.workers
    work = work_dir("cleanroom-bench-lookalike-")
    started = time.perf_counter()
    synth = synthesize_lookalike(
        work / "data",
        partner_users=args.partner_users,
        customers=args.customers,
        matched=args.matched,
        binary=args.binary,
        numeric=args.numeric,
        seed=args.seed,
    )
    logging.info("synthesized the world in %.1f s", time.perf_counter() - started)
    options = NormalizeOptions(default_region="US")
    brand_ids = parse_id_columns("email,phone")
    node = start_node(work / "node", workers)
    try:
        admin = Connection(node.target, node.tokens["admin"])
        retry_until_up(
            node,
            lambda: asyncio.run(
                upload_audience(
                    admin,
                    name="crm",
                    path=synth.crm_path,
                    id_columns=brand_ids,
                    options=options,
                    labels=SeedLabels("tier", ("gold",)),
                )
            ),
        )
        logging.info("brand uploaded its CRM")
        request = LookalikeRequest(
            audience="crm",
            users=synth.users_path,
            features=synth.features_path,
            id_columns=parse_id_columns("email,phone,maid"),
            options=options,
            out_dir=work / "package",
            feature_columns=synth.feature_spec,
            mode=LookalikeMode(args.mode),
            holdout=args.holdout,
            l2=args.l2,
            epsilon=args.epsilon,
            match_first=not args.no_match_first,
        )
        pool_seconds_per_op = [measure_floor(args.floor_sample, workers) / args.floor_sample]
        with (
            CryptoPool.processes(workers) as pool,
            RssSampler({"brand": node.process.pid, "partner": os.getpid()}) as rss,
        ):
            start = time.perf_counter()
            request = shared_id_columns(Connection(node.target, node.tokens["partner"]), request)
            prepared = prepare_lookalike(request, pool.executor)
            logging.info("partner read its files in %.1f s", time.perf_counter() - start)
            manifest = asyncio.run(
                run_lookalike(Connection(node.target, node.tokens["partner"]), prepared)
            )
            seconds = time.perf_counter() - start
            he = (
                he_score(node, synth, args.he_features, pool, work, args.seed)
                if args.he_features
                else {}
            )
        pool_seconds_per_op.append(measure_floor(args.floor_sample, workers) / args.floor_sample)
    finally:
        node.stop()
    # The brand's own metrics (under label-DP the partner gets none): its stored package.
    store = SqlStore(ServerSettings(data_dir=work / "node").resolved_database_url())
    try:
        tenant = store.find_tenant("bench")
        record = store.get_lookalike(tenant.tenant_id, manifest["package_id"]) if tenant else None
        auc_brand = record.report.auc if record else None
    finally:
        store.close()
    partner = prepared.partner
    users = prepared.users
    assert partner.model is not None and partner.accepted is not None

    # The centralized baseline: the pooled labels by a plaintext join, same split.
    y, matched = pooled_labels(
        users.data, brand_labels(synth.crm_path, brand_ids, options, "tier", ["gold"])
    )
    x = users.features.floats()
    train, holdout = partner.train_users, partner.holdout_users
    start = time.perf_counter()
    central = LogisticRegression(C=1 / args.l2, tol=1e-8, max_iter=10_000)
    central.fit(x[train], y[train])
    central_seconds = time.perf_counter() - start
    auc_centralized = float(roc_auc_score(y[holdout], central.decision_function(x[holdout])))
    del x
    start = time.perf_counter()
    score_rows(partner.model, users.features)
    score_seconds = time.perf_counter() - start

    offered = len(partner.records)
    # The slots exchanged: every offered row's, or (matched, matching first) the matched
    # rows' only. The OT-extension match itself (AES, no public-key work) has no floor
    # term here: its time counts against the ratio.
    slots = partner.exchanged_rows * partner.slots
    list_points = 2 * partner.accepted.brand_points
    x25519_ops = 2 * slots + 2 * list_points
    hash_ops = slots + list_points  # partner slots; the brand's lists (dummies hashed in-run)
    encryptions = partner.paillier_encryptions + (
        offered if partner.mode is LookalikeMode.HIDDEN_SEED else int(matched.sum())
    )
    per_x25519 = float(np.mean(pool_seconds_per_op)) * workers
    per_hash = hash_seconds_per_op(workers)
    per_encryption, per_multiplication = paillier_seconds()
    floor = (
        x25519_ops * per_x25519
        + hash_ops * per_hash
        + encryptions * per_encryption
        + partner.he_multiplications * per_multiplication
    ) / workers
    metrics = manifest.get("metrics") or {}
    print(
        json.dumps(
            {
                "bench": "lookalike",
                "mode": args.mode,
                "partner_users": args.partner_users,
                "seed": int(y.sum()),  # seeds among the partner's users (matched)
                "features": int(users.features.values.shape[1]),
                "auc_private": auc_brand,  # the brand's holdout AUC (with label-DP: noisy)
                "epsilon": args.epsilon,
                "auc_centralized": round(auc_centralized, 6),
                "fit_seconds": round(partner.fit_seconds, 3),
                "centralized_fit_seconds": round(central_seconds, 3),
                "seconds": round(seconds, 3),
                "paillier_encryptions": encryptions,
                "he_multiplications": partner.he_multiplications,
                "x25519_ops": x25519_ops,
                "hash_to_curve_ops": hash_ops,
                "floor_seconds": round(floor, 3),
                "ratio_to_floor": round(seconds / floor, 3),
                "score_seconds_per_million": round(score_seconds * 1e6 / args.partner_users, 3),
                "he_score_users": he.get("users"),
                "he_score_seconds": he.get("seconds"),
                "he_score_read_seconds": he.get("read_seconds"),
                "he_score_features": args.he_features or None,
                "peak_rss_mb": round(rss.peak_process_mb, 1),
                "peak_rss_tree_mb": {k: round(v, 1) for k, v in rss.peak_tree_mb.items()},
                "workers": workers,
                "offered": offered,
                "exchanged_rows": partner.exchanged_rows,
                "match_first": prepared.matched_users is not None,
                "lift_at_5": (metrics.get("lift_at") or {}).get("5"),
                "x25519_us": round(per_x25519 * 1e6, 2),
                "hash_to_curve_us": round(per_hash * 1e6, 2),
                "paillier_encrypt_us": round(per_encryption * 1e6, 2),
                "he_multiplication_us": round(per_multiplication * 1e6, 3),
                "package_id": manifest["package_id"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
