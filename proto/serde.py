"""The one place that converts between domain dataclasses and protobuf.

Servicers and clients call these functions; protocol code never sees a
generated class. Conversions from the wire validate what the type system of
protobuf cannot (enum values, oneof presence) and raise ``ValueError`` with
the field named.
"""

from __future__ import annotations

from cleanroom.matching.messages import (
    Accepted,
    BrandMessage,
    Finish,
    Hello,
    PartnerMessage,
    PointChunk,
    Protocol,
    Result,
    ValueChunk,
)
from cleanroom.proto import cleanroom_pb2 as pb

_PROTOCOL_TO_PB = {Protocol.MATCH: pb.MATCH, Protocol.CARDINALITY: pb.CARDINALITY}
_PROTOCOL_FROM_PB = {v: k for k, v in _PROTOCOL_TO_PB.items()}

ID_TYPES = ("email", "phone", "maid", "custom")
_ID_TYPE_TO_PB = {"email": pb.EMAIL, "phone": pb.PHONE, "maid": pb.MAID, "custom": pb.CUSTOM}
_ID_TYPE_FROM_PB = {v: k for k, v in _ID_TYPE_TO_PB.items()}


def id_type_to_pb(id_type: str) -> int:
    try:
        return _ID_TYPE_TO_PB[str(id_type)]
    except KeyError:
        raise ValueError(
            f"unknown identifier type {id_type!r}; expected one of {ID_TYPES}"
        ) from None


def id_type_from_pb(value: int) -> str:
    try:
        return _ID_TYPE_FROM_PB[value]
    except KeyError:
        raise ValueError(f"unknown identifier type code {value}") from None


# ------------------------------------------------------------------ partner → brand


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
            )
        )
    if isinstance(msg, PointChunk):
        return pb.PartnerMessage(points=pb.PointChunk(seq=msg.seq, points=msg.points))
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
            raise ValueError("Hello.protocol must be MATCH or CARDINALITY")
        if not h.audience:
            raise ValueError("Hello.audience is required")
        return Hello(
            audience=h.audience,
            protocol=_PROTOCOL_FROM_PB[h.protocol],
            declared_records=h.declared_records,
            declared_points=h.declared_points,
            slots_per_record=h.slots_per_record,
            resume_session_id=h.resume_session_id,
            received_values=h.received_values,
            received_points=h.received_points,
        )
    if kind == "points":
        return PointChunk(seq=msg.points.seq, points=msg.points.points)
    if kind == "values":
        return ValueChunk(seq=msg.values.seq, values=msg.values.values)
    if kind == "finish":
        return Finish(
            report_count=msg.finish.report_count, matched_records=msg.finish.matched_records
        )
    raise ValueError("empty PartnerMessage: set one of hello, points, values, finish")


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
            raise ValueError("Accepted carries an invalid value length or chunk size")
        return Accepted(
            session_id=a.session_id,
            brand_points=a.brand_points,
            value_len=a.value_len,
            chunk_size=a.chunk_size,
            next_partner_seq=a.next_partner_seq,
            next_value_seq=a.next_value_seq,
        )
    if kind == "values":
        return ValueChunk(seq=msg.values.seq, values=msg.values.values)
    if kind == "points":
        return PointChunk(seq=msg.points.seq, points=msg.points.points)
    if kind == "result":
        return Result(intersection=msg.result.intersection, known=msg.result.known)
    raise ValueError("empty BrandMessage")
