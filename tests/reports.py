"""Realistic stored reports for tests: an attribution report, a lookalike package."""

from __future__ import annotations

import uuid
from typing import Any

from cleanroom.federated.attribution.report import AttributionReport
from cleanroom.federated.lookalike.report import LookalikeReport
from cleanroom.server.store import LookalikeRecord, ReportRecord


def _group(users: int, converters: int, conversions: int, revenue: float) -> dict[str, Any]:
    return {
        "users": users,
        "conversions": conversions,
        "revenue": revenue,
        "converters": converters,
        "rate": round(converters / users, 6),
    }


def _nulls() -> dict[str, Any]:
    return dict.fromkeys(("users", "conversions", "revenue", "converters", "rate"))


def sample_body(report_id: str) -> dict[str, Any]:
    """Three campaigns: a clear winner, an inconclusive one, one suppressed."""
    return {
        "report_id": report_id,
        "created_at": "2025-06-30T09:15:00+00:00",
        "partner": "default",
        "dp": {"mechanism": "laplace", "epsilon": 0.5, "delta": 0.0, "value_cap": 1000.0},
        "aggregation_threshold": 50,
        "windows": {"click_days": 7, "view_days": 1},
        "campaigns": [
            {
                "campaign_id": "spring_sale",
                "attributed_conversions": 1310,
                "attributed_revenue": 98420.75,
                "exposed": _group(48210, 1205, 1498, 112350.4),
                "holdout": _group(5320, 112, 131, 9210.0),
                "lift": 0.1873,
                "lift_ci95": [0.0212, 0.3534],
                "incremental_converters": 190,
                "spend": 25000.0,
                "iroas": 1.42,
                "suppressed": False,
            },
            {
                "campaign_id": "retargeting_q2",
                "attributed_conversions": 642,
                "attributed_revenue": 41233.1,
                "exposed": _group(21400, 514, 601, 44120.0),
                "holdout": _group(2390, 60, 66, 4810.5),
                "lift": -0.0433,
                "lift_ci95": [-0.2511, 0.1645],
                "incremental_converters": -23,
                "spend": 12000.0,
                "iroas": None,
                "suppressed": False,
            },
            {
                "campaign_id": "podcast_test",
                "attributed_conversions": None,
                "attributed_revenue": None,
                "exposed": _nulls(),
                "holdout": _nulls(),
                "lift": None,
                "lift_ci95": None,
                "incremental_converters": None,
                "spend": 3000.0,
                "iroas": None,
                "suppressed": True,
            },
        ],
    }


def sample_report(tenant_id: str, report_id: str | None = None) -> ReportRecord:
    rid = report_id or uuid.uuid4().hex
    return ReportRecord(
        tenant_id=tenant_id,
        report=AttributionReport.model_validate(
            {**sample_body(rid), "conversions_name": "purchases"}
        ),
        submission_key=f"submission-{rid}",
    )


def sample_lookalike(tenant_id: str, partner_id: str | None = None) -> LookalikeRecord:
    """A hidden-seed package with four tiers and holdout metrics."""
    package_id = uuid.uuid4().hex
    tiers = [
        {"percent": 1.0, "size": 10_000, "recall": 0.052, "lift": 5.2},
        {"percent": 2.0, "size": 20_000, "recall": 0.094, "lift": 4.7},
        {"percent": 5.0, "size": 50_000, "recall": 0.19, "lift": 3.8},
        {"percent": 10.0, "size": 100_000, "recall": 0.31, "lift": 3.1},
    ]
    report = LookalikeReport.model_validate(
        {
            "report_id": package_id,
            "audience": "vip_customers",
            "partner": "default",
            "mode": "hidden-seed",
            "created_at": "2026-11-30T08:00:00+00:00",
            "finished_at": "2026-11-30T08:06:30+00:00",
            "offered": 1_000_000,
            "intersection": 50_000,
            "seeds": 20_000,
            "features": 50,
            "train_rows": 800_000,
            "holdout_rows": 200_000,
            "holdout_seeds": 4_000,
            "auc": 0.8123,
            "scored": 1_000_000,
            "tiers": tiers,
            "privacy": {"epsilon": 0.0, "delta": 0.0, "sigma": 0.0},
        }
    )
    return LookalikeRecord(tenant_id, report, submission_key=package_id, partner_id=partner_id)


def sample_scored(tenant_id: str) -> LookalikeRecord:
    """An HE-scoring package: a brand model's tiers, no seed, no holdout, no metrics."""
    package_id = uuid.uuid4().hex
    report = LookalikeReport.model_validate(
        {
            "report_id": package_id,
            "audience": "ltv_model",
            "model": "ltv_model",
            "partner": "default",
            "mode": "he-score",
            "created_at": "2026-12-01T08:00:00+00:00",
            "finished_at": "2026-12-01T08:03:00+00:00",
            "offered": 400_000,
            "intersection": 0,
            "seeds": 0,
            "features": 20,
            "train_rows": 0,
            "holdout_rows": 0,
            "scored": 400_000,
            "tiers": [{"percent": 1.0, "size": 4_000}, {"percent": 5.0, "size": 20_000}],
            "privacy": {"epsilon": 0.0, "delta": 0.0, "sigma": 0.0},
        }
    )
    return LookalikeRecord(tenant_id, report, submission_key=package_id)
