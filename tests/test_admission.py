"""Admission control: above the node's and a partner's concurrent-job limits a new job is
refused at once with RESOURCE_EXHAUSTED and a retry hint, before any work; health stays up;
a client told to wait it out finishes once a slot frees."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import ClientError, Connection, run_psi, upload_audience
from cleanroom.matching.messages import Protocol
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.server.admission import Admission, NodeBusy
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.policy import Policy
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import PartnershipId, Role, SqlStore
from tests.helpers import sha

ROWS = 300


def test_admission_counts_slots_per_node_and_per_partner() -> None:
    now = [100.0]
    admission = Admission(max_sessions=3, max_partner_sessions=2, clock=lambda: now[0])
    a, b = PartnershipId("t", "a"), PartnershipId("t", "b")
    first, second = admission.admit(a), admission.admit(a)
    with pytest.raises(NodeBusy, match="this partner already runs 2 jobs") as busy:
        admission.admit(a)
    assert 1 <= busy.value.retry_after <= 60
    third = admission.admit(b)
    with pytest.raises(NodeBusy, match="the brand node runs 3 jobs"):
        admission.admit(b)
    now[0] += 30.0
    first.release()
    first.release()  # idempotent: one job frees one slot
    assert admission.running == 2
    assert admission.retry_after() > 2.0  # jobs held their slots for 30 s: wait longer
    admission.admit(b)
    with pytest.raises(NodeBusy):
        admission.admit(a)
    second.release()
    third.release()
    assert admission.running == 1


@pytest.fixture(scope="module")
def busy_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BrandNodeThread, dict[str, Any]]]:
    data_dir = tmp_path_factory.mktemp("admission")
    settings = ServerSettings(
        data_dir=data_dir, grpc_port=0, http_port=0, workers=1, max_sessions=2,
        max_partner_sessions=1,
    )  # fmt: skip
    data_dir.mkdir(exist_ok=True)
    store = SqlStore(settings.resolved_database_url())
    tenant, tokens = store.provision_tenant(
        "acme", Policy(min_partner_records=10, sessions_per_day=1000)
    )
    other = store.create_partner(tenant.tenant_id, "othermedia")
    second = store.issue_token(tenant.tenant_id, Role.PARTNER, partner_id=other.partner_id)
    store.close()
    with BrandNodeThread(settings) as node:
        path = data_dir / "crm.csv"
        path.write_text("email\n" + "\n".join(f"user{i}@example.com" for i in range(200)) + "\n")
        asyncio.run(
            upload_audience(
                Connection(node.target, tokens[Role.ADMIN]),
                name="crm",
                path=path,
                id_columns=parse_id_columns("email"),
                options=NormalizeOptions(),
            )
        )
        yield node, {"a": tokens[Role.PARTNER], "b": second, "db": settings}


def users() -> PartnerSet:
    digests = b"".join(sha(f"user{i}@example.com") for i in range(100, 100 + ROWS))
    return PartnerSet(ROWS, [PartnerColumn("email", np.arange(ROWS, dtype=np.int64), digests)])


class Held:
    """A PSI session opened and accepted, then left idle: it holds its admission slot."""

    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.call = pb_grpc.MatchingServiceStub(self.channel).Session(
            metadata=(("authorization", f"Bearer {token}"),)
        )

    async def open(self) -> Held:
        hello = pb.Hello(
            audience="crm", protocol=pb.MATCH, declared_records=ROWS, declared_points=ROWS
        )
        await self.call.write(pb.PartnerMessage(hello=hello))
        first = await self.call.read()
        assert first.WhichOneof("body") == "accepted"
        return self

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


async def refused(open_call: Callable[[], Awaitable[object]]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await open_call()
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    return caught.value


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def session_count(settings: ServerSettings) -> int:
    store = SqlStore(settings.resolved_database_url())
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None
        return len(store.list_sessions(tenant.tenant_id))
    finally:
        store.close()


def test_jobs_over_the_limits_are_refused_before_any_work(
    busy_node: tuple[BrandNodeThread, dict[str, Any]],
    process_pool: CryptoPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node, tokens = busy_node
    conn_a = Connection(node.target, tokens["a"], retry_seconds=0)
    conn_b = Connection(node.target, tokens["b"], retry_seconds=0)

    async def scenario() -> None:
        held_a = await Held(node.target, tokens["a"]).open()
        before = session_count(tokens["db"])
        with pytest.raises(ClientError, match="--max-partner-sessions") as one:
            await run_psi(conn_a, "crm", Protocol.MATCH, users(), pool=process_pool)
        assert one.value.code == "RESOURCE_EXHAUSTED" and one.value.retry_after is not None
        held_b = await Held(node.target, tokens["b"]).open()
        with pytest.raises(ClientError, match="--max-sessions") as full:
            await run_psi(conn_b, "crm", Protocol.MATCH, users(), pool=process_pool)
        assert full.value.retry_after is not None
        # An attribution run is a job too, refused before its policy is even looked at.
        async with grpc.aio.insecure_channel(node.target) as channel:

            async def attribution() -> object:
                async def hello() -> AsyncIterator[pb.AttrPartnerMessage]:
                    yield pb.AttrPartnerMessage(hello=pb.AttrHello(conversions="none"))

                call = pb_grpc.AttributionServiceStub(channel).Attribute(
                    hello(), metadata=(("authorization", f"Bearer {tokens['b']}"),)
                )
                return [m async for m in call]

            status = await refused(attribution)
            assert dict(status.trailing_metadata() or ())["retry-after-ms"].isdigit()
            # Health answers while the node is full.
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert node.ports is not None
        rest = httpx.get(f"http://127.0.0.1:{node.ports.http}/healthz", timeout=5)
        assert rest.status_code == 200
        # Refusals came before any work: no session was recorded for them.
        assert session_count(tokens["db"]) == before + 1

        # A client that may wait is refused, waits, and finishes once a slot is free.
        waiting = asyncio.ensure_future(
            run_psi(
                replace(conn_a, retry_seconds=60), "crm", Protocol.MATCH, users(), pool=process_pool
            )
        )
        await until(lambda: "RESOURCE_EXHAUSTED" in caplog.text or waiting.done())
        assert not waiting.done()
        await held_a.close()
        run = await asyncio.wait_for(waiting, 120)
        assert run.result is not None and run.result.intersection == 100
        await held_b.close()

    with caplog.at_level(logging.WARNING, logger="cleanroom.client"):
        asyncio.run(scenario())
