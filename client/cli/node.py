"""Commands run on the brand node's machine: serve, tenants, partner accounts, certificates."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cleanroom.client.cli.common import (
    JsonOut,
    err,
    errors,
    fail,
    out,
    print_json,
)
from cleanroom.proto.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from cleanroom.server.store import Principal, SqlStore

tenant_app = typer.Typer(help="Tenants and their tokens (run on the brand node's machine).")
token_app = typer.Typer(help="Bearer tokens: rotation and revocation (on the node's machine).")
partner_account_app = typer.Typer(
    help="A tenant's media partners and their tokens (run on the brand node's machine)."
)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(tenant_app, name="tenant")
    app.add_typer(partner_account_app, name="partner-account")
    app.add_typer(token_app, name="token")
    app.command()(certs)


def given(**flags: Any) -> dict[str, Any]:
    """The flags a user gave: left-out ones defer to the settings (environment, defaults)."""
    return {name: value for name, value in flags.items() if value is not None}


# ------------------------------------------------------------------ serve


def _setting(name: str, what: str) -> str:
    """Help text naming a setting's default (declared once, in ServerSettings) and its
    environment variable: a flag left out defers to the variable, then the default."""
    from cleanroom.server.settings import ServerSettings

    default = ServerSettings.model_fields[name].default
    shown = "" if default is None else f"; default {default}"
    return f"{what} (env CLEANROOM_{name.upper()}{shown})."


def serve(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help=_setting("data_dir", "Where metadata and data live")),
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option("--grpc-port", help=_setting("grpc_port", "gRPC port"))
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help=_setting("http_port", "REST port"))
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help=_setting("host", "Bind address; non-local needs TLS")),
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option("--tls-dir", help=_setting("tls_dir", "Directory from `cleanroom certs`")),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help=_setting("workers", "Crypto processes; default all cores")),
    ] = None,
    dask_scheduler: Annotated[
        str | None,
        typer.Option(
            "--dask-scheduler",
            help=_setting(
                "dask_scheduler",
                "Crypto on a Dask cluster: scheduler address (tls:// with --tls-dir) or local:N",
            ),
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help=_setting("database_url", "Default: SQLite in the data dir")
        ),
    ] = None,
    max_sessions: Annotated[
        int | None,
        typer.Option(
            "--max-sessions",
            help=_setting(
                "max_sessions", "Jobs run at once, more are refused; default 2 per core, min 4"
            ),
        ),
    ] = None,
    max_partner_sessions: Annotated[
        int | None,
        typer.Option(
            "--max-partner-sessions",
            help=_setting("max_partner_sessions", "Jobs one partner runs at once; default half"),
        ),
    ] = None,
) -> None:
    """Run the brand node: gRPC service, REST API. Flags override CLEANROOM_* variables."""
    from pydantic import ValidationError

    from cleanroom.server.logs import configure
    from cleanroom.server.node import BrandNode
    from cleanroom.server.policy import describe
    from cleanroom.server.settings import ServerSettings

    configure(logging.INFO)
    flags = given(
        data_dir=data_dir,
        grpc_port=grpc_port,
        http_port=http_port,
        host=host,
        tls_dir=tls_dir,
        workers=workers,
        dask_scheduler=dask_scheduler,
        database_url=database_url,
        max_sessions=max_sessions,
        max_partner_sessions=max_partner_sessions,
    )
    try:
        settings = ServerSettings(**flags)
    except ValidationError as exc:
        raise fail(f"bad setting: {describe(exc)}") from exc
    with errors():
        try:
            asyncio.run(BrandNode(settings).serve_forever((signal.SIGTERM, signal.SIGINT)))
        except KeyboardInterrupt:
            err.print("stopped")


# ------------------------------------------------------------------ tenants


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help=_setting("data_dir", "The node's data directory")),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help=_setting("database_url", "Default: SQLite in it")),
]


@contextmanager
def node_store(data_dir: Path | None, database_url: str | None) -> Iterator[SqlStore]:
    """The node's store, as ``cleanroom serve`` with the same flags would open it."""
    from pydantic import ValidationError

    from cleanroom.server.policy import describe
    from cleanroom.server.settings import ServerSettings
    from cleanroom.server.store import SqlStore

    try:
        settings = ServerSettings(**given(data_dir=data_dir, database_url=database_url))
    except ValidationError as exc:
        raise InvalidInput(f"bad setting: {describe(exc)}") from exc
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.resolved_database_url())
    try:
        yield store
    finally:
        store.close()


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Tenant (brand) name.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    min_partner_records: Annotated[int | None, typer.Option("--min-partner-records")] = None,
    sessions_per_day: Annotated[int | None, typer.Option("--sessions-per-day")] = None,
    retention_days: Annotated[
        int | None,
        typer.Option("--retention-days", help="Keep data this many days (default: no limit)."),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Create a tenant (with its first partner, `default`) and print its admin, partner
    and analyst tokens (shown once)."""
    from cleanroom.server.policy import PolicyChanges
    from cleanroom.server.tenants import provision_tenant

    with errors(), node_store(data_dir, database_url) as store:
        changes = PolicyChanges.parse(
            given(
                min_partner_records=min_partner_records,
                sessions_per_day=sessions_per_day,
                retention_days=retention_days,
            )
        )
        tenant, issued = provision_tenant(store, name, changes)
    tokens = {role.value: token for role, token in issued.items()}
    result = {"tenant": tenant.tenant_id, "name": tenant.name, "tokens": tokens}
    if as_json:
        print_json(result)
    else:
        out.print(f"tenant [bold]{name}[/] ({tenant.tenant_id}); tokens are shown only now:")
        for role, token in tokens.items():
            out.print(f"  {role:8} {token}")


def _tenant_of(store: SqlStore, tenant: str | None) -> Principal:
    """The admin of ``tenant`` (by name), or of the only tenant the node has."""
    from cleanroom.server.store import Principal, Role

    if tenant is not None:
        found = store.find_tenant(tenant)
        if found is None:
            raise NotFound(f"no tenant named {tenant!r}")
        return Principal(found.tenant_id, Role.ADMIN)
    tenants = store.list_tenants()
    if len(tenants) != 1:
        names = ", ".join(t.name for t in tenants) or "none yet"
        raise InvalidInput(f"name the tenant with --tenant (this node has: {names})")
    return Principal(tenants[0].tenant_id, Role.ADMIN)


Tenant = Annotated[
    str | None, typer.Option("--tenant", help="The brand (tenant) name; needed with several.")
]


@partner_account_app.command("create")
def partner_account_create(
    name: Annotated[str, typer.Argument(help="The media partner's name, e.g. streamco.")],
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    sessions_per_day: Annotated[
        int | None, typer.Option("--sessions-per-day", help="Own quota (default: the tenant's).")
    ] = None,
    min_partner_records: Annotated[
        int | None,
        typer.Option("--min-partner-records", help="Own minimum set size (default: the tenant's)."),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Add a media partner to a tenant and print its token (shown once)."""
    from cleanroom.server.policy import PolicyChanges
    from cleanroom.server.tenants import create_partner

    with errors(), node_store(data_dir, database_url) as store:
        admin = _tenant_of(store, tenant)
        overrides = PolicyChanges.parse(
            given(sessions_per_day=sessions_per_day, min_partner_records=min_partner_records)
        )
        view, token = create_partner(store, admin, name, overrides)
    result = {"tenant": admin.tenant_id, "partner": view.as_dict(), "token": token}
    if as_json:
        print_json(result)
    else:
        out.print(f"partner [bold]{name}[/] ({view.partner.partner_id}); its token, shown once:")
        out.print(f"  {token}")


@partner_account_app.command("list")
def partner_account_list(
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: JsonOut = False,
) -> None:
    """A tenant's media partners: quota, minimum set size, epsilon spent."""
    from rich.table import Table

    from cleanroom.server.tenants import partner_views

    with errors(), node_store(data_dir, database_url) as store:
        views = partner_views(store, _tenant_of(store, tenant).tenant_id)
    if as_json:
        print_json([v.as_dict() for v in views])
        return
    table = Table("partner", "sessions/day", "min records", "epsilon spent", "left")
    for v in views:
        table.add_row(
            v.partner.name,
            str(v.policy.sessions_per_day),
            str(v.policy.min_partner_records),
            f"{v.epsilon_spent:g}",
            f"{v.epsilon_remaining:g}",
        )
    out.print(table)


def certs(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the CA and certificates.")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Server host names/IPs (repeat).")
    ] = None,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="A Dask cluster's own CA and certificate (scheduler, workers)."
        ),
    ] = False,
) -> None:
    """Create a CA plus server and client certificates for mutual TLS (--cluster: a CA and
    certificate of a party's own Dask cluster, for Dask's TLS settings)."""
    from cleanroom.server.tls import make_certificates, make_cluster_certificates

    hosts = tuple(host) if host else ("localhost", "127.0.0.1", "::1")
    make = make_cluster_certificates if cluster else make_certificates
    for path in make(out_dir, hosts=hosts):
        out.print(f"wrote {path}")


@token_app.command("rotate")
def token_rotate(
    role: Annotated[str, typer.Option("--role", help="admin, partner or analyst.")],
    partner: Annotated[
        str | None, typer.Option("--partner", help="The partner whose token (with --role partner).")
    ] = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    grace_seconds: Annotated[
        float,
        typer.Option(
            "--grace-seconds",
            min=0,
            help="Let the old tokens work this much longer, so their holder can switch"
            " (default 0: revoked at once).",
        ),
    ] = 0.0,
    as_json: JsonOut = False,
) -> None:
    """Issue a new token for a role (or a partner) and revoke its old ones (at once, or
    after --grace-seconds)."""
    from cleanroom.server.store import Role
    from cleanroom.server.tenants import rotate_token

    with errors(), node_store(data_dir, database_url) as store:
        try:
            chosen = Role(role)
        except ValueError:
            raise InvalidInput(f"--role is admin, partner or analyst, not {role!r}") from None
        admin = _tenant_of(store, tenant)
        token, revoked = rotate_token(
            store, admin, chosen, partner, grace=timedelta(seconds=grace_seconds)
        )
    if as_json:
        print_json(
            {
                "role": chosen.value,
                "partner": partner,
                "token": token,
                "revoked": revoked,
                "grace_seconds": grace_seconds,
            }
        )
        return
    when = f"in {grace_seconds:g} s" if grace_seconds else "now"
    out.print(f"new {chosen.value} token (shown once); {revoked} old token(s) revoked {when}:")
    out.print(f"  {token}")
