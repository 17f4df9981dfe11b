"""Attribution from the partner's side, and the brand's conversions upload.

The partner's exposure log and the brand's conversions are validated and
hashed on their owners' machines; over the wire go digests (brand upload),
blinded tokens and encrypted aggregates (attribution run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import iter_frames
from cleanroom.audiences.upload import ConversionRows, UploadEnd, UploadHeader
from cleanroom.client.runs import Restartable, drive_partner, with_restarts
from cleanroom.client.sdk import ClientError, Connection, stream_upload
from cleanroom.federated.attribution.inputs import (
    ExposureParts,
    hashed_identifiers,
    parse_conversions,
    parse_exposures,
    partner_exposures,
    read_spend,
)
from cleanroom.federated.attribution.messages import Windows
from cleanroom.federated.attribution.partner import AttributionProgress, PartnerAttribution
from cleanroom.matching.workers import RunJobs
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde


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

    header = UploadHeader(name, tuple(str(c.id_type) for c in id_columns), replace)

    def requests() -> Iterator[pb.ConversionsUploadRequest]:
        yield pb.ConversionsUploadRequest(header=serde.upload_header_to_pb(header))
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
                columns.append((index, present.tobytes(), digests.tobytes()))
            chunk = ConversionRows(
                seq=seq,
                customers=customers,
                days=parsed["day"].to_numpy(),
                values=parsed["value"].to_numpy(),
                columns=tuple(columns),
            )
            yield pb.ConversionsUploadRequest(chunk=serde.conversions_chunk_to_pb(chunk))
            seq += 1
            rows += len(parsed)
        end = serde.upload_end_to_pb(UploadEnd(seq, rows))
        yield pb.ConversionsUploadRequest(end=end)

    result: pb.ConversionSet = await stream_upload(
        conn,
        lambda channel, reqs: pb_grpc.AttributionServiceStub(channel).UploadConversions(
            reqs, metadata=conn.metadata, timeout=conn.timeout
        ),
        requests(),
    )
    return serde.conversion_set_from_pb(result)


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
class PreparedAttribution(Restartable[PartnerAttribution]):
    """The partner's side of a run before connecting: the exposure log validated
    (bad files fail here, before any network; ``rows`` it holds), the spend file and
    the submission key. The log is read again, a part at a time, and its identifiers
    hashed once the brand has named the types both sides hold. ``partner`` is the
    run's state machine; ``restart`` makes a fresh one for a new attempt."""

    request: AttributionRequest
    rows: int
    executor: Executor | None
    partner: PartnerAttribution
    new_partner: Callable[[], PartnerAttribution]


EXPOSURE_PART_ROWS = 200_000  # rows of the log read, parsed and hashed at a time


def _parsed_exposure_parts(req: AttributionRequest) -> Iterator[pd.DataFrame]:
    # The audience reader's checks (missing file, empty, header only, bad CSV)
    # apply to exposure logs too; a bad row is named by its row in the file.
    for frame in iter_frames(req.exposures, EXPOSURE_PART_ROWS):
        yield parse_exposures(frame, id_columns=req.id_columns, user_column=req.user_column)


def prepare_attribution(
    req: AttributionRequest,
    executor: Executor | None = None,
    *,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> PreparedAttribution:
    """Validate the exposure log, a part at a time; ``executor`` runs the crypto
    (default: here). The run's buckets and columns go to files in ``spill_dir`` (the
    system's temporary directory) past ``memory_bytes`` (their own defaults)."""
    rows = sum(len(part) for part in _parsed_exposure_parts(req))
    spend = read_spend(req.spend) if req.spend else {}

    def exposures(id_types: Sequence[str]) -> ExposureParts:
        columns = [c for c in req.id_columns if str(c.id_type) in set(id_types)]
        parts = (
            partner_exposures(parsed, columns, req.options, executor)
            for parsed in _parsed_exposure_parts(req)
        )
        return ExposureParts(parts, expected_rows=rows, expected_tokens=rows * len(columns))

    key = submission_key(req, spend)

    def machine() -> PartnerAttribution:
        return PartnerAttribution(
            conversions=req.conversions,
            click_days=req.windows.click_days,
            view_days=req.windows.view_days,
            id_types=tuple(sorted({str(c.id_type) for c in req.id_columns})),
            exposures=exposures,
            jobs=RunJobs(executor),
            epsilon=req.epsilon,
            submission_key=key,
            spend=spend,
            spill_dir=spill_dir,
            memory_bytes=memory_bytes,
        )

    return PreparedAttribution(req, rows, executor, machine(), machine)


async def run_attribution(
    conn: Connection,
    prepared: PreparedAttribution,
    on_progress: Callable[[AttributionProgress], None] | None = None,
) -> str:
    """One attribution run; returns the brand node's report id.

    A thin driver over the partner's state machine: the hello goes out
    first, so the brand checks its policy (a refused run costs the partner
    nothing more) and starts on its own tokens while the partner hashes its
    log, for the identifier types both hold only. ``on_progress`` sees the
    phase and the token counts as they move.
    """

    async def attempt(partner: PartnerAttribution) -> str:
        await drive_partner(
            conn,
            lambda channel, requests: pb_grpc.AttributionServiceStub(channel).Attribute(
                requests, metadata=conn.metadata, timeout=conn.timeout
            ),
            partner,
            serde.attr_partner_to_pb,
            serde.attr_brand_from_pb,
        )
        if not partner.report_id:
            raise ClientError("PROTOCOL", "the brand node ended the run without a report")
        return partner.report_id

    return await with_restarts(conn, prepared, attempt, "attribution", on_progress)
