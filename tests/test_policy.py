"""One policy path: gRPC SetPolicy, REST PUT /v1/policy and `tenant create` validate the
same fields the same way and write the same audit record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from cleanroom.client.sdk import ClientError, Connection, set_policy
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.server.policy import Policy
from cleanroom.server.store import Role, SqlStore
from tests.conftest import Node

CLI = [sys.executable, "-m", "cleanroom.client.cli"]

BAD = [
    ({"aggregation_threshold": 2_000_000}, "aggregation_threshold: Input should be less than"),
    ({"dp": "fuzzy"}, "dp: dp must be one of off, laplace, gaussian, not 'fuzzy'"),
    ({"epsilon_budget": -1.0}, "epsilon_budget: Input should be greater than or equal to 0"),
    ({"delta": 1.0}, "delta: Input should be less than 1"),
    ({"min_partner_records": 0}, "min_partner_records: Input should be greater than or equal"),
    ({"sessions_per_day": 0}, "sessions_per_day: Input should be greater than or equal to 1"),
]


def grpc_policy(node: Node, request: pb.PolicyRequest, role: Role = Role.ADMIN) -> Any:
    with grpc.insecure_channel(node.target) as channel:
        return pb_grpc.AttributionServiceStub(channel).SetPolicy(
            request,
            metadata=(("authorization", f"Bearer {node.tokens['globex'][role]}"),),
            timeout=30,
        )


def rest_policy(node: Node, body: dict[str, Any]) -> httpx.Response:
    return httpx.put(
        f"{node.http}/v1/policy",
        json=body,
        headers={"authorization": f"Bearer {node.tokens['globex'][Role.ADMIN]}"},
    )


def audit(node: Node) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {node.tokens['globex'][Role.ADMIN]}"}
    return [
        e
        for e in httpx.get(f"{node.http}/v1/audit", headers=headers).json()
        if e["action"] == "policy.update"
    ]


@pytest.mark.parametrize(("change", "says"), BAD, ids=lambda v: str(v))
def test_grpc_and_rest_refuse_the_same_values_with_the_same_words(
    node: Node, change: dict[str, Any], says: str
) -> None:
    before = httpx.get(
        f"{node.http}/v1/policy",
        headers={"authorization": f"Bearer {node.tokens['globex'][Role.ANALYST]}"},
    ).json()
    with pytest.raises(grpc.RpcError) as refused:
        grpc_policy(node, pb.PolicyRequest(**change))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    resp = rest_policy(node, change)
    assert resp.status_code == 422
    assert refused.value.details() == resp.json()["detail"]
    assert says in resp.json()["detail"]
    after = httpx.get(
        f"{node.http}/v1/policy",
        headers={"authorization": f"Bearer {node.tokens['globex'][Role.ANALYST]}"},
    ).json()
    assert after == before


def test_every_transport_writes_the_same_audit_record(node: Node) -> None:
    already = len(audit(node))
    response = grpc_policy(node, pb.PolicyRequest(aggregation_threshold=70, sessions_per_day=999))
    assert (response.aggregation_threshold, response.sessions_per_day) == (70, 999)
    assert rest_policy(node, {"dp": "gaussian", "delta": 1e-7}).json()["dp"] == "gaussian"
    sdk = set_policy(
        Connection(node.target, node.tokens["globex"][Role.ADMIN]), {"epsilon_budget": 3.0}
    )
    assert sdk["epsilon_budget"] == 3.0 and sdk["dp"] == "gaussian"
    assert [p["name"] for p in sdk["partners"]] == ["default"]
    records = audit(node)[already:]
    assert len(records) == 3
    for record in records:
        assert set(record["detail"]) == {"changes", "before", "after"}
        assert set(record["detail"]["after"]) == set(Policy().as_dict())
    first, second, third = (r["detail"] for r in records)
    assert first["changes"] == {"aggregation_threshold": 70, "sessions_per_day": 999}
    assert first["after"]["aggregation_threshold"] == 70
    assert second["before"] == first["after"]  # one policy, changed step by step
    assert second["after"]["delta"] == 1e-7 and third["after"]["epsilon_budget"] == 3.0


def test_only_admins_change_a_policy(node: Node) -> None:
    for role in (Role.ANALYST, Role.PARTNER):
        with pytest.raises(grpc.RpcError) as denied:
            grpc_policy(node, pb.PolicyRequest(dp="off"), role)
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_a_partners_overrides_go_through_the_same_path(node: Node) -> None:
    conn = Connection(node.target, node.tokens["globex"][Role.ADMIN])
    policy = set_policy(conn, {"sessions_per_day": 4}, partner="default")
    [default] = policy["partners"]
    assert default["sessions_per_day"] == 4 and policy["sessions_per_day"] != 4
    with pytest.raises(ClientError, match="a partner overrides only"):
        set_policy(conn, {"dp": "laplace"}, partner="default")
    with pytest.raises(ClientError, match="NOT_FOUND"):
        set_policy(conn, {"sessions_per_day": 4}, partner="nobody")
    headers = {"authorization": f"Bearer {node.tokens['globex'][Role.ADMIN]}"}
    rest = httpx.put(
        f"{node.http}/v1/partners/default/policy",
        json={"min_partner_records": 0},
        headers=headers,
    )
    assert rest.status_code == 422
    assert rest.json()["detail"].startswith("min_partner_records: Input should be greater")
    ok = httpx.put(
        f"{node.http}/v1/partners/default/policy", json={"min_partner_records": 3}, headers=headers
    ).json()
    assert (ok["min_partner_records"], ok["sessions_per_day"]) == (3, 4)
    [record] = [r for r in audit(node) if r["detail"].get("partner") == "default"][-1:]
    assert record["partner"] == "default" and record["detail"]["after"]["min_partner_records"] == 3


def test_tenant_create_validates_and_audits_as_the_others(tmp_path: Path) -> None:
    data = tmp_path / "node"
    bad = subprocess.run(
        [*CLI, "tenant", "create", "acme", "--data-dir", str(data), "--min-partner-records", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "min_partner_records: Input should be greater than or equal to 1" in bad.stderr
    assert "Traceback" not in bad.stderr
    made = subprocess.run(
        [*CLI, "tenant", "create", "acme", "--data-dir", str(data), "--sessions-per-day", "7"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    tenant = json.loads(
        subprocess.run(
            [*CLI, "partner-account", "list", "--data-dir", str(data), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    assert [p["sessions_per_day"] for p in tenant] == [7]
    assert "tokens are shown only now" in made.stdout
    store = SqlStore(f"sqlite:///{(data / 'cleanroom.db').resolve()}")
    try:
        found = store.find_tenant("acme")
        assert found is not None and found.policy.sessions_per_day == 7
        log = store.audit_log(found.tenant_id)
        assert [e.action for e in log] == ["tenant.create", "policy.update"]
        assert log[1].detail["changes"] == {"sessions_per_day": 7}
        assert log[1].detail["before"] == Policy().as_dict()
    finally:
        store.close()
