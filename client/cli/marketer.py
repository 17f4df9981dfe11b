"""Marketer commands: reports and lookalike packages from the brand node's REST API."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cleanroom.proto.transport import CA_CERT

if TYPE_CHECKING:
    import httpx

from cleanroom.client.cli.common import (
    TlsDir,
    Token,
    fail,
    out,
    print_json,
)

report_app = typer.Typer(help="Attribution reports from the brand node's REST API.")
lookalike_app = typer.Typer(help="Lookalike packages from the brand node's REST API.")
Api = Annotated[str, typer.Option("--api", help="REST base URL, e.g. https://HOST:8080")]
Ca = Annotated[
    Path | None,
    typer.Option("--ca", help="CA certificate to verify an https --api against (ca.pem)."),
]


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
    app.add_typer(lookalike_app, name="lookalike")


def _verify(ca: Path | None, tls_dir: Path | None) -> ssl.SSLContext | bool:
    """How an https API is verified: the node's CA (``--ca``, or ``ca.pem`` in
    ``--tls-dir``), else the system's trust store."""
    path = ca or (tls_dir / CA_CERT if tls_dir is not None else None)
    if path is None:
        return True
    if not path.is_file():
        raise fail(f"no CA certificate at {path}")
    return ssl.create_default_context(cafile=str(path))


def _get(
    api: str, path: str, token: str, ca: Path | None = None, tls_dir: Path | None = None
) -> httpx.Response:
    """``GET api + path`` with the token, or the problem detail as a one-line error."""
    import httpx

    try:
        resp = httpx.get(
            f"{api.rstrip('/')}{path}",
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
            verify=_verify(ca, tls_dir),
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {api}: {exc}") from exc
    _refused(resp)
    return resp


def _refused(resp: httpx.Response) -> None:
    """A non-200 answer as a one-line error with the problem detail."""
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise fail(f"HTTP {resp.status_code}: {detail}")


@report_app.command("show")
def report_show(
    report_id: Annotated[str, typer.Argument()],
    api: Api,
    token: Token,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    wide: Annotated[
        bool, typer.Option("--wide", help="Table: one row per campaign (about 140 columns).")
    ] = False,
    ca: Ca = None,
    tls_dir: TlsDir = None,
) -> None:
    """Fetch a report from the REST API (a table reads at 80 columns; --wide for one row each)."""
    if fmt not in ("table", "json", "csv"):
        raise fail("--format is table, json or csv")
    suffix = "?format=csv" if fmt == "csv" else ""
    resp = _get(api, f"/v1/reports/{report_id}{suffix}", token, ca, tls_dir)
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


@lookalike_app.command("show")
def lookalike_show(
    package_id: Annotated[str, typer.Argument()],
    api: Api,
    token: Token,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    ca: Ca = None,
    tls_dir: TlsDir = None,
) -> None:
    """A lookalike package's metadata from the REST API: quality, tiers, privacy."""
    if fmt not in ("table", "json"):
        raise fail("--format is table or json")
    resp = _get(api, f"/v1/lookalikes/{package_id}", token, ca, tls_dir)
    if fmt == "json":
        print_json(resp.json())
        return
    from cleanroom.client.tables import lookalike_table
    from cleanroom.federated.lookalike.report import LookalikeReport

    out.print(lookalike_table(LookalikeReport.model_validate(resp.json())))


@report_app.command("delete")
def report_delete(
    report_id: Annotated[str, typer.Argument()],
    api: Api,
    token: Token,
    ca: Ca = None,
    tls_dir: TlsDir = None,
) -> None:
    """Delete an attribution report or a lookalike package's metadata (admin token; the
    epsilon it spent stays spent)."""
    import httpx

    url = f"{api.rstrip('/')}/v1/reports/{report_id}"
    headers = {"authorization": f"Bearer {token}"}
    try:
        resp = httpx.delete(url, headers=headers, timeout=60, verify=_verify(ca, tls_dir))
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {api}: {exc}") from exc
    _refused(resp)
    out.print(f"deleted {resp.json()['deleted']} {report_id}")
