"""HE scoring of a brand-owned model: the partner ranks its users by the brand's model
without seeing the model, and the brand ranks them without seeing a user.

One job (``ScoreRound``):

1. ``ScoreHello`` (P): the model's name, how many users P scores, the tiers.
2. ``ScoreAccepted`` (B): a fresh Paillier key, the model's features and
   quantization (public: P quantizes its own columns), ``Enc(W_j)`` per
   feature and ``Enc(C)`` — the model in fixed point
   (``BrandModel.fixed_point``), never in the clear.
3. ``ScoreChunk`` (P): P shuffles its users with a secret permutation and
   draws a secret mask ``a`` (16 bits), ``c`` (48 bits) and per user
   ``e < a``. It groups the features so that each group has at most 256
   level combinations (two 16-level features, eight 0/1 ones) and builds a
   table per group of ``prod_j Enc(W_j)^(a·q_j·2^(52k))`` for every
   combination ``q`` and slot ``k`` (squarings and products, no fresh
   exponentiation per user), multiplies each user's one entry per group
   into the ciphertext of its slot, adds ``a·2^32 + c + e`` in the plaintext
   part and re-randomizes it from a secret pool of uniform ``r^n`` drawn for
   the job (``RandomizerPool``: within ``2^-129`` of a full ``r^n`` per
   ciphertext, even for B who knows the factorization, at a ninth of its
   cost). Slot ``k`` of a ciphertext
   then holds ``v = a·(s + 2^32) + c + e`` for the user's fixed-point score
   ``s``: positive, below ``2^50``, in the same order as ``s`` (``e < a``
   only breaks ties, at random), 39 users per 2048-bit ciphertext (the
   re-randomization is paid per ciphertext, so the slots are as narrow as
   the mask allows).
4. ``ScoreTiers`` (B): B decrypts every ciphertext, ranks the masked values
   and answers with one tier index per shuffled position.
5. ``PackageSummary`` (P) after un-shuffling and writing its tiers; B stores
   the package's metadata and ends with ``LookalikeDone``.

P learns the tier of each of its users (the output) and the feature names
and quantization; it never sees ``W``, ``C`` or a score. B learns the
number of users and the masked values, i.e. the scores up to a secret
positive affine map with noise below its slope, in an order unlinkable to
users; never a user id or a feature value. Semi-honest, like every protocol
here: a brand that sent crafted weights (bit fields instead of a model)
could read features from the masked values, which is why the model's
registration is the brand admin's act and audited (DESIGN.md §13).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from cleanroom.federated.jobs import decrypt_packed
from cleanroom.federated.lookalike.aggregates import tier_sizes
from cleanroom.federated.lookalike.brand import check_tiers
from cleanroom.federated.lookalike.brand_model import SCORE_BITS, BrandModel, ModelFeature
from cleanroom.federated.lookalike.messages import (
    LookalikeDone,
    PackageSummary,
    ScoreAccepted,
    ScoreBrandMessage,
    ScoreChunk,
    ScoreHello,
    ScorePartnerMessage,
    ScoreRound,
    ScoreTiers,
)
from cleanroom.federated.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    RandomizerPool,
    pool_size,
    private_key_to_json,
)
from cleanroom.matching.session import OrderedResults, Progress, RoundMachine, in_order
from cleanroom.matching.workers import RunJobs, SecretRef, resolve_secret
from cleanroom.proto.errors import InvalidInput, ProtocolError

SLOT_BITS = 52
MASK_BITS = 16  # the slope a of the mask: 2^15 <= a < 2^16
OFFSET_BITS = 48  # the mask's offset c < 2^48; v < 2^50 fits a slot with room to spare
SCORE_CHUNK = 512  # ciphertexts per ScoreChunk (and per worker job)
TIERS_CHUNK = 1 << 20
GROUP_ENTRIES = 256  # level combinations of a feature group (its table rows per slot)
POOL_JOBS = 4  # worker jobs that draw P's randomizer pool
MIN_SCORE_USERS = 2


def slots_for(n_bits: int) -> int:
    """Users per ciphertext: whole 64-bit slots below ``n`` (the packed value stays < n)."""
    return (n_bits - 2) // SLOT_BITS


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive counts (fewer when ``total`` is small)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts) if base + (i < extra)]


def nested_tiers(values: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Per position: the 1-based smallest tier holding it (by ``values``, largest first;
    equal values by position), 0 for none."""
    order = np.argsort(values, kind="stable")[::-1]
    # stable ascending then reversed puts equal values in reverse position order: fine,
    # positions are P's random shuffle.
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    tier = np.searchsorted(np.asarray(sizes), ranks, side="right") + 1
    tier[tier > len(sizes)] = 0
    return tier.astype(np.uint8)


def check_score_hello(hello: ScoreHello) -> None:
    if hello.users < MIN_SCORE_USERS:
        raise InvalidInput(f"a scoring job has at least {MIN_SCORE_USERS} users")
    check_tiers(hello.tiers)


# ----------------------------------------------------------------- worker jobs


def feature_groups(levels: Sequence[int]) -> list[list[int]]:
    """Feature indices in groups whose level counts multiply to at most ``GROUP_ENTRIES``
    (first fit, largest first): one table entry per group then adds all of a user's
    features in it, e.g. two 16-level features or eight 0/1 ones."""
    groups: list[list[int]] = []
    sizes: list[int] = []
    for j in sorted(range(len(levels)), key=lambda j: (-levels[j], j)):
        for g, size in enumerate(sizes):
            if size * levels[j] <= GROUP_ENTRIES:
                groups[g].append(j)
                sizes[g] *= levels[j]
                break
        else:
            groups.append([j])
            sizes.append(levels[j])
    return groups


def group_entries(levels: Sequence[int]) -> int:
    """Table entries a group of features with these level counts has per slot (all its
    level combinations but all-zero)."""
    return math.prod(levels) - 1


def group_table(n: int, weights: Sequence[int], a: int, levels: Sequence[int], slots: int) -> bytes:
    """For slot ``k < slots`` and every level combination ``q`` of the group but all-zero:
    ``prod_j Enc(W_j)^(a·q_j·2^(52k))``, packed fixed-width, slot-major, combinations in
    mixed radix with the group's first feature as the lowest digit."""
    n2 = mpz(n) * n
    width = (int(n2).bit_length() + 7) // 8
    bases = [gmpy2.powmod(mpz(w), a, n2) for w in weights]
    one = mpz(1)
    out = bytearray()
    for _k in range(slots):
        combos = [one]
        for j, base in enumerate(bases):
            powers = [one, base]
            for _q in range(2, levels[j]):
                powers.append(powers[-1] * base % n2)
            combos = [
                c if q == 0 else (p if c == one else c * p % n2)
                for q, p in enumerate(powers)
                for c in combos
            ]
            for _ in range(SLOT_BITS):
                base = base * base % n2
            bases[j] = base
        for entry in combos[1:]:
            out += int(entry).to_bytes(width, "big")
    return bytes(out)


@functools.lru_cache(maxsize=2)
def _job_state(
    n: int, min_bits: int, tables: bytes, pool: bytes
) -> tuple[list[Any], RandomizerPool]:
    """A worker's parsed tables and randomizer pool for one scoring run: the same for every
    chunk of it, and building them costs a fifth of a chunk's work (cf. ``federated.jobs``,
    which keeps the brand's parsed keys the same way)."""
    key = PaillierPublicKey(n, min_bits=min_bits)
    width = key.ciphertext_bytes
    table = [
        mpz(int.from_bytes(tables[i : i + width], "big")) for i in range(0, len(tables), width)
    ]
    return table, RandomizerPool.from_bytes(key, pool)


def packed_scores(
    n: int,
    min_bits: int,
    tables: bytes,
    constant: int,
    slots: int,
    codes: bytes,
    groups: int,
    offsets: bytes,
    pool: bytes | SecretRef,
) -> bytes:
    """One ciphertext per ``slots`` users: the product of the users' table entries
    (``codes``: int32 table indices per group, -1 for all-zero levels), the mask's plaintext
    part (``offsets``: uint64 per user) and a re-randomization from P's secret ``pool``
    (``RandomizerPool.to_bytes``)."""
    table, randomizers = _job_state(n, min_bits, tables, resolve_secret(pool))
    n2 = mpz(n) * n
    modulus = mpz(n)
    width = randomizers.public_key.ciphertext_bytes
    index = np.frombuffer(codes, dtype=np.int32).reshape(-1, groups)
    users = len(index)
    offset = np.frombuffer(offsets, dtype=np.uint64)
    base = mpz(constant)
    out = []
    for start in range(0, users, slots):
        acc = base
        for entry in index[start : start + slots].ravel().tolist():
            if entry >= 0:
                acc = acc * table[entry] % n2
        plain = mpz(0)
        for k, value in enumerate(offset[start : start + slots].tolist()):
            plain |= mpz(value) << (SLOT_BITS * k)
        acc = acc * (1 + plain * modulus) % n2
        out.append(acc)
    fresh = randomizers.raw_rerandomize_many(out)
    return b"".join(c.to_bytes(width, "big") for c in fresh)


def nth_residues(n: int, min_bits: int, count: int) -> bytes:
    """``count`` fresh uniform ``r**n mod n**2`` (part of P's randomizer pool), fixed-width."""
    key = PaillierPublicKey(n, min_bits=min_bits)
    return b"".join(x.to_bytes(key.ciphertext_bytes, "big") for x in key.nth_residues(count))


# ----------------------------------------------------------------------- brand


@dataclass(frozen=True)
class ScoreOutcome:
    users: int
    tiers: tuple[float, ...]
    tier_sizes: tuple[int, ...]


class AlreadyScored:
    """The answer to a submission that already has a package: that package, and no job."""

    public_key: PaillierPublicKey | None = None

    def __init__(self, package_id: str) -> None:
        self.package_id = package_id

    def start(self) -> ScoreAccepted:
        return ScoreAccepted("", 0, (), (), 0, 0, 0, package_id=self.package_id)

    async def receive(self, msg: ScorePartnerMessage) -> None:
        raise ProtocolError(f"this submission already has package {self.package_id}")

    async def outgoing(self) -> AsyncIterator[ScoreBrandMessage]:
        yield LookalikeDone(package_id=self.package_id)

    def end_of_input(self) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class BrandScoring(RoundMachine[ScoreRound]):
    """B's state machine for one HE-scoring job with ``model`` under ``private_key``."""

    def __init__(
        self,
        *,
        session_id: str,
        hello: ScoreHello,
        model: BrandModel,
        private_key: PaillierPrivateKey,
        jobs: RunJobs | None = None,
        conclude: Callable[[ScoreOutcome], str] | None = None,
        chunk_size: int = SCORE_CHUNK,
    ) -> None:
        check_score_hello(hello)
        super().__init__(ScoreRound.HELLO, jobs)
        self.session_id = session_id
        self.hello = hello
        self.model = model
        self.private_key = private_key
        self.chunk_size = chunk_size
        self.slots = slots_for(self.public_key.n.bit_length())
        self.expected = math.ceil(hello.users / self.slots)
        self.received = 0
        self.outcome: ScoreOutcome | None = None
        self._conclude = conclude or (lambda _outcome: session_id)
        self._seq = 0
        self._values: list[bytes] = []
        self._decrypted = OrderedResults[bytes](limit=8)
        # SECRET: for workers (worker-local state on a cluster)
        self._key_json = self._jobs.key(json.dumps(private_key_to_json(private_key)))
        self.sizes = tier_sizes(hello.users, hello.tiers)

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.private_key.public_key

    def start(self) -> ScoreAccepted:
        if self.round is not ScoreRound.HELLO:
            raise ProtocolError(f"job {self.session_id} already started")
        weights, constant = self.model.fixed_point()
        encrypted = self.private_key.encrypt_many([*weights, constant])
        self.round = ScoreRound.SCORES
        self.spawn(self._rank)
        return ScoreAccepted(
            session_id=self.session_id,
            public_key_n=self.public_key.n,
            features=self.model.features,
            weights=tuple(encrypted[:-1]),
            constant=encrypted[-1],
            slots=self.slots,
            chunk_size=self.chunk_size,
        )

    def end_of_input(self) -> None:
        if not self.finished:
            self.fail(ProtocolError("the stream ended before the package; nothing was stored"))

    def outgoing(self) -> AsyncIterator[ScoreBrandMessage]:
        return self.drain(LookalikeDone)

    async def receive(self, msg: ScorePartnerMessage) -> None:
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: ScorePartnerMessage) -> None:
        if isinstance(msg, ScoreChunk):
            await self._on_chunk(msg)
        elif isinstance(msg, PackageSummary):
            await self._on_package(msg)
        elif isinstance(msg, ScoreHello):
            raise ProtocolError("ScoreHello may only open a stream")
        else:
            raise TypeError(f"not a scoring partner message: {type(msg).__name__}")

    async def _on_chunk(self, chunk: ScoreChunk) -> None:
        self.expect(ScoreRound.SCORES, f"score chunk {chunk.seq}")
        if chunk.seq != self._seq:
            raise ProtocolError(f"score chunk {chunk.seq} out of order; chunk {self._seq} is next")
        width = self.public_key.ciphertext_bytes
        count, rest = divmod(len(chunk.ciphertexts), width)
        if not count or rest or count > self.chunk_size:
            raise ProtocolError(
                f"score chunk {chunk.seq} holds {len(chunk.ciphertexts)} bytes:"
                f" 1..{self.chunk_size} ciphertexts of {width} bytes"
            )
        if self.received + count > self.expected:
            raise ProtocolError(
                f"more score ciphertexts than the {self.expected} that {self.hello.users}"
                " users fill"
            )
        await self._decrypted.reserve()
        self._seq += 1
        self.received += count
        bits = self.public_key.n.bit_length()
        job = (self._key_json, bits, chunk.ciphertexts, width, self.slots, SLOT_BITS)
        self._decrypted.put(self._jobs.call(decrypt_packed, *job))
        if self.received == self.expected:
            self._decrypted.close()

    async def _rank(self) -> None:
        async for plain in self._decrypted:
            self._values.append(plain)
        values = np.frombuffer(b"".join(self._values), dtype="<u8")[: self.hello.users]
        tiers = await asyncio.to_thread(nested_tiers, values, self.sizes)
        for seq, start in enumerate(range(0, len(tiers), TIERS_CHUNK)):
            part = tiers[start : start + TIERS_CHUNK].tobytes()
            self.put(ScoreTiers(seq=seq, start=start, tiers=part))
        self.round = ScoreRound.PACKAGE
        self._signal.notify()

    async def _on_package(self, msg: PackageSummary) -> None:
        self.expect(ScoreRound.PACKAGE, "the package summary")
        if msg.scored != self.hello.users or list(msg.tier_sizes) != self.sizes:
            raise ProtocolError("the package summary does not fit the job's users and tiers")
        self.outcome = ScoreOutcome(self.hello.users, self.hello.tiers, tuple(self.sizes))
        package_id = await asyncio.to_thread(self._conclude, self.outcome)
        self.put(LookalikeDone(package_id))
        self.round = ScoreRound.DONE
        self._signal.notify()

    def close(self) -> None:
        super().close()
        self._decrypted.cancel()


# --------------------------------------------------------------------- partner


@dataclass
class ScoreProgress(Progress):
    phase: str = "connecting"
    users: int = 0
    ciphertexts_total: int = 0
    ciphertexts_sent: int = 0


@dataclass(frozen=True)
class ScoredTiers:
    """P's result: per user (its own order), the 1-based smallest tier holding it, 0 none."""

    tiers: tuple[float, ...]
    tier_of_user: np.ndarray
    tier_sizes: tuple[int, ...]


@dataclass
class _Mask:
    a: int
    c: int
    e: np.ndarray = field(repr=False)


class PartnerScoring(RoundMachine[ScoreRound]):
    """P's state machine: ``columns`` are its feature columns by name (float arrays, one
    value per user); ``write_package`` gets the tiers once the brand ranked them."""

    def __init__(
        self,
        *,
        model: str,
        columns: Mapping[str, np.ndarray],
        users: int,
        tiers: tuple[float, ...],
        submission_key: str = "",
        write_package: Callable[[ScoredTiers], None] | None = None,
        jobs: RunJobs | None = None,
        min_key_bits: int = 2048,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(ScoreRound.HELLO, jobs)
        self.model = model
        self.columns = columns
        self.users = users
        self.tiers = tiers
        self.submission_key = submission_key
        self.min_key_bits = min_key_bits
        self.public_key: PaillierPublicKey | None = None
        self.accepted: ScoreAccepted | None = None
        self.package_id = ""
        self.result: ScoredTiers | None = None
        self.progress = ScoreProgress(users=users)
        self._write_package = write_package or (lambda _r: None)
        self._random_bytes = random_bytes
        self._rng = np.random.default_rng(
            np.random.SeedSequence(int.from_bytes(random_bytes(32), "big"))
        )
        self._order: np.ndarray | None = None  # position -> user
        self._received: list[bytes] = []
        self._tiers_received = 0

    def hello(self) -> ScoreHello:
        return ScoreHello(self.model, self.users, self.tiers, self.submission_key)

    def outgoing(self) -> AsyncIterator[ScorePartnerMessage]:
        return self.drain(PackageSummary)

    def end_of_input(self) -> None:
        if not self.finished:
            self.fail(ProtocolError("the brand node closed the stream before the job was done"))

    async def receive(self, msg: ScoreBrandMessage) -> None:
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: ScoreBrandMessage) -> None:
        if isinstance(msg, ScoreAccepted):
            self._on_accepted(msg)
        elif isinstance(msg, ScoreTiers):
            await self._on_tiers(msg)
        elif isinstance(msg, LookalikeDone):
            self.expect(ScoreRound.PACKAGE, "LookalikeDone")
            self.package_id = msg.package_id
            self.round = ScoreRound.DONE
            self._signal.notify()
        else:
            raise TypeError(f"not a scoring brand message: {type(msg).__name__}")

    def _on_accepted(self, msg: ScoreAccepted) -> None:
        self.expect(ScoreRound.HELLO, "ScoreAccepted")
        if msg.package_id:
            self.package_id = msg.package_id
            self.round = ScoreRound.PACKAGE
            self._signal.notify()
            return
        missing = [f.name for f in msg.features if f.name not in self.columns]
        if missing:
            raise InvalidInput(
                f"model {self.model!r} needs feature(s) the feature file lacks:"
                f" {', '.join(missing)} (it has {', '.join(sorted(self.columns)) or 'none'})"
            )
        if not msg.features or len(msg.weights) != len(msg.features):
            raise ProtocolError("the brand sent a model without one weight per feature")
        key = PaillierPublicKey(msg.public_key_n, min_bits=self.min_key_bits)
        if msg.slots != slots_for(key.n.bit_length()) or msg.chunk_size < 1:
            raise ProtocolError(f"{msg.slots} slots per ciphertext do not fit the key")
        key.validate_many([*msg.weights, msg.constant])
        self.public_key = key
        self.accepted = msg
        self.round = ScoreRound.SCORES
        self.progress.update(phase="scoring", ciphertexts_total=math.ceil(self.users / msg.slots))
        self.spawn(self._send_scores)

    def _mask(self) -> _Mask:
        a = (1 << (MASK_BITS - 1)) | secrets.randbits(MASK_BITS - 1)
        c = secrets.randbits(OFFSET_BITS)
        e = np.frombuffer(self._random_bytes(8 * self.users), dtype=np.uint64) % np.uint64(a)
        return _Mask(a, c, e)

    def _table_indices(
        self, features: tuple[ModelFeature, ...], slots: int, groups: list[list[int]]
    ) -> np.ndarray:
        """Per shuffled position and feature group: its table entry (-1 when each of the
        group's levels is 0)."""
        assert self._order is not None
        slot = np.arange(self.users) % slots
        index = np.empty((self.users, len(groups)), dtype=np.int32)
        start = 0
        for g, members in enumerate(groups):
            code = np.zeros(self.users, dtype=np.int64)
            radix = 1
            for j in members:
                f = features[j]
                code += f.quantize(self.columns[f.name][self._order]).astype(np.int64) * radix
                radix *= f.levels
            entries = group_entries([features[j].levels for j in members])
            index[:, g] = np.where(code > 0, start + slot * entries + code - 1, -1)
            start += slots * entries
        return index

    async def _send_scores(self) -> None:
        msg, key = self.accepted, self.public_key
        assert msg is not None and key is not None
        self._order = self._rng.permutation(self.users)
        mask = self._mask()
        slots = msg.slots
        # Features are parsed and quantized first: a bad column fails before any encryption.
        groups = feature_groups([f.levels for f in msg.features])
        index = await asyncio.to_thread(self._table_indices, msg.features, slots, groups)
        table_jobs = [
            self._jobs.call(
                group_table,
                key.n,
                [msg.weights[j] for j in members],
                mask.a,
                [msg.features[j].levels for j in members],
                slots,
            )
            for members in groups
        ]
        residue_jobs = [
            self._jobs.call(nth_residues, key.n, self.min_key_bits, count)
            for count in _split(pool_size(key.bits), POOL_JOBS)
        ]
        done = await asyncio.gather(*table_jobs, *residue_jobs)
        tables = b"".join(done[: len(table_jobs)])
        residues = b"".join(done[len(table_jobs) :])
        RandomizerPool.from_bytes(key, residues)  # its size checked before any chunk
        # SECRET: P's randomness; a worker-local secret on a cluster, gone with the run
        pool = self._jobs.key(residues)
        n2 = key.n * key.n
        factor = mask.a * sum(1 << (SLOT_BITS * k) for k in range(slots))
        constant = int(gmpy2.powmod(msg.constant, factor, n2))
        offsets = (mask.e + np.uint64((mask.a << SCORE_BITS) + mask.c)).astype("<u8")
        per_job = slots * msg.chunk_size
        pad = (-self.users) % slots
        if pad:  # empty slots of the last ciphertext: the bare offset keeps them positive
            index = np.concatenate([index, np.full((pad, index.shape[1]), -1, np.int32)])
            bare = (mask.a << SCORE_BITS) + mask.c
            offsets = np.concatenate([offsets, np.full(pad, bare, dtype="<u8")])
        jobs = (
            (
                key.n,
                self.min_key_bits,
                tables,
                constant,
                slots,
                index[start : start + per_job].tobytes(),
                len(groups),
                offsets[start : start + per_job].tobytes(),
                pool,
            )
            for start in range(0, len(index), per_job)
        )
        seq = 0
        async for packed in in_order(self._jobs, packed_scores, jobs, ahead=4):
            self.put(ScoreChunk(seq=seq, ciphertexts=packed))
            seq += 1
            self.progress.update(
                ciphertexts_sent=self.progress.ciphertexts_sent
                + len(packed) // key.ciphertext_bytes
            )
        self.progress.update(phase="ranking")

    async def _on_tiers(self, msg: ScoreTiers) -> None:
        self.expect(ScoreRound.SCORES, f"tiers chunk {msg.seq}")
        if msg.seq != len(self._received) or msg.start != self._tiers_received:
            raise ProtocolError(f"tiers chunk {msg.seq} from {msg.start} does not continue")
        if not msg.tiers or self._tiers_received + len(msg.tiers) > self.users:
            raise ProtocolError(f"more tier assignments than the {self.users} users")
        self._received.append(msg.tiers)
        self._tiers_received += len(msg.tiers)
        if self._tiers_received == self.users:
            await self._finish()

    async def _finish(self) -> None:
        assert self._order is not None
        by_position = np.frombuffer(b"".join(self._received), dtype=np.uint8)
        sizes = tier_sizes(self.users, self.tiers)
        counts = np.bincount(by_position, minlength=len(self.tiers) + 1)
        if len(counts) > len(self.tiers) + 1 or list(np.cumsum(counts[1:])) != sizes:
            raise ProtocolError("the brand's tier assignments do not fit the job's tiers")
        tier_of_user = np.empty(self.users, dtype=np.uint8)
        tier_of_user[self._order] = by_position
        self.result = ScoredTiers(self.tiers, tier_of_user, tuple(sizes))
        self.round = ScoreRound.PACKAGE
        self.progress.update(phase="writing")
        await asyncio.to_thread(self._write_package, self.result)
        self.put(PackageSummary(scored=self.users, tier_sizes=tuple(sizes)))
