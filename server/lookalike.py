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
from cleanroom.federated.lookalike.messages import LookalikeHello, LookalikeMode
from cleanroom.federated.lookalike.report import LookalikePrivacy, LookalikeReport, TierSummary
from cleanroom.federated.paillier import PaillierPrivateKey, PaillierPublicKey, generate_keypair
from cleanroom.matching.workers import RunJobs
from cleanroom.proto.errors import FailedPrecondition, InvalidInput, PermissionDenied
from cleanroom.server.audiences import AudienceService
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
    keygen: Callable[[int], tuple[PaillierPublicKey, PaillierPrivateKey]] = lambda bits: (
        generate_keypair(bits)
    )
    clock: Callable[[], datetime] = _now
    chunk_size: int = 8192
    _live: dict[str, _Job] = field(default_factory=dict)

    def open(self, principal: Principal, hello: LookalikeHello) -> LookalikeRun:
        """Policy checks, then a job (or the stored package for a repeated submission)."""
        if principal.role is not Role.PARTNER:
            raise PermissionDenied("lookalike jobs need a partner token")
        partnership = principal.partnership
        if len(hello.submission_key) > 128:
            raise InvalidInput("a submission key is at most 128 characters")
        tenant = self.store.get_tenant(principal.tenant_id)
        partner = self.store.get_partner(principal.tenant_id, partnership.partner_id)
        if tenant is None or partner is None:
            raise PermissionDenied("this token's partner no longer exists")
        policy = tenant.policy.for_partner(partner)
        if hello.submission_key:
            existing = self.store.find_lookalike(
                principal.tenant_id, hello.submission_key, partnership.partner_id
            )
            if existing is not None:
                return AlreadyPackaged(existing.report_id)
        self._check_privacy(policy, hello, partner)
        audience = self.audiences.get(principal, hello.audience)
        if (audience.seeds or 0) < policy.min_lookalike_seed:
            raise FailedPrecondition(
                f"audience {audience.name!r} has {audience.seeds} seed members; this brand's"
                f" policy needs at least {policy.min_lookalike_seed} matched seeds for a lookalike"
            )
        check_session_quota(self.store, partnership, policy, self.clock())
        points, labels = self.audiences.load_labelled_points(audience)
        _public_key, private_key = self.keygen(self.key_bits)
        session_id = uuid.uuid4().hex
        package_id = uuid.uuid4().hex
        started = self.clock()
        run = BrandLookalike(
            session_id=session_id,
            hello=hello,
            points=points,
            labels=labels,
            private_key=private_key,
            min_seed=policy.min_lookalike_seed,
            modes=tuple(LookalikeMode(m) for m in policy.lookalike_modes),
            delta=policy.delta,
            jobs=RunJobs(self.executor),
            conclude=lambda outcome: self._store_package(
                partner, hello, package_id, started, outcome, policy.delta
            ),
            chunk_size=self.chunk_size,
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
                declared_points=hello.rows * hello.slots,
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
        stored = self.store.put_report(
            LookalikeRecord(
                tenant_id=partner.tenant_id,
                report=report,
                submission_key=hello.submission_key or package_id,
                partner_id=partner.partner_id,
            )
        )
        return stored.report_id

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
