"""``cleanroom demo``: the whole matching path on one machine, for real.

Synthetic data, a brand node on free local ports (gRPC and HTTP, in-process
on its own thread and event loop, with its own worker processes), a tenant,
an upload, a PSI match and a PSI cardinality run, then a summary checked
against a plaintext join of the same files.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reference import plaintext_match
from cleanroom.audiences.synth import synthesize
from cleanroom.client.sdk import (
    Connection,
    load_partner_set,
    run_psi,
    upload_audience,
    write_match_output,
)
from cleanroom.matching.messages import Protocol
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Policy, Role, SqlStore
from rich.console import Console
from rich.table import Table


def run_demo(
    *, rows: int = 5_000, keep: Path | None = None, console: Console | None = None
) -> dict[str, int]:
    console = console or Console()
    work = keep or Path(tempfile.mkdtemp(prefix="cleanroom-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _demo(work, rows, console, kept=keep is not None)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _demo(work: Path, rows: int, console: Console, *, kept: bool) -> dict[str, int]:
    started = time.perf_counter()
    console.rule("[bold]cleanroom demo")
    data = synthesize(work / "data", brand_rows=rows, partner_rows=rows, overlap=0.3, seed=7)
    console.print(f"1. synthesized {rows} brand and {rows} partner rows with messy identifiers")

    settings = ServerSettings(data_dir=work / "node", grpc_port=0, http_port=0)
    settings.data_dir.mkdir(parents=True)
    store = SqlStore(settings.resolved_database_url())
    _, tokens = store.provision_tenant("acme-brand", Policy(min_partner_records=100))
    store.close()

    columns = parse_id_columns("email,phone,maid")
    options = NormalizeOptions(default_region="US")
    with BrandNodeThread(settings) as node:
        assert node.ports is not None
        console.print(
            f"2. brand node up: gRPC {node.target}, REST http://127.0.0.1:{node.ports.http}/docs"
        )
        admin = Connection(node.target, tokens[Role.ADMIN])
        partner = Connection(node.target, tokens[Role.PARTNER])
        upload = asyncio.run(
            upload_audience(
                admin, name="crm", path=data.brand_path, id_columns=columns, options=options
            )
        )
        rep = upload.to_dict()
        console.print(
            f"3. brand uploaded audience 'crm': {rep['rows_accepted']} of {rep['rows_read']} rows,"
            f" {rep['audience']['elements']} distinct hashed identifiers,"
            f" {rep['duplicates']} duplicates,"
            f" rejected {sum(rep['rows_rejected'].values())}"
        )
        pset, _ = load_partner_set(data.partner_path, columns, options)
        with CryptoPool.processes() as pool:
            match = asyncio.run(run_psi(partner, "crm", Protocol.MATCH, pset, pool=pool))
            overlap = asyncio.run(run_psi(partner, "crm", Protocol.CARDINALITY, pset, pool=pool))
        outcome = match.session.outcome
        assert outcome is not None and overlap.result is not None
        out_csv = work / "matched.csv"
        write_match_output(data.partner_path, out_csv, outcome.matched_on, columns)

    # Check the private results against the plaintext join of the same files.
    expected = plaintext_match(
        pd.read_csv(data.brand_path, dtype=str, keep_default_na=False),
        pd.read_csv(data.partner_path, dtype=str, keep_default_na=False),
        columns,
        options,
    )
    labels = ["", *(str(c.id_type) for c in columns)]
    got = [labels[i + 1] for i in outcome.matched_on.tolist()]
    expected_count = sum(1 for e in expected if e)
    if got != expected or overlap.result.intersection != expected_count:
        raise RuntimeError("the private results differ from the plaintext join")

    table = Table(title="match summary (partner side)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("partner rows", str(pset.row_count))
    table.add_row("brand identifiers (|S|)", str(outcome.brand_points))
    table.add_row("matched rows (PSI match)", str(outcome.matched_records))
    for i, c in enumerate(columns):
        table.add_row(f"  matched on {c.id_type}", str(int((outcome.matched_on == i).sum())))
    table.add_row("overlap (PSI cardinality)", str(overlap.result.intersection))
    table.add_row("match rate", f"{outcome.matched_records / max(1, pset.row_count):.1%}")
    console.print(table)
    console.print(
        f"4. both results equal a plaintext join of the same files ({expected_count} matching rows)"
    )
    where = str(out_csv) if kept else f"{out_csv.name} (deleted; rerun with --keep DIR to keep it)"
    console.print(f"5. partner output with matched/matched_on columns: {where}")
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    return {
        "rows": pset.row_count,
        "matched": outcome.matched_records,
        "intersection": overlap.result.intersection,
    }
