"""Media-partner commands: private matching and attribution against a brand node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cleanroom.audiences.identifiers import IdColumn
from cleanroom.client.cli.common import (
    DaskScheduler,
    IdColumns,
    JsonOut,
    Region,
    RetrySeconds,
    Server,
    SpillMb,
    TlsDir,
    Token,
    WorkDir,
    connection,
    crypto_pool,
    errors,
    normalize_options,
    out,
    parse_columns,
    print_json,
    progress_bars,
    spill_bytes,
)
from cleanroom.matching.messages import PsiMethod

if TYPE_CHECKING:
    from cleanroom.client.sdk import Connection


partner_app = typer.Typer(help="Media-partner side: private matching against a brand audience.")


def register(app: typer.Typer) -> None:
    app.add_typer(partner_app, name="partner")


def _partner_session(
    conn: Connection,
    audience: str,
    file: Path,
    columns: list[IdColumn],
    region: str | None,
    protocol_name: str,
    workers: int | None,
    dask_scheduler: str | None,
    show_progress: bool,
    report_count: bool = True,
    method: PsiMethod = PsiMethod.ECDH,
    work_dir: Path | None = None,
    spill_mb: int | None = None,
) -> tuple[Any, Any, Any]:
    from cleanroom.client.sdk import load_partner_set, run_psi
    from cleanroom.matching.messages import Protocol

    with progress_bars(show_progress) as progress:
        reading = progress.add_task("hashing partner rows", total=None)
        data, report = load_partner_set(
            file,
            columns,
            normalize_options(region),
            on_rows=lambda n: progress.advance(reading, n),
            spill_dir=work_dir,
            memory_bytes=spill_bytes(spill_mb),
        )
        progress.update(reading, visible=False)
        kkrt = method is PsiMethod.KKRT
        sending = progress.add_task(
            "OT extension, bins sent" if kkrt else "blinding and sending", total=max(1, data.points)
        )
        brand = progress.add_task(
            "brand values checked" if kkrt else "re-blinding brand set", total=None
        )

        def on_progress(p: Any) -> None:
            progress.update(sending, completed=p.points_sent, total=max(1, p.points_total))
            progress.update(brand, completed=p.brand_done, total=max(1, p.brand_total))

        with crypto_pool(dask_scheduler, workers, conn.tls_dir) as pool:
            run = asyncio.run(
                run_psi(
                    conn,
                    audience,
                    Protocol(protocol_name),
                    data,
                    pool=pool,
                    report_count=report_count,
                    on_progress=on_progress,
                    method=method,
                    spill_dir=work_dir,
                    memory_bytes=spill_bytes(spill_mb),
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
    retry_seconds: RetrySeconds = 60.0,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    dask_scheduler: DaskScheduler = None,
    work_dir: WorkDir = None,
    spill_mb: SpillMb = None,
    report_count: Annotated[
        bool,
        typer.Option("--report-count/--no-report-count", help="Tell the brand the match count."),
    ] = True,
    protocol: Annotated[
        PsiMethod,
        typer.Option(
            "--protocol",
            help="kkrt: OT-extension PSI (KKRT16), an order of magnitude faster;"
            " ecdh: blinding on Curve25519. Both tell you your matched rows, the brand your"
            " set size.",
        ),
    ] = PsiMethod.KKRT,
    as_json: JsonOut = False,
) -> None:
    """PSI match: learn which of FILE's rows are in the brand audience."""
    from cleanroom.client.sdk import write_match_output

    with errors():
        columns = parse_columns(id_columns)
        run, data, report = _partner_session(
            connection(server, token, tls_dir, retry_seconds),
            audience,
            file,
            columns,
            default_region,
            "match",
            workers,
            dask_scheduler,
            not as_json,
            report_count,
            protocol,
            work_dir,
            spill_mb,
        )
        outcome = run.session.outcome
        assert outcome is not None
        write_match_output(file, out_path, outcome.matched_on, columns)
    by_type = {str(c.id_type): n for c, n in zip(columns, outcome.matched_per_column, strict=True)}
    summary = {
        "session_id": run.session.session_id,
        "rows": data.row_count,
        "matched": outcome.matched_records,
        "matched_on": by_type,
        "brand_size": outcome.brand_points,
        "resumes": run.resumes,
        "restarts": run.restarts,
        "protocol": protocol.value,
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
    retry_seconds: RetrySeconds = 60.0,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    dask_scheduler: DaskScheduler = None,
    work_dir: WorkDir = None,
    spill_mb: SpillMb = None,
    as_json: JsonOut = False,
) -> None:
    """PSI cardinality: both sides learn only how many of FILE's records match."""
    with errors():
        run, data, report = _partner_session(
            connection(server, token, tls_dir, retry_seconds),
            audience,
            file,
            parse_columns(id_columns),
            default_region,
            "cardinality",
            workers,
            dask_scheduler,
            not as_json,
            work_dir=work_dir,
            spill_mb=spill_mb,
        )
    assert run.result is not None
    summary = {
        "session_id": run.session.session_id,
        "intersection": run.result.intersection,
        "records": data.record_count(),
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
    dask_scheduler: DaskScheduler = None,
    work_dir: WorkDir = None,
    spill_mb: SpillMb = None,
    default_region: Region = None,
    tls_dir: TlsDir = None,
    retry_seconds: RetrySeconds = 60.0,
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

        with (
            crypto_pool(dask_scheduler, workers, tls_dir) as pool,
            progress_bars(not as_json) as progress,
        ):
            phase = progress.add_task("reading the exposure log", total=None)
            prepared = prepare_attribution(
                request, pool.executor, spill_dir=work_dir, memory_bytes=spill_bytes(spill_mb)
            )
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
                run_attribution(
                    connection(server, token, tls_dir, retry_seconds), prepared, on_progress
                )
            )
    if as_json:
        print_json({"report_id": report_id})
    else:
        out.print(f"report [bold]{report_id}[/]")


@partner_app.command("lookalike")
def partner_lookalike(
    server: Server,
    token: Token,
    audience: Annotated[str, typer.Option("--audience", help="The brand's seed audience.")],
    users: Annotated[Path, typer.Option("--users", help="Users CSV/Parquet: ids per user.")],
    id_columns: IdColumns,
    features: Annotated[
        Path, typer.Option("--features", help="Features CSV/Parquet, one row per user.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the package.")],
    user_column: Annotated[str, typer.Option("--user-column")] = "user_id",
    feature_columns: Annotated[
        str,
        typer.Option(
            "--feature-columns",
            help="Columns to use, e.g. age,spend,device:cat (default: all, numeric).",
        ),
    ] = "",
    mode: Annotated[
        str, typer.Option("--mode", help="hidden-seed (default) or matched.")
    ] = "hidden-seed",
    tiers: Annotated[str, typer.Option("--tiers", help="Nested tiers, percent.")] = "1,2,5,10",
    holdout: Annotated[float, typer.Option("--holdout", help="Share held out.")] = 0.2,
    l2: Annotated[float, typer.Option("--l2", help="L2 penalty (1/C).")] = 1.0,
    bins: Annotated[int, typer.Option("--bins", help="Quantile bins per numeric (0: none).")] = 0,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Label-DP epsilon (0: none unless required).")
    ] = 0.0,
    match_first: Annotated[
        bool,
        typer.Option(
            "--match-first/--no-match-first",
            help="matched: find the matches by OT-extension PSI first, exchange only theirs.",
        ),
    ] = True,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    dask_scheduler: DaskScheduler = None,
    work_dir: WorkDir = None,
    spill_mb: SpillMb = None,
    default_region: Region = None,
    tls_dir: TlsDir = None,
    retry_seconds: RetrySeconds = 60.0,
    as_json: JsonOut = False,
) -> None:
    """Expand the brand's seed audience into tiers of this partner's users."""
    from cleanroom.client.lookalike import (
        LookalikeProgress,
        LookalikeRequest,
        parse_tiers,
        prepare_lookalike,
        run_lookalike,
        shared_id_columns,
    )
    from cleanroom.federated.lookalike.messages import LookalikeMode
    from cleanroom.proto.errors import InvalidInput

    with errors():
        try:
            chosen = LookalikeMode(mode)
        except ValueError:
            raise InvalidInput(f"--mode is hidden-seed or matched, not {mode!r}") from None
        request = LookalikeRequest(
            audience=audience,
            users=users,
            features=features,
            id_columns=parse_columns(id_columns),
            options=normalize_options(default_region),
            out_dir=out_dir,
            user_column=user_column,
            feature_columns=feature_columns,
            mode=chosen,
            tiers=parse_tiers(tiers),
            holdout=holdout,
            l2=l2,
            bins=bins,
            epsilon=epsilon,
            match_first=match_first,
        )
        conn = connection(server, token, tls_dir, retry_seconds)
        request = shared_id_columns(conn, request)
        with (
            crypto_pool(dask_scheduler, workers, tls_dir) as pool,
            progress_bars(not as_json) as progress,
        ):
            reading = progress.add_task("reading users and features", total=None)
            prepared = prepare_lookalike(
                request,
                pool.executor,
                on_rows=lambda n: progress.advance(reading, n),
                spill_dir=work_dir,
                memory_bytes=spill_bytes(spill_mb),
            )
            progress.update(reading, visible=False)
            phase = progress.add_task("waiting for the brand node", total=None)
            sent = progress.add_task("rows blinded and sent", total=None, visible=False)
            lists = progress.add_task("brand lists re-blinded", total=None, visible=False)
            labels = progress.add_task("encrypted labels received", total=None, visible=False)

            def on_progress(p: LookalikeProgress) -> None:
                progress.update(phase, description=p.phase)
                for task, done, total in (
                    (sent, p.points_sent, p.points_total),
                    (lists, p.brand_received, p.brand_total),
                    (labels, p.labels_received, p.labels_total),
                ):
                    if total:
                        progress.update(task, completed=done, total=total, visible=True)

            manifest = asyncio.run(run_lookalike(conn, prepared, on_progress))
    if as_json:
        print_json(manifest)
        return
    out.print(f"package [bold]{manifest['package_id']}[/] ({manifest['mode']})")
    metrics = manifest.get("metrics") or {}
    if metrics.get("auc") is not None:
        out.print(f"holdout AUC {metrics['auc']:.3f}")
    for tier in manifest.get("tiers", []):
        key = f"{tier['percent']:g}"
        lift = (metrics.get("lift_at") or {}).get(key)
        shown = f", lift {lift:.2f}x" if lift is not None else ""
        out.print(f"top {key}%: {tier['size']} users{shown} -> {tier['path']}")


@partner_app.command("score")
def partner_score(
    server: Server,
    token: Token,
    model: Annotated[str, typer.Option("--model", help="The brand's registered model.")],
    features: Annotated[
        Path, typer.Option("--features", help="Features CSV/Parquet, one row per user.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the tiers.")],
    user_column: Annotated[str, typer.Option("--user-column")] = "user_id",
    tiers: Annotated[str, typer.Option("--tiers", help="Nested tiers, percent.")] = "1,2,5,10",
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    dask_scheduler: DaskScheduler = None,
    tls_dir: TlsDir = None,
    retry_seconds: RetrySeconds = 60.0,
    as_json: JsonOut = False,
) -> None:
    """Rank this partner's users by a brand model under encryption, into nested tiers."""
    from cleanroom.client.lookalike import parse_tiers
    from cleanroom.client.scoring import ScoreRequest, prepare_score, run_score
    from cleanroom.federated.lookalike.scoring import ScoreProgress

    with errors():
        request = ScoreRequest(
            model=model,
            features=features,
            out_dir=out_dir,
            user_column=user_column,
            tiers=parse_tiers(tiers),
        )
        with (
            crypto_pool(dask_scheduler, workers, tls_dir) as pool,
            progress_bars(not as_json) as progress,
        ):
            prepared = prepare_score(request, pool.executor)
            phase = progress.add_task("waiting for the brand node", total=None)
            sent = progress.add_task("encrypted scores sent", total=None, visible=False)

            def on_progress(p: ScoreProgress) -> None:
                progress.update(phase, description=p.phase)
                if p.ciphertexts_total:
                    progress.update(
                        sent, completed=p.ciphertexts_sent, total=p.ciphertexts_total, visible=True
                    )

            manifest = asyncio.run(
                run_score(connection(server, token, tls_dir, retry_seconds), prepared, on_progress)
            )
    if as_json:
        print_json(manifest)
        return
    out.print(f"package [bold]{manifest['package_id']}[/] (he-score, model {model})")
    for tier in manifest.get("tiers", []):
        out.print(f"top {tier['percent']:g}%: {tier['size']} users -> {tier['path']}")
