"""The partner's exposure log a part and a bucket at a time (``exposure_log``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cleanroom.federated.attribution.exposure_log import (
    BlindedCells,
    BucketTokens,
    ExposureLog,
)
from cleanroom.federated.attribution.inputs import PartnerExposures, user_keys
from cleanroom.federated.attribution.messages import Cell
from cleanroom.matching.bulk import ColumnAppender


def random_log(rng: np.random.Generator, rows: int) -> PartnerExposures:
    users = rng.integers(0, rows // 3, rows)
    id_row = np.concatenate([np.arange(rows), rng.choice(rows, rows // 2, replace=False)])
    id_type = np.array(["email"] * rows + ["maid"] * (rows // 2), dtype=object)
    # A user's identifiers are functions of the user, as in a real log.
    digest_of = rng.integers(0, 256, (rows // 3 + 1, 2, 32), dtype=np.uint8)
    kind = (id_type == "maid").astype(int)
    return PartnerExposures(
        row_user=user_keys(users.astype(str)),
        row_campaign=np.array([f"c{c}" for c in rng.integers(0, 5, rows)], dtype=object),
        row_day=rng.integers(20_000, 20_010, rows),
        row_touch=np.array(rng.choice(["click", "view"], rows), dtype=object),
        row_group=np.array(rng.choice(["exposed", "holdout"], rows), dtype=object),
        id_row=id_row,
        id_type=id_type,
        id_digest=digest_of[users[id_row], kind],
    )


def parts_of(log: PartnerExposures, parts: int) -> list[PartnerExposures]:
    out = []
    for k in range(parts):
        rows = np.arange(k, len(log.row_day), parts)
        renumber = np.full(len(log.row_day), -1)
        renumber[rows] = np.arange(len(rows))
        ids = np.flatnonzero(renumber[log.id_row] >= 0)
        out.append(
            PartnerExposures(
                log.row_user[rows],
                log.row_campaign[rows],
                log.row_day[rows],
                log.row_touch[rows],
                log.row_group[rows],
                renumber[log.id_row[ids]],
                log.id_type[ids],
                log.id_digest[ids],
            )
        )
    return out


def test_a_log_read_in_parts_into_files_counts_as_the_whole_log(tmp_path: Path) -> None:
    """Cells, tokens per cell, users and points: the same from 7 parts in bucket files as
    from the log whole in memory, and equal to a plaintext count; ``close`` removes the
    files."""
    log = random_log(np.random.default_rng(5), 3000)
    whole = ExposureLog(("email", "phone"), expected_tokens=4500, expected_rows=3000)
    whole.add(log)
    want = whole.finish()
    spilled = ExposureLog(
        ("email", "phone"),
        expected_tokens=4_000_000,  # several buckets
        expected_rows=4_000_000,
        spill_dir=tmp_path,
        memory_bytes=0,
    )
    for part in parts_of(log, 7):
        spilled.add(part)
    assert spilled.on_disk and spilled.tokens.buckets > 1
    assert spilled.finish() == want

    emails = log.id_row[log.id_type == "email"]  # phones: none; maids: not in common
    cells = sorted({(log.row_campaign[r], log.row_group[r], log.row_touch[r]) for r in emails})
    assert [(c.campaign_id, c.group, c.touch) for c in want.cells] == cells
    tokens = {
        (log.row_campaign[r], log.row_group[r], log.row_touch[r], d.tobytes(), log.row_day[r])
        for r, d in zip(emails, log.id_digest[log.id_type == "email"], strict=True)
    }
    assert sum(want.cell_tokens) == len(tokens)
    assert want.point_count == len({t[3:] for t in tokens})
    users: dict[tuple[str, str], set[bytes]] = {}
    for r in range(len(log.row_day)):
        users.setdefault((log.row_campaign[r], log.row_group[r]), set()).add(
            log.row_user[r].tobytes()
        )
    assert want.users == {k: len(v) for k, v in sorted(users.items())}
    spilled.close()
    assert not list(tmp_path.iterdir())


def test_a_log_without_a_type_in_common_is_refused() -> None:
    log = random_log(np.random.default_rng(1), 30)
    only_maids = ExposureLog(("phone",), expected_tokens=45, expected_rows=30)
    only_maids.add(log)
    with pytest.raises(ValueError, match="no identifier of the types both sides hold"):
        only_maids.finish()


@pytest.mark.parametrize("chunk", [2, 6], ids=["two-chunks-a-cell", "one-chunk"])
def test_a_cell_goes_out_in_a_uniformly_random_order_not_bucket_by_bucket(chunk: int) -> None:
    """A cell of 6 tokens from 3 digest buckets (1, 2 and 3 of them): over many seeded
    runs every token is at every position about equally often. Sent bucket by bucket,
    the first bucket's token would always lead."""
    cells = (Cell("c", "exposed", "click"), Cell("c", "exposed", "view"))
    sizes = (1, 2, 3)
    trials = 3000
    position = np.zeros((6, 6), dtype=np.int64)  # token x position
    rng = np.random.default_rng(11)
    for _ in range(trials):
        blinded = BlindedCells(cells, (6, 1), ColumnAppender())
        token = 0
        for b, n in enumerate(sizes):
            # The bucket's tokens for cell 0, and (bucket 1) one token for cell 1.
            cell = np.array([0] * n + ([1] if b == 1 else []))
            points = np.zeros((len(cell), 32), dtype=np.uint8)
            points[:n, 0] = np.arange(token, token + n)
            points[n:, 0] = 99
            token += n
            tokens = BucketTokens(
                cell=cell,
                point=np.arange(len(cell)),
                point_type=np.zeros(len(cell), np.uint8),
                point_digest=np.zeros((len(cell), 32), np.uint8),
                point_day=np.zeros(len(cell), np.int64),
            )
            blinded.add_bucket(tokens, [points.tobytes()], rng)
        blinded.finish()
        sent = list(blinded.chunks(chunk, rng))
        assert [c for c, _ in sent] == [0] * -(-6 // chunk) + [1]
        assert all(len(p) <= chunk * 32 for _, p in sent)
        order = np.frombuffer(b"".join(p for c, p in sent if c == 0), np.uint8)[::32]
        assert sorted(order.tolist()) == list(range(6))
        position[order, np.arange(6)] += 1
    expected = trials / 6
    # Binomial(3000, 1/6): standard deviation ~20; 5 of them is far off for any cell.
    assert np.abs(position - expected).max() < 5 * np.sqrt(trials * (1 / 6) * (5 / 6))
