"""The brand node's side of a lookalike job as a transport-free state machine.

Rounds (``LookalikeRound``; the package docstring has the protocol):

``HELLO``     constructed from the partner's hello; ``start()`` answers with
              the run's Paillier key and sizes, and starts sending both lists
              of its identifiers (seeds, others; padded to one size, shuffled).
``EXCHANGE``  re-blinds the partner's slot points in order and keeps them;
              collects the partner's re-blinded lists (each compared with
              the slots by bucket, ``SemiJoin``). With both complete,
              labels every partner position (seed, other, no match), refuses a
              matched seed below the policy's minimum, and sends
              ``Enc(label)`` per position.
``SUMS``      decrypts the ``d + 1`` masked label sums, exactly once.
``METRICS``   decrypts the holdout's ``2 + tiers`` sums into AUC, recall and lift.
``PACKAGE``   records the partner's tier sizes (``conclude``) and ends with
              ``LookalikeDone``.

Every message outside its round, a repeated or skipped chunk, more points than
declared, or more sums than the cap raises ``ProtocolError`` and fails the
job; so does the stream ending first (``end_of_input``). The brand never sees
a user id, a feature or a score.

Nothing of the audience or of the partner's set is held whole: the stored points are
read in batches into one random-batch ``Shuffle`` per list (dummies added in batches),
and the partner's slot values and the lists' values go to a ``SemiJoin`` per list, all
in files past 256 MB under ``spill_dir``, removed by ``close``. So do the partner rows'
two flags (seed, matched), one byte a row.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cleanroom.federated.jobs import encrypt_bits_packed
from cleanroom.federated.lookalike.aggregates import auc_from_sums, tier_sizes
from cleanroom.federated.lookalike.messages import (
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
from cleanroom.federated.lookalike.privacy import (
    analytic_gaussian_sigma,
    label_sensitivity,
    noisy_sums,
)
from cleanroom.federated.paillier import PaillierPrivateKey, PaillierPublicKey, private_key_to_json
from cleanroom.matching.bulk import ArrayAppender, ArrayColumn, ByteColumn, FileArray, FileBytes
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import SemiJoin, Shuffle, rechunked, records_hit
from cleanroom.matching.session import (
    OrderedResults,
    RoundMachine,
    comparison_length,
    in_order,
    to_thread_owned,
)
from cleanroom.matching.workers import (
    DUMMY_DST,
    RunJobs,
    blind_and_truncate,
    blind_points,
    hash_points,
)
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import InvalidInput, PolicyViolation, ProtocolError

MAX_SLOTS = 8
MAX_FEATURES = 4096
MAX_TIERS = 10
MAX_HOLDOUT = 0.5
MIN_HOLDOUT_ROWS = 100  # fewer, and the holdout's sums would say too much about few people
ENCRYPT_BATCH = 2048  # labels per encryption job and per EncryptedLabels message
FLAGS_CHUNK = 1 << 20  # positions per MatchedRows message
MATCHED, SEED = 1, 2  # a partner row's bits: it matched the audience, it matched a seed
DUMMY_BATCH = 1 << 16  # dummy points hashed per job


@dataclass(frozen=True)
class LabelledPoints:
    """An audience's distinct curve points with their seed labels, read in batches (a
    stored audience) rather than held whole: ``batches()`` yields packed 32-byte points
    and a uint8 label (1 seed, 0 other) each, ``seeds`` and ``others`` in all."""

    seeds: int
    others: int
    batches: Callable[[], Iterator[tuple[bytes, np.ndarray]]]

    @classmethod
    def of(cls, points: np.ndarray, labels: np.ndarray) -> LabelledPoints:
        """Points (``S32``) and labels in memory, as one batch."""
        if points.dtype != np.dtype(f"S{POINT_LEN}") or len(points) != len(labels):
            raise TypeError("points are S32, one label each")
        flags = np.asarray(labels, dtype=np.uint8)
        seeds, others = int((flags == 1).sum()), int((flags == 0).sum())
        return cls(seeds, others, lambda: iter([(points.tobytes(), flags)]))


@dataclass(frozen=True)
class LookalikeOutcome:
    """What the brand learned and keeps of one job: sizes and quality, nothing per person."""

    mode: LookalikeMode
    offered: int  # rows the partner offered
    intersection: int  # of them, rows that match a brand identifier
    seeds: int  # of them, rows that match a seed
    train_rows: int
    metrics: LookalikeMetrics | None  # None without a holdout
    scored: int
    tiers: tuple[float, ...]
    tier_sizes: tuple[int, ...]
    sigma: float = 0.0  # label-DP noise scale (0: none)


class LookalikeRun(Protocol):
    """What a transport drives on the brand's side: a job, or a repeated submission's answer."""

    @property
    def public_key(self) -> PaillierPublicKey | None:
        """The job's key, for serde to read and write ciphertexts (None: no job)."""
        ...

    def start(self) -> LookalikeAccepted: ...

    async def receive(self, msg: LookalikePartnerMessage) -> None: ...

    def outgoing(self) -> AsyncIterator[LookalikeBrandMessage]: ...

    def end_of_input(self) -> None: ...

    def fail(self, exc: BaseException) -> None: ...

    def close(self) -> None: ...


class AlreadyPackaged:
    """The answer to a submission that already has a package: that package, and no job."""

    public_key: PaillierPublicKey | None = None

    def __init__(self, package_id: str) -> None:
        self.package_id = package_id

    def start(self) -> LookalikeAccepted:
        return LookalikeAccepted("", 0, 0, 0, 0, 0, package_id=self.package_id)

    async def receive(self, msg: LookalikePartnerMessage) -> None:
        raise ProtocolError(f"this submission already has package {self.package_id}")

    async def outgoing(self) -> AsyncIterator[LookalikeBrandMessage]:
        yield LookalikeDone(package_id=self.package_id)

    def end_of_input(self) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


def check_tiers(tiers: tuple[float, ...]) -> None:
    if (
        not 1 <= len(tiers) <= MAX_TIERS
        or not all(0 < t <= 100 for t in tiers)
        or list(tiers) != sorted(set(tiers))
    ):
        raise InvalidInput(f"tiers are 1..{MAX_TIERS} ascending percentages in (0, 100]")


def check_hello(hello: LookalikeHello, modes: tuple[LookalikeMode, ...]) -> None:
    """The partner's request against the protocol's limits and the brand's allowed modes."""
    if hello.mode not in modes:
        allowed = ", ".join(m.value for m in modes) or "none"
        raise PolicyViolation(
            f"lookalike mode {hello.mode.value} is not allowed by this brand's policy"
            f" (allowed: {allowed})"
        )
    if not 1 <= hello.slots <= MAX_SLOTS:
        raise ProtocolError(f"a row has 1..{MAX_SLOTS} identifier slots, not {hello.slots}")
    if hello.rows < 1:
        raise ProtocolError("the partner offers no rows")
    if hello.match_first and hello.mode is not LookalikeMode.MATCHED:
        raise ProtocolError("only a matched job matches first")
    if not 1 <= hello.features <= MAX_FEATURES:
        raise InvalidInput(f"a model has 1..{MAX_FEATURES} features, not {hello.features}")
    check_tiers(hello.tiers)
    if not 0 <= hello.holdout <= MAX_HOLDOUT:
        raise InvalidInput(f"the holdout is a share of 0 to {MAX_HOLDOUT}, not {hello.holdout}")
    if 0 < hello.holdout_rows < MIN_HOLDOUT_ROWS:
        raise InvalidInput(
            f"a holdout of {hello.holdout_rows} rows is too small for quality metrics"
            f" (at least {MIN_HOLDOUT_ROWS}); offer more rows or use no holdout (0)"
        )
    if hello.train_rows < 2:
        raise InvalidInput("no rows are left to train on")


def label_noise_scale(hello: LookalikeHello, delta: float) -> float:
    """sigma of the label-DP noise the hello asks for (0.0 without), or why it cannot be."""
    if hello.epsilon == 0:
        return 0.0
    if len(hello.scales) != hello.features or not all(1 <= s <= 1 << 20 for s in hello.scales):
        raise ProtocolError("label-DP needs one feature scale in 1..2^20 per feature")
    if not (math.isfinite(hello.row_norm) and 0 < hello.row_norm <= 1e6):
        raise ProtocolError(f"label-DP needs the features' row norm, not {hello.row_norm}")
    return analytic_gaussian_sigma(hello.epsilon, delta, label_sensitivity(hello.row_norm))


class BrandLookalike(RoundMachine[LookalikeRound]):
    """B's state machine for one lookalike job.

    ``points``/``labels``: the audience's distinct identifiers as curve points
    and their 0/1 seed labels (arrays), or ``points`` as ``LabelledPoints`` read in
    batches. ``modes`` are the modes the brand's policy allows; ``min_seed`` the
    fewest matched seeds it trains on. ``conclude`` stores the outcome (package
    metadata) and returns the package id. ``spill_dir``: where its shuffles and
    comparisons go past ``memory_bytes`` (the system's temporary directory; 256 MB).
    """

    def __init__(
        self,
        *,
        session_id: str,
        hello: LookalikeHello,
        points: np.ndarray | LabelledPoints,
        labels: np.ndarray | None = None,
        private_key: PaillierPrivateKey,
        min_seed: int,
        modes: tuple[LookalikeMode, ...] = tuple(LookalikeMode),
        delta: float = 1e-6,
        noise_rng: np.random.Generator | None = None,
        jobs: RunJobs | None = None,
        conclude: Callable[[LookalikeOutcome], str] | None = None,
        chunk_size: int = 8192,
        label_batch: int = ENCRYPT_BATCH,
        rng: np.random.Generator | None = None,
        key: BlindingKey | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        check_hello(hello, modes)
        if isinstance(points, np.ndarray):
            if labels is None:
                raise TypeError("points as an array need their labels")
            points = LabelledPoints.of(points, labels)
        elif labels is not None:
            raise TypeError("labelled points carry their labels")
        super().__init__(LookalikeRound.HELLO, jobs)
        self.session_id = session_id
        self.hello = hello
        self.private_key = private_key
        self.min_seed = min_seed
        self.chunk_size = chunk_size
        self.label_batch = label_batch
        self._conclude = conclude or (lambda _outcome: session_id)
        self._rng = rng or np.random.default_rng()
        self._random_bytes = random_bytes
        self._secret = self._jobs.key((key or BlindingKey.generate()).secret_bytes())
        self._points = points
        self._list_counts = {BrandList.SEED: points.seeds, BrandList.OTHER: points.others}
        self.list_size = max(1, points.seeds, points.others)
        # The partner's slots: every offered row's, or (``match_first``, once it says so)
        # only those of the rows its match found; either way each is compared here, so the
        # counts below are this node's, whatever the partner says it found. The values'
        # length and the joins are sized for every row's: enough for fewer.
        self.exchanged_rows: int | None = None if hello.match_first else hello.rows
        self.declared_points = hello.rows * hello.slots
        self.value_len = comparison_length(self.declared_points, 2 * self.list_size)
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        # Made by ``start``, so that a job refused before it (budget, quota) leaves no files.
        self._joins: dict[BrandList, SemiJoin] = {}
        self._shuffles: list[Shuffle] = []
        self._stopping = threading.Event()  # ``close``: the list reader's thread stops
        self.max_decryptions = hello.features + 1
        if hello.holdout_rows:
            self.max_decryptions += 2 + len(hello.tiers)
        self.sigma = label_noise_scale(hello, delta)  # 0.0: no label-DP
        self._noise_rng = noise_rng or np.random.default_rng(
            np.random.SeedSequence(int.from_bytes(random_bytes(32), "big"))
        )
        self.decryptions = 0
        self.intersection = 0
        self.seeds = 0
        self.metrics: LookalikeMetrics | None = None
        self.outcome: LookalikeOutcome | None = None
        self._partner_seq = 0
        self._partner_received = 0
        self._reblind = OrderedResults[bytes](limit=8)
        self._values_seq = dict.fromkeys(BrandList, 0)
        self._values_count = dict.fromkeys(BrandList, 0)
        self._partner_done = asyncio.Event()
        self._lists_done = asyncio.Event()

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.private_key.public_key

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LookalikeAccepted:
        """Answer the hello and start sending both lists of identifiers."""
        if self.round is not LookalikeRound.HELLO:
            raise ProtocolError(f"job {self.session_id} already started")
        self.round = LookalikeRound.EXCHANGE
        # Each list's values against the partner's slots (theirs on the left, in order).
        self._joins = {
            which: SemiJoin(
                self.value_len,
                self.declared_points,
                self.list_size,
                spill_dir=self._spill_dir,
                memory_bytes=self._memory_bytes,
            )
            for which in BrandList
        }
        self.spawn(self._send_lists)
        self.spawn(self._collect_reblinded)
        self.spawn(self._label_positions)
        return LookalikeAccepted(
            session_id=self.session_id,
            public_key_n=self.public_key.n,
            value_len=self.value_len,
            chunk_size=self.chunk_size,
            brand_points=self.list_size,
            max_decryptions=self.max_decryptions,
        )

    def end_of_input(self) -> None:
        if not self.finished:
            self.fail(ProtocolError("the stream ended before the package; nothing was stored"))

    def close(self) -> None:
        super().close()
        self._stopping.set()
        for join in self._joins.values():
            join.close()
        for shuffle in self._shuffles:
            shuffle.close()

    def outgoing(self) -> AsyncIterator[LookalikeBrandMessage]:
        return self.drain(LookalikeDone)

    # ------------------------------------------------------------- incoming

    async def receive(self, msg: LookalikePartnerMessage) -> None:
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: LookalikePartnerMessage) -> None:
        if isinstance(msg, SlotPoints):
            await self._on_slot_points(msg)
        elif isinstance(msg, ExchangedRows):
            self._on_exchanged(msg)
        elif isinstance(msg, BrandValues):
            self._on_brand_values(msg)
        elif isinstance(msg, MaskedSums):
            await self._on_sums(msg)
        elif isinstance(msg, HoldoutAggregates):
            await self._on_holdout(msg)
        elif isinstance(msg, PackageSummary):
            await self._on_package(msg)
        elif isinstance(msg, LookalikeHello):
            raise ProtocolError("LookalikeHello may only open a stream")
        else:
            raise TypeError(f"not a lookalike partner message: {type(msg).__name__}")

    def _on_exchanged(self, msg: ExchangedRows) -> None:
        self.expect(LookalikeRound.EXCHANGE, "ExchangedRows")
        if not self.hello.match_first or self.exchanged_rows is not None:
            raise ProtocolError("ExchangedRows comes once, in a job that matches first")
        if not 1 <= msg.rows <= self.hello.rows:
            raise ProtocolError(f"{msg.rows} rows exchanged of {self.hello.rows} offered")
        self.exchanged_rows = msg.rows
        self.declared_points = msg.rows * self.hello.slots

    async def _on_slot_points(self, chunk: SlotPoints) -> None:
        self.expect(LookalikeRound.EXCHANGE, f"slot points chunk {chunk.seq}")
        if self.exchanged_rows is None:
            raise ProtocolError("slot points before ExchangedRows in a job that matches first")
        if chunk.seq != self._partner_seq:
            kind = "duplicate" if chunk.seq < self._partner_seq else "out-of-order"
            raise ProtocolError(f"{kind} slot chunk {chunk.seq}: chunk {self._partner_seq} is next")
        count, rest = divmod(len(chunk.points), POINT_LEN)
        if not count or rest or count > self.chunk_size:
            raise ProtocolError(
                f"slot chunk {chunk.seq} holds {len(chunk.points)} bytes: 1..{self.chunk_size}"
                f" points of {POINT_LEN} bytes"
            )
        if self._partner_received + count > self.declared_points:
            raise ProtocolError(
                f"slot chunk {chunk.seq} exceeds the declared {self.declared_points} points;"
                " the brand node re-blinds no more than declared"
            )
        await self._reblind.reserve()
        self._partner_seq += 1
        self._partner_received += count
        self._reblind.put(
            self._jobs.call(blind_and_truncate, self._secret, chunk.points, self.value_len)
        )
        if self._partner_received == self.declared_points:
            self._reblind.close()

    def _on_brand_values(self, chunk: BrandValues) -> None:
        which = chunk.list
        self.expect(LookalikeRound.EXCHANGE, f"list {which.name} values")
        if chunk.seq != self._values_seq[which]:
            raise ProtocolError(f"list {which.name} values chunk {chunk.seq} is out of order")
        count, rest = divmod(len(chunk.values), self.value_len)
        if not count or rest:
            raise ProtocolError(f"list {which.name} values chunk {chunk.seq} has a partial value")
        if self._values_count[which] + count > self.list_size:
            raise ProtocolError(f"list {which.name} came back with more than {self.list_size}")
        self._values_seq[which] += 1
        self._values_count[which] += count
        self._joins[which].right.add(chunk.values)
        if all(self._values_count[w] == self.list_size for w in BrandList):
            self._lists_done.set()

    async def _on_sums(self, msg: MaskedSums) -> None:
        self.expect(LookalikeRound.SUMS, "the masked sums")
        want = self.hello.features + 1
        if len(msg.ciphertexts) != want:
            raise ProtocolError(f"{len(msg.ciphertexts)} masked sums; the job has {want}")
        if msg.train_rows != self.hello.train_rows:
            raise ProtocolError(
                f"the sums cover {msg.train_rows} rows; the job trains on {self.hello.train_rows}"
            )
        values = await self._decrypt(msg.ciphertexts)
        if self.sigma:
            values = noisy_sums(values, self.hello.scales, self.sigma, self._noise_rng)
        self.round = LookalikeRound.METRICS if self.hello.holdout_rows else LookalikeRound.PACKAGE
        self.put(DecryptedSums(values=tuple(values)))

    async def _on_holdout(self, msg: HoldoutAggregates) -> None:
        self.expect(LookalikeRound.METRICS, "the holdout sums")
        tiers = self.hello.tiers
        if len(msg.top) != len(tiers):
            raise ProtocolError(f"{len(msg.top)} tier sums for {len(tiers)} tiers")
        rows = msg.rows
        if rows != self.hello.holdout_rows:
            raise ProtocolError(
                f"the holdout sums cover {rows} rows; the job holds out {self.hello.holdout_rows}"
            )
        seeds, rank_sum2, *top = await self._decrypt([msg.seeds, msg.rank_sum2, *msg.top])
        low, high = seeds * (seeds + 1), seeds * (2 * rows - seeds + 1)
        sizes = tier_sizes(rows, tiers)
        if (
            not 0 <= seeds <= rows
            or not low <= rank_sum2 <= high
            or any(not 0 <= t <= min(seeds, k) for t, k in zip(top, sizes, strict=True))
            or top != sorted(top)
        ):
            raise ProtocolError("the holdout sums are not the sums of 0/1 labels")
        recall = tuple(None if seeds == 0 else t / seeds for t in top)
        lift = tuple(
            None if r is None else r / (k / rows) for r, k in zip(recall, sizes, strict=True)
        )
        self.metrics = LookalikeMetrics(
            holdout_rows=rows,
            holdout_seeds=seeds,
            auc=auc_from_sums(seeds, rank_sum2, rows),
            recall=recall,
            lift=lift,
        )
        self.round = LookalikeRound.PACKAGE
        self.put(self.metrics.withheld() if self.sigma else self.metrics)

    async def _on_package(self, msg: PackageSummary) -> None:
        self.expect(LookalikeRound.PACKAGE, "the package summary")
        if len(msg.tier_sizes) != len(self.hello.tiers) or msg.scored < 1:
            raise ProtocolError("the package summary does not fit the job's tiers")
        if list(msg.tier_sizes) != tier_sizes(msg.scored, self.hello.tiers):
            raise ProtocolError("the tier sizes are not the job's shares of the scored base")
        self.outcome = LookalikeOutcome(
            mode=self.hello.mode,
            offered=self.hello.rows,
            intersection=self.intersection,
            seeds=self.seeds,
            train_rows=self.hello.train_rows,
            metrics=self.metrics,
            scored=msg.scored,
            tiers=self.hello.tiers,
            tier_sizes=msg.tier_sizes,
            sigma=self.sigma,
        )
        package_id = await asyncio.to_thread(self._conclude, self.outcome)
        self.put(LookalikeDone(package_id))
        self.round = LookalikeRound.DONE
        self._signal.notify()

    async def _decrypt(self, ciphertexts: Sequence[int]) -> list[int]:
        """Decrypt within the job's cap: ``d + 1`` sums, then ``2 + tiers`` holdout sums."""
        if self.decryptions + len(ciphertexts) > self.max_decryptions:
            raise ProtocolError(
                f"the job asks for {self.decryptions + len(ciphertexts)} decryptions; its cap"
                f" is {self.max_decryptions} (d + 1 sums, 2 + one per tier for the holdout)"
            )
        self.decryptions += len(ciphertexts)
        cts = self.public_key.validate_many(ciphertexts)
        return [int(v) for v in await asyncio.to_thread(self.private_key.decrypt_many, cts)]

    # ----------------------------------------------------------- background

    async def _send_lists(self) -> None:
        """Both lists as H(s)^b, dummies up to one size, each in a uniformly random order:
        the points read a batch at a time into a random-batch ``Shuffle`` per list."""
        shuffles = {
            which: Shuffle(
                POINT_LEN,
                self.list_size,
                self._rng,
                spill_dir=self._spill_dir,
                memory_bytes=self._memory_bytes,
            )
            for which in BrandList
        }
        self._shuffles = list(shuffles.values())

        def fill() -> None:
            # A closed job's shuffles are removed under this thread: it stops at the next
            # batch, and a write into a removed directory is not an error then.
            for packed, labels in self._points.batches():
                if self._stopping.is_set():
                    return
                rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, POINT_LEN)
                try:
                    for which, label in ((BrandList.SEED, 1), (BrandList.OTHER, 0)):
                        if (chosen := labels == label).any():
                            shuffles[which].add(rows[chosen].tobytes())
                except OSError:
                    if self._stopping.is_set():
                        return
                    raise

        await asyncio.to_thread(fill)
        for which, shuffle in shuffles.items():
            if shuffle.count != self._list_counts[which]:
                raise RuntimeError(
                    f"the audience holds {shuffle.count} {which.name} points,"
                    f" not {self._list_counts[which]}"
                )
            missing = self.list_size - shuffle.count
            for start in range(0, missing, DUMMY_BATCH):
                count = min(DUMMY_BATCH, missing - start)
                random = self._random_bytes(32 * count)
                shuffle.add(await self._jobs.call(hash_points, random, DUMMY_DST))
            jobs = ((self._secret, part, False) for part in shuffle.chunks(self.chunk_size))
            seq = 0
            async for blinded in in_order(self._jobs, blind_points, jobs):
                self.put(BrandPoints(list=which, seq=seq, points=blinded))
                seq += 1
            shuffle.close()

    async def _collect_reblinded(self) -> None:
        async for values in self._reblind:
            for join in self._joins.values():
                join.left.add(values)
        self._partner_done.set()

    async def _label_positions(self) -> None:
        await self._partner_done.wait()
        await self._lists_done.wait()
        codes = await self._row_codes()
        try:
            await self._send_labels(codes)
        finally:
            _close_column(codes)
        self.round = LookalikeRound.SUMS
        self._signal.notify()

    async def _send_labels(self, codes: ArrayColumn) -> None:
        """The minimum seed checked, then (matched mode) the match flags and the labels."""
        if self.seeds < self.min_seed:
            raise PolicyViolation(
                f"the partner's rows match {self.seeds} seed members; this brand's policy"
                f" needs at least {self.min_seed} for a lookalike"
            )
        self.round = LookalikeRound.LABELS
        matched_mode = self.hello.mode is LookalikeMode.MATCHED
        if matched_mode:
            for seq, start in enumerate(range(0, len(codes), FLAGS_CHUNK)):
                flags = codes[start : start + FLAGS_CHUNK] & MATCHED
                self.put(MatchedRows(seq=seq, start=start, flags=flags.tobytes()))
        key = json.dumps(private_key_to_json(self.private_key))
        bits = self.public_key.n.bit_length()
        labels = row_labels(codes, matched_mode, self.label_batch)
        jobs = ((key, bits, batch) for batch in labels)
        seq = 0
        async for packed in in_order(self._jobs, encrypt_bits_packed, jobs):
            self.put(EncryptedLabels(seq=seq, start=seq * self.label_batch, ciphertexts=packed))
            seq += 1

    async def _row_codes(self) -> ArrayColumn:
        """Per partner row exchanged, its ``MATCHED | SEED`` bits (a seed is matched), with
        ``intersection`` and ``seeds`` counted: the slots are compared with each list by
        bucket, then the rows' flags combined a window at a time into a column (a file
        past ``memory_bytes``), the only per-row state."""
        assert self.exchanged_rows is not None
        found: dict[BrandList, ByteColumn] = {}

        def combine() -> tuple[ArrayColumn, int, int]:
            intersection = seeds = 0
            codes = ArrayAppender(
                np.uint8, spill_dir=self._spill_dir, memory_bytes=self._memory_bytes
            )
            slots = self.hello.slots
            windows = zip(
                records_hit(found[BrandList.SEED], slots),
                records_hit(found[BrandList.OTHER], slots),
                strict=True,
            )
            for seed, other in windows:
                intersection += int((seed | other).sum())
                seeds += int(seed.sum())
                codes.append(np.where(seed, MATCHED | SEED, np.where(other, MATCHED, 0)))
            column = codes.finish()
            if len(column) != self.exchanged_rows:
                _close_column(column)
                raise RuntimeError(f"{len(column)} row flags for {self.exchanged_rows} rows")
            return column, intersection, seeds

        try:
            for which, join in self._joins.items():
                found[which] = await join.hit_flags(self._jobs.call)
                join.close()
            codes, self.intersection, self.seeds = await to_thread_owned(
                combine, lambda combined: _close_column(combined[0])
            )
            return codes
        finally:
            for column in found.values():
                if isinstance(column, FileBytes):
                    column.close()


def _close_column(codes: ArrayColumn) -> None:
    if isinstance(codes, FileArray):
        codes.close()


def row_labels(
    codes: ArrayColumn, matched_only: bool, batch: int, window: int = FLAGS_CHUNK
) -> Iterator[bytes]:
    """The label (0/1 byte) of every row (of every matched row when ``matched_only``), in
    row order, ``batch`` labels at a time (the last may be shorter); ``codes`` is read
    ``window`` rows at a time."""

    def windows() -> Iterator[bytes]:
        for start in range(0, len(codes), window):
            code = np.asarray(codes[start : start + window])
            if matched_only:
                code = code[(code & MATCHED) != 0]
            yield ((code & SEED) != 0).astype(np.uint8).tobytes()

    return rechunked(windows(), batch)
