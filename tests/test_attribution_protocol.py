"""The attribution state machines, wired in-process, against the plaintext report."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reader import hash_frame
from cleanroom.federated.attribution.brand import BrandAttribution
from cleanroom.federated.attribution.inputs import (
    BrandConversions,
    ConversionIds,
    EventGroup,
    ExposureParts,
    PartnerExposures,
    brand_conversions,
    hashed_identifiers,
    parse_conversions,
    parse_exposures,
    partner_exposures,
    read_spend,
)
from cleanroom.federated.attribution.messages import (
    VALUE_SCALE,
    AttrAggregates,
    AttrBrandMessage,
    AttrCells,
    AttrDone,
    AttrHello,
    AttrRound,
    Cell,
    CellTokens,
    CellValues,
    ConversionTokens,
    DpParams,
    EventValues,
    Windows,
)
from cleanroom.federated.attribution.partner import PartnerAttribution
from cleanroom.federated.attribution.reference import reference_report
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.federated.attribution.tokens import (
    PRECOMPUTED_LAGS,
    LaggedPoints,
    TokenJoin,
    day_dst,
    distinct_keys,
    equal_pairs,
    exact_distinct_keys,
    key_mix,
)
from cleanroom.federated.paillier import (
    InvalidCiphertextError,
    _unsafe_generate_keypair_for_tests,
    ciphertexts_from_bytes,
)
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.matching.workers import RunJobs, hash_mixed
from cleanroom.proto.errors import PolicyViolation, ProtocolError
from tests.helpers import assert_reports_equal, converse

OPTIONS = NormalizeOptions(default_region="US")
BRAND_IDS = parse_id_columns("email,phone")
PARTNER_IDS = parse_id_columns("email,phone,maid")
NO_DP = DpParams()
DEFAULT_WINDOWS = Windows()


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


def split_log(log: PartnerExposures, parts: int) -> PartnerExposures | ExposureParts:
    """The log as ``parts`` parts, row ``i`` in part ``i % parts``: a user's rows, and a
    token's, land in several parts."""
    if parts == 1:
        return log
    pieces = []
    for k in range(parts):
        rows = np.arange(k, len(log.row_day), parts)
        renumber = np.full(len(log.row_day), -1, dtype=np.int64)
        renumber[rows] = np.arange(len(rows))
        ids = np.flatnonzero(renumber[log.id_row] >= 0)
        pieces.append(
            PartnerExposures(
                row_user=log.row_user[rows],
                row_campaign=log.row_campaign[rows],
                row_day=log.row_day[rows],
                row_touch=log.row_touch[rows],
                row_group=log.row_group[rows],
                id_row=renumber[log.id_row[ids]],
                id_type=log.id_type[ids],
                id_digest=log.id_digest[ids],
            )
        )
    return ExposureParts(pieces, len(log.row_day), len(log.id_row))


def make_pair(
    synth: Any,
    keys: tuple[Any, Any],
    *,
    dp: DpParams = NO_DP,
    windows: Windows = DEFAULT_WINDOWS,
    seed: int = 0,
    precomputed: bool = False,
    brand_jobs: RunJobs | None = None,
    parts: int = 1,
    partner_parts: int = 1,
    partner_options: dict[str, Any] | None = None,
    **brand_options: Any,
) -> tuple[BrandAttribution, PartnerAttribution]:
    expo = parse_exposures(
        pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False), id_columns=PARTNER_IDS
    )
    pk, sk = keys
    partner = PartnerAttribution(
        conversions="sales",
        id_types=tuple(str(c.id_type) for c in PARTNER_IDS),
        click_days=windows.click_days,
        view_days=windows.view_days,
        exposures=lambda _types: split_log(
            partner_exposures(expo, PARTNER_IDS, OPTIONS), partner_parts
        ),
        spend=read_spend(synth.spend_path),
        rng=np.random.default_rng(seed),
        min_key_bits=1024,
        chunk_size=256,  # several chunks per cell
        **(partner_options or {}),
    )
    data = brand_data(synth)
    if precomputed:  # as the brand node stores them at upload
        data.id_points = stored_points(data)
    brand = BrandAttribution(
        session_id="s",
        hello=partner.hello(),
        data=data if parts == 1 else Parted(data, parts),
        public_key=pk,
        private_key=sk,
        dp=dp,
        jobs=brand_jobs,
        rng=np.random.default_rng(seed + 1),
        **({"chunk_size": 512} | brand_options),
    )
    return brand, partner


class Parted(BrandConversions):
    """A set whose identifiers come in ``parts`` parts by the digest's first byte, as the
    node's partitions do (every identifier of a digest in one part), and its events in
    ``parts`` groups of customers, numbered within each group."""

    def __init__(self, data: BrandConversions, parts: int) -> None:
        super().__init__(**{f.name: getattr(data, f.name) for f in dataclasses.fields(data)})
        self.parts = parts

    def identifier_parts(self, id_types: tuple[str, ...]) -> Iterator[ConversionIds]:
        [whole] = super().identifier_parts(id_types)
        bucket = whole.digest[:, 0] % self.parts
        for b in range(self.parts):
            keep = bucket == b
            yield ConversionIds(
                event=whole.event[keep],
                day=whole.day[keep],
                id_type=whole.id_type[keep],
                digest=whole.digest[keep],
                points=None if whole.points is None else whole.points[keep],
            )

    def event_groups(self) -> Iterator[EventGroup]:
        for b in range(self.parts):
            event = np.flatnonzero(self.customer % self.parts == b)
            distinct, local = np.unique(self.customer[event], return_inverse=True)
            yield EventGroup(event, local, len(distinct), self.value[event])


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
    """One whole run, both state machines in this process, through their real sequencing."""
    brand, partner = make_pair(
        synth, keys, dp=dp, windows=windows, seed=seed, precomputed=precomputed
    )
    transcript = asyncio.run(converse(brand, partner))
    [aggregates] = [m for _, m in transcript if isinstance(m, AttrAggregates)]
    assert brand.round is AttrRound.DONE and partner.round is AttrRound.DONE
    assert brand.result is not None and partner.report_id == "s"
    report = {
        "windows": {"click_days": windows.click_days, "view_days": windows.view_days},
        "campaigns": [c.model_dump(mode="json") for c in brand.result.campaigns(threshold)],
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
    ).model_dump(mode="json")


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
    assert brand.brand_tokens == len(brand_data(synth).id_event) * (windows.click_days + 1)
    # Distinct tokens are blinded once: fewer points than tokens on both sides.
    assert brand.point_count < brand.brand_tokens
    assert partner.point_count <= sum(partner.cell_tokens)


@pytest.mark.parametrize("bad", ["zero", "n-squared", "short"])
def test_event_values_that_are_not_ciphertexts_fail_the_partners_run(
    synth: Any, keys: tuple[Any, Any], bad: str
) -> None:
    """The brand's first EventValues, tampered with: a zero, a value of n² or a chunk cut
    short fails the partner's run with a clear error, before anything is summed."""
    brand, partner = make_pair(synth, keys)
    first: list[EventValues] = []

    def stop(msg: Any) -> bool:
        if isinstance(msg, EventValues):
            first.append(msg)
        return bool(first)

    async def run() -> None:
        await converse(brand, partner, stop=stop)
        msg, width = first[0], keys[0].ciphertext_bytes
        packed = {
            "zero": bytes(width) + msg.ciphertexts[width:],
            "n-squared": (keys[0].n ** 2).to_bytes(width, "big") + msg.ciphertexts[width:],
            "short": msg.ciphertexts[:-1],
        }[bad]
        with pytest.raises((InvalidCiphertextError, ProtocolError)):
            await partner.receive(dataclasses.replace(msg, ciphertexts=packed))
        brand.close()

    asyncio.run(run())
    assert partner.round is AttrRound.FAILED and partner.report_id == ""


@pytest.mark.parametrize("precomputed", [False, True], ids=["hashed", "stored-points"])
def test_a_set_read_a_part_at_a_time_with_everything_on_disk_gives_the_same_report(
    synth: Any, keys: tuple[Any, Any], tmp_path: Path, precomputed: bool
) -> None:
    """The brand reads its identifiers in parts, and its cell shuffles, token shuffle and
    ciphertext column go to files (``memory_bytes=0``); the partner reads its log in
    parts, and its log's buckets, blinded cells, join buckets and ciphertext column go
    to files too: the same report (users counted once across parts), nothing left."""
    partner_dir = tmp_path / "partner"
    brand, partner = make_pair(
        synth,
        keys,
        parts=5,
        partner_parts=4,
        precomputed=precomputed,
        spill_dir=tmp_path / "brand",
        memory_bytes=0,
        partner_options={"spill_dir": partner_dir, "memory_bytes": 0},
    )
    seen: list[bool] = []
    log_seen: list[bool] = []
    partner.progress.listeners.append(
        lambda p: seen.append(partner._join is not None and partner._join.on_disk)
    )
    partner.progress.listeners.append(
        lambda p: log_seen.append(partner._log is not None and partner._log.on_disk)
    )
    transcript = asyncio.run(converse(brand, partner))
    assert brand.round is AttrRound.DONE and partner.round is AttrRound.DONE
    assert brand.result is not None
    report = {
        "windows": DEFAULT_WINDOWS.as_dict(),
        "campaigns": [c.model_dump(mode="json") for c in brand.result.campaigns(0)],
    }
    assert_reports_equal(report, reference(synth))
    tokens = [m for _, m in transcript if isinstance(m, ConversionTokens)]
    assert sum(len(m.points) // 32 for m in tokens) == brand.brand_tokens
    assert brand.point_count < brand.brand_tokens  # each distinct token blinded once
    assert any(seen) and any(log_seen)  # the partner's buckets were files
    # Deduplicated across parts: as many points and tokens as the whole log holds.
    expo = parse_exposures(
        pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False), id_columns=PARTNER_IDS
    )
    whole = partner_exposures(expo, PARTNER_IDS, OPTIONS)
    common = np.isin(whole.id_type, ["email", "phone"])
    rows = whole.id_row[common]
    tokens_frame = pd.DataFrame(
        {
            "type": whole.id_type[common],
            "digest": [d.tobytes() for d in whole.id_digest[common]],
            "day": whole.row_day[rows],
            "cell": [
                (c, g, t)
                for c, g, t in zip(
                    whole.row_campaign[rows],
                    whole.row_group[rows],
                    whole.row_touch[rows],
                    strict=True,
                )
            ],
        }
    )
    assert partner.point_count == len(tokens_frame.drop_duplicates(["type", "digest", "day"]))
    assert sum(partner.cell_tokens) == len(tokens_frame.drop_duplicates())
    assert partner.point_count < sum(partner.cell_tokens)  # a point serves several cells
    assert not list(tmp_path.rglob("*.v")) and not list(partner_dir.iterdir())


@pytest.mark.parametrize(
    ("memory_bytes", "bits"), [(None, None), (0, None), (0, 3)], ids=["memory", "file", "files"]
)
def test_the_partners_token_join_finds_every_equal_pair_within_its_window(
    tmp_path: Path, memory_bytes: int | None, bits: int | None
) -> None:
    """Bucketed, in memory or in files, the join finds exactly the pairs a plaintext join
    of every value finds, with the cell's window applied."""
    rng = np.random.default_rng(3)
    width, cells = 10, 4
    pool = rng.integers(0, 256, (300, width), dtype=np.uint8)  # values both sides draw from
    cell_of = rng.integers(0, cells, 900)
    cell_values = pool[rng.integers(0, len(pool), 900)]
    brand_values = pool[rng.integers(0, len(pool), 2000)]
    events = rng.integers(0, 500, 2000).astype("<u4")
    lags = rng.integers(0, 8, 2000).astype(np.uint8)
    window = np.array([0, 2, 7, 3], dtype=np.int64)
    join = TokenJoin(width, 900, 2000, spill_dir=tmp_path, memory_bytes=memory_bytes, bits=bits)
    assert join.cells.buckets == 2 ** (bits or 0)
    for cell in range(cells):
        join.add_cell(cell, cell_values[cell_of == cell].tobytes())
    for start in range(0, 2000, 300):
        part = slice(start, start + 300)
        join.add_brand(brand_values[part].tobytes(), events[part].tobytes(), lags[part].tobytes())
    assert join.on_disk is (memory_bytes == 0)
    got = sorted(zip(*(a.tolist() for a in join.matches(window)), strict=True))
    want = sorted(
        (int(events[j]), int(cell_of[i]), int(lags[j]))
        for i in range(900)
        for j in range(2000)
        if bytes(cell_values[i]) == bytes(brand_values[j]) and lags[j] <= window[cell_of[i]]
    )
    assert got == want and len(want) > 100
    join.close()
    assert not list(tmp_path.iterdir())


def test_the_brand_shuffles_its_tokens_on_disk_and_removes_them_when_the_run_ends(
    synth: Any, keys: tuple[Any, Any], tmp_path: Path
) -> None:
    """Stopped at its first conversion tokens, the brand holds them in batch files under
    its spill directory; closing the run removes them. (Small chunks: more messages than
    the brand queues ahead of the network.)"""
    brand, partner = make_pair(
        synth, keys, parts=3, spill_dir=tmp_path, memory_bytes=0, chunk_size=16
    )

    async def run() -> dict[str, int]:
        await converse(brand, partner, stop=lambda m: isinstance(m, ConversionTokens))
        on_disk = {str(p.relative_to(tmp_path)): p.stat().st_size for p in tmp_path.rglob("*.v")}
        brand.close()
        partner.close()
        return on_disk

    on_disk = asyncio.run(run())
    assert on_disk and all(name.startswith("shuffle-") for name in on_disk)
    # Every token is in the batch files: point, anonymous event and lag.
    assert sum(on_disk.values()) == brand.brand_tokens * (32 + 4 + 1)
    assert not list(tmp_path.iterdir())


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


def test_the_real_sequencing_in_process(synth: Any, keys: tuple[Any, Any]) -> None:
    """The order of rounds is the state machines' own: what each side sent, in order."""
    brand, partner = make_pair(synth, keys)
    transcript = asyncio.run(converse(brand, partner))
    up = [type(m).__name__ for side, m in transcript if side == "partner"]
    down = [type(m).__name__ for side, m in transcript if side == "brand"]
    assert up[:2] == ["AttrHello", "AttrCells"] and up[-1] == "AttrAggregates"
    assert set(up[2:-1]) == {"CellTokens"} and len(up) - 3 > len(partner.cells)
    assert down[0] == "AttrAccepted" and down[-1] == "AttrDone"
    # Every cell goes back before the brand's own tokens, then its encrypted values.
    kinds = [k for i, k in enumerate(down) if i == 0 or k != down[i - 1]]
    assert kinds == ["AttrAccepted", "CellValues", "ConversionTokens", "EventValues", "AttrDone"]
    # Each cell goes back whole, once all of it is in, in chunks of at most the brand's
    # chunk size, one cell after the other.
    back = [m for side, m in transcript if isinstance(m, CellValues)]
    width = brand.value_len
    assert all(len(m.values) // width <= brand.chunk_size for m in back)
    order = [m.cell for i, m in enumerate(back) if i == 0 or m.cell != back[i - 1].cell]
    assert sorted(order) == list(range(len(partner.cells)))
    for cell, tokens in enumerate(partner.cell_tokens):
        assert sum(len(m.values) // width for m in back if m.cell == cell) == tokens
    assert len(back) > len(partner.cells)  # some cell took several chunks
    assert down.count("ConversionTokens") > 1 and down.count("EventValues") > 1
    # Chunks are numbered in order and carry what the cells declared.
    seqs = [m.seq for side, m in transcript if isinstance(m, CellTokens)]
    assert seqs == list(range(len(seqs)))
    sent = sum(len(m.points) // 32 for _, m in transcript if isinstance(m, CellTokens))
    assert sent == sum(partner.cell_tokens) == sum(brand.cell_tokens)
    assert partner.progress.tokens_sent == sent
    assert partner.progress.brand_received == brand.brand_tokens


def fresh(synth: Any, keys: tuple[Any, Any]) -> tuple[BrandAttribution, PartnerAttribution]:
    return make_pair(synth, keys)


async def at_round(
    synth: Any, keys: tuple[Any, Any], side: str, target: AttrRound
) -> tuple[BrandAttribution, PartnerAttribution]:
    """A pair where ``side`` is in round ``target`` and waits for its next message."""
    brand, partner = fresh(synth, keys)
    if target is AttrRound.HELLO:
        return brand, partner
    if side == "brand" and target is AttrRound.CELLS:
        brand.start()
        return brand, partner
    if side == "partner" and target is AttrRound.CELLS:
        await partner.receive(brand.start())  # the log is being hashed: still CELLS
        return brand, partner
    stops = {
        # brand: every cell declared, none of its tokens yet
        ("brand", AttrRound.TOKENS): lambda m: isinstance(m, CellTokens),
        # partner: tokens flowing, nothing of the brand's yet
        ("partner", AttrRound.TOKENS): lambda m: isinstance(m, CellValues),
        # partner: aggregates sent, AttrDone not delivered
        ("partner", AttrRound.RESULT): lambda m: isinstance(m, AttrDone),
        ("brand", AttrRound.DONE): lambda _m: False,
        ("partner", AttrRound.DONE): lambda _m: False,
    }
    await converse(brand, partner, stops[(side, target)])
    machine = brand if side == "brand" else partner
    assert machine.round is target, (side, machine.round)
    return brand, partner


def _brand_messages(cells: AttrCells) -> dict[str, Any]:
    return {
        "AttrHello": AttrHello(conversions="sales", click_days=7, view_days=1, id_types=("email",)),
        "AttrCells": cells,
        "CellTokens": CellTokens(seq=0, cell=0, points=bytes(32)),
        "AttrAggregates": AttrAggregates(groups=(), attributed=()),
    }


# (round, message the brand must refuse there)
BRAND_OUT_OF_ROUND = [
    (AttrRound.HELLO, "AttrCells"),
    (AttrRound.HELLO, "CellTokens"),
    (AttrRound.HELLO, "AttrAggregates"),
    (AttrRound.CELLS, "AttrHello"),
    (AttrRound.CELLS, "CellTokens"),
    (AttrRound.CELLS, "AttrAggregates"),
    (AttrRound.TOKENS, "AttrHello"),
    (AttrRound.TOKENS, "AttrCells"),
    (AttrRound.TOKENS, "AttrAggregates"),  # before every cell's tokens
    (AttrRound.DONE, "AttrCells"),
    (AttrRound.DONE, "CellTokens"),
    (AttrRound.DONE, "AttrAggregates"),
]


@pytest.mark.parametrize(("round_", "kind"), BRAND_OUT_OF_ROUND, ids=lambda v: str(v))
def test_the_brand_refuses_every_message_out_of_round(
    synth: Any, keys: tuple[Any, Any], round_: AttrRound, kind: str
) -> None:
    async def scenario() -> None:
        brand, partner = await at_round(synth, keys, "brand", round_)
        cells = brand.cells and AttrCells(cells=brand.cells, cell_tokens=brand.cell_tokens)
        if not cells:
            cells = AttrCells(cells=(Cell("c1", "exposed", "click"),), cell_tokens=(1,))
        msg = _brand_messages(cells)[kind]
        if kind == "CellTokens" and round_ is AttrRound.TOKENS:
            msg = dataclasses.replace(msg, seq=0)
        with pytest.raises(ProtocolError):
            await brand.receive(msg)
        if round_ is AttrRound.DONE:
            assert brand.round is AttrRound.DONE  # a finished run stays finished
            return
        assert brand.round is AttrRound.FAILED
        with pytest.raises(ProtocolError):  # the refusal is what the partner is told
            async for _ in brand.outgoing():
                pass
        with pytest.raises(ProtocolError, match="has failed"):
            await brand.receive(msg)
        partner.close()

    asyncio.run(scenario())


def test_the_brand_refuses_bad_chunks_and_cells(synth: Any, keys: tuple[Any, Any]) -> None:
    async def refused(msgs: list[Any], why: str) -> None:
        brand, _partner = await at_round(synth, keys, "brand", AttrRound.CELLS)
        with pytest.raises(ProtocolError, match=why):
            for m in msgs:
                await brand.receive(m)
        assert brand.round is AttrRound.FAILED
        brand.close()

    async def scenario() -> None:
        brand, _partner = await at_round(synth, keys, "brand", AttrRound.TOKENS)
        cells = AttrCells(cells=brand.cells, cell_tokens=brand.cell_tokens)
        brand.close()
        c0 = Cell("c1", "exposed", "click")
        for bad, why in (
            (AttrCells(cells=(), cell_tokens=()), "at least one cell"),
            (AttrCells(cells=(c0,), cell_tokens=(0,)), "at least one token"),
            (AttrCells(cells=(c0, c0), cell_tokens=(1, 1)), "distinct"),
            (AttrCells(cells=cells.cells, cell_tokens=cells.cell_tokens[1:]), "one token count"),
        ):
            await refused([bad], why)
        one = AttrCells(cells=(c0,), cell_tokens=(2,))
        point = bytes(32)
        await refused([one, CellTokens(seq=1, cell=0, points=point)], "out-of-order")
        await refused(
            [one, CellTokens(0, 0, point), CellTokens(0, 0, point)], "duplicate cell chunk 0"
        )
        await refused([one, CellTokens(seq=0, cell=3, points=point)], "unknown cell 3")
        await refused([one, CellTokens(seq=0, cell=0, points=bytes(31))], "whole number")
        await refused([one, CellTokens(seq=0, cell=0, points=bytes(96))], "exceeds its declared")

    asyncio.run(scenario())


def test_a_stream_that_ends_before_the_aggregates_fails_the_run(
    synth: Any, keys: tuple[Any, Any]
) -> None:
    async def scenario() -> None:
        brand, partner = await at_round(synth, keys, "brand", AttrRound.TOKENS)
        brand.end_of_input()
        assert brand.round is AttrRound.FAILED
        with pytest.raises(ProtocolError, match="before the aggregates; no report was stored"):
            async for _ in brand.outgoing():
                pass
        partner.close()

    asyncio.run(scenario())


# (round, message the partner must refuse there)
PARTNER_OUT_OF_ROUND = [
    (AttrRound.HELLO, "CellValues"),
    (AttrRound.HELLO, "ConversionTokens"),
    (AttrRound.HELLO, "EventValues"),
    (AttrRound.HELLO, "AttrDone"),
    (AttrRound.CELLS, "AttrAccepted"),
    (AttrRound.CELLS, "CellValues"),
    (AttrRound.CELLS, "ConversionTokens"),
    (AttrRound.CELLS, "EventValues"),
    (AttrRound.CELLS, "AttrDone"),
    (AttrRound.TOKENS, "AttrAccepted"),
    (AttrRound.TOKENS, "AttrDone"),
    (AttrRound.RESULT, "AttrAccepted"),
    (AttrRound.RESULT, "CellValues"),
    (AttrRound.RESULT, "ConversionTokens"),
    (AttrRound.RESULT, "EventValues"),
    (AttrRound.DONE, "AttrAccepted"),
    (AttrRound.DONE, "AttrDone"),
]


@pytest.mark.parametrize(("round_", "kind"), PARTNER_OUT_OF_ROUND, ids=lambda v: str(v))
def test_the_partner_refuses_every_message_out_of_round(
    synth: Any, keys: tuple[Any, Any], round_: AttrRound, kind: str
) -> None:
    async def scenario() -> None:
        brand, partner = await at_round(synth, keys, "partner", round_)
        msgs: dict[str, AttrBrandMessage] = {
            "AttrAccepted": brand.accepted(),
            "CellValues": CellValues(cell=0, values=b""),
            "ConversionTokens": ConversionTokens(seq=0, points=b"", events=b"", lags=b""),
            "EventValues": EventValues(seq=0, start=0, customers=b"", ciphertexts=b""),
            "AttrDone": AttrDone(report_id="r"),
        }
        with pytest.raises(ProtocolError):
            await partner.receive(msgs[kind])
        if round_ is AttrRound.DONE:
            assert partner.round is AttrRound.DONE
        else:
            assert partner.round is AttrRound.FAILED
            with pytest.raises(ProtocolError):
                async for _ in partner.outgoing():
                    pass
        brand.close()
        partner.close()

    asyncio.run(scenario())


def test_the_partner_refuses_a_brand_that_names_other_types(
    synth: Any, keys: tuple[Any, Any]
) -> None:
    async def scenario() -> None:
        brand, partner = fresh(synth, keys)
        accepted = brand.accepted()
        assert accepted.id_types == ("email", "phone")  # the brand holds no maids
        stranger = dataclasses.replace(accepted, id_types=("email", "passport"))
        with pytest.raises(ProtocolError, match="identifier types"):
            await partner.receive(stranger)
        short = dataclasses.replace(accepted, max_lag=0)
        with pytest.raises(ProtocolError, match="do not cover the requested windows"):
            await fresh(synth, keys)[1].receive(short)

    asyncio.run(scenario())


def test_the_log_is_cut_into_cells_only_after_the_brand_accepted(
    synth: Any, keys: tuple[Any, Any]
) -> None:
    _, partner = fresh(synth, keys)
    expo = parse_exposures(
        pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False), id_columns=PARTNER_IDS
    )
    with pytest.raises(ProtocolError, match="round hello"):
        partner.on_exposures(partner_exposures(expo, PARTNER_IDS, OPTIONS))
    brand2, partner2 = fresh(synth, keys)
    asyncio.run(converse(brand2, partner2))
    assert brand2.value_len == partner2.value_len > 0


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


@pytest.mark.parametrize("memory_bytes", [None, 0], ids=["in-memory", "in-a-file"])
def test_event_values_encrypted_over_the_pool_decrypt_to_the_values(
    synth: Any, keys: tuple[Any, Any], memory_bytes: int | None, monkeypatch: Any
) -> None:
    """The pool path (key shipped to workers as JSON, several jobs) and the path without a
    pool encrypt every event's value, in the anonymous order, into rows in memory or in
    files; the messages decrypt to the plaintext values, each at its event's anonymous
    number."""
    from concurrent.futures import ThreadPoolExecutor

    import cleanroom.federated.attribution.brand as brand_module

    monkeypatch.setattr(brand_module, "EVENT_PART", 16)  # several encryption jobs
    pk, sk = keys

    def decrypted(jobs: RunJobs | None) -> tuple[list[int], list[bytes], Any]:
        brand, _ = make_pair(synth, keys, brand_jobs=jobs)
        brand._memory_bytes = memory_bytes
        rows = asyncio.run(brand.encrypt_event_values())
        assert rows.on_disk is (memory_bytes == 0)
        messages = list(brand.event_values(rows))
        rows.close()
        assert [m.start for m in messages] == list(range(0, brand.data.events, 256))
        values = [
            sk.decrypt(c) for m in messages for c in ciphertexts_from_bytes(m.ciphertexts, pk)
        ]
        data = brand.data
        assert isinstance(data, BrandConversions)
        anon = brand._event_anon(np.arange(data.events))
        want = np.empty(data.events, dtype=np.int64)
        want[anon] = [round(float(v) * VALUE_SCALE) for v in data.value]
        assert values == want.tolist() and len(values) == data.events
        return values, [m.customers for m in messages], brand

    with ThreadPoolExecutor(2) as pool:
        pooled, pooled_customers, _ = decrypted(RunJobs(pool))
    plain, plain_customers, brand = decrypted(None)
    assert pooled == plain and pooled_customers == plain_customers  # same seed, same order
    # The anonymous customer of each event is one number per customer, the same for
    # every event of that customer.
    anon_customer = np.frombuffer(b"".join(plain_customers), dtype="<u4")
    data = brand.data
    assert isinstance(data, BrandConversions)
    real = np.empty(data.events, dtype=np.int64)
    real[brand._event_anon(np.arange(data.events))] = data.customer
    pairs = set(zip(anon_customer.tolist(), real.tolist(), strict=True))
    assert len(pairs) == len(set(real.tolist())) == len(set(anon_customer.tolist()))


def test_groups_below_the_threshold_carry_no_numbers(synth: Any, keys: tuple[Any, Any]) -> None:
    exact, _, _, _ = run_protocol(synth, keys)
    holdout_users = sorted(c["holdout"]["users"] for c in exact["campaigns"])
    threshold = holdout_users[-1] + 1  # every holdout group falls below it
    report, _, _, _ = run_protocol(synth, keys, threshold=threshold)
    for c in report["campaigns"]:
        assert c["suppressed"] is True
        assert all(v is None for v in c["holdout"].values())
        assert c["lift"] is None and c["lift_ci95"] is None and c["iroas"] is None
