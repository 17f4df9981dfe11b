"""KKRT16 OT-extension PSI for MATCH: the partner learns its matched rows.

Receiver R = the partner, sender S = the brand node (B = 512 base OTs, m bins,
three hash functions h0..h2; primitives in ``cleanroom.matching.ot_extension``,
base OTs in ``cleanroom.matching.base_ot``). Round by round:

``HELLO``     R hashes its distinct items into m = bin_count(n) cuckoo bins with
              fresh keys (rehashing with fresh ones if placement fails) and opens
              with its sizes, m, the cuckoo key, a nonce and the base-OT sender's
              point A. S checks m against the declared size and answers
              ``Accepted`` with |S|, the value length, its nonce and B base-OT
              receiver points, one per bit of its secret s.
``EXCHANGE``  R streams the extension's correction columns U (B x m bits) in
              chunks of bins, in order; S turns each chunk into rows
              q_b = t_b ⊕ (s ∧ C(x_b)) and refuses any bin beyond m.
``VALUES``    S sends H(b, h, q_b ⊕ (s ∧ C_h(y))) for every item y and every h
              (b = h(y)): 3|S| values in one uniformly random order, sent only
              after every row exists, so their order says nothing about bins or
              hash functions. R holds H(b, h_x, t_b) for its item x in bin b
              and flags x when that value arrives.
``DONE``      after R's ``Finish`` (which may carry its count), S sends ``Result``.

What each party learns is DESIGN.md §13's row for ``match``: R its matched
items and |S|; S the declared sizes (m bins) and, if R reports it, the count.
R gets exactly one OPRF evaluation per bin, whatever it puts in U, so a
deviating R learns at most m ≈ 1.27 x its declared items' membership bits.

A KKRT session is not resumable: its base-OT secrets live only in the two
processes, and a partner whose stream drops starts a fresh session with fresh
keys (the node answers a resumption with NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from cleanroom.audiences.upload import DIGEST_LEN
from cleanroom.matching import ot_extension as ox
from cleanroom.matching.base_ot import POINT_BYTES, OtSender
from cleanroom.matching.base_ot import receive as receive_base_ots
from cleanroom.matching.brand import MAX_SLOTS_PER_RECORD, BrandOutcome
from cleanroom.matching.bulk import ThreadSteps, whole
from cleanroom.matching.messages import (
    Accepted,
    BrandMessage,
    ColumnChunk,
    Finish,
    Hello,
    PartnerMessage,
    Protocol,
    PsiMethod,
    Result,
    ValueChunk,
)
from cleanroom.matching.partner import MatchOutcome, PartnerProgress, PartnerSet, match_outcome
from cleanroom.matching.semijoin import MEMORY_BYTES, Buckets, SemiJoin, Shuffle, spill_directory
from cleanroom.matching.session import Round, RoundMachine, to_thread_owned
from cleanroom.matching.workers import CryptoPool
from cleanroom.proto.errors import ProtocolError

#: Bins per ``ColumnChunk``: B x 32768 bits = 2 MiB a message.
CHUNK_BINS: Final = 32768
#: Sender values per ``ValueChunk``.
VALUE_BATCH: Final = 65536
NONCE_BYTES: Final = 16
MAX_CUCKOO_ATTEMPTS: Final = 16
#: Identifiers one side may bring to a session (item indices are 32-bit); both sides
#: queue at most ``OUTBOX_LIMIT`` messages.
MAX_ITEMS: Final = 100_000_000
OUTBOX_LIMIT: Final = 16
#: Items whose cuckoo bins the brand computes at a time.
POSITION_SLICE: Final = 1 << 20
#: Bins whose rows the brand holds at a time (64 MiB); a multiple of ``CHUNK_BINS``.
RANGE_BINS: Final = 1 << 20
#: An (item, hash function) filed under the range of its bin.
ENTRY: Final = np.dtype([("block", "u1", (16,)), ("bin", "<u4"), ("hash", "u1")])


def _secure_generator(random_bytes: Callable[[int], bytes]) -> np.random.Generator:
    """numpy's generator for shuffles only, seeded with 256 bits from the CSPRNG.

    PCG64 is not a cryptographic generator; it is used for permutations of
    values that are already pseudorandom, never for keys, seeds or choices.
    """
    return np.random.Generator(np.random.PCG64(int.from_bytes(random_bytes(32), "big")))


@dataclass(frozen=True)
class SessionKeys:
    """Everything both parties derive from the transcript (public within the session)."""

    code: tuple[bytes, ...]  # the code's four AES keys
    offsets: np.ndarray  # (3, 16): the code's input offset per hash function
    hash: bytes
    value_len: int


def _context(session_id: str, partner_nonce: bytes, brand_nonce: bytes) -> bytes:
    return b"cleanroom-kkrt-v1\x00" + session_id.encode() + b"\x00" + partner_nonce + brand_nonce


def derive_session_keys(
    context: bytes, hello: Hello, ot_points: bytes, brand_items: int
) -> SessionKeys:
    h = hashlib.sha256(context)
    for part in (hello.ot_point, ot_points, hello.cuckoo_key):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    h.update(hello.bins.to_bytes(8, "big"))
    h.update(brand_items.to_bytes(8, "big"))
    transcript = h.digest()
    code = tuple(ox.derive_key(transcript, b"code", j) for j in range(ox.BLOCKS))
    offsets = np.frombuffer(
        b"".join(ox.derive_key(transcript, b"code-offset", f) for f in range(ox.HASHES)),
        dtype=np.uint8,
    ).reshape(ox.HASHES, ox.BLOCK)
    return SessionKeys(
        code=code,
        offsets=offsets,
        hash=ox.derive_key(transcript, b"hash"),
        value_len=ox.value_length(hello.bins, brand_items),
    )


class _Columns:
    """The PRG streams of a set of seeds, read chunk after chunk (AES-CTR, one context each)."""

    def __init__(self, seeds: Sequence[bytes]) -> None:
        self._contexts: list[CipherContext] = [
            Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor() for seed in seeds
        ]
        self._zeros = np.zeros(0, dtype=np.uint8)

    def next(self, nbytes: int) -> np.ndarray:
        if len(self._zeros) < nbytes + ox.BLOCK:
            self._zeros = np.zeros(nbytes + ox.BLOCK, dtype=np.uint8)
        out = np.empty((len(self._contexts), nbytes + ox.BLOCK), dtype=np.uint8)
        source = self._zeros[:nbytes].data
        for j, ctx in enumerate(self._contexts):
            ctx.update_into(source, out[j].data)
        return out[:, :nbytes]


def chunk_count(bins: int) -> int:
    return -(-bins // CHUNK_BINS)


def _chunk_bounds(bins: int, seq: int) -> tuple[int, int]:
    lo = seq * CHUNK_BINS
    return lo, min(bins, lo + CHUNK_BINS)


# ------------------------------------------------------------------ the computations


class KkrtReceiver:
    """The partner's computation: cuckoo table, base-OT sender, U columns, own values.

    ``items`` are distinct 16-byte item blocks (``ox.item_blocks``). Each chunk's own
    values H(b, h, t_b) are computed with its columns, for its occupied bins in bin
    order, so no row t_b is kept: what is held per bin is the item placed there (or -1)
    and its hash function, besides the items themselves.
    """

    def __init__(
        self, items: np.ndarray, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.items = items
        n = len(items)
        self.bins = ox.bin_count(n)
        for _ in range(MAX_CUCKOO_ATTEMPTS):
            key = random_bytes(16)
            positions = ox.cuckoo_positions(key, items, self.bins)
            try:
                table, choice = ox.cuckoo_place(positions, self.bins)
                break
            except ox.CuckooFailure:
                continue  # fresh keys; nothing is dropped
        else:
            raise RuntimeError(f"cuckoo hashing failed {MAX_CUCKOO_ATTEMPTS} times")
        del positions
        self.cuckoo_key = key
        self.nonce = random_bytes(NONCE_BYTES)
        self._bin_item = table.astype(np.int32)  # items < MAX_ITEMS < 2^31
        self._bin_hash = np.zeros(self.bins, dtype=np.int8)
        occupied = table >= 0
        self._bin_hash[occupied] = choice[table[occupied]]
        del table, choice
        # Empty bins encode a random dummy, so that their columns look like any other;
        # drawn a chunk at a time, only the empty bins' kept (in bin order).
        dummies = []
        for lo in range(0, self.bins, CHUNK_BINS):
            hi = min(self.bins, lo + CHUNK_BINS)
            drawn = np.frombuffer(random_bytes((hi - lo) * ox.BLOCK), dtype=np.uint8)
            dummies.append(drawn.reshape(hi - lo, ox.BLOCK)[~occupied[lo:hi]])
        self._dummies = np.concatenate(dummies) if dummies else np.empty((0, ox.BLOCK), np.uint8)
        starts = np.arange(0, self.bins, CHUNK_BINS)
        empty = np.add.reduceat((~occupied).astype(np.int64), starts) if self.bins else starts
        self._empty_before = np.concatenate([[0], np.cumsum(empty)]).astype(np.int64)
        del occupied
        self._ot = OtSender(random_bytes)
        self.ot_point = self._ot.message
        self.keys: SessionKeys | None = None
        self._t0: _Columns | None = None
        self._t1: _Columns | None = None
        self.next_chunk = 0

    def start(self, hello: Hello, accepted: Accepted) -> None:
        """Base-OT keys and session keys, from the brand's ``Accepted``."""
        if len(accepted.ot_points) != ox.WIDTH * POINT_BYTES:
            raise ProtocolError(
                f"Accepted carries {len(accepted.ot_points)} bytes of base-OT points;"
                f" {ox.WIDTH} points of {POINT_BYTES} bytes are needed"
            )
        if len(accepted.nonce) != NONCE_BYTES:
            raise ProtocolError(f"the brand's nonce must be {NONCE_BYTES} bytes")
        if accepted.bins != self.bins or accepted.chunk_size != CHUNK_BINS:
            raise ProtocolError("the brand node answered with other bins or chunking")
        if accepted.brand_points > MAX_ITEMS:
            raise ProtocolError(
                f"the brand declares {accepted.brand_points} identifiers; an OT-extension"
                f" session takes at most {MAX_ITEMS}"
            )
        context = _context(accepted.session_id, self.nonce, accepted.nonce)
        pairs = self._ot.keys(context, accepted.ot_points)
        self.keys = derive_session_keys(context, hello, accepted.ot_points, accepted.brand_points)
        if accepted.value_len != self.keys.value_len:
            raise ProtocolError(
                f"the brand node uses {accepted.value_len}-byte values;"
                f" {self.keys.value_len} are needed for these sizes"
            )
        self._t0 = _Columns([k0 for k0, _ in pairs])
        self._t1 = _Columns([k1 for _, k1 in pairs])

    def column_chunk(self, own: SemiJoin) -> bytes:
        """The next chunk of U = T0 ⊕ T1 ⊕ C(bins)ᵀ; the own values H(b, h, t_b) of its
        occupied bins go to ``own``'s left side, in bin order (``placed_items`` names the
        item of each)."""
        assert self.keys is not None and self._t0 is not None and self._t1 is not None
        lo, hi = _chunk_bounds(self.bins, self.next_chunk)
        nbytes = (hi - lo) // 8
        t0 = self._t0.next(nbytes)
        u = np.bitwise_xor(t0, self._t1.next(nbytes))
        placed = self._bin_item[lo:hi]
        occupied = placed >= 0
        bin_items = np.empty((hi - lo, ox.BLOCK), dtype=np.uint8)
        bin_items[occupied] = self.items[placed[occupied]]
        chunk = self.next_chunk
        bin_items[~occupied] = self._dummies[
            self._empty_before[chunk] : self._empty_before[chunk + 1]
        ]
        hashes = self._bin_hash[lo:hi]
        words = ox.code_words(self.keys.code, self.keys.offsets, bin_items, hashes)
        code_rows = words.transpose(1, 0, 2).reshape(hi - lo, ox.ROW_BYTES)
        np.bitwise_xor(u, ox.transpose(code_rows), out=u)
        rows = ox.transpose(t0)[occupied]
        if len(rows):
            bins = lo + np.flatnonzero(occupied)
            tweak = ox.tweaks(bins, hashes[occupied])
            values = ox.row_hash(self.keys.hash, ox.block_major(rows), tweak, self.keys.value_len)
            own.left.add(values.tobytes())
        self.next_chunk += 1
        return u.tobytes()

    def placed_items(self) -> np.ndarray:
        """The item of each occupied bin, in bin order: the item of each own value."""
        return self._bin_item[self._bin_item >= 0]

    @property
    def chunks(self) -> int:
        return chunk_count(self.bins)


async def _on_thread(fn: Callable[..., bytes], *args: bytes | int) -> bytes:
    """A comparison job on a thread (the partner's session runs without a pool)."""
    return await asyncio.to_thread(fn, *args)


BaseOts = Callable[[bytes, bytes, bytes, bytes], Awaitable[tuple[bytes, list[bytes]]]]


class KkrtSender:
    """The brand's computation: base-OT receiver with secret s, rows q_b, the values.

    Build it with :meth:`create`, which can run the base OTs (512 scalar multiplications
    and point additions, pure Python around them) in a worker process.

    No row is kept past its range of ``RANGE_BINS`` bins: each (item, hash function) is
    filed at construction under the range of its bin, and once a range's rows exist its
    values are computed into a random-batch ``Shuffle``, which sends them in a uniformly
    random order once every range is done. The items are read once, in batches; what is
    held is one range's rows (64 MiB): the filed entries (21 bytes each, three an item)
    and the values go to files in ``spill_dir`` past ``memory_bytes`` and are removed by
    ``close``.
    """

    def __init__(
        self,
        items: BrandItems,
        hello: Hello,
        session_id: str,
        random_bytes: Callable[[int], bytes] = os.urandom,
        *,
        base_ots: tuple[bytes, bytes, bytes, list[bytes]] | None = None,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        check_kkrt_hello(hello)
        self.item_count = items.count
        self.bins = hello.bins
        if base_ots is None:
            nonce, packed, args = _base_ot_inputs(hello, session_id, random_bytes)
            base_ots = (nonce, packed, *receive_base_ots(*args))
        self.nonce, choice_bytes_raw, self.ot_points, chosen = base_ots
        choice_bytes = np.frombuffer(choice_bytes_raw, dtype=np.uint8)
        choices = np.unpackbits(choice_bytes, bitorder="little")
        context = _context(session_id, hello.nonce, self.nonce)
        self.keys = derive_session_keys(context, hello, self.ot_points, items.count)
        self._q = _Columns(chosen)
        self._mask = np.where(choices == 1, 0xFF, 0).astype(np.uint8).reshape(-1, 1)
        self._s = ox.block_major(choice_bytes.reshape(1, ox.ROW_BYTES))  # (4, 1, 16)
        self.next_chunk = 0
        self._random_bytes = random_bytes
        ranges = -(-self.bins // RANGE_BINS)
        limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        entries = ox.HASHES * items.count
        bits = max(0, (ranges - 1).bit_length())
        # close() may come from the event loop while a thread computes a range or reads
        # values: the files then go when that thread is done.
        self._steps = ThreadSteps(self._remove)
        self._dir: Path | None = None
        self._values: Shuffle | None = None
        if entries * ENTRY.itemsize < limit:
            self._entries = Buckets.in_memory(ENTRY.itemsize, positioned=False, bits=bits)
        else:
            self._dir = spill_directory(spill_dir, "kkrt-")
            self._entries = Buckets(ENTRY.itemsize, bits, self._dir, positioned=False, name="bin")
        try:
            self._file_entries(items, hello.cuckoo_key)
            self._values = Shuffle(
                self.keys.value_len,
                entries,
                _secure_generator(random_bytes),
                memory_bytes=memory_bytes,
                spill_dir=spill_dir,
            )
            self._rows = np.empty((min(self.bins, RANGE_BINS), ox.ROW_BYTES), dtype=np.uint8)
        except BaseException:
            self.close()
            raise

    def _file_entries(self, items: BrandItems, cuckoo_key: bytes) -> None:
        """Every (item, hash function, bin) under its bin's range, a slice of items at a
        time (the 24-byte int64 positions are never held for the whole set)."""
        read = 0
        for batch in items.batches():
            for lo in range(0, len(batch), POSITION_SLICE):
                part = batch[lo : lo + POSITION_SLICE]
                positions = ox.cuckoo_positions(cuckoo_key, part, self.bins)
                entry = np.empty(positions.shape, dtype=ENTRY)
                entry["block"] = part[:, None, :]
                entry["bin"] = positions
                entry["hash"] = np.arange(ox.HASHES, dtype=np.uint8)[None, :]
                which = positions.reshape(-1) // RANGE_BINS
                self._entries.add(entry.reshape(-1).tobytes(), which)
            read += len(batch)
        if read != items.count:
            raise RuntimeError(f"the audience holds {read} items, not {items.count}")
        self._entries.close()

    @classmethod
    async def create(
        cls,
        items: BrandItems,
        hello: Hello,
        session_id: str,
        random_bytes: Callable[[int], bytes] = os.urandom,
        run: BaseOts | None = None,
        *,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> KkrtSender:
        """The sender, its base OTs through ``run`` (e.g. a worker pool's) if given; the
        randomness is drawn here either way, so injected randomness still decides it."""
        check_kkrt_hello(hello)
        nonce, choices, args = _base_ot_inputs(hello, session_id, random_bytes)
        if run is None:
            message, chosen = await asyncio.to_thread(receive_base_ots, *args)
        else:
            message, chosen = await run(*args)

        def build() -> KkrtSender:
            return cls(
                items,
                hello,
                session_id,
                random_bytes,
                base_ots=(nonce, choices, message, chosen),
                spill_dir=spill_dir,
                memory_bytes=memory_bytes,
            )

        return await to_thread_owned(build, KkrtSender.close)

    @property
    def chunks(self) -> int:
        return chunk_count(self.bins)

    def on_columns(self, chunk: ColumnChunk) -> None:
        """Rows q_b for the chunk's bins, and the values of a range once its rows are all
        there; ``ProtocolError`` for a wrong chunk."""
        if chunk.seq != self.next_chunk:
            raise ProtocolError(
                f"column chunk {chunk.seq} arrived; chunk {self.next_chunk} was due"
            )
        if chunk.seq >= self.chunks:
            raise ProtocolError(
                f"column chunk {chunk.seq} is past the {self.bins} bins the partner declared"
            )
        lo, hi = _chunk_bounds(self.bins, chunk.seq)
        nbytes = (hi - lo) // 8
        if len(chunk.columns) != ox.WIDTH * nbytes:
            raise ProtocolError(
                f"column chunk {chunk.seq} has {len(chunk.columns)} bytes;"
                f" {ox.WIDTH} columns of {nbytes} bytes are due"
            )
        u = np.frombuffer(chunk.columns, dtype=np.uint8).reshape(ox.WIDTH, nbytes)
        q = np.bitwise_xor(self._q.next(nbytes), u & self._mask)
        start = lo // RANGE_BINS * RANGE_BINS
        self._rows[lo - start : hi - start] = ox.transpose(q)
        self.next_chunk += 1
        if hi == self.bins or hi % RANGE_BINS == 0:
            with self._steps.step():
                self._range_values(lo // RANGE_BINS, start)

    def _range_values(self, r: int, start: int) -> None:
        """The values of every (item, hash function) whose bin is in range ``r``, its
        entries read ``VALUE_BATCH`` at a time."""
        assert self._values is not None
        for packed in self._entries.bucket_slices(r, VALUE_BATCH):
            part = np.frombuffer(packed, dtype=ENTRY)
            bins = part["bin"].astype(np.int64)
            hash_index = part["hash"].astype(np.int8)
            rows = ox.block_major(self._rows[bins - start])
            blocks = np.ascontiguousarray(part["block"])
            code = ox.code_words(self.keys.code, self.keys.offsets, blocks, hash_index)
            np.bitwise_and(code, self._s, out=code)
            np.bitwise_xor(rows, code, out=rows)
            tweak = ox.tweaks(bins, hash_index)
            self._values.add(
                ox.row_hash(self.keys.hash, rows, tweak, self.keys.value_len).tobytes()
            )

    @property
    def value_count(self) -> int:
        return ox.HASHES * self.item_count

    def values(self, batch: int = VALUE_BATCH) -> Iterator[bytes]:
        """Every item's value under every hash function, all in one uniformly random
        order, so that neither bins nor hash functions can be told from it."""
        if self.next_chunk != self.chunks:
            raise ProtocolError("the values need every column chunk first")
        assert self._values is not None
        self._rows = np.empty((0, ox.ROW_BYTES), dtype=np.uint8)  # no longer needed
        chunks = self._values.chunks(batch)
        while True:
            with self._steps.step():
                values = next(chunks, None)
            if values is None:
                return
            yield values

    def close(self) -> None:
        """Remove the filed entries and the values (idempotent; once a running step is
        done, if one is)."""
        self._steps.close()

    def _remove(self) -> None:
        if self._values is not None:
            self._values.close()
        self._entries.removed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _base_ot_inputs(
    hello: Hello, session_id: str, random_bytes: Callable[[int], bytes]
) -> tuple[bytes, bytes, tuple[bytes, bytes, bytes, bytes]]:
    """The sender's nonce, its 512 choice bits s (packed), and the arguments of
    ``base_ot.receive`` (the partner's point, s one bit a byte, the context, the secrets)."""
    nonce = random_bytes(NONCE_BYTES)
    choices = random_bytes(ox.ROW_BYTES)
    secrets = random_bytes(32 * ox.WIDTH)
    bits = np.unpackbits(np.frombuffer(choices, dtype=np.uint8), bitorder="little").tobytes()
    context = _context(session_id, hello.nonce, nonce)
    return nonce, choices, (hello.ot_point, bits, context, secrets)


def check_kkrt_hello(hello: Hello) -> None:
    """ProtocolError unless the hello is a well-formed KKRT opening."""
    if hello.protocol is not Protocol.MATCH:
        raise ProtocolError("OT-extension PSI runs MATCH only; overlap stays ECDH")
    if len(hello.ot_point) != POINT_BYTES:
        raise ProtocolError(f"the base-OT point must be {POINT_BYTES} bytes (u ‖ v)")
    if len(hello.cuckoo_key) != 16 or len(hello.nonce) != NONCE_BYTES:
        raise ProtocolError("the cuckoo key and the nonce must be 16 bytes each")
    if hello.declared_points > MAX_ITEMS:
        raise ProtocolError(
            f"{hello.declared_points} identifiers declared; an OT-extension session takes at"
            f" most {MAX_ITEMS} (split the file, or match with --protocol ecdh)"
        )
    if hello.declared_points > hello.declared_records * MAX_SLOTS_PER_RECORD:
        raise ProtocolError(
            f"{hello.declared_points} items for {hello.declared_records} records is more than"
            f" {MAX_SLOTS_PER_RECORD} identifiers per record"
        )
    expected = ox.bin_count(hello.declared_points)
    if hello.bins != expected:
        raise ProtocolError(
            f"{hello.bins} bins declared for {hello.declared_points} items; exactly {expected}"
            " are allowed (one OPRF evaluation per bin)"
        )


# ------------------------------------------------------------------ partner items


@dataclass(frozen=True)
class PartnerItems:
    """The partner's distinct item blocks and, per column entry, which one it is."""

    blocks: np.ndarray  # (n, 16) distinct
    inverse: np.ndarray  # entry (columns concatenated) -> block index


def partner_items(data: PartnerSet, chunk: int = 1 << 16) -> PartnerItems:
    # Column by slice: a file-backed column is never read whole, only its 16-byte blocks.
    step = chunk * DIGEST_LEN
    parts = [
        ox.item_blocks(c.id_type, np.frombuffer(c.digests[i : i + step], dtype=np.uint8))
        for c in data.columns
        for i in range(0, len(c.digests), step)
    ]
    if not parts:
        return PartnerItems(np.empty((0, 16), np.uint8), np.empty(0, np.int64))
    joined = np.ascontiguousarray(np.concatenate(parts)).view("S16").ravel()
    distinct, inverse = np.unique(joined, return_inverse=True)
    blocks = np.frombuffer(distinct.tobytes(), dtype=np.uint8).reshape(-1, 16)
    return PartnerItems(blocks, inverse.astype(np.int64))


@dataclass(frozen=True)
class BrandItems:
    """The brand's item blocks (``(k, 16)`` uint8 batches), read in batches: the sender
    reads them once and never holds them whole."""

    count: int
    batches: Callable[[], Iterator[np.ndarray]]

    @classmethod
    def of(cls, blocks: np.ndarray) -> BrandItems:
        return cls(len(blocks), lambda: iter([blocks]))


def brand_items(id_types: Sequence[str], digests: Sequence[np.ndarray]) -> np.ndarray:
    """The audience's item blocks (its digests are distinct per type already)."""
    parts = [ox.item_blocks(t, d) for t, d in zip(id_types, digests, strict=True) if len(d)]
    if not parts:
        return np.empty((0, 16), np.uint8)
    return np.ascontiguousarray(np.concatenate(parts))


# ------------------------------------------------------------------ state machines


class KkrtBrandSession(RoundMachine[Round]):
    """One KKRT session on the brand node; the same surface as ``BrandSession``."""

    def __init__(
        self,
        *,
        session_id: str,
        hello: Hello,
        items: np.ndarray | BrandItems,
        random_bytes: Callable[[int], bytes] = os.urandom,
        pool: CryptoPool | None = None,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        """``spill_dir``, ``memory_bytes``: where and past what size the sender's filed
        entries and values go to files (``KkrtSender``); ``close`` removes them."""
        check_kkrt_hello(hello)
        super().__init__(Round.HELLO, None)
        self._pool = pool
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        self._closed = False
        self.session_id = session_id
        self.hello = hello
        self.protocol = hello.protocol
        self._items = items if isinstance(items, BrandItems) else BrandItems.of(items)
        self._random_bytes = random_bytes
        self._sender: KkrtSender | None = None
        self._accepted: Accepted | None = None
        self._values_made = 0
        self.result: Result | None = None

    async def prepare(self) -> None:
        """The base OTs and the brand's positions (CPU work, off the event loop)."""
        pool = self._pool
        run: BaseOts | None = None
        if pool is not None:

            async def run(*args: bytes) -> tuple[bytes, list[bytes]]:
                # Their result is keys: never a cluster's (spillable) data.
                return await pool.run_private(receive_base_ots, *args)

        self._sender = await KkrtSender.create(
            self._items,
            self.hello,
            self.session_id,
            self._random_bytes,
            run,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        if self._closed:  # closed while it was being built: its files go now
            self._sender.close()

    def close(self) -> None:
        super().close()
        self._closed = True
        if self._sender is not None:
            self._sender.close()

    def start(self) -> Accepted:
        if self.round is not Round.HELLO or self._sender is None:
            raise ProtocolError(f"session {self.session_id} already started")
        sender = self._sender
        self._accepted = Accepted(
            session_id=self.session_id,
            brand_points=self._items.count,
            value_len=sender.keys.value_len,
            chunk_size=CHUNK_BINS,
            ot_points=sender.ot_points,
            nonce=sender.nonce,
            bins=sender.bins,
        )
        self.round = Round.EXCHANGE
        if sender.chunks == 0:
            self._begin_values()
        return self._accepted

    def accepted(self) -> Accepted:
        raise ProtocolError("an OT-extension session cannot be resumed; start a new one")

    def resume(self, hello: Hello) -> Accepted:
        return self.accepted()

    def outcome(self) -> BrandOutcome:
        return BrandOutcome(
            partner_records=self.hello.declared_records,
            partner_points=self.hello.declared_points,
            brand_points=self._items.count,
            intersection=self.result.intersection if self.result else None,
        )

    async def receive(self, msg: PartnerMessage) -> None:
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: PartnerMessage) -> None:
        if isinstance(msg, ColumnChunk):
            if self.round is not Round.VALUES:  # there, on_columns says it is one too many
                self.expect(Round.EXCHANGE, "a column chunk")
            assert self._sender is not None
            await asyncio.to_thread(self._sender.on_columns, msg)
            if self._sender.next_chunk == self._sender.chunks:
                self._begin_values()
        elif isinstance(msg, Finish):
            self.expect(Round.VALUES, "Finish")
            assert self._sender is not None
            if self._values_made != self._sender.value_count:
                raise ProtocolError("Finish arrived before every value was sent")
            if msg.matched_records > self.hello.declared_records:
                raise ProtocolError("the partner reports more matches than it has records")
            self.result = Result(intersection=msg.matched_records, known=msg.report_count)
            self.round = Round.DONE
            self.put(self.result)
        elif isinstance(msg, Hello):
            raise ProtocolError("Hello arrived in the middle of a session")
        else:
            raise ProtocolError(f"{type(msg).__name__} is not part of an OT-extension session")

    def _begin_values(self) -> None:
        self.round = Round.VALUES
        self.spawn(self._send_values)

    async def _send_values(self) -> None:
        assert self._sender is not None
        batches = self._sender.values()
        seq = 0
        while True:
            await self.room(OUTBOX_LIMIT)
            values = await asyncio.to_thread(next, batches, None)
            if values is None:
                return
            self._values_made += len(values) // self._sender.keys.value_len
            self.put(ValueChunk(seq=seq, values=values))
            seq += 1

    async def outgoing(
        self, values_from: int = 0, points_from: int = 0
    ) -> AsyncIterator[BrandMessage]:
        if values_from or points_from:
            raise ProtocolError("an OT-extension session cannot be resumed; start a new one")
        async for msg in self.drain(Result, forget=True):
            yield msg


class KkrtPartnerSession(RoundMachine[Round]):
    """The partner's KKRT session; the same surface as ``PartnerSession`` (MATCH)."""

    def __init__(
        self,
        *,
        audience: str,
        data: PartnerSet,
        items: PartnerItems | None = None,
        report_count: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        """``spill_dir``, ``memory_bytes``: where and past what size the comparison's
        buckets (the brand's values: 3 x its set) and the outcome's per-row column go to
        files (the system's temporary directory; ``semijoin.MEMORY_BYTES`` a side and
        ``bulk.MEMORY_BYTES``)."""
        super().__init__(Round.HELLO, None)
        self.audience = audience
        self.protocol = Protocol.MATCH
        self.data = data
        self.report_count = report_count
        self.progress = PartnerProgress()
        self.session_id = ""
        self.outcome: MatchOutcome | None = None
        self.result: Result | None = None
        self.accepted: Accepted | None = None
        self._random_bytes = random_bytes
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        self._items = items
        self._receiver: KkrtReceiver | None = None
        self._hello: Hello | None = None
        self._values_in = 0
        self._value_chunks = 0
        self._own_ready = False
        # Our values (left, bin order) against the brand's (right), by bucket; both sides
        # are filled on threads, a chunk at a time: ``close`` removes its files once no
        # such step runs.
        self._join: SemiJoin | None = None
        self._join_steps = ThreadSteps(self._close_join)
        self.finish: Finish | None = None

    async def prepare(self) -> None:
        """Items, cuckoo table and the base-OT sender (off the event loop)."""
        if self._receiver is not None:
            return
        if self._items is None:
            self._items = await asyncio.to_thread(partner_items, self.data)
        items = self._items
        self._receiver = await asyncio.to_thread(KkrtReceiver, items.blocks, self._random_bytes)
        self.progress.points_total = self._receiver.bins

    def hello(self) -> Hello:
        if self._receiver is None:
            raise RuntimeError("prepare() the session before its hello")
        if self._hello is None:
            receiver = self._receiver
            self._hello = Hello(
                audience=self.audience,
                protocol=Protocol.MATCH,
                declared_records=self.data.record_count(),
                declared_points=len(receiver.items),
                id_types=tuple(dict.fromkeys(c.id_type for c in self.data.columns if len(c.rows))),
                method=PsiMethod.KKRT,
                ot_point=receiver.ot_point,
                cuckoo_key=receiver.cuckoo_key,
                nonce=receiver.nonce,
                bins=receiver.bins,
            )
        return self._hello

    async def receive(self, msg: BrandMessage) -> None:
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: BrandMessage) -> None:
        if isinstance(msg, Accepted):
            self.expect(Round.HELLO, "Accepted")
            assert self._receiver is not None and self._hello is not None
            await asyncio.to_thread(self._receiver.start, self._hello, msg)
            self.session_id = msg.session_id
            self.accepted = msg
            self.round = Round.EXCHANGE
            self.progress.brand_total = ox.HASHES * msg.brand_points
            self._join = SemiJoin(
                msg.value_len,
                len(self._receiver.items),
                self.progress.brand_total,
                spill_dir=self._spill_dir,
                memory_bytes=self._memory_bytes,
            )
            self.spawn(self._send_columns)
        elif isinstance(msg, ValueChunk):
            if self.round not in (Round.EXCHANGE, Round.VALUES):
                raise ProtocolError(f"values arrived in round {self.round}")
            await self._on_values(msg)
            if self._values_in == self.progress.brand_total:
                await self.until(lambda: self._own_ready)
                await self._conclude()
        elif isinstance(msg, Result):
            self.expect(Round.VALUES, "Result")
            if self.finish is None:
                raise ProtocolError("Result arrived before every value")
            self.result = msg
            self.round = Round.DONE
            self._signal.notify()
        else:
            raise ProtocolError(f"{type(msg).__name__} is not part of an OT-extension session")

    async def _send_columns(self) -> None:
        receiver = self._receiver
        assert receiver is not None
        for seq in range(receiver.chunks):
            await self.room(OUTBOX_LIMIT)
            columns = await asyncio.to_thread(self._column_chunk, receiver)
            self.put(ColumnChunk(seq=seq, columns=columns))
            lo, hi = _chunk_bounds(receiver.bins, seq)
            self.progress.points_sent += hi - lo
            self.progress.update()
        self._own_ready = True
        self.round = Round.VALUES
        self._signal.notify()
        if self.progress.brand_total == 0:
            await self._conclude()

    async def _on_values(self, chunk: ValueChunk) -> None:
        assert self.accepted is not None and self._receiver is not None
        length = self.accepted.value_len
        if chunk.seq != self._value_chunks:
            raise ProtocolError(f"value chunk {chunk.seq} arrived; {self._value_chunks} was due")
        if len(chunk.values) % length or not chunk.values:
            raise ProtocolError(f"a value chunk must hold whole {length}-byte values")
        count = len(chunk.values) // length
        if self._values_in + count > self.progress.brand_total:
            raise ProtocolError("the brand node sent more values than its set has")
        # On a thread: bucketing may write files, and the event loop keeps serving.
        await asyncio.to_thread(self._add_brand_values, chunk.values)
        self._values_in += count
        self._value_chunks += 1
        self.progress.brand_done = self._values_in
        self.progress.update()

    def _column_chunk(self, receiver: KkrtReceiver) -> bytes:
        with self._join_steps.step():
            assert self._join is not None
            return receiver.column_chunk(self._join)

    def _add_brand_values(self, values: bytes) -> None:
        with self._join_steps.step():
            assert self._join is not None
            self._join.right.add(values)

    def close(self) -> None:
        super().close()
        self._join_steps.close()

    def _close_join(self) -> None:
        if self._join is not None:
            self._join.close()

    async def _conclude(self) -> None:
        items = self._items
        assert self._join is not None and items is not None and self.accepted is not None
        found = await self._join.hit_flags(_on_thread, window=2)
        if self.finished:  # failed meanwhile (its files may be gone): no outcome
            return
        self._join.close()
        assert self._receiver is not None
        matched = np.zeros(len(items.blocks), dtype=bool)  # per distinct item
        matched[self._receiver.placed_items()] = np.frombuffer(whole(found), dtype=np.bool_)
        hits = matched[items.inverse] if len(items.inverse) else np.zeros(0, bool)
        self.outcome = match_outcome(
            self.data,
            hits,
            self.accepted.brand_points,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        self.finish = Finish(
            report_count=self.report_count,
            matched_records=self.outcome.matched_records if self.report_count else 0,
        )
        self.put(self.finish)

    async def outgoing(
        self, points_from: int = 0, values_from: int = 0
    ) -> AsyncIterator[PartnerMessage]:
        async for msg in self.drain(Finish, forget=True):
            yield msg

    async def wait(self) -> None:
        await self.until(lambda: self.finished)
