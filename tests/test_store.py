"""The storage rules (server/store.py docstring), run on every backend.

SQLite always; PostgreSQL when CLEANROOM_TEST_POSTGRES_URL names a server
(``.ci/run`` starts one), through the very same code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from cleanroom.federated.attribution.report import AttributionReport
from cleanroom.federated.lookalike.brand_model import BrandModel, ModelFeature, RegisteredModel
from cleanroom.proto.errors import (
    AlreadyExists,
    BudgetExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
)
from cleanroom.server.store import (
    DEFAULT_PARTNER,
    AudienceRecord,
    AuditEntry,
    PartnershipId,
    Policy,
    ReportRecord,
    Role,
    SessionRecord,
    SqlStore,
    hash_token,
)
from tests.reports import sample_report

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("CLEANROOM_TEST_POSTGRES_URL") else [])


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return _fresh_postgres_database(os.environ["CLEANROOM_TEST_POSTGRES_URL"])


@pytest.fixture
def store(db_url: str) -> Iterator[SqlStore]:
    s = SqlStore(db_url)
    yield s
    s.close()


def pship(store: SqlStore, tenant_id: str, name: str) -> PartnershipId:
    """The partnership of ``tenant_id`` with its partner ``name`` (created on first use)."""
    partner = store.find_partner(tenant_id, name) or store.create_partner(tenant_id, name)
    return partner.partnership


def _fresh_postgres_database(base_url: str) -> str:
    from sqlalchemy import create_engine, make_url, text

    name = f"cleanroom_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def audience(tenant_id: str, name: str = "crm", elements: int = 10) -> AudienceRecord:
    return AudienceRecord(
        audience_id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        name=name,
        path=f"audiences/{tenant_id}/{name}.parquet",
        records=8,
        elements=elements,
        duplicates=2,
        elements_by_type={"email": elements},
        created_at=datetime.now(UTC),
    )


def test_tenants_are_unique_by_name(store: SqlStore) -> None:
    t = store.create_tenant("acme", Policy(min_partner_records=5, sessions_per_day=3))
    assert store.get_tenant(t.tenant_id) == t
    assert store.find_tenant("acme") == t
    assert t.policy == Policy(5, 3)
    with pytest.raises(AlreadyExists):
        store.create_tenant("acme")
    assert store.set_policy(t.tenant_id, Policy(7, 9)).policy == Policy(7, 9)
    with pytest.raises(NotFound):
        store.set_policy("nope", Policy())


def test_tokens_are_stored_hashed_and_resolve_to_their_role(
    store: SqlStore, tmp_path: Path
) -> None:
    t = store.create_tenant("acme")
    partner = store.create_partner(t.tenant_id, "streamco")
    tokens = {
        role: store.issue_token(
            t.tenant_id, role, partner_id=partner.partner_id if role is Role.PARTNER else None
        )
        for role in Role
    }
    assert len(set(tokens.values())) == 3
    for role, token in tokens.items():
        principal = store.authenticate(token)
        assert principal is not None and (principal.tenant_id, principal.role) == (
            t.tenant_id,
            role,
        )
        want = partner.partner_id if role is Role.PARTNER else None
        assert principal.partner_id == want
    assert store.authenticate(tokens[Role.ADMIN] + "x") is None
    assert store.authenticate("") is None
    with pytest.raises(NotFound):
        store.issue_token("missing", Role.ADMIN)


def test_plaintext_tokens_never_reach_the_sqlite_file(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'meta.db'}")
    t = s.create_tenant("acme")
    token = s.issue_token(
        t.tenant_id, Role.PARTNER, partner_id=s.create_partner(t.tenant_id, "p").partner_id
    )
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert token.encode() not in raw
    assert hash_token(token).encode() in raw


def test_audiences_belong_to_one_tenant(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    rec = audience(a.tenant_id)
    assert store.put_audience(rec) is None
    assert store.get_audience(a.tenant_id, "crm") == rec
    assert store.get_audience(b.tenant_id, "crm") is None
    assert store.list_audiences(b.tenant_id) == []
    # The same name in another tenant is a different audience.
    store.put_audience(audience(b.tenant_id))
    assert len(store.list_audiences(b.tenant_id)) == 1


def test_replacing_an_audience_is_explicit_and_atomic(store: SqlStore) -> None:
    t = store.create_tenant("a")
    first = audience(t.tenant_id, elements=10)
    store.put_audience(first)
    second = audience(t.tenant_id, elements=20)
    with pytest.raises(AlreadyExists, match="--replace"):
        store.put_audience(second)
    assert store.get_audience(t.tenant_id, "crm") == first
    assert store.put_audience(second, replace_existing=True) == first
    assert store.get_audience(t.tenant_id, "crm") == second
    assert len(store.list_audiences(t.tenant_id)) == 1


def test_deleting_removes_the_record_within_its_tenant_only(store: SqlStore) -> None:
    a, b = store.create_tenant("a"), store.create_tenant("b")
    mine = audience(a.tenant_id)
    store.put_audience(mine)
    store.put_audience(audience(b.tenant_id))
    assert store.delete_audience(b.tenant_id, "nope") is None
    assert store.delete_audience(a.tenant_id, "crm") == mine
    assert store.get_audience(a.tenant_id, "crm") is None
    assert store.delete_audience(a.tenant_id, "crm") is None
    assert store.get_audience(b.tenant_id, "crm") is not None  # the other tenant's stays
    report = store.put_report(sample_report(a.tenant_id))
    assert store.delete_report(b.tenant_id, report.report_id) is None
    assert store.delete_report(a.tenant_id, report.report_id) == "attribution"
    assert store.get_report(a.tenant_id, report.report_id) is None
    assert store.delete_conversion_set(a.tenant_id, "sales") is None


def test_models_are_tenant_scoped_read_back_equal_and_replaced_only_when_asked(
    store: SqlStore,
) -> None:
    acme, other = store.create_tenant("acme"), store.create_tenant("other")
    model = BrandModel(
        (ModelFeature("app_user"), ModelFeature("visits", 0.0, 30.0, 16)), (1.25, -0.0813), -2.5
    )
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    first = RegisteredModel("m1", acme.tenant_id, "ltv", model, when)
    assert store.put_model(first) is None
    assert store.get_model(acme.tenant_id, "ltv") == first
    assert store.get_model(other.tenant_id, "ltv") is None
    assert store.list_models(other.tenant_id) == []
    second = RegisteredModel(
        "m2", acme.tenant_id, "ltv", BrandModel(model.features, (0.5, 0.25), 0.0), when
    )
    with pytest.raises(AlreadyExists, match="--replace"):
        store.put_model(second)
    assert store.get_model(acme.tenant_id, "ltv") == first
    assert store.put_model(second, replace_existing=True) == first
    assert store.list_models(acme.tenant_id) == [second]


def test_sessions_are_tenant_scoped_and_countable(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    streamco, newsly = pship(store, a.tenant_id, "streamco"), pship(store, a.tenant_id, "newsly")
    now = datetime.now(UTC)
    rec = SessionRecord(
        session_id=uuid.uuid4().hex,
        tenant_id=a.tenant_id,
        audience_id="x",
        protocol="match",
        status="running",
        declared_records=100,
        declared_points=150,
        brand_points=80,
        created_at=now,
        partner_id=streamco.partner_id,
    )
    store.create_session(rec)
    assert store.get_session(a.tenant_id, rec.session_id) == rec
    assert store.get_session(b.tenant_id, rec.session_id) is None
    with pytest.raises(NotFound):
        store.update_session(b.tenant_id, rec.session_id, status="done")
    done = store.update_session(
        a.tenant_id, rec.session_id, status="done", intersection=42, finished_at=now
    )
    assert (done.status, done.intersection, done.finished_at) == ("done", 42, now)
    with pytest.raises(TypeError):
        store.update_session(a.tenant_id, rec.session_id, brand_points=1)
    with pytest.raises(TypeError):
        store.update_session(a.tenant_id, rec.session_id, protocol="psi")
    declared = store.update_session(
        a.tenant_id, rec.session_id, declared_records=7, declared_points=9
    )
    assert (declared.declared_records, declared.declared_points, declared.brand_points) == (
        7,
        9,
        80,
    )
    assert store.count_sessions_since(streamco, now - timedelta(seconds=1)) == 1
    assert store.count_sessions_since(streamco, now + timedelta(seconds=1)) == 0
    # Quotas count per partner: another partner of the tenant has opened none.
    assert store.count_sessions_since(newsly, now - timedelta(days=1)) == 0
    assert store.count_sessions_since(pship(store, b.tenant_id, "x"), now - timedelta(days=1)) == 0
    assert store.list_sessions(a.tenant_id, newsly.partner_id) == []
    assert store.list_sessions(a.tenant_id, streamco.partner_id) == store.list_sessions(a.tenant_id)


def test_audit_log_is_per_tenant_and_ordered(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    store.audit(AuditEntry(a.tenant_id, "admin", "audience.upload", {"n": 1}))
    store.audit(AuditEntry(b.tenant_id, "admin", "audience.upload", {"n": 2}))
    store.audit(AuditEntry(a.tenant_id, "partner", "psi.start", {"n": 3}))
    log = store.audit_log(a.tenant_id)
    assert [(e.action, e.detail["n"]) for e in log] == [("audience.upload", 1), ("psi.start", 3)]
    assert all(e.at is not None and e.at.tzinfo is not None for e in log)


# ------------------------------------------------------------ attribution


def report_body(report_id: str, lift: float = 0.12) -> dict[str, Any]:
    return {
        "report_id": report_id,
        "conversions_name": "purchases",
        "created_at": datetime.now(UTC).isoformat(),
        "windows": {"click_days": 7, "view_days": 1},
        "dp": {"mechanism": "laplace", "epsilon": 0.5},
        "aggregation_threshold": 50,
        "campaigns": [
            {
                "campaign_id": "spring",
                "attributed_conversions": 12,
                "attributed_revenue": 340.5,
                "exposed": {
                    "users": 1000,
                    "conversions": 25,
                    "revenue": 600.0,
                    "converters": 20,
                    "rate": 0.02,
                },
                "holdout": dict.fromkeys(("users", "conversions", "revenue", "converters", "rate")),
                "lift": lift,
                "lift_ci95": (0.01, 0.2),  # a tuple reads back as a tuple
                "incremental_converters": None,
                "spend": None,
                "iroas": None,
                "suppressed": True,
            }
        ],
    }


def report(
    tenant_id: str, key: str = "sub-1", report_id: str | None = None, lift: float = 0.12
) -> ReportRecord:
    rid = report_id or uuid.uuid4().hex
    return ReportRecord(
        tenant_id=tenant_id,
        report=AttributionReport.model_validate(report_body(rid, lift)),
        submission_key=key,
    )


def test_policy_has_attribution_defaults_and_round_trips(store: SqlStore) -> None:
    t = store.create_tenant("a")
    assert t.policy == Policy()
    assert (t.policy.aggregation_threshold, t.policy.dp) == (50, "off")
    assert (t.policy.epsilon_budget, t.policy.delta) == (10.0, 1e-6)
    p = Policy(
        min_partner_records=5,
        sessions_per_day=3,
        aggregation_threshold=75,
        dp="gaussian",
        epsilon_budget=2.5,
        delta=1e-8,
    )
    assert store.set_policy(t.tenant_id, p).policy == p
    assert store.get_tenant(t.tenant_id) == store.find_tenant("a")
    got = store.get_tenant(t.tenant_id)
    assert got is not None and got.policy == p
    assert store.create_tenant("b", p).policy == p


@pytest.mark.parametrize(
    "bad",
    [
        {"dp": "exponential"},
        {"aggregation_threshold": -1},
        {"epsilon_budget": -1.0},
        {"epsilon_budget": math.inf},
        {"epsilon_budget": math.nan},
        {"delta": 0.0},
        {"delta": 1.0},
    ],
)
def test_policy_rejects_bad_attribution_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Policy(**bad)


def test_tenants_written_before_the_attribution_policy_still_load(db_url: str) -> None:
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine

    # The tenants table as the first release created it, with one tenant.
    engine = create_engine(db_url)
    old = MetaData()
    tenants = Table(
        "tenants",
        old,
        Column("tenant_id", String(32), primary_key=True),
        Column("name", String(200), unique=True),
        Column("min_partner_records", Integer),
        Column("sessions_per_day", Integer),
        Column("created_at", DateTime(timezone=True)),
    )
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            tenants.insert().values(
                tenant_id="t" * 32,
                name="legacy",
                min_partner_records=7,
                sessions_per_day=9,
                created_at=datetime.now(UTC),
            )
        )
    engine.dispose()
    s = SqlStore(db_url)
    try:
        t = s.find_tenant("legacy")
        assert t is not None and t.policy == Policy(min_partner_records=7, sessions_per_day=9)
        s.set_policy(t.tenant_id, Policy(7, 9, aggregation_threshold=100, dp="laplace"))
        again = s.get_tenant(t.tenant_id)
        assert again is not None and again.policy.dp == "laplace"
        assert s.create_tenant("fresh").policy == Policy()
    finally:
        s.close()
    SqlStore(db_url).close()  # opening an up-to-date store changes nothing


def test_reports_are_tenant_scoped(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    rec = report(a.tenant_id)
    stored = store.put_report(rec)
    assert stored.report.campaigns[0].lift_ci95 == (0.01, 0.2)
    assert store.get_report(a.tenant_id, rec.report_id) == stored
    assert store.get_report(b.tenant_id, rec.report_id) is None
    assert store.get_report(a.tenant_id, "missing") is None
    assert store.list_reports(a.tenant_id) == [stored]
    assert store.list_reports(b.tenant_id) == []
    # The same submission key in another tenant is another submission.
    other = store.put_report(report(b.tenant_id))
    assert store.list_reports(b.tenant_id) == [other]
    got = store.get_report(a.tenant_id, rec.report_id)
    assert got is not None and got.created_at.tzinfo is not None
    assert got == stored and got.report == rec.report  # typed, and read back equal
    assert (got.report.dp.mechanism, got.report.dp.epsilon) == ("laplace", 0.5)
    assert got.report.campaigns[0].holdout.users is None


def test_putting_a_report_is_idempotent_per_submission_key(store: SqlStore) -> None:
    t = store.create_tenant("a")
    first = store.put_report(report(t.tenant_id, key="k1", lift=0.1))
    retry = store.put_report(report(t.tenant_id, key="k1", lift=0.9))
    assert retry == first
    assert store.find_report(t.tenant_id, "k1") == first
    assert store.find_report(t.tenant_id, "k2") is None
    assert store.find_report(store.create_tenant("b").tenant_id, "k1") is None
    assert [r.report_id for r in store.list_reports(t.tenant_id)] == [first.report_id]
    second = store.put_report(report(t.tenant_id, key="k2"))
    assert {r.report_id for r in store.list_reports(t.tenant_id)} == {
        first.report_id,
        second.report_id,
    }
    # Another submission cannot take an existing report id.
    with pytest.raises(AlreadyExists):
        store.put_report(report(t.tenant_id, key="k3", report_id=first.report_id))


def test_concurrent_puts_of_one_submission_make_one_report(store: SqlStore) -> None:
    t = store.create_tenant("a")
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: store.put_report(report(t.tenant_id, key="k")), range(8)))
    assert len({r.report_id for r in results}) == 1
    assert len(store.list_reports(t.tenant_id)) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"report_id": "has space"},
        {"report_id": "x" * 65},
        {"report_id": "r.csv"},
        {"created_at": datetime.now().isoformat()},  # naive
        {"campaigns": [{"lift": math.nan}]},
        {"campaigns": [{**report_body("r1")["campaigns"][0], "lift": math.nan}]},
        {"campaigns": [{**report_body("r1")["campaigns"][0], "at": "now"}]},
        {"dp": {"mechanism": "fuzzy"}},
    ],
)
def test_bad_reports_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        AttributionReport.model_validate({**report_body("r1"), **change})


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_bad_submission_keys_are_refused(store: SqlStore, key: str) -> None:
    t = store.create_tenant("a")
    good = report(t.tenant_id, report_id="r1")
    with pytest.raises(InvalidInput, match="submission key"):
        store.put_report(ReportRecord(good.tenant_id, good.report, key))
    assert store.list_reports(t.tenant_id) == []


def test_reports_stored_before_the_typed_model_still_read(store: SqlStore, db_url: str) -> None:
    """Bodies written before the typed report named the set "conversions" and lacked the
    row's own columns; they read back as the typed report."""
    from sqlalchemy import JSON, DateTime, String, column, create_engine, table

    t = store.create_tenant("a")
    legacy = report_body("legacy1")
    for key in ("report_id", "conversions_name", "created_at"):
        legacy.pop(key)
    legacy["conversions"] = "purchases"
    legacy["campaigns"][0]["lift_ci95"] = [0.01, 0.2]
    reports = table(
        "reports",
        *(column(name, String) for name in ("report_id", "tenant_id", "conversions_name")),
        column("submission_key", String),
        column("body", JSON),
        column("created_at", DateTime(timezone=True)),
    )
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            reports.insert().values(
                report_id="legacy1",
                tenant_id=t.tenant_id,
                conversions_name="purchases",
                submission_key="old-key",
                body=legacy,
                created_at=datetime(2025, 1, 2, tzinfo=UTC),
            )
        )
    engine.dispose()
    got = store.get_report(t.tenant_id, "legacy1")
    assert got is not None and got.report.conversions_name == "purchases"
    assert got.created_at == datetime(2025, 1, 2, tzinfo=UTC)
    assert got.report.campaigns[0].lift_ci95 == (0.01, 0.2)


def test_a_report_needs_its_tenant(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.put_report(report("no-such-tenant"))


def test_epsilon_ledger_charges_until_the_budget_then_refuses(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    assert store.epsilon_spent(pship(store, a.tenant_id, "meta")) == 0.0
    assert store.charge_epsilon(
        pship(store, a.tenant_id, "meta"), "r1", 0.4, budget=1.0
    ) == pytest.approx(0.6)
    assert store.charge_epsilon(
        pship(store, a.tenant_id, "meta"), "r2", 0.5, budget=1.0
    ) == pytest.approx(0.1)
    with pytest.raises(BudgetExceeded, match=r"remaining 0\.1") as refused:
        store.charge_epsilon(pship(store, a.tenant_id, "meta"), "r3", 0.2, budget=1.0)
    assert isinstance(refused.value, FailedPrecondition)
    # The refusal charged nothing; what still fits, fits.
    assert store.epsilon_spent(pship(store, a.tenant_id, "meta")) == pytest.approx(0.9)
    assert store.charge_epsilon(
        pship(store, a.tenant_id, "meta"), "r3", 0.1, budget=1.0
    ) == pytest.approx(0)
    # Budgets are per partnership and per tenant.
    assert store.charge_epsilon(pship(store, a.tenant_id, "tiktok"), "r4", 1.0, budget=1.0) == 0.0
    assert store.charge_epsilon(pship(store, b.tenant_id, "meta"), "r1", 0.5, budget=1.0) == 0.5
    entries = store.ledger(a.tenant_id)
    meta, tiktok = pship(store, a.tenant_id, "meta"), pship(store, a.tenant_id, "tiktok")
    assert [(e.partnership, e.report_id, e.epsilon) for e in entries] == [
        (meta, "r1", 0.4),
        (meta, "r2", 0.5),
        (meta, "r3", 0.1),
        (tiktok, "r4", 1.0),
    ]
    assert all(e.partnership.tenant_id == a.tenant_id and e.at.tzinfo for e in entries)
    assert [e.report_id for e in store.ledger(a.tenant_id, tiktok.partner_id)] == ["r4"]
    assert [e.report_id for e in store.ledger(b.tenant_id)] == ["r1"]


def test_ten_charges_of_a_tenth_fit_a_budget_of_one(store: SqlStore) -> None:
    t = store.create_tenant("a")
    for i in range(10):
        store.charge_epsilon(pship(store, t.tenant_id, "p"), f"r{i}", 0.1, budget=1.0)
    with pytest.raises(BudgetExceeded):
        store.charge_epsilon(pship(store, t.tenant_id, "p"), "r10", 0.1, budget=1.0)


def test_charging_a_report_again_charges_nothing(store: SqlStore) -> None:
    t = store.create_tenant("a")
    assert store.charge_epsilon(pship(store, t.tenant_id, "p"), "r1", 0.5, budget=1.0) == 0.5
    assert store.charge_epsilon(pship(store, t.tenant_id, "p"), "r1", 0.5, budget=1.0) == 0.5
    assert store.epsilon_spent(pship(store, t.tenant_id, "p")) == 0.5
    with pytest.raises(AlreadyExists):
        store.charge_epsilon(pship(store, t.tenant_id, "p"), "r1", 0.3, budget=1.0)
    assert len(store.ledger(t.tenant_id)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("p", "bad id", 0.1, 1.0),
        ("p", "r", 0.0, 1.0),
        ("p", "r", -0.1, 1.0),
        ("p", "r", math.nan, 1.0),
        ("p", "r", 0.1, math.inf),
        ("p", "r", 0.1, -1.0),
    ],
)
def test_bad_charges_are_refused(store: SqlStore, args: tuple[str, str, float, float]) -> None:
    t = store.create_tenant("a")
    name, report_id, epsilon, budget = args
    with pytest.raises(InvalidInput):
        store.charge_epsilon(pship(store, t.tenant_id, name), report_id, epsilon, budget)
    assert store.ledger(t.tenant_id) == []


def test_charging_an_unknown_tenant_or_partner_is_not_found(store: SqlStore) -> None:
    with pytest.raises(NotFound):
        store.charge_epsilon(PartnershipId("nobody", "p"), "r", 0.1, budget=1.0)
    t = store.create_tenant("a")
    other = store.create_tenant("b")
    theirs = pship(store, other.tenant_id, "p")
    for who in (
        PartnershipId(t.tenant_id, "no-such-partner"),
        PartnershipId(t.tenant_id, theirs.partner_id),
    ):
        with pytest.raises(NotFound):
            store.charge_epsilon(who, "r", 0.1, budget=1.0)
    assert store.ledger(t.tenant_id) == []


def test_concurrent_charges_never_overspend(db_url: str) -> None:
    # Separate stores (separate connection pools), as separate processes would be.
    stores = [SqlStore(db_url) for _ in range(4)]
    try:
        t = stores[0].create_tenant("a")
        p = pship(stores[0], t.tenant_id, "p")

        def charge(i: int) -> bool:
            try:
                stores[i % 4].charge_epsilon(p, f"r{i}", 1.0, budget=10.0)
                return True
            except BudgetExceeded:
                return False

        with ThreadPoolExecutor(8) as ex:
            outcomes = list(ex.map(charge, range(24)))
        assert outcomes.count(True) == 10
        assert stores[0].epsilon_spent(pship(stores[0], t.tenant_id, "p")) == 10.0
        assert len(stores[0].ledger(t.tenant_id)) == 10
    finally:
        for s in stores:
            s.close()


# ------------------------------------------------------------ partners


def test_partners_belong_to_their_tenant_with_names_unique_within_it(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    streamco = store.create_partner(a.tenant_id, "streamco", sessions_per_day=3)
    assert (streamco.sessions_per_day, streamco.min_partner_records) == (3, None)
    with pytest.raises(AlreadyExists):
        store.create_partner(a.tenant_id, "streamco")
    other = store.create_partner(b.tenant_id, "streamco")  # another tenant's: another partner
    assert other.partner_id != streamco.partner_id
    assert store.find_partner(a.tenant_id, "streamco") == streamco
    assert store.get_partner(b.tenant_id, streamco.partner_id) is None
    assert [p.name for p in store.list_partners(a.tenant_id)] == ["streamco"]
    for bad in ("", "has space", "-dash", "x" * 101):
        with pytest.raises(InvalidInput, match="partner name"):
            store.create_partner(a.tenant_id, bad)
    with pytest.raises(InvalidInput, match="sessions_per_day"):
        store.create_partner(a.tenant_id, "zero", sessions_per_day=0)
    with pytest.raises(NotFound):
        store.create_partner("no-such-tenant", "p")
    changed = store.set_partner_overrides(a.tenant_id, streamco.partner_id, min_partner_records=7)
    assert (changed.sessions_per_day, changed.min_partner_records) == (3, 7)
    assert Policy().for_partner(changed) == Policy(min_partner_records=7, sessions_per_day=3)
    with pytest.raises(NotFound):
        store.set_partner_overrides(b.tenant_id, streamco.partner_id, sessions_per_day=1)


def test_a_partner_token_names_its_partner_and_only_a_partner_token_does(
    store: SqlStore,
) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    p = store.create_partner(a.tenant_id, "p")
    with pytest.raises(InvalidInput):
        store.issue_token(a.tenant_id, Role.PARTNER)
    with pytest.raises(InvalidInput):
        store.issue_token(a.tenant_id, Role.ADMIN, partner_id=p.partner_id)
    with pytest.raises(NotFound):  # another tenant's partner
        store.issue_token(b.tenant_id, Role.PARTNER, partner_id=p.partner_id)
    tenant, tokens = store.provision_tenant("c")
    default = store.find_partner(tenant.tenant_id, DEFAULT_PARTNER)
    assert default is not None
    principal = store.authenticate(tokens[Role.PARTNER])
    assert principal is not None and principal.partnership == default.partnership


def test_a_partners_submission_keys_are_its_own(store: SqlStore) -> None:
    t = store.create_tenant("a")
    one, two = (store.create_partner(t.tenant_id, n) for n in ("one", "two"))
    first = store.put_report(
        dataclasses.replace(report(t.tenant_id, key="k"), partner_id=one.partner_id)
    )
    assert store.find_report(t.tenant_id, "k", one.partner_id) == first
    assert first.submission_key == "k" and first.partner_id == one.partner_id
    assert store.find_report(t.tenant_id, "k", two.partner_id) is None
    second = store.put_report(
        dataclasses.replace(report(t.tenant_id, key="k"), partner_id=two.partner_id)
    )
    assert second.report_id != first.report_id
    assert len(store.list_reports(t.tenant_id)) == 2


def test_stores_from_before_partners_give_each_tenant_a_default_partner(db_url: str) -> None:
    """Tokens, sessions, reports, the epsilon ledger (and what it spent) and the
    partner audit entries of an older store belong to a partner named "default"."""
    from sqlalchemy import text

    old = SqlStore(db_url)
    tenant = old.create_tenant("legacy")
    tid = tenant.tenant_id
    placeholder = old.create_partner(tid, "placeholder")
    token = old.issue_token(tid, Role.PARTNER, partner_id=placeholder.partner_id)
    old.put_report(dataclasses.replace(report(tid, key="sub"), partner_id=placeholder.partner_id))
    old.charge_epsilon(placeholder.partnership, "r-old", 0.75, budget=1.0)
    old.audit(AuditEntry(tid, "partner", "psi.done", {}, partner_id=placeholder.partner_id))
    old.close()
    # Rewrite it as the release before partners left it.
    engine = create_engine(db_url)
    with engine.begin() as conn:
        legacy = f"{tid}:partner"
        for table in ("tokens", "reports", "audit_log"):
            conn.execute(text(f"UPDATE {table} SET partner_id = NULL"))
        conn.execute(text("UPDATE reports SET submission_key = 'sub'"))
        for table in ("epsilon_ledger", "epsilon_spent"):
            conn.execute(text(f"UPDATE {table} SET partnership = :p"), {"p": legacy})
        conn.execute(text("DELETE FROM partners"))
    engine.dispose()
    s = SqlStore(db_url)
    try:
        default = s.find_partner(tid, DEFAULT_PARTNER)
        assert default is not None and [p.name for p in s.list_partners(tid)] == ["default"]
        principal = s.authenticate(token)
        assert principal is not None and principal.partner_id == default.partner_id
        assert s.epsilon_spent(default.partnership) == pytest.approx(0.75)
        assert [e.partnership for e in s.ledger(tid)] == [default.partnership]
        with pytest.raises(BudgetExceeded):  # the budget it had spent stays spent
            s.charge_epsilon(default.partnership, "r-new", 0.5, budget=1.0)
        found = s.find_report(tid, "sub", default.partner_id)
        assert found is not None and found.partner_id == default.partner_id
        assert [e.partner_id for e in s.audit_log(tid)] == [default.partner_id]
    finally:
        s.close()
    again = SqlStore(db_url)  # opening it again changes nothing
    try:
        assert [p.name for p in again.list_partners(tid)] == ["default"]
        assert again.epsilon_spent(default.partnership) == pytest.approx(0.75)
    finally:
        again.close()
