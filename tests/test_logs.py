"""Secrets never reach the logs: a whole upload + session at DEBUG level."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import Connection, run_psi, upload_audience
from cleanroom.matching.messages import Protocol
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.logs import JsonFormatter, configure
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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("fmt", "stream", "json_lines"),
    [
        ("json", _Terminal(), True),
        ("text", io.StringIO(), False),
        ("auto", io.StringIO(), True),  # a pipe or a file: JSON lines
        ("auto", _Terminal(), False),  # a person at a terminal: text
    ],
)
def test_logs_are_text_on_a_terminal_and_json_elsewhere(
    fmt: Any, stream: io.StringIO, json_lines: bool
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("cleanroom").level)
    try:
        configure(logging.INFO, fmt=fmt, stream=stream)
        logging.getLogger("cleanroom.server").info("brand node serving gRPC on %s", "x:1")
        logging.getLogger("cleanroom.server").debug("not at INFO")
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        logging.getLogger("cleanroom").setLevel(saved[2])
        configure_default()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # a terminal's colours
    lines = [line for line in plain.splitlines() if line.strip()]
    assert lines and "not at INFO" not in stream.getvalue()
    if json_lines:
        [record] = [json.loads(line) for line in lines]
        assert record["level"] == "INFO" and record["msg"] == "brand node serving gRPC on x:1"
    else:
        assert "INFO" in lines[0] and "brand node serving gRPC on x:1" in lines[0]
        with pytest.raises(json.JSONDecodeError):
            json.loads(lines[0])


def configure_default() -> None:
    """Leave the process's chosen format as a fresh process has it."""
    from cleanroom.server import logs

    logs._Choice.format = "auto"
