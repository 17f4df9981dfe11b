"""Lookalike packages through REST and ``cleanroom lookalike show``: metadata only, per tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from cleanroom.server.store import Role
from tests.conftest import Node
from tests.reports import sample_lookalike

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


@pytest.fixture(scope="module")
def package_id(node: Node) -> Iterator[str]:
    store = node.store()
    tenant = store.find_tenant("acme")
    assert tenant is not None
    yield store.put_report(sample_lookalike(tenant.tenant_id)).report_id
    store.close()


def get(node: Node, path: str, tenant: str = "acme", role: Role = Role.ANALYST) -> httpx.Response:
    token = node.tokens[tenant][role]
    return httpx.get(f"{node.http}{path}", headers={"authorization": f"Bearer {token}"})


def test_packages_are_listed_and_read(node: Node, package_id: str) -> None:
    listed = get(node, "/v1/lookalikes")
    assert listed.status_code == 200
    assert package_id in [p["report_id"] for p in listed.json()]
    one = get(node, f"/v1/lookalikes/{package_id}").json()
    assert one["mode"] == "hidden-seed" and one["auc"] == 0.8123
    assert [t["percent"] for t in one["tiers"]] == [1.0, 2.0, 5.0, 10.0]
    assert "user_id" not in json.dumps(one)  # metadata only
    # Attribution reports and packages are apart.
    assert package_id not in [r["report_id"] for r in get(node, "/v1/reports").json()]
    assert get(node, f"/v1/reports/{package_id}").status_code == 404


@pytest.mark.parametrize(
    ("tenant", "role", "status"),
    [("globex", Role.ANALYST, 404), ("acme", Role.PARTNER, 403), ("acme", Role.ADMIN, 200)],
)
def test_who_may_read_a_package(
    node: Node, package_id: str, tenant: str, role: Role, status: int
) -> None:
    resp = get(node, f"/v1/lookalikes/{package_id}", tenant, role)
    assert resp.status_code == status
    if status != 200:
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_an_unknown_package_is_a_problem_detail(node: Node) -> None:
    resp = get(node, "/v1/lookalikes/" + "0" * 32)
    assert resp.status_code == 404
    assert "no lookalike package" in resp.json()["detail"]


def test_lookalike_show_prints_a_table_and_json(node: Node, package_id: str) -> None:
    token = node.tokens["acme"][Role.ANALYST]
    base = [*CLI, "lookalike", "show", package_id, "--api", node.http, "--token", token]
    table = subprocess.run(
        base, capture_output=True, text=True, timeout=120, check=True, env=_wide_env()
    )
    for text in ("Lookalike package", "vip_customers", "top 5%", "50,000", "3.80x", "0.81"):
        assert text in table.stdout, text
    as_json = subprocess.run(
        [*base, "--format", "json"], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(as_json.stdout)["report_id"] == package_id
    missing = subprocess.run(
        [*CLI, "lookalike", "show", "0" * 32, "--api", node.http, "--token", token],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1
    assert "HTTP 404: no lookalike package" in missing.stderr


def _wide_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "100"}
