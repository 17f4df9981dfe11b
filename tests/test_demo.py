"""`cleanroom demo` (README's first command) keeps working and checks itself."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console

from cleanroom.client.demo import run_demo


def test_demo_runs_and_agrees_with_the_plaintext_join() -> None:
    out = io.StringIO()
    result = run_demo(rows=800, console=Console(file=out, width=160))
    text = out.getvalue()
    assert result["rows"] == 800
    assert result["matched"] == result["intersection"] > 0
    assert "both results equal a plaintext join" in text
    assert "/dashboard/reports/" in text
    assert "label sums the partner trained on equal a plaintext join" in text
    assert "/dashboard/lookalikes/" in text
    assert result["lookalike_tiers"] == 4


def test_the_demo_command_prints_no_error() -> None:
    """As a user runs it: exit 0, its checks passed, nothing on stderr at ERROR level
    (grpc.aio used from short-lived loops beside the node's once left asyncio's
    "Event loop is closed" tracebacks there)."""
    done = subprocess.run(
        [sys.executable, "-m", "cleanroom.client.cli", "demo", "--rows", "600"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "both results equal a plaintext join" in done.stdout
    assert "ERROR" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_the_demo_runs_on_chinese_platform_data() -> None:
    """`cleanroom demo --profile cn`: a CDP's MD5 and MD5_SHA256 mobiles, MD5 IMEIs and
    OAIDs, unionids against a partner's plaintext ids; the match equals what the generator
    planned."""
    out = io.StringIO()
    result = run_demo(rows=600, console=Console(file=out, width=160), profile="cn")
    text = out.getvalue()
    assert result["matched"] == result["intersection"] > 100
    assert "both results equal the match the generator planned" in text
    assert "matched on cn_mobile_md5" in text
