"""Lookalike jobs on the brand node (transport-free).

A job checks the tenant's policy before any work — the partner token, the
mode, the seed audience and its size, the session quota, label-DP (required
by the policy or asked for by the partner, never above the policy's ε, and
charged to the partnership's lookalike budget up front) — then generates a
fresh Paillier key and hands the servicer a ``BrandLookalike`` state
machine that owns the rounds. The package's metadata is stored (``conclude``)
only once the partner reported its tiers, so a job that fails or is
abandoned leaves none. The same submission key returns the stored package
instead of running again (``AlreadyPackaged``).

Brand models for HE scoring are registered by an admin (``register_model``)
and scored by a partner (``open_score``): a job of its own that checks the
partner token, the model, the partner's minimum set size and its session
quota, then hands the servicer a ``BrandScoring`` state machine; its package
is stored like a lookalike's, with mode ``he-score``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cleanroom.federated.lookalike.brand import (
    AlreadyPackaged,
    BrandLookalike,
    LookalikeOutcome,
    LookalikeRun,
)
from cleanroom.federated.lookalike.brand_model import BrandModel, RegisteredModel
from cleanroom.federated.lookalike.messages import LookalikeHello, LookalikeMode, ScoreHello
from cleanroom.federated.lookalike.report import LookalikePrivacy, LookalikeReport, TierSummary
from cleanroom.federated.lookalike.scoring import AlreadyScored, BrandScoring, ScoreOutcome
from cleanroom.federated.paillier import PaillierPrivateKey, PaillierPublicKey, generate_keypair_on
from cleanroom.matching.workers import RunJobs
from cleanroom.proto.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from cleanroom.server.audiences import NAME_RE, AudienceService
from cleanroom.server.files import WORK_DIR
from cleanroom.server.policy import Policy
from cleanroom.server.store import (
    AuditEntry,
    LookalikeRecord,
    Partner,
    Principal,
    Role,
    SessionRecord,
    SqlStore,
)
from cleanroom.server.tenants import check_session_quota, end_run


def _now() -> datetime:
    return datetime.now(UTC)


def partner_job(
    store: SqlStore, principal: Principal, submission_key: str, what: str
) -> tuple[Partner, Policy, str | None]:
    """The partner a package job runs for, the policy in force for it, and the package a
    repeated submission already has (None: a new job)."""
    if principal.role is not Role.PARTNER:
        raise PermissionDenied(f"{what} jobs need a partner token")
    if len(submission_key) > 128:
        raise InvalidInput("a submission key is at most 128 characters")
    partnership = principal.partnership
    tenant = store.get_tenant(principal.tenant_id)
    partner = store.get_partner(principal.tenant_id, partnership.partner_id)
    if tenant is None or partner is None:
        raise PermissionDenied("this token's partner no longer exists")
    existing = None
    if submission_key:
        found = store.find_lookalike(principal.tenant_id, submission_key, partner.partner_id)
        existing = found.report_id if found is not None else None
    return partner, tenant.policy.for_partner(partner), existing


def store_package(
    store: SqlStore, partner: Partner, report: LookalikeReport, submission_key: str
) -> str:
    """Keep a finished package's metadata; returns its id (a stored one for a repeat)."""
    stored = store.put_report(
        LookalikeRecord(
            tenant_id=partner.tenant_id,
            report=report,
            submission_key=submission_key or report.report_id,
            partner_id=partner.partner_id,
        )
    )
    return stored.report_id


@dataclass
class _Job:
    principal: Principal
    package_id: str
    started_at: datetime


@dataclass
class LookalikeService:
    store: SqlStore
    audiences: AudienceService
    executor: Executor | None = None
    key_bits: int = 2048
    # Key generation; default: generate_keypair in a worker process (off the event loop).
    keygen: Callable[[int], tuple[PaillierPublicKey, PaillierPrivateKey]] | None = None
    clock: Callable[[], datetime] = _now
    chunk_size: int = 8192
    _live: dict[str, _Job] = field(default_factory=dict)

    def open(self, principal: Principal, hello: LookalikeHello) -> LookalikeRun:
        """Policy checks, then a job (or the stored package for a repeated submission)."""
        partner, policy, existing = partner_job(
            self.store, principal, hello.submission_key, "lookalike"
        )
        if existing is not None:
            return AlreadyPackaged(existing)
        partnership = partner.partnership
        self._check_privacy(policy, hello, partner)
        audience = self.audiences.get(principal, hello.audience)
        if (audience.seeds or 0) < policy.min_lookalike_seed:
            raise FailedPrecondition(
                f"audience {audience.name!r} has {audience.seeds} seed members; this brand's"
                f" policy needs at least {policy.min_lookalike_seed} matched seeds for a lookalike"
            )
        check_session_quota(self.store, partnership, policy, self.clock())
        points = self.audiences.labelled_points(audience)
        _public_key, private_key = (
            self.keygen(self.key_bits)
            if self.keygen is not None
            else generate_keypair_on(self.executor, self.key_bits)
        )
        session_id = uuid.uuid4().hex
        package_id = uuid.uuid4().hex
        started = self.clock()
        run = BrandLookalike(
            session_id=session_id,
            hello=hello,
            points=points,
            private_key=private_key,
            min_seed=policy.min_lookalike_seed,
            modes=tuple(LookalikeMode(m) for m in policy.lookalike_modes),
            delta=policy.delta,
            jobs=RunJobs(self.executor),
            conclude=lambda outcome: self._store_package(
                partner, hello, package_id, started, outcome, policy.delta
            ),
            chunk_size=self.chunk_size,
            spill_dir=self.audiences.data_dir / WORK_DIR,
        )
        if hello.epsilon > 0:
            # Charged before any work: an overspending job is refused up front.
            self.store.charge_epsilon(
                partnership,
                package_id,
                hello.epsilon,
                policy.lookalike_epsilon_budget,
                purpose="lookalike",
            )
        self.store.create_session(
            SessionRecord(
                session_id=session_id,
                tenant_id=principal.tenant_id,
                audience_id=audience.audience_id,
                protocol="lookalike",
                status="running",
                declared_records=hello.rows,
                declared_points=run.declared_points,
                brand_points=2 * run.list_size,
                created_at=started,
                partner_id=partnership.partner_id,
            )
        )
        self.store.audit(
            AuditEntry(
                principal.tenant_id,
                "partner",
                "lookalike.start",
                {
                    "session": session_id,
                    "audience": audience.name,
                    "mode": hello.mode.value,
                    "epsilon": hello.epsilon,
                    "match_first": hello.match_first,
                },
                partner_id=partnership.partner_id,
            )
        )
        self._live[session_id] = _Job(principal, package_id, started)
        return run

    def _check_privacy(self, policy: Policy, hello: LookalikeHello, partner: Partner) -> None:
        if not math.isfinite(hello.epsilon) or hello.epsilon < 0:
            raise InvalidInput(f"epsilon must be a finite number >= 0, not {hello.epsilon}")
        remaining = policy.lookalike_epsilon_budget - self.store.epsilon_spent(
            partner.partnership, "lookalike"
        )
        if policy.lookalike_dp == "gaussian" and hello.epsilon == 0:
            raise FailedPrecondition(
                "this brand's policy adds label-DP to every lookalike: pass --epsilon at most"
                f" {policy.lookalike_epsilon:g} (remaining budget {max(remaining, 0):g})"
            )
        if hello.epsilon > policy.lookalike_epsilon:
            raise FailedPrecondition(
                f"epsilon {hello.epsilon:g} is above this brand's largest per-job epsilon"
                f" for lookalikes, {policy.lookalike_epsilon:g}"
            )

    def _store_package(
        self,
        partner: Partner,
        hello: LookalikeHello,
        package_id: str,
        started: datetime,
        outcome: LookalikeOutcome,
        delta: float,
    ) -> str:
        metrics = outcome.metrics
        tiers = tuple(
            TierSummary(
                percent=p,
                size=size,
                recall=metrics.recall[i] if metrics else None,
                lift=metrics.lift[i] if metrics else None,
            )
            for i, (p, size) in enumerate(zip(outcome.tiers, outcome.tier_sizes, strict=True))
        )
        report = LookalikeReport(
            report_id=package_id,
            audience=hello.audience,
            partner=partner.name,
            mode=outcome.mode.value,
            created_at=started,
            finished_at=self.clock(),
            offered=outcome.offered,
            intersection=outcome.intersection,
            seeds=outcome.seeds,
            features=hello.features,
            train_rows=outcome.train_rows,
            holdout_rows=metrics.holdout_rows if metrics else 0,
            holdout_seeds=metrics.holdout_seeds if metrics else None,
            auc=metrics.auc if metrics else None,
            scored=outcome.scored,
            tiers=tiers,
            privacy=LookalikePrivacy(
                epsilon=hello.epsilon, delta=delta if hello.epsilon else 0.0, sigma=outcome.sigma
            ),
        )
        return store_package(self.store, partner, report, hello.submission_key)

    def finish(self, run: LookalikeRun) -> None:
        """The job's stream ended: record how, and stop what is left of its work."""
        if not isinstance(run, BrandLookalike):
            return  # a repeated submission: nothing ran
        job = self._live.pop(run.session_id)
        end_run(
            self.store,
            run,
            run.session_id,
            job.principal,
            protocol="lookalike",
            result=("package", job.package_id),
            now=self.clock(),
            intersection=run.intersection,
        )


# ------------------------------------------------------------------ brand models


def register_model(
    store: SqlStore,
    principal: Principal,
    name: str,
    model_json: str,
    *,
    replace: bool = False,
    now: datetime | None = None,
) -> tuple[RegisteredModel, bool]:
    """Store a brand model for HE scoring (admin only); returns it and whether it replaced
    one of the same name. The weights stay on the node: partners see names and
    quantization only."""
    if principal.role is not Role.ADMIN:
        raise PermissionDenied("registering a model needs an admin token")
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid model name {name!r}: use 1-100 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    model = BrandModel.parse(model_json, f"model {name!r}")
    record = RegisteredModel(uuid.uuid4().hex, principal.tenant_id, name, model, now or _now())
    previous = store.put_model(record, replace_existing=replace)
    store.audit(
        AuditEntry(
            principal.tenant_id,
            principal.role.value,
            "model.upload",
            {"model": name, "features": list(model.names), "replaced": previous is not None},
        )
    )
    return record, previous is not None


@dataclass
class _ScoreJob:
    principal: Principal
    package_id: str
    started_at: datetime
    model: str


@dataclass
class ScoringService:
    """HE-scoring jobs of registered brand models (transport-free)."""

    store: SqlStore
    executor: Executor | None = None
    key_bits: int = 2048
    # Key generation; default: generate_keypair in a worker process (off the event loop).
    keygen: Callable[[int], tuple[PaillierPublicKey, PaillierPrivateKey]] | None = None
    clock: Callable[[], datetime] = _now
    _live: dict[str, _ScoreJob] = field(default_factory=dict)

    def open(self, principal: Principal, hello: ScoreHello) -> BrandScoring | AlreadyScored:
        partner, policy, existing = partner_job(
            self.store, principal, hello.submission_key, "scoring"
        )
        if existing is not None:
            return AlreadyScored(existing)
        partnership = partner.partnership
        registered = self.store.get_model(principal.tenant_id, hello.model)
        if registered is None:
            raise NotFound(f"this brand has no model {hello.model!r}")
        if hello.users < policy.min_partner_records:
            # A handful of crafted users would let a partner probe the weights.
            raise FailedPrecondition(
                f"{hello.users} users are fewer than this brand's minimum of"
                f" {policy.min_partner_records} for a partner set"
            )
        check_session_quota(self.store, partnership, policy, self.clock())
        _public, private_key = (
            self.keygen(self.key_bits)
            if self.keygen is not None
            else generate_keypair_on(self.executor, self.key_bits)
        )
        session_id, package_id, started = uuid.uuid4().hex, uuid.uuid4().hex, self.clock()
        run = BrandScoring(
            session_id=session_id,
            hello=hello,
            model=registered.model,
            private_key=private_key,
            jobs=RunJobs(self.executor),
            conclude=lambda outcome: self._store_package(
                partner, hello, registered, package_id, started, outcome
            ),
        )
        self.store.create_session(
            SessionRecord(
                session_id=session_id,
                tenant_id=principal.tenant_id,
                audience_id=registered.model_id,
                protocol="score",
                status="running",
                declared_records=hello.users,
                declared_points=0,
                brand_points=0,
                created_at=started,
                partner_id=partnership.partner_id,
            )
        )
        self.store.audit(
            AuditEntry(
                principal.tenant_id,
                "partner",
                "score.start",
                {"session": session_id, "model": hello.model, "users": hello.users},
                partner_id=partnership.partner_id,
            )
        )
        self._live[session_id] = _ScoreJob(principal, package_id, started, hello.model)
        return run

    def _store_package(
        self,
        partner: Partner,
        hello: ScoreHello,
        registered: RegisteredModel,
        package_id: str,
        started: datetime,
        outcome: ScoreOutcome,
    ) -> str:
        report = LookalikeReport(
            report_id=package_id,
            audience=registered.name,
            model=registered.name,
            partner=partner.name,
            mode="he-score",
            created_at=started,
            finished_at=self.clock(),
            offered=outcome.users,
            intersection=0,
            seeds=0,
            features=len(registered.model.features),
            train_rows=0,
            holdout_rows=0,
            scored=outcome.users,
            tiers=tuple(
                TierSummary(percent=p, size=size)
                for p, size in zip(outcome.tiers, outcome.tier_sizes, strict=True)
            ),
            privacy=LookalikePrivacy(epsilon=0.0, delta=0.0, sigma=0.0),
        )
        return store_package(self.store, partner, report, hello.submission_key)

    def finish(self, run: BrandScoring | AlreadyScored) -> None:
        if not isinstance(run, BrandScoring):
            return
        job = self._live.pop(run.session_id)
        end_run(
            self.store,
            run,
            run.session_id,
            job.principal,
            protocol="score",
            result=("package", job.package_id),
            now=self.clock(),
            intersection=0,
        )
