"""The partner SDK: match, overlap and attribute against a brand node from Python.

Identifiers are normalized and hashed on this machine; only SHA-256 digests
(uploads) or blinded curve points (PSI) leave it. Nothing here imports the
brand node's code (``cleanroom.server``)::

    import asyncio
    from pathlib import Path

    from cleanroom.client import Connection, CryptoPool, NormalizeOptions, Protocol
    from cleanroom.client import load_partner_set, parse_id_columns, run_psi, write_match_output

    conn = Connection("brand.example:50051", token, tls_dir=Path("certs"))
    columns = parse_id_columns("email,phone")
    users, read_report = load_partner_set(Path("users.csv"), columns, NormalizeOptions("US"))
    with CryptoPool.processes() as pool:
        run = asyncio.run(run_psi(conn, "crm", Protocol.MATCH, users, pool=pool))
    write_match_output(Path("users.csv"), Path("matched.csv"), run.outcome.matched_on, columns)

Names are imported on first use, so ``import cleanroom.client`` (and the
command line, which lives here) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions, parse_id_columns
    from cleanroom.audiences.reader import ReadReport
    from cleanroom.client.attribution import (
        AttributionProgress,
        AttributionRequest,
        PreparedAttribution,
        prepare_attribution,
        run_attribution,
        upload_conversions,
    )
    from cleanroom.client.sdk import (
        ClientError,
        Connection,
        PsiRun,
        SeedLabels,
        UploadResult,
        load_partner_set,
        prepare_points,
        read_match_output,
        run_psi,
        upload_audience,
        write_match_output,
    )
    from cleanroom.federated.attribution.messages import Windows
    from cleanroom.matching.messages import Protocol
    from cleanroom.matching.partner import MatchOutcome, PartnerProgress, PartnerSet
    from cleanroom.matching.workers import CryptoPool

_EXPORTS = {
    "IdColumn": "cleanroom.audiences.identifiers",
    "NormalizeOptions": "cleanroom.audiences.identifiers",
    "parse_id_columns": "cleanroom.audiences.identifiers",
    "ReadReport": "cleanroom.audiences.reader",
    "AttributionProgress": "cleanroom.client.attribution",
    "AttributionRequest": "cleanroom.client.attribution",
    "PreparedAttribution": "cleanroom.client.attribution",
    "prepare_attribution": "cleanroom.client.attribution",
    "run_attribution": "cleanroom.client.attribution",
    "upload_conversions": "cleanroom.client.attribution",
    "ClientError": "cleanroom.client.sdk",
    "Connection": "cleanroom.client.sdk",
    "PsiRun": "cleanroom.client.sdk",
    "SeedLabels": "cleanroom.client.sdk",
    "UploadResult": "cleanroom.client.sdk",
    "load_partner_set": "cleanroom.client.sdk",
    "prepare_points": "cleanroom.client.sdk",
    "read_match_output": "cleanroom.client.sdk",
    "run_psi": "cleanroom.client.sdk",
    "upload_audience": "cleanroom.client.sdk",
    "write_match_output": "cleanroom.client.sdk",
    "Windows": "cleanroom.federated.attribution.messages",
    "Protocol": "cleanroom.matching.messages",
    "MatchOutcome": "cleanroom.matching.partner",
    "PartnerProgress": "cleanroom.matching.partner",
    "PartnerSet": "cleanroom.matching.partner",
    "CryptoPool": "cleanroom.matching.workers",
}
__all__ = [
    "AttributionProgress",
    "AttributionRequest",
    "ClientError",
    "Connection",
    "CryptoPool",
    "IdColumn",
    "MatchOutcome",
    "NormalizeOptions",
    "PartnerProgress",
    "PartnerSet",
    "PreparedAttribution",
    "Protocol",
    "PsiRun",
    "ReadReport",
    "SeedLabels",
    "UploadResult",
    "Windows",
    "load_partner_set",
    "parse_id_columns",
    "prepare_attribution",
    "prepare_points",
    "read_match_output",
    "run_attribution",
    "run_psi",
    "upload_audience",
    "upload_conversions",
    "write_match_output",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
