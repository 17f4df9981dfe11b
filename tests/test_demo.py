"""`cleanroom demo` (README's first command) keeps working and checks itself."""

from __future__ import annotations

import io

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
