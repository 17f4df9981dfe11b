"""Deleting a tenant's data on request (PIPL, GDPR) and when its retention ends.

Only an admin deletes. The record goes first, in one transaction, so from
that moment no caller can find or use it; then every file it had under the
data directory is removed. Each deletion is audited with who, what and
when — never the data. A tenant's ``retention_days`` policy purges, the
same way, everything it stored longer ago than that (``purge_expired``, run
by the node at start-up and daily; audited as the ``retention`` actor).
Transport-free: gRPC and REST call these.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cleanroom.federated.attribution.report import REPORT_ID
from cleanroom.proto.errors import NotFound, PermissionDenied
from cleanroom.server.datasets import remove_stored
from cleanroom.server.store import (
    AudienceRecord,
    AuditEntry,
    ConversionSetRecord,
    Principal,
    Role,
    SqlStore,
)

log = logging.getLogger("cleanroom.server")

# A conversion set stored by an earlier release: three files beside the set's path.
LEGACY_CONVERSION_SUFFIXES = (".events.parquet", ".ids.parquet", ".points.parquet")


def _admin(principal: Principal, what: str) -> None:
    if principal.role is not Role.ADMIN:
        raise PermissionDenied(f"deleting {what} needs an admin token")


def remove_files(paths: list[Path]) -> list[str]:
    """Remove the files (or partitioned sets); the ones that could not be (logged) are
    returned."""
    left = []
    for path in paths:
        try:
            remove_stored(path)
        except OSError as exc:
            log.error("could not remove %s: %s", path, exc)
            left.append(str(path))
    return left


def audience_files(data_dir: Path, record: AudienceRecord) -> list[Path]:
    return [data_dir / record.path]


def conversion_files(data_dir: Path, record: ConversionSetRecord) -> list[Path]:
    """The partitioned set, and the three files an earlier release stored instead."""
    legacy = [data_dir / (record.path + suffix) for suffix in LEGACY_CONVERSION_SUFFIXES]
    return [data_dir / record.path, *legacy]


def delete_audience(
    store: SqlStore, data_dir: Path, principal: Principal, name: str
) -> dict[str, str]:
    _admin(principal, "an audience")
    record = store.delete_audience(principal.tenant_id, name)
    if record is None:
        raise NotFound(f"no audience named {name!r} for this tenant")
    left = remove_files(audience_files(data_dir, record))
    detail = {"audience": name, "audience_id": record.audience_id, "files_left": left}
    store.audit(AuditEntry(principal.tenant_id, principal.role.value, "audience.delete", detail))
    return {"deleted": "audience", "name": name, "id": record.audience_id}


def delete_conversions(
    store: SqlStore, data_dir: Path, principal: Principal, name: str
) -> dict[str, str]:
    _admin(principal, "a conversion set")
    record = store.delete_conversion_set(principal.tenant_id, name)
    if record is None:
        raise NotFound(f"no conversions named {name!r} for this tenant")
    left = remove_files(conversion_files(data_dir, record))
    detail = {"conversions": name, "conversions_id": record.conversions_id, "files_left": left}
    store.audit(AuditEntry(principal.tenant_id, principal.role.value, "conversions.delete", detail))
    return {"deleted": "conversions", "name": name, "id": record.conversions_id}


def delete_report(store: SqlStore, principal: Principal, report_id: str) -> dict[str, str]:
    """An attribution report or a lookalike package's metadata (the node keeps no file of
    either)."""
    _admin(principal, "a report")
    kind = (
        store.delete_report(principal.tenant_id, report_id)
        if REPORT_ID.fullmatch(report_id)
        else None
    )
    if kind is None:
        raise NotFound(f"no report or package {report_id!r} for this tenant")
    store.audit(
        AuditEntry(
            principal.tenant_id, principal.role.value, f"{kind}.delete", {"report": report_id}
        )
    )
    return {"deleted": kind, "id": report_id}


RETENTION_ACTOR = "retention"


def purge_expired(store: SqlStore, data_dir: Path, now: datetime) -> dict[str, dict[str, Any]]:
    """Apply every tenant's ``retention_days``: remove what it stored before ``now`` minus
    that many days (records in one transaction per tenant, then the files), and audit
    each purge that removed something. Returns what went, by tenant id."""
    done: dict[str, dict[str, Any]] = {}
    for tenant in store.list_tenants():
        days = tenant.policy.retention_days
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        purged = store.purge_before(tenant.tenant_id, cutoff)
        files: list[Path] = []
        for audience in purged.audiences:
            files += audience_files(data_dir, audience)
        for conversions in purged.conversion_sets:
            files += conversion_files(data_dir, conversions)
        left = remove_files(files)
        detail = {
            "retention_days": days,
            "cutoff": cutoff.isoformat(),
            "audiences": [a.name for a in purged.audiences],
            "conversions": [c.name for c in purged.conversion_sets],
            "reports": purged.reports,
            "sessions": purged.sessions,
            "files_left": left,
        }
        if purged.audiences or purged.conversion_sets or purged.reports or purged.sessions:
            store.audit(AuditEntry(tenant.tenant_id, RETENTION_ACTOR, "retention.purge", detail))
            log.info(
                "retention purge for tenant %s: %d audiences, %d conversion sets, %d reports,"
                " %d session records",
                tenant.tenant_id,
                len(purged.audiences),
                len(purged.conversion_sets),
                len(purged.reports),
                purged.sessions,
            )
        done[tenant.tenant_id] = detail
    return done
