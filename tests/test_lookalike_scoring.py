"""HE scoring of a brand-owned model (federated/lookalike/scoring.py), in-process.

The private tiers are compared with a plaintext scoring of the same model on
the same quantized features; the transcript is checked for what each side
received: the partner no weight, the brand no score it could read unmasked.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np
import pytest

from cleanroom.federated.lookalike.aggregates import tier_sizes
from cleanroom.federated.lookalike.brand_model import SCORE_BITS, BrandModel, ModelFeature
from cleanroom.federated.lookalike.messages import (
    PackageSummary,
    ScoreAccepted,
    ScoreChunk,
    ScoreHello,
    ScoreTiers,
)
from cleanroom.federated.lookalike.scoring import (
    GROUP_ENTRIES,
    SLOT_BITS,
    BrandScoring,
    PartnerScoring,
    feature_groups,
    group_table,
    nested_tiers,
)
from cleanroom.federated.paillier import _unsafe_generate_keypair_for_tests
from cleanroom.proto import serde
from cleanroom.proto.errors import InvalidInput, ProtocolError
from tests.helpers import converse

TIERS = (1.0, 5.0, 10.0, 30.0)
USERS = 2500


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return _unsafe_generate_keypair_for_tests(1024)


def brand_model() -> BrandModel:
    return BrandModel(
        features=(
            ModelFeature("app_user"),
            ModelFeature("bought_before"),
            ModelFeature("visits_30d", 0, 30, 16),
            ModelFeature("basket", -5.0, 5.0, 11),
            ModelFeature("age", 18, 70, 27),
        ),
        weights=(1.25, -0.7, 0.081, 0.33, -0.0213),
        intercept=-2.5,
    )


def partner_columns(users: int = USERS, seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "app_user": rng.integers(0, 2, users).astype(float),
        "bought_before": (rng.random(users) < 0.3).astype(float),
        "visits_30d": rng.poisson(6, users).astype(float),
        "basket": rng.normal(0, 3, users),
        "age": rng.uniform(15, 80, users),
        "unused": rng.random(users),
    }


def make_pair(
    keys: tuple[Any, Any], columns: dict[str, np.ndarray], model: BrandModel | None = None
) -> tuple[BrandScoring, PartnerScoring]:
    users = len(next(iter(columns.values())))
    partner = PartnerScoring(
        model="m", columns=columns, users=users, tiers=TIERS, min_key_bits=1024
    )
    brand = BrandScoring(
        session_id="score-1",
        hello=partner.hello(),
        model=model or brand_model(),
        private_key=keys[1],
        chunk_size=7,
    )
    return brand, partner


def assert_tiers_match(
    tier: np.ndarray, plain: np.ndarray, sizes: list[int], model: BrandModel
) -> None:
    """Nested tiers as a plaintext scoring ranks the users; only scores closer than the
    fixed point's rounding grain to a tier's boundary may land on the other side."""
    weights, _constant = model.fixed_point()
    unit = weights[0] / (model.weights[0] * model.features[0].step)
    grain = 4 * (1 + sum(f.levels - 1 for f in model.features)) / unit
    ranked = np.argsort(-plain, kind="stable")
    for t, size in enumerate(sizes, start=1):
        private = set(np.flatnonzero((tier >= 1) & (tier <= t)).tolist())
        assert len(private) == size
        expected = set(ranked[:size].tolist())
        boundary = plain[ranked[size - 1]]
        for user in private ^ expected:
            assert abs(plain[user] - boundary) <= grain, (t, user, plain[user], boundary)


def test_private_tiers_equal_a_plaintext_scoring_of_the_model(keys: tuple[Any, Any]) -> None:
    columns = partner_columns()
    brand, partner = make_pair(keys, columns)
    asyncio.run(converse(brand, partner))
    assert partner.result is not None and partner.succeeded and brand.succeeded
    model = brand_model()
    plain = model.score(model.quantize(columns))
    sizes = tier_sizes(USERS, TIERS)
    assert partner.result.tier_sizes == tuple(sizes)
    tier = partner.result.tier_of_user
    assert_tiers_match(tier, plain, sizes, model)
    # Not trivially equal: the top tier is far better than the rest.
    assert plain[tier == 1].mean() > plain.mean() + 2 * plain.std()


def test_the_partner_never_sees_the_model_nor_the_brand_a_plain_score(
    keys: tuple[Any, Any],
) -> None:
    columns = partner_columns(users=700, seed=9)
    model = brand_model()
    brand, partner = make_pair(keys, columns, model)
    transcript = asyncio.run(converse(brand, partner))
    pk, sk = keys
    weights, constant = model.fixed_point()
    to_partner = [m for side, m in transcript if side == "brand"]
    accepted = to_partner[0]
    assert isinstance(accepted, ScoreAccepted)
    assert {type(m).__name__ for m in to_partner[1:]} <= {"ScoreTiers", "LookalikeDone"}
    # Enc(W_j) and Enc(C): valid ciphertexts that decrypt to the fixed-point model ...
    pk.validate_many([*accepted.weights, accepted.constant])
    assert [sk.decrypt(c) for c in accepted.weights] == weights
    # ... and nothing on the wire to the partner holds a weight in the clear.
    wire = b"".join(serde.score_brand_to_pb(m, pk).SerializeToString() for m in to_partner)
    for value in (*weights, constant):
        assert abs(value) > 1 << 20
        raw = abs(value).to_bytes((abs(value).bit_length() + 7) // 8, "big")
        assert raw not in wire
        assert str(abs(value)).encode() not in wire
    for w in (*model.weights, model.intercept):
        assert np.float64(w).tobytes() not in wire
    for m in to_partner[1:]:
        if isinstance(m, ScoreTiers):
            assert set(m.tiers) <= set(range(len(TIERS) + 1))
    # The brand receives the hello (a model name and a count) and ciphertexts only.
    to_brand = [m for side, m in transcript if side == "partner"]
    assert isinstance(to_brand[0], ScoreHello) and to_brand[0].users == 700
    assert {type(m) for m in to_brand[1:]} == {ScoreChunk, PackageSummary}
    # What it decrypts is masked: an affine image of the scores, in the same order.
    slots = accepted.slots
    slot_values: list[int] = []
    for m in to_brand:
        if isinstance(m, ScoreChunk):
            width = pk.ciphertext_bytes
            for i in range(len(m.ciphertexts) // width):
                c = int.from_bytes(m.ciphertexts[i * width : (i + 1) * width], "big")
                plain = sk.decrypt_raw(c)
                slot_values += [
                    (plain >> (SLOT_BITS * k)) & ((1 << SLOT_BITS) - 1) for k in range(slots)
                ]
    values = np.asarray(slot_values[:700], dtype=np.uint64)
    assert partner._order is not None
    fixed = np.asarray(
        [
            constant + sum(int(w) * int(q) for w, q in zip(weights, row, strict=True))
            for row in model.quantize(columns)
        ],
        dtype=np.int64,
    )[partner._order]
    seen = values.astype(np.float64)
    assert not np.isin(fixed.astype(np.float64), seen).any()
    assert not np.isin(fixed + 2.0**SCORE_BITS, seen).any()
    distinct = np.diff(np.sort(fixed)) > 0
    assert distinct.any()
    order_plain = np.argsort(fixed, kind="stable")
    ordered = values[order_plain]
    assert (ordered[1:] > ordered[:-1])[distinct].all()


def test_a_feature_the_partner_lacks_fails_before_any_encryption(keys: tuple[Any, Any]) -> None:
    columns = partner_columns(users=300)
    del columns["visits_30d"], columns["age"]
    brand, partner = make_pair(keys, columns)
    with pytest.raises(InvalidInput, match="visits_30d, age"):
        asyncio.run(converse(brand, partner))
    assert isinstance(partner.error, InvalidInput)
    # Refused on the model's feature list: no key taken, nothing encrypted or sent.
    assert partner.public_key is None and partner.progress.ciphertexts_sent == 0


def test_messages_out_of_round_fail_the_job(keys: tuple[Any, Any]) -> None:
    async def run() -> None:
        brand, partner = make_pair(keys, partner_columns(users=300))
        brand.start()
        with pytest.raises(ProtocolError, match="package summary arrived in round scores"):
            await brand.receive(PackageSummary(scored=300, tier_sizes=(3, 15, 30, 90)))
        assert brand.finished and not brand.succeeded
        brand2, _ = make_pair(keys, partner_columns(users=300))
        brand2.start()
        with pytest.raises(ProtocolError, match="out of order"):
            await brand2.receive(ScoreChunk(seq=3, ciphertexts=b"\x01" * 256))
        brand3, _ = make_pair(keys, partner_columns(users=300))
        brand3.start()
        with pytest.raises(ProtocolError, match="holds 5 bytes"):
            await brand3.receive(ScoreChunk(seq=0, ciphertexts=b"\x01" * 5))
        with pytest.raises(ProtocolError, match="tiers chunk 0 arrived in round hello"):
            await partner.receive(ScoreTiers(seq=0, start=0, tiers=b"\x01"))

    asyncio.run(run())


@pytest.mark.parametrize(
    "levels",
    [[2, 2, 16, 11, 27], [2] * 20, [64, 64, 4, 3, 2, 2, 2], [5]],
)
def test_feature_groups_partition_the_features_within_the_table_size(levels: list[int]) -> None:
    groups = feature_groups(levels)
    assert sorted(j for g in groups for j in g) == list(range(len(levels)))
    for g in groups:
        assert int(np.prod([levels[j] for j in g])) <= GROUP_ENTRIES
    # First fit, largest first: no two groups could have been one.
    sizes = sorted(int(np.prod([levels[j] for j in g])) for g in groups)
    assert all(a * b > GROUP_ENTRIES for a, b in itertools.pairwise(sizes))


def test_feature_groups_pack_eight_flags_or_two_sixteen_level_features() -> None:
    assert feature_groups([2] * 9) == [[0, 1, 2, 3, 4, 5, 6, 7], [8]]
    assert feature_groups([16, 16, 16]) == [[0, 1], [2]]


def test_a_group_table_entry_is_its_level_combination_weighted(keys: tuple[Any, Any]) -> None:
    public, private = keys
    weights, levels, a, slots = [3, -5, 11], [2, 3, 4], 7, 2
    table = group_table(public.n, [public.encrypt(w) for w in weights], a, levels, slots)
    width = public.ciphertext_bytes
    entries = [
        private.decrypt(int.from_bytes(table[i : i + width], "big"))
        for i in range(0, len(table), width)
    ]
    combos = int(np.prod(levels)) - 1
    assert len(entries) == slots * combos
    for k in range(slots):
        for code in range(1, combos + 1):
            # Mixed radix, the group's first feature the lowest digit.
            q = [code % 2, code // 2 % 3, code // 6]
            expected = a * sum(w * qj for w, qj in zip(weights, q, strict=True)) << (SLOT_BITS * k)
            assert entries[k * combos + code - 1] == expected


def test_nested_tiers_rank_largest_first() -> None:
    values = np.asarray([5, 1, 9, 7, 3, 8, 2, 6, 4, 0], dtype=np.uint64)
    assert nested_tiers(values, [1, 3, 5]).tolist() == [3, 0, 1, 2, 0, 2, 0, 3, 0, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "JSON object"),
        ('{"features": ["a"], "weights": [1, 2]}', "1 features and 2 weights"),
        ('{"features": ["a"], "weights": [NaN]}', "finite"),
        ('{"features": ["a", "a"], "weights": [1, 2]}', "names feature 'a' twice"),
        ('{"features": [{"name": "a", "levels": 1}], "weights": [1]}', "levels is 2..64"),
        ('{"features": [{"name": "a", "min": 3, "max": 1}], "weights": [1]}', "min < max"),
        ('{"features": ["a"], "weights": [1], "bias": 0}', "unknown fields: bias"),
        ('{"weights": [1]}', "lacks 'features'"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_model_files_are_named(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        BrandModel.parse(text)


def test_a_model_round_trips_through_its_json() -> None:
    model = brand_model()
    assert BrandModel.parse(model.dumps()) == model
