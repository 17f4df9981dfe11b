"""Deleting data on request: audiences, conversion sets and reports go with every file, over
gRPC, REST and the CLI, audited, admins only; a deleted audience leaves nothing behind."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.client.attribution import upload_conversions
from cleanroom.client.sdk import Connection, upload_audience
from cleanroom.server.datasets import open_dataset
from cleanroom.server.store import Role
from tests.conftest import Node
from tests.reports import sample_lookalike, sample_report

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def upload_audience_and_conversions(
    target: str, admin: str, tmp_path: Path, audience: str, conversions: str
) -> None:
    """A 40-email audience and a 30-event conversion set of the same people."""
    crm = tmp_path / "crm.csv"
    crm.write_text("email\n" + "".join(f"person{i}@example.com\n" for i in range(40)))
    asyncio.run(
        upload_audience(
            Connection(target, admin),
            name=audience,
            path=crm,
            id_columns=parse_id_columns("email"),
            options=NormalizeOptions(),
        )
    )
    sales = tmp_path / "sales.csv"
    sales.write_text(
        "customer_id,email,ts,value\n"
        + "".join(f"c{i},person{i}@example.com,2026-11-0{1 + i % 9},{i}.5\n" for i in range(30))
    )
    asyncio.run(
        upload_conversions(
            Connection(target, admin),
            name=conversions,
            path=sales,
            id_columns=parse_id_columns("email"),
            options=NormalizeOptions(),
            customer_column="customer_id",
            time_column="ts",
            value_column="value",
        )
    )


def test_an_audience_and_conversions_leave_nothing_behind(node: Node, tmp_path: Path) -> None:
    admin = node.tokens["acme"][Role.ADMIN]
    upload_audience_and_conversions(node.target, admin, tmp_path, "to-erase", "sales-erase")
    store = node.store()
    tenant = store.find_tenant("acme")
    assert tenant is not None
    record = store.get_audience(tenant.tenant_id, "to-erase")
    assert record is not None
    stored = node.data_dir / record.path
    point = pq.read_table(stored, columns=["point"]).column("point")[0].as_py()
    holding = files_holding(node.data_dir, point)
    assert holding and all(p.is_relative_to(stored) for p in holding)  # the set's own parts
    conversions = store.get_conversion_set(tenant.tenant_id, "sales-erase")
    assert conversions is not None
    conversion_set = node.data_dir / conversions.path
    assert open_dataset(conversion_set).parts  # one partitioned set: identifiers and events
    # Only an admin deletes.
    partner = node.tokens["acme"][Role.PARTNER]
    refused = cli("audience", "delete", "--server", node.target, "--token", partner,
                  "--name", "to-erase")  # fmt: skip
    assert refused.returncode != 0 and "needs an admin token" in refused.stderr
    assert store.get_audience(tenant.tenant_id, "to-erase") is not None
    erase = ["--server", node.target, "--token", admin, "--name", "to-erase"]
    done = cli("audience", "delete", *erase)
    assert done.returncode == 0, done.stderr
    assert "deleted audience" in done.stdout
    done = cli("conversions", "delete", "--server", node.target, "--token", admin,
               "--name", "sales-erase")  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Nothing of either remains: no record, no file, no point anywhere under the data dir
    # or in the database (the audit log keeps who deleted what, and when).
    assert store.get_audience(tenant.tenant_id, "to-erase") is None
    assert store.get_conversion_set(tenant.tenant_id, "sales-erase") is None
    assert not stored.exists() and not conversion_set.exists()
    assert files_holding(node.data_dir, point) == []
    db_file = Path(node.db_url.removeprefix("sqlite:///"))
    assert point not in db_file.read_bytes()
    actions = [e.action for e in store.audit_log(tenant.tenant_id)]
    assert "audience.delete" in actions and "conversions.delete" in actions
    again = cli("audience", "delete", "--server", node.target, "--token", admin,
                "--name", "to-erase")  # fmt: skip
    assert again.returncode != 0 and "no audience named 'to-erase'" in again.stderr
    store.close()


def test_reports_and_packages_are_deleted_over_rest_and_the_cli(node: Node) -> None:
    store = node.store()
    tenant = store.find_tenant("acme")
    assert tenant is not None
    report = store.put_report(sample_report(tenant.tenant_id)).report_id
    package = store.put_report(sample_lookalike(tenant.tenant_id)).report_id
    admin, analyst = node.tokens["acme"][Role.ADMIN], node.tokens["acme"][Role.ANALYST]

    def delete(path: str, token: str) -> httpx.Response:
        return httpx.delete(f"{node.http}{path}", headers={"Authorization": f"Bearer {token}"})

    assert delete(f"/v1/lookalikes/{package}", analyst).status_code == 403
    assert delete(f"/v1/lookalikes/{package}", admin).json() == {
        "deleted": "lookalike",
        "id": package,
    }
    assert store.get_lookalike(tenant.tenant_id, package) is None
    other = node.tokens["globex"][Role.ADMIN]
    assert delete(f"/v1/reports/{report}", other).status_code == 404  # not its tenant's
    done = cli("report", "delete", report, "--api", node.http, "--token", admin)
    assert done.returncode == 0, done.stderr
    assert f"deleted attribution {report}" in done.stdout
    assert store.get_report(tenant.tenant_id, report) is None
    missing = cli("report", "delete", report, "--api", node.http, "--token", admin)
    assert missing.returncode != 0 and "HTTP 404" in missing.stderr
    for path in (f"/v1/audiences/{'x' * 8}", f"/v1/conversions/{'x' * 8}"):
        resp = delete(path, admin)
        assert resp.status_code == 404 and resp.headers["content-type"].startswith(
            "application/problem+json"
        )
    store.close()
