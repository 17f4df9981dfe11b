"""What each party receives on the wire, checked against DESIGN.md §13.

The partner talks to the brand node through a recording proxy; the recorded
bytes are decoded as HTTP/2 frames and gRPC messages and searched for
anything beyond what the protocol statement allows.
"""

from __future__ import annotations

import asyncio
import contextlib

import pandas as pd
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, normalize, parse_id_columns
from cleanroom.audiences.synth import synthesize
from cleanroom.client.sdk import Connection, PsiRun, load_partner_set, run_psi, upload_audience
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.matching.messages import Protocol
from cleanroom.matching.partner import PartnerSet
from cleanroom.matching.workers import CryptoPool, dst_for
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import plaintext_match, row_digests
from tests.wire import RecordingProxy, data_by_stream, grpc_messages

OPTIONS = NormalizeOptions(default_region="US")
COLUMNS = parse_id_columns("email,phone,maid")


@pytest.fixture(scope="module")
def world(node: Node, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("wire")
    files = synthesize(
        out, brand_rows=150, partner_rows=120, overlap=0.5, seed=5, default_region="US"
    )
    with RecordingProxy(node.target) as proxy:
        conn = Connection(proxy.target, node.tokens["acme"][Role.ADMIN])
        asyncio.run(
            upload_audience(
                conn, name="wire-crm", path=files.brand_path, id_columns=COLUMNS, options=OPTIONS
            )
        )
        upload_bytes = bytes(proxy.to_server)
    return {"files": files, "upload_bytes": upload_bytes}


def forbidden_values(frame: pd.DataFrame) -> list[bytes]:
    """Raw cells, normalized values, SHA-256 digests and unblinded points."""
    values: list[bytes] = []
    for col in COLUMNS:
        for raw in frame[col.column]:
            if not raw.strip():
                continue
            values.append(raw.strip().encode())
            with contextlib.suppress(ValueError):
                values.append(normalize(col.id_type, raw, OPTIONS).encode())
    for cells in row_digests(frame, COLUMNS, OPTIONS):
        for col, digest in zip(COLUMNS, cells, strict=True):
            if digest is None:
                continue
            values.append(digest)
            values.append(digest.hex().encode())
            values.append(hash_to_curve(digest, dst_for(col.id_type)))
    return [v for v in values if len(v) >= 6]


def run_recorded(
    node: Node, world: dict[str, object], protocol: Protocol, pool: CryptoPool, report: bool = True
) -> tuple[PsiRun, PartnerSet, list[pb.PartnerMessage], list[pb.BrandMessage], bytes, bytes]:
    files = world["files"]
    data, _ = load_partner_set(files.partner_path, COLUMNS, OPTIONS)  # type: ignore[attr-defined]
    with RecordingProxy(node.target) as proxy:
        conn = Connection(proxy.target, node.tokens["acme"][Role.PARTNER])
        run = asyncio.run(run_psi(conn, "wire-crm", protocol, data, pool=pool, report_count=report))
        (ask, told), (sent_raw, received_raw) = proxy.connections
        sent, received = bytes(sent_raw), bytes(received_raw)
    # Before the session the partner asks which of its identifier types the audience
    # holds: its type names only, and the answer is types only.
    [question] = [v for v in data_by_stream(bytes(ask), client_side=True).values() if v]
    [types] = grpc_messages(question, pb.TypesRequest)
    assert (types.audience, list(types.id_types)) == ("wire-crm", [str(c.id_type) for c in COLUMNS])
    [answer] = [v for v in data_by_stream(bytes(told), client_side=False).values() if v]
    assert set(grpc_messages(answer, pb.TypesResponse)[0].id_types) <= set(types.id_types)
    [up] = [v for v in data_by_stream(sent, client_side=True).values() if v]
    [down] = [v for v in data_by_stream(received, client_side=False).values() if v]
    return (
        run,
        data,
        grpc_messages(up, pb.PartnerMessage),
        grpc_messages(down, pb.BrandMessage),
        sent,
        received,
    )


def test_upload_carries_digests_not_identifiers(world: dict[str, object]) -> None:
    brand = pd.read_csv(world["files"].brand_path, dtype=str, keep_default_na=False)  # type: ignore[attr-defined]
    wire = world["upload_bytes"]
    assert isinstance(wire, bytes)
    for col in COLUMNS:
        for raw in brand[col.column]:
            if len(raw.strip()) >= 6 and not _is_hex_digest(raw):
                assert raw.strip().encode() not in wire
                with contextlib.suppress(ValueError):
                    assert normalize(col.id_type, raw, OPTIONS).encode() not in wire


def _is_hex_digest(value: str) -> bool:
    v = value.strip()
    return len(v) == 64 and all(c in "0123456789abcdefABCDEF" for c in v)


@pytest.mark.parametrize("protocol", [Protocol.MATCH, Protocol.CARDINALITY])
def test_each_party_receives_only_what_section_13_allows(
    node: Node, world: dict[str, object], process_pool: CryptoPool, protocol: Protocol
) -> None:
    _, _, up, down, sent, received = run_recorded(node, world, protocol, process_pool)
    files = world["files"]
    brand = pd.read_csv(files.brand_path, dtype=str, keep_default_na=False)  # type: ignore[attr-defined]
    partner = pd.read_csv(files.partner_path, dtype=str, keep_default_na=False)  # type: ignore[attr-defined]

    # Brand node receives: Hello (sizes), blinded points, and in CARDINALITY
    # the shuffled H(s)^ab values; in MATCH at most the count. Nothing else.
    kinds = [m.WhichOneof("body") for m in up]
    allowed = {"hello", "points", "finish"} | (
        {"values"} if protocol is Protocol.CARDINALITY else set()
    )
    assert set(kinds) <= allowed and kinds[0] == "hello" and kinds[-1] == "finish"
    hello = up[0].hello
    assert hello.audience == "wire-crm"
    for value in forbidden_values(partner):
        assert value not in sent, (
            "a partner identifier, digest or unblinded point reached the brand"
        )
    finish = up[-1].finish
    expected = sum(1 for e in plaintext_match(brand, partner, COLUMNS, OPTIONS) if e)
    if protocol is Protocol.MATCH:
        assert (finish.report_count, finish.matched_records) == (True, expected)
    else:
        assert (finish.report_count, finish.matched_records) == (False, 0)
    # No per-row flag: the partner sends exactly its declared points, once.
    points = sum(len(m.points.points) for m in up if m.HasField("points")) // 32
    assert points == hello.declared_points

    # Partner receives: Accepted (|S|), its own points re-blinded (MATCH),
    # the brand set blinded, the result. No brand identifier or digest.
    kinds = [m.WhichOneof("body") for m in down]
    allowed = {"accepted", "points", "result"} | (
        {"values"} if protocol is Protocol.MATCH else set()
    )
    assert set(kinds) <= allowed and kinds[0] == "accepted" and kinds[-1] == "result"
    for value in forbidden_values(brand):
        assert value not in received, (
            "a brand identifier, digest or unblinded point reached the partner"
        )
    brand_points = sum(len(m.points.points) for m in down if m.HasField("points")) // 32
    assert brand_points == down[0].accepted.brand_points
    if protocol is Protocol.MATCH:
        values = sum(len(m.values.values) for m in down if m.HasField("values"))
        assert values == hello.declared_points * down[0].accepted.value_len
    else:
        assert down[-1].result.intersection == expected


def test_partner_can_withhold_its_match_count(
    node: Node, world: dict[str, object], process_pool: CryptoPool
) -> None:
    run, _, up, _, _, _ = run_recorded(node, world, Protocol.MATCH, process_pool, report=False)
    finish = up[-1].finish
    assert (finish.report_count, finish.matched_records) == (False, 0)
    assert run.session.outcome is not None and run.session.outcome.matched_records > 0


def test_brand_points_arrive_shuffled(
    node: Node, world: dict[str, object], process_pool: CryptoPool
) -> None:
    """The brand's order on the wire differs between sessions (fresh shuffle and key)."""
    _, _, _, down1, _, _ = run_recorded(node, world, Protocol.MATCH, process_pool)
    _, _, _, down2, _, _ = run_recorded(node, world, Protocol.MATCH, process_pool)
    first1 = [m.points.points for m in down1 if m.HasField("points")]
    first2 = [m.points.points for m in down2 if m.HasField("points")]
    assert set(b"".join(first1)[i : i + 32] for i in range(0, 320, 32)).isdisjoint(
        b"".join(first2)[i : i + 32] for i in range(0, 320, 32)
    )
