"""A brand node that dies: its worker processes do not outlive it, and the sessions it left
running are marked interrupted when a node starts on its store again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.sdk import Connection, upload_audience
from cleanroom.matching.workers import WORKER_NICENESS, CryptoPool
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Role, SessionRecord, SqlStore
from tests.conftest import provisioned
from tests.helpers import eventually
from tests.test_cli import free_port

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_node_leaves_no_worker_behind(tmp_path: Path, how: signal.Signals) -> None:
    data_dir = tmp_path / "node"
    subprocess.run(
        [*CLI, "tenant", "create", "acme", "--data-dir", str(data_dir), "--json"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    http_port = free_port()
    serve = [
        *CLI, "serve", "--data-dir", str(data_dir), "--grpc-port", str(free_port()),
        "--http-port", str(http_port), "--workers", "2",
    ]  # fmt: skip
    node = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def up() -> bool:
            assert node.poll() is None, "serve exited"
            try:
                url = f"http://127.0.0.1:{http_port}/healthz"
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(up, timeout=60, what="cleanroom serve to come up")
        children = psutil.Process(node.pid).children(recursive=True)
        workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) >= 2, json.dumps([c.cmdline() for c in children])
        node.send_signal(how)
        node.wait(timeout=10)

        def all_gone() -> bool:
            return not [c for c in children if c.is_running() and c.status() != "zombie"]

        eventually(all_gone, timeout=10, what="every worker of the killed node to end")
    finally:
        if node.poll() is None:
            node.kill()


def test_sessions_a_dead_node_left_running_are_interrupted_at_start_up(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path / "node", grpc_port=0, http_port=0, workers=1)
    settings.data_dir.mkdir()
    store = SqlStore(settings.resolved_database_url())
    tenant, tokens = store.provision_tenant("acme")
    started = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    for sid, status in (("a" * 32, "running"), ("b" * 32, "interrupted"), ("c" * 32, "done")):
        store.create_session(
            SessionRecord(sid, tenant.tenant_id, "x" * 32, "psi", status, 100, 100, 10, started)
        )
    store.close()
    stale = [
        settings.data_dir / kind / tenant.tenant_id / f".{'d' * 32}.events.parquet.1a2b.tmp"
        for kind in ("audiences", "conversions")
    ]
    for path in stale:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half an upload")
    with BrandNodeThread(settings) as node:
        assert not [p for p in stale if p.exists()]  # half-written uploads are gone
        assert node.ports is not None
        resp = httpx.get(
            f"http://127.0.0.1:{node.ports.http}/v1/sessions",
            headers={"Authorization": f"Bearer {tokens[Role.ANALYST]}"},
        )
    by_id = {s["session_id"]: s for s in resp.json()}
    for sid in ("a" * 32, "b" * 32):
        assert by_id[sid]["status"] == "interrupted"
        assert "the brand node restarted" in by_id[sid]["error"]
        assert "start a new session" in by_id[sid]["error"]
        assert by_id[sid]["finished_at"] is not None
    assert by_id["c" * 32]["status"] == "done" and by_id["c" * 32]["error"] is None
    store = SqlStore(settings.resolved_database_url())
    try:
        log = store.audit_log(tenant.tenant_id)
        audited = [e for e in log if e.action == "session.interrupted"]
        assert sorted(e.detail["session"] for e in audited) == ["a" * 32, "b" * 32]
    finally:
        store.close()


def test_a_sigterm_that_grpc_turns_into_a_cancelled_call_still_exits_130() -> None:
    """SIGTERM can land inside gRPC's machinery, which swallows the exception and cancels
    its call: the command sees CancelledError, and still ends as terminated (130). A
    CancelledError without a SIGTERM is not mistaken for one."""
    import typer

    from cleanroom.client.cli.common import Terminated, errors

    with pytest.raises(typer.Exit) as ended, errors():
        with contextlib.suppress(Terminated):  # what gRPC does with it
            signal.raise_signal(signal.SIGTERM)
        raise asyncio.CancelledError
    assert ended.value.exit_code == 130
    with pytest.raises(asyncio.CancelledError), errors():
        raise asyncio.CancelledError


def test_a_terminated_partner_command_cleans_up_and_ends_its_workers(tmp_path: Path) -> None:
    """SIGTERM reaches `partner match` mid-session: it unwinds like Ctrl-C (exit 130, a
    plain message), its workers end, and it leaves no output, whole or partial."""
    settings, tokens = provisioned(tmp_path / "node")
    brand = tmp_path / "crm.csv"
    brand.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(20_000)))
    users = tmp_path / "users.csv"
    users.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(10_000, 50_000)))
    with BrandNodeThread(settings) as node:
        assert node.ports is not None
        asyncio.run(
            upload_audience(
                Connection(node.target, tokens[Role.ADMIN]),
                name="crm",
                path=brand,
                id_columns=parse_id_columns("email"),
                options=NormalizeOptions(),
            )
        )
        out = tmp_path / "out" / "matched.csv"
        client = subprocess.Popen(
            [*CLI, "partner", "match", "--server", node.target, "--token", tokens[Role.PARTNER],
             "--audience", "crm", "--file", str(users), "--id-columns", "email",
             "--out", str(out), "--workers", "2", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{node.ports.http}/v1/sessions"
            analyst = {"Authorization": f"Bearer {tokens[Role.ANALYST]}"}

            def session_runs() -> bool:
                assert client.poll() is None, "the client ended before its session ran"
                listed = httpx.get(url, headers=analyst, timeout=5).json()
                return any(s["status"] == "running" for s in listed)

            eventually(session_runs, timeout=120, what="the partner's session to run")
            workers = psutil.Process(client.pid).children(recursive=True)
            assert workers
            client.send_signal(signal.SIGTERM)
            _, stderr = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
    assert client.returncode == 130, stderr
    assert "terminated before the command finished" in stderr
    assert "Traceback" not in stderr

    def all_gone() -> bool:
        return not [w for w in workers if w.is_running() and w.status() != "zombie"]

    eventually(all_gone, timeout=10, what="every worker of the client to end")
    leftovers = list(out.parent.glob("*")) if out.parent.exists() else []
    assert leftovers == []  # neither the output nor its temporary file


def _niceness() -> int:
    return os.nice(0)


def test_crypto_workers_yield_the_cpu_to_the_process_that_serves() -> None:
    """A worker runs WORKER_NICENESS below its parent's priority, so the node's event loop
    (health, REST, gRPC I/O) is scheduled first when the cores are busy."""
    with CryptoPool.processes(1) as pool:
        worker = pool.executor.submit(_niceness).result(timeout=60)
    assert worker == min(19, os.nice(0) + WORKER_NICENESS)
