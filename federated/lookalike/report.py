"""What the brand node keeps of a lookalike package: sizes, quality and privacy, never a
user id (the package's members stay with the partner)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cleanroom.federated.attribution.report import REPORT_ID


class TierSummary(BaseModel):
    """One nested tier: the top ``percent`` of the partner's scored base."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float = Field(gt=0, le=100)
    size: int = Field(ge=0, description="users in the tier")
    recall: float | None = Field(
        default=None, description="share of the holdout's seeds in this tier (None: unknown)"
    )
    lift: float | None = Field(default=None, description="recall over the tier's share")


class LookalikePrivacy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(ge=0, description="label-DP epsilon charged (0: none)")
    delta: float = Field(ge=0, lt=1)
    sigma: float = Field(ge=0, description="noise scale on the label sums, in feature units")


class LookalikeReport(BaseModel):
    """A finished lookalike job as the brand sees it.

    ``he-score`` packages come from HE scoring of a brand model (``model``):
    nothing was matched or trained, so ``intersection``, ``seeds`` and the
    training and holdout counts are 0 and there are no quality metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    report_id: str = Field(pattern=REPORT_ID.pattern, description="the package id")
    kind: Literal["lookalike"] = "lookalike"
    audience: str
    partner: str
    mode: Literal["hidden-seed", "matched", "he-score"]
    model: str | None = Field(default=None, description="he-score: the brand model scored")
    created_at: datetime = Field(description="when the job started")
    finished_at: datetime
    offered: int = Field(ge=0, description="partner rows offered (users with an identifier)")
    intersection: int = Field(ge=0, description="of them, rows matching a brand identifier")
    seeds: int = Field(ge=0, description="of them, rows matching a seed")
    features: int = Field(ge=1)
    train_rows: int = Field(ge=0)
    holdout_rows: int = Field(ge=0)
    holdout_seeds: int | None = None
    auc: float | None = Field(default=None, description="on the holdout (None: no holdout)")
    scored: int = Field(ge=0, description="partner users scored into the package")
    tiers: tuple[TierSummary, ...]
    privacy: LookalikePrivacy

    @property
    def subject(self) -> str:
        return self.audience
