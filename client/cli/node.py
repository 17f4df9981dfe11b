"""Commands run on the brand node's machine: serve, tenants, certificates."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from cleanroom.client.cli.common import (
    JsonOut,
    TlsDir,
    err,
    errors,
    out,
    print_json,
)

tenant_app = typer.Typer(help="Tenants and their tokens (run on the brand node's machine).")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(tenant_app, name="tenant")
    app.command()(certs)


# ------------------------------------------------------------------ serve


def serve(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where metadata and audiences live.")
    ] = Path("cleanroom-data"),
    grpc_port: Annotated[int, typer.Option("--grpc-port")] = 50051,
    http_port: Annotated[int, typer.Option("--http-port")] = 8080,
    host: Annotated[
        str, typer.Option("--host", help="Bind address; non-local needs --tls-dir.")
    ] = "127.0.0.1",
    tls_dir: TlsDir = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Crypto processes (default: all cores).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Default: SQLite in data dir.")
    ] = None,
) -> None:
    """Run the brand node: gRPC service, REST API."""
    from cleanroom.server.logs import configure
    from cleanroom.server.node import BrandNode
    from cleanroom.server.settings import ServerSettings

    configure(logging.INFO)
    settings = ServerSettings(
        data_dir=data_dir,
        grpc_port=grpc_port,
        http_port=http_port,
        host=host,
        tls_dir=tls_dir,
        workers=workers,
        database_url=database_url,
    )
    with errors():
        try:
            asyncio.run(BrandNode(settings).serve_forever((signal.SIGTERM, signal.SIGINT)))
        except KeyboardInterrupt:
            err.print("stopped")


# ------------------------------------------------------------------ tenants


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant (brand) name.")],
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("cleanroom-data"),
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
    min_partner_records: Annotated[int, typer.Option("--min-partner-records")] = 100,
    sessions_per_day: Annotated[int, typer.Option("--sessions-per-day")] = 100,
    as_json: JsonOut = False,
) -> None:
    """Create a tenant and print its admin, partner and analyst tokens (shown once)."""
    from cleanroom.server.settings import ServerSettings
    from cleanroom.server.store import Policy, SqlStore

    settings = ServerSettings(data_dir=data_dir, database_url=database_url)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.resolved_database_url())
    try:
        with errors():
            from cleanroom.proto.errors import AlreadyExists

            try:
                tenant, issued = store.provision_tenant(
                    name, Policy(min_partner_records, sessions_per_day)
                )
            except AlreadyExists as exc:
                raise ValueError(str(exc)) from exc
            tokens = {role.value: token for role, token in issued.items()}
    finally:
        store.close()
    result = {"tenant": tenant.tenant_id, "name": tenant.name, "tokens": tokens}
    if as_json:
        print_json(result)
    else:
        out.print(f"tenant [bold]{name}[/] ({tenant.tenant_id}); tokens are shown only now:")
        for role, token in tokens.items():
            out.print(f"  {role:8} {token}")


def certs(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the CA and certificates.")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Server host names/IPs (repeat).")
    ] = None,
) -> None:
    """Create a CA plus server and client certificates for mutual TLS."""
    from cleanroom.server.tls import make_certificates

    hosts = tuple(host) if host else ("localhost", "127.0.0.1", "::1")
    for path in make_certificates(out_dir, hosts=hosts):
        out.print(f"wrote {path}")
