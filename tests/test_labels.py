"""Seed labels on a brand audience (for lookalikes): sent with the digests, stored per
identifier, counted in the upload report; bad labels are refused and store nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import Connection, SeedLabels, upload_audience
from cleanroom.matching.workers import CryptoPool
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.server.audiences import AudienceService
from cleanroom.server.datasets import open_dataset
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import sha

COLUMNS = parse_id_columns("email,phone")
OPTIONS = NormalizeOptions(default_region="US")


def labelled_file(tmp_path: Path) -> Path:
    rows = [
        "email,phone,tier",
        "a@x.com,+12015550101,Gold",  # seed (case and spaces do not matter)
        "b@x.com,,silver",
        "c@x.com,+12015550103, gold ",  # seed
        ",+12015550101,bronze",  # shares a's phone: the phone stays a seed identifier
        "d@x.com,,",  # no tier: not a seed
        ",,gold",  # no identifier: rejected, not counted
    ]
    path = tmp_path / "crm.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def stored(node: Node, name: str) -> tuple[dict[bytes, int], int]:
    store = node.store()
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None
        record = store.get_audience(tenant.tenant_id, name)
        assert record is not None and record.seeds is not None
        table = open_dataset(node.data_dir / record.path).read_all()
        labels = dict(
            zip(table.column("digest").to_pylist(), table.column("label").to_pylist(), strict=True)
        )
        return labels, record.seeds
    finally:
        store.close()


def test_labels_are_stored_per_identifier_and_counted(node: Node, tmp_path: Path) -> None:
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    result = asyncio.run(
        upload_audience(
            conn,
            name="labelled",
            path=labelled_file(tmp_path),
            id_columns=COLUMNS,
            options=OPTIONS,
            labels=SeedLabels("tier", ("gold", "platinum")),
        )
    )
    report = result.to_dict()
    assert (report["rows_accepted"], report["seeds"], report["non_seeds"]) == (5, 2, 3)
    assert result.audience["seeds"] == 2
    labels, seeds = stored(node, "labelled")
    assert seeds == 2
    assert labels[sha("a@x.com")] == 1 and labels[sha("c@x.com")] == 1
    assert labels[sha("b@x.com")] == 0 and labels[sha("d@x.com")] == 0
    assert labels[sha("+12015550101")] == 1  # a seed record and another share it
    assert labels[sha("+12015550103")] == 1
    # Without a label column every record is a seed.
    plain = asyncio.run(
        upload_audience(
            conn, name="plain", path=labelled_file(tmp_path), id_columns=COLUMNS, options=OPTIONS
        )
    )
    assert (plain.seeds, plain.non_seeds) == (5, 0)
    all_labels, all_seeds = stored(node, "plain")
    assert all_seeds == 5 and set(all_labels.values()) == {1}


def test_a_missing_label_column_fails_before_anything_is_sent(node: Node, tmp_path: Path) -> None:
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    with pytest.raises(ValueError, match="'ltv'"):
        asyncio.run(
            upload_audience(
                conn,
                name="nolabel",
                path=labelled_file(tmp_path),
                id_columns=COLUMNS,
                options=OPTIONS,
                labels=SeedLabels("ltv", ("high",)),
            )
        )
    with pytest.raises(ValueError, match="--positive"):
        SeedLabels("tier", (" ", ""))


@pytest.mark.parametrize(
    ("labels", "seeds", "why"),
    [
        (bytes([1]), None, "1 labels for 2 digests"),
        (bytes([1, 2]), None, "0/1 byte"),
        (bytes([1, 0]), 3, "claims 3 seeds among 2 rows"),
    ],
)
def test_bad_labels_are_refused_and_store_nothing(
    node: Node, labels: bytes, seeds: int | None, why: str
) -> None:
    chunk = pb.UploadChunk(
        seq=0,
        row_count=2,
        columns=[
            pb.IdColumnChunk(column=0, digests=sha("x@y.com") + sha("z@y.com"), labels=labels)
        ],
    )
    if seeds is not None:
        chunk.seeds = seeds
    requests = [
        pb.UploadRequest(header=pb.UploadHeader(name="badlabels", id_types=[pb.EMAIL])),
        pb.UploadRequest(chunk=chunk),
        pb.UploadRequest(end=pb.UploadEnd(chunk_count=1, row_count=2)),
    ]
    metadata = (("authorization", f"Bearer {node.tokens['acme'][Role.ADMIN]}"),)
    with grpc.insecure_channel(node.target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.AudienceServiceStub(channel).Upload(iter(requests), metadata=metadata, timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert why in (refused.value.details() or "")
    store = node.store()
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None and store.get_audience(tenant.tenant_id, "badlabels") is None
    finally:
        store.close()


def test_audiences_stored_before_labels_are_all_seeds(
    node: Node, tmp_path: Path, thread_pool: CryptoPool
) -> None:
    """An audience file without a label column (an earlier release's) reads as all seeds."""
    path = tmp_path / "old.parquet"
    pq.write_table(
        pa.table(
            {
                "id_type": ["email", "email"],
                "digest": pa.array([sha("a"), sha("b")], pa.binary(32)),
                "point": pa.array([bytes(32), bytes([1]) * 32], pa.binary(32)),
            }
        ),
        path,
    )
    store = node.store()
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None
        record = store.list_audiences(tenant.tenant_id)[0]
        old = dataclasses.replace(record, path="old.parquet")
        labelled = AudienceService(store, tmp_path, thread_pool).labelled_points(old)
    finally:
        store.close()
    [(points, labels)] = list(labelled.batches())
    assert len(points) == 2 * 32 and labels.tolist() == [1, 1] and labels.dtype == np.uint8
    assert (labelled.seeds, labelled.others) == (2, 0)
