"""Every gRPC method of the brand node fed mutated and random bytes over a real channel.

The contract (``proto/errors.py``, ``server/grpc_api.py``): whatever a caller sends, the
answer is OK or one of the project's refusals, never INTERNAL or UNKNOWN (those mean a
bug on the node), and the node keeps serving. Requests go out as raw bytes through
identity serializers, so nothing on the client side repairs them.

Two kinds of bad input are told apart, because they fail in different layers:

* bytes that still decode as the method's request type (a flipped bit in a payload, a
  varint pushed out of range, an unknown field, another oneof member, an enum value the
  .proto does not define): the services and ``serde`` must refuse them precisely;
* bytes that do not decode at all: gRPC's own deserializer fails before any servicer
  runs. See ``test_undecodable_bytes_are_invalid_argument``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.attribution import upload_conversions
from cleanroom.client.sdk import Connection, upload_audience
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.matching.workers import dst_for
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.server.store import Role
from tests.conftest import Node

Code = grpc.StatusCode
# The project's refusals (grpc_api.STATUS_CODES) and success. ABORTED is listed there
# too: a concurrent operation interrupted this one, which fuzzing in parallel can cause.
ACCEPTABLE = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.ABORTED,
    }
)
# Examples of the mutation test; CLEANROOM_FUZZ_SCALE=10 digs deeper (minutes, not seconds).
EXAMPLES = int(120 * float(os.environ.get("CLEANROOM_FUZZ_SCALE", "1")))
# Generous: a run's first answer may wait for a Paillier key to be generated on a busy
# machine. Nothing waits this long unless something is stuck.
DEADLINE = 30.0
# A bidirectional run whose input is valid so far but incomplete waits for the partner's
# next message (a PSI session even outlives its stream, to be resumed): once it has
# answered, this long without a further answer means it is waiting, and the call is
# cancelled.
IDLE_SECONDS = 2.0

AUDIENCE, CONVERSIONS, MODEL = "fuzz-crm", "fuzz-sales", "fuzz-model"
EMAILS = [f"person{i}@example.com" for i in range(120)]  # lookalikes need 100 seeds
MODEL_JSON = json.dumps(
    {
        "features": [{"name": "visits", "min": 0, "max": 30, "levels": 4}, {"name": "app"}],
        "weights": [0.1, 1.5],
        "intercept": -2.0,
    }
)


def _point(i: int) -> bytes:
    return hash_to_curve(hashlib.sha256(f"fuzz-{i}".encode()).digest(), dst_for("email"))


POINTS = b"".join(_point(i) for i in range(25))
DIGESTS = b"".join(hashlib.sha256(e.encode()).digest() for e in EMAILS[:2])


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    request: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{pb.DESCRIPTOR.package}.{self.service}/{self.name}"

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


def _methods() -> list[Method]:
    """Every method of every service in cleanroom.proto, read from its descriptor."""
    out = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        for m in service.methods:
            out.append(
                Method(
                    service.name,
                    m.name,
                    getattr(pb, m.input_type.name),
                    m.client_streaming,
                    m.server_streaming,
                )
            )
    return out


METHODS = _methods()
BY_NAME = {str(m): m for m in METHODS}
# Who may call what (server/*.py checks the role; a wrong one is PERMISSION_DENIED).
ADMIN = {
    "Upload",
    "DeleteAudience",
    "UploadConversions",
    "DeleteConversions",
    "SetPolicy",
    "UploadModel",
    "ListAudiences",
    "ListModels",
}
PARTNER = {"Session", "CommonTypes", "Attribute", "Run", "Score"}


def _seeds() -> dict[str, list[Message]]:
    """A valid request (stream) per method: what the mutations start from."""
    hello = pb.Hello(audience=AUDIENCE, protocol=pb.MATCH, declared_records=25, declared_points=25)
    return {
        "AudienceService.Upload": [
            pb.UploadRequest(
                header=pb.UploadHeader(name="fuzz-up", id_types=[pb.EMAIL, pb.PHONE], replace=True)
            ),
            pb.UploadRequest(
                chunk=pb.UploadChunk(
                    seq=0,
                    row_count=2,
                    columns=[
                        pb.IdColumnChunk(column=0, digests=DIGESTS),
                        pb.IdColumnChunk(column=1, digests=DIGESTS[:32], labels=b"\x01"),
                    ],
                )
            ),
            pb.UploadRequest(end=pb.UploadEnd(chunk_count=1, row_count=2)),
        ],
        "AudienceService.ListAudiences": [pb.ListAudiencesRequest()],
        "AudienceService.DeleteAudience": [pb.DeleteRequest(name="fuzz-absent")],
        "MatchingService.Session": [
            pb.PartnerMessage(hello=hello),
            pb.PartnerMessage(points=pb.PointChunk(seq=0, points=POINTS)),
            pb.PartnerMessage(finish=pb.Finish(report_count=True, matched_records=3)),
        ],
        "MatchingService.CommonTypes": [
            pb.TypesRequest(audience=AUDIENCE, id_types=["email", "phone", "imei"])
        ],
        "AttributionService.UploadConversions": [
            pb.ConversionsUploadRequest(
                header=pb.UploadHeader(name="fuzz-up", id_types=[pb.EMAIL], replace=True)
            ),
            pb.ConversionsUploadRequest(
                chunk=pb.ConversionsChunk(
                    seq=0,
                    row_count=2,
                    customers=DIGESTS,
                    days=struct.pack("<2i", 20000, 20001),
                    values=struct.pack("<2d", 9.5, 20.0),
                    columns=[pb.IdColumnChunk(column=0, present=b"\x01\x01", digests=DIGESTS)],
                )
            ),
            pb.ConversionsUploadRequest(end=pb.UploadEnd(chunk_count=1, row_count=2)),
        ],
        "AttributionService.DeleteConversions": [pb.DeleteRequest(name="fuzz-absent")],
        "AttributionService.Attribute": [
            pb.AttrPartnerMessage(
                hello=pb.AttrHello(
                    conversions=CONVERSIONS,
                    click_days=7,
                    view_days=1,
                    epsilon=0.5,
                    submission_key="fuzz",
                    id_types=["email"],
                )
            ),
            pb.AttrPartnerMessage(
                cells=pb.AttrCells(
                    cells=[pb.AttrCell(campaign_id="c1", group="exposed", touch="click")],
                    cell_tokens=[2],
                )
            ),
            pb.AttrPartnerMessage(cell_tokens=pb.AttrCellTokens(seq=0, cell=0, points=POINTS[:64])),
        ],
        "AttributionService.SetPolicy": [pb.PolicyRequest(sessions_per_day=500, dp="laplace")],
        "LookalikeService.Run": [
            pb.LookalikePartnerMessage(
                hello=pb.LookalikeHello(
                    audience=AUDIENCE,
                    mode="hidden-seed",
                    rows=25,
                    slots=1,
                    features=2,
                    tiers=[10.0],
                    holdout=0.0,
                    submission_key="fuzz",
                )
            ),
            pb.LookalikePartnerMessage(slot_points=pb.LookalikeSlotPoints(seq=0, points=POINTS)),
        ],
        "LookalikeService.UploadModel": [
            pb.ModelUpload(name="fuzz-up", model_json=MODEL_JSON, replace=True)
        ],
        "LookalikeService.ListModels": [pb.ListModelsRequest()],
        "LookalikeService.Score": [
            pb.ScorePartnerMessage(
                hello=pb.ScoreHello(model=MODEL, users=25, tiers=[10.0], submission_key="fuzz")
            ),
            pb.ScorePartnerMessage(chunk=pb.ScoreChunk(seq=0, ciphertexts=b"\x01" * 512)),
        ],
    }


SEEDS = _seeds()


def test_the_tables_cover_every_method() -> None:
    names = {m.name for m in METHODS}
    assert set(SEEDS) == set(BY_NAME)
    assert names == ADMIN | PARTNER and not ADMIN & PARTNER
    stubs = [n for n in dir(pb_grpc) if n.endswith("Stub")]
    assert len(stubs) == len(pb.DESCRIPTOR.services_by_name) == 4
    for key, seed in SEEDS.items():
        assert all(isinstance(m, BY_NAME[key].request) for m in seed), key


# --------------------------------------------------------------------------- calls


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: int
    waiting: bool = False  # an open run we cancelled after IDLE_SECONDS of silence


def call(
    channel: grpc.Channel, method: Method, payloads: Sequence[bytes], token: str | None
) -> Outcome:
    """Send ``payloads`` as they are (one message each) and return how the call ended."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    responses = 0
    idle: threading.Timer | None = None
    silent = threading.Event()  # set (before cancelling) once the run went quiet
    try:
        if not method.client_streaming:
            assert len(payloads) == 1
            channel.unary_unary(method.path, **raw)(
                payloads[0], metadata=metadata, timeout=DEADLINE
            )
            responses = 1
        elif not method.server_streaming:
            channel.stream_unary(method.path, **raw)(
                iter(payloads), metadata=metadata, timeout=DEADLINE
            )
            responses = 1
        else:
            stream = channel.stream_stream(method.path, **raw)(
                iter(payloads), metadata=metadata, timeout=DEADLINE
            )

            def quiet() -> None:
                silent.set()
                stream.cancel()

            for _ in stream:
                responses += 1
                if idle is not None:
                    idle.cancel()
                idle = threading.Timer(IDLE_SECONDS, quiet)
                idle.start()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        waiting = code is Code.CANCELLED and silent.is_set()
        return Outcome(code, exc.details() or "", responses, waiting)  # type: ignore[attr-defined]
    finally:
        if idle is not None:
            idle.cancel()
    return Outcome(Code.OK, "", responses)


def check(method: Method, outcome: Outcome, payloads: Sequence[bytes]) -> None:
    where = f"{method} {[p[:80] for p in payloads]!r}: {outcome.code.name} {outcome.details!r}"
    if outcome.waiting:
        # Only a bidirectional run that has answered (it is open) may wait for more input.
        assert method.server_streaming and outcome.responses > 0, where
        return
    assert outcome.code not in (Code.INTERNAL, Code.UNKNOWN), where
    assert outcome.code in ACCEPTABLE, where


# --------------------------------------------------------------------------- mutations


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_INTS = [0, 1, 2, 3, 31, 32, 255, 2**31 - 1, 2**32 - 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
_FLOATS = [0.0, -0.0, 1e-300, -1.0, 0.5, 100.0, 1e308, math.inf, -math.inf, math.nan]
_STRINGS = ["", " ", "fuzz-crm", "email", "a" * 300, "é\u0000\u202e", "../../etc", "x,y"]
_BYTES = [b"", b"\x00", b"\x01" * 31, b"\xff" * 32, POINTS[:32], POINTS[:33], b"\x00" * 64]
FD = pb_descriptor.FieldDescriptor


def _random_value(field: pb_descriptor.FieldDescriptor, rng: random.Random) -> Any:
    """A value of the field's own type that a valid message need not contain."""
    t = field.type
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        value = rng.choice(_FLOATS)
        return value if t == FD.TYPE_DOUBLE or abs(value) < 1e38 or math.isinf(value) else 1.0
    if t == FD.TYPE_STRING:
        return rng.choice(_STRINGS)
    if t == FD.TYPE_BYTES:
        return rng.choice(_BYTES) * rng.choice([1, 1, 2, 100])
    if t == FD.TYPE_ENUM:
        return rng.choice([0, 1, 2, 3, 4, 5, 99, -1, 2**31 - 1])  # open enums: any int32
    bits = 32 if t in (FD.TYPE_UINT32, FD.TYPE_INT32, FD.TYPE_FIXED32) else 64
    value = rng.choice(_INTS) % (1 << bits)
    if t in (FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SINT32):
        value = value - (1 << bits) if value >= 1 << (bits - 1) else value
    return value


def _is_map(field: pb_descriptor.FieldDescriptor) -> bool:
    kind = field.message_type
    return kind is not None and kind.GetOptions().map_entry


def _messages_in(msg: Message) -> list[Message]:
    """``msg`` and every submessage set in it, depth first."""
    out = [msg]
    for field, value in msg.ListFields():
        if field.type != FD.TYPE_MESSAGE or _is_map(field):
            continue
        for item in value if field.is_repeated else [value]:
            out += _messages_in(item)
    return out


def mutate_fields(msg: Message, rng: random.Random) -> Message:
    """A copy of ``msg`` with one field changed: set to an odd value of its type (appended
    to, if repeated) or cleared; a oneof member set switches the oneof to it, left empty."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    target = rng.choice(_messages_in(copy))
    # The stubs type descriptors twice (pure-Python and upb); at run time there is one.
    fields = cast(list[pb_descriptor.FieldDescriptor], list(target.DESCRIPTOR.fields))
    if not fields:
        return copy
    field = rng.choice(fields)
    if rng.random() < 0.2:
        target.ClearField(field.name)
    elif field.type == FD.TYPE_MESSAGE:
        if field.is_repeated:
            if not _is_map(field):
                getattr(target, field.name).add()
        else:
            getattr(target, field.name).SetInParent()  # an empty submessage, oneofs switch
    elif field.is_repeated:
        values = getattr(target, field.name)
        for _ in range(rng.choice([1, 1, 3, 50])):
            values.append(_random_value(field, rng))
    else:
        setattr(target, field.name, _random_value(field, rng))
    return copy


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte-level damage: the output may or may not decode."""
    kind = rng.choice(["flip", "truncate", "insert", "field", "splice", "random"])
    at = rng.randrange(len(data) + 1)
    if kind == "flip" and data:
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + _varint(rng.choice(_INTS)) + data[at:]
    if kind == "field":  # a whole field: known or unknown number, any wire type
        number, wire = (
            rng.choice([1, 2, 3, 4, 5, 6, 9, 15, 16, 2**29 - 1]),
            rng.choice([0, 1, 2, 5]),
        )
        body = {
            0: _varint(rng.choice(_INTS)),
            1: bytes(8),
            2: _varint(3) + b"abc",
            5: bytes(4),
        }[wire]
        return data + _varint(number << 3 | wire) + body
    if kind == "splice":
        return data[:at] + rng.randbytes(rng.randrange(1, 9)) + data[at:]
    return rng.randbytes(rng.randrange(0, 64))


def decodes(method: Method, payloads: Sequence[bytes]) -> bool:
    try:
        for p in payloads:
            method.request.FromString(p)
    except DecodeError:
        return False
    return True


@st.composite
def mutated(draw: st.DrawFn, method: Method) -> list[bytes]:
    """The method's seed stream with one message changed, or the stream itself reshaped."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    messages = list(SEEDS[str(method)])
    payloads = [m.SerializeToString() for m in messages]
    where = draw(st.integers(0, len(messages) - 1))
    how = draw(st.sampled_from(["fields", "fields", "fields", "bytes", "bytes", "stream"]))
    if how == "fields":
        payloads[where] = mutate_fields(messages[where], rng).SerializeToString()
    elif how == "bytes":
        payloads[where] = mutate_bytes(payloads[where], rng)
    elif method.client_streaming:
        shape = draw(st.sampled_from(["drop", "repeat", "swap", "empty", "cut"]))
        if shape == "drop":
            del payloads[where]
        elif shape == "repeat":
            payloads.insert(where, payloads[where])
        elif shape == "swap" and len(payloads) > 1:
            payloads[0], payloads[-1] = payloads[-1], payloads[0]
        elif shape == "empty":
            payloads[where] = b""  # decodes: a message with nothing set
        else:
            payloads = payloads[: where + 1]
    return payloads


# --------------------------------------------------------------------------- the node


@pytest.fixture(scope="module")
def world(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Node:
    """The node with something to find: an audience, conversions and a model in 'acme'."""
    tmp = tmp_path_factory.mktemp("fuzz")
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    crm = tmp / "crm.csv"
    crm.write_text("email\n" + "".join(f"{e}\n" for e in EMAILS))
    sales = tmp / "sales.csv"
    sales.write_text(
        "customer_id,email,ts,value\n"
        + "".join(f"c{i},{e},2026-11-0{1 + i % 9},{i}.5\n" for i, e in enumerate(EMAILS))
    )
    email = parse_id_columns("email")
    options = NormalizeOptions()

    async def setup() -> None:
        await upload_audience(admin, name=AUDIENCE, path=crm, id_columns=email, options=options)
        await upload_conversions(
            admin,
            name=CONVERSIONS,
            path=sales,
            id_columns=email,
            options=options,
            customer_column="customer_id",
            time_column="ts",
            value_column="value",
        )

    asyncio.run(setup())
    metadata = (("authorization", f"Bearer {admin.token}"),)
    with grpc.insecure_channel(node.target) as channel:
        pb_grpc.LookalikeServiceStub(channel).UploadModel(
            pb.ModelUpload(name=MODEL, model_json=MODEL_JSON),
            metadata=metadata,
            timeout=DEADLINE,
        )
        # The policy's smallest seed, so a lookalike Hello gets past it to the protocol.
        pb_grpc.AttributionServiceStub(channel).SetPolicy(
            pb.PolicyRequest(min_lookalike_seed=100), metadata=metadata, timeout=DEADLINE
        )
    return node


def token_for(world: Node, method: Method) -> str:
    # Admin calls that change state go to the second tenant, so they cannot starve the
    # partner's runs on the first (a fuzzed SetPolicy may set sessions_per_day to 0).
    if method.name in ADMIN:
        return world.tokens["globex"][Role.ADMIN]
    return world.tokens["acme"][Role.PARTNER]


@pytest.fixture(scope="module")
def channel(world: Node) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(world.target) as ch:
        yield ch


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_each_seed_is_served_and_refused_without_credentials(
    world: Node, channel: grpc.Channel, name: str
) -> None:
    method = BY_NAME[name]
    payloads = [m.SerializeToString() for m in SEEDS[name]]
    check(method, call(channel, method, payloads, token_for(world, method)), payloads)
    for token in (None, "not-a-token"):
        outcome = call(channel, method, payloads, token)
        assert outcome.code is Code.UNAUTHENTICATED, (name, token, outcome)
    wrong = (
        world.tokens["acme"][Role.PARTNER]
        if method.name in ADMIN
        else world.tokens["acme"][Role.ADMIN]
    )
    outcome = call(channel, method, payloads, wrong)
    if method.name in {"ListAudiences", "ListModels"}:  # every role of the tenant may list
        assert outcome.code is Code.OK, outcome
    else:
        assert outcome.code is Code.PERMISSION_DENIED, (name, outcome)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.data())
def test_mutated_requests_that_decode_never_fail_internally(
    world: Node, channel: grpc.Channel, data: st.DataObject
) -> None:
    method = data.draw(st.sampled_from(METHODS), label="method")
    payloads = data.draw(mutated(method), label="payloads")
    assume(decodes(method, payloads))
    check(method, call(channel, method, payloads, token_for(world, method)), payloads)
    if payloads:  # whatever the bytes say, no credentials are no credentials
        assert call(channel, method, payloads, None).code is Code.UNAUTHENTICATED


def _hellos(count: int) -> dict[str, Message]:
    return {
        "MatchingService.Session": pb.PartnerMessage(
            hello=pb.Hello(
                audience=AUDIENCE, protocol=pb.MATCH, declared_records=count, declared_points=25
            )
        ),
        "MatchingService.Session/resume": pb.PartnerMessage(
            hello=pb.Hello(
                audience=AUDIENCE,
                protocol=pb.MATCH,
                declared_records=25,
                declared_points=25,
                resume_session_id="s",
                received_values=count,
            )
        ),
        "LookalikeService.Score": pb.ScorePartnerMessage(
            hello=pb.ScoreHello(model=MODEL, users=count, tiers=[10.0], submission_key="fuzz-count")
        ),
        "LookalikeService.Run": pb.LookalikePartnerMessage(
            hello=pb.LookalikeHello(
                audience=AUDIENCE,
                mode="hidden-seed",
                rows=count,
                slots=1,
                features=2,
                tiers=[10.0],
                submission_key="fuzz-count",
            )
        ),
    }


@pytest.mark.parametrize("count", [2**63, 2**64 - 1])
@pytest.mark.parametrize("name", sorted(_hellos(0)))
def test_counts_past_int64_are_invalid_argument(
    world: Node, channel: grpc.Channel, name: str, count: int
) -> None:
    """uint64 counts the node cannot store (found by the test above: the session record's
    INSERT overflowed SQLite's INTEGER, and the partner got INTERNAL)."""
    method = BY_NAME[name.split("/")[0]]
    payloads = [_hellos(count)[name].SerializeToString()]
    outcome = call(channel, method, payloads, token_for(world, method))
    assert outcome.code is Code.INVALID_ARGUMENT, outcome
    assert "more than the largest count" in outcome.details


def _undecodable(method: Method) -> list[list[bytes]]:
    """Bytes that are not a message of the method's request type, in a few shapes."""
    seed = [m.SerializeToString() for m in SEEDS[str(method)]]
    first = seed[0] or b"\x0a\x00"
    corpus = [
        b"\xff",  # a field number of 0 with a truncated varint
        b"\x0a\x05ab",  # a length that runs past the end
        b"\x0a\x02\xff\xfe",  # field 1 (a string or a message): bytes that are neither
        b"\x08" + b"\xff" * 11,  # a varint longer than ten bytes
        first[: max(1, len(first) // 2)] + b"\x0a\x7f",
        random.Random(str(method)).randbytes(48),
    ]
    out = [[p] for p in corpus if not decodes(method, [p])]
    if method.client_streaming:  # a bad message after a good one
        out.append([seed[0], b"\x0a\x05ab"])
    assert out
    return out


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_undecodable_bytes_are_invalid_argument(
    world: Node, channel: grpc.Channel, name: str
) -> None:
    method = BY_NAME[name]
    for payloads in _undecodable(method):
        outcome = call(channel, method, payloads, token_for(world, method))
        assert outcome.code is Code.INVALID_ARGUMENT, (name, payloads, outcome)


def test_the_node_still_serves(world: Node, channel: grpc.Channel) -> None:
    """After all of the above: a normal call answers, and so does the health check."""
    admin = (("authorization", f"Bearer {world.tokens['acme'][Role.ADMIN]}"),)
    listed = pb_grpc.AudienceServiceStub(channel).ListAudiences(
        pb.ListAudiencesRequest(), metadata=admin, timeout=DEADLINE
    )
    assert AUDIENCE in [a.name for a in listed.audiences]
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    models = pb_grpc.LookalikeServiceStub(channel).ListModels(
        pb.ListModelsRequest(), metadata=admin, timeout=DEADLINE
    )
    assert MODEL in [m.name for m in models.models]
