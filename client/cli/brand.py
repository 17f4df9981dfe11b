"""Brand commands: audiences, conversions and the privacy policy (hashed here, uploaded)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from cleanroom.client.cli.common import (
    IdColumns,
    JsonOut,
    Region,
    Server,
    TlsDir,
    Token,
    connection,
    err,
    errors,
    normalize_options,
    out,
    parse_columns,
    print_json,
    progress_bars,
)

audience_app = typer.Typer(
    help="Brand audiences: hashed on this machine, uploaded to the brand node."
)
conversions_app = typer.Typer(help="Brand conversions for attribution: hashed here, uploaded.")
policy_app = typer.Typer(help="The tenant's privacy policy (admin token).")
model_app = typer.Typer(
    help="Brand models for HE scoring: partners rank their users without seeing the weights."
)


def register(app: typer.Typer) -> None:
    app.add_typer(audience_app, name="audience")
    app.add_typer(conversions_app, name="conversions")
    app.add_typer(policy_app, name="policy")
    app.add_typer(model_app, name="model")


@model_app.command("upload")
def model_upload(
    server: Server,
    token: Token,
    name: Annotated[str, typer.Option("--name", help="Model name partners score by.")],
    file: Annotated[
        Path,
        typer.Option("--file", help="model.json: features (name, min, max, levels), weights."),
    ],
    replace: Annotated[bool, typer.Option("--replace")] = False,
    tls_dir: TlsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Register a logistic model (admin token); its weights never leave the node."""
    from cleanroom.client.scoring import upload_model

    with errors():
        info = upload_model(connection(server, token, tls_dir), name, file, replace=replace)
    if as_json:
        print_json(info)
        return
    verb = "replaced" if info["replaced"] else "registered"
    names = ", ".join(f["name"] for f in info["features"])
    out.print(f"model [bold]{info['name']}[/] {verb}: {len(info['features'])} features ({names})")


@model_app.command("list")
def model_list(
    server: Server, token: Token, tls_dir: TlsDir = None, as_json: JsonOut = False
) -> None:
    """The brand's registered models: names, features and quantization (no weights)."""
    from cleanroom.client.scoring import list_models

    with errors():
        models = list_models(connection(server, token, tls_dir))
    if as_json:
        print_json(models)
        return
    for m in models:
        out.print(f"{m['name']}  {len(m['features'])} features  {m['created_at']}")


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
    label_column: Annotated[
        str | None,
        typer.Option(
            "--label-column", help="Seed label column for lookalikes (default: all are seeds)."
        ),
    ] = None,
    positive: Annotated[
        str | None,
        typer.Option("--positive", help="Values of --label-column that mark a seed, e.g. gold."),
    ] = None,
    tls_dir: TlsDir = None,
    as_json: JsonOut = False,
) -> None:
    """Normalize and hash FILE here, upload the digests, print the upload report."""
    from cleanroom.client.sdk import SeedLabels, upload_audience

    with errors():
        columns = parse_columns(id_columns)
        if (label_column is None) != (positive is None):
            raise ValueError("--label-column and --positive go together")
        labels = (
            None
            if label_column is None or positive is None
            else SeedLabels(label_column, tuple(positive.split(",")))
        )
        with progress_bars(not as_json) as progress:
            task = progress.add_task("hashing and uploading rows", total=None)
            result = asyncio.run(
                upload_audience(
                    connection(server, token, tls_dir),
                    name=name,
                    path=file,
                    id_columns=columns,
                    options=normalize_options(default_region),
                    replace=replace,
                    on_rows=lambda n: progress.advance(task, n),
                    labels=labels,
                )
            )
    report = result.to_dict()
    if as_json:
        print_json(report)
        return
    out.print(f"audience [bold]{name}[/] uploaded")
    out.print(f"  rows read      {report['rows_read']}")
    out.print(f"  rows accepted  {report['rows_accepted']}")
    for reason, n in sorted(report["rows_rejected"].items()):
        out.print(f"  rejected: {reason}  {n}")
    for reason, n in sorted(report["invalid_identifiers"].items()):
        out.print(f"  invalid identifiers: {reason}  {n}")
    for id_type, n in sorted(report["identifiers"].items()):
        given = ", ".join(f"{form} {k}" for form, k in report["forms"].get(id_type, {}).items())
        out.print(f"  {id_type} identifiers  {n}" + (f"  ({given})" if given else ""))
    out.print(f"  seeds          {report['seeds']}  (non-seeds {report['non_seeds']})")
    out.print(f"  duplicates     {report['duplicates']}")
    out.print(f"  distinct identifiers stored  {report['audience']['elements']}")
    for warning in report["warnings"]:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


def _delete(kind: str, server: str, token: str, name: str, tls_dir: Path | None) -> None:
    from cleanroom.client.sdk import delete_dataset

    with errors():
        done = delete_dataset(connection(server, token, tls_dir), kind, name)
    out.print(f"deleted {kind} [bold]{done['name']}[/] ({done['id']}) and its files")


@audience_app.command("delete")
def audience_delete(
    server: Server,
    token: Token,
    name: Annotated[str, typer.Option("--name", help="Audience name.")],
    tls_dir: TlsDir = None,
) -> None:
    """Delete an audience (admin token): its record and every file on the node; audited."""
    _delete("audience", server, token, name, tls_dir)


@conversions_app.command("delete")
def conversions_delete(
    server: Server,
    token: Token,
    name: Annotated[str, typer.Option("--name", help="Conversion set name.")],
    tls_dir: TlsDir = None,
) -> None:
    """Delete a conversion set (admin token): its record and every file; audited."""
    _delete("conversions", server, token, name, tls_dir)


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

    with errors():
        result = asyncio.run(
            upload_conversions(
                connection(server, token, tls_dir),
                name=name,
                path=file,
                id_columns=parse_columns(id_columns),
                options=normalize_options(default_region),
                customer_column=customer_column,
                time_column=time_column,
                value_column=value_column,
                replace=replace,
            )
        )
    if as_json:
        print_json(result)
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
    delta: Annotated[float | None, typer.Option("--delta", help="Gaussian mechanism.")] = None,
    min_partner_records: Annotated[int | None, typer.Option("--min-partner-records")] = None,
    sessions_per_day: Annotated[int | None, typer.Option("--sessions-per-day")] = None,
    lookalike_modes: Annotated[
        str | None,
        typer.Option(
            "--lookalike-modes",
            help="Lookalike modes partners may run: hidden-seed,matched (empty: none).",
        ),
    ] = None,
    min_lookalike_seed: Annotated[
        int | None,
        typer.Option("--min-lookalike-seed", help="Fewest matched seeds a lookalike trains on."),
    ] = None,
    lookalike_dp: Annotated[
        str | None,
        typer.Option("--lookalike-dp", help="off, or gaussian: label-DP on every lookalike."),
    ] = None,
    lookalike_epsilon: Annotated[
        float | None,
        typer.Option("--lookalike-epsilon", help="Largest label-DP epsilon per lookalike job."),
    ] = None,
    lookalike_epsilon_budget: Annotated[
        float | None, typer.Option("--lookalike-epsilon-budget")
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option(
            "--retention-days",
            help="Purge audiences, conversion sets, reports and session records older than"
            " this many days (at start-up and daily; 0: keep).",
        ),
    ] = None,
    match_methods: Annotated[
        str | None,
        typer.Option(
            "--match-methods",
            help="How partners may compute a match: ecdh,kkrt (at least one).",
        ),
    ] = None,
    partner: Annotated[
        str | None,
        typer.Option(
            "--partner",
            help="Change this partner's overrides (--sessions-per-day, --min-partner-records).",
        ),
    ] = None,
    tls_dir: TlsDir = None,
) -> None:
    """Change the tenant's policy, or a partner's overrides; prints the policy in force."""
    from cleanroom.client.sdk import set_policy

    given = {
        "aggregation_threshold": aggregation_threshold,
        "dp": dp,
        "epsilon_budget": epsilon_budget,
        "delta": delta,
        "min_partner_records": min_partner_records,
        "sessions_per_day": sessions_per_day,
        "lookalike_modes": lookalike_modes,
        "min_lookalike_seed": min_lookalike_seed,
        "lookalike_dp": lookalike_dp,
        "lookalike_epsilon": lookalike_epsilon,
        "lookalike_epsilon_budget": lookalike_epsilon_budget,
        "retention_days": retention_days,
        "match_methods": match_methods,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    with errors():
        print_json(set_policy(connection(server, token, tls_dir), changes, partner))
