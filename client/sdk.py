"""The partner SDK (and the brand's upload tool): everything over gRPC.

Identifiers are normalized and hashed here, on the caller's machine; only
SHA-256 digests (uploads) or blinded curve points (PSI) leave it. The public
surface is exported by ``cleanroom.client`` (see its docstring for an example).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import ReadReport, iter_frames, read_hashed_chunks
from cleanroom.audiences.upload import ColumnDigests, UploadChunk, UploadEnd, UploadHeader
from cleanroom.matching.bulk import ArrayColumn, ByteColumn, ColumnBuffer
from cleanroom.matching.kkrt import KkrtPartnerSession, PartnerItems
from cleanroom.matching.messages import Accepted, Protocol, PsiMethod, Result
from cleanroom.matching.partner import (
    MatchOutcome,
    PartnerProgress,
    PartnerSession,
    PartnerSet,
    read_partner_set,
)
from cleanroom.matching.workers import CryptoPool, dst_for, hash_points
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde
from cleanroom.proto.transport import channel_options, host_of, is_local, load_tls

R = TypeVar("R")
log = logging.getLogger("cleanroom.client")

# gRPC codes after which a call is worth repeating: the network or the node
# went away (a restart, a dropped stream), not a refusal of what we sent.
TRANSIENT = frozenset({"UNAVAILABLE", "CANCELLED", "UNKNOWN"})
# The details grpc.aio gives a call whose write the core failed (_AioCall.set_internal_error).
CORE_WRITE_FAILED = "Internal error from Core"
# Trailing metadata of the node's admission-control refusals (server/grpc_api.py).
RETRY_AFTER_KEY = "retry-after-ms"


class ClientError(RuntimeError):
    """A call the brand node refused or that could not complete. ``retry_after`` is the
    node's hint (seconds) when it refused only because it was busy."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Whether the same call may succeed later: the node was unreachable, dropped the
        stream, or was busy (a spent quota or a bad request is not transient)."""
        return self.code in TRANSIENT or (
            self.code == "RESOURCE_EXHAUSTED" and self.retry_after is not None
        )

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> ClientError:
        """The status a failed call ended with (blocking or asyncio API). The node's own
        refusals keep its words; a transport failure says in plain words what happened and
        what to do (gRPC's text, e.g. "ipv4:127.0.0.1:50051: Failed to connect to remote
        host: Connection refused", tells a user little)."""
        code: str = exc.code().name  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        if code == "INTERNAL" and details == CORE_WRITE_FAILED:
            # gRPC's asyncio client ends a call this way when a write finds the connection
            # gone (the node died under it): not the node's status, and as transient as
            # the UNAVAILABLE it would have been one read later.
            code, details = "UNAVAILABLE", "socket closed during a write"
        retry_after = None
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == RETRY_AFTER_KEY:
                try:
                    retry_after = max(0.0, int(value) / 1000)
                except (TypeError, ValueError):
                    retry_after = None
        return cls(code, _plain_transport_message(code, details) or details, retry_after)

    def gave_up(self, backoff: Backoff) -> ClientError:
        """This error after ``backoff`` ran out: how long was tried, and what to do."""
        if not backoff.attempts:
            return self
        return ClientError(
            self.code,
            f"{self.message} (gave up after {backoff.attempts} retries over"
            f" {backoff.elapsed():.0f} s; --retry-seconds allows {backoff.seconds:g} s)",
            self.retry_after,
        )


def _plain_transport_message(code: str, details: str) -> str | None:
    low = details.lower()
    if code == "UNAVAILABLE":
        if "refused" in low or "failed to connect" in low or "unreachable" in low:
            what = "is not accepting connections (nothing listens at --server, or it is down)"
        elif "handshake" in low or "ssl" in low or "certificate" in low or "tls" in low:
            what = "refused the TLS handshake (check --tls-dir: the CA, this client's certificate)"
        elif "socket closed" in low or "reset" in low or "eof" in low or "goaway" in low:
            what = "closed the connection in the middle of the call (it may have restarted)"
        else:
            what = "could not be reached"
        return f"the brand node {what}; check that it runs and that --server is right, then retry"
    if code == "DEADLINE_EXCEEDED":
        return "the brand node did not answer in time; it may be overloaded: retry later"
    return None


@dataclass
class Backoff:
    """Exponential backoff with full jitter over one outage of at most ``seconds``.

    The n-th wait is uniform in [0, min(cap, base·2ⁿ)] (so clients a node dropped at
    once do not all return at once), at least the node's hint when it gave one;
    ``wait`` answers False instead of sleeping once the outage would outlast
    ``seconds``. ``reset`` after progress starts a new outage. Jitter, clock and
    sleep are injectable for tests; the jitter needs no secrecy.
    """

    seconds: float
    base: float = 0.25
    cap: float = 8.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    attempts: int = 0
    _since: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self._since is None else self.clock() - self._since

    async def wait(self, hint: float | None = None) -> bool:
        if self.seconds <= 0:
            return False
        now = self.clock()
        if self._since is None:
            self._since = now
        delay = self.rng.uniform(0.0, min(self.cap, self.base * 2**self.attempts))
        if hint is not None:
            delay = max(delay, hint * self.rng.uniform(1.0, 1.25))
        if now - self._since + delay > self.seconds:
            return False
        self.attempts += 1
        await self.sleep(delay)
        return True

    def reset(self) -> None:
        self._since = None
        self.attempts = 0


@dataclass(frozen=True)
class Connection:
    target: str
    token: str
    tls_dir: Path | None = None
    timeout: float = 3600.0  # deadline of one call, seconds
    # How long one outage of the node (or its refusals for being busy) is waited out.
    retry_seconds: float = 60.0

    def backoff(self) -> Backoff:
        return Backoff(self.retry_seconds)

    def _check_plaintext(self) -> None:
        host = host_of(self.target)
        if not is_local(host):
            raise ValueError(
                f"refusing plaintext to {host}: identifiers are private; pass --tls-dir"
                " (plaintext is allowed only to localhost)"
            )

    def channel(self) -> grpc.aio.Channel:
        options = channel_options()
        if self.tls_dir is not None:
            files = load_tls(self.tls_dir, server=False)
            creds = grpc.ssl_channel_credentials(files.ca, files.key, files.cert)
            return grpc.aio.secure_channel(self.target, creds, options=options)
        self._check_plaintext()
        return grpc.aio.insecure_channel(self.target, options=options)

    def sync_channel(self) -> grpc.Channel:
        options = channel_options()
        if self.tls_dir is not None:
            files = load_tls(self.tls_dir, server=False)
            creds = grpc.ssl_channel_credentials(files.ca, files.key, files.cert)
            return grpc.secure_channel(self.target, creds, options=options)
        self._check_plaintext()
        return grpc.insecure_channel(self.target, options=options)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


async def stream_upload(
    conn: Connection,
    invoke: Callable[[grpc.Channel, Iterator[Any]], R],
    requests: Iterator[Any],
) -> R:
    """A client-streaming call on the blocking API, run on a thread.

    The blocking API reports the brand node's status when it refuses early
    while we are still streaming, where grpc.aio reports INTERNAL
    (grpc/grpc#36066). An error raised while producing the requests (a bad
    row in the file) is re-raised as itself: it says more than CANCELLED.
    """
    failure: list[BaseException] = []

    def recording() -> Iterator[Any]:
        try:
            yield from requests
        except Exception as exc:
            failure.append(exc)
            raise

    def call() -> R:
        with conn.sync_channel() as channel:
            try:
                return invoke(channel, recording())
            except grpc.RpcError as exc:
                if failure:
                    raise failure[0] from exc
                raise ClientError.from_rpc(exc) from exc

    return await asyncio.to_thread(call)


# ------------------------------------------------------------------ uploads


@dataclass
class UploadResult:
    report: ReadReport
    audience: dict[str, Any]
    seeds: int = 0  # accepted records labelled seed
    non_seeds: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out["duplicates"] = self.audience.get("duplicates", 0)
        out["seeds"], out["non_seeds"] = self.seeds, self.non_seeds
        out["audience"] = self.audience
        return out


@dataclass(frozen=True)
class SeedLabels:
    """Which records are seed members: those whose ``column`` holds one of ``positive``
    (compared trimmed and case-insensitively). Without labels every record is a seed."""

    column: str
    positive: tuple[str, ...]

    def __post_init__(self) -> None:
        wanted = tuple(v.strip() for v in self.positive if v.strip())
        if not wanted:
            raise ValueError(f"name the seed values of label column {self.column!r} (--positive)")
        object.__setattr__(self, "positive", wanted)

    def of(self, values: np.ndarray) -> np.ndarray:
        """1 for a seed row, 0 otherwise (uint8)."""
        wanted = {v.casefold() for v in self.positive}
        return np.fromiter(
            (str(v).strip().casefold() in wanted for v in values), dtype=np.uint8, count=len(values)
        )


async def upload_audience(
    conn: Connection,
    *,
    name: str,
    path: Path,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    replace: bool = False,
    chunk_rows: int = 50_000,
    on_rows: Callable[[int], None] | None = None,
    labels: SeedLabels | None = None,
) -> UploadResult:
    """Normalize, hash and upload ``path`` as audience ``name``; ``labels`` marks which
    records are seed members (for lookalikes; default: all)."""
    report = ReadReport()
    counts = {"seeds": 0, "non_seeds": 0}
    # Reading the file first surfaces a missing column before any network use.
    chunks = read_hashed_chunks(
        path,
        id_columns,
        options,
        chunk_rows=chunk_rows,
        report=report,
        keep=() if labels is None else (labels.column,),
    )
    first = next(chunks, None)

    header = UploadHeader(name, tuple(str(c.id_type) for c in id_columns), replace)

    def requests() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=serde.upload_header_to_pb(header))
        seq = rows = 0
        pending = [first] if first is not None else []
        for chunk in _chain(pending, chunks):
            row_labels = (
                np.ones(chunk.row_count, dtype=np.uint8)
                if labels is None
                else labels.of(chunk.kept[labels.column])
            )
            present_rows = np.zeros(chunk.row_count, dtype=bool)
            columns = []
            for index, col in enumerate(chunk.columns):
                present_rows |= col.present
                if col.digests:
                    column_labels = b"" if labels is None else row_labels[col.present].tobytes()
                    columns.append(ColumnDigests(index, col.digests, column_labels))
            accepted = int(present_rows.sum())
            seeds = int(row_labels[present_rows].sum())
            counts["seeds"] += seeds
            counts["non_seeds"] += accepted - seeds
            if accepted:
                upload = UploadChunk(
                    seq=seq,
                    row_count=accepted,
                    columns=tuple(columns),
                    seeds=None if labels is None else seeds,
                )
                yield pb.UploadRequest(chunk=serde.upload_chunk_to_pb(upload))
                seq += 1
                rows += accepted
            if on_rows is not None:
                on_rows(chunk.row_count)
        yield pb.UploadRequest(end=serde.upload_end_to_pb(UploadEnd(seq, rows)))

    response: pb.UploadResponse = await stream_upload(
        conn,
        lambda channel, reqs: pb_grpc.AudienceServiceStub(channel).Upload(
            reqs, metadata=conn.metadata, timeout=conn.timeout
        ),
        requests(),
    )
    return UploadResult(report=report, audience=serde.audience_from_pb(response.audience), **counts)


def _chain(first: list[Any], rest: Any) -> Any:
    yield from first
    yield from rest


async def retrying(
    conn: Connection,
    attempt: Callable[[], Awaitable[R]],
    on_retry: Callable[[ClientError], None] | None = None,
) -> R:
    """``attempt()`` until it succeeds or fails for good: a transient failure (see
    ``ClientError.transient``) is retried with ``conn.backoff()``, after ``on_retry``;
    past the budget the error says how long was tried."""
    backoff = conn.backoff()
    while True:
        try:
            return await attempt()
        except ClientError as error:
            if not error.transient:
                raise
            if not await backoff.wait(error.retry_after):
                raise error.gave_up(backoff) from error
            if on_retry is not None:
                on_retry(error)


def unary_call(conn: Connection, call: Callable[[grpc.Channel], R]) -> R:
    """One unary RPC ``call(channel)`` on a fresh channel; a gRPC error as ClientError."""
    with conn.sync_channel() as channel:
        try:
            return call(channel)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from exc


def delete_dataset(conn: Connection, kind: str, name: str) -> dict[str, str]:
    """Delete the brand's audience or conversion set ``name`` (admin token): its record and
    every file on the node."""
    request = pb.DeleteRequest(name=name)
    options = {"metadata": conn.metadata, "timeout": min(conn.timeout, 60)}
    if kind == "audience":
        done: pb.Deleted = unary_call(
            conn, lambda ch: pb_grpc.AudienceServiceStub(ch).DeleteAudience(request, **options)
        )
    elif kind == "conversions":
        done = unary_call(
            conn,
            lambda ch: pb_grpc.AttributionServiceStub(ch).DeleteConversions(request, **options),
        )
    else:
        raise ValueError(f"not a data set kind: {kind!r}")
    return {"deleted": done.kind, "name": done.name, "id": done.id}


def set_policy(
    conn: Connection, changes: dict[str, Any], partner: str | None = None
) -> dict[str, Any]:
    """Change the tenant's policy (admin token), or ``partner``'s overrides; returns the
    policy in force, with each partner's quota, minimum set size and epsilon spent."""

    response: pb.PolicyResponse = unary_call(
        conn,
        lambda channel: pb_grpc.AttributionServiceStub(channel).SetPolicy(
            serde.policy_request_to_pb(changes, partner),
            metadata=conn.metadata,
            timeout=min(conn.timeout, 60),
        ),
    )
    return serde.policy_from_pb(response)


# ------------------------------------------------------------------ PSI


def load_partner_set(
    path: Path,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    *,
    chunk_rows: int = 50_000,
    on_rows: Callable[[int], None] | None = None,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> tuple[PartnerSet, ReadReport]:
    """Read, normalize and hash the partner file into a ``PartnerSet``.

    A column's digests past ``memory_bytes`` (``bulk.MEMORY_BYTES``, 64 MiB: two
    million identifiers) live in an unnamed file in ``spill_dir`` (the system's
    temporary directory), and so do its row indices past the same size (eight
    million), so a set of any size is read in bounded memory.
    """
    data, report, _ = read_partner_set(
        path,
        id_columns,
        options,
        chunk_rows=chunk_rows,
        on_rows=on_rows,
        spill_dir=spill_dir,
        memory_bytes=memory_bytes,
    )
    return data, report


async def prepare_points(
    data: PartnerSet,
    pool: CryptoPool,
    *,
    batch: int = 4096,
    on_points: Callable[[int], None] | None = None,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> PartnerSet:
    """Hash every identifier to the curve ahead of the session.

    Keyless and deterministic, so doing it before connecting changes nothing
    on the wire; it shortens the session and lets one prepared file be
    matched against several audiences. Points go where the digests would
    (``load_partner_set``): past ``memory_bytes``, to a file in ``spill_dir``.
    """
    limit = asyncio.Semaphore(2 * pool.workers)
    step = batch * 32

    async def one(digests: ByteColumn, points: ColumnBuffer, start: int, dst: bytes) -> None:
        async with limit:
            # Only the batches in flight are in memory; each batch's points land in place.
            part = digests[start : start + step]
            points.write_at(start, await pool.run(hash_points, part, dst))
        if on_points is not None:
            on_points(len(part) // 32)

    columns = []
    for column in data.columns:
        if column.points is not None:
            columns.append(column)
            continue
        dst = dst_for(column.id_type)
        size = len(column.digests)
        points = ColumnBuffer(size, spill_dir=spill_dir, memory_bytes=memory_bytes)
        try:
            await asyncio.gather(
                *(one(column.digests, points, i, dst) for i in range(0, size, step))
            )
        except BaseException:
            points.abort()
            raise
        columns.append(replace(column, points=points.finish()))
    return PartnerSet(row_count=data.row_count, columns=columns)


AnyPartnerSession = PartnerSession | KkrtPartnerSession


@dataclass
class PsiRun:
    session: AnyPartnerSession
    resumes: int = 0  # streams that continued the session after a drop
    restarts: int = 0  # new sessions after the node lost the old one
    accepted: Accepted | None = None
    result: Result | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Serialized protobuf bytes both ways, over every stream of the run (HTTP/2 and TLS
    # framing not counted).
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def outcome(self) -> MatchOutcome:
        """MATCH: which row matched on which column (``matched_on``), and the counts."""
        if self.session.outcome is None:
            raise ValueError("only a finished MATCH session has per-row outcomes")
        return self.session.outcome


async def run_psi(
    conn: Connection,
    audience: str,
    protocol: Protocol,
    data: PartnerSet,
    *,
    pool: CryptoPool | None = None,
    report_count: bool = True,
    on_progress: Callable[[PartnerProgress], None] | None = None,
    session: AnyPartnerSession | None = None,
    method: PsiMethod = PsiMethod.ECDH,
    items: PartnerItems | None = None,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> PsiRun:
    """Run one PSI session to the end through outages of the node.

    A dropped stream or an unreachable node is retried with backoff
    (``conn.retry_seconds``, see ``Backoff``): the session resumes where the
    node still holds it; where the node lost it (it restarted), a new session
    with fresh keys starts over, so nothing of the old one is reused. Any
    other failure, or an outage longer than the budget, ends the run with a
    ``ClientError`` that says what happened.

    ``method`` KKRT (MATCH only) runs the OT-extension protocol; its sessions do not
    resume, so any outage after the node accepted starts a new one. ``items`` are its
    item blocks computed ahead (``partner_items``), as ``prepare_points`` is for ECDH.
    ``pool`` runs the ECDH sessions' crypto (KKRT's runs here, on threads).

    ``spill_dir``: where a large session keeps its files (what it sent, its comparison
    buckets, the outcome's per-row column past ``memory_bytes``); the system's temporary
    directory by default.
    """
    if method is PsiMethod.KKRT and protocol is not Protocol.MATCH:
        raise ValueError("OT-extension PSI computes a MATCH; overlap stays ECDH")

    def new_session() -> AnyPartnerSession:
        fresh: AnyPartnerSession
        if method is PsiMethod.KKRT:
            fresh = KkrtPartnerSession(
                audience=audience,
                data=data,
                items=items,
                report_count=report_count,
                spill_dir=spill_dir,
                memory_bytes=memory_bytes,
            )
        else:
            if pool is None:
                raise ValueError("an ECDH session needs a crypto pool")
            fresh = PartnerSession(
                audience=audience,
                protocol=protocol,
                data=data,
                pool=pool,
                report_count=report_count,
                spill_dir=spill_dir,
                memory_bytes=memory_bytes,
            )
        if on_progress is not None:
            fresh.progress.listeners.append(on_progress)
        return fresh

    if session is None:
        offered = await offer_common_types(conn, audience, protocol, data)  # new_session's too
        if offered is not data:
            data, items = offered, None  # some columns emptied: their blocks differ
        session = new_session()
    elif on_progress is not None:
        session.progress.listeners.append(on_progress)
    run = PsiRun(session)
    backoff = conn.backoff()
    while True:
        run.accepted = None
        try:
            if isinstance(run.session, KkrtPartnerSession):
                await run.session.prepare()
            async with conn.channel() as channel:  # a fresh channel: no reconnect backoff
                await _one_stream(pb_grpc.MatchingServiceStub(channel), conn, run.session, run)
            break
        except grpc.aio.AioRpcError as exc:
            error = ClientError.from_rpc(exc)
        except BaseException:
            run.session.close()
            raise
        lost = error.code == "NOT_FOUND" and bool(run.session.session_id)
        if not (error.transient or lost):
            run.session.close()
            raise error
        if run.accepted is not None:
            backoff.reset()  # the node was back: a new outage starts now
        if not await backoff.wait(error.retry_after):
            run.session.close()
            raise error.gave_up(backoff)
        restart = isinstance(run.session, KkrtPartnerSession)  # never resumes
        if lost or restart or (error.transient and not run.session.session_id):
            # The node restarted (it lost the session) or never accepted it.
            if lost or (restart and run.session.session_id):
                run.restarts += 1
            run.session.close()
            run.session = new_session()
            log.warning("psi: starting a new session (%s: %s)", error.code, error.message)
        else:
            run.resumes += 1
            log.warning("psi: resuming session %s (%s)", run.session.session_id, error.code)
    run.session.close()  # done: its key goes (from a cluster's workers too)
    run.result = run.session.result
    return run


async def offer_common_types(
    conn: Connection, audience: str, protocol: Protocol, data: PartnerSet
) -> PartnerSet:
    """``data`` with only the identifier types the audience holds (the node says which of
    ours; the others could never match, so sending them is wasted work). A MATCH keeps
    every column, emptied, so ``matched_on`` still indexes the caller's columns; an
    overlap drops them, so no record is padded for them. A node too old to answer gets
    everything, as before."""
    types = tuple(dict.fromkeys(c.id_type for c in data.columns))
    request = serde.types_request_to_pb(audience, types)

    def ask(channel: grpc.Channel) -> pb.TypesResponse:
        stub = pb_grpc.MatchingServiceStub(channel)
        return stub.CommonTypes(request, metadata=conn.metadata, timeout=min(conn.timeout, 60))

    async def common_or_none() -> set[str] | None:
        try:
            response = await asyncio.to_thread(unary_call, conn, ask)
        except ClientError as error:
            if error.code == "UNIMPLEMENTED":
                return None
            raise
        return set(serde.types_response_from_pb(response))

    common = await retrying(conn, common_or_none)
    if common is None:
        return data
    if common == set(types):
        return data
    if protocol is Protocol.MATCH:
        columns = [
            c if c.id_type in common else replace(c, rows=c.rows[:0], digests=b"", points=None)
            for c in data.columns
        ]
    else:
        columns = [c for c in data.columns if c.id_type in common]
    return PartnerSet(row_count=data.row_count, columns=columns)


async def _one_stream(
    stub: pb_grpc.MatchingServiceStub, conn: Connection, session: AnyPartnerSession, run: PsiRun
) -> None:
    # gRPC consumes the request iterator itself: when the server ends the
    # call early (a refusal), the status we read is the server's, which a
    # failed explicit write would hide behind INTERNAL.
    accepted_future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()

    def counted(msg: pb.PartnerMessage) -> pb.PartnerMessage:
        run.bytes_sent += msg.ByteSize()
        return msg

    async def requests() -> AsyncIterator[pb.PartnerMessage]:
        yield counted(serde.partner_to_pb(session.hello()))
        acc = await accepted_future
        async for msg in session.outgoing(acc.next_partner_seq, acc.next_value_seq):
            yield counted(serde.partner_to_pb(msg))

    call = stub.Session(requests(), metadata=conn.metadata, timeout=conn.timeout)
    try:
        first = await call.read()
        if first is grpc.aio.EOF:
            await call  # raises the status the server ended with
            raise ClientError("UNAVAILABLE", "the brand node closed the stream before accepting")
        run.bytes_received += first.ByteSize()
        accepted = serde.brand_from_pb(first)
        if not isinstance(accepted, Accepted):
            raise ClientError("PROTOCOL", "the brand node did not accept the session")
        await session.receive(accepted)
        run.accepted = accepted
        accepted_future.set_result(accepted)
        while session.result is None:
            response = await call.read()
            if response is grpc.aio.EOF:
                break
            run.bytes_received += response.ByteSize()
            await session.receive(serde.brand_from_pb(response))
        if session.result is None:
            await call
            raise ClientError("PROTOCOL", "the stream ended without a result")
    except grpc.aio.AioRpcError:
        if session.error is not None:
            raise session.error from None
        raise
    finally:
        if not accepted_future.done():
            accepted_future.cancel()
        call.cancel()


# ------------------------------------------------------------------ output


MATCHED, MATCHED_ON = "matched", "matched_on"


def write_match_output(
    source: Path,
    out: Path,
    matched_on: ArrayColumn,
    id_columns: Sequence[IdColumn],
    *,
    chunk_rows: int = 100_000,
) -> int:
    """Copy ``source`` to ``out`` adding ``matched`` and ``matched_on``; atomic.
    ``matched_on`` (``MatchOutcome.matched_on``) is read a chunk of rows at a time."""
    labels = np.array([""] + [str(c.id_type) for c in id_columns], dtype=object)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    written = 0
    try:
        with open(tmp, "wb") as f:
            for frame in iter_frames(source, chunk_rows):
                part = matched_on[written : written + len(frame)]
                frame = frame.copy()
                frame[MATCHED] = np.where(part >= 0, "true", "false")
                frame[MATCHED_ON] = labels[part.astype(np.int64) + 1]
                f.write(_csv_bytes(frame, header=written == 0))
                written += len(frame)
            f.flush()
            os.fsync(f.fileno())
        if written != len(matched_on):
            raise ValueError(
                f"{source} changed while matching: {written} rows now, {len(matched_on)} before"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def _csv_bytes(frame: pd.DataFrame, header: bool) -> bytes:
    """The frame as pandas writes it (minimal quoting, "\\n" line ends), through Arrow's
    writer where no cell needs quotes (several times faster); pandas for the rest."""
    names = [str(c) for c in frame.columns]
    if len(set(names)) == len(names):
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if all(
                pa.types.is_string(t) or pa.types.is_large_string(t) for t in table.schema.types
            ):
                sink = pa.BufferOutputStream()
                options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
                pa_csv.write_csv(table, sink, options)
                # Arrow quotes header names whatever the style: pandas writes the header.
                head = frame.iloc[:0].to_csv(index=False, lineterminator="\n") if header else ""
                return head.encode("utf-8") + sink.getvalue().to_pybytes()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass  # a cell with a delimiter, quote or line break: pandas quotes it
    return frame.to_csv(index=False, header=header, lineterminator="\n").encode("utf-8")


def read_match_output(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)
