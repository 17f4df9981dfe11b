"""Several media partners of one brand: each its own token, quota, minimum set size,
epsilon ledger, sessions, reports and audit trail; none sees another's.

A real brand node on loopback; partners added over REST and with the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.attribution import (
    AttributionRequest,
    prepare_attribution,
    run_attribution,
    upload_conversions,
)
from cleanroom.client.sdk import ClientError, Connection, run_psi, upload_audience
from cleanroom.federated.attribution.messages import Windows
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.matching.messages import Protocol
from cleanroom.matching.partner import PartnerColumn, PartnerSession, PartnerSet
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.policy import PolicyChanges
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Principal, Role, SqlStore
from cleanroom.server.tenants import change_policy, provision_tenant
from tests.helpers import eventually, sha

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cleanroom.client.cli"]
OPTIONS = NormalizeOptions(default_region="US")


def emails(rows: int) -> PartnerSet:
    digests = b"".join(sha(f"user{i}@example.com") for i in range(rows))
    return PartnerSet(rows, [PartnerColumn("email", np.arange(rows, dtype=np.int64), digests)])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("partners")
    settings = ServerSettings(
        data_dir=root / "node", grpc_port=0, http_port=0, workers=1, chunk_size=512
    )
    settings.data_dir.mkdir()
    store = SqlStore(settings.resolved_database_url())
    tenant, tokens = provision_tenant(store, "brand", PolicyChanges(min_partner_records=10))
    admin = Principal(tenant.tenant_id, Role.ADMIN)
    change_policy(
        store,
        admin,
        PolicyChanges(aggregation_threshold=0, dp="laplace", epsilon_budget=1.0),
    )
    store.close()
    synth = synthesize_attribution(
        root / "synth",
        customers=200,
        conversions=300,
        partner_users=250,
        exposure_rows=900,
        campaigns=2,
        seed=11,
        days=15,
    )
    with BrandNodeThread(settings) as node:
        assert node.ports is not None
        http = f"http://127.0.0.1:{node.ports.http}"
        # streamco over REST, with its own quota; newsly with the CLI, with its own minimum.
        added = httpx.post(
            f"{http}/v1/partners",
            json={"name": "streamco", "sessions_per_day": 2},
            headers={"authorization": f"Bearer {tokens[Role.ADMIN]}"},
        )
        assert added.status_code == 201, added.text
        cli = subprocess.run(
            [
                *CLI,
                "partner-account",
                "create",
                "newsly",
                "--data-dir",
                str(settings.data_dir),
                "--min-partner-records",
                "20",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        created = json.loads(cli.stdout)
        brand_file = root / "brand.csv"
        brand_file.write_text(
            "email\n" + "\n".join(f"user{i}@example.com" for i in range(0, 400, 2)) + "\n"
        )
        admin_conn = Connection(node.target, tokens[Role.ADMIN])
        asyncio.run(
            upload_audience(
                admin_conn,
                name="crm",
                path=brand_file,
                id_columns=parse_id_columns("email"),
                options=OPTIONS,
            )
        )
        asyncio.run(
            upload_conversions(
                admin_conn,
                name="sales",
                path=synth.conversions_path,
                id_columns=parse_id_columns("email,phone"),
                options=OPTIONS,
                customer_column="customer_id",
                time_column="ts",
                value_column="value",
            )
        )
        yield {
            "node": node,
            "http": http,
            "settings": settings,
            "tenant": tenant,
            "synth": synth,
            "tokens": {
                "admin": tokens[Role.ADMIN],
                "analyst": tokens[Role.ANALYST],
                "default": tokens[Role.PARTNER],
                "streamco": added.json()["token"],
                "newsly": created["token"],
            },
            "added": added.json(),
            "created": created,
        }


def get(world: dict[str, Any], path: str, who: str) -> httpx.Response:
    return httpx.get(
        world["http"] + path, headers={"authorization": f"Bearer {world['tokens'][who]}"}
    )


def psi(world: dict[str, Any], who: str, rows: int, pool: CryptoPool) -> Any:
    conn = Connection(world["node"].target, world["tokens"][who])
    return asyncio.run(run_psi(conn, "crm", Protocol.MATCH, emails(rows), pool=pool))


def test_partners_are_added_over_rest_and_the_cli_each_with_its_own_token(
    world: dict[str, Any],
) -> None:
    assert world["added"]["partner"]["name"] == "streamco"
    assert world["added"]["partner"]["sessions_per_day"] == 2
    assert world["created"]["partner"]["min_partner_records"] == 20
    listed = {p["name"]: p for p in get(world, "/v1/partners", "analyst").json()}
    assert list(listed) == ["default", "streamco", "newsly"]
    assert listed["streamco"]["overrides"] == {"sessions_per_day": 2, "min_partner_records": None}
    assert (listed["newsly"]["sessions_per_day"], listed["newsly"]["min_partner_records"]) == (
        100,
        20,
    )  # the tenant's quota, its own minimum
    tokens = {world["tokens"][n] for n in ("default", "streamco", "newsly")}
    assert len(tokens) == 3
    headers = {"authorization": f"Bearer {world['tokens']['admin']}"}
    again = httpx.post(f"{world['http']}/v1/partners", json={"name": "newsly"}, headers=headers)
    assert again.status_code == 409 and "newsly" in again.json()["detail"]
    bad = httpx.post(f"{world['http']}/v1/partners", json={"name": "no spaces"}, headers=headers)
    assert bad.status_code == 422 and "partner name" in bad.json()["detail"]
    analyst = {"authorization": f"Bearer {world['tokens']['analyst']}"}
    denied = httpx.post(f"{world['http']}/v1/partners", json={"name": "x"}, headers=analyst)
    assert denied.status_code == 403
    assert get(world, "/v1/partners/streamco", "admin").json()["name"] == "streamco"
    assert get(world, "/v1/partners/nobody", "admin").status_code == 404


def test_each_partner_has_its_own_quota_minimum_and_sessions(
    world: dict[str, Any], process_pool: CryptoPool
) -> None:
    for _ in range(2):
        assert psi(world, "streamco", 30, process_pool).outcome.matched_records == 15
    with pytest.raises(ClientError, match=r"RESOURCE_EXHAUSTED.*quota of 2 per day"):
        psi(world, "streamco", 30, process_pool)
    # newsly's own minimum set size (20, the tenant's is 10); streamco's quota is not its.
    with pytest.raises(ClientError, match=r"FAILED_PRECONDITION.*at least 20"):
        psi(world, "newsly", 15, process_pool)
    assert psi(world, "newsly", 30, process_pool).outcome.matched_records == 15
    assert psi(world, "default", 15, process_pool).outcome.matched_records == 8
    # A partner token sees its own sessions only; the brand's analyst sees all, by partner.
    mine = get(world, "/v1/sessions", "streamco").json()
    assert [s["partner"] for s in mine] == ["streamco", "streamco"]
    assert [s["partner"] for s in get(world, "/v1/sessions", "newsly").json()] == ["newsly"]
    every = [s["partner"] for s in get(world, "/v1/sessions", "analyst").json()]
    assert sorted(every) == ["default", "newsly", "streamco", "streamco"]
    # Audit trails are per partner too.
    trail = get(world, "/v1/audit?partner=newsly", "admin").json()
    assert trail and {e["partner"] for e in trail} == {"newsly"}
    assert {e["action"] for e in trail} >= {"partner.create", "psi.start", "psi.done"}
    assert get(world, "/v1/audit?partner=nobody", "admin").status_code == 404


def test_a_partner_cannot_resume_another_partners_session(
    world: dict[str, Any], process_pool: CryptoPool
) -> None:
    """newsly knows the id of the session of the default partner that dropped mid-stream:
    it is not found for newsly, and stays resumable for its owner."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fault_client",
            "match",
            world["node"].target,
            world["tokens"]["default"],
            "crm",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    def interrupted() -> list[dict[str, Any]]:
        listed = get(world, "/v1/sessions", "default").json()
        return [s for s in listed if s["status"] == "interrupted"]

    eventually(lambda: bool(interrupted()), what="the dropped session to be interrupted")
    [dropped] = interrupted()
    session = PartnerSession(
        audience="crm", protocol=Protocol.MATCH, data=emails(200), pool=process_pool
    )
    session.session_id = dropped["session_id"]
    conn = Connection(world["node"].target, world["tokens"]["newsly"], retry_seconds=0)
    with pytest.raises(ClientError, match="NOT_FOUND"):
        asyncio.run(
            run_psi(conn, "crm", Protocol.MATCH, emails(200), pool=process_pool, session=session)
        )
    [still] = [s for s in get(world, "/v1/sessions", "default").json() if s == dropped]
    assert still["status"] == "interrupted"


def attribute(world: dict[str, Any], who: str, epsilon: float, click_days: int = 7) -> str:
    synth = world["synth"]
    request = AttributionRequest(
        conversions="sales",
        exposures=synth.exposures_path,
        id_columns=parse_id_columns("email,phone,maid"),
        options=OPTIONS,
        spend=synth.spend_path,
        windows=Windows(click_days, 1),
        epsilon=epsilon,
    )
    conn = Connection(world["node"].target, world["tokens"][who])
    return asyncio.run(run_attribution(conn, prepare_attribution(request)))


def test_each_partner_has_its_own_epsilon_ledger_and_reports(world: dict[str, Any]) -> None:
    first = attribute(world, "streamco", 0.6)
    # The same file and parameters from another partner: its own run and report.
    theirs = attribute(world, "newsly", 0.6)
    assert theirs != first
    assert attribute(world, "streamco", 0.6) == first  # a resubmission is idempotent
    with pytest.raises(ClientError, match=r"FAILED_PRECONDITION.*budget"):
        attribute(world, "streamco", 0.6, click_days=5)  # 1.2 > 1.0: refused
    ledger = get(world, "/v1/ledger", "analyst").json()
    spent = {p["partner"]: p["spent"] for p in ledger["partnerships"]}
    assert spent == {"default": 0.0, "streamco": 0.6, "newsly": 0.6}
    assert [(e["partner"], e["report_id"]) for e in ledger["entries"]] == [
        ("streamco", first),
        ("newsly", theirs),
    ]
    assert get(world, f"/v1/reports/{first}", "analyst").json()["partner"] == "streamco"
    listed = {r["report_id"]: r["partner"] for r in get(world, "/v1/reports", "analyst").json()}
    assert listed == {first: "streamco", theirs: "newsly"}
    # Partners read no reports, their own included.
    assert get(world, f"/v1/reports/{first}", "streamco").status_code == 403
    partners = {p["name"]: p for p in get(world, "/v1/partners", "admin").json()}
    assert partners["streamco"]["epsilon_remaining"] == pytest.approx(0.4)
