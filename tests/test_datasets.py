"""Partitioned storage: the dataset layout, its atomic commit, and reading old files."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.synth import synthesize
from cleanroom.client.sdk import Connection, upload_audience
from cleanroom.matching import semijoin
from cleanroom.matching.semijoin import bucket_of
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.audiences import AUDIENCE_SCHEMA, AudienceService
from cleanroom.server.datasets import (
    MANIFEST,
    DatasetError,
    DatasetWriter,
    open_dataset,
    remove_stored,
)
from cleanroom.server.files import WORK_DIR, remove_stale_temporaries
from cleanroom.server.store import AudienceRecord, Role
from tests.conftest import Node

OPTIONS = NormalizeOptions(default_region="US")
COLUMNS = parse_id_columns("email,phone,maid")
SCHEMA = pa.schema([("id_type", pa.string()), ("digest", pa.binary(4))])


def rows(id_type: str, *digests: bytes) -> pa.Table:
    return pa.table({"id_type": [id_type] * len(digests), "digest": digests}, schema=SCHEMA)


def test_a_set_appears_only_on_commit_with_its_manifest(tmp_path: Path) -> None:
    final = tmp_path / "sets" / "s1"
    writer = DatasetWriter(final, SCHEMA)
    writer.write("email", 0, 1, rows("email", b"\x01aaa", b"\x02bbb"))
    writer.write("email", 1, 1, rows("email", b"\x81ccc"))
    writer.write("email", 1, 1, rows("email", b"\x82ddd"))  # a second part of bucket 1
    writer.write("phone", 0, 0, rows("phone", b"\x05eee"))
    writer.write("phone", 0, 0, rows("phone"))  # an empty table is no part
    assert not final.exists()
    with pytest.raises(DatasetError, match="no stored set"):
        open_dataset(final)
    assert writer.commit() == final
    assert not writer.tmp_path.exists()

    dataset = open_dataset(final)
    assert dataset.rows == 5 and dataset.bits == {"email": 1, "phone": 0}
    assert [(p.id_type, p.bucket, p.rows) for p in dataset.parts] == [
        ("email", 0, 2),
        ("email", 1, 1),
        ("email", 1, 1),
        ("phone", 0, 1),
    ]
    assert sorted(str(p.path.relative_to(final)) for p in dataset.parts) == [
        "id_type=email/bucket=0/part-0.parquet",
        "id_type=email/bucket=1/part-0.parquet",
        "id_type=email/bucket=1/part-1.parquet",
        "id_type=phone/bucket=0/part-0.parquet",
    ]
    assert dataset.read_all()["digest"].to_pylist() == [
        b"\x01aaa", b"\x02bbb", b"\x81ccc", b"\x82ddd", b"\x05eee",
    ]  # fmt: skip
    assert [p.rows for p in dataset.parts_of("phone")] == [1]
    batches = list(dataset.batches(["digest"], batch_rows=1))
    assert len(batches) == 5 and all(b.num_rows == 1 for b in batches)

    # The directory is a plain Hive-partitioned dataset too (the manifest is skipped).
    hive = pq.read_table(final).sort_by("digest")
    assert hive["digest"].to_pylist() == sorted(dataset.read_all()["digest"].to_pylist())
    assert (
        hive["id_type"].cast(pa.string()).to_pylist() == ["email", "email", "phone"] + ["email"] * 2
    )
    # A stray file in a bucket directory is never read: the manifest lists the parts.
    pq.write_table(rows("email", b"\x03zzz"), final / "id_type=email/bucket=0/part-9.parquet")
    assert open_dataset(final).rows == 5
    remove_stored(final)
    assert not final.exists()


def test_a_side_table_commits_with_the_set_and_stays_out_of_its_parts(tmp_path: Path) -> None:
    final = tmp_path / "sets" / "s1"
    events = pa.schema([("day", pa.int32())])
    writer = DatasetWriter(final, SCHEMA)
    writer.write("email", 0, 0, rows("email", b"aaaa"))
    writer.append_table("events", pa.table({"day": [1, 2]}, schema=events))
    writer.append_table("events", pa.table({"day": [3]}, schema=events))
    with pytest.raises(ValueError, match="not a side table name"):
        writer.append_table("../x", pa.table({"day": [1]}, schema=events))
    assert not final.exists()
    writer.commit()
    dataset = open_dataset(final)
    assert dataset.side_table("events")["day"].to_pylist() == [1, 2, 3]
    assert dataset.tables["events"].rows == 3
    assert dataset.read_all()["digest"].to_pylist() == [b"aaaa"] and dataset.rows == 1
    assert pq.read_table(final)["digest"].to_pylist() == [b"aaaa"]  # Hive readers skip it
    with pytest.raises(DatasetError, match="no 'spend' table"):
        dataset.side_table("spend")
    with DatasetWriter(tmp_path / "sets" / "s2", SCHEMA) as aborted:
        aborted.append_table("events", pa.table({"day": [1]}, schema=events))
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["s1"]


def test_a_failed_or_crashed_write_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "sets"
    with DatasetWriter(root / "s1", SCHEMA) as writer:
        writer.write("email", 0, 0, rows("email", b"aaaa"))
    assert not (root / "s1").exists() and list(root.iterdir()) == []  # never committed

    crashed = DatasetWriter(root / "s2", SCHEMA)
    crashed.write("email", 0, 0, rows("email", b"aaaa"))
    assert crashed.tmp_path.is_dir()
    assert remove_stale_temporaries(root) == 1  # what the node does at start-up
    assert list(root.iterdir()) == []

    with pytest.raises(ValueError, match="not one of 2"):
        DatasetWriter(root / "s3", SCHEMA).write("email", 2, 1, rows("email", b"aaaa"))
    writer = DatasetWriter(root / "s4", SCHEMA)
    writer.write("email", 0, 1, rows("email", b"aaaa"))
    with pytest.raises(ValueError, match="bucketed by 1 bits, not 2"):
        writer.write("email", 0, 2, rows("email", b"aaaa"))
    writer.abort()


def test_a_damaged_manifest_is_a_clear_error(tmp_path: Path) -> None:
    final = tmp_path / "s1"
    writer = DatasetWriter(final, SCHEMA)
    writer.write("email", 0, 0, rows("email", b"aaaa"))
    writer.commit()
    manifest = final / MANIFEST
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(DatasetError, match="version 99"):
        open_dataset(final)
    manifest.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot be read"):
        open_dataset(final)


def _upload(node: Node, data: Path, name: str) -> AudienceRecord:
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    asyncio.run(upload_audience(admin, name=name, path=data, id_columns=COLUMNS, options=OPTIONS))
    store = node.store()
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None
        record = store.get_audience(tenant.tenant_id, name)
        assert record is not None
        return record
    finally:
        store.close()


def test_an_upload_is_stored_by_type_and_digest_bucket(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread_pool: CryptoPool
) -> None:
    """With buckets small enough that a type needs more than the 256 staging buckets, the
    stored set is split into ``bits``-bit buckets whose rows all have those leading bits,
    and holds exactly what a one-bucket upload stores; an earlier release's single file
    with the same rows reads the same through every reader."""
    result = synthesize(
        tmp_path / "data", brand_rows=400, partner_rows=10, overlap=0.1, seed=8,
        default_region="US",
    )  # fmt: skip
    whole = open_dataset(node.data_dir / _upload(node, result.brand_path, "whole").path)
    monkeypatch.setattr(semijoin, "BUCKET_BYTES", 16)
    record = _upload(node, result.brand_path, "split")
    split = open_dataset(node.data_dir / record.path)

    assert set(whole.bits.values()) == {0} and len(whole.parts) == 3  # one part a type
    assert min(split.bits.values()) > 8 and len(split.parts) > 256
    for part in split.parts:
        assert part.id_type is not None
        table = split.read(part, ["id_type", "digest"])
        assert set(table["id_type"].to_pylist()) == {part.id_type}
        heads = np.frombuffer(b"".join(table["digest"].to_pylist()), np.uint8).reshape(-1, 32)
        assert set(bucket_of(heads, split.bits[part.id_type]).tolist()) == {part.bucket}
    assert split.read_all().equals(whole.read_all())
    assert record.elements == split.rows and record.elements_by_type == {
        t: sum(p.rows for p in split.parts_of(t)) for t in split.bits
    }
    assert not list((node.data_dir / WORK_DIR).glob(f"upload-{record.audience_id}-*"))

    legacy = tmp_path / "legacy" / "old.parquet"
    legacy.parent.mkdir()
    pq.write_table(split.read_all().cast(AUDIENCE_SCHEMA), legacy)
    old = dataclasses.replace(record, path="old.parquet")
    store = node.store()
    try:
        new = AudienceService(store, node.data_dir, thread_pool)
        before = AudienceService(store, legacy.parent, thread_pool)
        items, items_old = new.kkrt_items(record), before.kkrt_items(old)
        assert items.count == items_old.count
        assert np.array_equal(
            np.concatenate(list(items.batches())), np.concatenate(list(items_old.batches()))
        )
        labelled, labelled_old = new.labelled_points(record), before.labelled_points(old)
        assert (labelled.seeds, labelled.others) == (labelled_old.seeds, labelled_old.others)
        batches, batches_old = list(labelled.batches()), list(labelled_old.batches())
        assert b"".join(p for p, _ in batches) == b"".join(p for p, _ in batches_old)
        labels = np.concatenate([la for _, la in batches])
        assert np.array_equal(labels, np.concatenate([la for _, la in batches_old]))
        assert (labelled.seeds, labelled.others) == (int(labels.sum()), int((labels == 0).sum()))
        stream, stream_old = new.stored_points(record), before.stored_points(old)
    finally:
        store.close()
    assert stream.count == stream_old.count == split.rows
    assert b"".join(stream.batches()) == b"".join(stream_old.batches())
