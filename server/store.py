"""Metadata storage: tenants, tokens, audiences, PSI sessions, audit log.

Rules every backend follows (``tests/test_store.py`` runs the same suite on
each):

- Every object belongs to exactly one tenant; lookups take the tenant id and
  never return another tenant's object (they return ``None`` instead).
- Tokens are stored as SHA-256 hashes; the plaintext is returned once, at
  issue time, and cannot be read back.
- Each public method is one transaction: it fully happens or not at all.
  ``put_audience`` with ``replace`` swaps the old record for the new one in
  that single transaction.
- Times are timezone-aware UTC.

``SqlStore`` implements it over SQLAlchemy, so SQLite (the embedded default)
and PostgreSQL run the same code.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cleanroom.server.errors import AlreadyExists, NotFound
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Role(StrEnum):
    ADMIN = "admin"  # uploads audiences, sets policy
    PARTNER = "partner"  # runs PSI sessions
    ANALYST = "analyst"  # reads reports


@dataclass(frozen=True)
class Policy:
    """Per-tenant privacy policy for matching (DESIGN.md §9)."""

    min_partner_records: int = 100
    sessions_per_day: int = 100


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    name: str
    policy: Policy
    created_at: datetime


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    role: Role


@dataclass(frozen=True)
class AudienceRecord:
    audience_id: str
    tenant_id: str
    name: str
    path: str  # relative to the data directory
    records: int
    elements: int
    duplicates: int
    elements_by_type: dict[str, int]
    created_at: datetime


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    tenant_id: str
    audience_id: str
    protocol: str
    status: str  # running | interrupted | done | failed
    declared_records: int
    declared_points: int
    brand_points: int
    created_at: datetime
    intersection: int | None = None
    error: str | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    tenant_id: str
    role: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class _Base(DeclarativeBase):
    pass


class _TenantRow(_Base):
    __tablename__ = "tenants"
    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    min_partner_records: Mapped[int] = mapped_column(Integer)
    sessions_per_day: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _TokenRow(_Base):
    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _AudienceRow(_Base):
    __tablename__ = "audiences"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    audience_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    records: Mapped[int] = mapped_column(BigInteger)
    elements: Mapped[int] = mapped_column(BigInteger)
    duplicates: Mapped[int] = mapped_column(BigInteger)
    elements_by_type: Mapped[dict[str, int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _SessionRow(_Base):
    __tablename__ = "psi_sessions"
    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    audience_id: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    declared_records: Mapped[int] = mapped_column(BigInteger)
    declared_points: Mapped[int] = mapped_column(BigInteger)
    brand_points: Mapped[int] = mapped_column(BigInteger)
    intersection: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class _AuditRow(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class SqlStore:
    """The metadata store over SQLAlchemy (SQLite or PostgreSQL URL)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] = _now,
        token_bytes: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._engine: Engine = create_engine(url, future=True)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self._engine)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._clock = clock
        self._token_bytes = token_bytes

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # ------------------------------------------------------------- tenants

    def create_tenant(self, name: str, policy: Policy | None = None) -> Tenant:
        if not name or len(name) > 200:
            raise ValueError("a tenant name is 1 to 200 characters")
        policy = policy or Policy()
        row = _TenantRow(
            tenant_id=uuid.uuid4().hex,
            name=name,
            min_partner_records=policy.min_partner_records,
            sessions_per_day=policy.sessions_per_day,
            created_at=self._clock(),
        )
        try:
            with self._tx() as s:
                s.add(row)
        except IntegrityError as exc:
            raise AlreadyExists(f"a tenant named {name!r} already exists") from exc
        return self._tenant(row)

    def provision_tenant(
        self, name: str, policy: Policy | None = None
    ) -> tuple[Tenant, dict[Role, str]]:
        """A new tenant with one token per role (the plaintexts, shown once)."""
        tenant = self.create_tenant(name, policy)
        return tenant, {role: self.issue_token(tenant.tenant_id, role) for role in Role}

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._tx() as s:
            row = s.get(_TenantRow, tenant_id)
            return self._tenant(row) if row else None

    def find_tenant(self, name: str) -> Tenant | None:
        with self._tx() as s:
            row = s.scalars(select(_TenantRow).where(_TenantRow.name == name)).first()
            return self._tenant(row) if row else None

    def set_policy(self, tenant_id: str, policy: Policy) -> Tenant:
        with self._tx() as s:
            row = s.get(_TenantRow, tenant_id)
            if row is None:
                raise NotFound(f"no tenant {tenant_id}")
            row.min_partner_records = policy.min_partner_records
            row.sessions_per_day = policy.sessions_per_day
            return self._tenant(row)

    @staticmethod
    def _tenant(row: _TenantRow) -> Tenant:
        created = _utc(row.created_at)
        assert created is not None
        return Tenant(
            tenant_id=row.tenant_id,
            name=row.name,
            policy=Policy(row.min_partner_records, row.sessions_per_day),
            created_at=created,
        )

    # -------------------------------------------------------------- tokens

    def issue_token(self, tenant_id: str, role: Role) -> str:
        """A new bearer token for ``role``; only its hash is stored."""
        token = f"cr_{role.value}_{self._token_bytes(32)}"
        with self._tx() as s:
            if s.get(_TenantRow, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}")
            s.add(
                _TokenRow(
                    token_hash=hash_token(token),
                    tenant_id=tenant_id,
                    role=role.value,
                    created_at=self._clock(),
                )
            )
        return token

    def authenticate(self, token: str) -> Principal | None:
        with self._tx() as s:
            row = s.get(_TokenRow, hash_token(token))
            return Principal(row.tenant_id, Role(row.role)) if row else None

    # ----------------------------------------------------------- audiences

    def put_audience(
        self, record: AudienceRecord, *, replace_existing: bool = False
    ) -> AudienceRecord | None:
        """Store ``record``; returns the record it replaced, if any."""
        with self._tx() as s:
            old = s.scalars(
                select(_AudienceRow).where(
                    _AudienceRow.tenant_id == record.tenant_id, _AudienceRow.name == record.name
                )
            ).first()
            previous = self._audience(old) if old else None
            if old is not None:
                if not replace_existing:
                    raise AlreadyExists(
                        f"audience {record.name!r} already exists;"
                        " upload with --replace to replace it"
                    )
                s.delete(old)
                s.flush()
            s.add(
                _AudienceRow(
                    audience_id=record.audience_id,
                    tenant_id=record.tenant_id,
                    name=record.name,
                    path=record.path,
                    records=record.records,
                    elements=record.elements,
                    duplicates=record.duplicates,
                    elements_by_type=dict(record.elements_by_type),
                    created_at=record.created_at,
                )
            )
        return previous

    def get_audience(self, tenant_id: str, name: str) -> AudienceRecord | None:
        with self._tx() as s:
            row = s.scalars(
                select(_AudienceRow).where(
                    _AudienceRow.tenant_id == tenant_id, _AudienceRow.name == name
                )
            ).first()
            return self._audience(row) if row else None

    def list_audiences(self, tenant_id: str) -> list[AudienceRecord]:
        with self._tx() as s:
            rows = s.scalars(
                select(_AudienceRow)
                .where(_AudienceRow.tenant_id == tenant_id)
                .order_by(_AudienceRow.created_at, _AudienceRow.name)
            ).all()
            return [self._audience(r) for r in rows]

    @staticmethod
    def _audience(row: _AudienceRow) -> AudienceRecord:
        created = _utc(row.created_at)
        assert created is not None
        return AudienceRecord(
            audience_id=row.audience_id,
            tenant_id=row.tenant_id,
            name=row.name,
            path=row.path,
            records=row.records,
            elements=row.elements,
            duplicates=row.duplicates,
            elements_by_type=dict(row.elements_by_type),
            created_at=created,
        )

    # ------------------------------------------------------------ sessions

    def create_session(self, record: SessionRecord) -> None:
        with self._tx() as s:
            s.add(_SessionRow(**record.__dict__))

    def update_session(self, tenant_id: str, session_id: str, **changes: Any) -> SessionRecord:
        allowed = {"status", "intersection", "error", "finished_at"}
        if not set(changes) <= allowed:
            raise TypeError(f"only {sorted(allowed)} can change")
        with self._tx() as s:
            row = s.get(_SessionRow, session_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(f"no session {session_id}")
            for key, value in changes.items():
                setattr(row, key, value)
            return self._session(row)

    def get_session(self, tenant_id: str, session_id: str) -> SessionRecord | None:
        with self._tx() as s:
            row = s.get(_SessionRow, session_id)
            return self._session(row) if row and row.tenant_id == tenant_id else None

    def list_sessions(self, tenant_id: str) -> list[SessionRecord]:
        with self._tx() as s:
            rows = s.scalars(
                select(_SessionRow)
                .where(_SessionRow.tenant_id == tenant_id)
                .order_by(_SessionRow.created_at)
            ).all()
            return [self._session(r) for r in rows]

    def count_sessions_since(self, tenant_id: str, since: datetime) -> int:
        with self._tx() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(_SessionRow)
                    .where(_SessionRow.tenant_id == tenant_id, _SessionRow.created_at >= since)
                )
                or 0
            )

    @staticmethod
    def _session(row: _SessionRow) -> SessionRecord:
        created = _utc(row.created_at)
        assert created is not None
        return SessionRecord(
            session_id=row.session_id,
            tenant_id=row.tenant_id,
            audience_id=row.audience_id,
            protocol=row.protocol,
            status=row.status,
            declared_records=row.declared_records,
            declared_points=row.declared_points,
            brand_points=row.brand_points,
            created_at=created,
            intersection=row.intersection,
            error=row.error,
            finished_at=_utc(row.finished_at),
        )

    # --------------------------------------------------------------- audit

    def audit(self, entry: AuditEntry) -> None:
        with self._tx() as s:
            s.add(
                _AuditRow(
                    tenant_id=entry.tenant_id,
                    role=entry.role,
                    action=entry.action,
                    detail=dict(entry.detail),
                    at=entry.at or self._clock(),
                )
            )

    def audit_log(self, tenant_id: str) -> list[AuditEntry]:
        with self._tx() as s:
            rows = s.scalars(
                select(_AuditRow).where(_AuditRow.tenant_id == tenant_id).order_by(_AuditRow.id)
            ).all()
            return [
                AuditEntry(r.tenant_id, r.role, r.action, dict(r.detail), _utc(r.at)) for r in rows
            ]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; a busy timeout instead of
    # "database is locked" when the CLI and the server touch the file at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


__all__ = [
    "AudienceRecord",
    "AuditEntry",
    "Policy",
    "Principal",
    "Role",
    "SessionRecord",
    "SqlStore",
    "Tenant",
    "hash_token",
]
