"""Typed lookalike messages: the domain side of the wire protocol.

Plain dataclasses; ``cleanroom.proto.serde`` is the only place that converts
them to and from protobuf. The rounds are documented in the package docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from cleanroom.federated.lookalike.brand_model import ModelFeature

DEFAULT_TIERS = (1.0, 2.0, 5.0, 10.0)
MASK_SLACK_BITS = 40  # statistical hiding of a masked sum: 2^-40


class LookalikeMode(StrEnum):
    """What the partner learns about the seed (DESIGN.md §7, §13)."""

    HIDDEN_SEED = "hidden-seed"  # neither membership nor labels
    MATCHED = "matched"  # which of its rows matched (as `partner match`), not labels


class LookalikeRound(StrEnum):
    HELLO = "hello"
    EXCHANGE = "exchange"  # points both ways
    LABELS = "labels"  # the brand's encrypted labels per position
    SUMS = "sums"  # masked label sums: T = Xᵀy and Σy
    METRICS = "metrics"  # the holdout's encrypted sums
    PACKAGE = "package"  # the partner writes its tiers and reports their sizes
    DONE = "done"
    FAILED = "failed"


class BrandList(IntEnum):
    """The brand sends its identifiers as two lists of the same (padded) size."""

    SEED = 0
    OTHER = 1


@dataclass(frozen=True, slots=True)
class LookalikeHello:
    audience: str
    mode: LookalikeMode
    rows: int  # offered rows: the partner's records with an identifier
    slots: int  # points per row (hidden-seed: identifier columns, dummies fill the rest)
    features: int  # d: the brand decrypts d + 1 label sums
    tiers: tuple[float, ...] = DEFAULT_TIERS  # nested top tiers, percent of the scored base
    holdout: float = 0.2  # share of the offered rows kept out of T and scored for the metrics
    epsilon: float = 0.0  # label-DP on the sums (0: none)
    submission_key: str = ""
    # With label-DP: the grid of every feature (T_int = scale · T) and the largest
    # row norm of the features, which bounds the sums' sensitivity to one label.
    scales: tuple[int, ...] = ()
    row_norm: float = 0.0
    # ``matched`` only: once accepted, the partner matches first (``partner match``) and
    # says how many rows it exchanges (``ExchangedRows``) before its first slot.
    match_first: bool = False

    @property
    def holdout_rows(self) -> int:
        return round(self.rows * self.holdout)

    @property
    def train_rows(self) -> int:
        return self.rows - self.holdout_rows


@dataclass(frozen=True, slots=True)
class LookalikeAccepted:
    session_id: str
    public_key_n: int
    value_len: int  # bytes per comparison value (truncated double-blinded point)
    chunk_size: int  # points per chunk
    brand_points: int  # per list (both lists are padded to this size)
    max_decryptions: int  # d + 1 label sums, plus 2 + one per tier for the holdout
    package_id: str = ""  # set when this submission already has a package


@dataclass(frozen=True, slots=True)
class ExchangedRows:
    """P -> B, in a ``match_first`` job before its first slot: the offered rows whose
    slots it sends (the rows its match found; all of them when the match was refused)."""

    rows: int


@dataclass(frozen=True, slots=True)
class SlotPoints:
    """P -> B: H(x)^p for consecutive slots of the partner's shuffled rows."""

    seq: int
    points: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BrandPoints:
    """B -> P: H(s)^b for one list, padded with dummies and shuffled."""

    list: BrandList
    seq: int
    points: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BrandValues:
    """P -> B: H(s)^bp of a whole list, shuffled again, truncated."""

    list: BrandList
    seq: int
    values: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MatchedRows:
    """B -> P, ``matched`` mode only: one byte per partner position, 1 where it matched."""

    seq: int
    start: int
    flags: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class EncryptedLabels:
    """B -> P: ``Enc(label)`` from position ``start`` on, packed fixed-width (n² bytes each).

    ``hidden-seed``: one per partner position (``Enc(0)`` for rows that match
    nothing). ``matched``: one per matched position, in position order.
    """

    seq: int
    start: int
    ciphertexts: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MaskedSums:
    """P -> B: Enc(T_j + r_j) for every feature, then Enc(Σy + r) (re-randomized)."""

    ciphertexts: tuple[int, ...] = field(repr=False)
    train_rows: int


@dataclass(frozen=True, slots=True)
class DecryptedSums:
    """B -> P: the masked sums, decrypted (plus label-DP noise when the policy adds it)."""

    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HoldoutAggregates:
    """P -> B: the holdout's encrypted seeds, twice their rank sum, seeds per tier."""

    rows: int
    seeds: int
    rank_sum2: int
    top: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LookalikeMetrics:
    """B -> P: the model's quality on the holdout, as the brand computed it.

    With label-DP the brand keeps them (they are exact functions of labels):
    the partner gets ``withheld()``, the row count and nothing else."""

    holdout_rows: int
    holdout_seeds: int | None
    auc: float | None
    recall: tuple[float | None, ...]  # per tier: share of the holdout's seeds in it
    lift: tuple[float | None, ...]  # per tier: recall / tier share

    def withheld(self) -> LookalikeMetrics:
        blank = tuple(None for _ in self.recall)
        return LookalikeMetrics(self.holdout_rows, None, None, blank, blank)


@dataclass(frozen=True, slots=True)
class PackageSummary:
    """P -> B: what the partner's package holds (sizes only, never a user id)."""

    scored: int
    tier_sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LookalikeDone:
    package_id: str


LookalikePartnerMessage = (
    LookalikeHello
    | ExchangedRows
    | SlotPoints
    | BrandValues
    | MaskedSums
    | HoldoutAggregates
    | PackageSummary
)
LookalikeBrandMessage = (
    LookalikeAccepted
    | BrandPoints
    | MatchedRows
    | EncryptedLabels
    | DecryptedSums
    | LookalikeMetrics
    | LookalikeDone
)


# ------------------------------------------------------------------ HE scoring


class ScoreRound(StrEnum):
    HELLO = "hello"
    SCORES = "scores"  # P streams its packed, masked, encrypted scores; B ranks them
    PACKAGE = "package"  # B sent a tier per shuffled position; P writes and reports
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ScoreHello:
    """P -> B: score ``users`` of P's users with the brand's model ``model``."""

    model: str
    users: int
    tiers: tuple[float, ...] = DEFAULT_TIERS
    submission_key: str = ""


@dataclass(frozen=True, slots=True)
class ScoreAccepted:
    """B -> P: the model's public part (features, quantization) and its weights encrypted.

    ``weights`` are ``Enc(W_j)``, ``constant`` is ``Enc(C)`` (fixed point, see
    ``brand_model.BrandModel.fixed_point``); P packs ``slots`` users' masked
    scores per ciphertext, ``scoring.SLOT_BITS`` each, at most ``chunk_size`` ciphertexts per
    ``ScoreChunk``."""

    session_id: str
    public_key_n: int
    features: tuple[ModelFeature, ...]
    weights: tuple[int, ...]
    constant: int
    slots: int
    chunk_size: int
    package_id: str = ""  # set when this submission already has a package


@dataclass(frozen=True, slots=True)
class ScoreChunk:
    """P -> B: packed ``Enc(Σ_k v_k 2^(SLOT_BITS·k))`` of consecutive shuffled positions, where
    ``v = a·(score + 2^SCORE_BITS) + c + e`` hides each score behind P's secret
    order-preserving mask (fixed width, n² bytes each, re-randomized)."""

    seq: int
    ciphertexts: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ScoreTiers:
    """B -> P: one byte per shuffled position from ``start``: the 1-based index of the
    smallest tier holding it, 0 for none."""

    seq: int
    start: int
    tiers: bytes = field(repr=False)


ScorePartnerMessage = ScoreHello | ScoreChunk | PackageSummary
ScoreBrandMessage = ScoreAccepted | ScoreTiers | LookalikeDone
