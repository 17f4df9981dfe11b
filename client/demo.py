"""``cleanroom demo``: the whole matching path on one machine, for real.

Synthetic data, a brand node on free local ports (gRPC and HTTP, in-process
on its own thread and event loop, with its own worker processes), a tenant,
an upload, a PSI match and a PSI cardinality run, then a summary checked
against a plaintext join of the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reference import plaintext_match
from cleanroom.audiences.synth import synthesize
from cleanroom.client.attribution import (
    AttributionRequest,
    prepare_attribution,
    run_attribution,
    upload_conversions,
)
from cleanroom.client.sdk import (
    Connection,
    load_partner_set,
    run_psi,
    upload_audience,
    write_match_output,
)
from cleanroom.client.tables import report_blocks
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.matching.messages import Protocol
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Policy, Role, SqlStore


def run_demo(
    *,
    rows: int = 5_000,
    keep: Path | None = None,
    console: Console | None = None,
    serve: bool = False,
) -> dict[str, int]:
    console = console or Console()
    work = keep or Path(tempfile.mkdtemp(prefix="cleanroom-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _demo(work, rows, console, kept=keep is not None, serve=serve)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _attribution_step(
    node: BrandNodeThread, tokens: dict[Role, str], work: Path, console: Console
) -> tuple[str, str]:
    """Closed-loop attribution on synthetic conversions and exposures."""
    synth = synthesize_attribution(
        work / "attribution",
        customers=1500,
        conversions=2500,
        partner_users=2500,
        exposure_rows=8000,
        campaigns=3,
        seed=7,
        days=21,
    )
    admin = Connection(node.target, tokens[Role.ADMIN])
    brand_ids = parse_id_columns("email,phone")
    options = NormalizeOptions(default_region="US")
    uploaded = asyncio.run(
        upload_conversions(
            admin,
            name="sales",
            path=synth.conversions_path,
            id_columns=brand_ids,
            options=options,
            customer_column="customer_id",
            time_column="ts",
            value_column="value",
        )
    )
    console.print(
        f"6. brand uploaded {uploaded['events']} conversions of {uploaded['customers']} customers;"
        " the partner runs private attribution against its exposure log"
    )
    request = AttributionRequest(
        conversions="sales",
        exposures=synth.exposures_path,
        id_columns=parse_id_columns("email,phone,maid"),
        options=options,
        spend=synth.spend_path,
    )
    report_id = asyncio.run(
        run_attribution(Connection(node.target, tokens[Role.PARTNER]), prepare_attribution(request))
    )
    store = SqlStore(node.settings.resolved_database_url())
    try:
        tenant = store.find_tenant("acme-brand")
        assert tenant is not None
        record = store.get_report(tenant.tenant_id, report_id)
    finally:
        store.close()
    assert record is not None and node.ports is not None
    console.print(report_blocks(record.report))
    dashboard = (
        f"http://127.0.0.1:{node.ports.http}/dashboard/reports/{report_id}"
        f"#token={tokens[Role.ANALYST]}"
    )
    return report_id, dashboard


def _demo(
    work: Path, rows: int, console: Console, *, kept: bool, serve: bool = False
) -> dict[str, int]:
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
            f"2. brand node up: gRPC {node.target},"
            f" REST http://127.0.0.1:{node.ports.http}/v1 (OpenAPI at /openapi.json)"
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
            "4. both results equal a plaintext join of the same files"
            f" ({expected_count} matching rows)"
        )
        where = (
            str(out_csv) if kept else f"{out_csv.name} (deleted; rerun with --keep DIR to keep it)"
        )
        console.print(f"5. partner output with matched/matched_on columns: {where}")
        report_id, dashboard = _attribution_step(node, tokens, work, console)
        if serve:
            console.print(f"dashboard: {dashboard}")
            console.print("serving until Ctrl-C ...")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()

    console.print(f"7. attribution report {report_id}; dashboard (while serving): {dashboard}")
    if not serve:
        console.print("   rerun with `cleanroom demo --serve` to keep the node up and open it")
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    return {
        "rows": pset.row_count,
        "matched": outcome.matched_records,
        "intersection": overlap.result.intersection,
    }
