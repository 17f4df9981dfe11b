from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ID_TYPE_UNSPECIFIED: _ClassVar[IdType]
    EMAIL: _ClassVar[IdType]
    PHONE: _ClassVar[IdType]
    MAID: _ClassVar[IdType]
    CUSTOM: _ClassVar[IdType]
    CN_MOBILE_MD5: _ClassVar[IdType]
    CN_MOBILE_SHA256: _ClassVar[IdType]
    IMEI: _ClassVar[IdType]
    IDFA: _ClassVar[IdType]
    OAID: _ClassVar[IdType]
    ANDROID_ID: _ClassVar[IdType]
    WECHAT_UNIONID: _ClassVar[IdType]
    QQ: _ClassVar[IdType]
    WECHAT_OPENID: _ClassVar[IdType]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    MATCH: _ClassVar[Protocol]
    CARDINALITY: _ClassVar[Protocol]

class PsiMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PSI_METHOD_ECDH: _ClassVar[PsiMethod]
    PSI_METHOD_KKRT: _ClassVar[PsiMethod]
ID_TYPE_UNSPECIFIED: IdType
EMAIL: IdType
PHONE: IdType
MAID: IdType
CUSTOM: IdType
CN_MOBILE_MD5: IdType
CN_MOBILE_SHA256: IdType
IMEI: IdType
IDFA: IdType
OAID: IdType
ANDROID_ID: IdType
WECHAT_UNIONID: IdType
QQ: IdType
WECHAT_OPENID: IdType
PROTOCOL_UNSPECIFIED: Protocol
MATCH: Protocol
CARDINALITY: Protocol
PSI_METHOD_ECDH: PsiMethod
PSI_METHOD_KKRT: PsiMethod

class UploadHeader(_message.Message):
    __slots__ = ("name", "id_types", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    id_types: _containers.RepeatedScalarFieldContainer[IdType]
    replace: bool
    def __init__(self, name: _Optional[str] = ..., id_types: _Optional[_Iterable[_Union[IdType, str]]] = ..., replace: _Optional[bool] = ...) -> None: ...

class IdColumnChunk(_message.Message):
    __slots__ = ("column", "digests", "present", "labels")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    column: int
    digests: bytes
    present: bytes
    labels: bytes
    def __init__(self, column: _Optional[int] = ..., digests: _Optional[bytes] = ..., present: _Optional[bytes] = ..., labels: _Optional[bytes] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("seq", "row_count", "columns", "seeds")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    row_count: int
    columns: _containers.RepeatedCompositeFieldContainer[IdColumnChunk]
    seeds: int
    def __init__(self, seq: _Optional[int] = ..., row_count: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[IdColumnChunk, _Mapping]]] = ..., seeds: _Optional[int] = ...) -> None: ...

class UploadEnd(_message.Message):
    __slots__ = ("chunk_count", "row_count")
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    chunk_count: int
    row_count: int
    def __init__(self, chunk_count: _Optional[int] = ..., row_count: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: UploadChunk
    end: UploadEnd
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ..., end: _Optional[_Union[UploadEnd, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("audience",)
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    audience: Audience
    def __init__(self, audience: _Optional[_Union[Audience, _Mapping]] = ...) -> None: ...

class Audience(_message.Message):
    __slots__ = ("audience_id", "name", "records", "elements", "duplicates", "elements_by_type", "created_at", "seeds")
    class ElementsByTypeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AUDIENCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    audience_id: str
    name: str
    records: int
    elements: int
    duplicates: int
    elements_by_type: _containers.ScalarMap[str, int]
    created_at: str
    seeds: int
    def __init__(self, audience_id: _Optional[str] = ..., name: _Optional[str] = ..., records: _Optional[int] = ..., elements: _Optional[int] = ..., duplicates: _Optional[int] = ..., elements_by_type: _Optional[_Mapping[str, int]] = ..., created_at: _Optional[str] = ..., seeds: _Optional[int] = ...) -> None: ...

class ListAudiencesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Deleted(_message.Message):
    __slots__ = ("kind", "name", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    id: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ListAudiencesResponse(_message.Message):
    __slots__ = ("audiences",)
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    audiences: _containers.RepeatedCompositeFieldContainer[Audience]
    def __init__(self, audiences: _Optional[_Iterable[_Union[Audience, _Mapping]]] = ...) -> None: ...

class TypesRequest(_message.Message):
    __slots__ = ("audience", "id_types")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    audience: str
    id_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audience: _Optional[str] = ..., id_types: _Optional[_Iterable[str]] = ...) -> None: ...

class TypesResponse(_message.Message):
    __slots__ = ("id_types",)
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    id_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id_types: _Optional[_Iterable[str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("audience", "protocol", "declared_records", "declared_points", "slots_per_record", "resume_session_id", "received_values", "received_points", "id_types", "method", "ot_point", "cuckoo_key", "nonce", "bins")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    DECLARED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DECLARED_POINTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_PER_RECORD_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_VALUES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_POINTS_FIELD_NUMBER: _ClassVar[int]
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OT_POINT_FIELD_NUMBER: _ClassVar[int]
    CUCKOO_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    audience: str
    protocol: Protocol
    declared_records: int
    declared_points: int
    slots_per_record: int
    resume_session_id: str
    received_values: int
    received_points: int
    id_types: _containers.RepeatedScalarFieldContainer[str]
    method: PsiMethod
    ot_point: bytes
    cuckoo_key: bytes
    nonce: bytes
    bins: int
    def __init__(self, audience: _Optional[str] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., declared_records: _Optional[int] = ..., declared_points: _Optional[int] = ..., slots_per_record: _Optional[int] = ..., resume_session_id: _Optional[str] = ..., received_values: _Optional[int] = ..., received_points: _Optional[int] = ..., id_types: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[PsiMethod, str]] = ..., ot_point: _Optional[bytes] = ..., cuckoo_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., bins: _Optional[int] = ...) -> None: ...

class ColumnChunk(_message.Message):
    __slots__ = ("seq", "columns")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    columns: bytes
    def __init__(self, seq: _Optional[int] = ..., columns: _Optional[bytes] = ...) -> None: ...

class PointChunk(_message.Message):
    __slots__ = ("seq", "points")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    points: bytes
    def __init__(self, seq: _Optional[int] = ..., points: _Optional[bytes] = ...) -> None: ...

class ValueChunk(_message.Message):
    __slots__ = ("seq", "values")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    values: bytes
    def __init__(self, seq: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("report_count", "matched_records")
    REPORT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    report_count: bool
    matched_records: int
    def __init__(self, report_count: _Optional[bool] = ..., matched_records: _Optional[int] = ...) -> None: ...

class PartnerMessage(_message.Message):
    __slots__ = ("hello", "points", "values", "finish", "columns")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    points: PointChunk
    values: ValueChunk
    finish: Finish
    columns: ColumnChunk
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., points: _Optional[_Union[PointChunk, _Mapping]] = ..., values: _Optional[_Union[ValueChunk, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ..., columns: _Optional[_Union[ColumnChunk, _Mapping]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("session_id", "brand_points", "value_len", "chunk_size", "next_partner_seq", "next_value_seq", "ot_points", "nonce", "bins")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BRAND_POINTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_LEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PARTNER_SEQ_FIELD_NUMBER: _ClassVar[int]
    NEXT_VALUE_SEQ_FIELD_NUMBER: _ClassVar[int]
    OT_POINTS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    brand_points: int
    value_len: int
    chunk_size: int
    next_partner_seq: int
    next_value_seq: int
    ot_points: bytes
    nonce: bytes
    bins: int
    def __init__(self, session_id: _Optional[str] = ..., brand_points: _Optional[int] = ..., value_len: _Optional[int] = ..., chunk_size: _Optional[int] = ..., next_partner_seq: _Optional[int] = ..., next_value_seq: _Optional[int] = ..., ot_points: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., bins: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("intersection", "known")
    INTERSECTION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    intersection: int
    known: bool
    def __init__(self, intersection: _Optional[int] = ..., known: _Optional[bool] = ...) -> None: ...

class BrandMessage(_message.Message):
    __slots__ = ("accepted", "values", "points", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    values: ValueChunk
    points: PointChunk
    result: Result
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., values: _Optional[_Union[ValueChunk, _Mapping]] = ..., points: _Optional[_Union[PointChunk, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class ConversionsChunk(_message.Message):
    __slots__ = ("seq", "row_count", "customers", "days", "values", "columns")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    row_count: int
    customers: bytes
    days: bytes
    values: bytes
    columns: _containers.RepeatedCompositeFieldContainer[IdColumnChunk]
    def __init__(self, seq: _Optional[int] = ..., row_count: _Optional[int] = ..., customers: _Optional[bytes] = ..., days: _Optional[bytes] = ..., values: _Optional[bytes] = ..., columns: _Optional[_Iterable[_Union[IdColumnChunk, _Mapping]]] = ...) -> None: ...

class ConversionsUploadRequest(_message.Message):
    __slots__ = ("header", "chunk", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: ConversionsChunk
    end: UploadEnd
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[ConversionsChunk, _Mapping]] = ..., end: _Optional[_Union[UploadEnd, _Mapping]] = ...) -> None: ...

class ConversionSet(_message.Message):
    __slots__ = ("conversions_id", "name", "events", "customers", "identifiers")
    CONVERSIONS_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    conversions_id: str
    name: str
    events: int
    customers: int
    identifiers: int
    def __init__(self, conversions_id: _Optional[str] = ..., name: _Optional[str] = ..., events: _Optional[int] = ..., customers: _Optional[int] = ..., identifiers: _Optional[int] = ...) -> None: ...

class AttrCell(_message.Message):
    __slots__ = ("campaign_id", "group", "touch")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TOUCH_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    group: str
    touch: str
    def __init__(self, campaign_id: _Optional[str] = ..., group: _Optional[str] = ..., touch: _Optional[str] = ...) -> None: ...

class AttrHello(_message.Message):
    __slots__ = ("conversions", "click_days", "view_days", "epsilon", "submission_key", "id_types")
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICK_DAYS_FIELD_NUMBER: _ClassVar[int]
    VIEW_DAYS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_KEY_FIELD_NUMBER: _ClassVar[int]
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    conversions: str
    click_days: int
    view_days: int
    epsilon: float
    submission_key: str
    id_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversions: _Optional[str] = ..., click_days: _Optional[int] = ..., view_days: _Optional[int] = ..., epsilon: _Optional[float] = ..., submission_key: _Optional[str] = ..., id_types: _Optional[_Iterable[str]] = ...) -> None: ...

class AttrCells(_message.Message):
    __slots__ = ("cells", "cell_tokens")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    CELL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[AttrCell]
    cell_tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cells: _Optional[_Iterable[_Union[AttrCell, _Mapping]]] = ..., cell_tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class AttrCellTokens(_message.Message):
    __slots__ = ("seq", "cell", "points")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    cell: int
    points: bytes
    def __init__(self, seq: _Optional[int] = ..., cell: _Optional[int] = ..., points: _Optional[bytes] = ...) -> None: ...

class AttrGroupAggregate(_message.Message):
    __slots__ = ("campaign_id", "group", "users", "conversions", "converters", "revenue")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONVERTERS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    group: str
    users: int
    conversions: int
    converters: int
    revenue: bytes
    def __init__(self, campaign_id: _Optional[str] = ..., group: _Optional[str] = ..., users: _Optional[int] = ..., conversions: _Optional[int] = ..., converters: _Optional[int] = ..., revenue: _Optional[bytes] = ...) -> None: ...

class AttrAttributedAggregate(_message.Message):
    __slots__ = ("campaign_id", "conversions", "revenue")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    conversions: int
    revenue: bytes
    def __init__(self, campaign_id: _Optional[str] = ..., conversions: _Optional[int] = ..., revenue: _Optional[bytes] = ...) -> None: ...

class AttrSpend(_message.Message):
    __slots__ = ("campaign_id", "spend")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    spend: float
    def __init__(self, campaign_id: _Optional[str] = ..., spend: _Optional[float] = ...) -> None: ...

class AttrAggregates(_message.Message):
    __slots__ = ("groups", "attributed", "spend")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[AttrGroupAggregate]
    attributed: _containers.RepeatedCompositeFieldContainer[AttrAttributedAggregate]
    spend: _containers.RepeatedCompositeFieldContainer[AttrSpend]
    def __init__(self, groups: _Optional[_Iterable[_Union[AttrGroupAggregate, _Mapping]]] = ..., attributed: _Optional[_Iterable[_Union[AttrAttributedAggregate, _Mapping]]] = ..., spend: _Optional[_Iterable[_Union[AttrSpend, _Mapping]]] = ...) -> None: ...

class AttrPartnerMessage(_message.Message):
    __slots__ = ("hello", "cell_tokens", "aggregates", "cells")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CELL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    hello: AttrHello
    cell_tokens: AttrCellTokens
    aggregates: AttrAggregates
    cells: AttrCells
    def __init__(self, hello: _Optional[_Union[AttrHello, _Mapping]] = ..., cell_tokens: _Optional[_Union[AttrCellTokens, _Mapping]] = ..., aggregates: _Optional[_Union[AttrAggregates, _Mapping]] = ..., cells: _Optional[_Union[AttrCells, _Mapping]] = ...) -> None: ...

class DpParams(_message.Message):
    __slots__ = ("mechanism", "epsilon", "delta", "value_cap")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    VALUE_CAP_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    epsilon: float
    delta: float
    value_cap: float
    def __init__(self, mechanism: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., value_cap: _Optional[float] = ...) -> None: ...

class AttrAccepted(_message.Message):
    __slots__ = ("session_id", "public_key_n", "max_lag", "events", "brand_tokens", "dp", "report_id", "id_types")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_N_FIELD_NUMBER: _ClassVar[int]
    MAX_LAG_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BRAND_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_TYPES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    public_key_n: bytes
    max_lag: int
    events: int
    brand_tokens: int
    dp: DpParams
    report_id: str
    id_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., public_key_n: _Optional[bytes] = ..., max_lag: _Optional[int] = ..., events: _Optional[int] = ..., brand_tokens: _Optional[int] = ..., dp: _Optional[_Union[DpParams, _Mapping]] = ..., report_id: _Optional[str] = ..., id_types: _Optional[_Iterable[str]] = ...) -> None: ...

class AttrCellValues(_message.Message):
    __slots__ = ("cell", "values")
    CELL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    cell: int
    values: bytes
    def __init__(self, cell: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...

class AttrConversionTokens(_message.Message):
    __slots__ = ("seq", "points", "events", "lags")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAGS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    points: bytes
    events: bytes
    lags: bytes
    def __init__(self, seq: _Optional[int] = ..., points: _Optional[bytes] = ..., events: _Optional[bytes] = ..., lags: _Optional[bytes] = ...) -> None: ...

class AttrEventValues(_message.Message):
    __slots__ = ("seq", "start", "customers", "ciphertexts")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start: int
    customers: bytes
    ciphertexts: bytes
    def __init__(self, seq: _Optional[int] = ..., start: _Optional[int] = ..., customers: _Optional[bytes] = ..., ciphertexts: _Optional[bytes] = ...) -> None: ...

class AttrDone(_message.Message):
    __slots__ = ("report_id",)
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    def __init__(self, report_id: _Optional[str] = ...) -> None: ...

class AttrBrandMessage(_message.Message):
    __slots__ = ("accepted", "cell_values", "conversion_tokens", "event_values", "done")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CELL_VALUES_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVENT_VALUES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    accepted: AttrAccepted
    cell_values: AttrCellValues
    conversion_tokens: AttrConversionTokens
    event_values: AttrEventValues
    done: AttrDone
    def __init__(self, accepted: _Optional[_Union[AttrAccepted, _Mapping]] = ..., cell_values: _Optional[_Union[AttrCellValues, _Mapping]] = ..., conversion_tokens: _Optional[_Union[AttrConversionTokens, _Mapping]] = ..., event_values: _Optional[_Union[AttrEventValues, _Mapping]] = ..., done: _Optional[_Union[AttrDone, _Mapping]] = ...) -> None: ...

class ModelUpload(_message.Message):
    __slots__ = ("name", "model_json", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_JSON_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_json: str
    replace: bool
    def __init__(self, name: _Optional[str] = ..., model_json: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class ModelFeature(_message.Message):
    __slots__ = ("name", "min", "max", "levels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: float
    max: float
    levels: int
    def __init__(self, name: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., levels: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "name", "features", "created_at", "replaced")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    name: str
    features: _containers.RepeatedCompositeFieldContainer[ModelFeature]
    created_at: str
    replaced: bool
    def __init__(self, model_id: _Optional[str] = ..., name: _Optional[str] = ..., features: _Optional[_Iterable[_Union[ModelFeature, _Mapping]]] = ..., created_at: _Optional[str] = ..., replaced: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ScoreHello(_message.Message):
    __slots__ = ("model", "users", "tiers", "submission_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_KEY_FIELD_NUMBER: _ClassVar[int]
    model: str
    users: int
    tiers: _containers.RepeatedScalarFieldContainer[float]
    submission_key: str
    def __init__(self, model: _Optional[str] = ..., users: _Optional[int] = ..., tiers: _Optional[_Iterable[float]] = ..., submission_key: _Optional[str] = ...) -> None: ...

class ScoreChunk(_message.Message):
    __slots__ = ("seq", "ciphertexts")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ciphertexts: bytes
    def __init__(self, seq: _Optional[int] = ..., ciphertexts: _Optional[bytes] = ...) -> None: ...

class ScorePartnerMessage(_message.Message):
    __slots__ = ("hello", "chunk", "package")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    hello: ScoreHello
    chunk: ScoreChunk
    package: LookalikePackageSummary
    def __init__(self, hello: _Optional[_Union[ScoreHello, _Mapping]] = ..., chunk: _Optional[_Union[ScoreChunk, _Mapping]] = ..., package: _Optional[_Union[LookalikePackageSummary, _Mapping]] = ...) -> None: ...

class ScoreAccepted(_message.Message):
    __slots__ = ("session_id", "public_key_n", "features", "weights", "constant", "slots", "chunk_size", "package_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_N_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    public_key_n: bytes
    features: _containers.RepeatedCompositeFieldContainer[ModelFeature]
    weights: bytes
    constant: bytes
    slots: int
    chunk_size: int
    package_id: str
    def __init__(self, session_id: _Optional[str] = ..., public_key_n: _Optional[bytes] = ..., features: _Optional[_Iterable[_Union[ModelFeature, _Mapping]]] = ..., weights: _Optional[bytes] = ..., constant: _Optional[bytes] = ..., slots: _Optional[int] = ..., chunk_size: _Optional[int] = ..., package_id: _Optional[str] = ...) -> None: ...

class ScoreTiers(_message.Message):
    __slots__ = ("seq", "start", "tiers")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start: int
    tiers: bytes
    def __init__(self, seq: _Optional[int] = ..., start: _Optional[int] = ..., tiers: _Optional[bytes] = ...) -> None: ...

class ScoreBrandMessage(_message.Message):
    __slots__ = ("accepted", "tiers", "done")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    accepted: ScoreAccepted
    tiers: ScoreTiers
    done: LookalikeDone
    def __init__(self, accepted: _Optional[_Union[ScoreAccepted, _Mapping]] = ..., tiers: _Optional[_Union[ScoreTiers, _Mapping]] = ..., done: _Optional[_Union[LookalikeDone, _Mapping]] = ...) -> None: ...

class LookalikeHello(_message.Message):
    __slots__ = ("audience", "mode", "rows", "slots", "features", "tiers", "holdout", "epsilon", "submission_key", "scales", "row_norm", "match_first")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_KEY_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    ROW_NORM_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIRST_FIELD_NUMBER: _ClassVar[int]
    audience: str
    mode: str
    rows: int
    slots: int
    features: int
    tiers: _containers.RepeatedScalarFieldContainer[float]
    holdout: float
    epsilon: float
    submission_key: str
    scales: _containers.RepeatedScalarFieldContainer[int]
    row_norm: float
    match_first: bool
    def __init__(self, audience: _Optional[str] = ..., mode: _Optional[str] = ..., rows: _Optional[int] = ..., slots: _Optional[int] = ..., features: _Optional[int] = ..., tiers: _Optional[_Iterable[float]] = ..., holdout: _Optional[float] = ..., epsilon: _Optional[float] = ..., submission_key: _Optional[str] = ..., scales: _Optional[_Iterable[int]] = ..., row_norm: _Optional[float] = ..., match_first: _Optional[bool] = ...) -> None: ...

class LookalikeExchangedRows(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    def __init__(self, rows: _Optional[int] = ...) -> None: ...

class LookalikeSlotPoints(_message.Message):
    __slots__ = ("seq", "points")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    points: bytes
    def __init__(self, seq: _Optional[int] = ..., points: _Optional[bytes] = ...) -> None: ...

class LookalikeBrandValues(_message.Message):
    __slots__ = ("list", "seq", "values")
    LIST_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    list: int
    seq: int
    values: bytes
    def __init__(self, list: _Optional[int] = ..., seq: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...

class LookalikeMaskedSums(_message.Message):
    __slots__ = ("ciphertexts", "train_rows")
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: bytes
    train_rows: int
    def __init__(self, ciphertexts: _Optional[bytes] = ..., train_rows: _Optional[int] = ...) -> None: ...

class LookalikeHoldout(_message.Message):
    __slots__ = ("rows", "ciphertexts")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    ciphertexts: bytes
    def __init__(self, rows: _Optional[int] = ..., ciphertexts: _Optional[bytes] = ...) -> None: ...

class LookalikePackageSummary(_message.Message):
    __slots__ = ("scored", "tier_sizes")
    SCORED_FIELD_NUMBER: _ClassVar[int]
    TIER_SIZES_FIELD_NUMBER: _ClassVar[int]
    scored: int
    tier_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scored: _Optional[int] = ..., tier_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class LookalikePartnerMessage(_message.Message):
    __slots__ = ("hello", "slot_points", "brand_values", "sums", "holdout", "package", "exchanged")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SLOT_POINTS_FIELD_NUMBER: _ClassVar[int]
    BRAND_VALUES_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGED_FIELD_NUMBER: _ClassVar[int]
    hello: LookalikeHello
    slot_points: LookalikeSlotPoints
    brand_values: LookalikeBrandValues
    sums: LookalikeMaskedSums
    holdout: LookalikeHoldout
    package: LookalikePackageSummary
    exchanged: LookalikeExchangedRows
    def __init__(self, hello: _Optional[_Union[LookalikeHello, _Mapping]] = ..., slot_points: _Optional[_Union[LookalikeSlotPoints, _Mapping]] = ..., brand_values: _Optional[_Union[LookalikeBrandValues, _Mapping]] = ..., sums: _Optional[_Union[LookalikeMaskedSums, _Mapping]] = ..., holdout: _Optional[_Union[LookalikeHoldout, _Mapping]] = ..., package: _Optional[_Union[LookalikePackageSummary, _Mapping]] = ..., exchanged: _Optional[_Union[LookalikeExchangedRows, _Mapping]] = ...) -> None: ...

class LookalikeAccepted(_message.Message):
    __slots__ = ("session_id", "public_key_n", "value_len", "chunk_size", "brand_points", "max_decryptions", "package_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_N_FIELD_NUMBER: _ClassVar[int]
    VALUE_LEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BRAND_POINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DECRYPTIONS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    public_key_n: bytes
    value_len: int
    chunk_size: int
    brand_points: int
    max_decryptions: int
    package_id: str
    def __init__(self, session_id: _Optional[str] = ..., public_key_n: _Optional[bytes] = ..., value_len: _Optional[int] = ..., chunk_size: _Optional[int] = ..., brand_points: _Optional[int] = ..., max_decryptions: _Optional[int] = ..., package_id: _Optional[str] = ...) -> None: ...

class LookalikeBrandPoints(_message.Message):
    __slots__ = ("list", "seq", "points")
    LIST_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    list: int
    seq: int
    points: bytes
    def __init__(self, list: _Optional[int] = ..., seq: _Optional[int] = ..., points: _Optional[bytes] = ...) -> None: ...

class LookalikeMatchedRows(_message.Message):
    __slots__ = ("seq", "start", "flags")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start: int
    flags: bytes
    def __init__(self, seq: _Optional[int] = ..., start: _Optional[int] = ..., flags: _Optional[bytes] = ...) -> None: ...

class LookalikeLabels(_message.Message):
    __slots__ = ("seq", "start", "ciphertexts")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start: int
    ciphertexts: bytes
    def __init__(self, seq: _Optional[int] = ..., start: _Optional[int] = ..., ciphertexts: _Optional[bytes] = ...) -> None: ...

class LookalikeDecryptedSums(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LookalikeMetrics(_message.Message):
    __slots__ = ("holdout_rows", "holdout_seeds", "auc", "recall", "lift")
    HOLDOUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_SEEDS_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    holdout_rows: int
    holdout_seeds: int
    auc: float
    recall: _containers.RepeatedScalarFieldContainer[float]
    lift: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, holdout_rows: _Optional[int] = ..., holdout_seeds: _Optional[int] = ..., auc: _Optional[float] = ..., recall: _Optional[_Iterable[float]] = ..., lift: _Optional[_Iterable[float]] = ...) -> None: ...

class LookalikeDone(_message.Message):
    __slots__ = ("package_id",)
    PACKAGE_ID_FIELD_NUMBER: _ClassVar[int]
    package_id: str
    def __init__(self, package_id: _Optional[str] = ...) -> None: ...

class LookalikeBrandMessage(_message.Message):
    __slots__ = ("accepted", "brand_points", "matched", "labels", "decrypted", "metrics", "done")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    BRAND_POINTS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DECRYPTED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    accepted: LookalikeAccepted
    brand_points: LookalikeBrandPoints
    matched: LookalikeMatchedRows
    labels: LookalikeLabels
    decrypted: LookalikeDecryptedSums
    metrics: LookalikeMetrics
    done: LookalikeDone
    def __init__(self, accepted: _Optional[_Union[LookalikeAccepted, _Mapping]] = ..., brand_points: _Optional[_Union[LookalikeBrandPoints, _Mapping]] = ..., matched: _Optional[_Union[LookalikeMatchedRows, _Mapping]] = ..., labels: _Optional[_Union[LookalikeLabels, _Mapping]] = ..., decrypted: _Optional[_Union[LookalikeDecryptedSums, _Mapping]] = ..., metrics: _Optional[_Union[LookalikeMetrics, _Mapping]] = ..., done: _Optional[_Union[LookalikeDone, _Mapping]] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("aggregation_threshold", "dp", "epsilon_budget", "min_partner_records", "sessions_per_day", "delta", "partner", "lookalike_modes", "min_lookalike_seed", "lookalike_dp", "lookalike_epsilon", "lookalike_epsilon_budget", "retention_days", "match_methods")
    AGGREGATION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTNER_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    PARTNER_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_MODES_FIELD_NUMBER: _ClassVar[int]
    MIN_LOOKALIKE_SEED_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_DP_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    MATCH_METHODS_FIELD_NUMBER: _ClassVar[int]
    aggregation_threshold: int
    dp: str
    epsilon_budget: float
    min_partner_records: int
    sessions_per_day: int
    delta: float
    partner: str
    lookalike_modes: str
    min_lookalike_seed: int
    lookalike_dp: str
    lookalike_epsilon: float
    lookalike_epsilon_budget: float
    retention_days: int
    match_methods: str
    def __init__(self, aggregation_threshold: _Optional[int] = ..., dp: _Optional[str] = ..., epsilon_budget: _Optional[float] = ..., min_partner_records: _Optional[int] = ..., sessions_per_day: _Optional[int] = ..., delta: _Optional[float] = ..., partner: _Optional[str] = ..., lookalike_modes: _Optional[str] = ..., min_lookalike_seed: _Optional[int] = ..., lookalike_dp: _Optional[str] = ..., lookalike_epsilon: _Optional[float] = ..., lookalike_epsilon_budget: _Optional[float] = ..., retention_days: _Optional[int] = ..., match_methods: _Optional[str] = ...) -> None: ...

class PartnerPolicy(_message.Message):
    __slots__ = ("name", "sessions_per_day", "min_partner_records", "epsilon_spent", "epsilon_remaining", "lookalike_epsilon_spent", "lookalike_epsilon_remaining")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTNER_RECORDS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    name: str
    sessions_per_day: int
    min_partner_records: int
    epsilon_spent: float
    epsilon_remaining: float
    lookalike_epsilon_spent: float
    lookalike_epsilon_remaining: float
    def __init__(self, name: _Optional[str] = ..., sessions_per_day: _Optional[int] = ..., min_partner_records: _Optional[int] = ..., epsilon_spent: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., lookalike_epsilon_spent: _Optional[float] = ..., lookalike_epsilon_remaining: _Optional[float] = ...) -> None: ...

class PolicyResponse(_message.Message):
    __slots__ = ("aggregation_threshold", "dp", "epsilon_budget", "min_partner_records", "sessions_per_day", "delta", "partners", "lookalike_modes", "min_lookalike_seed", "lookalike_dp", "lookalike_epsilon", "lookalike_epsilon_budget", "retention_days", "match_methods")
    AGGREGATION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTNER_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    PARTNERS_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_MODES_FIELD_NUMBER: _ClassVar[int]
    MIN_LOOKALIKE_SEED_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_DP_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    LOOKALIKE_EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    MATCH_METHODS_FIELD_NUMBER: _ClassVar[int]
    aggregation_threshold: int
    dp: str
    epsilon_budget: float
    min_partner_records: int
    sessions_per_day: int
    delta: float
    partners: _containers.RepeatedCompositeFieldContainer[PartnerPolicy]
    lookalike_modes: str
    min_lookalike_seed: int
    lookalike_dp: str
    lookalike_epsilon: float
    lookalike_epsilon_budget: float
    retention_days: int
    match_methods: str
    def __init__(self, aggregation_threshold: _Optional[int] = ..., dp: _Optional[str] = ..., epsilon_budget: _Optional[float] = ..., min_partner_records: _Optional[int] = ..., sessions_per_day: _Optional[int] = ..., delta: _Optional[float] = ..., partners: _Optional[_Iterable[_Union[PartnerPolicy, _Mapping]]] = ..., lookalike_modes: _Optional[str] = ..., min_lookalike_seed: _Optional[int] = ..., lookalike_dp: _Optional[str] = ..., lookalike_epsilon: _Optional[float] = ..., lookalike_epsilon_budget: _Optional[float] = ..., retention_days: _Optional[int] = ..., match_methods: _Optional[str] = ...) -> None: ...
