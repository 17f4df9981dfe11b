"""The partner SDK's public surface: what ``cleanroom.client`` exports and what it pulls in."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import cleanroom.client as sdk
from cleanroom.client.sdk import Backoff, ClientError


def test_every_export_resolves_and_is_listed() -> None:
    assert sorted(sdk.__all__) == sorted(sdk._EXPORTS)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name
    assert "Connection" in dir(sdk)


def test_the_sdk_imports_nothing_of_the_brand_node() -> None:
    """A partner installs the same package, but its process never loads the node's code."""
    script = (
        "import json, sys\n"
        "import cleanroom.client as c\n"
        "for name in c.__all__: getattr(c, name)\n"
        "import cleanroom.client.attribution, cleanroom.client.sdk\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cleanroom.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout)
    assert "cleanroom.client.sdk" in loaded and "cleanroom.client.attribution" in loaded
    assert [m for m in loaded if m.startswith("cleanroom.server")] == []


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        sdk.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_a_node_that_is_not_there_is_said_in_plain_words(tmp_path: Path) -> None:
    from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
    from cleanroom.client.scoring import list_models
    from cleanroom.client.sdk import ClientError, Connection, upload_audience
    from tests.test_cli import free_port

    conn = Connection(f"127.0.0.1:{free_port()}", "token", timeout=20)
    with pytest.raises(ClientError) as info:
        list_models(conn)
    assert info.value.code == "UNAVAILABLE"
    assert info.value.message.startswith("the brand node is not accepting connections")
    assert "ipv4:" not in info.value.message and "--server" in info.value.message
    crm = tmp_path / "crm.csv"
    crm.write_text("email\na@example.com\n")
    with pytest.raises(ClientError) as info:
        asyncio.run(
            upload_audience(
                conn,
                name="crm",
                path=crm,
                id_columns=parse_id_columns("email"),
                options=NormalizeOptions(),
            )
        )
    assert info.value.code == "UNAVAILABLE" and "ipv4:" not in str(info.value)


def test_backoff_grows_with_full_jitter_within_its_budget() -> None:
    """Exponential caps (0.25, 0.5, 1, ... 8 s), a uniform draw under each, at least the
    node's hint, and no wait that would end past the budget."""
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    backoff = Backoff(20.0, rng=random.Random(7), clock=lambda: now[0], sleep=sleep)

    async def drain() -> int:
        waits = 0
        while await backoff.wait():
            waits += 1
        return waits

    waits = asyncio.run(drain())
    assert waits == len(slept) == backoff.attempts
    for n, seconds in enumerate(slept):
        assert 0 <= seconds <= min(8.0, 0.25 * 2**n)
    assert now[0] <= 20.0 and waits >= 5
    backoff.reset()
    assert asyncio.run(backoff.wait(hint=3.0)) and 3.0 <= slept[-1] <= 3.75
    assert not asyncio.run(Backoff(0.0).wait())  # 0: never retry


def test_a_write_that_finds_the_node_gone_is_transient_but_the_nodes_internal_is_not() -> None:
    def status(code: grpc.StatusCode, details: str) -> ClientError:
        return ClientError.from_rpc(grpc.aio.AioRpcError(code, None, None, details, None))

    # grpc.aio's status for a write the core failed: the node died under a streaming call.
    died = status(grpc.StatusCode.INTERNAL, "Internal error from Core")
    assert died.transient and died.code == "UNAVAILABLE"
    assert "closed the connection in the middle of the call" in died.message
    refused = status(grpc.StatusCode.INTERNAL, "internal error (reference 1a2b); see the log")
    assert not refused.transient and refused.code == "INTERNAL"
    assert refused.message == "internal error (reference 1a2b); see the log"
