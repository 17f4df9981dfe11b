"""KKRT16 OT-extension PSI, transport-free: known answers, set intersections, bad messages.

Known answers come from independent computations where one exists (AES-ECB for the
PRG and the code, a bit-by-bit transpose, the base-OT algebra) and from a golden
file for the OPRF outputs with fixed seeds (``tests/vectors/kkrt_oprf.json``:
regenerate with ``python -m tests.test_kkrt`` only when the protocol changes on
purpose, and say so in the commit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cleanroom.matching import kkrt
from cleanroom.matching import ot_extension as ox
from cleanroom.matching.base_ot import (
    POINT_BYTES,
    OtReceiver,
    OtSender,
    _lift,
    decode_point,
    encode_point,
    in_prime_subgroup,
)
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.hash_to_curve import montgomery_add
from cleanroom.matching.kkrt import (
    CHUNK_BINS,
    BrandItems,
    KkrtBrandSession,
    KkrtPartnerSession,
    KkrtReceiver,
    KkrtSender,
    brand_items,
    check_kkrt_hello,
)
from cleanroom.matching.messages import (
    Accepted,
    ColumnChunk,
    Finish,
    Hello,
    PointChunk,
    Protocol,
    PsiMethod,
    Result,
    ValueChunk,
)
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.x25519 import InvalidPointError
from cleanroom.proto.errors import ProtocolError

GOLDEN = Path(__file__).parent / "vectors" / "kkrt_oprf.json"


class drbg:
    """A deterministic stand-in for os.urandom: SHA-256 in counter mode over ``seed``."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter, self.buffer = seed, 0, b""

    def __call__(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


async def carry(source: AsyncIterator[Any], deliver: Callable[[Any], Awaitable[None]]) -> None:
    """Hand every message of one side's ``outgoing`` to the other side's ``receive``."""
    async for msg in source:
        await deliver(msg)


def digests(ids: range | list[int], tag: bytes = b"") -> np.ndarray:
    return np.frombuffer(
        b"".join(hashlib.sha256(tag + str(i).encode()).digest() for i in ids), dtype=np.uint8
    ).reshape(-1, 32)


def partner_set(ids: list[int]) -> PartnerSet:
    d = digests(ids)
    return PartnerSet(
        row_count=len(ids),
        columns=[PartnerColumn("email", np.arange(len(ids), dtype=np.int64), d.tobytes())],
    )


async def run_sessions(
    brand_ids: list[int],
    partner: PartnerSet,
    *,
    seed: bytes | None = None,
    record: list[object] | None = None,
    brand_options: dict[str, Any] | None = None,
) -> KkrtPartnerSession:
    """Both state machines in one process, every message handed across (and recorded);
    the brand's session is closed at the end."""
    brand_rng = drbg(b"brand" + seed) if seed is not None else os.urandom
    partner_rng = drbg(b"partner" + seed) if seed is not None else os.urandom
    items = brand_items(["email"], [digests(brand_ids)])
    p = KkrtPartnerSession(audience="crm", data=partner, random_bytes=partner_rng)
    await p.prepare()
    hello = p.hello()
    b = KkrtBrandSession(
        session_id="s-1", hello=hello, items=items, random_bytes=brand_rng, **(brand_options or {})
    )
    await b.prepare()
    accepted = b.start()
    log = record if record is not None else []
    log += [hello, accepted]
    await p.receive(accepted)

    async def logged(source: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for msg in source:
            log.append(msg)
            yield msg

    await asyncio.wait_for(
        asyncio.gather(
            carry(logged(p.outgoing()), b.receive), carry(logged(b.outgoing()), p.receive)
        ),
        300,
    )
    assert b.succeeded and p.succeeded
    b.close()
    return p


def match(brand_ids: list[int], partner_ids: list[int], **kw: object) -> np.ndarray:
    session = asyncio.run(run_sessions(brand_ids, partner_set(partner_ids), **kw))  # type: ignore[arg-type]
    assert session.outcome is not None
    return whole_array(session.outcome.matched_on) == 0


def expected(brand_ids: list[int], partner_ids: list[int]) -> np.ndarray:
    brand = set(brand_ids)
    return np.array([i in brand for i in partner_ids], dtype=bool)


# ------------------------------------------------------------------ primitives


@pytest.mark.parametrize(
    ("rows", "cols"),
    [(8, 8), (16, 24), (8, 4096), (4096, 8), (64, 64), (64, 512), (512, 4096), (32768, 512)],
)
def test_transpose_equals_the_bit_by_bit_reference(rows: int, cols: int) -> None:
    matrix = np.random.default_rng(rows * cols).integers(0, 256, (rows, cols // 8), np.uint8)
    before = matrix.copy()
    got = ox.transpose(matrix)
    assert np.array_equal(got, ox.transpose_reference(matrix))
    assert np.array_equal(matrix, before)  # the input is never changed in place
    assert np.array_equal(ox.transpose(got), matrix)


def test_transpose_reference_known_answer() -> None:
    matrix = np.zeros((8, 1), dtype=np.uint8)
    matrix[0, 0] = 0b10  # bit (row 0, column 1)
    matrix[3, 0] = 0b1  # bit (row 3, column 0)
    assert ox.transpose(matrix)[:, 0].tolist() == [0b1000, 0b1, 0, 0, 0, 0, 0, 0]


def test_prg_is_aes_ctr_and_chunks_agree() -> None:
    seed = bytes(range(16))
    stream = ox.prg(seed, 0, 64)
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    counters = b"".join(i.to_bytes(16, "big") for i in range(4))
    assert stream == ecb.update(counters)
    assert stream[:16].hex() == "c6a13b37878f5b826f4f8162a1c8d879"  # AES-128(0..15, 0^128)
    assert ox.prg(seed, 32, 32) == stream[32:]
    with pytest.raises(ValueError, match="whole AES blocks"):
        ox.prg(seed, 8, 16)


def test_code_is_aes_of_the_tweaked_item() -> None:
    keys = [bytes([k]) * 16 for k in range(4)]
    items = np.frombuffer(bytes(range(32)), dtype=np.uint8).reshape(2, 16).copy()
    offsets = np.frombuffer(bytes(range(100, 148)), dtype=np.uint8).reshape(3, 16)
    words = ox.code_words(keys, offsets, items, np.array([0, 2]))
    for j, key in enumerate(keys):
        ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        tweaked = bytes(
            a ^ b for a, b in zip(items.tobytes(), offsets[[0, 2]].tobytes(), strict=True)
        )
        assert words[j].tobytes() == ecb.update(tweaked)
    # a different hash function is a different codeword for the same item
    other = ox.code_words(keys, offsets, items, np.array([1, 2]))
    assert not np.array_equal(other[:, 0], words[:, 0])


def test_cuckoo_places_every_item_once_known_answer() -> None:
    items = ox.item_blocks("email", digests(range(1000)))
    bins = ox.bin_count(len(items))
    positions = ox.cuckoo_positions(bytes(16), items, bins)
    table, choice = ox.cuckoo_place(positions, bins)
    placed = table[table >= 0]
    assert sorted(placed.tolist()) == list(range(1000))
    where = {int(item): b for b, item in enumerate(table) if item >= 0}
    assert all(positions[i, choice[i]] == where[i] for i in range(1000))
    assert bins == 1280
    assert hashlib.sha256(table.tobytes()).hexdigest()[:16] == GOLDEN_VALUES()["cuckoo_table"]


def test_cuckoo_failure_is_reported_not_dropped() -> None:
    # Four items that all hash to the same two bins cannot be placed.
    positions = np.array([[0, 1, 0]] * 4, dtype=np.int64)
    with pytest.raises(ox.CuckooFailure):
        ox.cuckoo_place(positions, 8)


def test_value_length_keeps_40_bits_of_statistical_security() -> None:
    for bins, items in [(256, 1), (1_270_016, 1_000_000), (2**27, 10**8)]:
        length = ox.value_length(bins, items)
        assert 8 * length >= 40 + np.log2(bins * 3 * items)
    assert ox.value_length(1_270_016, 1_000_000) == 11


def test_row_hash_depends_on_every_block_and_the_tweak() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, (4, 5, 16), np.uint8)
    tweak = ox.tweaks(np.arange(5), 1)
    base = ox.row_hash(bytes(16), rows, tweak, 16)
    for j in range(4):
        changed = rows.copy()
        changed[j, :, 0] ^= 1
        assert not np.any(np.all(ox.row_hash(bytes(16), changed, tweak, 16) == base, axis=1))
    other = ox.row_hash(bytes(16), rows, ox.tweaks(np.arange(5), 2), 16)
    assert not np.any(np.all(other == base, axis=1))
    assert not np.any(np.all(ox.row_hash(bytes([1]) * 16, rows, tweak, 16) == base, axis=1))


# ------------------------------------------------------------------ base OTs


def test_base_ots_deliver_exactly_the_chosen_keys() -> None:
    sender = OtSender(drbg(b"ot-sender"))
    choices = [i % 3 == 0 for i in range(16)]
    receiver = OtReceiver(sender.message, [int(c) for c in choices], drbg(b"ot-receiver"))
    pairs = sender.keys(b"context", receiver.message)
    got = receiver.keys(b"context")
    assert [g == p[int(c)] for g, p, c in zip(got, pairs, choices, strict=True)] == [True] * 16
    assert all(g != p[1 - int(c)] for g, p, c in zip(got, pairs, choices, strict=True))
    # Another context (session) gives unrelated keys.
    assert not set(receiver.keys(b"other")) & set(got)
    golden = GOLDEN_VALUES()
    assert sender.message.hex() == golden["ot_sender_message"]
    assert hashlib.sha256(receiver.message).hexdigest() == golden["ot_receiver_messages"]
    assert hashlib.sha256(b"".join(a + b for a, b in pairs)).hexdigest() == golden["ot_keys"]


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda m: m[:63], "wrong length|whole number"),
        (lambda m: bytes(32) + m[32:], "low-order"),
        (lambda m: m[:32] + bytes([m[32] ^ 1]) + m[33:], r"v\^2 != u\^3"),
        (lambda m: b"\xff" * 32 + m[32:], "non-canonical"),
        (lambda m: (2).to_bytes(32, "little") + m[32:], "twist"),
    ],
)
def test_bad_base_ot_points_are_refused(mutate: Callable[[bytes], bytes], why: str) -> None:
    sender = OtSender(drbg(b"s"))
    receiver = OtReceiver(sender.message, [0, 1], drbg(b"r"))
    with pytest.raises(InvalidPointError, match=why):
        OtReceiver(mutate(sender.message), [0])
    bad = receiver.message[:POINT_BYTES] + mutate(receiver.message[POINT_BYTES:])
    with pytest.raises(InvalidPointError, match=why) as caught:
        sender.keys(b"c", bad)
    assert caught.value.index == 1 or "wrong length" in why
    with pytest.raises(InvalidPointError, match="equals the sender"):
        sender.keys(b"c", sender.message)


def test_points_are_validated_as_curve_points() -> None:
    sender = OtSender(drbg(b"v"))
    u, v = decode_point(sender.message)
    assert (v * v - (u**3 + 486662 * u * u + u)) % (2**255 - 19) == 0


# ------------------------------------------------------------------ the protocol


@pytest.mark.parametrize("seed", range(20))
def test_match_equals_the_set_intersection_for_20_seeds(seed: int) -> None:
    rng = random.Random(seed)
    brand = rng.sample(range(5000), rng.randint(1, 400))
    partner = rng.sample(range(5000), rng.randint(1, 400))
    assert np.array_equal(match(brand, partner), expected(brand, partner))


@pytest.mark.parametrize(
    ("brand", "partner"),
    [
        ([1, 2, 3], []),  # an empty partner set
        ([], [1, 2, 3]),  # an empty brand set (the node refuses one; the protocol copes)
        ([1], [1]),  # one and one, matching
        ([1], [2]),
        (list(range(100)), list(range(100, 200))),  # 0 %
        (list(range(100)), [*range(99, 198)]),  # 1 %
        (list(range(1000)), list(range(500, 1500))),  # 50 %
        (list(range(1000)), list(range(1000))),  # 100 %
        (list(range(10)), list(range(5, 3005))),  # unbalanced, small brand
        (list(range(3000)), list(range(2995, 3005))),  # unbalanced, small partner
    ],
)
def test_match_equals_the_set_intersection(brand: list[int], partner: list[int]) -> None:
    assert np.array_equal(match(brand, partner), expected(brand, partner))


def test_partner_duplicates_and_a_second_identifier_type() -> None:
    ids = [1, 2, 2, 3, 7, 7, 9]
    email = digests(ids)
    phone = digests(ids, b"phone")
    data = PartnerSet(
        row_count=len(ids),
        columns=[
            PartnerColumn("email", np.arange(len(ids)), email.tobytes()),
            PartnerColumn("phone", np.arange(len(ids)), phone.tobytes()),
        ],
    )

    async def run() -> np.ndarray:
        items = brand_items(["email", "phone"], [digests([2, 9]), digests([3, 7], b"phone")])
        p = KkrtPartnerSession(audience="crm", data=data)
        await p.prepare()
        b = KkrtBrandSession(session_id="s", hello=p.hello(), items=items)
        await b.prepare()
        await p.receive(b.start())
        await asyncio.gather(carry(p.outgoing(), b.receive), carry(b.outgoing(), p.receive))
        assert p.outcome is not None
        assert p.hello().declared_points == 10  # distinct (type, digest) pairs
        return whole_array(p.outcome.matched_on)

    # email first (priority), then phone; a phone digest never matches an email one
    assert asyncio.run(run()).tolist() == [-1, 0, 0, 1, 1, 1, 0]


def test_large_sets_100k() -> None:
    brand = list(range(100_000))
    partner = list(range(50_000, 150_000))
    assert np.array_equal(match(brand, partner), expected(brand, partner))


def test_one_million_and_unbalanced_ten_by_one_million() -> None:
    brand = list(range(1_000_000))
    partner = list(range(999_000, 1_999_000))
    assert np.array_equal(match(brand, partner), expected(brand, partner))
    few = [5, 77, 999_999, 1_000_000, 2_000_000, 123_456, 17, 18, 19, 20]
    assert np.array_equal(match(brand, few), expected(brand, few))
    assert np.array_equal(match(few, brand[:1_000_000]), expected(few, brand[:1_000_000]))


def test_the_brand_computes_its_values_a_range_of_bins_at_a_time_from_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ranges of one chunk (32,768 bins; the partner's 80,001 items make four), every
    filed entry and value in files (past 0 bytes): the same match, and no file left once
    the session is closed."""
    monkeypatch.setattr(kkrt, "RANGE_BINS", CHUNK_BINS)
    brand = list(range(60_000))
    partner = [*range(30_000, 110_000), 7]
    spill = tmp_path / "spill"
    options = {"spill_dir": spill, "memory_bytes": 0}
    assert np.array_equal(match(brand, partner, brand_options=options), expected(brand, partner))
    assert spill.is_dir() and list(spill.iterdir()) == []


def test_a_brand_far_larger_than_the_partner_files_its_entries_as_they_come(
    tmp_path: Path,
) -> None:
    """One range (the partner's 1,000 items make 1,280 bins) for 30,000 brand items on
    disk: the entries are written as they are filed and read back a slice at a time."""
    brand = list(range(30_000))
    partner = list(range(29_500, 30_500))
    spill = tmp_path / "spill"
    options = {"spill_dir": spill, "memory_bytes": 0}
    assert np.array_equal(match(brand, partner, brand_options=options), expected(brand, partner))
    assert list(spill.iterdir()) == []


def test_closing_the_sender_during_a_step_removes_its_files_after_the_step(
    tmp_path: Path,
) -> None:
    hello = kkrt_hello()
    sender = KkrtSender(
        BrandItems.of(ox.item_blocks("email", digests(range(20)))),
        hello,
        "s",
        spill_dir=tmp_path,
        memory_bytes=0,
    )
    [directory] = [p for p in tmp_path.iterdir() if p.name.startswith("kkrt-")]
    with sender._steps.step():
        sender.close()
        assert directory.exists()  # the step still reads them
    assert not directory.exists()
    with pytest.raises(concurrent.futures.CancelledError):
        sender.on_columns(ColumnChunk(seq=0, columns=bytes(ox.WIDTH * sender.bins // 8)))
    sender.close()  # idempotent


def test_oprf_outputs_match_the_golden_file() -> None:
    log: list[object] = []
    partner = partner_set(list(range(40, 140)))
    session = asyncio.run(run_sessions(list(range(100)), partner, seed=b"golden", record=log))
    columns = b"".join(m.columns for m in log if isinstance(m, ColumnChunk))
    assert session.outcome is not None
    assert int((whole_array(session.outcome.matched_on) == 0).sum()) == 60
    golden = GOLDEN_VALUES()
    assert sorted_values_digest(log) == golden["sender_values"]
    assert hashlib.sha256(columns).hexdigest() == golden["columns"]


# ------------------------------------------------------------------ refusals


def kkrt_hello(**changes: object) -> Hello:
    receiver = KkrtReceiver(ox.item_blocks("email", digests(range(50))))
    fields: dict[str, object] = {
        "audience": "crm",
        "protocol": Protocol.MATCH,
        "declared_records": 50,
        "declared_points": 50,
        "method": PsiMethod.KKRT,
        "ot_point": receiver.ot_point,
        "cuckoo_key": receiver.cuckoo_key,
        "nonce": receiver.nonce,
        "bins": receiver.bins,
    }
    fields.update(changes)
    return Hello(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"bins": 1024}, "exactly 256"),
        ({"ot_point": b"\x01" * 10}, "64 bytes"),
        ({"nonce": b""}, "16 bytes"),
        ({"protocol": Protocol.CARDINALITY}, "MATCH only"),
        ({"declared_points": 500}, "more than"),
    ],
)
def test_malformed_hellos_are_protocol_errors(changes: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        check_kkrt_hello(kkrt_hello(**changes))


def test_an_invalid_base_ot_point_in_hello_is_refused() -> None:
    with pytest.raises(InvalidPointError, match="low-order"):
        KkrtSender(
            BrandItems.of(ox.item_blocks("email", digests(range(5)))),
            kkrt_hello(ot_point=bytes(64)),
            "s",
        )


def sender_for(hello: Hello) -> KkrtSender:
    return KkrtSender(BrandItems.of(ox.item_blocks("email", digests(range(20)))), hello, "s")


def test_column_chunks_out_of_order_short_or_past_the_bins() -> None:
    hello = kkrt_hello()
    sender = sender_for(hello)
    width = ox.WIDTH * hello.bins // 8
    with pytest.raises(ProtocolError, match="chunk 0 was due"):
        sender.on_columns(ColumnChunk(seq=1, columns=bytes(width)))
    with pytest.raises(ProtocolError, match="bytes"):
        sender.on_columns(ColumnChunk(seq=0, columns=bytes(width - 1)))
    sender.on_columns(ColumnChunk(seq=0, columns=bytes(width)))
    with pytest.raises(ProtocolError, match="past the 256 bins"):
        sender.on_columns(ColumnChunk(seq=1, columns=bytes(width)))
    assert hello.bins < CHUNK_BINS


def test_messages_of_the_wrong_round_fail_the_session() -> None:
    async def run() -> None:
        hello = kkrt_hello()
        b = KkrtBrandSession(
            session_id="s", hello=hello, items=ox.item_blocks("email", digests(range(5)))
        )
        await b.prepare()
        with pytest.raises(ProtocolError, match="round hello"):
            await b.receive(ColumnChunk(seq=0, columns=b""))
        assert b.error is not None

        b2 = KkrtBrandSession(
            session_id="s", hello=hello, items=ox.item_blocks("email", digests(range(5)))
        )
        await b2.prepare()
        b2.start()
        with pytest.raises(ProtocolError, match="not part of an OT-extension session"):
            await b2.receive(PointChunk(seq=0, points=bytes(32)))
        b3 = KkrtBrandSession(
            session_id="s", hello=hello, items=ox.item_blocks("email", digests(range(5)))
        )
        await b3.prepare()
        b3.start()
        with pytest.raises(ProtocolError, match="round exchange"):
            await b3.receive(Finish())

        p = KkrtPartnerSession(audience="crm", data=partner_set([1, 2, 3]))
        await p.prepare()
        with pytest.raises(ProtocolError, match="round hello"):
            await p.receive(Result(intersection=1))

    asyncio.run(run())


def test_the_partner_refuses_a_brand_answer_that_does_not_fit() -> None:
    async def run(**changes: Any) -> None:
        p = KkrtPartnerSession(audience="crm", data=partner_set(list(range(30))))
        await p.prepare()
        b = KkrtBrandSession(
            session_id="s", hello=p.hello(), items=ox.item_blocks("email", digests(range(5)))
        )
        await b.prepare()
        good = b.start()
        await p.receive(dataclasses.replace(good, **changes))

    cases: list[tuple[dict[str, Any], str]] = [
        ({"ot_points": b"\x00" * 64}, "base-OT points"),
        ({"value_len": 9}, "9-byte values"),
        ({"bins": 512}, "other bins"),
        ({"nonce": b"x"}, "nonce"),
    ]
    for changes, why in cases:
        with pytest.raises(ProtocolError, match=why):
            asyncio.run(run(**changes))


def test_a_resumption_is_refused() -> None:
    async def run() -> None:
        b = KkrtBrandSession(
            session_id="s", hello=kkrt_hello(), items=ox.item_blocks("email", digests(range(5)))
        )
        await b.prepare()
        b.start()
        with pytest.raises(ProtocolError, match="cannot be resumed"):
            b.accepted()
        with pytest.raises(ProtocolError, match="cannot be resumed"):
            async for _ in b.outgoing(values_from=1):
                pass

    asyncio.run(run())


# ------------------------------------------------------------------ golden values


def sorted_values_digest(log: list[object]) -> str:
    """SHA-256 of the sender's values in sorted order: the OPRF outputs, whatever the
    (random) order they were sent in."""
    [accepted] = [m for m in log if isinstance(m, Accepted)]
    values = b"".join(m.values for m in log if isinstance(m, ValueChunk))
    rows = np.frombuffer(values, dtype=np.uint8).reshape(-1, accepted.value_len)
    return hashlib.sha256(rows[np.lexsort(rows.T[::-1])].tobytes()).hexdigest()


def GOLDEN_VALUES() -> dict[str, str]:
    return json.loads(GOLDEN.read_text())  # type: ignore[no-any-return]


def _regenerate() -> None:
    sender = OtSender(drbg(b"ot-sender"))
    choices = [int(i % 3 == 0) for i in range(16)]
    receiver = OtReceiver(sender.message, choices, drbg(b"ot-receiver"))
    pairs = sender.keys(b"context", receiver.message)
    items = ox.item_blocks("email", digests(range(1000)))
    table, _ = ox.cuckoo_place(ox.cuckoo_positions(bytes(16), items, 1280), 1280)
    log: list[object] = []
    asyncio.run(
        run_sessions(
            list(range(100)), partner_set(list(range(40, 140))), seed=b"golden", record=log
        )
    )
    out = {
        "ot_sender_message": sender.message.hex(),
        "ot_receiver_messages": hashlib.sha256(receiver.message).hexdigest(),
        "ot_keys": hashlib.sha256(b"".join(a + b for a, b in pairs)).hexdigest(),
        "cuckoo_table": hashlib.sha256(table.tobytes()).hexdigest()[:16],
        "sender_values": sorted_values_digest(log),
        "columns": hashlib.sha256(
            b"".join(m.columns for m in log if isinstance(m, ColumnChunk))
        ).hexdigest(),
    }
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    _regenerate()


def test_the_receivers_points_do_not_reveal_its_choices() -> None:
    """Whether ``B`` (or ``B - A``) carries the root a fixed lift would pick is a coin
    flip whatever the choice bit: a fixed lift made it certain exactly when c = 0."""
    sender = OtSender(drbg(b"sign"))
    a = decode_point(sender.message)
    choices = [j % 2 for j in range(256)]
    points = OtReceiver(sender.message, choices, drbg(b"sign-r")).message
    canonical = {0: [0, 0], 1: [0, 0]}
    for j, c in enumerate(choices):
        b = decode_point(points[64 * j : 64 * j + 64])
        diff = montgomery_add(b, (a[0], (-a[1]) % (2**255 - 19)))
        assert diff is not None
        for point in (b, diff):
            canonical[c][0] += _lift(point[0]) == point
            canonical[c][1] += 1
    # Either way about half of the points are the canonical lift (binomial, 256 draws).
    for c in (0, 1):
        hits, total = canonical[c]
        assert 0.35 < hits / total < 0.65, (c, hits, total)


def test_a_sender_point_with_a_small_order_component_is_refused() -> None:
    sender = OtSender(drbg(b"torsion"))
    a = decode_point(sender.message)
    mixed = montgomery_add(a, (0, 0))  # + the point of order 2
    assert mixed is not None
    with pytest.raises(InvalidPointError, match="small-order component"):
        OtReceiver(encode_point(mixed), [0, 1])
    assert in_prime_subgroup(a) and not in_prime_subgroup(mixed)


def test_a_huge_declared_set_is_refused_before_any_work() -> None:
    with pytest.raises(ProtocolError, match="at most 100000000"):
        check_kkrt_hello(kkrt_hello(declared_records=10**12, declared_points=10**11))


def test_a_session_that_fails_while_sending_ends_with_its_error_not_quietly() -> None:
    """A failure while the stream is busy sending must still end the stream with the
    error (the node's status), even when messages were queued behind it."""

    async def run() -> None:
        b = KkrtBrandSession(
            session_id="s", hello=kkrt_hello(), items=ox.item_blocks("email", digests(range(5)))
        )
        await b.prepare()
        b.start()
        b.put(ValueChunk(seq=0, values=bytes(8)))
        b.put(ValueChunk(seq=1, values=bytes(8)))
        out = b.outgoing()
        assert isinstance(await anext(out), ValueChunk)  # the stream is sending
        b.fail(ProtocolError("the partner broke the protocol"))
        with pytest.raises(ProtocolError, match="broke the protocol"):
            async for _ in out:
                pass

    asyncio.run(run())
