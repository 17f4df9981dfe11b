"""The one place that converts between domain dataclasses and protobuf.

Servicers and clients call these functions; protocol code never sees a
generated class. Conversions from the wire validate what the type system of
protobuf cannot (enum values, oneof presence) and raise ``ValueError`` with
the field named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cleanroom.audiences.identifiers import ID_TYPES
from cleanroom.audiences.upload import (
    ColumnDigests,
    ConversionRows,
    UploadChunk,
    UploadEnd,
    UploadHeader,
)
from cleanroom.federated.attribution.messages import (
    AttrAccepted,
    AttrAggregates,
    AttrBrandMessage,
    AttrCells,
    AttrDone,
    AttrHello,
    AttributedAggregate,
    AttrPartnerMessage,
    Cell,
    CellTokens,
    CellValues,
    ConversionTokens,
    DpParams,
    EventValues,
    GroupAggregate,
)
from cleanroom.federated.lookalike.brand_model import ModelFeature, RegisteredModel
from cleanroom.federated.lookalike.messages import (
    BrandList,
    BrandPoints,
    BrandValues,
    DecryptedSums,
    EncryptedLabels,
    ExchangedRows,
    HoldoutAggregates,
    LookalikeAccepted,
    LookalikeBrandMessage,
    LookalikeDone,
    LookalikeHello,
    LookalikeMetrics,
    LookalikeMode,
    LookalikePartnerMessage,
    MaskedSums,
    MatchedRows,
    PackageSummary,
    ScoreAccepted,
    ScoreBrandMessage,
    ScoreChunk,
    ScoreHello,
    ScorePartnerMessage,
    ScoreTiers,
    SlotPoints,
)
from cleanroom.federated.paillier import (
    InvalidCiphertextError,
    PaillierPublicKey,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
)
from cleanroom.matching.messages import (
    Accepted,
    BrandMessage,
    ColumnChunk,
    Finish,
    Hello,
    PartnerMessage,
    PointChunk,
    Protocol,
    PsiMethod,
    Result,
    ValueChunk,
)
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto.errors import InvalidInput

if TYPE_CHECKING:
    from cleanroom.server.policy import Policy
    from cleanroom.server.store import AudienceRecord, ConversionSetRecord
    from cleanroom.server.tenants import PartnerView

_PROTOCOL_TO_PB = {Protocol.MATCH: pb.MATCH, Protocol.CARDINALITY: pb.CARDINALITY}
_PROTOCOL_FROM_PB = {v: k for k, v in _PROTOCOL_TO_PB.items()}
_METHOD_TO_PB = {PsiMethod.ECDH: pb.PSI_METHOD_ECDH, PsiMethod.KKRT: pb.PSI_METHOD_KKRT}
_METHOD_FROM_PB = {v: k for k, v in _METHOD_TO_PB.items()}

# Every identifier type by its enum name on the wire (tests/test_protos.py checks both
# lists agree).
_ID_TYPE_TO_PB: dict[str, pb.IdType] = {
    t: cast("pb.IdType", pb.IdType.Value(t.upper())) for t in ID_TYPES
}
_ID_TYPE_FROM_PB: dict[int, str] = {v: k for k, v in _ID_TYPE_TO_PB.items()}


# The largest count a partner may declare: protobuf's uint64 goes to 2**64 - 1, but the
# node keeps counts in numpy int64 arrays and SQL BIGINT columns, which stop at 2**63 - 1.
MAX_COUNT = 2**63 - 1


def _count(value: int, what: str) -> int:
    if value > MAX_COUNT:
        raise InvalidInput(f"{what} is {value}, more than the largest count, 2**63 - 1")
    return value


def id_type_to_pb(id_type: str) -> pb.IdType:
    try:
        return _ID_TYPE_TO_PB[str(id_type)]
    except KeyError:
        raise InvalidInput(
            f"unknown identifier type {id_type!r}; expected one of {ID_TYPES}"
        ) from None


def id_type_from_pb(value: int) -> str:
    try:
        return _ID_TYPE_FROM_PB[value]
    except KeyError:
        raise InvalidInput(f"unknown identifier type code {value}") from None


# ------------------------------------------------------------------ partner → brand


def types_request_to_pb(audience: str, id_types: Sequence[str]) -> pb.TypesRequest:
    return pb.TypesRequest(audience=audience, id_types=list(id_types))


def types_request_from_pb(request: pb.TypesRequest) -> tuple[str, tuple[str, ...]]:
    return request.audience, tuple(request.id_types)


def types_response_to_pb(id_types: Sequence[str]) -> pb.TypesResponse:
    return pb.TypesResponse(id_types=list(id_types))


def types_response_from_pb(response: pb.TypesResponse) -> tuple[str, ...]:
    return tuple(response.id_types)


def partner_to_pb(msg: PartnerMessage) -> pb.PartnerMessage:
    if isinstance(msg, Hello):
        return pb.PartnerMessage(
            hello=pb.Hello(
                audience=msg.audience,
                protocol=_PROTOCOL_TO_PB[msg.protocol],
                declared_records=msg.declared_records,
                declared_points=msg.declared_points,
                slots_per_record=msg.slots_per_record,
                resume_session_id=msg.resume_session_id,
                received_values=msg.received_values,
                received_points=msg.received_points,
                id_types=list(msg.id_types),
                method=_METHOD_TO_PB[msg.method],
                ot_point=msg.ot_point,
                cuckoo_key=msg.cuckoo_key,
                nonce=msg.nonce,
                bins=msg.bins,
            )
        )
    if isinstance(msg, PointChunk):
        return pb.PartnerMessage(points=pb.PointChunk(seq=msg.seq, points=msg.points))
    if isinstance(msg, ColumnChunk):
        return pb.PartnerMessage(columns=pb.ColumnChunk(seq=msg.seq, columns=msg.columns))
    if isinstance(msg, ValueChunk):
        return pb.PartnerMessage(values=pb.ValueChunk(seq=msg.seq, values=msg.values))
    if isinstance(msg, Finish):
        return pb.PartnerMessage(
            finish=pb.Finish(report_count=msg.report_count, matched_records=msg.matched_records)
        )
    raise TypeError(f"not a partner message: {type(msg).__name__}")


def partner_from_pb(msg: pb.PartnerMessage) -> PartnerMessage:
    kind = msg.WhichOneof("body")
    if kind == "hello":
        h = msg.hello
        if h.protocol not in _PROTOCOL_FROM_PB:
            raise InvalidInput("Hello.protocol must be MATCH or CARDINALITY")
        if not h.audience:
            raise InvalidInput("Hello.audience is required")
        if h.method not in _METHOD_FROM_PB:  # a newer client's method is refused, not run as ECDH
            raise InvalidInput(f"Hello.method {h.method} is not a PSI method this node knows")
        return Hello(
            audience=h.audience,
            protocol=_PROTOCOL_FROM_PB[h.protocol],
            declared_records=_count(h.declared_records, "Hello.declared_records"),
            declared_points=_count(h.declared_points, "Hello.declared_points"),
            slots_per_record=h.slots_per_record,
            resume_session_id=h.resume_session_id,
            received_values=_count(h.received_values, "Hello.received_values"),
            received_points=_count(h.received_points, "Hello.received_points"),
            id_types=tuple(h.id_types),
            method=_METHOD_FROM_PB[h.method],
            ot_point=h.ot_point,
            cuckoo_key=h.cuckoo_key,
            nonce=h.nonce,
            bins=_count(h.bins, "Hello.bins"),
        )
    if kind == "points":
        return PointChunk(seq=msg.points.seq, points=msg.points.points)
    if kind == "values":
        return ValueChunk(seq=msg.values.seq, values=msg.values.values)
    if kind == "columns":
        return ColumnChunk(seq=msg.columns.seq, columns=msg.columns.columns)
    if kind == "finish":
        return Finish(
            report_count=msg.finish.report_count, matched_records=msg.finish.matched_records
        )
    raise InvalidInput("empty PartnerMessage: set one of hello, points, values, columns, finish")


# ------------------------------------------------------------------ brand → partner


def brand_to_pb(msg: BrandMessage) -> pb.BrandMessage:
    if isinstance(msg, Accepted):
        return pb.BrandMessage(
            accepted=pb.Accepted(
                session_id=msg.session_id,
                brand_points=msg.brand_points,
                value_len=msg.value_len,
                chunk_size=msg.chunk_size,
                next_partner_seq=msg.next_partner_seq,
                next_value_seq=msg.next_value_seq,
                ot_points=msg.ot_points,
                nonce=msg.nonce,
                bins=msg.bins,
            )
        )
    if isinstance(msg, ValueChunk):
        return pb.BrandMessage(values=pb.ValueChunk(seq=msg.seq, values=msg.values))
    if isinstance(msg, PointChunk):
        return pb.BrandMessage(points=pb.PointChunk(seq=msg.seq, points=msg.points))
    if isinstance(msg, Result):
        return pb.BrandMessage(result=pb.Result(intersection=msg.intersection, known=msg.known))
    raise TypeError(f"not a brand message: {type(msg).__name__}")


def brand_from_pb(msg: pb.BrandMessage) -> BrandMessage:
    kind = msg.WhichOneof("body")
    if kind == "accepted":
        a = msg.accepted
        if not 1 <= a.value_len <= 32 or a.chunk_size < 1:
            raise InvalidInput("Accepted carries an invalid value length or chunk size")
        return Accepted(
            session_id=a.session_id,
            brand_points=a.brand_points,
            value_len=a.value_len,
            chunk_size=a.chunk_size,
            next_partner_seq=a.next_partner_seq,
            next_value_seq=a.next_value_seq,
            ot_points=a.ot_points,
            nonce=a.nonce,
            bins=a.bins,
        )
    if kind == "values":
        return ValueChunk(seq=msg.values.seq, values=msg.values.values)
    if kind == "points":
        return PointChunk(seq=msg.points.seq, points=msg.points.points)
    if kind == "result":
        return Result(intersection=msg.result.intersection, known=msg.result.known)
    raise InvalidInput("empty BrandMessage")


# ------------------------------------------------------------------ uploads


def upload_header_to_pb(header: UploadHeader) -> pb.UploadHeader:
    return pb.UploadHeader(
        name=header.name,
        id_types=[id_type_to_pb(t) for t in header.id_types],
        replace=header.replace,
    )


def upload_header_from_pb(header: pb.UploadHeader) -> UploadHeader:
    return UploadHeader(
        name=header.name,
        id_types=tuple(id_type_from_pb(t) for t in header.id_types),
        replace=header.replace,
    )


def upload_chunk_to_pb(chunk: UploadChunk) -> pb.UploadChunk:
    out = pb.UploadChunk(
        seq=chunk.seq,
        row_count=chunk.row_count,
        columns=[
            pb.IdColumnChunk(column=c.column, digests=c.digests, labels=c.labels)
            for c in chunk.columns
        ],
    )
    if chunk.seeds is not None:
        out.seeds = chunk.seeds
    return out


def upload_end_to_pb(end: UploadEnd) -> pb.UploadEnd:
    return pb.UploadEnd(chunk_count=end.chunk_count, row_count=end.row_count)


def upload_chunk_from_pb(chunk: pb.UploadChunk) -> UploadChunk:
    return UploadChunk(
        seq=chunk.seq,
        row_count=chunk.row_count,
        columns=tuple(ColumnDigests(c.column, c.digests, c.labels) for c in chunk.columns),
        seeds=chunk.seeds if chunk.HasField("seeds") else None,
    )


def upload_end_from_pb(end: pb.UploadEnd) -> UploadEnd:
    return UploadEnd(chunk_count=end.chunk_count, row_count=end.row_count)


def _packed(data: bytes, dtype: str, what: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise InvalidInput(f"{what} holds {len(data)} bytes, not a multiple of {width}")
    return np.frombuffer(data, dtype=dtype)


def conversions_chunk_to_pb(chunk: ConversionRows) -> pb.ConversionsChunk:
    return pb.ConversionsChunk(
        seq=chunk.seq,
        row_count=len(chunk.days),
        customers=chunk.customers,
        days=np.asarray(chunk.days).astype("<i4").tobytes(),
        values=np.asarray(chunk.values).astype("<f8").tobytes(),
        columns=[
            pb.IdColumnChunk(column=column, present=present, digests=digests)
            for column, present, digests in chunk.columns
        ],
    )


def conversions_chunk_from_pb(chunk: pb.ConversionsChunk) -> ConversionRows:
    return ConversionRows(
        seq=chunk.seq,
        customers=chunk.customers,
        days=_packed(chunk.days, "<i4", f"conversions chunk {chunk.seq}: days"),
        values=_packed(chunk.values, "<f8", f"conversions chunk {chunk.seq}: values"),
        columns=tuple((x.column, x.present, x.digests) for x in chunk.columns),
    )


def audience_from_pb(a: pb.Audience) -> dict[str, Any]:
    """A stored audience as the uploader reports it (JSON)."""
    return {
        "audience_id": a.audience_id,
        "name": a.name,
        "records": a.records,
        "elements": a.elements,
        "duplicates": a.duplicates,
        "elements_by_type": dict(a.elements_by_type),
        "seeds": a.seeds,
    }


def audience_to_pb(record: AudienceRecord) -> pb.Audience:
    return pb.Audience(
        audience_id=record.audience_id,
        name=record.name,
        records=record.records,
        elements=record.elements,
        duplicates=record.duplicates,
        elements_by_type=record.elements_by_type,
        created_at=record.created_at.isoformat(),
        seeds=record.seeds,
    )


def conversion_set_from_pb(c: pb.ConversionSet) -> dict[str, Any]:
    """A stored conversion set as the uploader reports it (JSON)."""
    return {
        "conversions_id": c.conversions_id,
        "name": c.name,
        "events": c.events,
        "customers": c.customers,
        "identifiers": c.identifiers,
    }


def conversion_set_to_pb(record: ConversionSetRecord) -> pb.ConversionSet:
    return pb.ConversionSet(
        conversions_id=record.conversions_id,
        name=record.name,
        events=record.events,
        customers=record.customers,
        identifiers=record.identifiers,
    )


# ------------------------------------------------------------------ policy

_POLICY_FIELDS = (
    "aggregation_threshold",
    "dp",
    "epsilon_budget",
    "min_partner_records",
    "sessions_per_day",
    "delta",
    "lookalike_modes",
    "min_lookalike_seed",
    "lookalike_dp",
    "lookalike_epsilon",
    "lookalike_epsilon_budget",
    "retention_days",
    "match_methods",
)
_LIST_FIELDS = ("lookalike_modes", "match_methods")  # comma-separated on the wire


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def policy_request_to_pb(changes: dict[str, Any], partner: str | None = None) -> pb.PolicyRequest:
    unknown = set(changes) - set(_POLICY_FIELDS)
    if unknown:
        raise InvalidInput(f"not policy fields: {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {
        k: ",".join(v) if k in _LIST_FIELDS and not isinstance(v, str) else v
        for k, v in changes.items()
    }
    request = pb.PolicyRequest(**fields)
    if partner is not None:
        request.partner = partner
    return request


def policy_request_from_pb(request: pb.PolicyRequest) -> tuple[dict[str, Any], str | None]:
    """The fields the request sets (unvalidated: the policy service validates) and the
    partner it names, if any."""
    changes = {name: getattr(request, name) for name in _POLICY_FIELDS if request.HasField(name)}
    for name in _LIST_FIELDS:
        if name in changes:
            changes[name] = _split(changes[name])
    return changes, request.partner if request.HasField("partner") else None


def policy_to_pb(policy: Policy, partners: list[PartnerView]) -> pb.PolicyResponse:
    return pb.PolicyResponse(
        aggregation_threshold=policy.aggregation_threshold,
        dp=policy.dp,
        epsilon_budget=policy.epsilon_budget,
        min_partner_records=policy.min_partner_records,
        sessions_per_day=policy.sessions_per_day,
        delta=policy.delta,
        lookalike_modes=",".join(policy.lookalike_modes),
        min_lookalike_seed=policy.min_lookalike_seed,
        lookalike_dp=policy.lookalike_dp,
        lookalike_epsilon=policy.lookalike_epsilon,
        lookalike_epsilon_budget=policy.lookalike_epsilon_budget,
        retention_days=policy.retention_days,
        match_methods=",".join(policy.match_methods),
        partners=[
            pb.PartnerPolicy(
                name=v.partner.name,
                sessions_per_day=v.policy.sessions_per_day,
                min_partner_records=v.policy.min_partner_records,
                epsilon_spent=v.epsilon_spent,
                epsilon_remaining=v.epsilon_remaining,
                lookalike_epsilon_spent=v.lookalike_epsilon_spent,
                lookalike_epsilon_remaining=v.lookalike_epsilon_remaining,
            )
            for v in partners
        ],
    )


def policy_from_pb(response: pb.PolicyResponse) -> dict[str, Any]:
    """The policy in force as the CLI prints it (JSON)."""
    out: dict[str, Any] = {name: getattr(response, name) for name in _POLICY_FIELDS}
    for name in _LIST_FIELDS:
        out[name] = _split(out[name])
    out["partners"] = [
        {
            "name": p.name,
            "sessions_per_day": p.sessions_per_day,
            "min_partner_records": p.min_partner_records,
            "epsilon_spent": p.epsilon_spent,
            "epsilon_remaining": p.epsilon_remaining,
            "lookalike_epsilon_spent": p.lookalike_epsilon_spent,
            "lookalike_epsilon_remaining": p.lookalike_epsilon_remaining,
        }
        for p in response.partners
    ]
    return out


# ------------------------------------------------------------------ attribution


def _n_to_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _needs_key(public_key: PaillierPublicKey | None, what: str) -> PaillierPublicKey:
    if public_key is None:
        # The state machines hold the key from AttrAccepted on; before it no
        # message carries ciphertexts, so this is a peer out of round.
        raise InvalidInput(f"{what} before the run's Paillier key was agreed")
    return public_key


def _one_ciphertext(data: bytes, public_key: PaillierPublicKey, what: str) -> int:
    values = ciphertexts_from_bytes(data, public_key)
    if len(values) != 1:
        raise InvalidInput(f"{what} holds {len(values)} ciphertexts, not one")
    return values[0]


def attr_partner_to_pb(
    msg: AttrPartnerMessage, public_key: PaillierPublicKey | None = None
) -> pb.AttrPartnerMessage:
    if isinstance(msg, AttrHello):
        return pb.AttrPartnerMessage(
            hello=pb.AttrHello(
                conversions=msg.conversions,
                click_days=msg.click_days,
                view_days=msg.view_days,
                id_types=list(msg.id_types),
                epsilon=msg.epsilon,
                submission_key=msg.submission_key,
            )
        )
    if isinstance(msg, AttrCells):
        return pb.AttrPartnerMessage(
            cells=pb.AttrCells(
                cells=[
                    pb.AttrCell(campaign_id=c.campaign_id, group=c.group, touch=c.touch)
                    for c in msg.cells
                ],
                cell_tokens=list(msg.cell_tokens),
            )
        )
    if isinstance(msg, CellTokens):
        return pb.AttrPartnerMessage(
            cell_tokens=pb.AttrCellTokens(seq=msg.seq, cell=msg.cell, points=msg.points)
        )
    if isinstance(msg, AttrAggregates):
        key = _needs_key(public_key, "aggregates")
        return pb.AttrPartnerMessage(
            aggregates=pb.AttrAggregates(
                groups=[
                    pb.AttrGroupAggregate(
                        campaign_id=g.campaign_id,
                        group=g.group,
                        users=g.users,
                        conversions=g.conversions,
                        converters=g.converters,
                        revenue=ciphertexts_to_bytes([g.revenue], key),
                    )
                    for g in msg.groups
                ],
                attributed=[
                    pb.AttrAttributedAggregate(
                        campaign_id=t.campaign_id,
                        conversions=t.conversions,
                        revenue=ciphertexts_to_bytes([t.revenue], key),
                    )
                    for t in msg.attributed
                ],
                spend=[pb.AttrSpend(campaign_id=c, spend=s) for c, s in msg.spend],
            )
        )
    raise TypeError(f"not an attribution partner message: {type(msg).__name__}")


def attr_partner_from_pb(
    msg: pb.AttrPartnerMessage, public_key: PaillierPublicKey | None = None
) -> AttrPartnerMessage:
    kind = msg.WhichOneof("body")
    if kind == "hello":
        h = msg.hello
        if not h.conversions:
            raise InvalidInput("AttrHello.conversions is required")
        return AttrHello(
            conversions=h.conversions,
            click_days=h.click_days,
            view_days=h.view_days,
            id_types=tuple(h.id_types),
            epsilon=h.epsilon,
            submission_key=h.submission_key,
        )
    if kind == "cells":
        c = msg.cells
        return AttrCells(
            cells=tuple(Cell(x.campaign_id, x.group, x.touch) for x in c.cells),
            cell_tokens=tuple(c.cell_tokens),
        )
    if kind == "cell_tokens":
        t = msg.cell_tokens
        return CellTokens(seq=t.seq, cell=t.cell, points=t.points)
    if kind == "aggregates":
        key = _needs_key(public_key, "aggregates")
        g = msg.aggregates
        return AttrAggregates(
            groups=tuple(
                GroupAggregate(
                    x.campaign_id,
                    x.group,
                    x.users,
                    x.conversions,
                    x.converters,
                    _one_ciphertext(x.revenue, key, f"the revenue of {x.campaign_id}/{x.group}"),
                )
                for x in g.groups
            ),
            attributed=tuple(
                AttributedAggregate(
                    x.campaign_id,
                    x.conversions,
                    _one_ciphertext(x.revenue, key, f"the attributed revenue of {x.campaign_id}"),
                )
                for x in g.attributed
            ),
            spend=tuple((x.campaign_id, x.spend) for x in g.spend),
        )
    raise InvalidInput("empty AttrPartnerMessage: set one of hello, cells, cell_tokens, aggregates")


def attr_brand_to_pb(
    msg: AttrBrandMessage, public_key: PaillierPublicKey | None = None
) -> pb.AttrBrandMessage:
    if isinstance(msg, AttrAccepted):
        return pb.AttrBrandMessage(
            accepted=pb.AttrAccepted(
                session_id=msg.session_id,
                public_key_n=_n_to_bytes(msg.public_key_n),
                max_lag=msg.max_lag,
                events=msg.events,
                brand_tokens=msg.brand_tokens,
                dp=pb.DpParams(
                    mechanism=msg.dp.mechanism,
                    epsilon=msg.dp.epsilon,
                    delta=msg.dp.delta,
                    value_cap=msg.dp.value_cap,
                ),
                report_id=msg.report_id,
                id_types=list(msg.id_types),
            )
        )
    if isinstance(msg, CellValues):
        return pb.AttrBrandMessage(cell_values=pb.AttrCellValues(cell=msg.cell, values=msg.values))
    if isinstance(msg, ConversionTokens):
        return pb.AttrBrandMessage(
            conversion_tokens=pb.AttrConversionTokens(
                seq=msg.seq, points=msg.points, events=msg.events, lags=msg.lags
            )
        )
    if isinstance(msg, EventValues):
        return pb.AttrBrandMessage(
            event_values=pb.AttrEventValues(
                seq=msg.seq, start=msg.start, customers=msg.customers, ciphertexts=msg.ciphertexts
            )
        )
    if isinstance(msg, AttrDone):
        return pb.AttrBrandMessage(done=pb.AttrDone(report_id=msg.report_id))
    raise TypeError(f"not an attribution brand message: {type(msg).__name__}")


def attr_brand_from_pb(
    msg: pb.AttrBrandMessage, public_key: PaillierPublicKey | None = None
) -> AttrBrandMessage:
    kind = msg.WhichOneof("body")
    if kind == "accepted":
        x = msg.accepted
        return AttrAccepted(
            session_id=x.session_id,
            public_key_n=int.from_bytes(x.public_key_n, "big"),
            max_lag=x.max_lag,
            events=x.events,
            brand_tokens=x.brand_tokens,
            dp=DpParams(x.dp.mechanism or "off", x.dp.epsilon, x.dp.delta, x.dp.value_cap),
            report_id=x.report_id,
            id_types=tuple(x.id_types),
        )
    if kind == "cell_values":
        return CellValues(cell=msg.cell_values.cell, values=msg.cell_values.values)
    if kind == "conversion_tokens":
        t = msg.conversion_tokens
        return ConversionTokens(seq=t.seq, points=t.points, events=t.events, lags=t.lags)
    if kind == "event_values":
        key = _needs_key(public_key, "event values")
        e = msg.event_values
        if len(e.ciphertexts) % key.ciphertext_bytes:
            raise InvalidCiphertextError(
                f"event values hold {len(e.ciphertexts)} ciphertext bytes, not a multiple of "
                f"{key.ciphertext_bytes} (the byte length of n**2)"
            )
        # Packed as on the wire; checked by the state machine when they arrive (once).
        return EventValues(
            seq=e.seq, start=e.start, customers=e.customers, ciphertexts=e.ciphertexts
        )
    if kind == "done":
        return AttrDone(report_id=msg.done.report_id)
    raise InvalidInput("empty AttrBrandMessage")


# ------------------------------------------------------------------ lookalike


def _mode(value: str) -> LookalikeMode:
    try:
        return LookalikeMode(value or LookalikeMode.HIDDEN_SEED.value)
    except ValueError:
        modes = ", ".join(m.value for m in LookalikeMode)
        raise InvalidInput(f"unknown lookalike mode {value!r}; expected one of {modes}") from None


def _brand_list(value: int) -> BrandList:
    try:
        return BrandList(value)
    except ValueError:
        raise InvalidInput(f"unknown brand list {value}: 0 (seeds) or 1 (others)") from None


def _signed_to_bytes(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _optional(value: float | None) -> float:
    return math.nan if value is None else value


def _present(value: float) -> float | None:
    return None if math.isnan(value) else value


def lookalike_partner_to_pb(
    msg: LookalikePartnerMessage, public_key: PaillierPublicKey | None = None
) -> pb.LookalikePartnerMessage:
    if isinstance(msg, LookalikeHello):
        return pb.LookalikePartnerMessage(
            hello=pb.LookalikeHello(
                audience=msg.audience,
                mode=msg.mode.value,
                rows=msg.rows,
                slots=msg.slots,
                features=msg.features,
                tiers=list(msg.tiers),
                holdout=msg.holdout,
                epsilon=msg.epsilon,
                submission_key=msg.submission_key,
                scales=list(msg.scales),
                row_norm=msg.row_norm,
                match_first=msg.match_first,
            )
        )
    if isinstance(msg, ExchangedRows):
        return pb.LookalikePartnerMessage(exchanged=pb.LookalikeExchangedRows(rows=msg.rows))
    if isinstance(msg, SlotPoints):
        return pb.LookalikePartnerMessage(
            slot_points=pb.LookalikeSlotPoints(seq=msg.seq, points=msg.points)
        )
    if isinstance(msg, BrandValues):
        return pb.LookalikePartnerMessage(
            brand_values=pb.LookalikeBrandValues(list=msg.list, seq=msg.seq, values=msg.values)
        )
    if isinstance(msg, MaskedSums):
        key = _needs_key(public_key, "masked sums")
        return pb.LookalikePartnerMessage(
            sums=pb.LookalikeMaskedSums(
                ciphertexts=ciphertexts_to_bytes(msg.ciphertexts, key), train_rows=msg.train_rows
            )
        )
    if isinstance(msg, HoldoutAggregates):
        key = _needs_key(public_key, "holdout sums")
        cts = ciphertexts_to_bytes([msg.seeds, msg.rank_sum2, *msg.top], key)
        return pb.LookalikePartnerMessage(
            holdout=pb.LookalikeHoldout(rows=msg.rows, ciphertexts=cts)
        )
    if isinstance(msg, PackageSummary):
        return pb.LookalikePartnerMessage(
            package=pb.LookalikePackageSummary(scored=msg.scored, tier_sizes=list(msg.tier_sizes))
        )
    raise TypeError(f"not a lookalike partner message: {type(msg).__name__}")


def lookalike_partner_from_pb(
    msg: pb.LookalikePartnerMessage, public_key: PaillierPublicKey | None = None
) -> LookalikePartnerMessage:
    kind = msg.WhichOneof("body")
    if kind == "hello":
        h = msg.hello
        if not h.audience:
            raise InvalidInput("LookalikeHello.audience is required")
        return LookalikeHello(
            audience=h.audience,
            mode=_mode(h.mode),
            rows=_count(h.rows, "LookalikeHello.rows"),
            slots=h.slots,
            features=h.features,
            tiers=tuple(h.tiers),
            holdout=h.holdout,
            epsilon=h.epsilon,
            submission_key=h.submission_key,
            scales=tuple(h.scales),
            row_norm=h.row_norm,
            match_first=h.match_first,
        )
    if kind == "exchanged":
        return ExchangedRows(rows=_count(msg.exchanged.rows, "LookalikeExchangedRows.rows"))
    if kind == "slot_points":
        return SlotPoints(seq=msg.slot_points.seq, points=msg.slot_points.points)
    if kind == "brand_values":
        v = msg.brand_values
        return BrandValues(list=_brand_list(v.list), seq=v.seq, values=v.values)
    if kind == "sums":
        key = _needs_key(public_key, "masked sums")
        cts = ciphertexts_from_bytes(msg.sums.ciphertexts, key)
        return MaskedSums(ciphertexts=tuple(cts), train_rows=msg.sums.train_rows)
    if kind == "holdout":
        key = _needs_key(public_key, "holdout sums")
        cts = ciphertexts_from_bytes(msg.holdout.ciphertexts, key)
        if len(cts) < 2:
            raise InvalidInput("the holdout sums need seeds, a rank sum and one sum per tier")
        seeds, rank_sum2, *top = cts
        return HoldoutAggregates(
            rows=msg.holdout.rows, seeds=seeds, rank_sum2=rank_sum2, top=tuple(top)
        )
    if kind == "package":
        p = msg.package
        return PackageSummary(scored=p.scored, tier_sizes=tuple(p.tier_sizes))
    raise InvalidInput("empty LookalikePartnerMessage: set one of its messages")


def lookalike_brand_to_pb(
    msg: LookalikeBrandMessage, public_key: PaillierPublicKey | None = None
) -> pb.LookalikeBrandMessage:
    if isinstance(msg, LookalikeAccepted):
        return pb.LookalikeBrandMessage(
            accepted=pb.LookalikeAccepted(
                session_id=msg.session_id,
                public_key_n=_n_to_bytes(msg.public_key_n),
                value_len=msg.value_len,
                chunk_size=msg.chunk_size,
                brand_points=msg.brand_points,
                max_decryptions=msg.max_decryptions,
                package_id=msg.package_id,
            )
        )
    if isinstance(msg, BrandPoints):
        return pb.LookalikeBrandMessage(
            brand_points=pb.LookalikeBrandPoints(list=msg.list, seq=msg.seq, points=msg.points)
        )
    if isinstance(msg, MatchedRows):
        return pb.LookalikeBrandMessage(
            matched=pb.LookalikeMatchedRows(seq=msg.seq, start=msg.start, flags=msg.flags)
        )
    if isinstance(msg, EncryptedLabels):
        return pb.LookalikeBrandMessage(
            labels=pb.LookalikeLabels(seq=msg.seq, start=msg.start, ciphertexts=msg.ciphertexts)
        )
    if isinstance(msg, DecryptedSums):
        return pb.LookalikeBrandMessage(
            decrypted=pb.LookalikeDecryptedSums(values=[_signed_to_bytes(v) for v in msg.values])
        )
    if isinstance(msg, LookalikeMetrics):
        metrics = pb.LookalikeMetrics(
            holdout_rows=msg.holdout_rows,
            recall=[_optional(v) for v in msg.recall],
            lift=[_optional(v) for v in msg.lift],
        )
        if msg.holdout_seeds is not None:
            metrics.holdout_seeds = msg.holdout_seeds
        if msg.auc is not None:
            metrics.auc = msg.auc
        return pb.LookalikeBrandMessage(metrics=metrics)
    if isinstance(msg, LookalikeDone):
        return pb.LookalikeBrandMessage(done=pb.LookalikeDone(package_id=msg.package_id))
    raise TypeError(f"not a lookalike brand message: {type(msg).__name__}")


def lookalike_brand_from_pb(
    msg: pb.LookalikeBrandMessage, public_key: PaillierPublicKey | None = None
) -> LookalikeBrandMessage:
    kind = msg.WhichOneof("body")
    if kind == "accepted":
        a = msg.accepted
        return LookalikeAccepted(
            session_id=a.session_id,
            public_key_n=int.from_bytes(a.public_key_n, "big"),
            value_len=a.value_len,
            chunk_size=a.chunk_size,
            brand_points=a.brand_points,
            max_decryptions=a.max_decryptions,
            package_id=a.package_id,
        )
    if kind == "brand_points":
        b = msg.brand_points
        return BrandPoints(list=_brand_list(b.list), seq=b.seq, points=b.points)
    if kind == "matched":
        m = msg.matched
        return MatchedRows(seq=m.seq, start=m.start, flags=m.flags)
    if kind == "labels":
        x = msg.labels
        # Validated by the partner's state machine, in its worker pool.
        return EncryptedLabels(seq=x.seq, start=x.start, ciphertexts=x.ciphertexts)
    if kind == "decrypted":
        key = _needs_key(public_key, "decrypted sums")
        limit = (key.n.bit_length() + 7) // 8 + 1
        if any(len(v) > limit for v in msg.decrypted.values):
            raise InvalidInput("a decrypted sum is longer than the run's modulus")
        return DecryptedSums(
            values=tuple(int.from_bytes(v, "big", signed=True) for v in msg.decrypted.values)
        )
    if kind == "metrics":
        q = msg.metrics
        return LookalikeMetrics(
            holdout_rows=q.holdout_rows,
            holdout_seeds=q.holdout_seeds if q.HasField("holdout_seeds") else None,
            auc=q.auc if q.HasField("auc") else None,
            recall=tuple(_present(v) for v in q.recall),
            lift=tuple(_present(v) for v in q.lift),
        )
    if kind == "done":
        return LookalikeDone(package_id=msg.done.package_id)
    raise InvalidInput("empty LookalikeBrandMessage")


# ----------------------------------------------------------------- HE scoring


def model_feature_to_pb(feature: ModelFeature) -> pb.ModelFeature:
    return pb.ModelFeature(
        name=feature.name, min=feature.min, max=feature.max, levels=feature.levels
    )


def model_feature_from_pb(msg: pb.ModelFeature) -> ModelFeature:
    return ModelFeature(name=msg.name, min=msg.min, max=msg.max, levels=msg.levels)


def model_info_to_pb(record: RegisteredModel, *, replaced: bool = False) -> pb.ModelInfo:
    public = record.public_json(replaced=replaced)
    return pb.ModelInfo(
        model_id=public["model_id"],
        name=public["name"],
        features=[model_feature_to_pb(f) for f in record.model.features],
        created_at=public["created_at"],
        replaced=replaced,
    )


def model_info_to_json(msg: pb.ModelInfo) -> dict[str, Any]:
    """The same dict as ``RegisteredModel.public_json`` (what REST answers)."""
    return {
        "model_id": msg.model_id,
        "name": msg.name,
        "features": [model_feature_from_pb(f).to_json() for f in msg.features],
        "created_at": msg.created_at,
        "replaced": msg.replaced,
    }


def score_partner_to_pb(
    msg: ScorePartnerMessage, public_key: PaillierPublicKey | None = None
) -> pb.ScorePartnerMessage:
    if isinstance(msg, ScoreHello):
        return pb.ScorePartnerMessage(
            hello=pb.ScoreHello(
                model=msg.model,
                users=msg.users,
                tiers=list(msg.tiers),
                submission_key=msg.submission_key,
            )
        )
    if isinstance(msg, ScoreChunk):
        return pb.ScorePartnerMessage(chunk=pb.ScoreChunk(seq=msg.seq, ciphertexts=msg.ciphertexts))
    if isinstance(msg, PackageSummary):
        return pb.ScorePartnerMessage(
            package=pb.LookalikePackageSummary(scored=msg.scored, tier_sizes=list(msg.tier_sizes))
        )
    raise TypeError(f"not a scoring partner message: {type(msg).__name__}")


def score_partner_from_pb(
    msg: pb.ScorePartnerMessage, public_key: PaillierPublicKey | None = None
) -> ScorePartnerMessage:
    kind = msg.WhichOneof("body")
    if kind == "hello":
        h = msg.hello
        if not h.model:
            raise InvalidInput("ScoreHello.model is required")
        return ScoreHello(
            model=h.model,
            users=_count(h.users, "ScoreHello.users"),
            tiers=tuple(h.tiers),
            submission_key=h.submission_key,
        )
    if kind == "chunk":
        return ScoreChunk(seq=msg.chunk.seq, ciphertexts=msg.chunk.ciphertexts)
    if kind == "package":
        p = msg.package
        return PackageSummary(scored=p.scored, tier_sizes=tuple(p.tier_sizes))
    raise InvalidInput("empty ScorePartnerMessage: set one of its messages")


def score_brand_to_pb(
    msg: ScoreBrandMessage, public_key: PaillierPublicKey | None = None
) -> pb.ScoreBrandMessage:
    if isinstance(msg, ScoreAccepted):
        width = (2 * msg.public_key_n.bit_length() + 7) // 8
        return pb.ScoreBrandMessage(
            accepted=pb.ScoreAccepted(
                session_id=msg.session_id,
                public_key_n=_n_to_bytes(msg.public_key_n),
                features=[model_feature_to_pb(f) for f in msg.features],
                weights=b"".join(c.to_bytes(width, "big") for c in msg.weights),
                constant=msg.constant.to_bytes(width, "big") if msg.public_key_n else b"",
                slots=msg.slots,
                chunk_size=msg.chunk_size,
                package_id=msg.package_id,
            )
        )
    if isinstance(msg, ScoreTiers):
        return pb.ScoreBrandMessage(
            tiers=pb.ScoreTiers(seq=msg.seq, start=msg.start, tiers=msg.tiers)
        )
    if isinstance(msg, LookalikeDone):
        return pb.ScoreBrandMessage(done=pb.LookalikeDone(package_id=msg.package_id))
    raise TypeError(f"not a scoring brand message: {type(msg).__name__}")


def score_brand_from_pb(
    msg: pb.ScoreBrandMessage, public_key: PaillierPublicKey | None = None
) -> ScoreBrandMessage:
    kind = msg.WhichOneof("body")
    if kind == "accepted":
        a = msg.accepted
        n = int.from_bytes(a.public_key_n, "big")
        width = (2 * n.bit_length() + 7) // 8
        if a.package_id:
            return ScoreAccepted("", 0, (), (), 0, 0, 0, package_id=a.package_id)
        if not n or len(a.weights) % width or len(a.constant) != width:
            raise InvalidInput("ScoreAccepted: the weights are not whole ciphertexts")
        return ScoreAccepted(
            session_id=a.session_id,
            public_key_n=n,
            features=tuple(model_feature_from_pb(f) for f in a.features),
            weights=tuple(
                int.from_bytes(a.weights[i : i + width], "big")
                for i in range(0, len(a.weights), width)
            ),
            constant=int.from_bytes(a.constant, "big"),
            slots=a.slots,
            chunk_size=a.chunk_size,
        )
    if kind == "tiers":
        t = msg.tiers
        return ScoreTiers(seq=t.seq, start=t.start, tiers=t.tiers)
    if kind == "done":
        return LookalikeDone(package_id=msg.done.package_id)
    raise InvalidInput("empty ScoreBrandMessage: set one of its messages")
