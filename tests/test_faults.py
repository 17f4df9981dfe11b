"""Clients that die or drop their stream mid-way; the node loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import ClientError, Connection, run_psi, upload_audience
from cleanroom.matching import journal
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.messages import Accepted, Protocol
from cleanroom.matching.partner import PartnerColumn, PartnerSession, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import serde
from cleanroom.server.store import Role, SessionRecord
from tests.conftest import Node
from tests.helpers import eventually, sha
from tests.test_e2e import audience_names, healthy, no_temporaries

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def audience(node: Node, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("faults") / "brand.csv"
    path.write_text("email\n" + "\n".join(f"user{i}@example.com" for i in range(0, 400, 2)) + "\n")
    conn = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    asyncio.run(
        upload_audience(
            conn,
            name="faults",
            path=path,
            id_columns=parse_id_columns("email"),
            options=NormalizeOptions(),
        )
    )
    return "faults"


def start_fault_client(node: Node, mode: str, role: Role, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fault_client",
            mode,
            node.target,
            node.tokens["acme"][role],
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", f"fault client did not get ready: {line!r}"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_client_killed_mid_upload_leaves_nothing(node: Node, audience: str) -> None:
    before = audience_names(node)
    proc = start_fault_client(node, "upload", Role.ADMIN)
    eventually(lambda: not no_temporaries(node), what="the upload to be staged")
    kill(proc)
    eventually(lambda: no_temporaries(node), what="the upload's staged files to be removed")
    assert audience_names(node) == before
    assert healthy(node)


def sessions(node: Node) -> list[SessionRecord]:
    store = node.store()
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None
        return list(store.list_sessions(tenant.tenant_id))
    finally:
        store.close()


def test_partner_killed_mid_match_is_interrupted_and_node_serves_on(
    node: Node, audience: str, process_pool: CryptoPool
) -> None:
    before = {s.session_id for s in sessions(node)}
    proc = start_fault_client(node, "match", Role.PARTNER, audience)
    kill(proc)

    def interrupted() -> bool:
        new = [s for s in sessions(node) if s.session_id not in before]
        return len(new) == 1 and new[0].status == "interrupted"

    eventually(interrupted, what="the session to be marked interrupted")
    [killed] = [s for s in sessions(node) if s.session_id not in before]
    assert killed.intersection is None
    # The node serves the next partner normally.
    run = asyncio.run(
        run_psi(partner(node), audience, Protocol.MATCH, email_set(), pool=process_pool)
    )
    assert run.session.outcome is not None and run.session.outcome.matched_records == 150
    assert healthy(node)


def email_set(rows: int = 300) -> PartnerSet:
    digests = b"".join(sha(f"user{i}@example.com") for i in range(rows))
    return PartnerSet(rows, [PartnerColumn("email", np.arange(rows, dtype=np.int64), digests)])


def partner(node: Node) -> Connection:
    return Connection(node.target, node.tokens["acme"][Role.PARTNER])


@pytest.mark.parametrize("on_disk", [False, True])
def test_dropped_stream_resumes_to_the_right_answer(
    node: Node,
    audience: str,
    process_pool: CryptoPool,
    on_disk: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if on_disk:  # both parties' journals on disk, only the last chunk in memory
        monkeypatch.setattr(journal, "MEMORY_BYTES", 0)
        monkeypatch.setattr(journal, "RECENT", 1)
    conn = partner(node)
    data = email_set(2000)  # four chunks of 512: the drop comes mid-stream

    async def drop_then_resume() -> tuple[PartnerSession, int]:
        session = PartnerSession(
            audience=audience, protocol=Protocol.MATCH, data=data, pool=process_pool
        )
        async with conn.channel() as channel:
            call = pb_grpc.MatchingServiceStub(channel).Session(metadata=conn.metadata, timeout=60)
            await call.write(serde.partner_to_pb(session.hello()))
            accepted = serde.brand_from_pb(await call.read())
            assert isinstance(accepted, Accepted)
            await session.receive(accepted)
            sent = 0
            async for msg in session.outgoing():
                await call.write(serde.partner_to_pb(msg))
                sent += 1
                if sent == 2:
                    break
            reply = serde.brand_from_pb(await call.read())
            await session.receive(reply)
            call.cancel()  # the stream drops mid-session
        run = await run_psi(
            conn, audience, Protocol.MATCH, data, pool=process_pool, session=session
        )
        assert isinstance(run.session, PartnerSession)
        return run.session, run.resumes

    session, _ = asyncio.run(drop_then_resume())
    assert session.outcome is not None
    expected = [0 if i % 2 == 0 and i < 400 else -1 for i in range(2000)]
    assert whole_array(session.outcome.matched_on).tolist() == expected

    def recorded() -> tuple[str, int | None]:
        [record] = [s for s in sessions(node) if s.session_id == session.session_id]
        return record.status, record.intersection

    # The node records the outcome when its side of the stream closes, which
    # can be a moment after the partner has its result.
    eventually(lambda: recorded()[0] != "running", what="the session outcome to be recorded")
    assert recorded() == ("done", 200)


def test_resume_of_a_session_the_node_lost_starts_a_new_one(
    node: Node, audience: str, process_pool: CryptoPool
) -> None:
    """A node that restarted has lost its sessions: the client's resumption is NOT_FOUND,
    and the client starts a new session (fresh keys) instead of failing; told not to
    retry, it fails with the node's word."""
    lost = "0" * 32

    def stale() -> PartnerSession:
        session = PartnerSession(
            audience=audience, protocol=Protocol.MATCH, data=email_set(), pool=process_pool
        )
        session.session_id = lost
        return session

    run = asyncio.run(
        run_psi(
            partner(node), audience, Protocol.MATCH, email_set(), pool=process_pool, session=stale()
        )
    )
    assert run.restarts == 1
    assert run.session.session_id not in ("", lost)
    assert run.result is not None
    assert run.result.intersection == sum(i % 2 == 0 and i < 400 for i in range(300))

    no_retry = replace(partner(node), retry_seconds=0)
    with pytest.raises(ClientError, match="NOT_FOUND: no resumable session"):
        asyncio.run(
            run_psi(
                no_retry, audience, Protocol.MATCH, email_set(), pool=process_pool, session=stale()
            )
        )
    assert healthy(node)
    _ = grpc
