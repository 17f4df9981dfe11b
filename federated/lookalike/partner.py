"""The partner's side of a lookalike job as a transport-free state machine.

Rounds (``LookalikeRound``; the package docstring has the protocol):

``HELLO``     ``hello()`` offers the rows (users with an identifier), their
              identifier slots and the feature count; ``LookalikeAccepted``
              brings the run's Paillier key (or the package that already
              exists for this submission: ``LookalikeDone`` follows).
``EXCHANGE``  streams every offered row as ``slots`` points H(x)^p (rows and
              slots shuffled, dummies for missing identifiers) while it
              re-blinds both of the brand's lists and returns each shuffled.
``LABELS``    collects ``Enc(y)`` per position (``matched``: the matched
              flags first, then ``Enc(y)`` for the matched positions).
``SUMS``      sums ``Enc(T) = Enc(Xᵀy)`` and ``Enc(Σy)`` over the training rows,
              masks each and sends them; unmasks the brand's decryptions and
              fits the model on the exact loss.
``METRICS``   scores the holdout and sends its encrypted sums (seeds, twice
              their rank sum, seeds per tier); receives the brand's metrics.
``PACKAGE``   scores the whole base, writes the tiers (``write_package``),
              sends their sizes and waits for ``LookalikeDone``.

A message outside its round, or inconsistent with what the brand announced,
raises ``ProtocolError`` and fails the job. The partner never holds a label,
a seed flag (``hidden-seed``) or a brand identifier it could compare.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cleanroom.federated.jobs import check_packed
from cleanroom.federated.lookalike.aggregates import (
    holdout_sums,
    label_sums,
    multiply,
    tier_sizes,
)
from cleanroom.federated.lookalike.features import IntFeatures
from cleanroom.federated.lookalike.messages import (
    DEFAULT_TIERS,
    MASK_SLACK_BITS,
    BrandList,
    BrandPoints,
    BrandValues,
    DecryptedSums,
    EncryptedLabels,
    ExchangedRows,
    HoldoutAggregates,
    LookalikeAccepted,
    LookalikeBrandMessage,
    LookalikeDone,
    LookalikeHello,
    LookalikeMetrics,
    LookalikeMode,
    LookalikePartnerMessage,
    LookalikeRound,
    MaskedSums,
    MatchedRows,
    PackageSummary,
    SlotPoints,
)
from cleanroom.federated.lookalike.model import LogisticModel, fit_logistic
from cleanroom.federated.paillier import MIN_KEY_BITS, PaillierPublicKey
from cleanroom.matching.bulk import ByteColumn, ColumnAppender, FileBytes, fixed_rows
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.partner import PaddedSlots, PartnerSet
from cleanroom.matching.session import (
    OrderedResults,
    Progress,
    RoundMachine,
    comparison_length,
    in_order,
)
from cleanroom.matching.workers import (
    DUMMY_DST,
    RunJobs,
    blind_and_truncate,
    dst_for,
    hash_and_blind_mixed,
)
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import InvalidInput, ProtocolError

_log = logging.getLogger(__name__)

SUM_SLICE = 1 << 16  # training rows per encrypted-sum job
MAX_LABEL_CHUNK = 1 << 16  # ciphertexts per EncryptedLabels message


class Phase:
    """What the partner is doing, as ``LookalikeProgress.phase`` says it."""

    WAITING = "waiting for the brand node"
    PREMATCH = "matching users with the OT-extension PSI"
    MATCHING = "blinding rows and the brand's lists"
    LABELS = "receiving encrypted labels"
    SUMS = "summing encrypted labels"
    FITTING = "fitting the model"
    METRICS = "scoring the holdout"
    PACKAGE = "scoring the base and writing the package"
    DONE = "done"


@dataclass
class LookalikeProgress(Progress):
    phase: str = Phase.WAITING
    points_total: int = 0  # the partner's slot points
    points_sent: int = 0
    brand_total: int = 0  # the brand's two lists, re-blinded here
    brand_received: int = 0
    labels_total: int = 0
    labels_received: int = 0


@dataclass(frozen=True)
class LookalikePackage:
    """The model and the ranked base, for the partner's package writer."""

    model: LogisticModel
    scores: np.ndarray  # float64 per user row (the log-odds)
    ranked: np.ndarray  # user rows of the scored base, best first
    tiers: tuple[float, ...]
    tier_sizes: tuple[int, ...]
    excluded: np.ndarray  # user rows left out of the package (``matched``: brand customers)
    metrics: LookalikeMetrics | None
    train_rows: int
    holdout_rows: int


def score_rows(model: LogisticModel, features: IntFeatures, chunk: int = 1 << 17) -> np.ndarray:
    """``x·w + b`` for every row, from the integer features in chunks (no float copy of X)."""
    weights = model.weights / features.scale
    intercept = float(features.offset @ model.weights) + model.intercept
    out = np.empty(len(features.values), dtype=np.float64)
    for start in range(0, len(out), chunk):
        part = features.values[start : start + chunk].astype(np.float64)
        out[start : start + chunk] = part @ weights + intercept
    return out


def max_row_norm(features: IntFeatures, chunk: int = 1 << 17) -> float:
    """The largest Euclidean norm of a row of ``features`` as floats."""
    best = 0.0
    for start in range(0, len(features.values), chunk):
        part = features.offset + features.values[start : start + chunk] / features.scale
        best = max(best, float(np.sqrt((part * part).sum(axis=1)).max(initial=0.0)))
    return best


def rank_tiers(
    scores: np.ndarray, excluded: np.ndarray, tiers: Sequence[float]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The scored rows best first (ties by row), and each nested tier's size."""
    eligible = np.flatnonzero(~excluded)
    order = np.lexsort((eligible, -scores[eligible]))
    ranked = eligible[order]
    return ranked, tuple(tier_sizes(len(ranked), tiers))


class PartnerLookalike(RoundMachine[LookalikeRound]):
    """P's state machine for one lookalike job. Crypto runs in ``jobs``.

    ``data``: the users' identifiers (rows = users); ``features``: every
    user's integer features, same rows. ``write_package`` is called (on a
    thread) with the ranked base once the brand sent its metrics; what it
    returns is kept as ``files``.

    ``matched`` mode may match first: ``find_matches()`` (awaited once the brand
    accepted, so a refused or repeated job matches nothing) returns a flag per user row,
    the users the partner's own match with the audience found (``partner match``, the
    OT-extension PSI), or None when that match was refused; ``matched_users`` gives
    those flags directly. Only their slots go through the exchange, where the brand
    compares them itself; every other offered row is a known negative, as an unmatched
    row is. The model, the holdout and the package are the same as without it.
    """

    def __init__(
        self,
        *,
        audience: str,
        data: PartnerSet,
        features: IntFeatures,
        mode: LookalikeMode = LookalikeMode.HIDDEN_SEED,
        tiers: Sequence[float] = DEFAULT_TIERS,
        holdout: float = 0.2,
        l2: float = 1.0,
        epsilon: float = 0.0,
        submission_key: str = "",
        write_package: Callable[[LookalikePackage], Any] | None = None,
        jobs: RunJobs | None = None,
        rng: np.random.Generator | None = None,
        key: BlindingKey | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        min_key_bits: int = MIN_KEY_BITS,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
        matched_users: np.ndarray | None = None,
        find_matches: Callable[[], Awaitable[np.ndarray | None]] | None = None,
    ) -> None:
        if not data.columns:
            raise InvalidInput("a lookalike needs at least one identifier column")
        if len(features.values) != data.row_count:
            raise InvalidInput(
                f"{len(features.values)} feature rows for {data.row_count} users;"
                " every user needs one row of features"
            )
        if not l2 > 0:
            raise InvalidInput(f"the L2 penalty must be positive, not {l2}")
        super().__init__(LookalikeRound.HELLO, jobs)
        self.audience = audience
        self.data = data
        self.features = features
        self.mode = mode
        self.tiers = tuple(float(t) for t in tiers)
        self.holdout = holdout
        self.l2 = l2
        self.epsilon = epsilon
        self.submission_key = submission_key
        self._write_package = write_package
        self.rng = rng or np.random.default_rng()
        self._random_bytes = random_bytes
        # The padded slots' batches go to files there past ``memory_bytes`` (256 MB).
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        self._secret = self._jobs.key((key or BlindingKey.generate(random_bytes)).secret_bytes())
        self.min_key_bits = min_key_bits
        self.progress = LookalikeProgress()
        self.records = data.records()  # user row per offered row
        self.slots = len(data.columns)
        # Offered rows whose slots are exchanged (None: all of them), and their number.
        self._exchanged: np.ndarray | None = None
        self.exchanged_rows = len(self.records)
        self._find_matches = find_matches
        self.match_first = matched_users is not None or find_matches is not None
        if self.match_first and mode is not LookalikeMode.MATCHED:
            raise ValueError("only a matched job matches first")
        if matched_users is not None:
            self._exchange_only(matched_users)
        self.accepted: LookalikeAccepted | None = None
        self.public_key: PaillierPublicKey | None = None
        self.package_id = ""
        self.intersection = 0  # matched: rows the brand flagged
        self.model: LogisticModel | None = None
        self.metrics: LookalikeMetrics | None = None
        self.package: LookalikePackage | None = None
        self.files: Any = None
        self._order = np.empty(0, dtype=np.int64)  # position -> offered row
        # Per offered row, the index of its Enc(y) among the labels received, or -1 for a
        # known negative (matched: no match); set once the labels are due.
        self._label_index = np.empty(0, dtype=np.int64)
        self._brand_results = OrderedResults[tuple[BrandList, bytes]](limit=8)
        self._brand_seq = dict.fromkeys(BrandList, 0)
        self._brand_count = dict.fromkeys(BrandList, 0)
        self._slots_sent = False
        self._lists_sent = False
        self._matched: np.ndarray | None = None  # matched: flag per position
        self._flags_received = 0
        # Enc(y) as they arrive, then as one column (a file past ``memory_bytes``).
        self._label_chunks = 0
        self._label_appender: ColumnAppender | None = None
        self._label_column: ByteColumn | None = None
        self._labels_expected = -1
        self._label_checks = OrderedResults[int](limit=8)
        self._labels_checked = asyncio.Event()
        self._masks: list[int] = []
        self._holdout_rows = np.empty(0, dtype=np.int64)  # offered rows
        self._train_rows = np.empty(0, dtype=np.int64)
        self._row_norm_cache: float | None = None
        self.label_sums: tuple[int, ...] = ()  # T_int and Σy as decrypted (noisy with DP)
        # What the job cost here: for benchmarks' floors and the log.
        self.he_multiplications = 0
        self.paillier_encryptions = 0
        self.fit_seconds = 0.0

    # ------------------------------------------------------------ lifecycle

    def hello(self) -> LookalikeHello:
        dp = self.epsilon > 0
        return LookalikeHello(
            audience=self.audience,
            mode=self.mode,
            rows=len(self.records),
            match_first=self.match_first,
            slots=self.slots,
            features=self.features.values.shape[1],
            tiers=self.tiers,
            holdout=self.holdout,
            epsilon=self.epsilon,
            submission_key=self.submission_key,
            scales=tuple(int(v) for v in self.features.scale) if dp else (),
            row_norm=self._row_norm() if dp else 0.0,
        )

    def _row_norm(self) -> float:
        """The largest ``‖x_i‖₂`` over the offered rows (label-DP's sensitivity bound)."""
        if self._row_norm_cache is None:
            self._row_norm_cache = max_row_norm(self.features.rows(self.records))
        return self._row_norm_cache

    def outgoing(self) -> AsyncIterator[LookalikePartnerMessage]:
        """Everything after ``hello()``, ending with the package summary (or at once when
        the brand answered with a package it already has)."""
        return self.drain(PackageSummary)

    def close(self) -> None:
        super().close()
        self._brand_results.cancel()
        self._label_checks.cancel()
        self._label_appender = None
        if isinstance(self._label_column, FileBytes):
            self._label_column.close()

    def end_of_input(self) -> None:
        if not self.finished:
            self.fail(ProtocolError("the brand node closed the stream before the job was done"))

    def _paillier(self) -> PaillierPublicKey:
        if self.public_key is None:
            raise ProtocolError(f"no Paillier key yet in round {self.round}")
        return self.public_key

    # ------------------------------------------------------------- incoming

    async def receive(self, msg: LookalikeBrandMessage) -> None:
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: LookalikeBrandMessage) -> None:
        if isinstance(msg, LookalikeAccepted):
            self._on_accepted(msg)
        elif isinstance(msg, BrandPoints):
            await self._on_brand_points(msg)
        elif isinstance(msg, MatchedRows):
            self._on_matched(msg)
        elif isinstance(msg, EncryptedLabels):
            await self._on_labels(msg)
        elif isinstance(msg, DecryptedSums):
            self._on_decrypted(msg)
        elif isinstance(msg, LookalikeMetrics):
            self._on_metrics(msg)
        elif isinstance(msg, LookalikeDone):
            self._on_done(msg)
        else:
            raise TypeError(f"not a lookalike brand message: {type(msg).__name__}")

    def _on_accepted(self, msg: LookalikeAccepted) -> None:
        self.expect(LookalikeRound.HELLO, "LookalikeAccepted")
        if msg.package_id:  # this submission already has a package: nothing runs
            self.package_id = msg.package_id
            self.round = LookalikeRound.PACKAGE
            self._signal.notify()
            return
        rows = len(self.records)  # the brand sizes its values for every row's slots
        least = comparison_length(rows * self.slots, 2 * msg.brand_points)
        if not least <= msg.value_len <= POINT_LEN:
            raise ProtocolError(f"comparison values of {msg.value_len} bytes; need {least}..32")
        if msg.brand_points < 1 or msg.chunk_size < 1:
            raise ProtocolError("the brand announced no points or no chunk size")
        want = self.features.values.shape[1] + 1 + (2 + len(self.tiers) if self._holdout() else 0)
        if msg.max_decryptions < want:
            raise ProtocolError(
                f"the brand decrypts at most {msg.max_decryptions} sums; the job needs {want}"
            )
        self.public_key = PaillierPublicKey(msg.public_key_n, min_bits=self.min_key_bits)
        self.accepted = msg
        self.round = LookalikeRound.EXCHANGE
        self.progress.update(
            phase=Phase.MATCHING, points_total=rows * self.slots, brand_total=2 * msg.brand_points
        )
        self.spawn(self._send_slots)
        self.spawn(self._return_lists)
        self.spawn(self._check_labels)

    async def _on_brand_points(self, chunk: BrandPoints) -> None:
        which = chunk.list
        self.expect(LookalikeRound.EXCHANGE, f"list {which.name} points")
        assert self.accepted is not None
        if chunk.seq != self._brand_seq[which]:
            raise ProtocolError(
                f"list {which.name} points chunk {chunk.seq} out of order;"
                f" expected {self._brand_seq[which]}"
            )
        count, rest = divmod(len(chunk.points), POINT_LEN)
        if not count or rest:
            raise ProtocolError(f"list {which.name} points chunk {chunk.seq} has a partial point")
        if self._brand_count[which] + count > self.accepted.brand_points:
            raise ProtocolError(
                f"list {which.name} has more than the announced {self.accepted.brand_points}"
            )
        await self._brand_results.reserve()
        self._brand_seq[which] += 1
        self._brand_count[which] += count
        length = self.accepted.value_len
        job = self._jobs.call(blind_and_truncate, self._secret, chunk.points, length)
        self._brand_results.put(_tagged(which, job))
        if all(self._brand_count[w] == self.accepted.brand_points for w in BrandList):
            self._brand_results.close()
        self.progress.update(brand_received=self.progress.brand_received + count)

    def _on_matched(self, msg: MatchedRows) -> None:
        self.expect(LookalikeRound.LABELS, "MatchedRows")
        if self.mode is not LookalikeMode.MATCHED:
            raise ProtocolError("the brand sent match flags in a hidden-seed job")
        rows = self.exchanged_rows
        if self._matched is None:
            self._matched = np.zeros(rows, dtype=bool)
        flags = np.frombuffer(msg.flags, dtype=np.uint8)
        if msg.start != self._flags_received or msg.start + len(flags) > rows or not len(flags):
            raise ProtocolError(f"match flags from position {msg.start} do not continue the last")
        if int(flags.max()) > 1:
            raise ProtocolError("a match flag is neither 0 nor 1")
        self._matched[msg.start : msg.start + len(flags)] = flags.astype(bool)
        self._flags_received += len(flags)
        if self._flags_received == rows:
            self._labels_expected = int(self._matched.sum())
            self.intersection = self._labels_expected
            self._label_index = np.full(len(self.records), -1, dtype=np.int64)
            matched_rows = self._order[self._matched]  # in the order their labels come
            self._label_index[matched_rows] = np.arange(len(matched_rows))
            self.progress.update(labels_total=self._labels_expected)
            if self._labels_expected == 0:
                raise ProtocolError("the brand flagged no match but goes on")

    async def _on_labels(self, msg: EncryptedLabels) -> None:
        self.expect(LookalikeRound.LABELS, f"labels chunk {msg.seq}")
        if self._labels_expected < 0:
            raise ProtocolError("labels arrived before the match flags")
        key = self._paillier()
        width = key.ciphertext_bytes
        count, rest = divmod(len(msg.ciphertexts), width)
        received = self.progress.labels_received
        if not count or rest or count > MAX_LABEL_CHUNK:
            raise ProtocolError(f"labels chunk {msg.seq} holds {len(msg.ciphertexts)} bytes")
        if msg.seq != self._label_chunks or msg.start != received:
            raise ProtocolError(f"labels chunk {msg.seq} from {msg.start}; expected {received}")
        if received + count > self._labels_expected:
            raise ProtocolError(f"more than the {self._labels_expected} labels expected")
        await self._label_checks.reserve()
        if self._label_appender is None:
            self._label_appender = ColumnAppender(
                spill_dir=self._spill_dir, memory_bytes=self._memory_bytes
            )
        self._label_appender.append(msg.ciphertexts)
        self._label_chunks += 1
        self._label_checks.put(self._jobs.call(check_packed, key.n, msg.ciphertexts, width))
        self.progress.update(labels_received=received + count)
        if received + count == self._labels_expected:
            self._label_column = self._label_appender.finish()
            self._label_appender = None
            self._label_checks.close()
            self.round = LookalikeRound.SUMS
            self.progress.update(phase=Phase.SUMS)
            self.spawn(self._sums)

    def _on_decrypted(self, msg: DecryptedSums) -> None:
        self.expect(LookalikeRound.SUMS, "DecryptedSums")
        if not self._masks:
            raise ProtocolError("DecryptedSums arrived before the masked sums went out")
        if len(msg.values) != len(self._masks):
            raise ProtocolError(f"{len(msg.values)} decrypted sums for {len(self._masks)}")
        totals = [int(v) - r for v, r in zip(msg.values, self._masks, strict=True)]
        self._masks = []
        self.label_sums = tuple(totals)
        self.round = LookalikeRound.METRICS if self._holdout() else LookalikeRound.PACKAGE
        self.progress.update(phase=Phase.FITTING)
        self.spawn(lambda: self._fit(totals))

    def _on_metrics(self, msg: LookalikeMetrics) -> None:
        self.expect(LookalikeRound.METRICS, "LookalikeMetrics")
        if self.model is None:
            raise ProtocolError("the metrics arrived before the holdout sums went out")
        if len(msg.recall) != len(self.tiers) or len(msg.lift) != len(self.tiers):
            raise ProtocolError("the metrics do not fit the job's tiers")
        self.metrics = msg
        self.round = LookalikeRound.PACKAGE
        self.spawn(self._package)

    def _on_done(self, msg: LookalikeDone) -> None:
        self.expect(LookalikeRound.PACKAGE, "LookalikeDone")
        if not msg.package_id or self.package_id not in ("", msg.package_id):
            raise ProtocolError(f"LookalikeDone names package {msg.package_id!r}")
        if self.package is None and not self.package_id:
            raise ProtocolError("LookalikeDone arrived before the package summary")
        self.package_id = msg.package_id
        self.round = LookalikeRound.DONE
        self.progress.update(phase=Phase.DONE)
        self._signal.notify()

    @property
    def train_users(self) -> np.ndarray:
        """User rows the model was trained on (after the sums round)."""
        return self.records[self._train_rows]

    @property
    def holdout_users(self) -> np.ndarray:
        """User rows held out and scored for the metrics."""
        return self.records[self._holdout_rows]

    def _holdout(self) -> int:
        return round(len(self.records) * self.holdout)

    def _exchange_only(self, matched_users: np.ndarray) -> None:
        """Exchange the slots of the offered rows of ``matched_users`` only."""
        if len(matched_users) != self.data.row_count:
            raise ValueError(f"{len(matched_users)} match flags for {self.data.row_count} users")
        self._exchanged = np.asarray(matched_users, dtype=bool)[self.records]
        if not self._exchanged.any():
            raise InvalidInput(
                f"none of the users matches audience {self.audience!r}: a matched lookalike"
                " needs some of the brand's customers among them"
            )
        self.exchanged_rows = int(self._exchanged.sum())

    # ----------------------------------------------------------- background

    async def _send_slots(self) -> None:
        """Every offered row as ``slots`` points H(x)^p, rows and slots shuffled; a job
        that matches first says how many rows it exchanges, then sends theirs only."""
        assert self.accepted is not None
        if self._find_matches is not None and self._exchanged is None:
            self.progress.update(phase=Phase.PREMATCH)
            found = await self._find_matches()
            if found is not None:
                self._exchange_only(found)
            self.progress.update(phase=Phase.MATCHING)
        if self.match_first:
            self.put(ExchangedRows(rows=self.exchanged_rows))
        self.progress.update(points_total=self.exchanged_rows * self.slots)
        slots = PaddedSlots(
            self.data,
            self.slots,
            self.rng,
            self._random_bytes,
            keep_order=True,
            keep=self._exchanged,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        dsts: list[bytes | None] = [
            None if c.points is not None else dst_for(c.id_type) for c in self.data.columns
        ]
        dsts.append(DUMMY_DST)
        size = self.accepted.chunk_size
        try:
            await asyncio.to_thread(slots.fill)
            jobs = ((self._secret, part, codes, dsts) for part, codes in slots.chunks(size))
            seq = 0
            async for points in in_order(self._jobs, hash_and_blind_mixed, jobs):
                self.put(SlotPoints(seq=seq, points=points))
                seq += 1
                points_sent = self.progress.points_sent + len(points) // POINT_LEN
                self.progress.update(points_sent=points_sent)
        finally:
            slots.close()  # a failed or cancelled run leaves no batch file
        self._order = slots.order  # complete now that every chunk was read
        self._slots_sent = True
        self._maybe_labels()

    async def _return_lists(self) -> None:
        """Each brand list re-blinded, and sent back shuffled once complete."""
        assert self.accepted is not None
        length = self.accepted.value_len
        parts: dict[BrandList, list[bytes]] = {w: [] for w in BrandList}
        async for which, values in self._brand_results:
            parts[which].append(values)
            got = sum(len(p) for p in parts[which]) // length
            if got < self.accepted.brand_points:
                continue
            packed = np.frombuffer(b"".join(parts[which]), dtype=np.uint8).reshape(-1, length)
            packed = packed[self.rng.permutation(len(packed))]
            step = self.accepted.chunk_size
            for seq, start in enumerate(range(0, len(packed), step)):
                chunk = packed[start : start + step].tobytes()
                self.put(BrandValues(list=which, seq=seq, values=chunk))
            parts[which] = []
        self._lists_sent = True
        self._maybe_labels()

    def _maybe_labels(self) -> None:
        if self._slots_sent and self._lists_sent and self.round is LookalikeRound.EXCHANGE:
            self.round = LookalikeRound.LABELS
            if self.mode is LookalikeMode.HIDDEN_SEED:
                self._labels_expected = len(self.records)
                self._label_index = np.empty(len(self.records), dtype=np.int64)
                self._label_index[self._order] = np.arange(len(self.records))
                self.progress.update(labels_total=self._labels_expected)
            self.progress.update(phase=Phase.LABELS)

    def _split(self) -> None:
        """A random holdout of the offered rows; the rest train."""
        shuffled = self.rng.permutation(len(self.records))
        self._holdout_rows = np.sort(shuffled[: self._holdout()])
        self._train_rows = np.sort(shuffled[self._holdout() :])

    def _row_ciphertexts(self, rows: np.ndarray) -> bytes:
        """``Enc(y)`` per offered row, packed; a known negative gets 1 = Enc(0)."""
        width = self._paillier().ciphertext_bytes
        index = self._label_index[rows]
        column = self._label_column if self._label_column is not None else b""
        if self.mode is LookalikeMode.HIDDEN_SEED:  # every row has its Enc(y)
            return fixed_rows(column, index, width).tobytes()
        out = np.zeros((len(rows), width), dtype=np.uint8)
        out[:, -1] = 1
        hit = index >= 0
        out[hit] = fixed_rows(column, index[hit], width)
        return out.tobytes()

    async def _check_labels(self) -> None:
        # Drained while labels arrive: the checks in flight are bounded, so
        # waiting for the last label before reading them would stall the job.
        async for _ in self._label_checks:
            pass
        self._labels_checked.set()

    async def _sums(self) -> None:
        """Masked ``Enc(T_j + r_j)`` and ``Enc(Σy + r)`` over the training rows."""
        await self._labels_checked.wait()
        key = self._paillier()
        self._split()
        rows = self._train_rows
        rows = rows[self._label_index[rows] >= 0]  # known negatives add nothing
        users = self.records[rows]
        width = key.ciphertext_bytes
        n2 = key.n * key.n
        # A slice's ciphertexts are read as its job is queued (a few in flight), so the
        # training rows' Enc(y) are never gathered whole.
        jobs = (
            (
                n2,
                self._row_ciphertexts(rows[start : start + SUM_SLICE]),
                width,
                self.features.values[users[start : start + SUM_SLICE]],
            )
            for start in range(0, len(rows), SUM_SLICE)
        )
        parts = [part async for part in in_order(self._jobs, label_sums, jobs, ahead=4)]
        d = self.features.values.shape[1]
        total = multiply(n2, parts)
        sums = total.ciphertexts if parts else [1] * (d + 1)
        self.he_multiplications += total.multiplications + d + 1  # + the masks
        bounds = self._sum_bounds()
        self._masks = [
            int.from_bytes(self._random_bytes((b + MASK_SLACK_BITS + 7) // 8), "big")
            for b in bounds
        ]
        masks = await asyncio.to_thread(key.encrypt_many, self._masks)
        self.paillier_encryptions += len(masks)
        masked = [s * m % n2 for s, m in zip(sums, masks, strict=True)]
        self.put(MaskedSums(ciphertexts=tuple(masked), train_rows=len(self._train_rows)))

    def _sum_bounds(self) -> list[int]:
        """Bits of the largest value each sum can take over the training rows."""
        rows = len(self._train_rows)
        maxima = self.features.values[self.train_users].max(axis=0) if rows else np.zeros(0)
        return [max(1, int(rows * int(m)).bit_length()) for m in maxima] + [rows.bit_length()]

    async def _fit(self, totals: list[int]) -> None:
        """The model from the unmasked sums, then the holdout's encrypted sums."""
        d = self.features.values.shape[1]
        # Label-DP noise can push the seed count out of range; the fit needs 0 < Σy < n.
        sum_y = min(max(totals[d], 1), len(self._train_rows) - 1)
        offset, scale = self.features.offset, self.features.scale
        xty = offset * sum_y + np.asarray(totals[:d], dtype=np.float64) / scale
        x = self.features.rows(self.train_users).floats()
        started = time.perf_counter()
        self.model = await asyncio.to_thread(fit_logistic, x, xty, float(sum_y), l2=self.l2)
        self.fit_seconds = time.perf_counter() - started
        del x
        _log.info("lookalike: model fit in %d Newton steps", self.model.iterations)
        if not self._holdout():
            self.spawn(self._package)
            return
        self.progress.update(phase=Phase.METRICS)
        held = self._holdout_rows
        scores = score_rows(self.model, self.features.rows(self.holdout_users))
        key = self._paillier()
        packed = await asyncio.to_thread(self._row_ciphertexts, held)
        n2 = key.n * key.n
        sums = await self._jobs.call(
            holdout_sums, n2, packed, key.ciphertext_bytes, scores, self.tiers
        )
        self.he_multiplications += sums.multiplications
        fresh = await asyncio.to_thread(
            key.rerandomize_many, [sums.seeds, sums.rank_sum2, *sums.top]
        )
        self.paillier_encryptions += len(fresh)  # a full re-randomization costs one
        seeds, rank_sum2, *top = fresh
        self.put(
            HoldoutAggregates(rows=len(held), seeds=seeds, rank_sum2=rank_sum2, top=tuple(top))
        )

    async def _package(self) -> None:
        """Score the base, rank it into the tiers, write them, report their sizes."""
        assert self.model is not None
        self.progress.update(phase=Phase.PACKAGE)
        model = self.model
        scores = await asyncio.to_thread(score_rows, model, self.features)
        excluded = np.zeros(self.data.row_count, dtype=bool)
        if self.mode is LookalikeMode.MATCHED:
            excluded[self.records[self._label_index >= 0]] = True
        ranked, sizes = rank_tiers(scores, excluded, self.tiers)
        if not len(ranked):
            raise InvalidInput("no user is left to score once the brand's customers are excluded")
        self.package = LookalikePackage(
            model=model,
            scores=scores,
            ranked=ranked,
            tiers=self.tiers,
            tier_sizes=sizes,
            excluded=np.flatnonzero(excluded),
            metrics=self.metrics,
            train_rows=len(self._train_rows),
            holdout_rows=len(self._holdout_rows),
        )
        if self._write_package is not None:
            self.files = await asyncio.to_thread(self._write_package, self.package)
        self.put(PackageSummary(scored=len(ranked), tier_sizes=sizes))


async def _tagged(which: BrandList, job: Any) -> tuple[BrandList, bytes]:
    return which, await job
