"""The anonymous numbering's keyed permutation, and the rows read back in position order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cleanroom.federated.attribution.numbering import ROUNDS, KeyedPermutation
from cleanroom.matching.semijoin import PositionedRows


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 1000, 4097, 70_001])
def test_a_keyed_permutation_permutes_its_domain(size: int) -> None:
    perm = KeyedPermutation(bytes(range(16)), size)
    assert sorted(perm(np.arange(size)).tolist()) == list(range(size))


def reference(key: bytes, size: int, value: int) -> int:
    """The same network one value at a time, written from its definition: halves of
    ceil(bits / 2) bits, round r's input block (size << 8 | r, right half) as two
    little-endian 64-bit words, the first output word masked to a half; walk the cycle
    until the value is back in the domain."""
    half = (max(2, (size - 1).bit_length()) + 1) // 2
    mask = (1 << half) - 1
    aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    while True:
        left, right = value >> half, value & mask
        for r in range(ROUNDS):
            block = ((size << 8) | r).to_bytes(8, "little") + right.to_bytes(8, "little")
            f = int.from_bytes(aes.update(block)[:8], "little") & mask
            left, right = right, left ^ f
        value = (left << half) | right
        if value < size:
            return value


@pytest.mark.parametrize("size", [7, 100, 1 << 20, 1 << 32])
def test_the_vectorised_network_is_the_network_one_value_at_a_time(size: int) -> None:
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    values = np.random.default_rng(size).integers(0, size, 300)
    got = KeyedPermutation(key, size)(values)
    assert got.tolist() == [reference(key, size, int(v)) for v in values]


def test_the_key_and_the_domain_pick_the_permutation() -> None:
    x = np.arange(1000)
    a = KeyedPermutation(bytes(16), 1000)(x)
    assert a.tolist() == KeyedPermutation(bytes(16), 1000)(x).tolist()
    assert a.tolist() != KeyedPermutation(bytes(15) + b"\x01", 1000)(x).tolist()
    assert a.tolist() != KeyedPermutation(bytes(16), 1001)(x).tolist()
    # Seeded: the same generator state draws the same key.
    one = KeyedPermutation.random(np.random.default_rng(5), 1000)(x)
    assert one.tolist() == KeyedPermutation.random(np.random.default_rng(5), 1000)(x).tolist()
    # Shapes are kept; the empty array maps to itself.
    assert KeyedPermutation(bytes(16), 10)(np.zeros((2, 3), dtype=np.int64)).shape == (2, 3)
    assert KeyedPermutation(bytes(16), 0)(np.empty(0, dtype=np.int64)).tolist() == []


def test_values_outside_the_domain_and_bad_keys_are_refused() -> None:
    perm = KeyedPermutation(bytes(16), 10)
    with pytest.raises(ValueError, match="outside"):
        perm(np.array([10]))
    with pytest.raises(ValueError, match="outside"):
        perm(np.array([-1]))
    with pytest.raises(ValueError, match="16 bytes"):
        KeyedPermutation(bytes(8), 10)
    with pytest.raises(ValueError, match="domain"):
        KeyedPermutation(bytes(16), 1 << 57)


@pytest.mark.parametrize("memory_bytes", [None, 0], ids=["in-memory", "in-files"])
def test_positioned_rows_come_back_in_position_order(
    tmp_path: Path, memory_bytes: int | None
) -> None:
    rng = np.random.default_rng(3)
    count, width = 5_000, 9
    rows = rng.integers(0, 256, (count, width), dtype=np.uint8)
    store = PositionedRows(width, count, memory_bytes=memory_bytes, spill_dir=tmp_path)
    assert store.on_disk is (memory_bytes == 0)
    order = rng.permutation(count)
    for at in range(0, count, 777):
        idx = order[at : at + 777]
        store.put(idx, rows[idx])
    chunks = list(store.chunks(1000))
    assert [len(c) for c in chunks] == [1000 * width] * 5
    assert b"".join(chunks) == rows.tobytes()
    store.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="removed"):
        list(store.chunks(10))


def test_a_position_missing_or_put_twice_is_an_error(tmp_path: Path) -> None:
    one = np.zeros((1, 2), dtype=np.uint8)
    missing = PositionedRows(2, 3, memory_bytes=0, spill_dir=tmp_path)
    missing.put(np.array([0]), one)
    missing.put(np.array([2]), one)
    with pytest.raises(ValueError, match="missing or repeated"):
        list(missing.chunks(10))
    twice = PositionedRows(2, 3)
    twice.put(np.array([0, 1, 1]), np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="missing or repeated"):
        list(twice.chunks(10))
    short = PositionedRows(2, 3)
    short.put(np.array([0, 1]), np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="2 of 3 positions"):
        list(short.chunks(10))
    with pytest.raises(ValueError, match="outside"):
        short.put(np.array([3]), one)
    missing.close()
