"""A node SIGKILLed under a running partner client: nothing of it survives, its session shows
``interrupted`` once it is back, and the client (``--retry-seconds 60``) waits the outage out
and finishes with the right answer in a new session."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil

from tests.helpers import eventually
from tests.test_cli import free_port

CLI = [sys.executable, "-m", "cleanroom.client.cli"]
BRAND, PARTNER, SHARED = 40_000, 40_000, 15_000  # a session of several seconds on 2 cores


def cli(*args: str) -> dict[str, Any]:
    done = subprocess.run([*CLI, *args], check=True, capture_output=True, text=True, timeout=300)
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


class Serve:
    """``cleanroom serve`` on fixed ports, so a restarted node is where the client looks."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.grpc_port, self.http_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        command = [
            *CLI, "serve", "--data-dir", str(self.data_dir), "--workers", "2",
            "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        eventually(self._up, timeout=60, what="cleanroom serve to come up")
        return self.process

    def _up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "serve exited"
        try:
            return httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def test_a_client_outlives_a_sigkilled_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    tokens = cli("tenant", "create", "acme", "--data-dir", str(data_dir), "--json")["tokens"]
    brand = pd.DataFrame({"email": [f"user{i}@example.com" for i in range(BRAND)]})
    offset = BRAND - SHARED
    users = pd.DataFrame({"email": [f"user{offset + i}@example.com" for i in range(PARTNER)]})
    brand.to_csv(tmp_path / "crm.csv", index=False)
    users.to_csv(tmp_path / "users.csv", index=False)

    node = Serve(data_dir)
    client: subprocess.Popen[str] | None = None
    try:
        first = node.start()
        target = f"127.0.0.1:{node.grpc_port}"
        cli(
            "audience", "upload", "--server", target, "--token", tokens["admin"],
            "--name", "crm", "--file", str(tmp_path / "crm.csv"), "--id-columns", "email",
            "--json",
        )  # fmt: skip
        out = tmp_path / "matched.csv"
        match = [
            *CLI, "partner", "match", "--server", target, "--token", tokens["partner"],
            "--audience", "crm", "--file", str(tmp_path / "users.csv"),
            "--id-columns", "email", "--out", str(out), "--retry-seconds", "60", "--json",
        ]  # fmt: skip
        client = subprocess.Popen(
            match,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        analyst = {"Authorization": f"Bearer {tokens['analyst']}"}

        def sessions() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = httpx.get(
                f"{node.api}/v1/sessions", headers=analyst, timeout=5
            ).json()
            return listed

        def running() -> list[str]:
            assert client is not None and client.poll() is None, "the client ended early"
            return [s["session_id"] for s in sessions() if s["status"] == "running"]

        eventually(lambda: bool(running()), timeout=120, what="the partner's session to run")
        [killed] = running()
        workers = psutil.Process(first.pid).children(recursive=True)
        assert workers
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        def all_gone() -> bool:
            return not [w for w in workers if w.is_running() and w.status() != "zombie"]

        eventually(all_gone, timeout=10, what="every worker of the killed node to end")
        if client.poll() is not None:
            _out, err = client.communicate()
            raise AssertionError(f"the client gave up while the node was down:\n{err}")

        node.start()
        by_id = {s["session_id"]: s for s in sessions()}
        assert by_id[killed]["status"] == "interrupted"
        assert "the brand node restarted" in by_id[killed]["error"]

        stdout, stderr = client.communicate(timeout=240)
        assert client.returncode == 0, stderr
        summary = json.loads(stdout)
        assert summary["session_id"] != killed  # a new session: the old one died with the node
        assert summary["matched"] == SHARED
        matched = pd.read_csv(out, dtype=str, keep_default_na=False)
        expected = users["email"].isin(set(brand["email"]))
        assert (matched["matched"] == "true").tolist() == expected.tolist()
        final = {s["session_id"]: s for s in sessions()}
        assert final[summary["session_id"]]["status"] == "done"
        assert final[summary["session_id"]]["intersection"] == SHARED
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        node.stop()
