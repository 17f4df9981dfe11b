"""Tenants, their media partners and their policy: one service function per change.

The CLI (``tenant create``, ``partner-account create``, ``policy set``), REST
(``POST /v1/partners``, ``PUT /v1/policy``, ``PUT /v1/partners/{name}``) and
gRPC (``SetPolicy``) all call these, so a field is validated the same way
(``policy.py``) and every change writes the same audit record: what was
asked, and the policy before and after.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cleanroom.matching.session import RoundMachine
from cleanroom.proto.errors import InvalidInput, NotFound, PermissionDenied, ResourceExhausted
from cleanroom.server.policy import PARTNER_OVERRIDES, Policy, PolicyChanges
from cleanroom.server.store import (
    AuditEntry,
    Partner,
    PartnershipId,
    Principal,
    Role,
    SqlStore,
    Tenant,
)


@dataclass(frozen=True)
class PartnerView:
    """A partner as its brand sees it: the policy it runs under and its budget."""

    partner: Partner
    policy: Policy  # the tenant's, with the partner's overrides applied
    epsilon_spent: float
    lookalike_epsilon_spent: float = 0.0

    @property
    def epsilon_remaining(self) -> float:
        return max(self.policy.epsilon_budget - self.epsilon_spent, 0.0)

    @property
    def lookalike_epsilon_remaining(self) -> float:
        return max(self.policy.lookalike_epsilon_budget - self.lookalike_epsilon_spent, 0.0)

    def as_dict(self) -> dict[str, Any]:
        p = self.partner
        return {
            "partner_id": p.partner_id,
            "name": p.name,
            "created_at": p.created_at.isoformat(),
            "overrides": {name: getattr(p, name) for name in PARTNER_OVERRIDES},
            "sessions_per_day": self.policy.sessions_per_day,
            "min_partner_records": self.policy.min_partner_records,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
            "lookalike_epsilon_spent": self.lookalike_epsilon_spent,
            "lookalike_epsilon_remaining": self.lookalike_epsilon_remaining,
        }


def _admin(who: Principal) -> None:
    if who.role is not Role.ADMIN:
        raise PermissionDenied(f"changing a tenant needs an admin token, not a {who.role} token")


def _tenant(store: SqlStore, tenant_id: str) -> Tenant:
    tenant = store.get_tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id}")
    return tenant


def _partner(store: SqlStore, tenant_id: str, name: str) -> Partner:
    partner = store.find_partner(tenant_id, name)
    if partner is None:
        raise NotFound(f"this tenant has no partner named {name!r}")
    return partner


def provision_tenant(
    store: SqlStore, name: str, changes: PolicyChanges | None = None
) -> tuple[Tenant, dict[Role, str]]:
    """A new tenant with its ``default`` partner and one token per role (shown once),
    then ``changes`` to its policy, applied and audited as any later change."""
    tenant, tokens = store.provision_tenant(name)
    store.audit(AuditEntry(tenant.tenant_id, Role.ADMIN.value, "tenant.create", {"name": name}))
    if changes is not None and changes.given():
        change_policy(store, Principal(tenant.tenant_id, Role.ADMIN), changes)
        tenant = _tenant(store, tenant.tenant_id)
    return tenant, tokens


def create_partner(
    store: SqlStore, who: Principal, name: str, overrides: PolicyChanges | None = None
) -> tuple[PartnerView, str]:
    """A new media partner of ``who``'s tenant and its token (the plaintext, shown once)."""
    _admin(who)
    given = overrides.given() if overrides is not None else {}
    _overrides_only(given)
    partner = store.create_partner(who.tenant_id, name, **given)
    token = store.issue_token(who.tenant_id, Role.PARTNER, partner_id=partner.partner_id)
    store.audit(
        AuditEntry(
            who.tenant_id,
            who.role.value,
            "partner.create",
            {"partner": name, "overrides": given},
            partner_id=partner.partner_id,
        )
    )
    return partner_view(store, who.tenant_id, partner), token


def change_policy(
    store: SqlStore, who: Principal, changes: PolicyChanges, partner: str | None = None
) -> Policy:
    """Change the tenant's policy, or (``partner``) that partner's overrides.

    Returns the policy in force afterwards (for a partner: with its overrides).
    """
    _admin(who)
    tenant = _tenant(store, who.tenant_id)
    given = changes.given()
    if partner is None:
        before = tenant.policy
        after = store.set_policy(tenant.tenant_id, dataclasses.replace(before, **given)).policy
        partner_id = None
    else:
        _overrides_only(given)
        found = _partner(store, tenant.tenant_id, partner)
        before = tenant.policy.for_partner(found)
        updated = store.set_partner_overrides(tenant.tenant_id, found.partner_id, **given)
        after = tenant.policy.for_partner(updated)
        partner_id = found.partner_id
    detail: dict[str, Any] = {
        "changes": given,
        "before": before.as_dict(),
        "after": after.as_dict(),
    }
    if partner is not None:
        detail["partner"] = partner
    store.audit(
        AuditEntry(tenant.tenant_id, who.role.value, "policy.update", detail, partner_id=partner_id)
    )
    return after


def check_session_quota(
    store: SqlStore, partnership: PartnershipId, policy: Policy, now: datetime
) -> None:
    """ResourceExhausted when the partnership opened its ``sessions_per_day`` today (UTC):
    PSI sessions and lookalike jobs count alike."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    used = store.count_sessions_since(partnership, day_start)
    if used >= policy.sessions_per_day:
        raise ResourceExhausted(
            f"the session quota of {policy.sessions_per_day} per day is spent;"
            f" it renews at {(day_start + timedelta(days=1)).isoformat()}"
        )


def end_run(
    store: SqlStore,
    run: RoundMachine[Any],
    session_id: str,
    principal: Principal,
    *,
    protocol: str,
    result: tuple[str, str],
    now: datetime,
    **changes: Any,
) -> bool:
    """A run's stream ended (done, failed, or the partner went away): stop what is left of
    its work, record the session's end and audit it. ``result`` names what a successful
    run stored, e.g. ``("report", id)``; ``changes`` go to the session on success."""
    if not run.finished:
        run.fail(ConnectionAbortedError(f"the partner disconnected; no {result[0]} was stored"))
    run.close()
    done = run.succeeded
    status = "done" if done else "failed"
    store.update_session(
        principal.tenant_id,
        session_id,
        status=status,
        error=None if done else str(run.error),
        finished_at=now,
        **(changes if done else {}),
    )
    store.audit(
        AuditEntry(
            principal.tenant_id,
            "partner",
            f"{protocol}.{status}",
            {"session": session_id, result[0]: result[1] if done else None},
            partner_id=principal.partner_id,
        )
    )
    return done


def partner_view(store: SqlStore, tenant_id: str, partner: Partner) -> PartnerView:
    tenant = _tenant(store, tenant_id)
    return PartnerView(
        partner,
        tenant.policy.for_partner(partner),
        store.epsilon_spent(partner.partnership),
        store.epsilon_spent(partner.partnership, "lookalike"),
    )


def partner_views(store: SqlStore, tenant_id: str) -> list[PartnerView]:
    return [partner_view(store, tenant_id, p) for p in store.list_partners(tenant_id)]


def _overrides_only(given: dict[str, Any]) -> None:
    other = sorted(set(given) - set(PARTNER_OVERRIDES))
    if other:
        raise InvalidInput(
            f"a partner overrides only {', '.join(PARTNER_OVERRIDES)}; "
            f"{', '.join(other)} belong to the tenant's policy"
        )


def interrupt_unfinished(store: SqlStore, now: datetime) -> list[str]:
    """At start-up: the sessions a previous node left running (it died or was stopped
    mid-run) cannot resume, since their state lived in its memory. Each becomes
    ``interrupted`` with the reason and the time, audited. Returns their ids."""
    reason = (
        f"the brand node restarted at {now.isoformat(timespec='seconds')} while this session"
        " ran; nothing of it was kept: start a new session"
    )
    ended = []
    for session in store.unfinished_sessions():
        store.update_session(
            session.tenant_id, session.session_id, status="interrupted", error=reason,
            finished_at=now,
        )  # fmt: skip
        store.audit(
            AuditEntry(
                session.tenant_id,
                "node",
                "session.interrupted",
                {"session": session.session_id, "protocol": session.protocol, "reason": reason},
                partner_id=session.partner_id,
            )
        )
        ended.append(session.session_id)
    return ended


def rotate_token(
    store: SqlStore,
    admin: Principal,
    role: Role,
    partner_name: str | None = None,
    grace: timedelta = timedelta(0),
) -> tuple[str, int]:
    """A new token for ``role`` of the admin's tenant (a partner token for
    ``partner_name``); the old ones are revoked at once, or after ``grace`` (so the
    holder can switch without an outage). Audited (never the token)."""
    if grace < timedelta(0) or grace > timedelta(days=30):
        raise InvalidInput("the grace period is between 0 and 30 days")
    partner_id = None
    if role is Role.PARTNER:
        if partner_name is None:
            raise InvalidInput("a partner token belongs to a partner: name it with --partner")
        found = store.find_partner(admin.tenant_id, partner_name)
        if found is None:
            raise NotFound(f"this tenant has no partner named {partner_name!r}")
        partner_id = found.partner_id
    elif partner_name is not None:
        raise InvalidInput(f"--partner names a partner's token, not an {role.value} token")
    token, revoked = store.rotate_token(admin.tenant_id, role, partner_id=partner_id, grace=grace)
    store.audit(
        AuditEntry(
            admin.tenant_id,
            "admin",
            "token.rotate",
            {
                "role": role.value,
                "partner": partner_name,
                "revoked": revoked,
                "grace_seconds": grace.total_seconds(),
            },
            partner_id=partner_id,
        )
    )
    return token, revoked
