"""Attribution over real gRPC: upload conversions, run, read the report."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.attribution import (
    AttributionProgress,
    AttributionRequest,
    PreparedAttribution,
    prepare_attribution,
    run_attribution,
    upload_conversions,
)
from cleanroom.client.sdk import ClientError, Connection
from cleanroom.federated.attribution.inputs import read_spend
from cleanroom.federated.attribution.messages import AttrRound, Windows
from cleanroom.federated.attribution.reference import reference_report
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.federated.attribution.tokens import PRECOMPUTED_LAGS, day_dst
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.server import attribution as server_attribution
from cleanroom.server.attribution import (
    AttributionService,
    LegacyConversions,
    StoredConversions,
    event_groups,
)
from cleanroom.server.datasets import open_dataset, remove_stored
from cleanroom.server.lifecycle import delete_conversions
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import ConversionSetRecord, Policy, Principal, Role, SqlStore
from tests.helpers import assert_reports_equal, eventually, temporaries

OPTIONS = NormalizeOptions(default_region="US")
BRAND_IDS = parse_id_columns("email,phone")
PARTNER_IDS = parse_id_columns("email,phone,maid")


def upload(admin: Connection, synth: Any, name: str = "sales", **options: Any) -> dict[str, Any]:
    options.setdefault("path", synth.conversions_path)
    return asyncio.run(
        upload_conversions(
            admin,
            name=name,
            id_columns=BRAND_IDS,
            options=OPTIONS,
            customer_column="customer_id",
            time_column="ts",
            value_column="value",
            **options,
        )
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("attr-e2e")
    synth = synthesize_attribution(
        root / "data",
        customers=250,
        conversions=400,
        partner_users=300,
        exposure_rows=1200,
        campaigns=3,
        seed=9,
        days=20,
    )
    settings = ServerSettings(data_dir=root / "node", grpc_port=0, http_port=0, workers=1)
    settings.data_dir.mkdir()
    store = SqlStore(settings.resolved_database_url())
    _, tokens = store.provision_tenant(
        "brand", Policy(min_partner_records=10, aggregation_threshold=0)
    )
    _, dp_tokens = store.provision_tenant(
        "dp-brand",
        Policy(min_partner_records=10, aggregation_threshold=0, dp="laplace", epsilon_budget=1.0),
    )
    store.close()
    with BrandNodeThread(settings) as node:
        for t in (tokens, dp_tokens):
            upload(Connection(node.target, t[Role.ADMIN]), synth)
        yield {
            "node": node,
            "synth": synth,
            "tokens": tokens,
            "dp_tokens": dp_tokens,
            "settings": settings,
        }


def request(synth: Any, **changes: Any) -> AttributionRequest:
    base = AttributionRequest(
        conversions="sales",
        exposures=synth.exposures_path,
        id_columns=PARTNER_IDS,
        options=OPTIONS,
        spend=synth.spend_path,
    )
    return dataclasses.replace(base, **changes)


def run_prepared(
    world: dict[str, Any],
    prepared: PreparedAttribution,
    tokens: str = "tokens",
    on_progress: Callable[[AttributionProgress], None] | None = None,
) -> str:
    node = world["node"]
    conn = Connection(node.target, world[tokens][Role.PARTNER])
    return asyncio.run(run_attribution(conn, prepared, on_progress))


def attribute(world: dict[str, Any], req: AttributionRequest, tokens: str = "tokens") -> str:
    return run_prepared(world, prepare_attribution(req), tokens)


def stored(world: dict[str, Any], report_id: str, tokens: str = "tokens") -> dict[str, Any]:
    node = world["node"]
    resp = httpx.get(
        f"http://127.0.0.1:{node.ports.http}/v1/reports/{report_id}",
        headers={"authorization": f"Bearer {world[tokens][Role.ANALYST]}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def plaintext(synth: Any, exposures: Path) -> dict[str, Any]:
    """The report computed in the clear with pandas (threshold 0, DP off)."""
    return reference_report(
        pd.read_csv(synth.conversions_path, dtype=str, keep_default_na=False),
        pd.read_csv(exposures, dtype=str, keep_default_na=False),
        id_columns=PARTNER_IDS,
        options=OPTIONS,
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
        spend=read_spend(synth.spend_path),
        threshold=0,
    ).model_dump(mode="json")


def test_report_over_grpc_equals_plaintext(world: dict[str, Any]) -> None:
    synth = world["synth"]
    report_id = attribute(world, request(synth))
    report = stored(world, report_id)
    want = plaintext(synth, synth.exposures_path)
    assert report["report_id"] == report_id
    assert_reports_equal(report, want)
    assert sum(c["exposed"]["conversions"] for c in report["campaigns"]) > 10


def test_progress_reports_each_phase_and_every_token(world: dict[str, Any]) -> None:
    prepared = prepare_attribution(request(world["synth"], windows=Windows(7, 2)))
    seen: list[AttributionProgress] = []
    report_id = run_prepared(
        world, prepared, on_progress=lambda p: seen.append(dataclasses.replace(p))
    )
    assert report_id
    phases = [p.phase for i, p in enumerate(seen) if i == 0 or p.phase != seen[i - 1].phase]
    assert phases == [
        "waiting for the brand node",
        "hashing the exposure log",
        "blinding and sending tokens",
        "computing the encrypted sums",
        "waiting for the report",
    ]
    partner, last = prepared.partner, seen[-1]
    assert partner.accepted is not None
    assert last.tokens_sent == last.tokens_total == sum(partner.cell_tokens) > 0
    assert last.brand_received == last.brand_total == partner.accepted.brand_tokens > 0
    for counts in ([p.tokens_sent for p in seen], [p.brand_received for p in seen]):
        assert counts == sorted(counts)


def stored_set(world: dict[str, Any], name: str) -> ConversionSetRecord:
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        tenant = store.find_tenant("brand")
        assert tenant is not None
        record = store.get_conversion_set(tenant.tenant_id, name)
    finally:
        store.close()
    assert record is not None
    return record


def test_upload_stores_a_partitioned_set_with_hashed_points_and_replacing_removes_it(
    world: dict[str, Any],
) -> None:
    node, synth = world["node"], world["synth"]
    data_dir = world["settings"].data_dir
    admin = Connection(node.target, world["tokens"][Role.ADMIN])
    first = upload(admin, synth, "sales-points", chunk_rows=150)  # several chunks
    record = stored_set(world, "sales-points")
    stored_at = data_dir / record.path
    dataset = open_dataset(stored_at)
    # By identifier type and digest bucket, every part in its bucket, events aside.
    assert {p.id_type for p in dataset.parts} == {"email", "phone"}
    assert all(f"id_type={p.id_type}" in p.path.parts[-3] for p in dataset.parts)
    for part in dataset.parts:
        digests = dataset.read(part, ["digest"]).column("digest").to_pylist()
        bits = dataset.bits[str(part.id_type)]
        assert {int.from_bytes(d[:2], "big") >> (16 - bits) for d in digests} <= {part.bucket}
    ids = dataset.read_all(["event", "id_type", "digest", "points"])
    events = dataset.side_table("events")
    assert ids.num_rows == first["identifiers"] and events.num_rows == first["events"]
    frame = pd.read_csv(synth.conversions_path, dtype=str, keep_default_na=False)
    assert events.num_rows == len(frame)
    # Each identifier's points are hash_to_curve(digest || day - lag) for lags 0..7.
    for row in (0, ids.num_rows // 2, ids.num_rows - 1):
        digest = ids.column("digest")[row].as_py()
        day = events.column("day")[ids.column("event")[row].as_py()].as_py()
        dst = day_dst(ids.column("id_type")[row].as_py())
        point = ids.column("points")[row].as_py()
        for lag in range(PRECOMPUTED_LAGS):
            want = hash_to_curve(digest + (day - lag).to_bytes(4, "big"), dst)
            assert point[32 * lag : 32 * (lag + 1)] == want
    assert not temporaries(data_dir)
    # A run reads the identifiers a partition at a time: every partition once, all of
    # them together the whole set, with its stored points.
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        service = AttributionService(store, data_dir)
        _, source = service.load(Principal(record.tenant_id, Role.ADMIN), "sales-points")
    finally:
        store.close()
    assert isinstance(source, StoredConversions) and source.events == first["events"]
    assert source.held_types() == ("email", "phone")
    parts = list(source.identifier_parts(("email", "phone")))
    assert len(parts) == len(dataset.parts) >= 2  # a small set: one bucket per type
    assert sum(len(part.event) for part in parts) == source.identifier_count(("email", "phone"))
    assert source.identifier_count(("email", "phone")) == ids.num_rows
    assert source.identifier_count(("phone",)) == sum(
        len(part.event) for part in source.identifier_parts(("phone",))
    )
    every = sorted(bytes(d) for part in parts for d in part.digest)
    assert every == sorted(ids.column("digest").to_pylist())
    # Each identifier carries its event's day, as the events table has it.
    event_day = np.asarray(events.column("day").to_pylist())
    assert all(part.day.tolist() == event_day[part.event].tolist() for part in parts)
    assert sum(g.customers for g in source.event_groups()) == record.customers
    assert all(part.points is not None and part.points.shape[1:] == (8, 32) for part in parts)

    second = upload(admin, synth, "sales-points", chunk_rows=150, replace=True)
    assert not stored_at.exists()
    assert (stored_at.parent / second["conversions_id"] / "_manifest.json").is_file()


def test_a_partitioned_set_stored_without_days_reads_them_from_its_events(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A set of the release before identifiers carried their event's day (no ``day``
    column in its parts nor its manifest) gives a run the same identifiers, with the
    days its events table has."""
    record = stored_set(world, "sales")
    stored_at = tmp_path / "older" / "set"
    shutil.copytree(world["settings"].data_dir / record.path, stored_at)
    current = StoredConversions.open(open_dataset(stored_at))
    want = list(current.identifier_parts(("email", "phone")))
    manifest = stored_at / "_manifest.json"
    doc = json.loads(manifest.read_text())
    for part in doc["parts"]:
        path = stored_at / part["path"]
        pq.write_table(pq.read_table(path).drop_columns(["day"]), path)
    doc["columns"] = [c for c in doc["columns"] if c != "day"]
    manifest.write_text(json.dumps(doc))
    older = StoredConversions.open(open_dataset(stored_at))
    assert "day" not in older.dataset.names
    got = list(older.identifier_parts(("email", "phone")))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert a.event.tolist() == b.event.tolist() and a.day.tolist() == b.day.tolist()


def write_legacy(stored_at: Path, points: bool = True) -> pa.Table:
    """A stored set's three files of an earlier release, beside it (the ids' and the
    points' row groups of different sizes); returns its identifiers."""
    dataset = open_dataset(stored_at)
    ids = dataset.read_all(["event", "id_type", "digest", "points"])
    base = str(stored_at)
    pq.write_table(dataset.side_table("events"), base + ".events.parquet")
    pq.write_table(ids.select(["event", "id_type", "digest"]), base + ".ids.parquet", 50)
    if points:
        pq.write_table(ids.select(["points"]), base + ".points.parquet", row_group_size=33)
    return ids


@pytest.mark.parametrize("points", [True, False])
def test_an_earlier_releases_identifiers_come_a_run_of_rows_at_a_time(
    world: dict[str, Any], tmp_path: Path, points: bool
) -> None:
    """Parts of 41 rows, whatever the files' row groups, put back together are the
    files' identifiers in order, with their points (or none, without the points file);
    the counts per type are the files'."""
    record = stored_set(world, "sales")
    stored_at = tmp_path / "legacy" / "set"
    shutil.copytree(world["settings"].data_dir / record.path, stored_at)
    ids = write_legacy(stored_at, points)
    legacy = LegacyConversions.open(stored_at, part_rows=41)
    events = open_dataset(stored_at).side_table("events")
    assert legacy.events == events.num_rows
    types = ids.column("id_type").to_pylist()
    assert legacy.held_types() == tuple(sorted(set(types)))
    assert legacy.identifier_count(("email",)) == types.count("email") > 0
    assert legacy.identifier_count(("email", "phone", "maid")) == len(types)
    parts = list(legacy.identifier_parts(("email", "phone")))
    assert len(parts) > 2 and all(len(p.event) <= 41 for p in parts)
    event_day = np.asarray(events.column("day").to_pylist())
    assert all(p.day.tolist() == event_day[p.event].tolist() for p in parts)
    assert sum(len(g.event) for g in legacy.event_groups()) == events.num_rows
    keep = [t in ("email", "phone") for t in types]
    want = ids.filter(pa.array(keep))
    assert [e for p in parts for e in p.event.tolist()] == want.column("event").to_pylist()
    assert [t for p in parts for t in p.id_type.tolist()] == want.column("id_type").to_pylist()
    digests = [bytes(d) for p in parts for d in p.digest]
    assert digests == want.column("digest").to_pylist()
    if points:
        got = b"".join(p.points.tobytes() for p in parts if p.points is not None)
        assert got == b"".join(want.column("points").to_pylist())
    else:
        assert all(p.points is None for p in parts)


def test_a_set_stored_as_three_files_by_an_earlier_release_runs_the_same(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout before partitioning (events, ids, points files beside the set's path)
    is read as it is, 97 identifiers a part (a digest's tokens in several parts): the
    same report as the partitioned set's and the plaintext one."""
    monkeypatch.setattr(server_attribution, "LEGACY_PART_ROWS", 97)
    node, synth = world["node"], world["synth"]
    admin = Connection(node.target, world["tokens"][Role.ADMIN])
    upload(admin, synth, "sales-legacy")
    record = stored_set(world, "sales-legacy")
    stored_at = world["settings"].data_dir / record.path
    write_legacy(stored_at)
    remove_stored(stored_at)
    report = stored(world, attribute(world, request(synth, conversions="sales-legacy")))
    assert_reports_equal(report, plaintext(synth, synth.exposures_path))
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        admin_of = Principal(record.tenant_id, Role.ADMIN)
        delete_conversions(store, world["settings"].data_dir, admin_of, "sales-legacy")
    finally:
        store.close()
    assert not list(stored_at.parent.glob(stored_at.name + "*"))


def test_same_submission_is_idempotent(world: dict[str, Any]) -> None:
    synth = world["synth"]
    first = attribute(world, request(synth, windows=Windows(3, 1)))
    second = attribute(world, request(synth, windows=Windows(3, 1)))
    assert first == second
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        tenant = store.find_tenant("brand")
        assert tenant is not None
        runs = [s for s in store.list_sessions(tenant.tenant_id) if s.protocol == "attribution"]
    finally:
        store.close()
    assert all(s.status == "done" for s in runs)


def test_dp_budget_is_charged_and_overspending_refused_before_work(world: dict[str, Any]) -> None:
    synth = world["synth"]
    with pytest.raises(ClientError, match=r"FAILED_PRECONDITION.*--epsilon"):
        attribute(world, request(synth), tokens="dp_tokens")
    first = attribute(world, request(synth, epsilon=0.6), tokens="dp_tokens")
    report = stored(world, first, tokens="dp_tokens")
    assert report["dp"]["mechanism"] == "laplace" and report["dp"]["epsilon"] == 0.6
    overspending = prepare_attribution(request(synth, epsilon=0.6, windows=Windows(5, 1)))
    with pytest.raises(ClientError, match="FAILED_PRECONDITION"):
        run_prepared(world, overspending, tokens="dp_tokens")
    # Refused at the hello: the partner never hashed its log.
    assert overspending.partner.round is AttrRound.HELLO
    assert overspending.partner.point_count == 0
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        tenant = store.find_tenant("dp-brand")
        assert tenant is not None
        assert [e.epsilon for e in store.ledger(tenant.tenant_id)] == [0.6]
    finally:
        store.close()


def test_refused_runs_charge_no_budget(world: dict[str, Any]) -> None:
    """No identifier type in common, or windows beyond 90 days: refused at the
    hello, before the DP charge and before the partner hashes its log."""
    synth = world["synth"]
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        tenant = store.find_tenant("dp-brand")
        assert tenant is not None
        before = store.ledger(tenant.tenant_id)
        for req, why in (
            (
                request(synth, id_columns=parse_id_columns("maid"), epsilon=0.1),
                r"FAILED_PRECONDITION.*no identifier type in common.*email, phone",
            ),
            (request(synth, windows=Windows(91, 1), epsilon=0.1), "windows are 0..90 days"),
        ):
            prepared = prepare_attribution(req)
            with pytest.raises(ClientError, match=why):
                run_prepared(world, prepared, tokens="dp_tokens")
            assert prepared.partner.round is AttrRound.HELLO
            assert store.ledger(tenant.tenant_id) == before
    finally:
        store.close()


def test_cells_with_no_identifier_in_common_count_their_users(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A campaign whose rows carry only maids (which the brand lacks) sends no
    tokens, yet its users count: the report still equals the plaintext one."""
    synth = world["synth"]
    exposures = pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False)
    extra = exposures.head(80).copy()
    extra["campaign_id"] = "camp_maids_only"
    extra["email"] = extra["phone"] = ""
    extra["maid"] = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(len(extra))]
    path = tmp_path / "exposures.csv"
    pd.concat([exposures, extra]).to_csv(path, index=False)
    prepared = prepare_attribution(request(synth, exposures=path))
    report_id = run_prepared(world, prepared)
    assert all(c.campaign_id != "camp_maids_only" for c in prepared.partner.cells)
    want = plaintext(synth, path)
    report = stored(world, report_id)
    assert_reports_equal(report, want)
    [maids] = [c for c in report["campaigns"] if c["campaign_id"] == "camp_maids_only"]
    assert maids["exposed"]["users"] + maids["holdout"]["users"] > 0


def test_bad_exposure_rows_fail_on_the_partner_machine(
    world: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "user_id,email,campaign_id,ts,touch,group\nu1,a@example.com,c1,2026-01-01,impression,exposed\n"
    )
    with pytest.raises(ValueError, match="touch"):
        prepare_attribution(
            request(
                world["synth"], exposures=path, id_columns=parse_id_columns("email"), spend=None
            )
        )
    path.write_text(
        "user_id,email,campaign_id,ts,touch,group\nu1,a@example.com,c1,yesterday,click,exposed\n"
    )
    with pytest.raises(ValueError, match="row 1"):
        prepare_attribution(
            request(
                world["synth"], exposures=path, id_columns=parse_id_columns("email"), spend=None
            )
        )


def test_unknown_conversions_and_wrong_role(world: dict[str, Any]) -> None:
    synth = world["synth"]
    with pytest.raises(ClientError, match="NOT_FOUND"):
        attribute(world, request(synth, conversions="nope"))
    node = world["node"]
    with pytest.raises(ClientError, match="PERMISSION_DENIED"):
        asyncio.run(
            run_attribution(
                Connection(node.target, world["tokens"][Role.ANALYST]),
                prepare_attribution(request(synth)),
            )
        )


def test_partner_disconnecting_mid_run_leaves_no_report(world: dict[str, Any]) -> None:
    synth = world["synth"]
    prepared = prepare_attribution(request(synth, windows=Windows(6, 1)))

    class Gone(Exception):
        pass

    def vanish() -> Any:
        raise Gone  # the partner dies after the brand sent everything

    prepared.partner.aggregates = vanish  # type: ignore[method-assign]
    with pytest.raises(Gone):
        run_prepared(world, prepared)
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        tenant = store.find_tenant("brand")
        assert tenant is not None

        def failed() -> bool:
            runs = [s for s in store.list_sessions(tenant.tenant_id) if s.protocol == "attribution"]
            return runs[-1].status == "failed"

        eventually(failed, what="the run to be marked failed")
        assert store.find_report(tenant.tenant_id, prepared.partner.submission_key) is None
    finally:
        store.close()


def assert_nothing_stored(world: dict[str, Any], name: str) -> None:
    """No conversion set ``name``, and (eventually) no staged files: the node drops a
    partial upload when it sees the cancellation, possibly just after the client's error."""
    store = SqlStore(world["settings"].resolved_database_url())
    try:
        tenant = store.find_tenant("brand")
        assert tenant is not None
        assert store.get_conversion_set(tenant.tenant_id, name) is None
    finally:
        store.close()
    data_dir = world["settings"].data_dir  # the set's temporary directory and its staging
    eventually(
        lambda: not temporaries(data_dir),
        what="the partial upload (events, staged identifiers and points) to be removed",
    )


def test_upload_failing_after_hashed_chunks_leaves_nothing(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """Chunks already stored and hashed to points are dropped with the failed upload."""
    rows = [f"c{i},u{i}@example.com,,2026-01-{1 + i % 28:02d}T10:00:00Z,5" for i in range(300)]
    path = tmp_path / "late.csv"
    lines = ["customer_id,email,phone,ts,value", *rows, "c9,x@example.com,,never,5"]
    path.write_text("\n".join(lines) + "\n")
    admin = Connection(world["node"].target, world["tokens"][Role.ADMIN])
    with pytest.raises(ValueError, match="conversions row 301: unparsable timestamp"):
        upload(admin, world["synth"], "late", path=path, chunk_rows=100)
    assert_nothing_stored(world, "late")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("customer_id,email,phone,ts,value\nc1,a@example.com,,2026-01-02,-5\n", "value"),
        ("customer_id,email,phone,ts,value\nc1,a@example.com,,2026-01-02,ten\n", "value"),
        ("customer_id,email,phone,ts,value\nc1,a@example.com,,not a date,5\n", "row 1"),
        ("customer_id,email,phone,ts,value\n", "no data rows"),
        ("", "empty"),
    ],
)
def test_bad_conversion_files_store_nothing(
    world: dict[str, Any], tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "conv.csv"
    path.write_text(content)
    node = world["node"]
    with pytest.raises(ValueError, match=why):
        asyncio.run(
            upload_conversions(
                Connection(node.target, world["tokens"][Role.ADMIN]),
                name="broken",
                path=path,
                id_columns=BRAND_IDS,
                options=OPTIONS,
                customer_column="customer_id",
                time_column="ts",
                value_column="value",
            )
        )
    assert_nothing_stored(world, "broken")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (
            "user_id,email,campaign_id,ts,touch,group\nu1,a@example.com,c1,2026-01-01,click,control\n",
            "group",
        ),
        ("user_id,email,campaign_id,ts,touch,group\n", "no"),
    ],
)
def test_bad_exposure_files(world: dict[str, Any], tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "exp.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=why):
        prepare_attribution(
            request(
                world["synth"], exposures=path, id_columns=parse_id_columns("email"), spend=None
            )
        )


def test_a_cancelled_run_drops_its_queued_jobs() -> None:
    """A partner that goes away must not leave its run's work queued in the pool."""
    import threading
    from concurrent.futures import CancelledError, ThreadPoolExecutor

    from cleanroom.matching.workers import RunJobs

    gate = threading.Event()
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        if i == 0:
            gate.wait(timeout=30)
        return i * 10

    with ThreadPoolExecutor(1) as pool:
        jobs = RunJobs(pool)
        assert jobs.run_many(job, [(1,), (2,)]) == [10, 20] and jobs.run(job, 3) == 30
        started.clear()
        outcome: list[object] = []

        def many() -> None:
            try:
                outcome.append(jobs.run_many(job, [(i,) for i in range(5)]))
            except CancelledError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=many)
        caller.start()
        eventually(lambda: started == [0], what="the first job to start")
        jobs.cancel()
        gate.set()
        caller.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)
        assert started == [0]  # the queued four never ran
        with pytest.raises(CancelledError):
            jobs.run(job, 7)
    here = RunJobs(None)
    assert here.run_many(job, [(4,)]) == [40]
    here.cancel()
    with pytest.raises(CancelledError):
        here.run_many(job, [(5,)])


@pytest.mark.parametrize(("memory_bytes", "bits"), [(None, None), (0, 0), (0, 3), (1 << 30, 4)])
def test_event_groups_hold_every_event_once_and_each_customer_in_one_group(
    tmp_path: Path, memory_bytes: int | None, bits: int | None
) -> None:
    """The events read in batches and grouped by a bucket of their customers' digests (in
    files or in memory): every event once, with its value as stored; a customer's events
    all in one group, numbered there as ``np.unique`` over the group's digests numbers
    them; no file left in the work directory, after the last group or when the groups
    are dropped early."""
    rng = np.random.default_rng(bits or 0)
    distinct = rng.integers(0, 256, size=(700, 32), dtype=np.uint8)
    customers = distinct[rng.integers(0, len(distinct), size=5_000)]
    values = rng.random(5_000) * 100
    path = tmp_path / "events.parquet"
    table = pa.table(
        {
            "customer": pa.array([bytes(c) for c in customers], pa.binary(32)),
            "day": pa.array(rng.integers(19_000, 19_400, size=5_000).astype(np.int32)),
            "value": pa.array(values),
        }
    )
    pq.write_table(table, path, row_group_size=777)
    work = tmp_path / "work"
    digests = customers.view("S32").ravel()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_attribution, "EVENT_BATCH_ROWS", 1000)  # several batches
        groups = list(
            event_groups(lambda: pq.ParquetFile(path), work, memory_bytes=memory_bytes, bits=bits)
        )
        assert not work.exists() or list(work.iterdir()) == []
        early = event_groups(lambda: pq.ParquetFile(path), work, memory_bytes=0, bits=3)
        next(early)
        assert list(work.iterdir())  # the staged buckets, while the groups are read
        early.close()
        assert list(work.iterdir()) == []
    assert len(groups) == (1 << bits if bits is not None else 1)
    every = np.concatenate([g.event for g in groups])
    assert sorted(every.tolist()) == list(range(5_000))
    seen: set[bytes] = set()
    for group in groups:
        _, want = np.unique(digests[group.event], return_inverse=True)
        assert group.customer.tolist() == want.tolist()
        assert group.customers == len(set(digests[group.event].tolist()))
        assert group.value.tolist() == values[group.event].tolist()
        mine = set(digests[group.event].tolist())
        assert not mine & seen
        seen |= mine
