"""gRPC servicers: thin adapters from the wire to the services.

Each handler authenticates, converts messages with ``serde``, calls the
transport-free service, and maps any exception to a status in one place
(:func:`status_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from cleanroom.federated.attribution.messages import AttrHello
from cleanroom.federated.lookalike.messages import LookalikeHello, ScoreHello
from cleanroom.federated.paillier import PaillierPublicKey
from cleanroom.matching.messages import Hello, Result
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
from cleanroom.server.admission import Admission, NodeBusy, Slot
from cleanroom.server.attribution import AttributionService, ConversionsUpload
from cleanroom.server.audiences import AudienceService, AudienceUpload
from cleanroom.server.errors import internal_message, internal_reference, nearest
from cleanroom.server.lifecycle import delete_audience, delete_conversions
from cleanroom.server.lookalike import LookalikeService, ScoringService, register_model
from cleanroom.server.matching import AnySession, MatchingService
from cleanroom.server.policy import PolicyChanges
from cleanroom.server.store import Principal, SqlStore
from cleanroom.server.tenants import change_policy, partner_views

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


# Trailing metadata of a refusal by admission control: when to try again, in
# milliseconds (clients retry only refusals that carry it).
RETRY_AFTER_KEY = "retry-after-ms"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    log.info("rpc failed: %s %s", code.name, message)
    if isinstance(exc, NodeBusy):
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(round(exc.retry_after * 1000))),))
    await context.abort(code, message)


class DecodeErrors(grpc.aio.ServerInterceptor):
    """Request bytes that are not the method's protobuf message are the caller's error:
    INVALID_ARGUMENT with the decoder's reason, not gRPC's UNKNOWN (unary) or INTERNAL
    (streams). gRPC decodes before any servicer runs, so each handler is rebuilt to take
    the raw bytes and decode them where the one error mapping (``status_for``) applies."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        respond = handler.response_serializer

        def parse(raw: bytes) -> Any:
            try:
                return decode(raw)
            except (DecodeError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"the request is not a valid protobuf message: {exc}") from exc

        async def parsed(raw_requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for raw in raw_requests:
                yield parse(raw)

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(raw)
            except InvalidInput as exc:
                await abort_with(context, exc)
            return await handler.unary_unary(request, context)

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                request = parse(raw)
            except InvalidInput as exc:
                await abort_with(context, exc)
            async for response in handler.unary_stream(request, context):
                yield response

        async def stream_unary(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await handler.stream_unary(parsed(raw), context)

        async def stream_stream(
            raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for response in handler.stream_stream(parsed(raw), context):
                yield response

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary, response_serializer=respond)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=respond)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=respond)
        return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=respond)


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


async def delete_rpc(
    store: SqlStore,
    context: grpc.aio.ServicerContext,
    delete: Callable[[SqlStore, Path, Principal, str], dict[str, str]],
    data_dir: Path,
    name: str,
) -> pb.Deleted:
    """A deletion (``server/lifecycle.py``) as a unary call."""
    try:
        principal = authenticate(store, context)
        done = await asyncio.to_thread(delete, store, data_dir, principal, name)
        return pb.Deleted(kind=done["deleted"], name=done["name"], id=done["id"])
    except Exception as exc:
        await abort_with(context, exc)
        raise AssertionError("unreachable") from exc


class AudienceServicer(pb_grpc.AudienceServiceServicer):
    def __init__(self, store: SqlStore, audiences: AudienceService) -> None:
        self._store = store
        self._audiences = audiences

    async def Upload(
        self, request_iterator: AsyncIterator[pb.UploadRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadResponse:
        def begin(principal: Principal, header: pb.UploadHeader) -> AudienceUpload:
            return self._audiences.begin(principal, serde.upload_header_from_pb(header))

        def add(upload: AudienceUpload, chunk: pb.UploadChunk) -> None:
            upload.add_chunk(serde.upload_chunk_from_pb(chunk))

        async def finish(upload: AudienceUpload, end: pb.UploadEnd) -> pb.UploadResponse:
            record = await upload.finish(serde.upload_end_from_pb(end))
            return pb.UploadResponse(audience=serde.audience_to_pb(record))

        return await drive_upload(self._store, request_iterator, context, begin, add, finish)

    async def DeleteAudience(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.Deleted:
        return await delete_rpc(
            self._store, context, delete_audience, self._audiences.data_dir, request.name
        )

    async def ListAudiences(
        self, request: pb.ListAudiencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAudiencesResponse:
        try:
            principal = authenticate(self._store, context)
            records = self._store.list_audiences(principal.tenant_id)
            return pb.ListAudiencesResponse(audiences=[serde.audience_to_pb(r) for r in records])
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
        session: AnySession | None = None
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
                if isinstance(msg, Result):
                    # The partner may end the call once it reads the result: the outcome
                    # is on record before that, so what it asks next sees it.
                    self._matching.detach(session, stream)
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

    async def CommonTypes(
        self, request: pb.TypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.TypesResponse:
        try:
            principal = authenticate(self._store, context)
            audience, types = serde.types_request_from_pb(request)
            common = await asyncio.to_thread(
                self._matching.common_types, principal, audience, types
            )
            return serde.types_response_to_pb(common)
        except Exception as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc

    @staticmethod
    async def _read(session: AnySession, requests: AsyncIterator[pb.PartnerMessage]) -> None:
        try:
            async for req in requests:
                await session.receive(serde.partner_from_pb(req))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            return  # the stream broke; the handler's cancellation does the rest
        except Exception as exc:
            session.fail(exc)


class _Run(Protocol):
    """A protocol run as the servicer drives it (``BrandRun``, ``LookalikeRun``)."""

    @property
    def public_key(self) -> PaillierPublicKey | None: ...

    def start(self) -> Any: ...

    async def receive(self, msg: Any) -> None: ...

    def outgoing(self) -> AsyncIterator[Any]: ...

    def end_of_input(self) -> None: ...

    def close(self) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


RunT = TypeVar("RunT", bound=_Run)


async def drive_run(
    store: SqlStore,
    request_iterator: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    *,
    hello: type[Any],
    from_pb: Callable[..., Any],
    to_pb: Callable[..., Any],
    open_run: Callable[[Principal, Any], RunT],
    finish: Callable[[RunT], None],
    admission: Admission | None = None,
) -> AsyncIterator[Any]:
    """The bidirectional shape attribution and lookalike runs share.

    The first message is the hello (read before any refusal, see
    ``MatchingServicer.Session``); ``open_run`` checks policy and returns the
    run's state machine, whose outgoing messages this yields as the reader
    task feeds it the partner's. Any error fails the run and becomes the
    call's status; ``finish`` records the run's end however it ended. A run
    holds an ``admission`` slot from before ``open_run`` to its end.
    """
    run: RunT | None = None
    slot: Slot | None = None
    reader: asyncio.Task[None] | None = None
    name = hello.__name__
    try:
        requests = aiter(request_iterator)
        first = await anext(requests)
        principal = authenticate(store, context)
        opening = from_pb(first)
        if not isinstance(opening, hello):
            raise ProtocolError(f"this stream must start with {name}, not {type(opening).__name__}")
        if admission is not None:
            slot = admission.admit(principal.partnership)
        run = await asyncio.to_thread(open_run, principal, opening)
        yield to_pb(run.start())
        reader = asyncio.ensure_future(_read_run(run, requests, from_pb))
        async for msg in run.outgoing():
            yield to_pb(msg, run.public_key)
    except StopAsyncIteration:
        await abort_with(context, ProtocolError(f"the stream closed before {name}"))
    except Exception as exc:
        if run is not None:
            run.fail(exc)
        await abort_with(context, exc)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        try:
            if run is not None:  # done, failed, or the partner went away mid-run
                run.close()  # its jobs and its keys (on a cluster's workers too) go
                finish(run)
        finally:
            if slot is not None:
                slot.release()


async def _read_run(run: _Run, requests: AsyncIterator[Any], from_pb: Callable[..., Any]) -> None:
    try:
        async for req in requests:
            await run.receive(from_pb(req, run.public_key))
        run.end_of_input()
    except asyncio.CancelledError:
        raise
    except grpc.aio.AioRpcError:
        return  # the stream broke; the handler's cancellation does the rest
    except Exception as exc:
        run.fail(exc)


class LookalikeServicer(pb_grpc.LookalikeServiceServicer):
    def __init__(
        self,
        store: SqlStore,
        lookalike: LookalikeService,
        scoring: ScoringService,
        admission: Admission | None = None,
    ) -> None:
        self._store = store
        self._service = lookalike
        self._scoring = scoring
        self._admission = admission

    async def UploadModel(
        self, request: pb.ModelUpload, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        try:
            principal = authenticate(self._store, context)
            record, replaced = await asyncio.to_thread(
                register_model,
                self._store,
                principal,
                request.name,
                request.model_json,
                replace=request.replace,
            )
            return serde.model_info_to_pb(record, replaced=replaced)
        except Exception as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        try:
            principal = authenticate(self._store, context)
            records = self._store.list_models(principal.tenant_id)
            return pb.ListModelsResponse(models=[serde.model_info_to_pb(r) for r in records])
        except Exception as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc

    async def Score(
        self,
        request_iterator: AsyncIterator[pb.ScorePartnerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ScoreBrandMessage]:
        async for out in drive_run(
            self._store,
            request_iterator,
            context,
            hello=ScoreHello,
            from_pb=serde.score_partner_from_pb,
            to_pb=serde.score_brand_to_pb,
            open_run=self._scoring.open,
            finish=self._scoring.finish,
            admission=self._admission,
        ):
            yield out

    async def Run(
        self,
        request_iterator: AsyncIterator[pb.LookalikePartnerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.LookalikeBrandMessage]:
        async for out in drive_run(
            self._store,
            request_iterator,
            context,
            hello=LookalikeHello,
            from_pb=serde.lookalike_partner_from_pb,
            to_pb=serde.lookalike_brand_to_pb,
            open_run=self._service.open,
            finish=self._service.finish,
            admission=self._admission,
        ):
            yield out


class AttributionServicer(pb_grpc.AttributionServiceServicer):
    def __init__(
        self, store: SqlStore, attribution: AttributionService, admission: Admission | None = None
    ) -> None:
        self._store = store
        self._service = attribution
        self._admission = admission

    async def UploadConversions(
        self,
        request_iterator: AsyncIterator[pb.ConversionsUploadRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ConversionSet:
        def begin(principal: Principal, header: pb.UploadHeader) -> ConversionsUpload:
            return self._service.begin_upload(principal, serde.upload_header_from_pb(header))

        def add(upload: ConversionsUpload, chunk: pb.ConversionsChunk) -> None:
            upload.add(serde.conversions_chunk_from_pb(chunk))

        async def finish(upload: ConversionsUpload, end: pb.UploadEnd) -> pb.ConversionSet:
            e = serde.upload_end_from_pb(end)
            record = await asyncio.to_thread(upload.finish, e.chunk_count, e.row_count)
            return serde.conversion_set_to_pb(record)

        return await drive_upload(self._store, request_iterator, context, begin, add, finish)

    async def Attribute(
        self,
        request_iterator: AsyncIterator[pb.AttrPartnerMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AttrBrandMessage]:
        async for out in drive_run(
            self._store,
            request_iterator,
            context,
            hello=AttrHello,
            from_pb=serde.attr_partner_from_pb,
            to_pb=serde.attr_brand_to_pb,
            open_run=self._service.open,
            finish=self._service.finish,
            admission=self._admission,
        ):
            yield out

    async def DeleteConversions(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.Deleted:
        return await delete_rpc(
            self._store, context, delete_conversions, self._service.data_dir, request.name
        )

    async def SetPolicy(
        self, request: pb.PolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PolicyResponse:
        try:
            principal = authenticate(self._store, context)
            changes, partner = serde.policy_request_from_pb(request)
            await asyncio.to_thread(
                change_policy, self._store, principal, PolicyChanges.parse(changes), partner
            )
            tenant = self._store.get_tenant(principal.tenant_id)
            assert tenant is not None
            views = await asyncio.to_thread(partner_views, self._store, principal.tenant_id)
            return serde.policy_to_pb(tenant.policy, views)
        except Exception as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
