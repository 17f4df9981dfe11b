"""The storage rules (server/store.py docstring), run on every backend.

SQLite always; PostgreSQL when CLEANROOM_TEST_POSTGRES_URL names a server
(``.ci/run`` starts one), through the very same code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cleanroom.server.errors import AlreadyExists, NotFound
from cleanroom.server.store import (
    AudienceRecord,
    AuditEntry,
    Policy,
    Role,
    SessionRecord,
    SqlStore,
    hash_token,
)

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("CLEANROOM_TEST_POSTGRES_URL") else [])


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = _fresh_postgres_database(os.environ["CLEANROOM_TEST_POSTGRES_URL"])
    s = SqlStore(url)
    yield s
    s.close()


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
    tokens = {role: store.issue_token(t.tenant_id, role) for role in Role}
    assert len(set(tokens.values())) == 3
    for role, token in tokens.items():
        principal = store.authenticate(token)
        assert principal is not None and (principal.tenant_id, principal.role) == (
            t.tenant_id,
            role,
        )
    assert store.authenticate(tokens[Role.ADMIN] + "x") is None
    assert store.authenticate("") is None
    with pytest.raises(NotFound):
        store.issue_token("missing", Role.ADMIN)


def test_plaintext_tokens_never_reach_the_sqlite_file(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'meta.db'}")
    t = s.create_tenant("acme")
    token = s.issue_token(t.tenant_id, Role.PARTNER)
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


def test_sessions_are_tenant_scoped_and_countable(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
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
    assert store.count_sessions_since(a.tenant_id, now - timedelta(seconds=1)) == 1
    assert store.count_sessions_since(a.tenant_id, now + timedelta(seconds=1)) == 0
    assert store.count_sessions_since(b.tenant_id, now - timedelta(days=1)) == 0


def test_audit_log_is_per_tenant_and_ordered(store: SqlStore) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b")
    store.audit(AuditEntry(a.tenant_id, "admin", "audience.upload", {"n": 1}))
    store.audit(AuditEntry(b.tenant_id, "admin", "audience.upload", {"n": 2}))
    store.audit(AuditEntry(a.tenant_id, "partner", "psi.start", {"n": 3}))
    log = store.audit_log(a.tenant_id)
    assert [(e.action, e.detail["n"]) for e in log] == [("audience.upload", 1), ("psi.start", 3)]
    assert all(e.at is not None and e.at.tzinfo is not None for e in log)
