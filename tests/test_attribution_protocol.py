"""The attribution state machines, wired in-process, against the plaintext report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reader import hash_frame
from cleanroom.federated.attribution.brand import BrandAttribution
from cleanroom.federated.attribution.inputs import (
    BrandConversions,
    Windows,
    brand_conversions,
    hashed_identifiers,
    parse_conversions,
    parse_exposures,
    partner_exposures,
    read_spend,
)
from cleanroom.federated.attribution.messages import (
    AttrAggregates,
    AttrCells,
    AttrHello,
    CellTokens,
    CellValues,
    DpParams,
)
from cleanroom.federated.attribution.partner import PartnerAttribution
from cleanroom.federated.attribution.reference import reference_report
from cleanroom.federated.attribution.report import campaign_report
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.federated.attribution.tokens import (
    PRECOMPUTED_LAGS,
    LaggedPoints,
    day_dst,
    distinct_keys,
    equal_pairs,
    exact_distinct_keys,
    key_mix,
)
from cleanroom.federated.paillier import _unsafe_generate_keypair_for_tests
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.matching.workers import hash_mixed
from cleanroom.proto.errors import PolicyViolation, ProtocolError
from tests.helpers import assert_reports_equal

OPTIONS = NormalizeOptions(default_region="US")
BRAND_IDS = parse_id_columns("email,phone")
PARTNER_IDS = parse_id_columns("email,phone,maid")
NO_DP = DpParams()
DEFAULT_WINDOWS = Windows()


def direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return _unsafe_generate_keypair_for_tests(1024)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return synthesize_attribution(
        tmp_path_factory.mktemp("attr"),
        customers=300,
        conversions=500,
        partner_users=400,
        exposure_rows=1500,
        campaigns=3,
        seed=4,
        days=20,
    )


def brand_data(synth: Any) -> BrandConversions:
    conv = parse_conversions(
        pd.read_csv(synth.conversions_path, dtype=str, keep_default_na=False),
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
        id_columns=BRAND_IDS,
    )
    return brand_conversions(conv, BRAND_IDS, OPTIONS)


def run_protocol(
    synth: Any,
    keys: tuple[Any, Any],
    *,
    dp: DpParams = NO_DP,
    windows: Windows = DEFAULT_WINDOWS,
    seed: int = 0,
    threshold: int = 0,
    precomputed: bool = False,
) -> tuple[dict[str, Any], BrandAttribution, PartnerAttribution, AttrAggregates]:
    expo = parse_exposures(
        pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False), id_columns=PARTNER_IDS
    )
    pk, sk = keys
    partner = PartnerAttribution(
        conversions="sales",
        id_types=tuple(str(c.id_type) for c in PARTNER_IDS),
        click_days=windows.click_days,
        view_days=windows.view_days,
        run=direct,
        spend=read_spend(synth.spend_path),
        rng=np.random.default_rng(seed),
        min_key_bits=1024,
    )
    data = brand_data(synth)
    if precomputed:  # as the brand node stores them at upload
        data.id_points = stored_points(data)
    brand = BrandAttribution(
        session_id="s",
        hello=partner.hello(),
        data=data,
        public_key=pk,
        private_key=sk,
        dp=dp,
        run=direct,
        rng=np.random.default_rng(seed + 1),
    )
    partner.on_accepted(brand.accepted())
    brand.on_cells(partner.on_exposures(partner_exposures(expo, PARTNER_IDS, OPTIONS)))
    for chunk in partner.cell_token_chunks(chunk=256):
        back = brand.on_cell_tokens(chunk)
        if back is not None:
            partner.on_cell_values(back)
    for tokens in brand.conversion_tokens(chunk=512):
        partner.on_conversion_tokens(tokens)
    for values in brand.event_values(chunk=128):
        partner.on_event_values(values)
    aggregates = partner.aggregates()
    inputs = brand.on_aggregates(aggregates)
    report = {
        "windows": {"click_days": windows.click_days, "view_days": windows.view_days},
        "campaigns": campaign_report(
            inputs["groups"], inputs["attributed"], inputs["spend"], threshold=threshold
        ),  # type: ignore[arg-type]
    }
    return report, brand, partner, aggregates


def stored_points(data: BrandConversions) -> np.ndarray:
    days = data.day[data.id_event]
    lagged = LaggedPoints.of(data.id_type, data.id_digest, days, PRECOMPUTED_LAGS)
    return lagged.per_identifier(b"".join(hash_mixed(*job) for _, job in lagged.hash_jobs()))


def reference(synth: Any, windows: Windows = DEFAULT_WINDOWS) -> dict[str, Any]:
    return reference_report(
        pd.read_csv(synth.conversions_path, dtype=str, keep_default_na=False),
        pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False),
        id_columns=PARTNER_IDS,
        options=OPTIONS,
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
        windows=windows,
        spend=read_spend(synth.spend_path),
        threshold=0,
    )


def test_private_report_equals_plaintext_reference(synth: Any, keys: tuple[Any, Any]) -> None:
    got, _, _, _ = run_protocol(synth, keys)
    want = reference(synth)
    assert_reports_equal(got, want)
    # The data is not trivial: conversions, both groups, attribution.
    assert sum(c["exposed"]["conversions"] for c in want["campaigns"]) > 20
    assert sum(c["holdout"]["users"] for c in want["campaigns"]) > 0
    assert sum(c["attributed_conversions"] for c in want["campaigns"]) > 0


def test_other_windows(synth: Any, keys: tuple[Any, Any]) -> None:
    windows = Windows(click_days=3, view_days=0)
    got, _, _, _ = run_protocol(synth, keys, windows=windows)
    assert_reports_equal(got, reference(synth, windows))


@pytest.mark.parametrize(
    "windows",
    [DEFAULT_WINDOWS, Windows(click_days=10, view_days=2)],
    ids=["within-stored-lags", "beyond-stored-lags"],
)
def test_points_stored_at_upload_give_the_same_report(
    synth: Any, keys: tuple[Any, Any], windows: Windows
) -> None:
    """Stored points serve lags 0..7; a longer window hashes the rest in the run."""
    got, brand, partner, _ = run_protocol(synth, keys, windows=windows, precomputed=True)
    assert_reports_equal(got, reference(synth, windows))
    assert brand.brand_tokens == len(brand.data.id_event) * (windows.click_days + 1)
    # Distinct tokens are blinded once: fewer points than tokens on both sides.
    assert brand.point_count < brand.brand_tokens
    assert partner.point_count <= sum(partner.cell_tokens)


def test_stored_points_are_the_hash_of_identifier_and_day(synth: Any) -> None:
    data = brand_data(synth)
    points = stored_points(data)
    assert points.shape == (len(data.id_event), PRECOMPUTED_LAGS, 32)
    for i in (0, 7, len(data.id_event) - 1):
        day = int(data.day[data.id_event[i]])
        for lag in (0, 3, PRECOMPUTED_LAGS - 1):
            message = bytes(data.id_digest[i]) + (day - lag).to_bytes(4, "big")
            want = hash_to_curve(message, day_dst(str(data.id_type[i])))
            assert points[i, lag].tobytes() == want


def test_distinct_keys_number_by_first_appearance() -> None:
    digests = np.zeros((6, 32), dtype=np.uint8)
    digests[[1, 4], 0] = 1  # two digests: zero and one
    types = np.array([0, 0, 0, 1, 0, 0])
    days = np.array([5, 5, 6, 5, 5, 5])
    # (t0,d0,5) (t0,d1,5) (t0,d0,6) (t1,d0,5) (t0,d1,5) (t0,d0,5)
    keys, first = distinct_keys(types, digests, days)
    assert keys.tolist() == [0, 1, 2, 3, 1, 0]
    assert first.tolist() == [0, 1, 2, 3]


def test_distinct_keys_survive_a_collision_of_their_64_bit_mix() -> None:
    rng = np.random.default_rng(5)
    digests = rng.integers(0, 256, size=(1000, 32), dtype=np.uint8)
    digests[500:] = digests[:500]  # every key twice
    types = np.zeros(1000, dtype=np.int64)
    days = np.full(1000, 20_000, dtype=np.int64)
    plain, _ = distinct_keys(types, digests, days)
    assert plain.tolist() == list(range(500)) * 2
    assert plain.tolist() == exact_distinct_keys(types, digests, days).tolist()
    # Craft key 0's twin at index 500: another digest whose mix equals key 0's.
    collided = digests.copy()
    collided[500, 8:] ^= 1
    words = collided.view("<u8")
    words[500, 0] ^= (
        key_mix(types[:501], collided[:501], days[:501])[500]
        ^ key_mix(types[:1], collided[:1], days[:1])[0]
    )
    assert key_mix(types, collided, days)[500] == key_mix(types, collided, days)[0]
    assert not np.array_equal(collided[0], collided[500])
    keys, first = distinct_keys(types, collided, days)
    assert keys.tolist() == exact_distinct_keys(types, collided, days).tolist()
    assert len(np.unique(keys)) == 501  # the twin is a key of its own
    assert first[keys[500]] == 500


@pytest.mark.parametrize("width", [8, 11, 32])
def test_equal_pairs_finds_every_equal_pair(width: int) -> None:
    """Against a plain dictionary join: repeats on both sides, and values that
    share their first 8 bytes (the search key) but differ after them."""
    rng = np.random.default_rng(width)
    pool = rng.integers(0, 256, size=(300, width), dtype=np.uint8)
    if width > 8:
        pool[150:200, :8] = pool[100:150, :8]  # same key, other value
    left = pool[rng.integers(0, 250, 2000)].copy().view(f"S{width}").ravel()
    right = pool[rng.integers(50, 300, 1500)].copy().view(f"S{width}").ravel()
    i, j = equal_pairs(left, right)
    positions: dict[bytes, list[int]] = {}
    for n, v in enumerate(left.tolist()):
        positions.setdefault(v, []).append(n)
    want = sorted((a, b) for b, v in enumerate(right.tolist()) for a in positions.get(v, []))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == want
    assert len(want) > 1000
    empty_i, empty_j = equal_pairs(left[:0], right)
    assert len(empty_i) == len(empty_j) == 0
    with pytest.raises(ValueError, match="at least 8 bytes"):
        equal_pairs(left.astype("S4"), right.astype("S4"))


@pytest.mark.parametrize("pooled", [False, True], ids=["here", "pool"])
def test_identifiers_are_hashed_once_per_distinct_value(
    pooled: bool, request: pytest.FixtureRequest
) -> None:
    """Hashing distinct values gives, row for row, what hashing every row gives."""
    rng = np.random.default_rng(3)
    emails = ["a@x.com", " A@X.com", "not-an-email", "", "b@y.org"]
    phones = ["+1 201 555 0123", "201-555-0123", "12", "", "+44 20 7946 0958"]
    frame = pd.DataFrame(
        {
            "email": rng.choice(emails, size=400).tolist(),
            "phone": rng.choice(phones, size=400).tolist(),
        }
    )
    frame.loc[5, "email"] = None
    executor = request.getfixturevalue("process_pool").executor if pooled else None
    rows, types, digests = hashed_identifiers(frame, BRAND_IDS, OPTIONS, executor, slice_rows=2)
    whole = hash_frame(frame, BRAND_IDS, OPTIONS)
    want_rows = [np.flatnonzero(c.present) for c in whole.columns]
    assert rows.tolist() == np.concatenate(want_rows).tolist()
    assert types.tolist() == ["email"] * len(want_rows[0]) + ["phone"] * len(want_rows[1])
    assert digests.tobytes() == b"".join(c.digests for c in whole.columns)
    assert 0 < len(want_rows[0]) < 400 and 0 < len(want_rows[1]) < 400


def test_no_value_or_per_user_flag_in_the_aggregates(synth: Any, keys: tuple[Any, Any]) -> None:
    _, _, partner, aggregates = run_protocol(synth, keys)
    pk = keys[0]
    # Sums travel encrypted and re-randomized: not equal to a plain product of what B sent.
    for g in aggregates.groups:
        assert 0 < g.revenue < pk.nsquare
    assert len(aggregates.groups) == len(partner.users)


def test_messages_out_of_round_are_errors(synth: Any, keys: tuple[Any, Any]) -> None:
    _, brand, _, aggregates = run_protocol(synth, keys)
    with pytest.raises(ProtocolError):
        brand.on_aggregates(aggregates)  # already done

    # The opening rounds, one message at a time.
    pk, sk = keys
    expo = parse_exposures(
        pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False), id_columns=PARTNER_IDS
    )
    exposures = partner_exposures(expo, PARTNER_IDS, OPTIONS)
    partner = PartnerAttribution(
        conversions="sales",
        id_types=("email", "maid", "phone"),
        click_days=7,
        view_days=1,
        run=direct,
        min_key_bits=1024,
    )
    with pytest.raises(ProtocolError, match="round hello"):
        partner.on_exposures(exposures)  # before the brand accepted
    brand = BrandAttribution(
        session_id="s",
        hello=partner.hello(),
        data=brand_data(synth),
        public_key=pk,
        private_key=sk,
        dp=NO_DP,
        run=direct,
    )
    accepted = brand.accepted()
    assert accepted.id_types == ("email", "phone")  # the brand holds no maids
    with pytest.raises(ProtocolError, match="round cells"):
        brand.on_cell_tokens(CellTokens(seq=0, cell=0, points=bytes(32)))  # before the cells
    stranger = dataclasses.replace(accepted, id_types=("email", "passport"))
    with pytest.raises(ProtocolError, match="identifier types"):
        dataclasses.replace(partner).on_accepted(stranger)
    partner.on_accepted(accepted)
    with pytest.raises(ProtocolError, match="round cells"):
        partner.on_cell_values(CellValues(cell=0, values=b""))  # before its own cells
    cells = partner.on_exposures(exposures)
    for bad in (
        AttrCells(cells=(), cell_tokens=()),
        AttrCells(cells=cells.cells[:1], cell_tokens=(0,)),
        AttrCells(cells=cells.cells[:1] * 2, cell_tokens=(1, 1)),
        AttrCells(cells=cells.cells, cell_tokens=cells.cell_tokens[1:]),
    ):
        with pytest.raises(ProtocolError):
            brand.on_cells(bad)
    brand.on_cells(cells)
    with pytest.raises(ProtocolError, match="round tokens"):
        brand.on_cells(cells)  # twice
    assert brand.value_len == partner.value_len > 0


def test_no_identifier_type_in_common_is_refused(synth: Any, keys: tuple[Any, Any]) -> None:
    pk, sk = keys
    with pytest.raises(PolicyViolation, match="no identifier type in common"):
        BrandAttribution(
            session_id="s",
            hello=AttrHello(conversions="sales", click_days=7, view_days=1, id_types=("maid",)),
            data=brand_data(synth),
            public_key=pk,
            private_key=sk,
            dp=NO_DP,
            run=direct,
        )


def test_noise_has_the_stated_scale() -> None:
    """Seeded: Laplace b = sensitivity/epsilon; Gaussian sigma from the classic bound."""
    from cleanroom.federated.attribution.noise import Noise, noise_scale

    rng = np.random.default_rng(12345)
    lap = DpParams("laplace", epsilon=0.5, delta=0.0, value_cap=100.0)
    noise = Noise(lap, rng)
    draws = np.array([noise.count(1000) for _ in range(20000)]) - 1000
    assert noise.count_scale == pytest.approx(2.0)
    # Laplace(b): mean 0, standard deviation b*sqrt(2); 20k draws pin both within a few %.
    assert abs(draws.mean()) < 0.1
    assert draws.std() == pytest.approx(2.0 * math.sqrt(2), rel=0.05)
    gauss = DpParams("gaussian", epsilon=1.0, delta=1e-5, value_cap=100.0)
    sigma = noise_scale(gauss, 1.0)
    assert sigma == pytest.approx(math.sqrt(2 * math.log(1.25 / 1e-5)))
    g = Noise(gauss, np.random.default_rng(7))
    draws = np.array([g.count(10_000) for _ in range(20000)]) - 10_000
    assert draws.std() == pytest.approx(sigma, rel=0.05)
    assert noise_scale(DpParams(), 1.0) == 0.0


def test_dp_noise_moves_the_report_but_not_far(synth: Any, keys: tuple[Any, Any]) -> None:
    exact, _, _, _ = run_protocol(synth, keys)
    noisy, _, _, _ = run_protocol(
        synth, keys, dp=DpParams("laplace", epsilon=50.0, value_cap=1000.0), seed=3
    )
    diffs = [
        abs(n["exposed"]["conversions"] - e["exposed"]["conversions"])
        for n, e in zip(noisy["campaigns"], exact["campaigns"], strict=True)
    ]
    # epsilon 50 over 5 query families: Laplace b = 0.1 per count; rounding hides most draws.
    assert max(diffs) <= 3


def test_event_values_encrypted_over_the_pool_decrypt_to_the_values(
    synth: Any, keys: tuple[Any, Any]
) -> None:
    """The parallel path (key shipped to workers as JSON) encrypts the same values."""
    _, brand, _, _ = run_protocol(synth, keys)
    brand.run_many = lambda fn, jobs: [fn(*a) for a in jobs]
    pooled = brand.event_values(chunk=16)  # > 4 chunks: the pool path
    brand.run_many = None
    plain = brand.event_values(chunk=16)
    _, sk = keys
    got = [sk.decrypt(c) for ev in pooled for c in ev.ciphertexts]
    want = [sk.decrypt(c) for ev in plain for c in ev.ciphertexts]
    assert got == want and len(got) == brand.data.events


def test_groups_below_the_threshold_carry_no_numbers(synth: Any, keys: tuple[Any, Any]) -> None:
    exact, _, _, _ = run_protocol(synth, keys)
    holdout_users = sorted(c["holdout"]["users"] for c in exact["campaigns"])
    threshold = holdout_users[-1] + 1  # every holdout group falls below it
    report, _, _, _ = run_protocol(synth, keys, threshold=threshold)
    for c in report["campaigns"]:
        assert c["suppressed"] is True
        assert all(v is None for v in c["holdout"].values())
        assert c["lift"] is None and c["lift_ci95"] is None and c["iroas"] is None
