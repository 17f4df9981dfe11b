"""The partner's exposure log as cells and blinded cell tokens, without holding the log.

Pass one (``ExposureLog.add``, one part of the file at a time): every identifier of a
type both sides hold becomes a token row (digest | type | day | cell), appended to
buckets of the digest's leading bits; every exposure row's (user key, campaign, group)
goes to buckets of the user key, to count distinct users per group. Campaigns are
numbered as they come; cells are put in (campaign, group, touch) order at the end.

Pass two, one digest bucket at a time (``finish`` to count, ``blind`` to blind): the
bucket's tokens are deduplicated per (cell, point), where a point is a distinct
(type, digest, day). A point's bucket is a function of its digest, so each point lives
in one bucket and is hashed and blinded once, however many cells it serves. Each
bucket's blinded tokens are appended to one column, grouped by cell and shuffled within
each group; what is kept per bucket is where each cell's tokens are.

Sending (``BlindedCells.chunks``): a cell's tokens go out in a uniformly random order
over the whole cell, never bucket by bucket. Each chunk takes its number of tokens from
each bucket as a multivariate hypergeometric draw over what each bucket still holds of
the cell (the bucket counts of a uniformly random chunk), the next ones of each
bucket's shuffled run, and is shuffled itself; every order of the cell is equally
likely. Bucket order would tell the brand which of a cell's tokens share a digest
prefix, a few bits about each person's identifier.

What is held: the labels, one bucket's tokens, the blinding jobs in flight, and per
(cell, bucket) where its run is. Rows, tokens and the blinded column are in memory for
a small log and in files (a private temporary directory, removed by ``close``) past
``memory_bytes``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.audiences.upload import DIGEST_LEN
from cleanroom.federated.attribution.inputs import USER_KEY_LEN, PartnerExposures
from cleanroom.federated.attribution.messages import GROUPS, TOUCHES, Cell
from cleanroom.federated.attribution.tokens import (
    POINT_CHUNK,
    TOKEN_MSG_LEN,
    day_dst,
    distinct_keys,
    token_messages,
)
from cleanroom.matching.bulk import ByteColumn, ColumnAppender, FileBytes
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import MEMORY_BYTES, Buckets, bucket_bits, spill_directory
from cleanroom.matching.workers import hash_and_blind_mixed

# digest (32) | type code (1) | day (<i4) | provisional cell (<u4); the digest leads, so a
# row's bucket is its digest's leading bits.
TOKEN_ROW_LEN = DIGEST_LEN + 1 + 4 + 4
_TYPE, _DAY, _CELL = DIGEST_LEN, DIGEST_LEN + 1, DIGEST_LEN + 5
# user key (16) | (campaign, group) code (<u4); the key (a hash) leads.
USER_ROW_LEN = USER_KEY_LEN + 4
_SUBCELLS = len(GROUPS) * len(TOUCHES)

Run = Callable[..., Awaitable[bytes]]


def _field4(rows: np.ndarray, start: int, dtype: str) -> np.ndarray:
    """The 4-byte field at ``start`` of every row, as ``dtype`` ("<u4" or "<i4")."""
    return np.ascontiguousarray(rows[:, start : start + 4]).view(dtype).ravel()


def _packed(*columns: np.ndarray) -> bytes:
    """Rows of the columns side by side (each uint8 (n, k)), as bytes."""
    return np.hstack(columns).tobytes() if len(columns[0]) else b""


def _as_bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    return np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(len(values), width)


@dataclass(frozen=True)
class BucketTokens:
    """One digest bucket's tokens, deduplicated per (cell, point)."""

    cell: np.ndarray  # int64 per token: the cell's final number
    point: np.ndarray  # int64 per token: which of the bucket's points
    point_type: np.ndarray  # uint8 per point: index into the log's sorted type names
    point_digest: np.ndarray  # uint8 (p, 32)
    point_day: np.ndarray  # int64 per point

    def job(self, index: int, secret: Any, dsts: list[bytes]) -> tuple[Any, ...]:
        """``hash_and_blind_mixed`` arguments for points ``POINT_CHUNK * index`` onwards."""
        part = slice(index * POINT_CHUNK, (index + 1) * POINT_CHUNK)
        msgs = token_messages(self.point_digest[part], self.point_day[part])
        return (secret, msgs, self.point_type[part].tobytes(), dsts, TOKEN_MSG_LEN)

    @property
    def jobs(self) -> int:
        return -(-len(self.point_day) // POINT_CHUNK)


@dataclass(frozen=True)
class LogCells:
    """What the log says before any blinding: the cells (sorted), the deduplicated
    tokens per cell, the distinct users per (campaign, group), the distinct points."""

    cells: tuple[Cell, ...]
    cell_tokens: tuple[int, ...]
    users: dict[tuple[str, str], int]
    point_count: int


class ExposureLog:
    """The log of one run, added a part at a time; see the module docstring.

    ``type_names``: the identifier types both sides hold (the others are dropped);
    ``expected_tokens``/``expected_rows``: upper estimates, which size the buckets.
    """

    def __init__(
        self,
        type_names: tuple[str, ...],
        *,
        expected_tokens: int,
        expected_rows: int,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        self.type_names = tuple(sorted(type_names))
        limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._dir: Path | None = None
        if max(expected_tokens * TOKEN_ROW_LEN, expected_rows * USER_ROW_LEN) < limit:
            self.tokens = Buckets.in_memory(TOKEN_ROW_LEN, positioned=False)
            self.user_rows = Buckets.in_memory(USER_ROW_LEN, positioned=False)
        else:
            self._dir = spill_directory(spill_dir, "exposures-")
            bits = max(1, bucket_bits(expected_tokens, TOKEN_ROW_LEN))
            self.tokens = Buckets(TOKEN_ROW_LEN, bits, self._dir, positioned=False, name="t")
            bits = max(1, bucket_bits(expected_rows, USER_ROW_LEN))
            self.user_rows = Buckets(USER_ROW_LEN, bits, self._dir, positioned=False, name="u")
        self._campaigns: dict[str, int] = {}
        self._raw_cell_tokens: dict[int, int] = {}  # provisional cell -> tokens before dedupe
        self._cells: LogCells | None = None
        self._provisional = np.empty(0, np.int64)  # sorted provisional cell numbers
        self._final = np.empty(0, np.int64)  # their numbers in the sorted cells

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # ------------------------------------------------------------------ pass one

    def add(self, part: PartnerExposures) -> None:
        """One part of the log (its rows and their hashed identifiers)."""
        if self._cells is not None:
            raise RuntimeError("the log is finished")
        codes, uniques = pd.factorize(np.asarray(part.row_campaign, dtype=object))
        campaign = np.array(
            [self._campaigns.setdefault(str(c), len(self._campaigns)) for c in uniques],
            dtype=np.int64,
        )[codes]
        group = _choice_codes(part.row_group, GROUPS, "group")
        touch = _choice_codes(part.row_touch, TOUCHES, "touch")
        campaign_group = campaign * len(GROUPS) + group
        row_cell = campaign_group * len(TOUCHES) + touch
        users = np.unique(
            np.hstack([part.row_user, _as_bytes(campaign_group, "<u4")]).view(
                np.dtype((np.void, USER_ROW_LEN))
            )
        )
        self.user_rows.add(users.tobytes())

        type_code = pd.Index(self.type_names).get_indexer(np.asarray(part.id_type, dtype=object))
        kept = type_code >= 0
        id_row = part.id_row[kept]
        cell = row_cell[id_row]
        for c, n in zip(*np.unique(cell, return_counts=True), strict=True):
            self._raw_cell_tokens[int(c)] = self._raw_cell_tokens.get(int(c), 0) + int(n)
        rows = _packed(
            np.ascontiguousarray(part.id_digest[kept], dtype=np.uint8),
            type_code[kept].astype(np.uint8).reshape(-1, 1),
            _as_bytes(part.row_day[id_row], "<i4"),
            _as_bytes(cell, "<u4"),
        )
        if rows:
            self.tokens.add(rows)

    def finish(self) -> LogCells:
        """Cells, token counts and users: one pass over the buckets (nothing blinded)."""
        if self._cells is not None:
            return self._cells
        if not self._raw_cell_tokens:
            raise ValueError(
                "the exposure log has no identifier of the types both sides hold "
                f"({', '.join(self.type_names)})"
            )
        names = list(self._campaigns)

        def labels(provisional: int) -> tuple[str, str, str]:
            campaign, rest = divmod(provisional, _SUBCELLS)
            group, touch = divmod(rest, len(TOUCHES))
            return names[campaign], GROUPS[group], TOUCHES[touch]

        with_tokens = sorted(self._raw_cell_tokens, key=labels)
        cells = tuple(Cell(*labels(p)) for p in with_tokens)
        self._provisional = np.array(sorted(with_tokens), dtype=np.int64)
        final = {p: i for i, p in enumerate(with_tokens)}
        self._final = np.array([final[p] for p in self._provisional.tolist()], dtype=np.int64)
        tokens = np.zeros(len(cells), dtype=np.int64)
        points = 0
        for b in range(self.tokens.buckets):
            bucket = self.bucket_tokens(b)
            tokens += np.bincount(bucket.cell, minlength=len(cells))
            points += len(bucket.point_day)
        users: dict[tuple[str, str], int] = {}
        self.user_rows.close()
        for b in range(self.user_rows.buckets):
            rows = np.frombuffer(self.user_rows.bucket(b)[0], dtype=np.uint8)
            rows = rows.reshape(-1, USER_ROW_LEN)
            distinct = np.unique(rows.view(np.dtype((np.void, USER_ROW_LEN))).ravel())
            keys = distinct.view(np.uint8).reshape(-1, USER_ROW_LEN)
            groups, counts = np.unique(_field4(keys, USER_KEY_LEN, "<u4"), return_counts=True)
            for cg, n in zip(groups, counts, strict=True):
                campaign, group = divmod(int(cg), len(GROUPS))
                label = (names[campaign], GROUPS[group])
                users[label] = users.get(label, 0) + int(n)
        self._cells = LogCells(
            cells=cells,
            cell_tokens=tuple(int(n) for n in tokens),
            users=dict(sorted(users.items())),
            point_count=points,
        )
        return self._cells

    # ------------------------------------------------------------------ pass two

    def bucket_tokens(self, b: int) -> BucketTokens:
        """Bucket ``b``'s tokens, one per (cell, point)."""
        self.tokens.close()
        rows = np.frombuffer(self.tokens.bucket(b)[0], dtype=np.uint8)
        rows = rows.reshape(-1, TOKEN_ROW_LEN)
        provisional = _field4(rows, _CELL, "<u4").astype(np.int64)
        cell = self._final[np.searchsorted(self._provisional, provisional)]
        types = rows[:, _TYPE].copy()
        days = _field4(rows, _DAY, "<i4").astype(np.int64)
        digests = np.ascontiguousarray(rows[:, :DIGEST_LEN])
        point, first = distinct_keys(types, digests, days)
        keep = ~pd.DataFrame({"cell": cell, "point": point}).duplicated().to_numpy()
        return BucketTokens(
            cell=cell[keep],
            point=point[keep],
            point_type=types[first],
            point_digest=digests[first],
            point_day=days[first],
        )

    async def blind(
        self,
        run: Run,
        secret: Any,
        rng: np.random.Generator,
        *,
        ahead: int = 8,
        memory_bytes: int | None = None,
        spill_dir: Path | None = None,
    ) -> BlindedCells:
        """Every cell's tokens blinded, bucket by bucket, ``ahead`` point jobs in flight."""
        log = self.finish()
        dsts = [day_dst(t) for t in self.type_names]
        out = BlindedCells(
            log.cells,
            log.cell_tokens,
            ColumnAppender(spill_dir=spill_dir, memory_bytes=memory_bytes),
        )
        running: deque[tuple[_Landing, asyncio.Future[bytes]]] = deque()

        async def land() -> None:
            landing, job = running.popleft()
            landing.parts.append(await job)
            if len(landing.parts) == landing.tokens.jobs:
                await asyncio.to_thread(out.add_bucket, landing.tokens, landing.parts, rng)

        for b in range(self.tokens.buckets):
            tokens = await asyncio.to_thread(self.bucket_tokens, b)
            landing = _Landing(tokens)
            for index in range(tokens.jobs):
                if len(running) >= ahead:
                    await land()
                job = run(hash_and_blind_mixed, *tokens.job(index, secret, dsts))
                running.append((landing, asyncio.ensure_future(job)))
        while running:
            await land()
        self.close()
        out.finish()
        return out


@dataclass
class _Landing:
    tokens: BucketTokens
    parts: list[bytes] = field(default_factory=list)


def _choice_codes(values: np.ndarray, choices: tuple[str, ...], what: str) -> np.ndarray:
    codes = pd.Index(choices).get_indexer(np.asarray(values, dtype=object))
    if (codes < 0).any():
        raise ValueError(f"unknown {what} in the exposure log (expected one of {choices})")
    return codes.astype(np.int64)


class BlindedCells:
    """Every cell's blinded tokens: one column of runs, one run per (bucket, cell),
    shuffled within; ``chunks`` sends each cell in a uniformly random order."""

    def __init__(
        self, cells: tuple[Cell, ...], cell_tokens: tuple[int, ...], column: ColumnAppender
    ) -> None:
        self.cells = cells
        self.cell_tokens = cell_tokens
        self._appender: ColumnAppender | None = column
        self._column: ByteColumn = b""
        self._written = 0  # tokens
        self._runs: list[np.ndarray] = []  # per bucket: (cell, start, count) rows
        self._run_cell = np.empty(0, np.int64)
        self._run_start = np.empty(0, np.int64)
        self._run_count = np.empty(0, np.int64)

    def add_bucket(
        self, tokens: BucketTokens, blinded: list[bytes], rng: np.random.Generator
    ) -> None:
        """A bucket's tokens, its points blinded (``blinded``: the jobs' results, in order)."""
        assert self._appender is not None
        points = np.frombuffer(b"".join(blinded), dtype=np.uint8).reshape(-1, POINT_LEN)
        shuffled = rng.permutation(len(tokens.cell))
        order = shuffled[np.argsort(tokens.cell[shuffled], kind="stable")]
        self._appender.append(points[tokens.point[order]].tobytes())
        cells, counts = np.unique(tokens.cell, return_counts=True)
        starts = self._written + np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._runs.append(np.stack([cells, starts, counts], axis=1))
        self._written += len(tokens.cell)

    def finish(self) -> None:
        assert self._appender is not None
        self._column = self._appender.finish()
        self._appender = None
        runs = np.concatenate(self._runs) if self._runs else np.empty((0, 3), np.int64)
        self._runs = []
        by_cell = np.argsort(runs[:, 0], kind="stable")
        self._run_cell, self._run_start, self._run_count = runs[by_cell].T.astype(np.int64)
        if self._written != sum(self.cell_tokens):
            raise RuntimeError("the blinded tokens do not add up to the cells' counts")

    def chunks(self, size: int, rng: np.random.Generator) -> Iterator[tuple[int, bytes]]:
        """Per message: its cell and at most ``size`` blinded tokens; cells in order."""
        bounds = np.searchsorted(self._run_cell, np.arange(len(self.cells) + 1))
        for cell in range(len(self.cells)):
            runs = slice(int(bounds[cell]), int(bounds[cell + 1]))
            left = self._run_count[runs].copy()
            cursor = self._run_start[runs].copy()
            while (remaining := int(left.sum())) > 0:
                take = rng.multivariate_hypergeometric(left, min(size, remaining))
                parts = [
                    self._column[int(c) * POINT_LEN : int(c + t) * POINT_LEN]
                    for c, t in zip(cursor, take, strict=True)
                    if t
                ]
                cursor += take
                left -= take
                rows = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(-1, POINT_LEN)
                yield cell, rows[rng.permutation(len(rows))].tobytes()

    @property
    def on_disk(self) -> bool:
        return isinstance(self._column, FileBytes)

    def close(self) -> None:
        if isinstance(self._column, FileBytes):
            self._column.close()
        self._column = b""
