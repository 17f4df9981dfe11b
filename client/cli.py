"""The ``cleanroom`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions, parse_id_columns

app = typer.Typer(
    name="cleanroom",
    help="Privacy-preserving audience clean room: PSI matching between a brand and media partners.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(help="Tenants and their tokens (run on the brand node's machine).")
audience_app = typer.Typer(
    help="Brand audiences: hashed on this machine, uploaded to the brand node."
)
partner_app = typer.Typer(help="Media-partner side: private matching against a brand audience.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(audience_app, name="audience")
app.add_typer(partner_app, name="partner")
conversions_app = typer.Typer(help="Brand conversions for attribution: hashed here, uploaded.")
policy_app = typer.Typer(help="The tenant's privacy policy (admin token).")
report_app = typer.Typer(help="Attribution reports from the brand node's REST API.")
app.add_typer(conversions_app, name="conversions")
app.add_typer(policy_app, name="policy")
app.add_typer(report_app, name="report")

err = Console(stderr=True)
out = Console()

Server = Annotated[str, typer.Option("--server", help="Brand node gRPC address, HOST:PORT.")]
Token = Annotated[str, typer.Option("--token", envvar="CLEANROOM_TOKEN", help="Bearer token.")]
IdColumns = Annotated[
    str,
    typer.Option(
        "--id-columns", help="Identifier columns in priority order, e.g. email,phone,maid."
    ),
]
Region = Annotated[
    str | None,
    typer.Option("--default-region", help="Region for phones without +country, e.g. US, CN."),
]
TlsDir = Annotated[
    Path | None, typer.Option("--tls-dir", help="Directory from `cleanroom certs` (mTLS).")
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def main() -> None:
    from cleanroom.server.logs import configure

    configure(logging.WARNING)
    app()


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the project's error vocabulary into one clear line and exit 1."""
    from cleanroom.client.sdk import ClientError

    try:
        yield
    except ClientError as exc:
        raise _fail(f"{exc.code}: {exc.message}") from exc
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        raise _fail(str(exc)) from exc


def _columns(spec: str) -> list[IdColumn]:
    return parse_id_columns(spec)


def _options(region: str | None) -> NormalizeOptions:
    return NormalizeOptions(default_region=region)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )
    with progress:
        yield progress


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------ serve


@app.command()
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
    with _errors():
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
        with _errors():
            from cleanroom.server.errors import AlreadyExists

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
        _print_json(result)
    else:
        out.print(f"tenant [bold]{name}[/] ({tenant.tenant_id}); tokens are shown only now:")
        for role, token in tokens.items():
            out.print(f"  {role:8} {token}")


# ------------------------------------------------------------------ audiences


def _connection(server: str, token: str, tls_dir: Path | None) -> Any:
    from cleanroom.client.sdk import Connection

    return Connection(server, token, tls_dir)


@audience_app.command("upload")
def audience_upload(
    server: Server,
    token: Token,
    name: Annotated[str, typer.Option("--name", help="Audience name.")],
    file: Annotated[Path, typer.Option("--file", help="CSV or Parquet file.")],
    id_columns: IdColumns,
    default_region: Region = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an audience of the same name.")
    ] = False,
    tls_dir: TlsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Normalize and hash FILE here, upload the digests, print the upload report."""
    from cleanroom.client.sdk import upload_audience

    with _errors():
        columns = _columns(id_columns)
        with _progress(not as_json) as progress:
            task = progress.add_task("hashing and uploading rows", total=None)
            result = _run(
                upload_audience(
                    _connection(server, token, tls_dir),
                    name=name,
                    path=file,
                    id_columns=columns,
                    options=_options(default_region),
                    replace=replace,
                    on_rows=lambda n: progress.advance(task, n),
                )
            )
    report = result.to_dict()
    if as_json:
        _print_json(report)
        return
    out.print(f"audience [bold]{name}[/] uploaded")
    out.print(f"  rows read      {report['rows_read']}")
    out.print(f"  rows accepted  {report['rows_accepted']}")
    for reason, n in sorted(report["rows_rejected"].items()):
        out.print(f"  rejected: {reason}  {n}")
    for reason, n in sorted(report["invalid_identifiers"].items()):
        out.print(f"  invalid identifiers: {reason}  {n}")
    for id_type, n in sorted(report["identifiers"].items()):
        out.print(f"  {id_type} identifiers  {n}")
    out.print(f"  duplicates     {report['duplicates']}")
    out.print(f"  distinct identifiers stored  {report['audience']['elements']}")


# ------------------------------------------------------------------ partner


def _partner_session(
    server: str,
    token: str,
    tls_dir: Path | None,
    audience: str,
    file: Path,
    columns: list[IdColumn],
    region: str | None,
    protocol_name: str,
    workers: int | None,
    show_progress: bool,
    report_count: bool = True,
) -> tuple[Any, Any, Any]:
    from cleanroom.client.sdk import load_partner_set, run_psi
    from cleanroom.matching.messages import Protocol
    from cleanroom.matching.workers import CryptoPool

    conn = _connection(server, token, tls_dir)
    with _progress(show_progress) as progress:
        reading = progress.add_task("hashing partner rows", total=None)
        data, report = load_partner_set(
            file, columns, _options(region), on_rows=lambda n: progress.advance(reading, n)
        )
        progress.update(reading, visible=False)
        sending = progress.add_task("blinding and sending", total=max(1, data.points))
        brand = progress.add_task("re-blinding brand set", total=None)

        def on_progress(p: Any) -> None:
            progress.update(sending, completed=p.points_sent, total=max(1, p.points_total))
            progress.update(brand, completed=p.brand_done, total=max(1, p.brand_total))

        with CryptoPool.processes(workers) as pool:
            run = _run(
                run_psi(
                    conn,
                    audience,
                    Protocol(protocol_name),
                    data,
                    pool=pool,
                    report_count=report_count,
                    on_progress=on_progress,
                )
            )
    return run, data, report


@partner_app.command("match")
def partner_match(
    server: Server,
    token: Token,
    audience: Annotated[
        str, typer.Option("--audience", help="The brand audience to match against.")
    ],
    file: Annotated[Path, typer.Option("--file", help="Partner CSV or Parquet file.")],
    id_columns: IdColumns,
    out_path: Annotated[
        Path, typer.Option("--out", help="Output CSV: input rows + matched, matched_on.")
    ],
    default_region: Region = None,
    tls_dir: TlsDir = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    report_count: Annotated[
        bool,
        typer.Option("--report-count/--no-report-count", help="Tell the brand the match count."),
    ] = True,
    as_json: JsonOut = False,
) -> None:
    """PSI match: learn which of FILE's rows are in the brand audience."""
    from cleanroom.client.sdk import write_match_output

    with _errors():
        columns = _columns(id_columns)
        run, data, report = _partner_session(
            server,
            token,
            tls_dir,
            audience,
            file,
            columns,
            default_region,
            "match",
            workers,
            not as_json,
            report_count,
        )
        outcome = run.session.outcome
        assert outcome is not None
        write_match_output(file, out_path, outcome.matched_on, columns)
    by_type = {str(c.id_type): int((outcome.matched_on == i).sum()) for i, c in enumerate(columns)}
    summary = {
        "session_id": run.session.session_id,
        "rows": data.row_count,
        "matched": outcome.matched_records,
        "matched_on": by_type,
        "brand_size": outcome.brand_points,
        "resumes": run.resumes,
        "out": str(out_path),
        "read_report": report.to_dict(),
    }
    if as_json:
        _print_json(summary)
    else:
        out.print(
            f"matched [bold]{outcome.matched_records}[/] of {data.row_count} rows"
            f" against {outcome.brand_points} brand identifiers → {out_path}"
        )
        for id_type, n in by_type.items():
            out.print(f"  on {id_type}: {n}")


@partner_app.command("overlap")
def partner_overlap(
    server: Server,
    token: Token,
    audience: Annotated[str, typer.Option("--audience")],
    file: Annotated[Path, typer.Option("--file")],
    id_columns: IdColumns,
    default_region: Region = None,
    tls_dir: TlsDir = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    as_json: JsonOut = False,
) -> None:
    """PSI cardinality: both sides learn only how many of FILE's records match."""
    with _errors():
        run, data, report = _partner_session(
            server,
            token,
            tls_dir,
            audience,
            file,
            _columns(id_columns),
            default_region,
            "cardinality",
            workers,
            not as_json,
        )
    assert run.result is not None
    summary = {
        "session_id": run.session.session_id,
        "intersection": run.result.intersection,
        "records": len(data.records()),
        "brand_size": run.accepted.brand_points if run.accepted else None,
        "read_report": report.to_dict(),
    }
    if as_json:
        _print_json(summary)
    else:
        out.print(f"overlap: [bold]{run.result.intersection}[/] of {summary['records']} records")


# ------------------------------------------------------------------ attribution


@conversions_app.command("upload")
def conversions_upload(
    server: Server,
    token: Token,
    name: Annotated[str, typer.Option("--name", help="Conversion set name.")],
    file: Annotated[Path, typer.Option("--file", help="CSV or Parquet conversions file.")],
    id_columns: IdColumns,
    customer_column: Annotated[str, typer.Option("--customer-column")] = "customer_id",
    time_column: Annotated[str, typer.Option("--time-column")] = "ts",
    value_column: Annotated[str, typer.Option("--value-column")] = "value",
    default_region: Region = None,
    replace: Annotated[bool, typer.Option("--replace")] = False,
    tls_dir: TlsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Validate and hash conversions here, upload digests, days and values."""
    from cleanroom.client.attribution import upload_conversions

    with _errors():
        result = _run(
            upload_conversions(
                _connection(server, token, tls_dir),
                name=name,
                path=file,
                id_columns=_columns(id_columns),
                options=_options(default_region),
                customer_column=customer_column,
                time_column=time_column,
                value_column=value_column,
                replace=replace,
            )
        )
    if as_json:
        _print_json(result)
    else:
        out.print(
            f"conversions [bold]{name}[/]: {result['events']} events of {result['customers']}"
            f" customers, {result['identifiers']} identifiers"
        )


@policy_app.command("set")
def policy_set(
    server: Server,
    token: Token,
    aggregation_threshold: Annotated[int | None, typer.Option("--aggregation-threshold")] = None,
    dp: Annotated[str | None, typer.Option("--dp", help="off, laplace or gaussian.")] = None,
    epsilon_budget: Annotated[float | None, typer.Option("--epsilon-budget")] = None,
    min_partner_records: Annotated[int | None, typer.Option("--min-partner-records")] = None,
    tls_dir: TlsDir = None,
) -> None:
    """Change the tenant's policy; prints the policy in force."""
    import grpc

    from cleanroom.client.sdk import ClientError
    from cleanroom.proto import cleanroom_pb2 as pb
    from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc

    conn = _connection(server, token, tls_dir)
    request = pb.PolicyRequest()
    if aggregation_threshold is not None:
        request.aggregation_threshold = aggregation_threshold
    if dp is not None:
        request.dp = dp
    if epsilon_budget is not None:
        request.epsilon_budget = epsilon_budget
    if min_partner_records is not None:
        request.min_partner_records = min_partner_records
    with _errors(), conn.sync_channel() as channel:
        try:
            response = pb_grpc.AttributionServiceStub(channel).SetPolicy(
                request, metadata=conn.metadata, timeout=60
            )
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from exc
    _print_json(
        {
            "aggregation_threshold": response.aggregation_threshold,
            "dp": response.dp,
            "epsilon_budget": response.epsilon_budget,
            "epsilon_spent": response.epsilon_spent,
            "min_partner_records": response.min_partner_records,
        }
    )


@partner_app.command("attribute")
def partner_attribute(
    server: Server,
    token: Token,
    conversions: Annotated[str, typer.Option("--conversions", help="The brand's conversion set.")],
    exposures: Annotated[Path, typer.Option("--exposures", help="Exposure log CSV/Parquet.")],
    id_columns: IdColumns,
    user_column: Annotated[str, typer.Option("--user-column")] = "user_id",
    spend: Annotated[Path | None, typer.Option("--spend", help="CSV: campaign_id,spend")] = None,
    click_window: Annotated[int, typer.Option("--click-window")] = 7,
    view_window: Annotated[int, typer.Option("--view-window")] = 1,
    epsilon: Annotated[float, typer.Option("--epsilon", help="DP budget to spend.")] = 0.0,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    default_region: Region = None,
    tls_dir: TlsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Closed-loop attribution against the brand's conversions; prints the report id."""
    from cleanroom.client.attribution import (
        AttributionProgress,
        AttributionRequest,
        prepare_attribution,
        run_attribution,
    )
    from cleanroom.federated.attribution.inputs import Windows

    with _errors():
        request = AttributionRequest(
            conversions=conversions,
            exposures=exposures,
            id_columns=_columns(id_columns),
            options=_options(default_region),
            user_column=user_column,
            spend=spend,
            windows=Windows(click_window, view_window),
            epsilon=epsilon,
        )
        from cleanroom.matching.workers import CryptoPool

        with CryptoPool.processes(workers) as pool, _progress(not as_json) as progress:
            phase = progress.add_task("reading the exposure log", total=None)
            prepared = prepare_attribution(request, pool.executor)
            sent = progress.add_task("partner tokens sent", total=None, visible=False)
            received = progress.add_task("brand tokens received", total=None, visible=False)

            def on_progress(p: AttributionProgress) -> None:
                progress.update(phase, description=p.phase)
                if p.tokens_total:
                    progress.update(
                        sent, completed=p.tokens_sent, total=p.tokens_total, visible=True
                    )
                if p.brand_total:
                    progress.update(
                        received, completed=p.brand_received, total=p.brand_total, visible=True
                    )

            report_id = _run(
                run_attribution(_connection(server, token, tls_dir), prepared, on_progress)
            )
    if as_json:
        _print_json({"report_id": report_id})
    else:
        out.print(f"report [bold]{report_id}[/]")


@report_app.command("show")
def report_show(
    report_id: Annotated[str, typer.Argument()],
    api: Annotated[str, typer.Option("--api", help="REST base URL, e.g. http://HOST:8080")],
    token: Token,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
) -> None:
    """Fetch a report from the REST API."""
    import httpx

    if fmt not in ("table", "json", "csv"):
        raise _fail("--format is table, json or csv")
    headers = {"authorization": f"Bearer {token}"}
    suffix = "?format=csv" if fmt == "csv" else ""
    try:
        resp = httpx.get(
            f"{api.rstrip('/')}/v1/reports/{report_id}{suffix}", headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {api}: {exc}") from exc
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise _fail(f"HTTP {resp.status_code}: {detail}")
    if fmt == "csv":
        sys.stdout.write(resp.text)
        return
    report = resp.json()
    if fmt == "json":
        _print_json(report)
        return
    from cleanroom.client.cli_tables import report_table

    out.print(report_table(report))


# ------------------------------------------------------------------ tools


@app.command()
def synth(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for brand.csv and partner.csv.")
    ],
    brand_rows: Annotated[int, typer.Option("--brand-rows")] = 10_000,
    partner_rows: Annotated[int, typer.Option("--partner-rows")] = 10_000,
    overlap: Annotated[
        float, typer.Option("--overlap", help="Share of partner rows that are brand customers.")
    ] = 0.3,
    seed: Annotated[int, typer.Option("--seed")] = 7,
    region: Annotated[str, typer.Option("--region", help="Phone region of the population.")] = "US",
) -> None:
    """Write realistic synthetic brand and partner files with messy identifiers."""
    from cleanroom.audiences.synth import synthesize

    with _errors():
        if not 0.0 <= overlap <= 1.0:
            raise ValueError("--overlap is a fraction between 0 and 1")
        result = synthesize(
            out_dir,
            brand_rows=brand_rows,
            partner_rows=partner_rows,
            overlap=overlap,
            seed=seed,
            default_region=region,
        )
    out.print(f"wrote {result.brand_path} and {result.partner_path}")


@app.command()
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


@app.command()
def demo(
    rows: Annotated[int, typer.Option("--rows", help="Rows on each side.")] = 5_000,
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep the data in this directory.")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the node up afterwards for the dashboard.")
    ] = False,
) -> None:
    """Synthesize data, start a brand node in-process: match, overlap, attribution."""
    from cleanroom.client.demo import run_demo

    with _errors():
        run_demo(rows=rows, keep=keep, console=out, serve=serve)


if __name__ == "__main__":
    main()
