"""Attribution from the partner's side, and the brand's conversions upload.

The partner's exposure log and the brand's conversions are validated and
hashed on their owners' machines; over the wire go digests (brand upload),
blinded tokens and encrypted aggregates (attribution run).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import iter_frames, read_frame
from cleanroom.client.sdk import ClientError, Connection, stream_upload
from cleanroom.federated.attribution.inputs import (
    PartnerExposures,
    Windows,
    hashed_identifiers,
    parse_conversions,
    parse_exposures,
    partner_exposures,
    read_spend,
)
from cleanroom.federated.attribution.messages import (
    AttrAccepted,
    AttrCells,
    AttrDone,
    CellTokens,
    CellValues,
    ConversionTokens,
    EventValues,
)
from cleanroom.federated.attribution.partner import PartnerAttribution
from cleanroom.federated.attribution.tokens import POINT_CHUNK
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.workers import hash_and_blind_mixed
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde

_log = logging.getLogger(__name__)


async def upload_conversions(
    conn: Connection,
    *,
    name: str,
    path: Path,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    customer_column: str,
    time_column: str,
    value_column: str,
    replace: bool = False,
    chunk_rows: int = 50_000,
) -> dict[str, Any]:
    """Validate, hash and upload a conversions file; returns the stored set."""
    frames = iter_frames(path, chunk_rows)

    def requests() -> Iterator[pb.ConversionsUploadRequest]:
        yield pb.ConversionsUploadRequest(
            header=pb.UploadHeader(
                name=name,
                id_types=[serde.id_type_to_pb(c.id_type) for c in id_columns],
                replace=replace,
            )
        )
        seq = rows = 0
        for frame in frames:
            parsed = parse_conversions(
                frame,
                customer_column=customer_column,
                time_column=time_column,
                value_column=value_column,
                id_columns=id_columns,
            )
            customers = b"".join(
                hashlib.sha256(c.encode("utf-8")).digest() for c in parsed["customer_id"]
            )
            columns = []
            for index, col in enumerate(id_columns):
                id_rows, _, digests = hashed_identifiers(parsed, [col], options)
                present = np.zeros(len(parsed), dtype=np.uint8)
                present[id_rows] = 1
                columns.append(
                    pb.IdColumnChunk(
                        column=index, present=present.tobytes(), digests=digests.tobytes()
                    )
                )
            yield pb.ConversionsUploadRequest(
                chunk=pb.ConversionsChunk(
                    seq=seq,
                    row_count=len(parsed),
                    customers=customers,
                    days=parsed["day"].to_numpy().astype("<i4").tobytes(),
                    values=parsed["value"].to_numpy().astype("<f8").tobytes(),
                    columns=columns,
                )
            )
            seq += 1
            rows += len(parsed)
        yield pb.ConversionsUploadRequest(end=pb.UploadEnd(chunk_count=seq, row_count=rows))

    result: pb.ConversionSet = await stream_upload(
        conn,
        lambda channel, reqs: pb_grpc.AttributionServiceStub(channel).UploadConversions(
            reqs, metadata=conn.metadata, timeout=conn.timeout
        ),
        requests(),
    )
    return {
        "conversions_id": result.conversions_id,
        "name": result.name,
        "events": result.events,
        "customers": result.customers,
        "identifiers": result.identifiers,
    }


@dataclass
class AttributionRequest:
    conversions: str
    exposures: Path
    id_columns: Sequence[IdColumn]
    options: NormalizeOptions
    user_column: str = "user_id"
    spend: Path | None = None
    windows: Windows = Windows()  # noqa: RUF009 - frozen dataclass
    epsilon: float = 0.0


def submission_key(req: AttributionRequest, spend: Mapping[str, float]) -> str:
    """Same file, same parameters: same key, so a resubmission is idempotent."""
    digest = hashlib.sha256()
    with open(req.exposures, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(
        json.dumps(
            {
                "conversions": req.conversions,
                "ids": [f"{c.column}:{c.id_type}" for c in req.id_columns],
                "user": req.user_column,
                "windows": [req.windows.click_days, req.windows.view_days],
                "epsilon": req.epsilon,
                "spend": sorted(spend.items()),
            },
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()


@dataclass
class PreparedAttribution:
    """The partner's side of a run before connecting: the exposure log read and
    validated (bad files fail here, before any network), the spend file and the
    submission key. Identifiers are hashed once the brand has named the types
    both sides hold (:meth:`exposures`). One run per preparation: ``partner``
    is that run's state machine."""

    request: AttributionRequest
    parsed: pd.DataFrame
    executor: Executor | None
    partner: PartnerAttribution

    def exposures(self, id_types: Sequence[str]) -> PartnerExposures:
        """The log with the identifiers of ``id_types`` normalized and hashed."""
        columns = [c for c in self.request.id_columns if str(c.id_type) in set(id_types)]
        return partner_exposures(self.parsed, columns, self.request.options, self.executor)


def prepare_attribution(
    req: AttributionRequest, executor: Executor | None = None
) -> PreparedAttribution:
    """Read and validate the exposure log; ``executor`` runs the crypto (default: here)."""
    # The audience reader's checks (missing file, empty, header only, bad CSV)
    # apply to exposure logs too.
    frame = read_frame(req.exposures)
    parsed = parse_exposures(frame, id_columns=req.id_columns, user_column=req.user_column)
    spend = read_spend(req.spend) if req.spend else {}
    partner = PartnerAttribution(
        conversions=req.conversions,
        click_days=req.windows.click_days,
        view_days=req.windows.view_days,
        id_types=tuple(sorted({str(c.id_type) for c in req.id_columns})),
        run=lambda fn, *args: fn(*args),
        run_many=(
            None
            if executor is None
            else lambda fn, jobs: [f.result() for f in [executor.submit(fn, *a) for a in jobs]]
        ),
        submit=None if executor is None else executor.submit,
        epsilon=req.epsilon,
        submission_key=submission_key(req, spend),
        spend=spend,
    )
    return PreparedAttribution(req, parsed, executor, partner)


async def _in_pool(partner: PartnerAttribution, job: tuple[Any, ...]) -> bytes:
    if partner.submit is not None:
        return await asyncio.wrap_future(partner.submit(hash_and_blind_mixed, *job))
    return await asyncio.to_thread(hash_and_blind_mixed, *job)


class _CellTokenStream:
    """The partner's cell chunks, each sent as soon as the points it carries are blinded.

    Point jobs start when this is created (right after the cells) and run up
    to ``ahead`` jobs ahead of the chunk being sent, so the brand re-blinds
    early chunks while later points are still hashed.
    """

    def __init__(self, partner: PartnerAttribution, ahead: int = 8) -> None:
        self.partner = partner
        self.ahead = ahead
        self._running: deque[asyncio.Future[bytes]] = deque()
        self._submitted = 0
        self._top_up(ahead)

    def _top_up(self, target: int) -> None:
        while self._submitted < min(self.partner.point_job_count, target):
            job = self.partner.point_job(self._submitted)
            self._running.append(asyncio.ensure_future(_in_pool(self.partner, job)))
            self._submitted += 1

    def cancel(self) -> None:
        for fut in self._running:
            fut.cancel()

    async def chunks(self) -> AsyncIterator[CellTokens]:
        partner = self.partner
        points = np.empty((partner.point_count, POINT_LEN), dtype=np.uint8)
        ready = 0
        for seq, (cell, numbers) in enumerate(partner.cell_chunks()):
            needed = int(numbers.max()) // POINT_CHUNK + 1
            self._top_up(max(needed, ready + self.ahead))
            while ready < needed:
                blinded = np.frombuffer(await self._running.popleft(), dtype=np.uint8)
                start = ready * POINT_CHUNK
                points[start : start + len(blinded) // POINT_LEN] = blinded.reshape(-1, POINT_LEN)
                ready += 1
            yield CellTokens(seq=seq, cell=cell, points=points[numbers].tobytes())


@dataclass
class AttributionProgress:
    """Where a partner's attribution run is; handed to ``on_progress`` at each change."""

    phase: str = "waiting for the brand node"
    tokens_total: int = 0  # the partner's tokens, one per (cell, identifier, day)
    tokens_sent: int = 0
    brand_total: int = 0  # the brand's conversion tokens, re-blinded here
    brand_received: int = 0


async def run_attribution(
    conn: Connection,
    prepared: PreparedAttribution,
    on_progress: Callable[[AttributionProgress], None] | None = None,
) -> str:
    """One attribution run; returns the brand node's report id.

    The hello goes out first, so the brand checks its policy (a refused run
    costs the partner nothing more) and starts on its own tokens while the
    partner hashes its log, for the identifier types both hold only.
    ``on_progress`` sees the phase and the token counts as they move.
    """
    partner = prepared.partner
    progress = AttributionProgress()

    def moved(**changes: Any) -> None:
        for name, value in changes.items():
            setattr(progress, name, value)
        if on_progress is not None:
            on_progress(progress)

    loop = asyncio.get_running_loop()
    cells_future: asyncio.Future[AttrCells | None] = loop.create_future()
    aggregates_future: asyncio.Future[pb.AttrPartnerMessage | None] = loop.create_future()

    async def requests() -> AsyncIterator[pb.AttrPartnerMessage]:
        yield serde.attr_partner_to_pb(partner.hello())
        _log.info("attribution hello sent")
        moved()
        cells = await cells_future
        if cells is None:  # this submission already has a report
            return
        yield serde.attr_partner_to_pb(cells)
        moved(phase="blinding and sending tokens", tokens_total=sum(cells.cell_tokens))
        _log.info(
            "attribution cells sent: %d cells, %d tokens, %d distinct points",
            len(cells.cells),
            sum(cells.cell_tokens),
            partner.point_count,
        )
        stream = _CellTokenStream(partner)
        try:
            async for tokens in stream.chunks():
                yield serde.attr_partner_to_pb(tokens)
                moved(tokens_sent=progress.tokens_sent + len(tokens.points) // POINT_LEN)
        finally:
            stream.cancel()
        _log.info("attribution: every partner token sent")
        final = await aggregates_future
        if final is not None:
            yield final
            moved(phase="waiting for the report")

    async with conn.channel() as channel:
        call = pb_grpc.AttributionServiceStub(channel).Attribute(
            requests(), metadata=conn.metadata, timeout=conn.timeout
        )
        seen: set[str] = set()
        try:
            async for response in call:
                public_key = getattr(partner, "public_key", None)
                msg = serde.attr_brand_from_pb(response, public_key)
                if type(msg).__name__ not in seen:
                    seen.add(type(msg).__name__)
                    _log.info("attribution: first %s from the brand node", type(msg).__name__)
                if isinstance(msg, AttrAccepted):
                    if msg.report_id:
                        cells_future.set_result(None)
                        continue
                    partner.on_accepted(msg)
                    moved(phase="hashing the exposure log", brand_total=msg.brand_tokens)
                    data = await asyncio.to_thread(prepared.exposures, msg.id_types)
                    cells_future.set_result(await asyncio.to_thread(partner.on_exposures, data))
                elif isinstance(msg, CellValues):
                    partner.on_cell_values(msg)
                elif isinstance(msg, ConversionTokens):
                    await asyncio.to_thread(partner.on_conversion_tokens, msg)
                    received = progress.brand_received + len(msg.points) // POINT_LEN
                    moved(brand_received=received)
                elif isinstance(msg, EventValues):
                    partner.on_event_values(msg)
                elif isinstance(msg, AttrDone):
                    return msg.report_id
                if partner.ready_for_aggregates and not aggregates_future.done():
                    _log.info("attribution: everything arrived, computing the aggregates")
                    moved(phase="computing the encrypted sums")
                    aggregates = await asyncio.to_thread(partner.aggregates)
                    aggregates_future.set_result(
                        serde.attr_partner_to_pb(aggregates, partner.public_key)
                    )
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from exc
        finally:
            for fut in (cells_future, aggregates_future):
                if not fut.done():
                    fut.cancel()
    raise ClientError("PROTOCOL", "the brand node ended the run without a report")
