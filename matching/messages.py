"""Typed PSI messages: the domain side of the wire protocol.

These are plain dataclasses; ``cleanroom.proto.serde`` is the only place that
converts them to and from the generated protobuf classes, so the protocol
state machines never see a transport type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

POINT_LEN = 32  # X25519 u-coordinate encoding


class Protocol(StrEnum):
    """Which PSI variant a session runs (DESIGN.md §5)."""

    MATCH = "match"
    CARDINALITY = "cardinality"


class PsiMethod(StrEnum):
    """How a MATCH is computed: ECDH blinding (DESIGN.md §5) or KKRT16 OT extension."""

    ECDH = "ecdh"
    KKRT = "kkrt"


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a stream: a new session, or the resumption of one."""

    audience: str
    protocol: Protocol
    declared_records: int
    declared_points: int
    slots_per_record: int = 0
    resume_session_id: str = ""
    received_values: int = 0
    received_points: int = 0
    id_types: tuple[str, ...] = ()  # the partner's identifier types; () when not told
    method: PsiMethod = PsiMethod.ECDH
    # KKRT: the base-OT sender's point (u ‖ v), the cuckoo key, the partner's nonce, bins.
    ot_point: bytes = b""
    cuckoo_key: bytes = b""
    nonce: bytes = b""
    bins: int = 0


@dataclass(frozen=True, slots=True)
class PointChunk:
    """Curve points, 32 bytes each, concatenated."""

    seq: int
    points: bytes = field(repr=False)

    @property
    def count(self) -> int:
        return len(self.points) // POINT_LEN


@dataclass(frozen=True, slots=True)
class ValueChunk:
    """Comparison values (truncated double-blinded points), concatenated."""

    seq: int
    values: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ColumnChunk:
    """KKRT: the OT extension's correction columns for one chunk of bins (512 columns,
    ``chunk bins / 8`` bytes each, concatenated)."""

    seq: int
    columns: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Finish:
    """The partner has sent everything; in MATCH it may report its count."""

    report_count: bool = False
    matched_records: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    session_id: str
    brand_points: int
    value_len: int
    chunk_size: int
    next_partner_seq: int = 0
    next_value_seq: int = 0
    # KKRT: the base-OT receiver's points (512 x 64 bytes), the brand's nonce, bins.
    ot_points: bytes = field(default=b"", repr=False)
    nonce: bytes = b""
    bins: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    intersection: int
    known: bool = True


PartnerMessage = Hello | PointChunk | ValueChunk | ColumnChunk | Finish
BrandMessage = Accepted | ValueChunk | PointChunk | Result
