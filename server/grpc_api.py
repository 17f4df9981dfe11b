"""gRPC servicers: thin adapters from the wire to the services.

Each handler authenticates, converts messages with ``serde``, calls the
transport-free service, and maps any exception to a status in one place
(``errors.status_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from cleanroom.audiences.upload import ColumnDigests, UploadChunk, UploadEnd, UploadHeader
from cleanroom.matching.brand import BrandSession
from cleanroom.matching.messages import Hello
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde
from cleanroom.server.audiences import AudienceService, AudienceUpload
from cleanroom.server.errors import Unauthenticated, status_for
from cleanroom.server.matching import MatchingService
from cleanroom.server.store import AudienceRecord, Principal, SqlStore

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


class AudienceServicer(pb_grpc.AudienceServiceServicer):
    def __init__(self, store: SqlStore, audiences: AudienceService) -> None:
        self._store = store
        self._audiences = audiences

    async def Upload(
        self, request_iterator: AsyncIterator[pb.UploadRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadResponse:
        upload: AudienceUpload | None = None
        try:
            principal: Principal | None = None
            async for req in request_iterator:
                kind = req.WhichOneof("body")
                if principal is None:
                    principal = authenticate(self._store, context)
                if upload is None:
                    if kind != "header":
                        raise ValueError("an upload starts with its header")
                    upload = self._audiences.begin(
                        principal,
                        UploadHeader(
                            name=req.header.name,
                            id_types=tuple(serde.id_type_from_pb(t) for t in req.header.id_types),
                            replace=req.header.replace,
                        ),
                    )
                elif kind == "chunk":
                    upload.add_chunk(
                        UploadChunk(
                            seq=req.chunk.seq,
                            row_count=req.chunk.row_count,
                            columns=tuple(
                                ColumnDigests(c.column, c.digests) for c in req.chunk.columns
                            ),
                        )
                    )
                elif kind == "end":
                    record = await upload.finish(
                        UploadEnd(chunk_count=req.end.chunk_count, row_count=req.end.row_count)
                    )
                    upload = None
                    return pb.UploadResponse(audience=audience_to_pb(record))
                else:
                    raise ValueError(f"unexpected upload message {kind!r} after the header")
            raise ValueError("the upload stream ended without its end message; nothing was stored")
        except Exception as exc:
            if upload is not None:
                upload.abort()
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
        finally:
            if upload is not None:  # cancelled: the client went away mid-upload
                upload.abort()

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
                raise ValueError("a session stream starts with Hello")
            session, stream = await self._matching.open(principal, first)
            accepted = session.accepted() if first.resume_session_id else session.start()
            yield serde.brand_to_pb(accepted)
            reader = asyncio.ensure_future(self._read(session, requests))
            self._matching.attach_reader(session, stream, reader)
            async for msg in session.outgoing(first.received_values, first.received_points):
                yield serde.brand_to_pb(msg)
        except StopAsyncIteration:
            await abort_with(context, ValueError("the stream closed before Hello"))
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
