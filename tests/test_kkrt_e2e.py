"""KKRT16 OT-extension PSI over real gRPC: answers, the wire, refusals, policy."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.synth import synthesize
from cleanroom.client.sdk import (
    ClientError,
    Connection,
    PsiRun,
    load_partner_set,
    read_match_output,
    run_psi,
    set_policy,
    upload_audience,
    write_match_output,
)
from cleanroom.matching import ot_extension as ox
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.kkrt import KkrtReceiver, partner_items
from cleanroom.matching.messages import Protocol, PsiMethod
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import plaintext_match
from tests.test_e2e import healthy, partner, raw_session
from tests.test_faults import sessions
from tests.test_wire_privacy import forbidden_values
from tests.wire import RecordingProxy, data_by_stream, grpc_messages

OPTIONS = NormalizeOptions(default_region="US")
COLUMNS = parse_id_columns("email,phone,maid")


@pytest.fixture(scope="module")
def files(node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("kkrt")
    result = synthesize(
        out, brand_rows=500, partner_rows=400, overlap=0.4, seed=23, default_region="US"
    )
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    asyncio.run(
        upload_audience(
            conn, name="kkrt-crm", path=result.brand_path, id_columns=COLUMNS, options=OPTIONS
        )
    )
    return result.brand_path, result.partner_path


def psi(
    node: Node, data: PartnerSet, pool: CryptoPool, method: PsiMethod = PsiMethod.KKRT
) -> PsiRun:
    """A match of ``data`` against the module's audience, as acme's partner."""
    return asyncio.run(
        run_psi(partner(node), "kkrt-crm", Protocol.MATCH, data, pool=pool, method=method)
    )


def matched_on(node: Node, data: PartnerSet, method: PsiMethod, pool: CryptoPool) -> np.ndarray:
    run = psi(node, data, pool, method)
    assert run.session.outcome is not None
    return whole_array(run.session.outcome.matched_on)


def test_multi_key_match_equals_ecdh_and_the_plaintext_join(
    node: Node, files: tuple[Path, Path], process_pool: CryptoPool, tmp_path: Path
) -> None:
    brand_csv, partner_csv = files
    data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
    kkrt = matched_on(node, data, PsiMethod.KKRT, process_pool)
    ecdh = matched_on(node, data, PsiMethod.ECDH, process_pool)
    assert np.array_equal(kkrt, ecdh)
    out = tmp_path / "out.csv"
    write_match_output(partner_csv, out, kkrt, COLUMNS)
    brand = pd.read_csv(brand_csv, dtype=str, keep_default_na=False)
    partner_frame = pd.read_csv(partner_csv, dtype=str, keep_default_na=False)
    expected = plaintext_match(brand, partner_frame, COLUMNS, OPTIONS)
    assert read_match_output(out)["matched_on"].tolist() == expected
    assert {e for e in expected if e} >= {"email", "phone"}  # several keys really matched


def random_set(n: int, seed: int) -> PartnerSet:
    rng = np.random.default_rng(seed)
    return PartnerSet(
        row_count=n,
        columns=[
            PartnerColumn(
                "email",
                np.arange(n, dtype=np.int64),
                rng.integers(0, 256, 32 * n, np.uint8).tobytes(),
            )
        ],
    )


def recorded(
    node: Node, data: PartnerSet, pool: CryptoPool
) -> tuple[PsiRun, list[pb.PartnerMessage], list[pb.BrandMessage]]:
    with RecordingProxy(node.target) as proxy:
        conn = Connection(proxy.target, node.tokens["acme"][Role.PARTNER])
        run = asyncio.run(
            run_psi(conn, "kkrt-crm", Protocol.MATCH, data, pool=pool, method=PsiMethod.KKRT)
        )
        sent, received = proxy.connections[-1]
    [up] = [v for v in data_by_stream(bytes(sent), client_side=True).values() if v]
    [down] = [v for v in data_by_stream(bytes(received), client_side=False).values() if v]
    return run, grpc_messages(up, pb.PartnerMessage), grpc_messages(down, pb.BrandMessage)


def test_the_wire_carries_no_identifier_digest_or_unkeyed_hash(
    node: Node, files: tuple[Path, Path], process_pool: CryptoPool
) -> None:
    brand_csv, partner_csv = files
    data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
    run, up, down = recorded(node, data, process_pool)
    assert run.session.outcome is not None
    kinds = [m.WhichOneof("body") for m in up]
    assert kinds[0] == "hello" and kinds[-1] == "finish"
    assert set(kinds[1:-1]) == {"columns"}
    assert next(m.WhichOneof("body") for m in down) == "accepted"
    assert {m.WhichOneof("body") for m in down[1:-1]} == {"values"}
    wire = b"".join(m.SerializeToString() for m in up) + b"".join(
        m.SerializeToString() for m in down
    )
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in (brand_csv, partner_csv)]
    forbidden = [v for frame in frames for v in forbidden_values(frame)]
    # ... and the item blocks the protocol hashes into bins and codewords.
    blocks = partner_items(data).blocks
    forbidden += [bytes(b) for b in blocks]
    assert len(forbidden) > 1000
    assert not [v for v in forbidden if v in wire]
    # The partner's hello declares its sizes and nothing of its items.
    hello = up[0].hello
    assert hello.method == pb.PSI_METHOD_KKRT
    assert hello.bins == ox.bin_count(hello.declared_points)
    assert hello.declared_points == len(blocks)


def message_sizes(
    up: list[pb.PartnerMessage], down: list[pb.BrandMessage]
) -> list[tuple[str, int]]:
    def size(m: pb.PartnerMessage | pb.BrandMessage) -> tuple[str, int]:
        kind = m.WhichOneof("body")
        body = getattr(m, kind)
        payload = {"columns": "columns", "values": "values"}.get(kind)
        return kind, len(getattr(body, payload)) if payload else 0

    return [size(m) for m in up] + [size(m) for m in down]


def test_message_sizes_depend_only_on_set_sizes_and_sessions_do_not_link(
    node: Node, files: tuple[Path, Path], process_pool: CryptoPool
) -> None:
    first, up1, down1 = recorded(node, random_set(3000, 1), process_pool)
    second, up2, down2 = recorded(node, random_set(3000, 2), process_pool)
    assert message_sizes(up1, down1) == message_sizes(up2, down2)
    # The same set twice: nothing of one session recurs in the other.
    _, up3, down3 = recorded(node, random_set(3000, 1), process_pool)
    length = first.accepted.value_len if first.accepted else 0
    values = [b"".join(m.values.values for m in d[1:-1]) for d in (down1, down3)]
    sets = [{v[i : i + length] for i in range(0, len(v), length)} for v in values]
    assert len(sets[0]) == len(values[0]) // length  # no value repeats within a session
    assert not sets[0] & sets[1]
    columns = [b"".join(m.columns.columns for m in u[1:-1]) for u in (up1, up3)]
    assert not {columns[0][i : i + 16] for i in range(0, len(columns[0]), 4096)} & {
        columns[1][i : i + 16] for i in range(0, len(columns[1]), 4096)
    }
    assert up1[0].hello.ot_point != up3[0].hello.ot_point
    assert down1[0].accepted.ot_points != down3[0].accepted.ot_points
    assert first.bytes_sent > 0 and second.bytes_received > 0


# ------------------------------------------------------------------ refusals


def kkrt_hello(points: int = 64, **changes: object) -> pb.PartnerMessage:
    digests = np.random.default_rng(points).integers(0, 256, (points, 32), np.uint8)
    receiver = KkrtReceiver(ox.item_blocks("email", digests))
    fields: dict[str, object] = {
        "audience": "kkrt-crm",
        "protocol": pb.MATCH,
        "declared_records": points,
        "declared_points": points,
        "method": pb.PSI_METHOD_KKRT,
        "ot_point": receiver.ot_point,
        "cuckoo_key": receiver.cuckoo_key,
        "nonce": receiver.nonce,
        "bins": receiver.bins,
    }
    fields.update(changes)
    return pb.PartnerMessage(hello=pb.Hello(**fields))  # type: ignore[arg-type]


CHUNK = ox.WIDTH * ox.bin_count(64) // 8


def columns(seq: int, size: int = CHUNK) -> pb.PartnerMessage:
    return pb.PartnerMessage(columns=pb.ColumnChunk(seq=seq, columns=bytes(size)))


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([kkrt_hello(ot_point=b"\x09" * 63)], "64 bytes"),
        ([kkrt_hello(ot_point=bytes(64))], "low-order"),
        ([kkrt_hello(ot_point=(2).to_bytes(32, "little") + bytes(32))], "twist"),
        ([kkrt_hello(bins=4096)], "exactly 256"),
        ([kkrt_hello(cuckoo_key=b"")], "16 bytes"),
        ([kkrt_hello(method=7)], "Hello.method 7"),
        ([kkrt_hello(protocol=pb.CARDINALITY, slots_per_record=1)], "MATCH only"),
        ([kkrt_hello(), columns(1)], "chunk 0 was due"),
        ([kkrt_hello(), columns(0, CHUNK - 64)], "columns of"),
        ([kkrt_hello(), columns(0), columns(1)], "past the 256 bins"),
        (
            [kkrt_hello(), pb.PartnerMessage(points=pb.PointChunk(seq=0, points=bytes(32)))],
            "not part of an OT-extension",
        ),
    ],
)
def test_bad_messages_are_invalid_argument_and_the_node_keeps_serving(
    node: Node, files: tuple[Path, Path], messages: list[pb.PartnerMessage], why: str
) -> None:
    _received, code, details = asyncio.run(raw_session(node, messages))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert why in details
    assert healthy(node)


def test_policy_lists_the_match_methods(
    node: Node, files: tuple[Path, Path], process_pool: CryptoPool
) -> None:
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    data = random_set(300, 3)
    try:
        policy = set_policy(admin, {"match_methods": ["ecdh"]})
        assert policy["match_methods"] == ["ecdh"]
        with pytest.raises(ClientError) as refused:
            psi(node, data, process_pool)
        assert refused.value.code == "FAILED_PRECONDITION"
        assert "ecdh only, not kkrt" in refused.value.message
        psi(node, data, process_pool, PsiMethod.ECDH)
        with pytest.raises(ClientError, match="match methods are ecdh, kkrt"):
            set_policy(admin, {"match_methods": ["rsa"]})
    finally:
        set_policy(admin, {"match_methods": ["ecdh", "kkrt"]})


def test_the_session_record_counts_bins(
    node: Node, files: tuple[Path, Path], process_pool: CryptoPool
) -> None:
    run = psi(node, random_set(1000, 4), process_pool)
    [record] = [s for s in sessions(node) if s.session_id == run.session.session_id]
    assert record.status == "done"
    assert record.declared_points == ox.bin_count(1000)
    assert record.declared_records == 1000


def test_kkrt_overlap_is_refused_by_the_sdk(node: Node, process_pool: CryptoPool) -> None:
    with pytest.raises(ValueError, match="overlap stays ECDH"):
        asyncio.run(
            run_psi(
                partner(node),
                "kkrt-crm",
                Protocol.CARDINALITY,
                random_set(5, 5),
                pool=process_pool,
                method=PsiMethod.KKRT,
            )
        )


class CuttingProxy(RecordingProxy):
    """A proxy whose first connection breaks after the client sent ``cut_after`` bytes."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        super().__init__(upstream)
        self.cut_after = cut_after
        self.cut = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            await super()._handle(reader, writer)
            return
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        sent = 0

        async def up() -> None:
            nonlocal sent
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
                sent += len(data)
                if sent > self.cut_after:
                    self.cut = True
                    break
            writer.close()
            up_writer.close()

        async def down() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()

        await asyncio.gather(up(), down(), return_exceptions=True)


def test_a_broken_stream_restarts_with_fresh_keys_and_the_right_answer(
    node: Node, files: tuple[Path, Path], process_pool: CryptoPool
) -> None:
    _, partner_csv = files
    data, _ = load_partner_set(partner_csv, COLUMNS, OPTIONS)
    expected = matched_on(node, data, PsiMethod.ECDH, process_pool)
    # Cut the first connection once the hello and some columns have gone.
    cutting = CuttingProxy(node.target, cut_after=20_000)
    with cutting as proxy:
        conn = Connection(proxy.target, node.tokens["acme"][Role.PARTNER], retry_seconds=30)
        run = asyncio.run(
            run_psi(
                conn, "kkrt-crm", Protocol.MATCH, data, pool=process_pool, method=PsiMethod.KKRT
            )
        )
    assert cutting.cut
    assert (run.restarts, run.resumes) == (1, 0)
    assert run.session.outcome is not None
    assert np.array_equal(whole_array(run.session.outcome.matched_on), expected)
    failed = [r for r in sessions(node) if r.status == "failed" and "restart" in (r.error or "")]
    assert failed, "the broken session is recorded as failed, for the partner starts over"
    assert healthy(node)


def test_mutated_kkrt_streams_never_fail_internally(node: Node, files: tuple[Path, Path]) -> None:
    """Bit flips, truncations and swapped fields in a valid KKRT stream: a precise refusal
    (or a session that runs), never INTERNAL or UNKNOWN; the node keeps serving."""
    rng = np.random.default_rng(12)
    valid = [kkrt_hello(), columns(0)]
    for _ in range(40):
        messages = [pb.PartnerMessage.FromString(m.SerializeToString()) for m in valid]
        target = messages[int(rng.integers(0, 2))]
        kind = target.WhichOneof("body")
        body = getattr(target, kind)
        match int(rng.integers(0, 4)):
            case 0 if kind == "hello":
                point = bytearray(body.ot_point)
                point[int(rng.integers(0, len(point)))] ^= 1 << int(rng.integers(0, 8))
                body.ot_point = bytes(point)
            case 1 if kind == "hello":
                body.bins = int(rng.integers(0, 2**40))
            case 2 if kind == "columns":
                body.columns = body.columns[: int(rng.integers(0, len(body.columns)))]
            case _:
                if kind == "columns":
                    body.seq = int(rng.integers(0, 2**63))
                else:
                    body.declared_points = int(rng.integers(0, 2**40))
        # A hello that is refused goes alone: a client still writing when the node ends the
        # call reads gRPC core's own INTERNAL instead of the node's status (grpc/grpc#36066).
        if kind == "hello":
            messages = messages[:1]
        _, code, details = asyncio.run(raw_session(node, messages))
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
    assert healthy(node)
