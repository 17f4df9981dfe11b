"""A synthetic lookalike world: a partner's users and features, a brand's labelled CRM.

* The partner has ``partner_users`` users, each known by email, phone and/or
  a mobile ad id (formatted inconsistently, as in the attribution data), and
  a feature row per user: 0/1 flags (app installs, interests), numeric
  behaviour (sessions, spend, recency; skewed, some heavy-tailed) and one
  categorical column (device family). The feature file's rows are in another
  order than the users file's, so a reader has to join on ``user_id``.
* A hidden propensity ``z = x·β`` drives who becomes a brand customer and
  which customers are seeds (``tier = gold``): ``matched`` of the partner's
  users are customers, sampled with weight ``sigmoid(z)``, and their tier is
  gold with probability ``sigmoid(z + c)``. The brand's CRM also holds
  ``customers - matched`` people the partner does not know. So seeds really
  are findable from the features, with realistic noise.

Deterministic for a seed; files written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.audiences.identifiers import NormalizeOptions
from cleanroom.audiences.synth import pick_strings
from cleanroom.federated.attribution.synth import (
    check_count,
    email_cells,
    maid_cells,
    make_people,
    phone_cells,
    presence,
    serial_ids,
    write_csv,
)

__all__ = ["LookalikeSynth", "synthesize_lookalike"]

USER_COLUMNS = ("user_id", "email", "phone", "maid")
CRM_COLUMNS = ("email", "phone", "tier")
DEVICES = ("ios", "android", "harmonyos", "desktop", "tv")
_DEVICE_WEIGHTS = (0.35, 0.35, 0.15, 0.1, 0.05)
_GOLD_SHARE = 0.4  # of customers


@dataclass(frozen=True)
class LookalikeSynth:
    users_path: Path  # user_id, email, phone, maid
    features_path: Path  # user_id, then the feature columns
    crm_path: Path  # email, phone, tier (gold = seed)
    feature_spec: str  # the --feature-columns value (device is categorical)
    binary: tuple[str, ...]
    numeric: tuple[str, ...]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _numeric(kind: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind % 4 == 0:
        return rng.poisson(rng.uniform(1, 12), n).astype(np.float64)  # counts
    if kind % 4 == 1:
        return np.round(rng.lognormal(3.0, 1.0, n), 2)  # spend: heavy-tailed
    if kind % 4 == 2:
        return rng.integers(0, 366, n).astype(np.float64)  # recency in days
    return np.round(rng.normal(0, 1, n), 4)


def synthesize_lookalike(
    out_dir: Path,
    *,
    partner_users: int,
    customers: int,
    matched: int,
    binary: int = 6,
    numeric: int = 4,
    seed: int = 0,
    signal: float = 1.0,
    default_region: str = "US",
) -> LookalikeSynth:
    """Write ``users.csv``, ``features.csv`` and ``crm.csv`` into ``out_dir``.

    ``signal`` scales the propensity's weights (0: seeds are random)."""
    for name, value in (
        ("partner_users", partner_users),
        ("customers", customers),
        ("matched", matched),
        ("binary", binary),
        ("numeric", numeric),
    ):
        check_count(name, value)
    if matched > min(customers, partner_users):
        raise ValueError("matched customers must be at most the customers and the partner users")
    if binary + numeric < 1:
        raise ValueError("at least one feature is needed")
    region = NormalizeOptions(default_region=default_region).default_region
    assert region is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = partner_users

    # ---- features and the hidden propensity
    flags = rng.random((n, binary)) < rng.uniform(0.05, 0.6, binary)
    numbers = np.column_stack([_numeric(k, n, rng) for k in range(numeric)]) if numeric else None
    device = rng.choice(len(DEVICES), size=n, p=_DEVICE_WEIGHTS)
    z = np.zeros(n)
    if binary:
        z += flags @ (rng.normal(0, 1.0, binary) * signal)
    if numbers is not None:
        standard = (numbers - numbers.mean(axis=0)) / np.maximum(numbers.std(axis=0), 1e-9)
        z += np.tanh(standard) @ (rng.normal(0, 0.8, numeric) * signal)
    z += rng.normal(0, 0.6, len(DEVICES))[device] * signal
    z -= z.mean()

    # ---- who is a customer, and who is a seed
    weight = _sigmoid(z)
    chosen = rng.choice(n, size=matched, replace=False, p=weight / weight.sum())
    gold_logit = z[chosen] + np.log(_GOLD_SHARE / (1 - _GOLD_SHARE)) - 0.5 * z[chosen].mean()
    gold_matched = rng.random(matched) < _sigmoid(gold_logit)
    outsiders = customers - matched
    people = make_people(n + outsiders, region, rng)
    crm_persons = np.concatenate([chosen, np.arange(n, n + outsiders)])
    gold = np.concatenate([gold_matched, rng.random(outsiders) < _GOLD_SHARE])
    order = rng.permutation(len(crm_persons))
    crm_persons, gold = crm_persons[order], gold[order]

    c_email, c_phone, _ = presence(crm_persons, people, rng, partner=False)
    crm_path = out / "crm.csv"
    tiers = np.where(gold, 0, 1 + (rng.random(len(gold)) < 0.5)).astype(np.int64)
    write_csv(
        crm_path,
        CRM_COLUMNS,
        [
            email_cells(crm_persons, c_email, people, rng),
            phone_cells(crm_persons, c_phone, people, rng),
            pick_strings(("gold", "silver", "bronze"), tiers),
        ],
    )

    users = np.arange(n)
    u_email, u_phone, u_maid = presence(users, people, rng, partner=True)
    users_path = out / "users.csv"
    write_csv(
        users_path,
        USER_COLUMNS,
        [
            serial_ids("U", users),
            email_cells(users, u_email, people, rng),
            phone_cells(users, u_phone, people, rng),
            maid_cells(users, u_maid, people, rng),
        ],
    )

    binary_names = tuple(f"flag_{k:02d}" for k in range(binary))
    numeric_names = tuple(f"num_{k:02d}" for k in range(numeric))
    shuffled = rng.permutation(n)
    arrays: list[pa.Array] = [serial_ids("U", shuffled)]
    arrays += [
        pc.cast(pa.array(flags[shuffled, k].astype(np.int64)), pa.string()) for k in range(binary)
    ]
    if numbers is not None:
        arrays += [pc.cast(pa.array(numbers[shuffled, k]), pa.string()) for k in range(numeric)]
    arrays.append(pick_strings(DEVICES, device[shuffled].astype(np.int64)))
    features_path = out / "features.csv"
    write_csv(features_path, ("user_id", *binary_names, *numeric_names, "device"), arrays)
    spec = ",".join([*binary_names, *numeric_names, "device:cat"])
    return LookalikeSynth(
        users_path=users_path,
        features_path=features_path,
        crm_path=crm_path,
        feature_spec=spec,
        binary=binary_names,
        numeric=numeric_names,
    )
