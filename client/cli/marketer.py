"""Marketer commands: reports from the brand node's REST API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cleanroom.client.cli.common import (
    Token,
    fail,
    out,
    print_json,
)

report_app = typer.Typer(help="Attribution reports from the brand node's REST API.")


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")


@report_app.command("show")
def report_show(
    report_id: Annotated[str, typer.Argument()],
    api: Annotated[str, typer.Option("--api", help="REST base URL, e.g. http://HOST:8080")],
    token: Token,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    wide: Annotated[
        bool, typer.Option("--wide", help="Table: one row per campaign (about 140 columns).")
    ] = False,
) -> None:
    """Fetch a report from the REST API (a table reads at 80 columns; --wide for one row each)."""
    import httpx

    if fmt not in ("table", "json", "csv"):
        raise fail("--format is table, json or csv")
    headers = {"authorization": f"Bearer {token}"}
    suffix = "?format=csv" if fmt == "csv" else ""
    try:
        resp = httpx.get(
            f"{api.rstrip('/')}/v1/reports/{report_id}{suffix}", headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {api}: {exc}") from exc
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise fail(f"HTTP {resp.status_code}: {detail}")
    if fmt == "csv":
        sys.stdout.write(resp.text)
        return
    if fmt == "json":
        print_json(resp.json())
        return
    from cleanroom.client.tables import report_blocks, report_table
    from cleanroom.federated.attribution.report import AttributionReport

    report = AttributionReport.model_validate(resp.json())
    out.print(report_table(report) if wide else report_blocks(report))
