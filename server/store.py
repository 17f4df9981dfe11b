"""Metadata storage: tenants, tokens, audiences, PSI sessions, attribution
reports, the epsilon ledger, audit log.

Rules every backend follows (``tests/test_store.py`` runs the same suite on
each):

- Every object belongs to exactly one tenant; lookups take the tenant id and
  never return another tenant's object (they return ``None`` instead).
- A tenant works with several media partners (``Partner``, named uniquely
  within the tenant). Partner tokens, sessions, reports, epsilon charges and
  audit entries of a partner carry its id; a partnership (``PartnershipId``)
  is a tenant and one of its partners, and budgets, quotas and idempotency
  keys are per partnership.
- Tokens are stored as SHA-256 hashes; the plaintext is returned once, at
  issue time, and cannot be read back. ``rotate_token`` revokes the role's (or the
  partner's) other tokens: a revoked token authenticates nothing.
- Each public method is one transaction: it fully happens or not at all.
  ``put_audience`` with ``replace`` swaps the old record for the new one in
  that single transaction.
- Times are timezone-aware UTC.
- Reports are idempotent per submission: ``put_report`` with a
  ``(tenant_id, partner_id, submission_key)`` already stored returns the stored report
  and creates nothing (a retried submission never makes a second report).
  A report is the typed ``AttributionReport`` (its id is 1 to 64 characters
  of ``[A-Za-z0-9_-]``, its numbers finite), stored as its JSON and read back
  equal.
- A brand model (``RegisteredModel``, for HE scoring) is named uniquely within its
  tenant, stored as its JSON and read back equal; ``put_model`` replaces one of the
  same name only when asked, in one transaction.
- Deleting an audience, a conversion set or a report removes its record in one
  transaction (files are the caller's); sessions and ledger entries that refer
  to it stay (they hold no data of it, and spent epsilon stays spent).
- The epsilon ledger is append-only. ``charge_epsilon`` checks and charges
  in one step that concurrent charges cannot interleave: it refuses with
  ``BudgetExceeded`` (and charges nothing) when the partnership's spent
  epsilon plus the new charge would exceed the budget (within 1e-9, so that
  e.g. ten charges of 0.1 fit a budget of 1.0). A charge is keyed by report:
  charging the same ``(partnership, report_id)`` again charges nothing and
  returns the remaining budget.
- A session's id, tenant, protocol, brand points and creation time never
  change; ``update_session`` changes only its status, outcome and the
  partner's declared counts (an attribution partner declares them after the
  hello).
- Stores written by earlier releases still load: missing columns are added
  when the store opens (tenant policy fields with the ``Policy`` defaults, the
  partner columns empty), and a tenant from before partners gets a partner
  named ``default`` that its partner tokens, sessions, reports, epsilon
  ledger and audit entries then belong to. These are the only schema changes
  made outside ``create_all``.

``SqlStore`` implements it over SQLAlchemy, so SQLite (the embedded default)
and PostgreSQL run the same code.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, TypeVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from cleanroom.federated.attribution.report import REPORT_ID, AttributionReport
from cleanroom.federated.lookalike.brand_model import BrandModel, RegisteredModel
from cleanroom.federated.lookalike.report import LookalikeReport
from cleanroom.proto.errors import (
    AlreadyExists,
    BudgetExceeded,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from cleanroom.server.policy import DP_MECHANISMS, PARTNER_OVERRIDES, Policy, PolicyChanges


class Role(StrEnum):
    ADMIN = "admin"  # uploads audiences, sets policy
    PARTNER = "partner"  # runs PSI sessions
    ANALYST = "analyst"  # reads reports


DEFAULT_PARTNER = "default"
PARTNER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    name: str
    policy: Policy
    created_at: datetime


@dataclass(frozen=True)
class PartnershipId:
    """A brand (tenant) and one of its media partners: the unit of budgets and quotas."""

    tenant_id: str
    partner_id: str

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.partner_id}"


@dataclass(frozen=True)
class Partner:
    """A media partner of a tenant, with its own tokens and optional policy overrides."""

    partner_id: str
    tenant_id: str
    name: str
    created_at: datetime
    sessions_per_day: int | None = None
    min_partner_records: int | None = None

    @property
    def partnership(self) -> PartnershipId:
        return PartnershipId(self.tenant_id, self.partner_id)


@dataclass(frozen=True)
class Principal:
    """Who a token speaks for: a tenant, a role and, for a partner token, its partner."""

    tenant_id: str
    role: Role
    partner_id: str | None = None

    @property
    def partnership(self) -> PartnershipId:
        if self.partner_id is None:
            raise PermissionDenied(f"this needs a partner token, not a {self.role} token")
        return PartnershipId(self.tenant_id, self.partner_id)


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
    seeds: int | None = None  # records labelled seed; None: all (stored before labels)

    def __post_init__(self) -> None:
        if self.seeds is None:
            object.__setattr__(self, "seeds", self.records)


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
    partner_id: str | None = None  # the partner that ran it


@dataclass(frozen=True)
class AuditEntry:
    tenant_id: str
    role: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None
    partner_id: str | None = None  # the partner it concerns, if one


@dataclass(frozen=True)
class ReportRecord:
    """An attribution report as stored: the typed report, its tenant and submission."""

    tenant_id: str
    report: AttributionReport
    submission_key: str  # idempotency: one report per (tenant, partner, submission key)
    partner_id: str | None = None  # the partner that ran the attribution
    kind: ClassVar[str] = "attribution"

    @property
    def report_id(self) -> str:
        return self.report.report_id

    @property
    def conversions_name(self) -> str:
        return self.report.conversions_name

    @property
    def subject(self) -> str:
        return self.report.conversions_name

    @property
    def created_at(self) -> datetime:
        return self.report.created_at


@dataclass(frozen=True)
class LookalikeRecord:
    """A lookalike package's metadata as stored (the same table and rules as reports)."""

    tenant_id: str
    report: LookalikeReport
    submission_key: str  # one package per (tenant, partner, submission key)
    partner_id: str | None = None
    kind: ClassVar[str] = "lookalike"

    @property
    def report_id(self) -> str:
        return self.report.report_id

    @property
    def subject(self) -> str:
        return self.report.audience

    @property
    def created_at(self) -> datetime:
        return self.report.created_at


StoredRecord = TypeVar("StoredRecord", ReportRecord, LookalikeRecord)


@dataclass(frozen=True)
class LedgerEntry:
    """One epsilon charge: ``epsilon`` spent on a partnership by a report or package."""

    partnership: PartnershipId
    report_id: str
    epsilon: float
    at: datetime
    purpose: str = "attribution"  # one of PURPOSES: each has a budget of its own


# What an epsilon budget is for: attribution reports, lookalike label sums.
PURPOSES = ("attribution", "lookalike")


EPSILON_SLACK = 1e-9  # float sums: ten charges of 0.1 fit a budget of 1.0


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
    # Attribution policy; server defaults so rows written before they existed
    # load with the ``Policy`` defaults (see _add_missing_policy_columns).
    aggregation_threshold: Mapped[int] = mapped_column(Integer, server_default=text("50"))
    dp: Mapped[str] = mapped_column(String(16), server_default=text("'off'"))
    epsilon_budget: Mapped[float] = mapped_column(Float, server_default=text("10.0"))
    delta: Mapped[float] = mapped_column(Float, server_default=text("0.000001"))
    lookalike_modes: Mapped[str] = mapped_column(
        String(64), server_default=text("'hidden-seed,matched'")
    )
    min_lookalike_seed: Mapped[int] = mapped_column(Integer, server_default=text("500"))
    lookalike_dp: Mapped[str] = mapped_column(String(16), server_default=text("'off'"))
    lookalike_epsilon: Mapped[float] = mapped_column(Float, server_default=text("1.0"))
    lookalike_epsilon_budget: Mapped[float] = mapped_column(Float, server_default=text("10.0"))
    retention_days: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    match_methods: Mapped[str] = mapped_column(String(64), server_default=text("'ecdh,kkrt'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# Columns added after a table's first release: (table, column) -> (SQL type,
# default). None as default: the column is nullable and starts empty.
_ADDED_COLUMNS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("tenants", "aggregation_threshold"): ("INTEGER", "50"),
    ("tenants", "dp"): ("VARCHAR(16)", "'off'"),
    ("tenants", "epsilon_budget"): ("FLOAT", "10.0"),
    ("tenants", "delta"): ("FLOAT", "0.000001"),
    ("tokens", "partner_id"): ("VARCHAR(32)", None),
    ("psi_sessions", "partner_id"): ("VARCHAR(32)", None),
    ("reports", "partner_id"): ("VARCHAR(32)", None),
    ("audit_log", "partner_id"): ("VARCHAR(32)", None),
    ("audiences", "seeds"): ("BIGINT", None),
    ("epsilon_ledger", "purpose"): ("VARCHAR(16)", "'attribution'"),
    ("reports", "kind"): ("VARCHAR(16)", "'attribution'"),
    ("tenants", "lookalike_modes"): ("VARCHAR(64)", "'hidden-seed,matched'"),
    ("tenants", "min_lookalike_seed"): ("INTEGER", "500"),
    ("tenants", "lookalike_dp"): ("VARCHAR(16)", "'off'"),
    ("tenants", "lookalike_epsilon"): ("FLOAT", "1.0"),
    ("tenants", "lookalike_epsilon_budget"): ("FLOAT", "10.0"),
    ("tenants", "retention_days"): ("INTEGER", "0"),
    ("tenants", "match_methods"): ("VARCHAR(64)", "'ecdh,kkrt'"),
    ("tokens", "expires_at"): ("TIMESTAMP WITH TIME ZONE", None),
}


class _PartnerRow(_Base):
    __tablename__ = "partners"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    partner_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    sessions_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    min_partner_records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _TokenRow(_Base):
    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    partner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Set when the token was rotated with a grace period: it works until then.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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
    seeds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


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
    partner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class _ReportRow(_Base):
    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("tenant_id", "submission_key"),)
    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    conversions_name: Mapped[str] = mapped_column(String(200))
    submission_key: Mapped[str] = mapped_column(String(200))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    partner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'attribution'"))


class _LedgerRow(_Base):
    __tablename__ = "epsilon_ledger"
    __table_args__ = (UniqueConstraint("tenant_id", "partnership", "report_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    partnership: Mapped[str] = mapped_column(String(200))  # the partner's id
    report_id: Mapped[str] = mapped_column(String(64))
    epsilon: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    purpose: Mapped[str] = mapped_column(String(16), server_default=text("'attribution'"))


class _SpentRow(_Base):
    # Running total per partnership and purpose: the row a charge updates
    # conditionally, which serializes concurrent charges (row lock / SQLite
    # write lock). ``partnership`` is the partner id for attribution and
    # ``<partner id>/<purpose>`` for any other purpose (``_budget_key``), so
    # stores from before purposes keep their totals as they are.
    __tablename__ = "epsilon_spent"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), primary_key=True)
    partnership: Mapped[str] = mapped_column(String(200), primary_key=True)
    spent: Mapped[float] = mapped_column(Float)


class _AuditRow(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    partner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ConversionSetRecord:
    """A brand's uploaded conversions (two Parquet files under ``path``)."""

    conversions_id: str
    tenant_id: str
    name: str
    path: str  # relative to the data directory, without the suffixes
    events: int
    customers: int
    identifiers: int
    created_at: datetime


@dataclass(frozen=True)
class Purged:
    """What ``SqlStore.purge_before`` removed."""

    audiences: list[AudienceRecord]
    conversion_sets: list[ConversionSetRecord]
    reports: list[str]
    sessions: int


class _ConversionSetRow(_Base):
    __tablename__ = "conversion_sets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    conversions_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    events: Mapped[int] = mapped_column(BigInteger)
    customers: Mapped[int] = mapped_column(BigInteger)
    identifiers: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _ModelRow(_Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    model_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.tenant_id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)  # the model's JSON (BrandModel.dumps)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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
        _add_missing_columns(self._engine)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._clock = clock
        self._token_bytes = token_bytes
        self._give_old_tenants_a_default_partner()

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # ------------------------------------------------------------- tenants

    def create_tenant(self, name: str, policy: Policy | None = None) -> Tenant:
        if not name or len(name) > 200:
            raise InvalidInput("a tenant name is 1 to 200 characters")
        policy = policy or Policy()
        row = _TenantRow(tenant_id=uuid.uuid4().hex, name=name, created_at=self._clock())
        _write_policy(row, policy)
        try:
            with self._tx() as s:
                s.add(row)
        except IntegrityError as exc:
            raise AlreadyExists(f"a tenant named {name!r} already exists") from exc
        return self._tenant(row)

    def provision_tenant(
        self, name: str, policy: Policy | None = None
    ) -> tuple[Tenant, dict[Role, str]]:
        """A new tenant with its first partner (``default``) and one token per role:
        admin, analyst, and the default partner's (the plaintexts, shown once)."""
        tenant = self.create_tenant(name, policy)
        partner = self.create_partner(tenant.tenant_id, DEFAULT_PARTNER)
        return tenant, {
            role: self.issue_token(
                tenant.tenant_id,
                role,
                partner_id=partner.partner_id if role is Role.PARTNER else None,
            )
            for role in Role
        }

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._tx() as s:
            row = s.get(_TenantRow, tenant_id)
            return self._tenant(row) if row else None

    def list_tenants(self) -> list[Tenant]:
        with self._tx() as s:
            rows = s.scalars(select(_TenantRow).order_by(_TenantRow.created_at)).all()
            return [self._tenant(r) for r in rows]

    def find_tenant(self, name: str) -> Tenant | None:
        with self._tx() as s:
            row = s.scalars(select(_TenantRow).where(_TenantRow.name == name)).first()
            return self._tenant(row) if row else None

    def set_policy(self, tenant_id: str, policy: Policy) -> Tenant:
        with self._tx() as s:
            row = s.get(_TenantRow, tenant_id)
            if row is None:
                raise NotFound(f"no tenant {tenant_id}")
            _write_policy(row, policy)
            return self._tenant(row)

    @staticmethod
    def _tenant(row: _TenantRow) -> Tenant:
        created = _utc(row.created_at)
        assert created is not None
        return Tenant(
            tenant_id=row.tenant_id,
            name=row.name,
            policy=Policy(
                min_partner_records=row.min_partner_records,
                sessions_per_day=row.sessions_per_day,
                aggregation_threshold=row.aggregation_threshold,
                dp=row.dp,  # type: ignore[arg-type]  # validated by Policy
                epsilon_budget=row.epsilon_budget,
                delta=row.delta,
                lookalike_modes=_modes(row.lookalike_modes),
                min_lookalike_seed=row.min_lookalike_seed,
                lookalike_dp=row.lookalike_dp,  # type: ignore[arg-type]
                lookalike_epsilon=row.lookalike_epsilon,
                lookalike_epsilon_budget=row.lookalike_epsilon_budget,
                retention_days=row.retention_days,
                match_methods=_modes(row.match_methods),
            ),
            created_at=created,
        )

    # ------------------------------------------------------------ partners

    def create_partner(
        self,
        tenant_id: str,
        name: str,
        *,
        sessions_per_day: int | None = None,
        min_partner_records: int | None = None,
    ) -> Partner:
        """A new media partner of ``tenant_id``; overrides None follow the tenant's policy."""
        if not PARTNER_NAME.fullmatch(name):
            raise InvalidInput(
                f"a partner name is 1 to 100 letters, digits, '.', '_' or '-'"
                f" and starts with a letter or digit, not {name!r}"
            )
        _check_overrides(sessions_per_day, min_partner_records)
        row = _PartnerRow(
            partner_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            name=name,
            sessions_per_day=sessions_per_day,
            min_partner_records=min_partner_records,
            created_at=self._clock(),
        )
        try:
            with self._tx() as s:
                if s.get(_TenantRow, tenant_id) is None:
                    raise NotFound(f"no tenant {tenant_id}")
                s.add(row)
        except IntegrityError as exc:
            raise AlreadyExists(f"this tenant already has a partner named {name!r}") from exc
        return self._partner(row)

    def set_partner_overrides(
        self, tenant_id: str, partner_id: str, **overrides: int | None
    ) -> Partner:
        """Change a partner's policy overrides (``PARTNER_OVERRIDES``; None: the tenant's)."""
        if not set(overrides) <= set(PARTNER_OVERRIDES):
            raise InvalidInput(f"a partner overrides only {', '.join(PARTNER_OVERRIDES)}")
        _check_overrides(overrides.get("sessions_per_day"), overrides.get("min_partner_records"))
        with self._tx() as s:
            row = s.get(_PartnerRow, partner_id)
            if row is None or row.tenant_id != tenant_id:
                raise NotFound(f"no partner {partner_id}")
            for name, value in overrides.items():
                setattr(row, name, value)
            return self._partner(row)

    def get_partner(self, tenant_id: str, partner_id: str) -> Partner | None:
        with self._tx() as s:
            row = s.get(_PartnerRow, partner_id)
            return self._partner(row) if row and row.tenant_id == tenant_id else None

    def find_partner(self, tenant_id: str, name: str) -> Partner | None:
        with self._tx() as s:
            row = s.scalars(
                select(_PartnerRow).where(
                    _PartnerRow.tenant_id == tenant_id, _PartnerRow.name == name
                )
            ).first()
            return self._partner(row) if row else None

    def list_partners(self, tenant_id: str) -> list[Partner]:
        with self._tx() as s:
            rows = s.scalars(
                select(_PartnerRow)
                .where(_PartnerRow.tenant_id == tenant_id)
                .order_by(_PartnerRow.created_at, _PartnerRow.name)
            ).all()
            return [self._partner(r) for r in rows]

    @staticmethod
    def _partner(row: _PartnerRow) -> Partner:
        created = _utc(row.created_at)
        assert created is not None
        return Partner(
            partner_id=row.partner_id,
            tenant_id=row.tenant_id,
            name=row.name,
            created_at=created,
            sessions_per_day=row.sessions_per_day,
            min_partner_records=row.min_partner_records,
        )

    def _give_old_tenants_a_default_partner(self) -> None:
        """Stores from before partners: each tenant's partner tokens, sessions,
        reports, epsilon ledger and partner audit entries go to a partner named
        ``default`` (the ledger keeps its spent budget)."""
        with self._tx() as s:
            orphans = set(
                s.scalars(
                    select(_TokenRow.tenant_id).where(
                        _TokenRow.role == Role.PARTNER.value, _TokenRow.partner_id.is_(None)
                    )
                ).all()
            )
            orphans |= set(
                s.scalars(
                    select(_SessionRow.tenant_id).where(_SessionRow.partner_id.is_(None))
                ).all()
            )
            orphans |= set(
                s.scalars(select(_ReportRow.tenant_id).where(_ReportRow.partner_id.is_(None))).all()
            )
            legacy = [
                (t, f"{t}:partner")
                for t in s.scalars(select(_SpentRow.tenant_id)).all()
                if s.get(_SpentRow, (t, f"{t}:partner")) is not None
            ]
            orphans |= {t for t, _ in legacy}
        for tenant_id in sorted(orphans):
            partner = self.find_partner(tenant_id, DEFAULT_PARTNER)
            if partner is None:
                try:
                    partner = self.create_partner(tenant_id, DEFAULT_PARTNER)
                except AlreadyExists:  # another process did it meanwhile
                    partner = self.find_partner(tenant_id, DEFAULT_PARTNER)
            assert partner is not None
            self._adopt(tenant_id, partner.partner_id)

    def _adopt(self, tenant_id: str, partner_id: str) -> None:
        old = f"{tenant_id}:partner"  # the partnership key before partners
        with self._tx() as s:
            s.execute(
                update(_TokenRow)
                .where(
                    _TokenRow.tenant_id == tenant_id,
                    _TokenRow.role == Role.PARTNER.value,
                    _TokenRow.partner_id.is_(None),
                )
                .values(partner_id=partner_id)
            )
            s.execute(
                update(_SessionRow)
                .where(_SessionRow.tenant_id == tenant_id, _SessionRow.partner_id.is_(None))
                .values(partner_id=partner_id)
            )
            s.execute(
                update(_AuditRow)
                .where(
                    _AuditRow.tenant_id == tenant_id,
                    _AuditRow.role == Role.PARTNER.value,
                    _AuditRow.partner_id.is_(None),
                )
                .values(partner_id=partner_id)
            )
            for row in s.scalars(
                select(_ReportRow).where(
                    _ReportRow.tenant_id == tenant_id, _ReportRow.partner_id.is_(None)
                )
            ).all():
                row.partner_id = partner_id
                row.submission_key = _scoped_key(partner_id, row.submission_key)
            s.execute(
                update(_LedgerRow)
                .where(_LedgerRow.tenant_id == tenant_id, _LedgerRow.partnership == old)
                .values(partnership=partner_id)
            )
            spent = s.get(_SpentRow, (tenant_id, old))
            if spent is not None:
                s.add(_SpentRow(tenant_id=tenant_id, partnership=partner_id, spent=spent.spent))
                s.delete(spent)

    # -------------------------------------------------------------- tokens

    def issue_token(self, tenant_id: str, role: Role, *, partner_id: str | None = None) -> str:
        """A new bearer token for ``role`` (a partner token names its partner); only
        its hash is stored."""
        with self._tx() as s:
            return self._add_token(s, tenant_id, role, partner_id)

    def rotate_token(
        self,
        tenant_id: str,
        role: Role,
        *,
        partner_id: str | None = None,
        grace: timedelta = timedelta(0),
    ) -> tuple[str, int]:
        """A new token for ``role`` (a partner's for ``partner_id``) that replaces, in one
        transaction, every token the role (or that partner) had: they stop working at once,
        or after ``grace`` (an earlier expiry stands). Returns the new token and how many
        were revoked."""
        with self._tx() as s:
            old = s.scalars(
                select(_TokenRow).where(
                    _TokenRow.tenant_id == tenant_id,
                    _TokenRow.role == role.value,
                    _TokenRow.partner_id.is_(None)
                    if partner_id is None
                    else _TokenRow.partner_id == partner_id,
                )
            ).all()
            until = self._clock() + grace
            for row in old:
                expires = _utc(row.expires_at)
                if grace <= timedelta(0):
                    s.delete(row)
                elif expires is None or expires > until:
                    row.expires_at = until
            return self._add_token(s, tenant_id, role, partner_id), len(old)

    def _add_token(self, s: Session, tenant_id: str, role: Role, partner_id: str | None) -> str:
        if (role is Role.PARTNER) != (partner_id is not None):
            raise InvalidInput("a partner token, and only a partner token, names its partner")
        if s.get(_TenantRow, tenant_id) is None:
            raise NotFound(f"no tenant {tenant_id}")
        if partner_id is not None:
            partner = s.get(_PartnerRow, partner_id)
            if partner is None or partner.tenant_id != tenant_id:
                raise NotFound(f"no partner {partner_id}")
        token = f"cr_{role.value}_{self._token_bytes(32)}"
        s.add(
            _TokenRow(
                token_hash=hash_token(token),
                tenant_id=tenant_id,
                role=role.value,
                partner_id=partner_id,
                created_at=self._clock(),
            )
        )
        return token

    def authenticate(self, token: str) -> Principal | None:
        """Who ``token`` speaks for; None for an unknown token or one whose grace period
        after a rotation is over (it is removed then)."""
        with self._tx() as s:
            row = s.get(_TokenRow, hash_token(token))
            if row is None:
                return None
            expires = _utc(row.expires_at)
            if expires is not None and expires <= self._clock():
                s.delete(row)
                return None
            return Principal(row.tenant_id, Role(row.role), row.partner_id)

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
                    seeds=record.seeds,
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

    def purge_before(self, tenant_id: str, cutoff: datetime) -> Purged:
        """Remove, in one transaction, the tenant's audiences, conversion sets, reports and
        packages, and finished session records created before ``cutoff`` (a retention
        policy); returns what went (the data sets' records: their files are the caller's
        to remove). Running sessions stay; epsilon already charged stays spent."""
        with self._tx() as s:

            def older(row: Any, *where: Any) -> Sequence[Any]:
                query = select(row).where(row.tenant_id == tenant_id, row.created_at < cutoff)
                return s.scalars(query.where(*where)).all()

            audiences = older(_AudienceRow)
            conversions = older(_ConversionSetRow)
            reports = older(_ReportRow)
            sessions = older(_SessionRow, _SessionRow.status != "running")
            purged = Purged(
                audiences=[self._audience(r) for r in audiences],
                conversion_sets=[self._conversion_set(r) for r in conversions],
                reports=[str(r.report_id) for r in reports],
                sessions=len(sessions),
            )
            for row in (*audiences, *conversions, *reports, *sessions):
                s.delete(row)
            return purged

    def delete_audience(self, tenant_id: str, name: str) -> AudienceRecord | None:
        """Remove the audience's record; returns it (its files are the caller's to remove),
        or None when the tenant has no audience of that name."""
        with self._tx() as s:
            row = s.scalars(
                select(_AudienceRow).where(
                    _AudienceRow.tenant_id == tenant_id, _AudienceRow.name == name
                )
            ).first()
            if row is None:
                return None
            record = self._audience(row)
            s.delete(row)
            return record

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
            seeds=row.seeds,
        )

    # ------------------------------------------------------------ sessions

    def create_session(self, record: SessionRecord) -> None:
        with self._tx() as s:
            s.add(_SessionRow(**record.__dict__))

    def update_session(self, tenant_id: str, session_id: str, **changes: Any) -> SessionRecord:
        allowed = {
            "status",
            "intersection",
            "error",
            "finished_at",
            "declared_records",
            "declared_points",
        }
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

    def list_sessions(self, tenant_id: str, partner_id: str | None = None) -> list[SessionRecord]:
        """The tenant's sessions, or only those of one partner."""
        where = [_SessionRow.tenant_id == tenant_id]
        if partner_id is not None:
            where.append(_SessionRow.partner_id == partner_id)
        with self._tx() as s:
            rows = s.scalars(select(_SessionRow).where(*where).order_by(_SessionRow.created_at))
            return [self._session(r) for r in rows.all()]

    def unfinished_sessions(self) -> list[SessionRecord]:
        """Every tenant's sessions still ``running`` or ``interrupted`` (a node that starts
        finds these left by the one before it)."""
        with self._tx() as s:
            rows = s.scalars(
                select(_SessionRow)
                .where(_SessionRow.status.in_(("running", "interrupted")))
                .order_by(_SessionRow.created_at)
            )
            return [self._session(r) for r in rows.all()]

    def count_sessions_since(self, partnership: PartnershipId, since: datetime) -> int:
        """Sessions a partnership opened since ``since`` (its quota counts these)."""
        with self._tx() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(_SessionRow)
                    .where(
                        _SessionRow.tenant_id == partnership.tenant_id,
                        _SessionRow.partner_id == partnership.partner_id,
                        _SessionRow.created_at >= since,
                    )
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
            partner_id=row.partner_id,
        )

    # ------------------------------------------------------------- reports

    def put_report(self, record: StoredRecord) -> StoredRecord:
        """Store ``record`` (an attribution report or a lookalike package), or return the
        one already stored for its ``(tenant_id, partner_id, kind, submission_key)``
        (idempotent submission)."""
        record = _checked_report(record)
        key = _scoped_key(record.partner_id, _kind_key(record.kind, record.submission_key))
        try:
            with self._tx() as s:
                if s.get(_TenantRow, record.tenant_id) is None:
                    raise NotFound(f"no tenant {record.tenant_id}")
                existing = self._report_by_key(s, record.tenant_id, key)
                if existing is not None:
                    return self._record(type(record), existing)
                s.add(
                    _ReportRow(
                        report_id=record.report_id,
                        tenant_id=record.tenant_id,
                        partner_id=record.partner_id,
                        conversions_name=record.subject,
                        submission_key=key,
                        body=record.report.model_dump(mode="json"),
                        created_at=record.created_at,
                        kind=record.kind,
                    )
                )
        except IntegrityError as exc:
            # A concurrent put of the same submission won the race, or the
            # report id is already taken by another report.
            with self._tx() as s:
                existing = self._report_by_key(s, record.tenant_id, key)
                if existing is not None:
                    return self._record(type(record), existing)
            raise AlreadyExists(f"a report with id {record.report_id} already exists") from exc
        return record

    def get_report(self, tenant_id: str, report_id: str) -> ReportRecord | None:
        return self._get(ReportRecord, tenant_id, report_id)

    def get_lookalike(self, tenant_id: str, package_id: str) -> LookalikeRecord | None:
        return self._get(LookalikeRecord, tenant_id, package_id)

    def find_report(
        self, tenant_id: str, submission_key: str, partner_id: str | None = None
    ) -> ReportRecord | None:
        """The report stored for a partner's submission, if any."""
        return self._find(ReportRecord, tenant_id, submission_key, partner_id)

    def find_lookalike(
        self, tenant_id: str, submission_key: str, partner_id: str | None = None
    ) -> LookalikeRecord | None:
        """The lookalike package stored for a partner's submission, if any."""
        return self._find(LookalikeRecord, tenant_id, submission_key, partner_id)

    def delete_report(self, tenant_id: str, report_id: str) -> str | None:
        """Remove a report or a lookalike package (by id, within the tenant); returns its
        kind, or None when there is none. Epsilon already charged for it stays spent."""
        with self._tx() as s:
            row = s.get(_ReportRow, report_id)
            if row is None or row.tenant_id != tenant_id:
                return None
            kind = str(row.kind)
            s.delete(row)
            return kind

    def list_reports(self, tenant_id: str) -> list[ReportRecord]:
        return self._list(ReportRecord, tenant_id)

    def list_lookalikes(self, tenant_id: str) -> list[LookalikeRecord]:
        return self._list(LookalikeRecord, tenant_id)

    def _get(self, cls: type[StoredRecord], tenant_id: str, report_id: str) -> StoredRecord | None:
        with self._tx() as s:
            row = s.get(_ReportRow, report_id)
            if row is None or row.tenant_id != tenant_id or row.kind != cls.kind:
                return None
            return self._record(cls, row)

    def _find(
        self, cls: type[StoredRecord], tenant_id: str, submission_key: str, partner_id: str | None
    ) -> StoredRecord | None:
        key = _scoped_key(partner_id, _kind_key(cls.kind, submission_key))
        with self._tx() as s:
            row = self._report_by_key(s, tenant_id, key)
            return self._record(cls, row) if row is not None and row.kind == cls.kind else None

    def _list(self, cls: type[StoredRecord], tenant_id: str) -> list[StoredRecord]:
        with self._tx() as s:
            rows = s.scalars(
                select(_ReportRow)
                .where(_ReportRow.tenant_id == tenant_id, _ReportRow.kind == cls.kind)
                .order_by(_ReportRow.created_at, _ReportRow.report_id)
            ).all()
            return [self._record(cls, r) for r in rows]

    @staticmethod
    def _report_by_key(s: Session, tenant_id: str, submission_key: str) -> _ReportRow | None:
        return s.scalars(
            select(_ReportRow).where(
                _ReportRow.tenant_id == tenant_id, _ReportRow.submission_key == submission_key
            )
        ).first()

    @staticmethod
    def _record(cls: type[StoredRecord], row: _ReportRow) -> StoredRecord:
        created = _utc(row.created_at)
        assert created is not None
        key = row.submission_key
        if row.partner_id is not None:
            key = key.removeprefix(_scoped_key(row.partner_id, ""))
        key = key.removeprefix(_kind_key(row.kind, ""))
        if cls is LookalikeRecord:
            record = LookalikeRecord(
                tenant_id=row.tenant_id,
                report=LookalikeReport.model_validate(row.body),
                submission_key=key,
                partner_id=row.partner_id,
            )
            return cast("StoredRecord", record)
        # The row's columns fill in what bodies stored before the typed report lacked.
        body = {
            "report_id": row.report_id,
            "conversions_name": row.conversions_name,
            "created_at": created.isoformat(),
            **row.body,
        }
        report = ReportRecord(
            tenant_id=row.tenant_id,
            report=AttributionReport.model_validate(body),
            submission_key=key,
            partner_id=row.partner_id,
        )
        return cast("StoredRecord", report)

    # -------------------------------------------------------------- ledger

    def charge_epsilon(
        self,
        partnership: PartnershipId,
        report_id: str,
        epsilon: float,
        budget: float,
        purpose: str = "attribution",
    ) -> float:
        """Charge ``epsilon`` to ``partnership``'s ``purpose`` budget for ``report_id``;
        the budget left.

        Raises ``BudgetExceeded`` (charging nothing) when the spent epsilon
        plus ``epsilon`` would exceed ``budget``. Charging the same report
        again charges nothing; with a different epsilon it is ``AlreadyExists``.
        Each purpose (``PURPOSES``) has a budget and a total of its own.
        """
        if purpose not in PURPOSES:
            raise InvalidInput(f"an epsilon purpose is one of {', '.join(PURPOSES)}")
        tenant_id, partner = partnership.tenant_id, partnership.partner_id
        if not REPORT_ID.fullmatch(report_id):
            raise InvalidInput("a report id is 1 to 64 characters of [A-Za-z0-9_-]")
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise InvalidInput(f"epsilon must be a finite number > 0, not {epsilon}")
        if not (math.isfinite(budget) and budget >= 0):
            raise InvalidInput(f"an epsilon budget must be a finite number >= 0, not {budget}")
        self._ensure_spent_row(tenant_id, partner, purpose)
        for _attempt in range(2):
            try:
                return self._charge(tenant_id, partner, report_id, epsilon, budget, purpose)
            except _AlreadyCharged as prior:
                if prior.epsilon != epsilon:
                    raise AlreadyExists(
                        f"report {report_id} was already charged epsilon {prior.epsilon}"
                        f" on partnership {partnership}, not {epsilon}"
                    ) from None
                return max(budget - self.epsilon_spent(partnership, purpose), 0.0)
            except IntegrityError:
                continue  # a concurrent charge of the same report: now _AlreadyCharged
        raise AssertionError("unreachable: a repeated charge resolves on the second attempt")

    def _charge(
        self,
        tenant_id: str,
        partnership: str,
        report_id: str,
        epsilon: float,
        budget: float,
        purpose: str,
    ) -> float:
        total = _budget_key(partnership, purpose)
        with self._tx() as s:
            # The conditional update comes first: it takes the lock (PostgreSQL
            # row lock, SQLite write lock) before anything is read.
            key = (_SpentRow.tenant_id == tenant_id, _SpentRow.partnership == total)
            charged = s.execute(
                update(_SpentRow)
                .where(*key, _SpentRow.spent + epsilon <= budget + EPSILON_SLACK)
                .values(spent=_SpentRow.spent + epsilon)
                .execution_options(synchronize_session=False)
            )
            prior = s.scalars(
                select(_LedgerRow).where(
                    _LedgerRow.tenant_id == tenant_id,
                    _LedgerRow.partnership == partnership,
                    _LedgerRow.report_id == report_id,
                )
            ).first()
            if prior is not None:
                raise _AlreadyCharged(prior.epsilon)  # rolls the update back
            spent = float(s.scalar(select(_SpentRow.spent).where(*key)) or 0.0)
            if getattr(charged, "rowcount", 0) != 1:
                raise BudgetExceeded(
                    f"{purpose} epsilon budget exceeded for this partnership: spent"
                    f" {spent:g} of {budget:g}, this report needs {epsilon:g}"
                    f" (remaining {max(budget - spent, 0.0):g})"
                )
            s.add(
                _LedgerRow(
                    tenant_id=tenant_id,
                    partnership=partnership,
                    report_id=report_id,
                    epsilon=epsilon,
                    at=self._clock(),
                    purpose=purpose,
                )
            )
            s.flush()
        return max(budget - spent, 0.0)

    def _ensure_spent_row(self, tenant_id: str, partnership: str, purpose: str) -> None:
        total = _budget_key(partnership, purpose)
        with self._tx() as s:
            if s.get(_TenantRow, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}")
            partner = s.get(_PartnerRow, partnership)
            if partner is None or partner.tenant_id != tenant_id:
                raise NotFound(f"no partner {partnership}")
            if s.get(_SpentRow, (tenant_id, total)) is not None:
                return
        try:
            with self._tx() as s:
                s.add(_SpentRow(tenant_id=tenant_id, partnership=total, spent=0.0))
        except IntegrityError:
            pass  # created concurrently: just as good

    def ledger(self, tenant_id: str, partner_id: str | None = None) -> list[LedgerEntry]:
        """Every charge of the tenant (or of one partner), oldest first."""
        where = [_LedgerRow.tenant_id == tenant_id]
        if partner_id is not None:
            where.append(_LedgerRow.partnership == partner_id)
        with self._tx() as s:
            rows = s.scalars(select(_LedgerRow).where(*where).order_by(_LedgerRow.id)).all()
            return [
                LedgerEntry(
                    PartnershipId(r.tenant_id, r.partnership),
                    r.report_id,
                    r.epsilon,
                    _utc(r.at) or r.at,
                    r.purpose,
                )
                for r in rows
            ]

    def epsilon_spent(self, partnership: PartnershipId, purpose: str = "attribution") -> float:
        total = _budget_key(partnership.partner_id, purpose)
        with self._tx() as s:
            row = s.get(_SpentRow, (partnership.tenant_id, total))
            return float(row.spent) if row else 0.0

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
                    partner_id=entry.partner_id,
                )
            )

    def audit_log(self, tenant_id: str, partner_id: str | None = None) -> list[AuditEntry]:
        """The tenant's audit trail (or one partner's), oldest first."""
        where = [_AuditRow.tenant_id == tenant_id]
        if partner_id is not None:
            where.append(_AuditRow.partner_id == partner_id)
        with self._tx() as s:
            rows = s.scalars(select(_AuditRow).where(*where).order_by(_AuditRow.id)).all()
            return [
                AuditEntry(r.tenant_id, r.role, r.action, dict(r.detail), _utc(r.at), r.partner_id)
                for r in rows
            ]

    # ----------------------------------------------------- conversion sets

    def put_conversion_set(
        self, record: ConversionSetRecord, *, replace_existing: bool = False
    ) -> ConversionSetRecord | None:
        """Store ``record``; returns the set it replaced, if any (same rules as audiences)."""
        with self._tx() as s:
            old = s.scalars(
                select(_ConversionSetRow).where(
                    _ConversionSetRow.tenant_id == record.tenant_id,
                    _ConversionSetRow.name == record.name,
                )
            ).first()
            previous = self._conversion_set(old) if old else None
            if old is not None:
                if not replace_existing:
                    raise AlreadyExists(
                        f"conversions {record.name!r} already exist;"
                        " upload with --replace to replace them"
                    )
                s.delete(old)
                s.flush()
            s.add(_ConversionSetRow(**record.__dict__))
        return previous

    def delete_conversion_set(self, tenant_id: str, name: str) -> ConversionSetRecord | None:
        """As ``delete_audience``, for a conversion set."""
        with self._tx() as s:
            row = s.scalars(
                select(_ConversionSetRow).where(
                    _ConversionSetRow.tenant_id == tenant_id, _ConversionSetRow.name == name
                )
            ).first()
            if row is None:
                return None
            record = self._conversion_set(row)
            s.delete(row)
            return record

    def get_conversion_set(self, tenant_id: str, name: str) -> ConversionSetRecord | None:
        with self._tx() as s:
            row = s.scalars(
                select(_ConversionSetRow).where(
                    _ConversionSetRow.tenant_id == tenant_id, _ConversionSetRow.name == name
                )
            ).first()
            return self._conversion_set(row) if row else None

    # ---------------------------------------------------------------- models

    def put_model(
        self, record: RegisteredModel, *, replace_existing: bool = False
    ) -> RegisteredModel | None:
        """Store ``record``; returns the model it replaced, if any (same rules as audiences)."""
        with self._tx() as s:
            old = s.scalars(
                select(_ModelRow).where(
                    _ModelRow.tenant_id == record.tenant_id, _ModelRow.name == record.name
                )
            ).first()
            previous = self._model(old) if old else None
            if old is not None:
                if not replace_existing:
                    raise AlreadyExists(
                        f"model {record.name!r} already exists; upload with --replace to replace it"
                    )
                s.delete(old)
                s.flush()
            s.add(
                _ModelRow(
                    model_id=record.model_id,
                    tenant_id=record.tenant_id,
                    name=record.name,
                    body=record.model.dumps(),
                    created_at=record.created_at,
                )
            )
        return previous

    def get_model(self, tenant_id: str, name: str) -> RegisteredModel | None:
        with self._tx() as s:
            row = s.scalars(
                select(_ModelRow).where(_ModelRow.tenant_id == tenant_id, _ModelRow.name == name)
            ).first()
            return self._model(row) if row else None

    def list_models(self, tenant_id: str) -> list[RegisteredModel]:
        with self._tx() as s:
            rows = s.scalars(
                select(_ModelRow).where(_ModelRow.tenant_id == tenant_id).order_by(_ModelRow.name)
            ).all()
            return [self._model(r) for r in rows]

    @staticmethod
    def _model(row: _ModelRow) -> RegisteredModel:
        created = _utc(row.created_at)
        assert created is not None
        return RegisteredModel(
            model_id=row.model_id,
            tenant_id=row.tenant_id,
            name=row.name,
            model=BrandModel.parse(row.body, f"stored model {row.name!r}"),
            created_at=created,
        )

    @staticmethod
    def _conversion_set(row: _ConversionSetRow) -> ConversionSetRecord:
        created = _utc(row.created_at)
        assert created is not None
        return ConversionSetRecord(
            conversions_id=row.conversions_id,
            tenant_id=row.tenant_id,
            name=row.name,
            path=row.path,
            events=row.events,
            customers=row.customers,
            identifiers=row.identifiers,
            created_at=created,
        )


class _AlreadyCharged(Exception):
    def __init__(self, epsilon: float) -> None:
        super().__init__(epsilon)
        self.epsilon = epsilon


def _write_policy(row: _TenantRow, policy: Policy) -> None:
    row.min_partner_records = policy.min_partner_records
    row.sessions_per_day = policy.sessions_per_day
    row.aggregation_threshold = policy.aggregation_threshold
    row.dp = policy.dp
    row.epsilon_budget = policy.epsilon_budget
    row.delta = policy.delta
    row.lookalike_modes = ",".join(policy.lookalike_modes)
    row.min_lookalike_seed = policy.min_lookalike_seed
    row.lookalike_dp = policy.lookalike_dp
    row.lookalike_epsilon = policy.lookalike_epsilon
    row.lookalike_epsilon_budget = policy.lookalike_epsilon_budget
    row.retention_days = policy.retention_days
    row.match_methods = ",".join(policy.match_methods)


def _kind_key(kind: str, submission_key: str) -> str:
    """Attribution keys as they always were; other kinds' keys apart from them."""
    return submission_key if kind == "attribution" else f"{kind}:{submission_key}"


def _checked_report(record: StoredRecord) -> StoredRecord:
    """``record``, or InvalidInput for what the typed report cannot check itself."""
    want = LookalikeReport if isinstance(record, LookalikeRecord) else AttributionReport
    if not isinstance(record.report, want):
        raise InvalidInput(f"a {record.kind} record holds a {want.__name__}")
    if not record.submission_key or len(record.submission_key) > 128:
        raise InvalidInput("a submission key is 1 to 128 characters")
    return record


def _add_missing_columns(engine: Engine) -> None:
    """Add the columns of ``_ADDED_COLUMNS`` that a store from an earlier release lacks."""
    present: dict[str, set[str]] = {}
    for (table, name), (sql_type, default) in _ADDED_COLUMNS.items():
        if table not in present:
            present[table] = {c["name"] for c in inspect(engine).get_columns(table)}
        if name in present[table]:
            continue
        filled = "" if default is None else f" NOT NULL DEFAULT {default}"
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}{filled}"))
        except Exception:
            # Another process may have added it meanwhile; anything else is real.
            if name not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise


def _modes(stored: str) -> tuple[Any, ...]:
    """A stored comma-separated set (lookalike modes, match methods; ``Policy`` validates)."""
    return tuple(stored.split(",")) if stored else ()


def _budget_key(partner_id: str, purpose: str) -> str:
    """The ``epsilon_spent`` row of a partnership's ``purpose`` budget (see ``_SpentRow``)."""
    return partner_id if purpose == "attribution" else f"{partner_id}/{purpose}"


def _scoped_key(partner_id: str | None, submission_key: str) -> str:
    """The stored idempotency key: a partner's submission keys are its own."""
    return submission_key if partner_id is None else f"{partner_id}:{submission_key}"


def _check_overrides(sessions_per_day: int | None, min_partner_records: int | None) -> None:
    """The overrides validate as the policy's own fields do (``policy.py``)."""
    given = {"sessions_per_day": sessions_per_day, "min_partner_records": min_partner_records}
    PolicyChanges.parse({k: v for k, v in given.items() if v is not None})


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; a busy timeout instead of
    # "database is locked" when the CLI and the server touch the file at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


__all__ = [
    "DEFAULT_PARTNER",
    "DP_MECHANISMS",
    "PARTNER_OVERRIDES",
    "PURPOSES",
    "AudienceRecord",
    "AuditEntry",
    "ConversionSetRecord",
    "LedgerEntry",
    "LookalikeRecord",
    "Partner",
    "PartnershipId",
    "Policy",
    "Principal",
    "ReportRecord",
    "Role",
    "SessionRecord",
    "SqlStore",
    "Tenant",
    "hash_token",
]
