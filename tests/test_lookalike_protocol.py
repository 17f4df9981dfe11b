"""The lookalike state machines, wired in-process, against a centralized fit.

With label-DP off the private model is the model scikit-learn fits on the
pooled data (same quantized features, same C, same split): the weights agree
to 1e-4 and the holdout AUC the brand computes from encrypted sums equals the
centralized model's to 0.001 — on the synthetic world and on scikit-learn's
breast cancer data.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reader import read_hashed_chunks
from cleanroom.federated.lookalike.aggregates import tier_sizes
from cleanroom.federated.lookalike.brand import (
    MATCHED,
    SEED,
    BrandLookalike,
    LabelledPoints,
    row_labels,
)
from cleanroom.federated.lookalike.features import FeaturePipeline
from cleanroom.federated.lookalike.inputs import PartnerUsers, load_partner_users
from cleanroom.federated.lookalike.messages import (
    BrandList,
    BrandPoints,
    DecryptedSums,
    EncryptedLabels,
    ExchangedRows,
    LookalikeAccepted,
    LookalikeDone,
    LookalikeMetrics,
    LookalikeMode,
    LookalikeRound,
    MaskedSums,
    MatchedRows,
    SlotPoints,
)
from cleanroom.federated.lookalike.partner import PartnerLookalike, score_rows
from cleanroom.federated.lookalike.synth import synthesize_lookalike
from cleanroom.federated.paillier import _unsafe_generate_keypair_for_tests
from cleanroom.matching.bulk import ArrayAppender, FileArray, whole_array
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.workers import dst_for, hash_points
from cleanroom.proto.errors import InvalidInput, PolicyViolation, ProtocolError
from tests.helpers import converse, sha

OPTIONS = NormalizeOptions(default_region="US")
PARTNER_IDS = parse_id_columns("email,phone,maid")
BRAND_IDS = parse_id_columns("email,phone")
L2 = 1.0


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return _unsafe_generate_keypair_for_tests(1024)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return synthesize_lookalike(
        tmp_path_factory.mktemp("lookalike"),
        partner_users=3000,
        customers=1400,
        matched=1000,
        seed=5,
    )


@pytest.fixture(scope="module")
def users(world: Any) -> PartnerUsers:
    return load_partner_users(
        world.users_path,
        world.features_path,
        user_column="user_id",
        id_columns=PARTNER_IDS,
        options=OPTIONS,
        feature_columns=world.feature_spec,
    )


def brand_identifiers(path: Path) -> tuple[dict[tuple[str, bytes], int], np.ndarray, np.ndarray]:
    """The CRM's distinct identifiers with their seed label (gold), as the node stores them."""
    labels: dict[tuple[str, bytes], int] = {}
    for chunk in read_hashed_chunks(path, BRAND_IDS, OPTIONS, keep=["tier"]):
        seed = np.char.lower(chunk.kept["tier"].astype(str)) == "gold"
        for spec, col in zip(BRAND_IDS, chunk.columns, strict=True):
            present = np.flatnonzero(col.present)
            for digest, flag in zip(
                (col.digests[i : i + 32] for i in range(0, len(col.digests), 32)),
                seed[present].tolist(),
                strict=True,
            ):
                key = (str(spec.id_type), digest)
                labels[key] = max(labels.get(key, 0), int(flag))
    return labels, *points_of(labels)


def points_of(labels: dict[tuple[str, bytes], int]) -> tuple[np.ndarray, np.ndarray]:
    points, flags = [], []
    for id_type in sorted({t for t, _ in labels}):
        items = [(d, f) for (t, d), f in labels.items() if t == id_type]
        packed = hash_points(b"".join(d for d, _ in items), dst_for(id_type))
        points.append(np.frombuffer(packed, dtype="S32"))
        flags += [f for _, f in items]
    return np.concatenate(points), np.asarray(flags, dtype=np.uint8)


def pooled_labels(
    data: PartnerSet, labels: dict[tuple[str, bytes], int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per partner user: 1 if an identifier of theirs is a seed identifier (plaintext join)."""
    y = np.zeros(data.row_count, dtype=np.uint8)
    matched = np.zeros(data.row_count, dtype=bool)
    for column in data.columns:
        for row, i in zip(
            whole_array(column.rows).tolist(), range(0, len(column.digests), 32), strict=True
        ):
            label = labels.get((column.id_type, column.digests[i : i + 32]))
            if label is not None:
                matched[row] = True
                y[row] |= label
    return y, matched


def make_pair(
    users: PartnerUsers,
    points: np.ndarray | LabelledPoints,
    flags: np.ndarray | None,
    keys: tuple[Any, Any],
    *,
    mode: LookalikeMode = LookalikeMode.HIDDEN_SEED,
    min_seed: int = 100,
    seed: int = 0,
    brand_options: dict[str, Any] | None = None,
    **partner_options: Any,
) -> tuple[BrandLookalike, PartnerLookalike]:
    _pk, sk = keys
    partner = PartnerLookalike(
        audience="crm",
        data=users.data,
        features=users.features,
        mode=mode,
        l2=L2,
        rng=np.random.default_rng(seed),
        min_key_bits=1024,
        **partner_options,
    )
    brand = BrandLookalike(
        session_id="job-1",
        hello=partner.hello(),
        points=points,
        labels=flags,
        private_key=sk,
        min_seed=min_seed,
        chunk_size=997,
        rng=np.random.default_rng(seed + 1),
        noise_rng=np.random.default_rng(seed + 2),
        **(brand_options or {}),
    )
    return brand, partner


def centralized(
    users: PartnerUsers, y: np.ndarray, train: np.ndarray, holdout: np.ndarray
) -> tuple[LogisticRegression, float]:
    x = users.features.floats()
    model = LogisticRegression(C=1 / L2, tol=1e-12, max_iter=100_000)
    model.fit(x[train], y[train])
    return model, float(roc_auc_score(y[holdout], model.decision_function(x[holdout])))


def check_exact(
    brand: BrandLookalike, partner: PartnerLookalike, users: PartnerUsers, y: np.ndarray
) -> None:
    model, auc = centralized(users, y, partner.train_users, partner.holdout_users)
    assert partner.model is not None and brand.metrics is not None
    np.testing.assert_allclose(partner.model.weights, model.coef_[0], atol=1e-4)
    assert partner.model.intercept == pytest.approx(model.intercept_[0], abs=1e-4)
    assert brand.metrics.auc == pytest.approx(auc, abs=1e-3)
    # Recall at each tier, from the private model's own holdout scores in plaintext.
    scores = score_rows(partner.model, users.features.rows(partner.holdout_users))
    held = y[partner.holdout_users]
    order = np.argsort(scores, kind="stable")[::-1]
    for tier, k, recall in zip(
        partner.tiers, tier_sizes(len(held), partner.tiers), brand.metrics.recall, strict=True
    ):
        assert recall == pytest.approx(held[order[:k]].sum() / held.sum()), tier
    assert brand.metrics.holdout_seeds == int(held.sum())


@pytest.mark.parametrize("labels_on_disk", [False, True])
def test_hidden_seed_model_equals_the_centralized_fit(
    world: Any, users: PartnerUsers, keys: tuple[Any, Any], labels_on_disk: bool, tmp_path: Path
) -> None:
    """Also with the partner's Enc(y) (and its padded slots) in files past 0 bytes."""
    labels, points, flags = brand_identifiers(world.crm_path)
    disk: dict[str, Any] = {"spill_dir": tmp_path, "memory_bytes": 0} if labels_on_disk else {}
    # Small label batches: many more label chunks than the partner checks at once.
    brand, partner = make_pair(
        users, points, flags, keys, brand_options={"label_batch": 61}, **disk
    )
    transcript = asyncio.run(converse(brand, partner))
    y, matched = pooled_labels(users.data, labels)
    assert brand.intersection == int(matched.sum())
    assert brand.seeds == int(y.sum())
    check_exact(brand, partner, users, y)
    # The partner received no match flag, and one Enc(y) per offered row.
    kinds = {type(m) for side, m in transcript if side == "brand"}
    assert MatchedRows not in kinds
    width = keys[0].ciphertext_bytes
    labels_in = [m for side, m in transcript if isinstance(m, EncryptedLabels)]
    assert sum(len(m.ciphertexts) for m in labels_in) == width * len(users.data.records())
    # The package: every user scored, nested tiers, best first.
    assert partner.package is not None and brand.outcome is not None
    package = partner.package
    assert len(package.ranked) == users.data.row_count
    assert package.tier_sizes == tuple(tier_sizes(users.data.row_count, partner.tiers))
    top = package.scores[package.ranked]
    assert (np.diff(top) <= 0).all()
    assert brand.outcome.tier_sizes == package.tier_sizes
    assert partner.package_id == "job-1"


@pytest.mark.parametrize("on_disk", [False, True])
def test_matched_mode_is_exact_and_excludes_customers(
    world: Any, users: PartnerUsers, keys: tuple[Any, Any], on_disk: bool, tmp_path: Path
) -> None:
    """Also with the brand's audience read in batches of 37 points and its shuffles and
    comparisons all in files (past 0 bytes): the same, exact answer, no file left."""
    labels, points, flags = brand_identifiers(world.crm_path)
    options: dict[str, Any] = {"label_batch": 61}
    given: np.ndarray | LabelledPoints = points
    given_flags: np.ndarray | None = flags
    if on_disk:
        spill = tmp_path / "spill"
        options |= {"spill_dir": spill, "memory_bytes": 0}
        batches = [
            (points[i : i + 37].tobytes(), flags[i : i + 37]) for i in range(0, len(points), 37)
        ]
        seeds = int((flags == 1).sum())
        given, given_flags = LabelledPoints(seeds, len(flags) - seeds, lambda: iter(batches)), None
    brand, partner = make_pair(
        users,
        given,
        given_flags,
        keys,
        mode=LookalikeMode.MATCHED,
        seed=3,
        brand_options=options,
    )
    if on_disk:
        assert not spill.exists()  # nothing before ``start``: a refused job leaves no file
    transcript = asyncio.run(converse(brand, partner))
    if on_disk:
        assert spill.is_dir()  # the shuffles and joins were there, and went once read
        assert list(spill.iterdir()) == []
    matched_flags = np.concatenate(
        [np.frombuffer(m.flags, np.uint8) for s, m in transcript if isinstance(m, MatchedRows)]
    )
    y, matched = pooled_labels(users.data, labels)
    assert partner.intersection == int(matched.sum())
    assert len(matched_flags) == len(users.data.records())  # one flag per offered row
    assert int(matched_flags.sum()) == int(matched.sum())
    check_exact(brand, partner, users, y)
    width = keys[0].ciphertext_bytes
    labels_in = [m for side, m in transcript if isinstance(m, EncryptedLabels)]
    assert sum(len(m.ciphertexts) for m in labels_in) == width * int(matched.sum())
    assert partner.package is not None
    assert set(partner.package.excluded.tolist()) == set(np.flatnonzero(matched).tolist())
    assert not set(partner.package.ranked.tolist()) & set(np.flatnonzero(matched).tolist())


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("matched_only", [False, True])
def test_row_labels_stream_the_labels_of_the_rows_in_batches(
    on_disk: bool, matched_only: bool, tmp_path: Path
) -> None:
    """The brand's per-row codes read a window at a time (here 7 rows) give the labels in
    row order, in batches of 5 across the windows' edges, from memory or from a file."""
    rng = np.random.default_rng(11)
    codes = rng.choice(np.asarray([0, MATCHED, MATCHED | SEED], np.uint8), 103)
    appender = ArrayAppender(np.uint8, spill_dir=tmp_path, memory_bytes=0 if on_disk else None)
    appender.append(codes)
    column = appender.finish()
    assert isinstance(column, FileArray) == on_disk
    batches = list(row_labels(column, matched_only, 5, window=7))
    rows = codes[(codes & MATCHED) != 0] if matched_only else codes
    expected = ((rows & SEED) != 0).astype(np.uint8).tobytes()
    assert b"".join(batches) == expected
    assert all(len(b) == 5 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 5


@pytest.mark.parametrize("case", ["matches", "and 300 more", "refused", "given"])
def test_matched_mode_after_a_match_exchanges_only_the_matched_rows(
    world: Any, users: PartnerUsers, keys: tuple[Any, Any], case: str
) -> None:
    """The partner matches first (``find_matches``, once the brand accepted) and sends
    the slots of those rows only; every other row is a known negative. Also when it
    names rows that do not match: the brand compares every slot itself, so its counts,
    the model and the package are those of the plaintext join all the same. A refused
    match (None) exchanges every row; ``matched_users`` gives the flags up front."""
    labels, points, flags = brand_identifiers(world.crm_path)
    y, matched = pooled_labels(users.data, labels)
    named = matched.copy()
    if case == "and 300 more":
        unmatched = np.flatnonzero(~matched)
        named[np.random.default_rng(4).choice(unmatched, 300, replace=False)] = True
    calls = []

    async def find_matches() -> np.ndarray | None:
        calls.append(brand.round)
        return None if case == "refused" else named

    options: dict[str, Any] = (
        {"matched_users": named} if case == "given" else {"find_matches": find_matches}
    )
    brand, partner = make_pair(
        users,
        points,
        flags,
        keys,
        mode=LookalikeMode.MATCHED,
        seed=7,
        brand_options={"label_batch": 61},
        **options,
    )
    assert brand.hello.match_first and brand.exchanged_rows is None
    transcript = asyncio.run(converse(brand, partner))
    assert calls == ([] if case == "given" else [LookalikeRound.EXCHANGE])  # once, accepted
    exchanged = len(users.data.records()) if case == "refused" else int(named.sum())
    assert brand.exchanged_rows == partner.exchanged_rows == exchanged
    assert brand.declared_points == exchanged * partner.slots
    up = [m for side, m in transcript if side == "partner"]
    kinds = [type(m) for m in up]
    assert kinds.count(ExchangedRows) == 1
    assert kinds.index(ExchangedRows) < kinds.index(SlotPoints)
    sent = sum(len(m.points) for m in up if isinstance(m, SlotPoints))
    assert sent == 32 * exchanged * partner.slots  # the named rows' slots, no more
    matched_flags = np.concatenate(
        [np.frombuffer(m.flags, np.uint8) for s, m in transcript if isinstance(m, MatchedRows)]
    )
    assert len(matched_flags) == exchanged
    assert brand.intersection == partner.intersection == int(matched.sum())
    assert brand.seeds == int(y.sum())
    check_exact(brand, partner, users, y)
    # Trained on every offered row, the unmatched ones as negatives.
    assert len(partner.train_users) + len(partner.holdout_users) == len(users.data.records())
    assert partner.package is not None
    assert set(partner.package.excluded.tolist()) == set(np.flatnonzero(matched).tolist())


def test_only_a_matched_job_matches_first(users: PartnerUsers, keys: tuple[Any, Any]) -> None:
    rows = users.data.row_count

    def partner(mode: LookalikeMode, matched_users: np.ndarray | None) -> PartnerLookalike:
        return PartnerLookalike(
            audience="crm",
            data=users.data,
            features=users.features,
            mode=mode,
            matched_users=matched_users,
        )

    matched = LookalikeMode.MATCHED
    with pytest.raises(ValueError, match="only a matched job"):
        partner(LookalikeMode.HIDDEN_SEED, np.ones(rows, dtype=bool))
    with pytest.raises(ValueError, match="match flags for"):
        partner(matched, np.ones(rows - 1, dtype=bool))
    with pytest.raises(InvalidInput, match="none of the users matches"):
        partner(matched, np.zeros(rows, dtype=bool))
    hello = partner(matched, None).hello()
    assert not hello.match_first
    points, flags = np.zeros(4, dtype="S32"), np.array([1, 0, 1, 0], dtype=np.uint8)

    def brand(wrong: Any) -> BrandLookalike:
        return BrandLookalike(
            session_id="job-x",
            hello=wrong,
            points=points,
            labels=flags,
            private_key=keys[1],
            min_seed=1,
        )

    with pytest.raises(ProtocolError, match="only a matched job matches first"):
        brand(dataclasses.replace(hello, mode=LookalikeMode.HIDDEN_SEED, match_first=True))
    first = dataclasses.replace(hello, match_first=True)
    slot = SlotPoints(seq=0, points=bytes(32 * hello.slots))
    for wrong, messages, why in (
        (first, [slot], "slot points before ExchangedRows"),
        (first, [ExchangedRows(0)], "0 rows exchanged"),
        (first, [ExchangedRows(hello.rows + 1)], f"{hello.rows + 1} rows exchanged"),
        (first, [ExchangedRows(5), ExchangedRows(5)], "comes once"),
        (hello, [ExchangedRows(5)], "comes once"),
    ):
        machine = brand(wrong)

        async def feed(machine: BrandLookalike = machine, messages: Any = messages) -> None:
            machine.start()
            try:
                for msg in messages:
                    await machine.receive(msg)
            finally:
                machine.close()

        with pytest.raises(ProtocolError, match=why):
            asyncio.run(feed())
        assert machine.error is not None


def test_breast_cancer_private_fit_equals_sklearn(keys: tuple[Any, Any]) -> None:

    data = load_breast_cancer(as_frame=True)
    frame: pd.DataFrame = data.frame
    rows = len(frame)
    digests = b"".join(sha(f"patient{i}@example.org") for i in range(rows))
    partner_set = PartnerSet(rows, [PartnerColumn("email", np.arange(rows), digests)])
    names = [c for c in frame.columns if c != "target"]
    pipeline = FeaturePipeline.fit(frame, [(n, "numeric") for n in names])
    features = pipeline.encode(frame)
    users = PartnerUsers(
        user_ids=np.asarray([f"p{i}" for i in range(rows)], dtype=object),
        data=partner_set,
        report=None,  # type: ignore[arg-type]
        pipeline=pipeline,
        features=features,
    )
    y = (frame["target"].to_numpy() == 0).astype(np.uint8)  # malignant = seed
    labels = {("email", digests[i * 32 : (i + 1) * 32]): int(y[i]) for i in range(rows)}
    points, flags = points_of(labels)
    brand, partner = make_pair(users, points, flags, keys, seed=11)
    asyncio.run(converse(brand, partner))
    check_exact(brand, partner, users, y)
    assert brand.metrics is not None and brand.metrics.auc is not None
    assert brand.metrics.auc > 0.97  # the data set is nearly separable


def test_too_few_matched_seeds_are_refused(
    world: Any, users: PartnerUsers, keys: tuple[Any, Any]
) -> None:
    _labels, points, flags = brand_identifiers(world.crm_path)
    brand, partner = make_pair(users, points, flags, keys, min_seed=5000)
    with pytest.raises(PolicyViolation, match="at least 5000"):
        asyncio.run(converse(brand, partner))
    assert brand.outcome is None and partner.package is None


def test_a_mode_the_policy_forbids_is_refused(
    world: Any, users: PartnerUsers, keys: tuple[Any, Any]
) -> None:
    _labels, points, flags = brand_identifiers(world.crm_path)
    partner = PartnerLookalike(
        audience="crm", data=users.data, features=users.features, mode=LookalikeMode.MATCHED
    )
    with pytest.raises(PolicyViolation, match="matched is not allowed"):
        BrandLookalike(
            session_id="x",
            hello=partner.hello(),
            points=points,
            labels=flags,
            private_key=keys[1],
            min_seed=1,
            modes=(LookalikeMode.HIDDEN_SEED,),
        )


def _accepted_again(accepted: LookalikeAccepted, _points: np.ndarray) -> Any:
    return accepted


def _too_many_points(accepted: LookalikeAccepted, points: np.ndarray) -> Any:
    packed = points[: accepted.brand_points + 1].tobytes()
    return BrandPoints(list=BrandList.SEED, seq=0, points=packed)


def _constant(message: Any) -> Callable[[LookalikeAccepted, np.ndarray], Any]:
    return lambda _accepted, _points: message


@pytest.mark.parametrize(
    ("side", "make", "error"),
    [
        ("brand", _constant(MaskedSums(ciphertexts=(1, 2), train_rows=10)), "arrived in round"),
        ("brand", _constant(SlotPoints(seq=3, points=b"\x09" * 32)), "out-of-order slot chunk"),
        ("partner", _constant(DecryptedSums(values=(1, 2, 3))), "arrived in round"),
        ("partner", _constant(LookalikeDone(package_id="p")), "arrived in round"),
        (
            "partner",
            _constant(EncryptedLabels(seq=0, start=0, ciphertexts=b"\x01" * 256)),
            "arrived in round",
        ),
        ("partner", _constant(LookalikeMetrics(1, 1, 0.5, (), ())), "arrived in round"),
        ("partner", _accepted_again, "LookalikeAccepted arrived in round exchange"),
        ("partner", _too_many_points, "more than the announced"),
    ],
)
def test_a_message_out_of_place_fails_the_job(
    world: Any,
    users: PartnerUsers,
    keys: tuple[Any, Any],
    side: str,
    make: Callable[[LookalikeAccepted, np.ndarray], Any],
    error: str,
) -> None:
    _labels, points, flags = brand_identifiers(world.crm_path)
    brand, partner = make_pair(users, points, flags, keys)

    async def run() -> None:
        accepted = brand.start()
        await partner.receive(accepted)
        target: Any = brand if side == "brand" else partner
        message = make(accepted, points)
        with pytest.raises(ProtocolError, match=error):
            await target.receive(message)
        assert target.error is not None
        with pytest.raises(ProtocolError, match="has failed"):
            await target.receive(message)
        brand.close()
        partner.close()

    asyncio.run(run())


def test_features_must_cover_every_user(world: Any, tmp_path: Path) -> None:
    lines = world.features_path.read_text().splitlines()
    short = tmp_path / "features.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InvalidInput, match="has no row in feature file"):
        load_partner_users(
            world.users_path, short, user_column="user_id", id_columns=PARTNER_IDS, options=OPTIONS
        )
    extra = tmp_path / "extra.csv"
    first = lines[1].split(",")
    extra.write_text("\n".join([*lines, ",".join(["U999999999", *first[1:]])]) + "\n")
    with pytest.raises(InvalidInput, match=r"U999999999.*not in the users"):
        load_partner_users(
            world.users_path, extra, user_column="user_id", id_columns=PARTNER_IDS, options=OPTIONS
        )
    with pytest.raises(InvalidInput, match="no user column 'uid'"):
        load_partner_users(
            world.users_path,
            world.features_path,
            user_column="uid",
            id_columns=PARTNER_IDS,
            options=OPTIONS,
        )
    bad = tmp_path / "bad.csv"
    rows = world.features_path.read_text().splitlines()
    cells = rows[5].split(",")
    cells[8] = "nan"  # a numeric column
    rows[5] = ",".join(cells)
    bad.write_text("\n".join(rows) + "\n")
    header = rows[0].split(",")
    with pytest.raises(InvalidInput, match=rf"feature column '{header[8]}', row 5: 'nan'"):
        load_partner_users(
            world.users_path,
            bad,
            user_column="user_id",
            id_columns=PARTNER_IDS,
            options=OPTIONS,
            feature_columns=world.feature_spec,
        )


def test_label_sums_equal_the_plaintext_sums(keys: tuple[Any, Any]) -> None:
    """Bucketed sums over slices equal Xᵀy and Σy: 0/1 blocks, standardized flags (two
    values far from 0 and 1), a constant, wide numerics, a zero column."""
    from cleanroom.federated.lookalike.aggregates import holdout_sums, label_sums, multiply

    pk, sk = keys
    rng = np.random.default_rng(3)
    n = 700
    y = rng.integers(0, 2, n)
    x = np.hstack(
        [
            rng.integers(0, 2, (n, 11)),  # 0/1 features
            np.where(rng.random((n, 2)) < 0.3, 583, 497),  # standardized flags
            np.full((n, 1), 512),  # a constant
            rng.integers(0, 1025, (n, 2)),
            np.zeros((n, 1), dtype=np.int64),
        ]
    ).astype(np.int32)
    x[:300, 12] = 497  # one slice sees only one of the flag's values
    width = pk.ciphertext_bytes
    packed = b"".join(c.to_bytes(width, "big") for c in sk.encrypt_many(y.tolist()))
    n2 = pk.n * pk.n
    cut = 300
    parts = [
        label_sums(n2, packed[: cut * width], width, x[:cut]),
        label_sums(n2, packed[cut * width :], width, x[cut:]),
    ]
    total = multiply(n2, parts)
    assert sk.decrypt_many(total.ciphertexts) == [*(x.T @ y).tolist(), int(y.sum())]
    # About one multiplication per row per numeric, and per row per block of eight
    # two-valued features (15 here: two blocks), whatever their two values.
    assert total.multiplications < n * (2 + 2 + 1) + 4 * 1025 * 2 + 2 * 256 * 15 + 2 * 15 * 40
    scores = rng.normal(size=n).round(1)  # ties
    sums = holdout_sums(n2, packed, width, scores, (1.0, 10.0, 50.0))
    seeds, rank_sum2, *top = sk.decrypt_many([sums.seeds, sums.rank_sum2, *sums.top])
    assert seeds == y.sum()
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    assert rank_sum2 == round(2 * ranks[y == 1].sum())
    order = np.argsort(scores, kind="stable")[::-1]
    for k, got in zip(tier_sizes(n, (1.0, 10.0, 50.0)), top, strict=True):
        assert got == y[np.sort(order[:k])].sum() or got == y[order[:k]].sum()
