"""Lookalike jobs over real gRPC: a labelled audience, a partner's files, a package."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.lookalike import (
    LookalikeRequest,
    PreparedLookalike,
    prepare_lookalike,
    run_lookalike,
    shared_id_columns,
)
from cleanroom.client.sdk import ClientError, Connection, SeedLabels, upload_audience
from cleanroom.federated.lookalike.messages import LookalikeMode, SlotPoints
from cleanroom.federated.lookalike.synth import synthesize_lookalike
from cleanroom.matching.bulk import FileArray
from cleanroom.proto.errors import InvalidInput
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Policy, Role, SqlStore
from tests.helpers import eventually

CLI = [sys.executable, "-m", "cleanroom.client.cli"]
OPTIONS = NormalizeOptions(default_region="US")
BRAND_IDS = parse_id_columns("email,phone")
PARTNER_IDS = parse_id_columns("email,phone,maid")
TENANTS = {
    "brand": Policy(min_lookalike_seed=100, sessions_per_day=1000),
    "strict": Policy(
        min_lookalike_seed=100,
        sessions_per_day=1000,
        lookalike_modes=("hidden-seed",),
        lookalike_dp="gaussian",
        lookalike_epsilon=2.0,
        lookalike_epsilon_budget=3.0,
    ),
    "big-seed": Policy(min_lookalike_seed=5000, sessions_per_day=1000),
    "ecdh-only": Policy(min_lookalike_seed=100, sessions_per_day=1000, match_methods=("ecdh",)),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("lookalike-e2e")
    synth = synthesize_lookalike(
        root / "data", partner_users=3000, customers=1400, matched=1000, seed=8
    )
    settings = ServerSettings(data_dir=root / "node", grpc_port=0, http_port=0, workers=2)
    settings.data_dir.mkdir()
    store = SqlStore(settings.resolved_database_url())
    tokens = {name: store.provision_tenant(name, policy)[1] for name, policy in TENANTS.items()}
    store.close()
    with BrandNodeThread(settings) as node:
        for t in tokens.values():
            asyncio.run(
                upload_audience(
                    Connection(node.target, t[Role.ADMIN]),
                    name="crm",
                    path=synth.crm_path,
                    id_columns=BRAND_IDS,
                    options=OPTIONS,
                    labels=SeedLabels("tier", ("gold",)),
                )
            )
        yield {"node": node, "synth": synth, "tokens": tokens, "settings": settings, "root": root}


def request(world: dict[str, Any], out: str, **changes: Any) -> LookalikeRequest:
    synth = world["synth"]
    base = LookalikeRequest(
        audience="crm",
        users=synth.users_path,
        features=synth.features_path,
        id_columns=PARTNER_IDS,
        options=OPTIONS,
        out_dir=world["root"] / out,
        feature_columns=synth.feature_spec,
    )
    return dataclasses.replace(base, **changes)


def run(world: dict[str, Any], prepared: PreparedLookalike, tenant: str = "brand") -> Any:
    conn = Connection(world["node"].target, world["tokens"][tenant][Role.PARTNER])
    return asyncio.run(run_lookalike(conn, prepared))


def store(world: dict[str, Any]) -> SqlStore:
    return SqlStore(world["settings"].resolved_database_url())


def tenant_id(world: dict[str, Any], name: str) -> str:
    s = store(world)
    try:
        found = s.find_tenant(name)
        assert found is not None
        return found.tenant_id
    finally:
        s.close()


def test_hidden_seed_job_writes_the_package_and_stores_its_metadata(
    world: dict[str, Any],
) -> None:
    req = request(world, "package")
    manifest = run(world, prepare_lookalike(req))
    out = req.out_dir
    users = pd.read_csv(world["synth"].users_path, dtype=str)
    assert manifest["mode"] == "hidden-seed"
    assert manifest["scored"] == len(users)
    assert [t["percent"] for t in manifest["tiers"]] == [1.0, 2.0, 5.0, 10.0]
    previous: set[str] = set()
    for tier in manifest["tiers"]:
        csv = pd.read_csv(tier["path"], dtype={"user_id": str})
        parquet = pq.read_table(tier["parquet"]).to_pandas()
        assert len(csv) == tier["size"] == len(parquet)
        assert csv["user_id"].tolist() == parquet["user_id"].tolist()
        assert set(csv["user_id"]) <= set(users["user_id"])
        assert previous <= set(csv["user_id"])  # nested
        assert csv["score"].is_monotonic_decreasing
        previous = set(csv["user_id"])
    scores = pq.read_table(manifest["paths"]["scores"]).to_pandas()
    assert sorted(scores["user_id"]) == sorted(users["user_id"])
    model = json.loads(Path(manifest["paths"]["model"]).read_text())
    assert model["package_id"] == manifest["package_id"]
    assert len(model["model"]["weights"]) == len(model["features"])
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    metrics = manifest["metrics"]
    assert metrics["auc"] > 0.65
    # Realistic signal: the 5 % tier finds seeds at well over twice the random rate.
    assert metrics["lift_at"]["5"] >= 2.0, metrics
    s = store(world)
    try:
        record = s.get_lookalike(tenant_id(world, "brand"), manifest["package_id"])
        assert record is not None
        report = record.report
        assert report.mode == "hidden-seed" and report.auc == pytest.approx(metrics["auc"])
        assert [t.size for t in report.tiers] == [t["size"] for t in manifest["tiers"]]
        assert report.intersection >= report.seeds > 0
        sessions = [x for x in s.list_sessions(record.tenant_id) if x.protocol == "lookalike"]
        assert sessions and sessions[-1].status == "done"
    finally:
        s.close()


def test_the_same_submission_returns_the_same_package(world: dict[str, Any]) -> None:
    req = request(world, "again", mode=LookalikeMode.MATCHED)
    first = run(world, prepare_lookalike(req))
    second = run(world, prepare_lookalike(req))
    assert second["package_id"] == first["package_id"]
    assert second == first  # read back from the package's manifest
    s = store(world)
    try:
        tenant = tenant_id(world, "brand")
        ids = [r.report_id for r in s.list_lookalikes(tenant)]
        assert ids.count(first["package_id"]) == 1
    finally:
        s.close()


def test_matched_mode_excludes_the_brands_customers(world: dict[str, Any], tmp_path: Path) -> None:
    """Run with the identifier columns (past 0 bytes) in files under a work directory:
    created for them, empty afterwards."""
    req = request(world, "matched", mode=LookalikeMode.MATCHED, l2=0.5)
    work = tmp_path / "work"
    prepared = prepare_lookalike(req, spill_dir=work, memory_bytes=0)
    assert all(isinstance(c.rows, FileArray) for c in prepared.users.data.columns)
    manifest = run(world, prepared)
    assert work.is_dir() and list(work.iterdir()) == []
    assert manifest["mode"] == "matched"
    assert manifest["excluded"] > 0
    assert manifest["scored"] + manifest["excluded"] == 3000


def test_a_mode_the_policy_forbids_is_refused(world: dict[str, Any]) -> None:
    prepared = prepare_lookalike(request(world, "x", mode=LookalikeMode.MATCHED, epsilon=1.0))
    with pytest.raises(ClientError) as info:
        run(world, prepared, "strict")
    assert info.value.code == "FAILED_PRECONDITION"
    assert "lookalike mode matched is not allowed" in info.value.message


def test_label_dp_is_required_charged_and_limited(world: dict[str, Any]) -> None:
    with pytest.raises(ClientError, match="adds label-DP to every lookalike") as info:
        run(world, prepare_lookalike(request(world, "dp0")), "strict")
    assert info.value.code == "FAILED_PRECONDITION"
    with pytest.raises(ClientError, match="above this brand's largest per-job epsilon"):
        run(world, prepare_lookalike(request(world, "dp9", epsilon=2.5)), "strict")
    manifest = run(world, prepare_lookalike(request(world, "dp2", epsilon=2.0)), "strict")
    assert manifest["epsilon"] == 2.0
    assert manifest["metrics"]["withheld"] and manifest["metrics"]["auc"] is None
    s = store(world)
    try:
        tenant = tenant_id(world, "strict")
        charges = [e for e in s.ledger(tenant) if e.purpose == "lookalike"]
        assert [(e.report_id, e.epsilon) for e in charges] == [(manifest["package_id"], 2.0)]
        record = s.get_lookalike(tenant, manifest["package_id"])
        assert record is not None and record.report.privacy.sigma > 0
        assert record.report.auc is not None  # the brand keeps its own metrics
    finally:
        s.close()
    # 2 of 3 spent: another job at 2 would overspend, and is refused before any work.
    with pytest.raises(ClientError, match="lookalike epsilon budget exceeded") as info:
        run(world, prepare_lookalike(request(world, "dp2b", epsilon=2.0, holdout=0.25)), "strict")
    assert info.value.code == "FAILED_PRECONDITION"


def test_an_audience_with_too_few_seeds_is_refused(world: dict[str, Any]) -> None:
    with pytest.raises(ClientError, match="needs at least 5000 matched seeds") as info:
        run(world, prepare_lookalike(request(world, "few")), "big-seed")
    assert info.value.code == "FAILED_PRECONDITION"


def test_an_admin_token_cannot_run_a_job(world: dict[str, Any]) -> None:
    conn = Connection(world["node"].target, world["tokens"]["brand"][Role.ADMIN])
    with pytest.raises(ClientError) as info:
        asyncio.run(run_lookalike(conn, prepare_lookalike(request(world, "admin"))))
    assert info.value.code == "PERMISSION_DENIED"


class _Disconnect(Exception):
    pass


def test_a_partner_that_disconnects_leaves_a_failed_job_and_no_package(
    world: dict[str, Any],
) -> None:
    req = request(world, "gone", holdout=0.3)
    prepared = prepare_lookalike(req)
    partner = prepared.partner
    original = partner.outgoing

    async def cut_short() -> AsyncIterator[Any]:
        sent = 0
        async for msg in original():
            yield msg
            sent += isinstance(msg, SlotPoints)
            if sent == 2:
                raise _Disconnect("the partner went away")

    partner.outgoing = cut_short  # type: ignore[method-assign]
    with pytest.raises((_Disconnect, ClientError)):
        run(world, prepared)
    tenant = tenant_id(world, "brand")

    def failed() -> bool:
        s = store(world)
        try:
            jobs = [x for x in s.list_sessions(tenant) if x.protocol == "lookalike"]
            return bool(jobs) and jobs[-1].status == "failed"
        finally:
            s.close()

    eventually(failed, what="the job marked failed")
    s = store(world)
    try:
        keys = {r.submission_key for r in s.list_lookalikes(tenant)}
        assert prepared.partner.submission_key not in keys
    finally:
        s.close()
    assert not req.out_dir.exists() or not any(req.out_dir.iterdir())
    # The node still serves: the same job runs to the end afterwards.
    manifest = run(world, prepare_lookalike(req))
    assert manifest["package_id"]


def test_only_identifier_types_the_audience_holds_are_offered(world: dict[str, Any]) -> None:
    conn = Connection(world["node"].target, world["tokens"]["brand"][Role.PARTNER])
    req = request(world, "shared")
    shared = shared_id_columns(conn, req)
    assert [c.id_type for c in shared.id_columns] == ["email", "phone"]  # no maid on the CRM
    prepared = prepare_lookalike(shared)
    assert prepared.partner.slots == 2
    with pytest.raises(InvalidInput, match="holds email, phone; none of the identifier"):
        shared_id_columns(conn, dataclasses.replace(req, id_columns=parse_id_columns("maid")))
    assert shared_id_columns(conn, dataclasses.replace(req, audience="nope")).audience == "nope"


@pytest.mark.parametrize("tenant", ["brand", "ecdh-only"])
def test_a_matched_job_matches_first_and_exchanges_only_the_matches(
    world: dict[str, Any], tenant: str
) -> None:
    """By the OT-extension PSI first, then the slots of the matched rows only: the same
    counts on the brand node and the same excluded users as exchanging every row's slots.
    A brand whose policy allows no OT-extension match gets every row's slots instead."""
    results = {}
    for first in (True, False):
        # Another L2 each: another submission (the same one would return the package).
        req = request(
            world, f"first-{tenant}-{first}", mode=LookalikeMode.MATCHED, l2=0.8 if first else 0.9
        )
        prepared = prepare_lookalike(dataclasses.replace(req, match_first=first))
        manifest = run(world, prepared, tenant)
        s = store(world)
        try:
            tenant_key = tenant_id(world, tenant)
            record = s.get_lookalike(tenant_key, manifest["package_id"])
            sessions = s.list_sessions(tenant_key)
        finally:
            s.close()
        assert record is not None
        job = [x for x in sessions if x.protocol == "lookalike"][-1]
        slots = prepared.partner.slots
        results[first] = (record.report.intersection, record.report.seeds, manifest["excluded"])
        assert manifest["scored"] + manifest["excluded"] == 3000
        assert job.declared_points == len(prepared.partner.records) * slots  # at its hello
        assert prepared.partner.match_first == first
        if first and tenant == "brand":
            assert prepared.matched_users is not None
            assert prepared.partner.exchanged_rows == int(prepared.matched_users.sum())
            assert prepared.partner.exchanged_rows == record.report.intersection
        else:  # not asked, or refused (the policy allows no KKRT match): every row's
            assert prepared.matched_users is None
            assert prepared.partner.exchanged_rows == len(prepared.partner.records)
    assert results[True] == results[False]


def test_partner_lookalike_through_the_cli_matches_first(world: dict[str, Any]) -> None:
    """``partner lookalike --mode matched``: the match first (its phase on the progress
    line), the package's manifest as JSON; ``--no-match-first`` excludes the same users."""
    synth = world["synth"]
    token = world["tokens"]["brand"][Role.PARTNER]
    manifests = []
    for flag, l2 in (("--match-first", "0.6"), ("--no-match-first", "0.7")):
        out = world["root"] / f"cli{flag}"
        done = subprocess.run(
            [
                *CLI,
                "partner",
                "lookalike",
                "--server",
                world["node"].target,
                "--token",
                token,
                "--audience",
                "crm",
                "--users",
                str(synth.users_path),
                "--id-columns",
                "email,phone,maid",
                "--default-region",
                "US",
                "--features",
                str(synth.features_path),
                "--feature-columns",
                synth.feature_spec,
                "--mode",
                "matched",
                "--l2",
                l2,
                "--workers",
                "1",
                flag,
                "--out",
                str(out),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        manifest = json.loads(done.stdout)
        assert manifest["mode"] == "matched" and Path(manifest["paths"]["model"]).is_file()
        manifests.append(manifest)
    first, every = manifests
    assert first["excluded"] == every["excluded"] > 0
    assert first["scored"] == every["scored"] == 3000 - first["excluded"]
