"""End to end over real gRPC on loopback: upload, match, overlap, refusals."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reader import AudienceFileError
from cleanroom.audiences.synth import synthesize
from cleanroom.client.sdk import (
    ClientError,
    Connection,
    load_partner_set,
    prepare_points,
    read_match_output,
    run_psi,
    upload_audience,
    write_match_output,
)
from cleanroom.matching.bulk import FileArray, FileBytes, whole_array
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.matching.messages import Protocol, PsiMethod
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import eventually, plaintext_match, sha, temporaries

OPTIONS = NormalizeOptions(default_region="US")
COLUMNS = parse_id_columns("email,phone,maid")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("synth")
    result = synthesize(
        out, brand_rows=400, partner_rows=300, overlap=0.4, seed=11, default_region="US"
    )
    return result.brand_path, result.partner_path


@pytest.fixture(scope="module")
def uploaded(node: Node, files: tuple[Path, Path]) -> dict[str, object]:
    brand, _ = files
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    result = asyncio.run(
        upload_audience(conn, name="crm", path=brand, id_columns=COLUMNS, options=OPTIONS)
    )
    asyncio.run(
        upload_audience(
            Connection(node.target, node.tokens["globex"][Role.ADMIN]),
            name="globex-only",
            path=brand,
            id_columns=COLUMNS,
            options=OPTIONS,
        )
    )
    return result.to_dict()


def partner(node: Node, tenant: str = "acme", role: Role = Role.PARTNER) -> Connection:
    return Connection(node.target, node.tokens[tenant][role])


def healthy(node: Node) -> bool:
    async def check() -> int:
        async with grpc.aio.insecure_channel(node.target) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            return int(resp.status)

    return asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING


def no_temporaries(node: Node) -> bool:
    return not temporaries(node.data_dir)


def test_upload_report_matches_the_file(
    uploaded: dict[str, object], files: tuple[Path, Path]
) -> None:
    frame = pd.read_csv(files[0], dtype=str, keep_default_na=False)
    assert uploaded["rows_read"] == len(frame)
    rejected = sum(uploaded["rows_rejected"].values())  # type: ignore[attr-defined]
    assert uploaded["rows_accepted"] == len(frame) - rejected
    audience = uploaded["audience"]
    assert isinstance(audience, dict)
    assert audience["records"] == uploaded["rows_accepted"]
    total = sum(uploaded["identifiers"].values())  # type: ignore[attr-defined]
    assert audience["elements"] + audience["duplicates"] == total


def test_multi_key_match_equals_plaintext_join(
    node: Node,
    files: tuple[Path, Path],
    uploaded: dict[str, object],
    process_pool: CryptoPool,
    tmp_path: Path,
) -> None:
    brand_csv, partner_csv = files
    data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
    run = asyncio.run(run_psi(partner(node), "crm", Protocol.MATCH, data, pool=process_pool))
    assert run.session.outcome is not None
    out = tmp_path / "out.csv"
    write_match_output(partner_csv, out, run.session.outcome.matched_on, COLUMNS)
    result = read_match_output(out)
    brand = pd.read_csv(brand_csv, dtype=str, keep_default_na=False)
    partner_frame = pd.read_csv(partner_csv, dtype=str, keep_default_na=False)
    expected = plaintext_match(brand, partner_frame, COLUMNS, OPTIONS)
    assert result["matched_on"].tolist() == expected
    assert result["matched"].tolist() == ["true" if e else "false" for e in expected]
    # The original columns come through unchanged.
    pd.testing.assert_frame_equal(result[partner_frame.columns], partner_frame)
    assert sum(1 for e in expected if e) > 50  # the data really overlaps
    assert {e for e in expected if e} >= {"email", "phone"}


@pytest.mark.parametrize("method", [PsiMethod.ECDH, PsiMethod.KKRT])
def test_a_set_read_into_files_matches_as_one_in_memory(
    node: Node,
    files: tuple[Path, Path],
    uploaded: dict[str, object],
    process_pool: CryptoPool,
    tmp_path: Path,
    method: PsiMethod,
) -> None:
    """Past ``memory_bytes`` the partner's row indices, digests, points and its per-row
    outcome live in unnamed files; the answer is the in-memory one and the plaintext
    join's, the output file is the same, and no file is left named."""
    brand_csv, partner_csv = files
    spill = tmp_path / "spill"
    data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS, spill_dir=spill, memory_bytes=0)
    assert all(isinstance(c.digests, FileBytes) for c in data.columns if len(c.rows))
    assert all(isinstance(c.rows, FileArray) for c in data.columns if len(c.rows))
    if method is PsiMethod.ECDH:
        data = asyncio.run(prepare_points(data, process_pool, spill_dir=spill, memory_bytes=0))
        assert all(isinstance(c.points, FileBytes) for c in data.columns if len(c.rows))
    run = asyncio.run(
        run_psi(
            partner(node),
            "crm",
            Protocol.MATCH,
            data,
            pool=process_pool,
            method=method,
            spill_dir=spill,
            memory_bytes=0,
        )
    )
    assert isinstance(run.outcome.matched_on, FileArray)
    assert list(spill.iterdir()) == []
    in_memory, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
    assert all(isinstance(c.digests, bytes) for c in in_memory.columns)
    reference = asyncio.run(
        run_psi(partner(node), "crm", Protocol.MATCH, in_memory, pool=process_pool, method=method)
    )
    brand = pd.read_csv(brand_csv, dtype=str, keep_default_na=False)
    partner_frame = pd.read_csv(partner_csv, dtype=str, keep_default_na=False)
    expected = plaintext_match(brand, partner_frame, COLUMNS, OPTIONS)
    labels = ["", *(str(c.id_type) for c in COLUMNS)]
    got = [labels[i + 1] for i in whole_array(run.outcome.matched_on)]
    assert got == expected
    assert (
        whole_array(run.outcome.matched_on).tolist()
        == whole_array(reference.outcome.matched_on).tolist()
    )
    assert run.outcome.matched_per_column == reference.outcome.matched_per_column
    assert run.outcome.matched_per_column == tuple(
        sum(1 for e in expected if e == str(c.id_type)) for c in COLUMNS
    )
    from_files, from_memory = tmp_path / "files.csv", tmp_path / "memory.csv"
    write_match_output(partner_csv, from_files, run.outcome.matched_on, COLUMNS, chunk_rows=37)
    write_match_output(partner_csv, from_memory, reference.outcome.matched_on, COLUMNS)
    assert from_files.read_bytes() == from_memory.read_bytes()


def test_single_key_match_equals_plaintext_join(
    node: Node, files: tuple[Path, Path], uploaded: dict[str, object], process_pool: CryptoPool
) -> None:
    brand_csv, partner_csv = files
    email_only = parse_id_columns("email")
    data, _ = load_partner_set(partner_csv, email_only, OPTIONS)
    run = asyncio.run(run_psi(partner(node), "crm", Protocol.MATCH, data, pool=process_pool))
    assert run.session.outcome is not None
    brand = pd.read_csv(brand_csv, dtype=str, keep_default_na=False)
    partner_frame = pd.read_csv(partner_csv, dtype=str, keep_default_na=False)
    # The brand set holds all three types; an email matches only an email.
    expected = plaintext_match(brand, partner_frame, email_only, OPTIONS)
    got = ["email" if x == 0 else "" for x in whole_array(run.session.outcome.matched_on)]
    assert got == expected


def test_overlap_counts_records_matching_on_any_key(
    node: Node, files: tuple[Path, Path], uploaded: dict[str, object], process_pool: CryptoPool
) -> None:
    brand_csv, partner_csv = files
    data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
    run = asyncio.run(run_psi(partner(node), "crm", Protocol.CARDINALITY, data, pool=process_pool))
    brand = pd.read_csv(brand_csv, dtype=str, keep_default_na=False)
    partner_frame = pd.read_csv(partner_csv, dtype=str, keep_default_na=False)
    expected = sum(1 for e in plaintext_match(brand, partner_frame, COLUMNS, OPTIONS) if e)
    assert run.result is not None and run.result.intersection == expected

    def recorded() -> bool:
        # The node records the outcome as its side of the stream closes,
        # which can be a moment after the partner has its result.
        store = node.store()
        try:
            tenant = store.find_tenant("acme")
            assert tenant is not None
            sessions = store.list_sessions(tenant.tenant_id)
        finally:
            store.close()
        return any(
            s.protocol == "cardinality" and s.status == "done" and s.intersection == expected
            for s in sessions
        )

    eventually(recorded, what="the cardinality session to be recorded as done")


# ------------------------------------------------------------------ refusals


def small_set(rows: int = 30) -> PartnerSet:
    data = pd.DataFrame({"email": [f"p{i}@example.com" for i in range(rows)]})

    digests = b"".join(sha(e) for e in data["email"])
    return PartnerSet(rows, [PartnerColumn("email", np.arange(rows, dtype=np.int64), digests)])


def psi_error(
    node: Node, conn: Connection, audience: str, pool: CryptoPool, rows: int = 30
) -> ClientError:
    with pytest.raises(ClientError) as info:
        asyncio.run(run_psi(conn, audience, Protocol.MATCH, small_set(rows), pool=pool))
    assert healthy(node)
    return info.value


def test_wrong_token_is_unauthenticated(
    node: Node, uploaded: dict[str, object], process_pool: CryptoPool
) -> None:
    err = psi_error(node, Connection(node.target, "cr_partner_not-a-token"), "crm", process_pool)
    assert err.code == "UNAUTHENTICATED", err.message


def test_analyst_cannot_run_psi(
    node: Node, uploaded: dict[str, object], process_pool: CryptoPool
) -> None:
    err = psi_error(node, partner(node, role=Role.ANALYST), "crm", process_pool)
    assert err.code == "PERMISSION_DENIED"


def test_other_tenants_audience_is_not_found(
    node: Node, uploaded: dict[str, object], process_pool: CryptoPool
) -> None:
    err = psi_error(node, partner(node), "globex-only", process_pool)
    assert err.code == "NOT_FOUND"
    assert "globex-only" in err.message


def test_set_below_policy_minimum(
    node: Node, uploaded: dict[str, object], process_pool: CryptoPool
) -> None:
    err = psi_error(node, partner(node), "crm", process_pool, rows=5)
    assert err.code == "FAILED_PRECONDITION"
    assert "at least 20" in err.message


async def raw_session(
    node: Node, messages: list[pb.PartnerMessage]
) -> tuple[list[pb.BrandMessage], grpc.StatusCode, str]:
    """Send ``messages`` after Hello/Accepted; collect replies and the final status."""
    received: list[pb.BrandMessage] = []
    async with grpc.aio.insecure_channel(node.target) as ch:
        stub = pb_grpc.MatchingServiceStub(ch)

        async def requests() -> AsyncIterator[pb.PartnerMessage]:
            for m in messages:
                yield m

        call = stub.Session(
            requests(),
            metadata=(("authorization", f"Bearer {node.tokens['acme'][Role.PARTNER]}"),),
            timeout=30,
        )
        try:
            async for msg in call:
                received.append(msg)
        except grpc.aio.AioRpcError as exc:
            return received, exc.code(), exc.details() or ""
        return received, grpc.StatusCode.OK, ""


def hello_pb(points: int = 64) -> pb.PartnerMessage:
    return pb.PartnerMessage(
        hello=pb.Hello(
            audience="crm", protocol=pb.MATCH, declared_records=points, declared_points=points
        )
    )


def good_points(n: int, start: int = 0) -> bytes:
    return b"".join(hash_to_curve(sha(str(i)), b"test") for i in range(start, start + n))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x00" * 32, "low-order"),
        (b"\xff" * 32, "canonical"),
        (b"\x01" * 31, "multiple of 32"),
    ],
)
def test_garbage_points_are_invalid_argument(
    node: Node, uploaded: dict[str, object], payload: bytes, why: str
) -> None:
    msgs = [
        hello_pb(),
        pb.PartnerMessage(points=pb.PointChunk(seq=0, points=good_points(2) + payload)),
    ]
    received, code, details = asyncio.run(raw_session(node, msgs))
    assert received[0].WhichOneof("body") == "accepted"
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert why in details
    assert healthy(node)


@pytest.mark.parametrize(
    ("seqs", "why"), [((0, 0), "duplicate points chunk 0"), ((0, 2), "out-of-order points chunk 2")]
)
def test_duplicate_or_out_of_order_chunks(
    node: Node, uploaded: dict[str, object], seqs: tuple[int, int], why: str
) -> None:
    msgs = [hello_pb()] + [
        pb.PartnerMessage(points=pb.PointChunk(seq=s, points=good_points(4, 10 * s))) for s in seqs
    ]
    _, code, details = asyncio.run(raw_session(node, msgs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert why in details
    assert healthy(node)


def test_first_message_must_be_hello(node: Node, uploaded: dict[str, object]) -> None:
    async def run() -> tuple[list[pb.BrandMessage], grpc.StatusCode, str]:
        return await raw_session(node, [])

    _, code, details = asyncio.run(run())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Hello" in details


# ------------------------------------------------------------------ upload refusals


def audience_names(node: Node, tenant: str = "acme") -> list[str]:
    store = node.store()
    try:
        t = store.find_tenant(tenant)
        assert t is not None
        return [a.name for a in store.list_audiences(t.tenant_id)]
    finally:
        store.close()


def upload(node: Node, path: Path, columns: str = "email,phone,maid", name: str = "bad") -> None:
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    asyncio.run(
        upload_audience(
            conn, name=name, path=path, id_columns=parse_id_columns(columns), options=OPTIONS
        )
    )


@pytest.mark.parametrize(
    ("content", "columns", "why"),
    [
        ("", "email", "empty"),
        ("email,phone\n", "email", "no data rows"),
        ("name,phone\nx,1\n", "email", "email"),
        ('email\n"unterminated\n', "email", "malformed CSV.*EOF inside string"),
    ],
)
def test_bad_files_fail_before_anything_is_stored(
    node: Node, uploaded: dict[str, object], tmp_path: Path, content: str, columns: str, why: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(content)
    before = audience_names(node)
    with pytest.raises(AudienceFileError, match=why):
        upload(node, path, columns)
    assert audience_names(node) == before
    assert no_temporaries(node)
    assert healthy(node)


def test_file_with_only_invalid_identifiers_is_refused(
    node: Node, uploaded: dict[str, object], tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("email,phone\nnobody@,12\n  ,\n")
    before = audience_names(node)
    with pytest.raises(ClientError, match="INVALID_ARGUMENT: the upload carries no identifiers"):
        upload(node, path, "email,phone")
    assert audience_names(node) == before
    assert no_temporaries(node)


def test_invalid_identifiers_are_counted(
    node: Node, uploaded: dict[str, object], tmp_path: Path
) -> None:
    path = tmp_path / "mixed.csv"
    rows = (
        ["email,phone"]
        + [f"u{i}@example.com,(201) 555-01{i:02d}" for i in range(10)]
        + ["nobody@,12", ",", "ok@example.com,999"]
    )
    path.write_text("\n".join(rows) + "\n")
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    result = asyncio.run(
        upload_audience(
            conn,
            name="mixed",
            path=path,
            id_columns=parse_id_columns("email,phone"),
            options=OPTIONS,
        )
    )
    report = result.to_dict()
    assert report["rows_read"] == 13
    assert report["rows_accepted"] == 11
    assert report["rows_rejected"] == {"all_identifiers_invalid": 1, "no_identifier": 1}
    assert report["invalid_identifiers"]["invalid_email"] == 1
    assert sum(v for k, v in report["invalid_identifiers"].items() if "phone" in k) == 2
    assert report["identifiers"] == {"email": 11, "phone": 10}


def test_existing_audience_needs_replace(
    node: Node, uploaded: dict[str, object], files: tuple[Path, Path]
) -> None:
    with pytest.raises(ClientError, match="ALREADY_EXISTS"):
        upload(node, files[0], name="crm")


async def raw_upload(node: Node, messages: list[pb.UploadRequest]) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(node.target) as ch:
        stub = pb_grpc.AudienceServiceStub(ch)

        async def requests() -> AsyncIterator[pb.UploadRequest]:
            for m in messages:
                yield m

        try:
            await stub.Upload(
                requests(),
                metadata=(("authorization", f"Bearer {node.tokens['acme'][Role.ADMIN]}"),),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""


def upload_chunk(seq: int, digest_bytes: bytes | None = None) -> pb.UploadRequest:
    digests = (
        digest_bytes if digest_bytes is not None else b"".join(sha(f"{seq}-{i}") for i in range(3))
    )
    return pb.UploadRequest(
        chunk=pb.UploadChunk(
            seq=seq, row_count=3, columns=[pb.IdColumnChunk(column=0, digests=digests)]
        )
    )


HEADER = pb.UploadRequest(header=pb.UploadHeader(name="raw", id_types=[pb.EMAIL]))


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([HEADER, upload_chunk(0), upload_chunk(0)], "duplicate upload chunk 0"),
        ([HEADER, upload_chunk(0), upload_chunk(2)], "out-of-order upload chunk 2"),
        ([HEADER, upload_chunk(0, b"x" * 40)], "whole number of 32-byte"),
        ([HEADER, upload_chunk(0)], "ended without its end message"),
        (
            [
                HEADER,
                upload_chunk(0),
                pb.UploadRequest(end=pb.UploadEnd(chunk_count=2, row_count=6)),
            ],
            "received 1 chunks",
        ),
        ([upload_chunk(0)], "starts with its header"),
        (
            [pb.UploadRequest(header=pb.UploadHeader(name="../etc", id_types=[pb.EMAIL]))],
            "invalid audience name",
        ),
    ],
)
def test_bad_upload_streams_store_nothing(
    node: Node, uploaded: dict[str, object], messages: list[pb.UploadRequest], why: str
) -> None:
    before = audience_names(node)
    code, details = asyncio.run(raw_upload(node, messages))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert why in details
    assert audience_names(node) == before
    assert no_temporaries(node)
    assert healthy(node)


def test_raw_upload_round_trip(node: Node, uploaded: dict[str, object]) -> None:
    msgs = [
        pb.UploadRequest(header=pb.UploadHeader(name="raw-ok", id_types=[pb.EMAIL])),
        upload_chunk(0),
        upload_chunk(1, b"".join(sha(f"0-{i}") for i in range(3))),  # all duplicates
        pb.UploadRequest(end=pb.UploadEnd(chunk_count=2, row_count=6)),
    ]
    code, _ = asyncio.run(raw_upload(node, msgs))
    assert code == grpc.StatusCode.OK
    store = node.store()
    try:
        t = store.find_tenant("acme")
        assert t is not None
        a = store.get_audience(t.tenant_id, "raw-ok")
    finally:
        store.close()
    assert a is not None and (a.records, a.elements, a.duplicates) == (6, 3, 3)


# ------------------------------------------------------------------ policy, TLS


def test_daily_session_quota_is_resource_exhausted(
    tmp_path: Path, process_pool: CryptoPool, files: tuple[Path, Path]
) -> None:
    from cleanroom.server.node import BrandNodeThread
    from cleanroom.server.settings import ServerSettings
    from cleanroom.server.store import Policy, SqlStore

    settings = ServerSettings(
        data_dir=tmp_path, grpc_port=0, http_port=0, workers=1, serve_http=False
    )
    store = SqlStore(settings.resolved_database_url())
    _, tokens = store.provision_tenant("quota", Policy(min_partner_records=10, sessions_per_day=1))
    admin, partner_token = tokens[Role.ADMIN], tokens[Role.PARTNER]
    store.close()
    with BrandNodeThread(settings) as thread:
        asyncio.run(
            upload_audience(
                Connection(thread.target, admin),
                name="crm",
                path=files[0],
                id_columns=COLUMNS,
                options=OPTIONS,
            )
        )
        conn = Connection(thread.target, partner_token)
        asyncio.run(run_psi(conn, "crm", Protocol.MATCH, small_set(), pool=process_pool))
        with pytest.raises(ClientError) as info:
            asyncio.run(run_psi(conn, "crm", Protocol.MATCH, small_set(), pool=process_pool))
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert "quota of 1 per day" in info.value.message


def test_mutual_tls_end_to_end(
    tmp_path: Path, process_pool: CryptoPool, files: tuple[Path, Path]
) -> None:
    from cleanroom.server.node import BrandNodeThread
    from cleanroom.server.settings import ServerSettings
    from cleanroom.server.store import Policy, SqlStore
    from cleanroom.server.tls import make_certificates

    certs = tmp_path / "certs"
    make_certificates(certs)
    assert oct((certs / "server.key").stat().st_mode & 0o777) == "0o600"
    settings = ServerSettings(
        data_dir=tmp_path / "node",
        grpc_port=0,
        http_port=0,
        workers=1,
        serve_http=False,
        tls_dir=certs,
        host="localhost",
    )
    settings.data_dir.mkdir()
    store = SqlStore(settings.resolved_database_url())
    _, tokens = store.provision_tenant("tls", Policy(min_partner_records=10))
    admin, partner_token = tokens[Role.ADMIN], tokens[Role.PARTNER]
    store.close()
    with BrandNodeThread(settings) as thread:
        target = f"localhost:{thread.ports.grpc}"  # type: ignore[union-attr]
        asyncio.run(
            upload_audience(
                Connection(target, admin, certs),
                name="crm",
                path=files[0],
                id_columns=COLUMNS,
                options=OPTIONS,
            )
        )
        run = asyncio.run(
            run_psi(
                Connection(target, partner_token, certs),
                "crm",
                Protocol.MATCH,
                small_set(),
                pool=process_pool,
            )
        )
        assert run.session.outcome is not None
        # Without a client certificate the handshake fails: no plaintext, no anonymous TLS.
        with pytest.raises(ClientError) as info:
            asyncio.run(
                run_psi(
                    Connection(target, partner_token),
                    "crm",
                    Protocol.MATCH,
                    small_set(),
                    pool=process_pool,
                )
            )
        assert info.value.code == "UNAVAILABLE"


def test_plaintext_only_to_localhost() -> None:
    with pytest.raises(ValueError, match=r"refusing plaintext to brand\.example"):
        Connection("brand.example:50051", "t").channel()

    from cleanroom.server.node import BrandNode
    from cleanroom.server.settings import ServerSettings

    with pytest.raises(ValueError, match=r"refusing to serve plaintext on 0\.0\.0\.0"):
        asyncio.run(BrandNode(ServerSettings(host="0.0.0.0", grpc_port=0)).start())


@pytest.mark.skipif(
    not os.environ.get("CLEANROOM_TEST_POSTGRES_URL"), reason="needs CLEANROOM_TEST_POSTGRES_URL"
)
def test_brand_node_on_postgresql(
    tmp_path: Path, process_pool: CryptoPool, files: tuple[Path, Path]
) -> None:
    from cleanroom.server.node import BrandNodeThread
    from cleanroom.server.settings import ServerSettings
    from cleanroom.server.store import Policy, SqlStore
    from tests.test_store import _fresh_postgres_database

    url = _fresh_postgres_database(os.environ["CLEANROOM_TEST_POSTGRES_URL"])
    settings = ServerSettings(
        data_dir=tmp_path, database_url=url, grpc_port=0, workers=1, serve_http=False
    )
    store = SqlStore(url)
    tenant, tokens = store.provision_tenant("pg", Policy(min_partner_records=10))
    admin, partner_token = tokens[Role.ADMIN], tokens[Role.PARTNER]
    store.close()
    with BrandNodeThread(settings) as thread:
        asyncio.run(
            upload_audience(
                Connection(thread.target, admin),
                name="crm",
                path=files[0],
                id_columns=COLUMNS,
                options=OPTIONS,
            )
        )
        data, _ = load_partner_set(files[1], COLUMNS, OPTIONS)
        run = asyncio.run(
            run_psi(
                Connection(thread.target, partner_token),
                "crm",
                Protocol.CARDINALITY,
                data,
                pool=process_pool,
            )
        )
    brand = pd.read_csv(files[0], dtype=str, keep_default_na=False)
    partner_frame = pd.read_csv(files[1], dtype=str, keep_default_na=False)
    expected = sum(1 for e in plaintext_match(brand, partner_frame, COLUMNS, OPTIONS) if e)
    assert run.result is not None and run.result.intersection == expected
    store = SqlStore(url)
    try:
        [session] = store.list_sessions(tenant.tenant_id)
        assert (session.status, session.intersection) == ("done", expected)
    finally:
        store.close()


def test_reflection_lists_the_services(node: Node) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def names() -> set[str]:
        async with grpc.aio.insecure_channel(node.target) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def req() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for resp in stub.ServerReflectionInfo(req(), timeout=10):
                return {s.name for s in resp.list_services_response.service}
        return set()

    assert asyncio.run(names()) >= {
        "cleanroom.v1.AudienceService",
        "cleanroom.v1.MatchingService",
        "grpc.health.v1.Health",
    }
