"""The demo and its synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cleanroom.client.cli.common import (
    errors,
    out,
)


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(synth)


PROFILE_HELP = (
    "us: emails, E.164 phones, ad ids; cn: a Chinese CDP's MD5/MD5_SHA256 mobiles, IMEIs,"
    " OAIDs, unionids against plaintext ids"
)


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
    profile: Annotated[str, typer.Option("--profile", help=PROFILE_HELP)] = "us",
) -> None:
    """Write realistic synthetic brand and partner files with messy identifiers."""
    from cleanroom.audiences.synth import synthesize
    from cleanroom.audiences.synth_cn import BRAND_ID_COLUMNS, PARTNER_ID_COLUMNS, synthesize_cn

    with errors():
        if not 0.0 <= overlap <= 1.0:
            raise ValueError("--overlap is a fraction between 0 and 1")
        if profile == "cn":
            cn = synthesize_cn(
                out_dir,
                brand_rows=brand_rows,
                partner_rows=partner_rows,
                overlap=overlap,
                seed=seed,
            )
            out.print(f"wrote {cn.brand_path} and {cn.partner_path}")
            out.print(f"  brand:   --id-columns {BRAND_ID_COLUMNS}")
            out.print(f"  partner: --id-columns {PARTNER_ID_COLUMNS}")
            out.print(f"  {cn.matchable_rows} partner rows can match")
            return
        if profile != "us":
            raise ValueError(f"--profile is us or cn, not {profile!r}")
        result = synthesize(
            out_dir,
            brand_rows=brand_rows,
            partner_rows=partner_rows,
            overlap=overlap,
            seed=seed,
            default_region=region,
        )
    out.print(f"wrote {result.brand_path} and {result.partner_path}")


def demo(
    rows: Annotated[int, typer.Option("--rows", help="Rows on each side.")] = 5_000,
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep the data in this directory.")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the node up afterwards for the dashboard.")
    ] = False,
    profile: Annotated[str, typer.Option("--profile", help=PROFILE_HELP)] = "us",
) -> None:
    """Synthesize data, start a brand node in-process: match, overlap, attribution."""
    from cleanroom.client.demo import run_demo

    with errors():
        run_demo(rows=rows, keep=keep, console=out, serve=serve, profile=profile)
