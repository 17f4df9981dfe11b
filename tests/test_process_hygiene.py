"""A brand node's worker processes do not outlive it, however it dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.helpers import eventually
from tests.test_cli import free_port

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


def test_a_sigkilled_node_leaves_no_worker_behind(tmp_path: Path) -> None:
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
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=10)

        def all_gone() -> bool:
            return not [c for c in children if c.is_running() and c.status() != "zombie"]

        eventually(all_gone, timeout=10, what="every worker of the killed node to end")
    finally:
        if node.poll() is None:
            node.kill()
