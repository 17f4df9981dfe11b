"""Secrets never reach the logs: a whole upload + session at DEBUG level."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import Connection, run_psi, upload_audience
from cleanroom.matching.messages import Protocol
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.logs import JsonFormatter
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.helpers import sha


def test_no_token_identifier_or_digest_in_the_log(
    node: Node, process_pool: CryptoPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emails = [f"secret.person{i}@example.com" for i in range(40)]
    path = tmp_path / "brand.csv"
    path.write_text("email\n" + "\n".join(emails) + "\n")
    admin, partner = node.tokens["acme"][Role.ADMIN], node.tokens["acme"][Role.PARTNER]
    digests = b"".join(sha(e) for e in emails)
    data = PartnerSet(40, [PartnerColumn("email", np.arange(40, dtype=np.int64), digests)])
    with caplog.at_level(logging.DEBUG):
        asyncio.run(
            upload_audience(
                Connection(node.target, admin),
                name="logged",
                path=path,
                id_columns=parse_id_columns("email"),
                options=NormalizeOptions(),
            )
        )
        asyncio.run(
            run_psi(
                Connection(node.target, partner), "logged", Protocol.MATCH, data, pool=process_pool
            )
        )
        with pytest.raises(Exception, match="UNAUTHENTICATED"):
            asyncio.run(
                run_psi(
                    Connection(node.target, "cr_partner_leaky"),
                    "logged",
                    Protocol.MATCH,
                    data,
                    pool=process_pool,
                )
            )
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert caplog.records, "the session logged nothing at all"
    for secret in [admin, partner, "cr_partner_leaky", *emails, *(sha(e).hex() for e in emails)]:
        assert secret not in text
