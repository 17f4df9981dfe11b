"""PSI sessions on the brand node (transport-free service).

Opens sessions under the partnership's policy (the tenant's, with the
partner's overrides: minimum partner set size, daily session quota, counted
per partner), keeps them in memory while they run (the blinding key never
touches disk), lets a partner resume a session whose stream dropped, and
records every outcome. A session not resumed within ``resume_seconds`` fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cleanroom.matching.brand import BrandSession
from cleanroom.matching.kkrt import KkrtBrandSession, check_kkrt_hello
from cleanroom.matching.messages import Hello, PsiMethod
from cleanroom.matching.session import Round
from cleanroom.proto.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    PolicyViolation,
)
from cleanroom.server.admission import Admission, Slot
from cleanroom.server.audiences import AudienceService
from cleanroom.server.files import WORK_DIR
from cleanroom.server.store import (
    AudienceRecord,
    AuditEntry,
    PartnershipId,
    Principal,
    Role,
    SessionRecord,
    SqlStore,
)
from cleanroom.server.tenants import check_session_quota

log = logging.getLogger("cleanroom.server.matching")


# Types whose digests can never equal each other's, with why (a partner holding only the
# one against an audience of only the other is told at once).
_E164_VS_PLATFORMS = (
    "phone is hashed in E.164 (+86...), the platforms' mobiles without +86;"
    " declare plaintext mobiles cn_mobile"
)
_CANNOT_MEET = {
    frozenset({"cn_mobile_md5", "cn_mobile_sha256"}): (
        "an MD5 and a SHA-256 of a mobile number cannot be converted into each other;"
        " match plaintext mobiles (declared cn_mobile) or files hashed the same way"
    ),
    frozenset({"phone", "cn_mobile_sha256"}): _E164_VS_PLATFORMS,
    frozenset({"phone", "cn_mobile_md5"}): _E164_VS_PLATFORMS,
}


def check_types_meet(audience_types: dict[str, int], partner_types: tuple[str, ...]) -> None:
    """FailedPrecondition when the partner's identifier types (as its hello declares them;
    nothing is checked without) have none in common with the audience's."""
    held = {t for t, n in audience_types.items() if n}
    if not partner_types or not held or held & set(partner_types):
        return
    why = next(
        (
            reason
            for pair, reason in _CANNOT_MEET.items()
            if pair & held and pair & set(partner_types)
        ),
        "records of different identifier types never match",
    )
    raise FailedPrecondition(
        f"no identifier type in common: the audience holds {', '.join(sorted(held))}, the"
        f" partner {', '.join(sorted(set(partner_types)))}; {why}"
    )


AnySession = BrandSession | KkrtBrandSession


@dataclass
class _Live:
    session: AnySession
    partnership: PartnershipId
    slot: Slot | None = None
    detached_at: float | None = None
    stream: int = 0
    reader: asyncio.Task[None] | None = None


@dataclass
class MatchingService:
    store: SqlStore
    audiences: AudienceService
    chunk_size: int = 8192
    resume_seconds: float = 600.0
    admission: Admission | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _live: dict[str, _Live] = field(default_factory=dict)

    async def open(self, principal: Principal, hello: Hello) -> tuple[AnySession, int]:
        """A new session, or the one ``hello`` resumes; returns it and a stream id."""
        if principal.role is not Role.PARTNER:
            raise PermissionDenied("PSI sessions need a partner token")
        partnership = principal.partnership
        self._reap()
        if hello.resume_session_id:
            live = self._live.get(hello.resume_session_id)
            # Another partner's session, of this tenant too, is not found.
            if live is None or live.partnership != partnership:
                raise NotFound(f"no resumable session {hello.resume_session_id}")
            if isinstance(live.session, KkrtBrandSession):
                raise NotFound(
                    f"session {hello.resume_session_id} is an OT-extension session, which does"
                    " not resume; start a new one"
                )
            if live.slot is None and self.admission is not None:
                live.slot = self.admission.admit(partnership)
            live.session.resume(hello)
            if live.reader is not None:
                # The old stream may still hold unread chunks; it must not
                # feed the session once the new stream has been told where
                # to continue.
                live.reader.cancel()
                live.reader = None
            live.detached_at = None
            live.stream += 1
            self.store.update_session(
                principal.tenant_id, live.session.session_id, status="running"
            )
            return live.session, live.stream
        if hello.method is PsiMethod.KKRT:
            check_kkrt_hello(hello)  # before any quota, slot or audience is spent on it
        tenant = self.store.get_tenant(principal.tenant_id)
        partner = self.store.get_partner(principal.tenant_id, partnership.partner_id)
        if tenant is None or partner is None:
            raise PermissionDenied("this token's partner no longer exists")
        audience = self.audiences.get(principal, hello.audience)
        check_types_meet(audience.elements_by_type, hello.id_types)
        policy = tenant.policy.for_partner(partner)
        if hello.method.value not in policy.match_methods:
            raise PolicyViolation(
                f"this brand's policy allows matching by {', '.join(policy.match_methods)} only,"
                f" not {hello.method.value}"
            )
        if hello.declared_records < policy.min_partner_records:
            raise PolicyViolation(
                f"the partner set has {hello.declared_records} records; this brand's policy needs"
                f" at least {policy.min_partner_records}"
            )
        now = self.clock()
        check_session_quota(self.store, partnership, policy, now)
        slot = self.admission.admit(partnership) if self.admission is not None else None
        try:
            return await self._start(principal, hello, audience, now, slot)
        except BaseException:
            if slot is not None:
                slot.release()
            raise

    async def _start(
        self,
        principal: Principal,
        hello: Hello,
        audience: AudienceRecord,
        now: datetime,
        slot: Slot | None,
    ) -> tuple[AnySession, int]:
        partnership = principal.partnership
        session_id = uuid.uuid4().hex
        session: AnySession
        if hello.method is PsiMethod.KKRT:
            items = await asyncio.to_thread(self.audiences.kkrt_items, audience)
            if items.count == 0:
                raise FailedPrecondition(f"audience {audience.name!r} is empty")
            session = KkrtBrandSession(
                session_id=session_id,
                hello=hello,
                items=items,
                pool=self.audiences.pool,
                spill_dir=self.audiences.data_dir / WORK_DIR,
            )
            brand_size = items.count
        else:
            points = await asyncio.to_thread(self.audiences.stored_points, audience)
            if points.count == 0:
                raise FailedPrecondition(f"audience {audience.name!r} is empty")
            session = BrandSession(
                session_id=session_id,
                hello=hello,
                brand_points=points,
                pool=self.audiences.pool,
                chunk_size=self.chunk_size,
                spill_dir=self.audiences.data_dir / WORK_DIR,
            )
            brand_size = points.count
        # From here the session holds keys and may hold files (KKRT's sender): a failure
        # before it is live closes it.
        try:
            if isinstance(session, KkrtBrandSession):
                await session.prepare()
            self.store.create_session(
                SessionRecord(
                    session_id=session_id,
                    tenant_id=principal.tenant_id,
                    audience_id=audience.audience_id,
                    protocol=hello.protocol.value,
                    status="running",
                    declared_records=hello.declared_records,
                    # KKRT: the bins, one OPRF evaluation each, are what the partner holds.
                    declared_points=hello.bins
                    if hello.method is PsiMethod.KKRT
                    else hello.declared_points,
                    brand_points=brand_size,
                    created_at=now,
                    partner_id=partnership.partner_id,
                )
            )
            self.store.audit(
                AuditEntry(
                    principal.tenant_id,
                    principal.role.value,
                    "psi.start",
                    {
                        "session": session_id,
                        "audience": audience.name,
                        "protocol": hello.protocol.value,
                        "method": hello.method.value,
                        "declared_records": hello.declared_records,
                    },
                    partner_id=partnership.partner_id,
                )
            )
            self._live[session_id] = _Live(session, partnership, slot)
        except BaseException:
            session.close()
            raise
        log.info(
            "psi session %s started: partnership=%s audience=%s protocol=%s/%s partner_records=%d",
            session_id,
            partnership,
            audience.audience_id,
            hello.protocol.value,
            hello.method.value,
            hello.declared_records,
        )
        return session, 0

    def common_types(
        self, principal: Principal, audience_name: str, partner_types: tuple[str, ...]
    ) -> tuple[str, ...]:
        """Which of ``partner_types`` the audience holds (in the partner's order): what
        attribution's acceptance tells a partner too. FailedPrecondition when none."""
        if principal.role is not Role.PARTNER:
            raise PermissionDenied("identifier types are asked with a partner token")
        audience = self.audiences.get(principal, audience_name)
        check_types_meet(audience.elements_by_type, partner_types)
        held = {t for t, n in audience.elements_by_type.items() if n}
        return tuple(t for t in dict.fromkeys(partner_types) if t in held)

    def attach_reader(self, session: AnySession, stream: int, reader: asyncio.Task[None]) -> None:
        live = self._live.get(session.session_id)
        if live is not None and live.stream == stream:
            live.reader = reader

    def detach(self, session: AnySession, stream: int) -> None:
        """A stream ended: record the outcome, or wait for a resumption."""
        live = self._live.get(session.session_id)
        if live is None or live.stream != stream:
            return  # a newer stream owns the session
        if isinstance(session, KkrtBrandSession) and not session.finished:
            # Its secrets exist only in the two processes: the partner starts afresh.
            session.fail(ConnectionAbortedError("the stream broke; OT-extension sessions restart"))
        if session.finished:
            self._record_end(live)
        else:
            # Waiting for a resumption costs memory, not crypto: the slot goes back, and
            # the resumption takes one again.
            if live.slot is not None:
                live.slot.release()
                live.slot = None
            live.detached_at = time.monotonic()
            self.store.update_session(
                live.partnership.tenant_id, session.session_id, status="interrupted"
            )
            log.info("psi session %s interrupted; resumable", session.session_id)

    def _record_end(self, live: _Live) -> None:
        session = live.session
        self._live.pop(session.session_id, None)
        if live.slot is not None:
            live.slot.release()
        session.close()
        if session.round is Round.DONE:
            outcome = session.outcome()
            self.store.update_session(
                live.partnership.tenant_id,
                session.session_id,
                status="done",
                intersection=outcome.intersection,
                finished_at=self.clock(),
            )
            action = "psi.done"
            detail: dict[str, object] = {"intersection": outcome.intersection}
        else:
            error = str(session.error) if session.error else "failed"
            self.store.update_session(
                live.partnership.tenant_id,
                session.session_id,
                status="failed",
                error=error,
                finished_at=self.clock(),
            )
            action, detail = "psi.failed", {"error": error}
        detail["session"] = session.session_id
        log.info("psi session %s %s: %s", session.session_id, action.removeprefix("psi."), detail)
        self.store.audit(
            AuditEntry(
                live.partnership.tenant_id,
                Role.PARTNER.value,
                action,
                detail,
                partner_id=live.partnership.partner_id,
            )
        )

    def _reap(self) -> None:
        now = time.monotonic()
        for live in list(self._live.values()):
            if live.detached_at is not None and now - live.detached_at > self.resume_seconds:
                live.session.fail(TimeoutError("the partner did not resume the session in time"))
                self._record_end(live)

    async def reap_forever(self, every: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every)
            self._reap()

    def close(self) -> None:
        for live in list(self._live.values()):
            live.session.fail(ConnectionAbortedError("the brand node shut down"))
            self._record_end(live)
