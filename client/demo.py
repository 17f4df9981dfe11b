"""``cleanroom demo``: the whole product on one machine, for real.

Synthetic data, a brand node on free local ports (gRPC and HTTP, with its own
worker processes), a tenant, an upload, a PSI match and a PSI cardinality
run, an attribution report and a hidden-seed lookalike package, each checked
against a plaintext join of the same files.

The node and the partner share one event loop: grpc.aio binds its completion
queue to the loop that first used it and forwards other loops' events there,
so a partner on short-lived loops of its own would leave late events for a
closed loop (the "Event loop is closed" errors of grpc/grpc#25364). In
production the two parties are separate processes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions, parse_id_columns
from cleanroom.audiences.reference import plaintext_match
from cleanroom.audiences.synth import synthesize
from cleanroom.audiences.synth_cn import BRAND_ID_COLUMNS as CN_BRAND_COLUMNS
from cleanroom.audiences.synth_cn import PARTNER_ID_COLUMNS as CN_PARTNER_COLUMNS
from cleanroom.audiences.synth_cn import synthesize_cn
from cleanroom.client.attribution import (
    AttributionRequest,
    prepare_attribution,
    run_attribution,
    upload_conversions,
)
from cleanroom.client.lookalike import LookalikeRequest, prepare_lookalike, run_lookalike
from cleanroom.client.sdk import (
    Connection,
    SeedLabels,
    load_partner_set,
    run_psi,
    upload_audience,
    write_match_output,
)
from cleanroom.client.tables import lookalike_table, report_blocks
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.federated.lookalike.reference import brand_labels, pooled_labels, pooled_sums
from cleanroom.federated.lookalike.synth import synthesize_lookalike
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.messages import Protocol, PsiMethod
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.node import BrandNode
from cleanroom.server.policy import PolicyChanges
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Role, SqlStore
from cleanroom.server.tenants import provision_tenant

TENANT = "acme-brand"
PROFILES = ("us", "cn")


@dataclass(frozen=True)
class _MatchData:
    brand_path: Path
    partner_path: Path
    brand_columns: list[IdColumn]
    partner_columns: list[IdColumn]
    options: NormalizeOptions
    what: str
    reference = "a plaintext join of the same files"

    def expected(self) -> list[str]:
        """Per partner row, the type it should match on ("" for none)."""
        return plaintext_match(
            pd.read_csv(self.brand_path, dtype=str, keep_default_na=False),
            pd.read_csv(self.partner_path, dtype=str, keep_default_na=False),
            self.partner_columns,
            self.options,
        )


@dataclass(frozen=True)
class _CnMatchData(_MatchData):
    truth: tuple[str, ...] = ()
    reference = "the match the generator planned (its own bookkeeping)"

    def expected(self) -> list[str]:
        return list(self.truth)  # the two sides' columns differ: the generator knows


def _match_data(profile: str, root: Path, rows: int) -> _MatchData:
    if profile == "cn":
        cn = synthesize_cn(root, brand_rows=rows, partner_rows=rows, overlap=0.3, seed=7)
        return _CnMatchData(
            cn.brand_path,
            cn.partner_path,
            parse_id_columns(CN_BRAND_COLUMNS),
            parse_id_columns(CN_PARTNER_COLUMNS),
            NormalizeOptions(default_region="CN"),
            "MD5 / MD5_SHA256 mobiles, IMEIs, OAIDs and unionids against plaintext ids",
            cn.expected,
        )
    data = synthesize(root, brand_rows=rows, partner_rows=rows, overlap=0.3, seed=7)
    columns = parse_id_columns("email,phone,maid")
    options = NormalizeOptions(default_region="US")
    return _MatchData(
        data.brand_path, data.partner_path, columns, columns, options, "messy identifiers"
    )


def run_demo(
    *,
    rows: int = 5_000,
    keep: Path | None = None,
    console: Console | None = None,
    serve: bool = False,
    profile: str = "us",
) -> dict[str, int]:
    """The demo on ``profile`` data: "us" (emails, E.164 phones, ad ids) or "cn" (a
    Chinese CDP's MD5 / MD5_SHA256 mobiles, IMEIs, OAIDs and unionids against a partner's
    plaintext ids)."""
    if profile not in PROFILES:
        raise ValueError(f"--profile is one of {', '.join(PROFILES)}, not {profile!r}")
    console = console or Console()
    work = keep or Path(tempfile.mkdtemp(prefix="cleanroom-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(
            _demo(work, rows, console, kept=keep is not None, serve=serve, profile=profile)
        )
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


async def _attribution_step(
    node: BrandNode,
    target: str,
    tokens: dict[Role, str],
    work: Path,
    console: Console,
    pool: CryptoPool,
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
    admin = Connection(target, tokens[Role.ADMIN])
    options = NormalizeOptions(default_region="US")
    uploaded = await upload_conversions(
        admin,
        name="sales",
        path=synth.conversions_path,
        id_columns=parse_id_columns("email,phone"),
        options=options,
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
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
    prepared = prepare_attribution(request, pool.executor)
    report_id = await run_attribution(Connection(target, tokens[Role.PARTNER]), prepared)
    assert node.store is not None and node.ports is not None
    tenant = node.store.find_tenant(TENANT)
    assert tenant is not None
    record = node.store.get_report(tenant.tenant_id, report_id)
    assert record is not None
    console.print(report_blocks(record.report))
    dashboard = (
        f"http://127.0.0.1:{node.ports.http}/dashboard/reports/{report_id}"
        f"#token={tokens[Role.ANALYST]}"
    )
    return report_id, dashboard


async def _lookalike_step(
    node: BrandNode,
    target: str,
    tokens: dict[Role, str],
    work: Path,
    console: Console,
    pool: CryptoPool,
) -> tuple[str, str, int]:
    """A hidden-seed lookalike: the brand's gold customers expanded over the partner's base."""
    synth = synthesize_lookalike(
        work / "lookalike", partner_users=10_000, customers=4_000, matched=3_000, seed=7
    )
    options = NormalizeOptions(default_region="US")
    brand_ids = parse_id_columns("email,phone")
    upload = await upload_audience(
        Connection(target, tokens[Role.ADMIN]),
        name="vip",
        path=synth.crm_path,
        id_columns=brand_ids,
        options=options,
        labels=SeedLabels("tier", ("gold",)),
    )
    seeds = upload.audience["seeds"]
    console.print(
        f"8. brand uploaded audience 'vip' with {seeds} gold (seed) customers; the partner"
        " expands it over its 10,000 users (hidden-seed: it never learns who is a customer)"
    )
    request = LookalikeRequest(
        audience="vip",
        users=synth.users_path,
        features=synth.features_path,
        id_columns=parse_id_columns("email,phone,maid"),
        options=options,
        out_dir=work / "lookalike" / "package",
        feature_columns=synth.feature_spec,
    )
    prepared = prepare_lookalike(request, pool.executor)
    manifest = await run_lookalike(Connection(target, tokens[Role.PARTNER]), prepared)
    # The sums the partner trained on equal a plaintext join's Xᵀy: the model is exact.
    partner = prepared.partner
    y, _ = pooled_labels(
        prepared.users.data, brand_labels(synth.crm_path, brand_ids, options, "tier", ["gold"])
    )
    if partner.label_sums != pooled_sums(prepared.users.features, y, partner.train_users):
        raise RuntimeError("the lookalike's label sums differ from the plaintext join's")
    assert node.store is not None and node.ports is not None
    tenant = node.store.find_tenant(TENANT)
    assert tenant is not None
    record = node.store.get_lookalike(tenant.tenant_id, manifest["package_id"])
    assert record is not None
    console.print(lookalike_table(record.report))
    console.print(
        f"9. the {len(partner.label_sums)} label sums the partner trained on equal a plaintext"
        f" join's Xᵀy; tiers of its own user ids in {request.out_dir}"
    )
    dashboard = (
        f"http://127.0.0.1:{node.ports.http}/dashboard/lookalikes/{manifest['package_id']}"
        f"#token={tokens[Role.ANALYST]}"
    )
    return manifest["package_id"], dashboard, len(manifest["tiers"])


async def _until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM (``--serve``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _demo(
    work: Path,
    rows: int,
    console: Console,
    *,
    kept: bool,
    serve: bool = False,
    profile: str = "us",
) -> dict[str, int]:
    started = time.perf_counter()
    console.rule("[bold]cleanroom demo")
    data = _match_data(profile, work / "data", rows)
    console.print(f"1. synthesized {rows} brand and {rows} partner rows: {data.what}")

    settings = ServerSettings(data_dir=work / "node", grpc_port=0, http_port=0)
    settings.data_dir.mkdir(parents=True)
    store = SqlStore(settings.resolved_database_url())
    _, tokens = provision_tenant(store, TENANT, PolicyChanges(min_partner_records=100))
    store.close()

    columns, options = data.partner_columns, data.options
    node = BrandNode(settings)
    ports = await node.start()
    target = f"{settings.host}:{ports.grpc}"
    try:
        console.print(
            f"2. brand node up: gRPC {target},"
            f" REST http://127.0.0.1:{ports.http}/v1 (OpenAPI at /docs)"
        )
        admin = Connection(target, tokens[Role.ADMIN])
        partner = Connection(target, tokens[Role.PARTNER])
        upload = await upload_audience(
            admin, name="crm", path=data.brand_path, id_columns=data.brand_columns, options=options
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
            # The match by OT extension (the CLI's default), the overlap by ECDH.
            match = await run_psi(
                partner, "crm", Protocol.MATCH, pset, pool=pool, method=PsiMethod.KKRT
            )
            overlap = await run_psi(partner, "crm", Protocol.CARDINALITY, pset, pool=pool)
            outcome = match.outcome
            assert overlap.result is not None
            out_csv = work / "matched.csv"
            write_match_output(data.partner_path, out_csv, outcome.matched_on, columns)
            # Check the private results against the plaintext join of the same files.
            expected = data.expected()
            labels = ["", *(str(c.id_type) for c in columns)]
            got = [labels[i + 1] for i in whole_array(outcome.matched_on).tolist()]
            expected_count = sum(1 for e in expected if e)
            if got != expected or overlap.result.intersection != expected_count:
                raise RuntimeError("the private results differ from the plaintext join")

            table = Table(title="match summary (partner side)")
            table.add_column("metric")
            table.add_column("value", justify="right")
            table.add_row("partner rows", str(pset.row_count))
            table.add_row("brand identifiers (|S|)", str(outcome.brand_points))
            table.add_row("matched rows (PSI match, KKRT16)", str(outcome.matched_records))
            for i, c in enumerate(columns):
                table.add_row(f"  matched on {c.id_type}", str(outcome.matched_per_column[i]))
            table.add_row("overlap (PSI cardinality, ECDH)", str(overlap.result.intersection))
            table.add_row("match rate", f"{outcome.matched_records / max(1, pset.row_count):.1%}")
            console.print(table)
            console.print(
                f"4. both results equal {data.reference} ({expected_count} matching rows)"
            )
            where = (
                str(out_csv)
                if kept
                else f"{out_csv.name} (deleted; rerun with --keep DIR to keep it)"
            )
            console.print(f"5. partner output with matched/matched_on columns: {where}")
            report_id, dashboard = await _attribution_step(
                node, target, tokens, work, console, pool
            )
            package_id, lookalike_dashboard, lookalike_tiers = await _lookalike_step(
                node, target, tokens, work, console, pool
            )
        if serve:
            console.print(f"dashboard: {dashboard}")
            console.print(f"lookalike dashboard: {lookalike_dashboard}")
            console.print("serving until Ctrl-C ...")
            with contextlib.suppress(KeyboardInterrupt):
                await _until_stopped()
    finally:
        await node.stop()

    console.print(f"attribution report {report_id}; dashboard (while serving): {dashboard}")
    console.print(f"lookalike package {package_id}; dashboard: {lookalike_dashboard}")
    if not serve:
        console.print("   rerun with `cleanroom demo --serve` to keep the node up and open it")
    console.print(f"done in {time.perf_counter() - started:.1f} s")
    return {
        "rows": pset.row_count,
        "matched": outcome.matched_records,
        "intersection": overlap.result.intersection,
        "lookalike_tiers": lookalike_tiers,
    }
