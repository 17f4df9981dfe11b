"""gRPC servicers: thin adapters from the wire to the services.

Each handler authenticates, converts messages with ``serde``, calls the
transport-free service, and maps any exception to a status in one place
(:func:`status_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np

from cleanroom.audiences.upload import ColumnDigests, UploadChunk, UploadEnd, UploadHeader
from cleanroom.federated.attribution.messages import (
    AttrAggregates,
    AttrCells,
    AttrDone,
    AttrHello,
    CellTokens,
)
from cleanroom.matching.brand import BrandSession
from cleanroom.matching.messages import Hello
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde
from cleanroom.proto.errors import (
    Aborted,
    AlreadyExists,
    CleanroomError,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    Unauthenticated,
)
from cleanroom.server.attribution import (
    AttributionRun,
    AttributionService,
    ConversionRows,
    ConversionsUpload,
)
from cleanroom.server.audiences import AudienceService, AudienceUpload
from cleanroom.server.errors import internal_message, internal_reference, nearest
from cleanroom.server.matching import MatchingService
from cleanroom.server.store import AudienceRecord, AuditEntry, Principal, Role, SqlStore

log = logging.getLogger("cleanroom.server.grpc")


def authenticate(store: SqlStore, context: grpc.aio.ServicerContext) -> Principal:
    metadata = dict(context.invocation_metadata() or ())
    header = metadata.get("authorization", "")
    if not isinstance(header, str) or not header.startswith("Bearer "):
        raise Unauthenticated("missing bearer token: send metadata 'authorization: Bearer <token>'")
    principal = store.authenticate(header.removeprefix("Bearer ").strip())
    if principal is None:
        raise Unauthenticated("invalid bearer token")
    return principal


# The project's error vocabulary as gRPC status codes; a subclass maps like
# its nearest listed ancestor (PolicyViolation and BudgetExceeded are
# FailedPrecondition, ProtocolError is InvalidInput).
STATUS_CODES: dict[type[CleanroomError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Aborted: grpc.StatusCode.ABORTED,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for ``exc``.

    Only the project's errors carry their message to the client; anything
    else (a ``ValueError`` from a bug too) is INTERNAL with a reference id.
    """
    code = nearest(STATUS_CODES, exc)
    if code is not None:
        return code, str(exc)
    return grpc.StatusCode.INTERNAL, internal_message(internal_reference(exc))


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    log.info("rpc failed: %s %s", code.name, message)
    await context.abort(code, message)


def audience_to_pb(record: AudienceRecord) -> pb.Audience:
    return pb.Audience(
        audience_id=record.audience_id,
        name=record.name,
        records=record.records,
        elements=record.elements,
        duplicates=record.duplicates,
        elements_by_type=record.elements_by_type,
        created_at=record.created_at.isoformat(),
    )


class _Abortable(Protocol):
    def abort(self) -> None: ...


U = TypeVar("U", bound=_Abortable)
R = TypeVar("R")


async def drive_upload(
    store: SqlStore,
    request_iterator: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    begin: Callable[[Principal, Any], U],
    add: Callable[[U, Any], None],
    finish: Callable[[U, Any], Awaitable[R]],
) -> R:
    """The client-streaming upload shape both datasets share: header, chunks, end.

    Authenticates on the first message (read before any refusal, see the
    matching servicer), and aborts the upload, so nothing is stored, on any
    error or when the client goes away (cancellation).
    """
    upload: U | None = None
    try:
        principal: Principal | None = None
        async for req in request_iterator:
            kind = req.WhichOneof("body")
            if principal is None:
                principal = authenticate(store, context)
            if upload is None:
                if kind != "header":
                    raise ProtocolError("an upload starts with its header")
                upload = begin(principal, req.header)
            elif kind == "chunk":
                add(upload, req.chunk)
            elif kind == "end":
                done, upload = upload, None
                try:
                    return await finish(done, req.end)
                except BaseException:
                    done.abort()
                    raise
            else:
                raise ProtocolError(f"unexpected upload message {kind!r} after the header")
        raise ProtocolError("the upload stream ended without its end message; nothing was stored")
    except Exception as exc:
        if upload is not None:  # before the status goes out: the client may look next
            upload.abort()
            upload = None
        await abort_with(context, exc)
        raise AssertionError("unreachable") from exc
    finally:
        if upload is not None:  # the client went away mid-upload (cancellation)
            upload.abort()


class AudienceServicer(pb_grpc.AudienceServiceServicer):
    def __init__(self, store: SqlStore, audiences: AudienceService) -> None:
        self._store = store
        self._audiences = audiences

    async def Upload(
        self, request_iterator: AsyncIterator[pb.UploadRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadResponse:
        def begin(principal: Principal, header: pb.UploadHeader) -> AudienceUpload:
            return self._audiences.begin(
                principal,
                UploadHeader(
                    name=header.name,
                    id_types=tuple(serde.id_type_from_pb(t) for t in header.id_types),
                    replace=header.replace,
                ),
            )

        def add(upload: AudienceUpload, chunk: pb.UploadChunk) -> None:
            upload.add_chunk(
                UploadChunk(
                    seq=chunk.seq,
                    row_count=chunk.row_count,
                    columns=tuple(ColumnDigests(c.column, c.digests) for c in chunk.columns),
                )
            )

        async def finish(upload: AudienceUpload, end: pb.UploadEnd) -> pb.UploadResponse:
            record = await upload.finish(
                UploadEnd(chunk_count=end.chunk_count, row_count=end.row_count)
            )
            return pb.UploadResponse(audience=audience_to_pb(record))

        return await drive_upload(self._store, request_iterator, context, begin, add, finish)

    async def ListAudiences(
        self, request: pb.ListAudiencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAudiencesResponse:
        try:
            principal = authenticate(self._store, context)
            records = self._store.list_audiences(principal.tenant_id)
            return pb.ListAudiencesResponse(audiences=[audience_to_pb(r) for r in records])
        except Exception as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc


class MatchingServicer(pb_grpc.MatchingServiceServicer):
    def __init__(self, store: SqlStore, matching: MatchingService) -> None:
        self._store = store
        self._matching = matching

    async def Session(
        self, request_iterator: AsyncIterator[pb.PartnerMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BrandMessage]:
        session: BrandSession | None = None
        stream = 0
        reader: asyncio.Task[None] | None = None
        try:
            requests = aiter(request_iterator)
            # Read Hello before any refusal: a client still writing when the
            # server ends the call sees INTERNAL instead of our status
            # (grpc/grpc#36066), and a refusal must be precise.
            first_pb = await anext(requests)
            principal = authenticate(self._store, context)
            first = serde.partner_from_pb(first_pb)
            if not isinstance(first, Hello):
                raise ProtocolError("a session stream starts with Hello")
            session, stream = await self._matching.open(principal, first)
            accepted = session.accepted() if first.resume_session_id else session.start()
            yield serde.brand_to_pb(accepted)
            reader = asyncio.ensure_future(self._read(session, requests))
            self._matching.attach_reader(session, stream, reader)
            async for msg in session.outgoing(first.received_values, first.received_points):
                yield serde.brand_to_pb(msg)
        except StopAsyncIteration:
            await abort_with(context, ProtocolError("the stream closed before Hello"))
        except Exception as exc:
            if session is not None:
                session.fail(exc)
            await abort_with(context, exc)
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            if session is not None:
                self._matching.detach(session, stream)

    @staticmethod
    async def _read(session: BrandSession, requests: AsyncIterator[pb.PartnerMessage]) -> None:
        try:
            async for req in requests:
                await session.receive(serde.partner_from_pb(req))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            return  # the stream broke; the handler's cancellation does the rest
        except Exception as exc:
            session.fail(exc)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a background job's outcome as seen (a failed run's jobs end cancelled)."""
    if not future.cancelled():
        future.exception()


class AttributionServicer(pb_grpc.AttributionServiceServicer):
    def __init__(self, store: SqlStore, attribution: AttributionService) -> None:
        self._store = store
        self._service = attribution

    async def UploadConversions(
        self,
        request_iterator: AsyncIterator[pb.ConversionsUploadRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ConversionSet:
        def begin(principal: Principal, header: pb.UploadHeader) -> ConversionsUpload:
            return self._service.begin_upload(
                principal,
                header.name,
                tuple(serde.id_type_from_pb(t) for t in header.id_types),
                header.replace,
            )

        def add(upload: ConversionsUpload, c: pb.ConversionsChunk) -> None:
            upload.add(
                ConversionRows(
                    seq=c.seq,
                    customers=c.customers,
                    days=np.frombuffer(c.days, dtype="<i4"),
                    values=np.frombuffer(c.values, dtype="<f8"),
                    columns=tuple((x.column, x.present, x.digests) for x in c.columns),
                )
            )

        async def finish(upload: ConversionsUpload, end: pb.UploadEnd) -> pb.ConversionSet:
            record = await asyncio.to_thread(upload.finish, end.chunk_count, end.row_count)
            return pb.ConversionSet(
                conversions_id=record.conversions_id,
                name=record.name,
                events=record.events,
                customers=record.customers,
                identifiers=record.identifiers,
            )

        return await drive_upload(self._store, request_iterator, context, begin, add, finish)

    async def Attribute(
        self,
        request_iterator: AsyncIterator[pb.AttrPartnerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AttrBrandMessage]:
        run: AttributionRun | None = None
        ended = False
        background: list[asyncio.Future[Any]] = []
        try:
            requests = aiter(request_iterator)
            first = await anext(requests)
            principal = authenticate(self._store, context)
            hello = serde.attr_partner_from_pb(first)
            if not isinstance(hello, AttrHello):
                raise ProtocolError("an attribution stream starts with AttrHello")
            run, accepted = await asyncio.to_thread(self._service.open, principal, hello)
            yield serde.attr_brand_to_pb(accepted)
            if run is None:
                ended = True
                yield serde.attr_brand_to_pb(AttrDone(report_id=accepted.report_id))
                return
            cells_done = 0
            # The brand's own tokens and encrypted values do not depend on the
            # partner's: build them while the partner prepares its log.
            brand_tokens = asyncio.ensure_future(asyncio.to_thread(run.brand.conversion_tokens))
            brand_values = asyncio.ensure_future(asyncio.to_thread(run.brand.event_values))
            background += [brand_tokens, brand_values]
            async for req in requests:
                msg = serde.attr_partner_from_pb(req, run.public_key)
                if isinstance(msg, AttrCells):
                    await asyncio.to_thread(self._service.cells, run, msg)
                elif isinstance(msg, CellTokens):
                    back = await asyncio.to_thread(run.brand.on_cell_tokens, msg)
                    if back is None:
                        continue
                    yield serde.attr_brand_to_pb(back)
                    cells_done += 1
                    if cells_done == len(run.brand.cells):
                        for tokens in await brand_tokens:
                            yield serde.attr_brand_to_pb(tokens)
                        for values in await brand_values:
                            yield serde.attr_brand_to_pb(values, run.public_key)
                elif isinstance(msg, AttrAggregates):
                    report_id = await asyncio.to_thread(self._service.conclude, run, msg)
                    ended = True
                    yield serde.attr_brand_to_pb(AttrDone(report_id=report_id))
                    return
                else:
                    raise ProtocolError(f"unexpected {type(msg).__name__} during the run")
            raise ProtocolError("the stream ended before the aggregates; no report was stored")
        except StopAsyncIteration:
            await abort_with(context, ProtocolError("the stream closed before AttrHello"))
        except Exception as exc:
            if run is not None and not ended:
                ended = True
                self._service.finish(run, "failed", str(exc))
            await abort_with(context, exc)
        finally:
            if run is not None and not ended:  # the partner went away mid-run
                self._service.finish(
                    run, "failed", "the partner disconnected; no report was stored"
                )
            for job in background:  # cancelled with the run, or no longer needed
                job.add_done_callback(_retrieve)

    async def SetPolicy(
        self, request: pb.PolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PolicyResponse:
        try:
            principal = authenticate(self._store, context)
            if principal.role is not Role.ADMIN:
                raise PermissionDenied("changing the policy needs an admin token")
            tenant = self._store.get_tenant(principal.tenant_id)
            assert tenant is not None
            changes: dict[str, object] = {}
            for name in ("aggregation_threshold", "dp", "epsilon_budget", "min_partner_records"):
                if request.HasField(name):
                    changes[name] = getattr(request, name)
            policy = dataclasses.replace(tenant.policy, **changes)  # validates in __post_init__
            updated = self._store.set_policy(principal.tenant_id, policy)
            self._store.audit(AuditEntry(principal.tenant_id, "admin", "policy.set", dict(changes)))
            p = updated.policy
            return pb.PolicyResponse(
                aggregation_threshold=p.aggregation_threshold,
                dp=p.dp,
                epsilon_budget=p.epsilon_budget,
                epsilon_spent=self._store.epsilon_spent(
                    principal.tenant_id, f"{principal.tenant_id}:partner"
                ),
                min_partner_records=p.min_partner_records,
            )
        except Exception as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
