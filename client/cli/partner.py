"""Media-partner commands: private matching and attribution against a brand node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from cleanroom.audiences.identifiers import IdColumn
from cleanroom.client.cli.common import (
    IdColumns,
    JsonOut,
    Region,
    Server,
    TlsDir,
    Token,
    connection,
    errors,
    normalize_options,
    out,
    parse_columns,
    print_json,
    progress_bars,
)

partner_app = typer.Typer(help="Media-partner side: private matching against a brand audience.")


def register(app: typer.Typer) -> None:
    app.add_typer(partner_app, name="partner")


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

    conn = connection(server, token, tls_dir)
    with progress_bars(show_progress) as progress:
        reading = progress.add_task("hashing partner rows", total=None)
        data, report = load_partner_set(
            file, columns, normalize_options(region), on_rows=lambda n: progress.advance(reading, n)
        )
        progress.update(reading, visible=False)
        sending = progress.add_task("blinding and sending", total=max(1, data.points))
        brand = progress.add_task("re-blinding brand set", total=None)

        def on_progress(p: Any) -> None:
            progress.update(sending, completed=p.points_sent, total=max(1, p.points_total))
            progress.update(brand, completed=p.brand_done, total=max(1, p.brand_total))

        with CryptoPool.processes(workers) as pool:
            run = asyncio.run(
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

    with errors():
        columns = parse_columns(id_columns)
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
        print_json(summary)
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
    with errors():
        run, data, report = _partner_session(
            server,
            token,
            tls_dir,
            audience,
            file,
            parse_columns(id_columns),
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
        print_json(summary)
    else:
        out.print(f"overlap: [bold]{run.result.intersection}[/] of {summary['records']} records")


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
    from cleanroom.federated.attribution.messages import Windows

    with errors():
        request = AttributionRequest(
            conversions=conversions,
            exposures=exposures,
            id_columns=parse_columns(id_columns),
            options=normalize_options(default_region),
            user_column=user_column,
            spend=spend,
            windows=Windows(click_window, view_window),
            epsilon=epsilon,
        )
        from cleanroom.matching.workers import CryptoPool

        with CryptoPool.processes(workers) as pool, progress_bars(not as_json) as progress:
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

            report_id = asyncio.run(
                run_attribution(connection(server, token, tls_dir), prepared, on_progress)
            )
    if as_json:
        print_json({"report_id": report_id})
    else:
        out.print(f"report [bold]{report_id}[/]")
