"""A lookalike job from the partner's side: read, train with the brand node, write tiers.

The users file and the feature file are read, joined and checked on the
partner's machine before anything connects (a bad file costs nothing); the
job then runs over one gRPC stream (``federated/lookalike``) and the package
lands in ``--out`` only once the brand node confirmed it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.client.runs import Restartable, run_package_job, submission_digest
from cleanroom.client.sdk import ClientError, Connection, PsiMethod, run_psi, unary_call
from cleanroom.federated.lookalike.inputs import PartnerUsers, load_partner_users
from cleanroom.federated.lookalike.messages import DEFAULT_TIERS, LookalikeMode
from cleanroom.federated.lookalike.package import PackageWriter
from cleanroom.federated.lookalike.partner import LookalikeProgress, PartnerLookalike
from cleanroom.matching.messages import Protocol
from cleanroom.matching.workers import RunJobs
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde
from cleanroom.proto.errors import InvalidInput, ProtocolError

log = logging.getLogger("cleanroom.client")


@dataclass
class LookalikeRequest:
    audience: str
    users: Path
    features: Path
    id_columns: Sequence[IdColumn]
    options: NormalizeOptions
    out_dir: Path
    user_column: str = "user_id"
    feature_columns: str = ""
    mode: LookalikeMode = LookalikeMode.HIDDEN_SEED
    tiers: tuple[float, ...] = DEFAULT_TIERS
    holdout: float = 0.2
    l2: float = 1.0
    bins: int = 0
    epsilon: float = 0.0
    # ``matched``: find the matches with the OT-extension PSI first (``partner match
    # --protocol kkrt``) and exchange only their slots, instead of every row's.
    match_first: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # options for the state machine


def list_audiences(conn: Connection) -> list[dict[str, Any]]:
    """The brand's audiences as its node lists them (names, sizes per identifier type)."""
    response: pb.ListAudiencesResponse = unary_call(
        conn,
        lambda channel: pb_grpc.AudienceServiceStub(channel).ListAudiences(
            pb.ListAudiencesRequest(), metadata=conn.metadata, timeout=min(conn.timeout, 60)
        ),
    )
    return [serde.audience_from_pb(a) for a in response.audiences]


def shared_id_columns(conn: Connection, req: LookalikeRequest) -> LookalikeRequest:
    """``req`` with only the identifier columns whose type the audience holds: the others
    could never match, so they would only cost points (and tell the brand of them)."""
    found = [a for a in list_audiences(conn) if a["name"] == req.audience]
    if not found:
        return req  # the job's hello gets the node's precise refusal
    held = {t for t, n in found[0]["elements_by_type"].items() if n}
    kept = [c for c in req.id_columns if c.id_type in held]
    if not kept:
        raise InvalidInput(
            f"audience {req.audience!r} holds {', '.join(sorted(held)) or 'no identifiers'};"
            f" none of the identifier columns given is of those types"
        )
    return dataclasses.replace(req, id_columns=kept)


def parse_tiers(spec: str) -> tuple[float, ...]:
    """``"1,2,5,10"``: nested tiers, percent of the scored base, ascending."""
    try:
        tiers = tuple(float(t) for t in spec.split(",") if t.strip())
    except ValueError:
        raise InvalidInput(f"--tiers are percentages such as 1,2,5,10, not {spec!r}") from None
    if not tiers or list(tiers) != sorted(set(tiers)) or not all(0 < t <= 100 for t in tiers):
        raise InvalidInput(f"--tiers are ascending percentages in (0, 100], not {spec!r}")
    return tiers


def submission_key(req: LookalikeRequest) -> str:
    """Same files, same parameters: same key, so a resubmission is idempotent."""
    return submission_digest(
        (req.users, req.features),
        {
            "audience": req.audience,
            "ids": [f"{c.column}:{c.id_type}" for c in req.id_columns],
            "user": req.user_column,
            "features": req.feature_columns,
            "mode": req.mode.value,
            "tiers": list(req.tiers),
            "holdout": req.holdout,
            "l2": req.l2,
            "bins": req.bins,
            "epsilon": req.epsilon,
        },
    )


@dataclass
class PreparedLookalike(Restartable[PartnerLookalike]):
    """The partner's side of one job before connecting: files read, joined and encoded;
    ``partner`` is the job's state machine, ``writer`` its package."""

    request: LookalikeRequest
    users: PartnerUsers
    writer: PackageWriter
    partner: PartnerLookalike
    new_partner: Callable[[], PartnerLookalike]
    spill_dir: Path | None = None
    memory_bytes: int | None = None
    # ``matched``, after ``match_users``: a flag per user row, the users that matched.
    matched_users: np.ndarray | None = None
    find_matches: Callable[[], Awaitable[np.ndarray | None]] | None = None

    @property
    def matches_first(self) -> bool:
        return self.request.mode is LookalikeMode.MATCHED and self.request.match_first


def prepare_lookalike(
    req: LookalikeRequest,
    executor: Executor | None = None,
    on_rows: Callable[[int], None] | None = None,
    *,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> PreparedLookalike:
    """Read, join and encode the partner's files; the identifier columns and the job's
    padded slots go to files in ``spill_dir`` (the system's temporary directory) past
    ``memory_bytes`` (by default ``bulk.MEMORY_BYTES`` and 256 MB)."""
    users = load_partner_users(
        req.users,
        req.features,
        user_column=req.user_column,
        id_columns=req.id_columns,
        options=req.options,
        feature_columns=req.feature_columns,
        bins=req.bins,
        on_rows=on_rows,
        spill_dir=spill_dir,
        memory_bytes=memory_bytes,
    )
    if not users.data.record_count():
        raise InvalidInput(f"no user in {req.users} has a valid identifier to offer")
    writer = PackageWriter(req.out_dir, users.user_ids, users.pipeline, req.mode, req.epsilon)
    key = submission_key(req)

    def machine(
        matched_users: np.ndarray | None = None,
        find_matches: Callable[[], Awaitable[np.ndarray | None]] | None = None,
    ) -> PartnerLookalike:
        return PartnerLookalike(
            matched_users=matched_users,
            find_matches=find_matches,  # not called once the users' flags are known
            audience=req.audience,
            data=users.data,
            features=users.features,
            mode=req.mode,
            tiers=req.tiers,
            holdout=req.holdout,
            l2=req.l2,
            epsilon=req.epsilon,
            submission_key=key,
            write_package=writer.write,
            jobs=RunJobs(executor),
            spill_dir=spill_dir,
            memory_bytes=memory_bytes,
            **req.extra,
        )

    prepared = PreparedLookalike(
        req,
        users,
        writer,
        machine(),
        lambda: machine(prepared.matched_users, prepared.find_matches),
        spill_dir=spill_dir,
        memory_bytes=memory_bytes,
    )
    return prepared


async def match_users(conn: Connection, prepared: PreparedLookalike) -> np.ndarray | None:
    """``matched`` mode's first step, once the brand node accepted the job: which users
    match the audience, by the OT-extension PSI (the brand learns the partner's set size,
    as in the job itself; no count); a flag per user row. None when the node refuses that
    match (its policy, its quota, a set too large for KKRT): the job then exchanges every
    row's slots, as without it."""
    try:
        run = await run_psi(
            conn,
            prepared.request.audience,
            Protocol.MATCH,
            prepared.users.data,
            method=PsiMethod.KKRT,
            report_count=False,
            spill_dir=prepared.spill_dir,
            memory_bytes=prepared.memory_bytes,
        )
    except (ClientError, ProtocolError) as error:
        log.warning("lookalike: no match first (%s); every row's slots go", error)
        return None
    outcome = run.session.outcome
    assert outcome is not None
    matched = np.zeros(prepared.users.data.row_count, dtype=bool)
    window = 1 << 20
    for start in range(0, len(matched), window):
        matched[start : start + window] = outcome.matched_on[start : start + window] >= 0
    prepared.matched_users = matched  # a new attempt of the job reuses them
    return matched


async def run_lookalike(
    conn: Connection,
    prepared: PreparedLookalike,
    on_progress: Callable[[LookalikeProgress], None] | None = None,
) -> dict[str, Any]:
    """One job; returns the package manifest (what ``partner lookalike --json`` prints).
    A ``matched`` job that matches first (``match_first``) runs ``match_users`` once the
    node accepted it."""
    if prepared.matches_first and prepared.find_matches is None:
        prepared.find_matches = functools.partial(match_users, conn, prepared)
        prepared.restart()  # the job's machine, now with its first step
    partner = prepared.partner
    return await run_package_job(
        conn,
        lambda channel, requests: pb_grpc.LookalikeServiceStub(channel).Run(
            requests, metadata=conn.metadata, timeout=conn.timeout
        ),
        prepared,
        serde.lookalike_partner_to_pb,
        serde.lookalike_brand_from_pb,
        files=prepared.writer,
        out_dir=prepared.request.out_dir,
        wrote=lambda machine: machine.package is not None,
        count=len(partner.records),
        summary={"mode": partner.mode.value, "offered": len(partner.records)},
        on_progress=on_progress,
    )
