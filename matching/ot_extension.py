"""Vectorized primitives of KKRT16 OT-extension PSI (``cleanroom.matching.kkrt``).

Kolesnikov, Kumaresan, Rosulek, Trieu, "Efficient Batched Oblivious PRF with
Applications to Private Set Intersection" (CCS 2016). Everything here works
on whole numpy arrays and AES through ``cryptography``: per element a handful
of AES blocks instead of a curve operation.

Layouts. A bit matrix is a ``uint8`` array of shape ``(rows, cols / 8)``: bit
``(r, c)`` is bit ``c % 8`` (least significant first) of byte ``[r, c // 8]``.
The OT extension makes its matrices column by column (one column per base
OT), the OPRF needs them row by row (one row per bin): :func:`transpose`
turns one into the other. A row of the extension is ``WIDTH`` = 512 bits,
four AES blocks, kept *block-major* as ``(4, n, 16)`` so that every AES call
runs on one contiguous buffer.

Nothing here draws randomness: keys and seeds come in from the protocol
(``secrets``/``os.urandom`` there), which keeps every function a known-answer
test away from being checked.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cleanroom.matching.session import FALSE_POSITIVE_BITS

#: Bits per OT-extension row: the pseudorandom code's length, and the number of base OTs.
#: KKRT16 (§4, Table 2) needs ≥ 424 for 128-bit security and a 2^-40 failure at 2^24
#: items; 512 is four AES blocks.
WIDTH: Final = 512
BLOCKS: Final = WIDTH // 128
ROW_BYTES: Final = WIDTH // 8
BLOCK: Final = 16
#: Cuckoo hashing: three hash functions, no stash, ``BIN_FACTOR`` bins per item
#: (Pinkas-Schneider-Zohner 2018: e = 1.27 keeps the failure rate below 2^-40 from
#: 2^12 items up; a failure only costs a rehash with fresh keys, never a dropped item).
HASHES: Final = 3
BIN_FACTOR: Final = 1.27
BIN_ALIGN: Final = 128
MIN_BINS: Final = 256
MAX_CUCKOO_ROUNDS: Final = 1000


class CuckooFailure(RuntimeError):
    """Placement did not converge with these keys; rehash with fresh ones."""


# ------------------------------------------------------------------ AES


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(key), modes.ECB())


def aes_blocks(key: bytes, blocks: np.ndarray) -> np.ndarray:
    """AES-128 of every 16-byte row of the C-contiguous ``(n, 16)`` uint8 array."""
    # update_into wants room for one more block than it writes.
    buffer = np.empty(blocks.nbytes + BLOCK, dtype=np.uint8)
    if len(blocks):
        encryptor = _ecb(key).encryptor()
        source = np.ascontiguousarray(blocks).reshape(-1)
        written = encryptor.update_into(source.data, buffer.data)
        if written != blocks.nbytes:
            raise AssertionError("AES-ECB wrote a short buffer")
    return buffer[: blocks.nbytes].reshape(blocks.shape)


def prg(seed: bytes, offset: int, nbytes: int) -> bytes:
    """Bytes ``[offset, offset + nbytes)`` of the stream AES-128-CTR(seed) over zeros.

    The base-OT seeds expand into the extension's columns through this; ``offset`` is a
    multiple of 16 so each chunk of bins can be made on its own.
    """
    if offset % BLOCK:
        raise ValueError("PRG offsets are whole AES blocks")
    counter = (offset // BLOCK).to_bytes(BLOCK, "big")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()
    return encryptor.update(bytes(nbytes))


def expand_columns(seeds: list[bytes], offset: int, nbytes: int) -> np.ndarray:
    """``(len(seeds), nbytes)``: one PRG stream slice per seed (a column of the extension)."""
    out = np.empty((len(seeds), nbytes), dtype=np.uint8)
    for j, seed in enumerate(seeds):
        out[j] = np.frombuffer(prg(seed, offset, nbytes), dtype=np.uint8)
    return out


def derive_key(transcript: bytes, label: bytes, *indices: int) -> bytes:
    """A 128-bit key bound to the session transcript, a purpose and indices."""
    h = hashlib.sha256(b"cleanroom-kkrt-v1\x00" + label + b"\x00")
    for i in indices:
        h.update(i.to_bytes(8, "big"))
    h.update(transcript)
    return h.digest()[:BLOCK]


# ------------------------------------------------------------------ bit matrices

# Delta swaps that transpose the 8x8 bit matrix held in a uint64 whose byte r is row r
# (bit c of a byte = column c): Knuth, TAOCP 4A §7.1.3, as in Hacker's Delight §7-3.
_SWAPS: Final = (
    (np.uint64(7), np.uint64(0x00AA00AA00AA00AA)),
    (np.uint64(14), np.uint64(0x0000CCCC0000CCCC)),
    (np.uint64(28), np.uint64(0x00000000F0F0F0F0)),
)
#: Bytes of matrix transposed per step: small enough that the temporaries stay in cache.
_PIECE_BYTES: Final = 1 << 17


def _transpose_piece(matrix: np.ndarray) -> np.ndarray:
    rows, col_bytes = matrix.shape
    # A copy, always: the swaps below work in place.
    blocks = matrix.reshape(rows // 8, 8, col_bytes).transpose(0, 2, 1).copy()
    x = blocks.view("<u8").reshape(rows // 8, col_bytes)
    t = np.empty_like(x)
    for shift, mask in _SWAPS:
        np.right_shift(x, shift, out=t)
        np.bitwise_xor(t, x, out=t)
        np.bitwise_and(t, mask, out=t)
        np.bitwise_xor(x, t, out=x)
        np.left_shift(t, shift, out=t)
        np.bitwise_xor(x, t, out=x)
    return x.view(np.uint8).reshape(rows // 8, col_bytes, 8).transpose(1, 2, 0)


# The 64x64 version: row pairs (r, r + j) swap j-bit groups, for j = 32, 16, ..., 1
# (the recursive block transpose of Hacker's Delight §7-3, one uint64 per row of a block).
_SWAPS64: Final = tuple(
    (np.uint64(j), np.uint64(mask))
    for j, mask in (
        (32, 0x00000000FFFFFFFF),
        (16, 0x0000FFFF0000FFFF),
        (8, 0x00FF00FF00FF00FF),
        (4, 0x0F0F0F0F0F0F0F0F),
        (2, 0x3333333333333333),
        (1, 0x5555555555555555),
    )
)


def _transpose64_piece(words: np.ndarray) -> np.ndarray:
    """``(rows, w)`` uint64 (rows % 64 == 0) → ``(64 w, rows / 64)`` uint64, transposed.

    The blocks are laid out as 64 rows of ``blocks`` words (row i holds row i of every
    block), so each swap runs over long contiguous runs whatever its distance.
    """
    rows, width = words.shape
    groups = rows // 64
    # A copy, always: the swaps work in place.
    x = words.reshape(groups, 64, width).transpose(1, 0, 2).copy().reshape(64, groups * width)
    for shift, mask in _SWAPS64:
        j = int(shift)
        pairs = x.reshape(64 // (2 * j), 2, j, groups * width)
        a, b = pairs[:, 0], pairs[:, 1]
        t = a >> shift
        t ^= b
        t &= mask
        b ^= t
        t <<= shift
        a ^= t
    return x.reshape(64, groups, width).transpose(2, 0, 1).reshape(64 * width, groups)


def transpose(matrix: np.ndarray) -> np.ndarray:
    """The transposed bit matrix: ``(rows, cols/8)`` uint8 → ``(cols, rows/8)``.

    ``rows`` must be a multiple of 8. Where both sides are multiples of 64 (every matrix
    of the protocol), 64x64 blocks are transposed with one uint64 per block row, whole
    rows of words at a time; otherwise 8x8 blocks, one uint64 each. Piece by piece, so
    that the passes run in cache.
    """
    rows, col_bytes = matrix.shape
    if rows % 8:
        raise ValueError("the row count of a bit matrix to transpose must be a multiple of 8")
    if rows % 64 or col_bytes % 8:
        return _transpose8(matrix)
    words = np.ascontiguousarray(matrix).view("<u8")
    width = col_bytes // 8
    out = np.empty((col_bytes * 8, rows // 64), dtype="<u8")
    if rows >= 8 * col_bytes:  # tall: pieces of rows
        step = max(64, _PIECE_BYTES // col_bytes // 64 * 64)
        for a in range(0, rows, step):
            b = min(rows, a + step)
            out[:, a // 64 : b // 64] = _transpose64_piece(words[a:b])
    else:  # wide: pieces of columns
        step = max(1, 4 * _PIECE_BYTES // (rows * 8))
        for a in range(0, width, step):
            b = min(width, a + step)
            out[64 * a : 64 * b] = _transpose64_piece(words[:, a:b])
    return out.view(np.uint8)


def _transpose8(matrix: np.ndarray) -> np.ndarray:
    rows, col_bytes = matrix.shape
    out = np.empty((col_bytes * 8, rows // 8), dtype=np.uint8)
    if rows >= 8 * col_bytes:  # tall: pieces of rows
        step = max(8, _PIECE_BYTES // max(1, col_bytes) // 8 * 8)
        for a in range(0, rows, step):
            b = min(rows, a + step)
            out[:, a // 8 : b // 8] = _transpose_piece(matrix[a:b]).reshape(-1, (b - a) // 8)
    else:  # wide: pieces of columns
        step = max(1, _PIECE_BYTES // rows)
        for a in range(0, col_bytes, step):
            b = min(col_bytes, a + step)
            out[8 * a : 8 * b] = _transpose_piece(matrix[:, a:b]).reshape(-1, rows // 8)
    return out


def transpose_reference(matrix: np.ndarray) -> np.ndarray:
    """Bit by bit, for tests: the same answer as :func:`transpose`, slowly."""
    bits = np.unpackbits(matrix, axis=1, bitorder="little")
    return np.packbits(bits.T, axis=1, bitorder="little")


# ------------------------------------------------------------------ items and bins


def bin_count(items: int) -> int:
    """Bins for ``items`` receiver items: what the sender also checks the receiver declared."""
    wanted = max(MIN_BINS, math.ceil(BIN_FACTOR * items))
    return -(-wanted // BIN_ALIGN) * BIN_ALIGN


def item_blocks(id_type: str, digests: np.ndarray) -> np.ndarray:
    """One 128-bit block per ``(type, digest)`` item: ``d[:16] ⊕ AES_Kt(d[16:])``.

    Digests are SHA-256 outputs, so the blocks are uniform and distinct pairs collide
    with probability 2^-128 each; the fixed per-type key keeps equal digests of two
    identifier types apart. A crafted collision would only make a party claim an item
    it could have included anyway. The blocks never leave the process.
    """
    d = np.ascontiguousarray(digests, dtype=np.uint8).reshape(-1, 32)
    key = hashlib.sha256(b"cleanroom-kkrt-item-v1\x00" + id_type.encode()).digest()[:BLOCK]
    return d[:, :BLOCK] ^ aes_blocks(key, np.ascontiguousarray(d[:, BLOCK:]))


def cuckoo_positions(key: bytes, items: np.ndarray, bins: int) -> np.ndarray:
    """``(n, 3)`` int64: each item's bin under each of the three hash functions."""
    words = aes_blocks(key, items).view("<u4").reshape(-1, 4)[:, :HASHES].astype(np.int64)
    # 32-bit words reduced mod bins: the bias (bins / 2^32) only skews the load slightly.
    return words % bins


def cuckoo_place(positions: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Place every item (distinct rows of ``positions``) in its own bin.

    Returns ``(table, choice)``: ``table[b]`` is the item in bin ``b`` or -1, ``choice[i]``
    which hash function placed item ``i``. All homeless items move at once each round:
    each tries its next hash function, one claimant per bin wins (the last write), and
    whoever it evicts becomes homeless. Raises ``CuckooFailure`` when it does not settle.
    """
    n = len(positions)
    table = np.full(bins, -1, dtype=np.int64)
    choice = np.zeros(n, dtype=np.int8)
    homeless = np.arange(n, dtype=np.int64)
    for _ in range(MAX_CUCKOO_ROUNDS):
        if len(homeless) == 0:
            return table, choice
        where = positions[homeless, choice[homeless]]
        evicted = table[where]
        table[where] = homeless
        won = table[where] == homeless
        # A bin claimed twice in this round evicts its old occupant once.
        evicted = np.unique(evicted[won & (evicted >= 0)])
        lost = homeless[~won]
        homeless = np.concatenate([lost, evicted])
        choice[homeless] = (choice[homeless] + 1) % HASHES
    raise CuckooFailure(f"cuckoo hashing of {n} items into {bins} bins did not settle")


# ------------------------------------------------------------------ code and hash


def code_words(
    keys: Sequence[bytes], offsets: np.ndarray, items: np.ndarray, hash_index: np.ndarray
) -> np.ndarray:
    """The pseudorandom code (KKRT16 §3) of ``(item, hash function h)``: ``(4, n, 16)``,
    block j = AES_{k_j}(item ⊕ offsets[h]).

    The hash function is part of the input so that an item placed by ``h1`` and the
    sender's value for ``h2`` do not agree; the three 128-bit offsets come from the
    session transcript, so two items whose blocks differ by the difference of two
    offsets (the only inputs that would share a codeword) cannot be prepared. Both
    parties derive keys and offsets from the transcript, which the sender's nonce is
    part of, so the receiver cannot choose the code its items are encoded with.
    """
    tweaked = items ^ offsets[hash_index]
    out = np.empty((BLOCKS, len(items), BLOCK), dtype=np.uint8)
    for j, key in enumerate(keys):
        out[j] = aes_blocks(key, tweaked)
    return out


def tweaks(bins: np.ndarray, hash_index: np.ndarray | int) -> np.ndarray:
    """``(n, 16)``: bin number (64 bits, little-endian) and hash index, per value."""
    out = np.zeros((len(bins), BLOCK), dtype=np.uint8)
    out[:, :8] = bins.astype("<u8").reshape(-1, 1).view(np.uint8)
    out[:, 8] = hash_index
    return out


def row_hash(key: bytes, rows: np.ndarray, tweak: np.ndarray, length: int) -> np.ndarray:
    """The OPRF output ``H(tweak, row)``, ``(n, length)`` bytes, from fixed-key AES.

    With ``f(x) = π(x) ⊕ x`` (π = AES under the session's hash key):
    ``c = f(row_0 ⊕ tweak)``, then ``c = f(c ⊕ row_j)`` for the next three blocks, and
    the output is ``c`` truncated to ``length`` ≤ 16 bytes.

    Why this shape. KKRT16 needs ``H`` correlation robust for inputs
    ``t ⊕ (Δ ∧ s)``: unpredictable while the ≥ 128 bits of the secret ``s`` under the
    code distance ``Δ`` are unknown. libOTe's AES variant (not its default, which is
    BLAKE2) XORs ``f`` of the four blocks: the blocks then separate, and a
    meet-in-the-middle guesses two halves of those bits independently (2^(d/2) work).
    Here every block enters ``π`` only after the previous blocks' unknown bits went
    through it, and the feed-forward plus truncation stop anyone from running the chain
    backwards from an output, so checking a guess costs the whole chain: in the ideal
    permutation model the adversary needs about 2^d queries, the bound of a random
    oracle. The tweak (bin and hash index) separates the values of different bins
    (Guo-Katz-Wang-Yu 2020's tweakable correlation robustness); the key separates
    sessions.
    """
    if not 1 <= length <= BLOCK:
        raise ValueError("OPRF outputs are 1..16 bytes")
    c = np.bitwise_xor(rows[0], tweak)
    for j in range(BLOCKS):
        if j:
            np.bitwise_xor(c, rows[j], out=c)
        np.bitwise_xor(aes_blocks(key, c), c, out=c)
    return np.ascontiguousarray(c[:, :length])


def value_length(bins: int, sender_items: int) -> int:
    """Bytes per OPRF value: ≥ 40 + log2(bins · 3 · |S|) bits, so that no receiver value
    equals any of the sender's 3|S| values by chance, except with probability 2^-40."""
    bits = FALSE_POSITIVE_BITS + math.log2(max(1, bins) * HASHES * max(1, sender_items))
    length = max(8, math.ceil(bits / 8))  # lookups index the first 8 bytes
    if length > BLOCK:
        raise ValueError(f"sets of {bins} bins and {sender_items} items need over 128-bit values")
    return length


def block_major(rows: np.ndarray) -> np.ndarray:
    """``(n, 64)`` rows → ``(4, n, 16)`` blocks (a copy)."""
    return rows.reshape(-1, BLOCKS, BLOCK).transpose(1, 0, 2).copy()  # always a (writable) copy
