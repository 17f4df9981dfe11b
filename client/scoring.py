"""HE scoring from both sides: the brand registers a model, the partner scores its users.

``upload_model`` checks the model file here before it connects (a bad file
costs nothing) and registers it with the brand node (admin token).
``prepare_score`` reads the partner's feature file (one row per user, keyed
by ``--user-column``); the columns the model names are checked and
quantized only once the node says which they are, before anything is
encrypted. The tiers land in ``--out`` once the node confirmed the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.client.runs import Restartable, run_package_job, submission_digest
from cleanroom.client.sdk import Connection, unary_call
from cleanroom.federated.lookalike.brand_model import BrandModel
from cleanroom.federated.lookalike.features import numeric_column
from cleanroom.federated.lookalike.inputs import read_features, unique_users
from cleanroom.federated.lookalike.messages import DEFAULT_TIERS
from cleanroom.federated.lookalike.package import ScoredTiersWriter
from cleanroom.federated.lookalike.scoring import PartnerScoring, ScoreProgress
from cleanroom.matching.workers import RunJobs
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde
from cleanroom.proto.errors import InvalidInput


def upload_model(
    conn: Connection, name: str, path: Path, *, replace: bool = False
) -> dict[str, Any]:
    """Register the model in ``path`` as ``name``; returns what the node stored (no weights)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InvalidInput(f"model file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"model file {path} cannot be read: {exc}") from exc
    BrandModel.parse(text, f"model file {path}")
    info: pb.ModelInfo = unary_call(
        conn,
        lambda channel: pb_grpc.LookalikeServiceStub(channel).UploadModel(
            pb.ModelUpload(name=name, model_json=text, replace=replace),
            metadata=conn.metadata,
            timeout=min(conn.timeout, 60),
        ),
    )
    return serde.model_info_to_json(info)


def list_models(conn: Connection) -> list[dict[str, Any]]:
    response: pb.ListModelsResponse = unary_call(
        conn,
        lambda channel: pb_grpc.LookalikeServiceStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=conn.metadata, timeout=min(conn.timeout, 60)
        ),
    )
    return [serde.model_info_to_json(m) for m in response.models]


class FeatureColumns(Mapping[str, np.ndarray]):
    """The feature file's columns by name, read as finite numbers when first used (a
    column the model does not name is never parsed, so it may hold anything)."""

    def __init__(self, frame: pd.DataFrame, user_column: str, source: Path) -> None:
        self._frame = frame
        self._names = [str(c) for c in frame.columns if c != user_column]
        self._source = source
        self._parsed: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._parsed:
            try:
                self._parsed[name] = numeric_column(self._frame[name], name)
            except InvalidInput as exc:
                raise InvalidInput(f"feature file {self._source}: {exc}") from None
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class ScoreRequest:
    model: str
    features: Path
    out_dir: Path
    user_column: str = "user_id"
    tiers: tuple[float, ...] = DEFAULT_TIERS


def score_submission_key(req: ScoreRequest) -> str:
    """Same file, same model and tiers: same key, so a resubmission is idempotent."""
    return submission_digest(
        (req.features,),
        {"model": req.model, "user": req.user_column, "tiers": list(req.tiers)},
        domain=b"he-score\0",
    )


@dataclass
class PreparedScore(Restartable[PartnerScoring]):
    request: ScoreRequest
    user_ids: np.ndarray
    writer: ScoredTiersWriter
    partner: PartnerScoring
    new_partner: Callable[[], PartnerScoring]


def prepare_score(req: ScoreRequest, executor: Any = None) -> PreparedScore:
    frame = read_features(req.features, req.user_column)
    user_ids = frame[req.user_column].astype(str).str.strip().to_numpy(dtype=object)
    unique_users(user_ids, f"feature file {req.features}")
    if len(user_ids) < 2:
        raise InvalidInput(f"feature file {req.features} has fewer than 2 users to score")
    writer = ScoredTiersWriter(req.out_dir, user_ids, req.model)
    columns = FeatureColumns(frame, req.user_column, req.features)
    key = score_submission_key(req)

    def machine() -> PartnerScoring:
        return PartnerScoring(
            model=req.model,
            columns=columns,
            users=len(user_ids),
            tiers=req.tiers,
            submission_key=key,
            write_package=writer.write,
            jobs=RunJobs(executor),
        )

    return PreparedScore(req, user_ids, writer, machine(), machine)


async def run_score(
    conn: Connection,
    prepared: PreparedScore,
    on_progress: Callable[[ScoreProgress], None] | None = None,
) -> dict[str, Any]:
    """One scoring job; returns the manifest (what ``partner score --json`` prints)."""
    partner = prepared.partner
    return await run_package_job(
        conn,
        lambda channel, requests: pb_grpc.LookalikeServiceStub(channel).Score(
            requests, metadata=conn.metadata, timeout=conn.timeout
        ),
        prepared,
        serde.score_partner_to_pb,
        serde.score_brand_from_pb,
        files=prepared.writer,
        out_dir=prepared.request.out_dir,
        wrote=lambda machine: machine.result is not None,
        count=partner.users,
        summary={"mode": "he-score", "model": partner.model},
        on_progress=on_progress,
    )
