"""The REST API over a real brand node: reports (JSON, CSV), roles, tenants,
policy, ledger, audit log, OpenAPI, and tokens kept out of the access log."""

from __future__ import annotations

import csv
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cleanroom.federated.attribution.report import AttributionReport
from cleanroom.proto.errors import BudgetExceeded
from cleanroom.server.rest import CSV_COLUMNS, create_app, redact
from cleanroom.server.store import AuditEntry, ReportRecord, Role, SqlStore
from tests.conftest import Node
from tests.reports import sample_body, sample_report


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _tenant_id(node: Node, name: str) -> str:
    store = node.store()
    try:
        tenant = store.find_tenant(name)
        assert tenant is not None
        return tenant.tenant_id
    finally:
        store.close()


@pytest.fixture(scope="module")
def reports(node: Node) -> Iterator[dict[str, str]]:
    """One sample report per tenant: {'acme': id, 'globex': id}."""
    store = node.store()
    ids = {}
    for name in ("acme", "globex"):
        tenant = store.find_tenant(name)
        assert tenant is not None
        ids[name] = store.put_report(sample_report(tenant.tenant_id)).report_id
    store.close()
    yield ids


def _assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    return problem


def test_openapi_and_docs_are_served(node: Node) -> None:
    spec = httpx.get(f"{node.http}/openapi.json").json()
    for path in (
        "/v1/reports",
        "/v1/reports/{report_id}",
        "/v1/reports/{report_id}.csv",
        "/v1/ledger",
        "/v1/audit",
        "/v1/policy",
        "/dashboard/reports/{report_id}",
        "/v1/audiences",
        "/v1/sessions",
    ):
        assert path in spec["paths"], path
    assert "put" in spec["paths"]["/v1/policy"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    # The report's JSON schema is the typed model's, nested models included.
    schemas = spec["components"]["schemas"]
    ok = spec["paths"]["/v1/reports/{report_id}"]["get"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/AttributionReport"}
    report = schemas["AttributionReport"]
    assert set(report["required"]) >= {"report_id", "conversions_name", "created_at", "campaigns"}
    assert report["properties"]["campaigns"]["items"] == {
        "$ref": "#/components/schemas/CampaignResult"
    }
    assert set(schemas["CampaignResult"]["properties"]) >= {"lift", "lift_ci95", "suppressed"}
    assert schemas["ReportDp"]["properties"]["mechanism"]["enum"] == ["off", "laplace", "gaussian"]
    listed = spec["paths"]["/v1/reports"]["get"]["responses"]["200"]["content"]
    assert listed["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/ReportSummary"
    }
    docs = httpx.get(f"{node.http}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("role", [Role.ANALYST, Role.ADMIN])
def test_readers_get_their_reports_as_json(node: Node, reports: dict[str, str], role: Role) -> None:
    rid = reports["acme"]
    listed = httpx.get(f"{node.http}/v1/reports", headers=_auth(node.tokens["acme"][role]))
    assert listed.status_code == 200
    summary = next(r for r in listed.json() if r["report_id"] == rid)
    assert summary["campaigns"] == 3 and summary["suppressed"] == 1
    assert summary["dp"] == sample_body(rid)["dp"]
    assert reports["globex"] not in {r["report_id"] for r in listed.json()}
    resp = httpx.get(f"{node.http}/v1/reports/{rid}", headers=_auth(node.tokens["acme"][role]))
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    got = resp.json()
    expected = sample_body(rid)
    assert got == {**expected, "conversions_name": "purchases"}
    assert list(got)[:3] == ["report_id", "conversions_name", "created_at"]
    spring, _, podcast = got["campaigns"]
    assert set(spring) == {
        "campaign_id",
        "attributed_conversions",
        "attributed_revenue",
        "exposed",
        "holdout",
        "lift",
        "lift_ci95",
        "incremental_converters",
        "spend",
        "iroas",
        "suppressed",
    }
    assert podcast["suppressed"] is True and podcast["exposed"]["users"] is None


def test_reports_as_csv_one_row_per_campaign(node: Node, reports: dict[str, str]) -> None:
    rid = reports["acme"]
    headers = _auth(node.tokens["acme"][Role.ANALYST])
    by_suffix = httpx.get(f"{node.http}/v1/reports/{rid}.csv", headers=headers)
    by_query = httpx.get(f"{node.http}/v1/reports/{rid}?format=csv", headers=headers)
    for resp in (by_suffix, by_query):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/csv")
        assert f'filename="report-{rid}.csv"' in resp.headers["content-disposition"]
    assert by_suffix.text == by_query.text
    reader = csv.DictReader(io.StringIO(by_suffix.text))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    rows = {r["campaign_id"]: r for r in reader}
    assert list(rows) == ["spring_sale", "retargeting_q2", "podcast_test"]
    spring = rows["spring_sale"]
    assert spring["report_id"] == rid
    assert spring["suppressed"] == "false"
    assert float(spring["lift"]) == 0.1873
    assert (float(spring["lift_ci95_lo"]), float(spring["lift_ci95_hi"])) == (0.0212, 0.3534)
    assert (spring["exposed_users"], spring["exposed_converters"]) == ("48210", "1205")
    assert (spring["holdout_users"], spring["holdout_conversions"]) == ("5320", "131")
    assert float(spring["attributed_revenue"]) == 98420.75
    assert (spring["click_days"], spring["view_days"]) == ("7", "1")
    assert (spring["dp_mechanism"], spring["dp_epsilon"]) == ("laplace", "0.5")
    assert rows["retargeting_q2"]["iroas"] == ""
    podcast = rows["podcast_test"]
    assert podcast["suppressed"] == "true"
    assert podcast["lift"] == podcast["exposed_users"] == podcast["lift_ci95_lo"] == ""
    assert podcast["spend"] == "3000.0"
    bad = httpx.get(f"{node.http}/v1/reports/{rid}?format=xml", headers=headers)
    _assert_problem(bad, 422)


def test_odd_report_bodies_are_refused_and_csv_cells_are_not_formulas(node: Node) -> None:
    """A report is typed: a body of the wrong shape is refused before it is stored;
    a campaign id that a spreadsheet would run as a formula is quoted in CSV."""
    acme = _tenant_id(node, "acme")
    odd = {
        **sample_body("odd"),
        "windows": [],
        "dp": "x",
        "campaigns": [1, {"campaign_id": "=HYPERLINK(1)", "exposed": 3}],
    }
    with pytest.raises(ValueError, match="validation error"):
        AttributionReport.model_validate({**odd, "conversions_name": "purchases"})
    rec = sample_report(acme)
    formula = rec.report.campaigns[0].model_copy(update={"campaign_id": "=HYPERLINK(1)"})
    rec = ReportRecord(
        tenant_id=acme,
        report=rec.report.model_copy(update={"campaigns": [formula]}),
        submission_key=rec.submission_key,
    )
    store = node.store()
    try:
        store.put_report(rec)
    finally:
        store.close()
    headers = _auth(node.tokens["acme"][Role.ANALYST])
    resp = httpx.get(f"{node.http}/v1/reports/{rec.report_id}.csv", headers=headers)
    assert resp.status_code == 200
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [r["campaign_id"] for r in rows] == ["'=HYPERLINK(1)"]
    assert rows[0]["exposed_users"] == "48210" and rows[0]["suppressed"] == "false"
    listed = httpx.get(f"{node.http}/v1/reports", headers=headers).json()
    assert {"report_id": rec.report_id, "campaigns": 1}.items() <= next(
        r for r in listed if r["report_id"] == rec.report_id
    ).items()
    json_resp = httpx.get(f"{node.http}/v1/reports/{rec.report_id}", headers=headers)
    assert json_resp.json()["campaigns"][0]["campaign_id"] == "=HYPERLINK(1)"


def test_another_tenants_report_is_indistinguishable_from_a_missing_one(
    node: Node, reports: dict[str, str]
) -> None:
    globex = _auth(node.tokens["globex"][Role.ANALYST])
    acme_report = reports["acme"]
    listed = httpx.get(f"{node.http}/v1/reports", headers=globex).json()
    assert [r["report_id"] for r in listed] == [reports["globex"]]
    for suffix in ("", ".csv", "?format=csv"):
        other = httpx.get(f"{node.http}/v1/reports/{acme_report}{suffix}", headers=globex)
        missing = httpx.get(f"{node.http}/v1/reports/{'0' * 32}{suffix}", headers=globex)
        p_other, p_missing = _assert_problem(other, 404), _assert_problem(missing, 404)
        assert p_other["title"] == p_missing["title"]
        assert p_other["detail"].replace(acme_report, "X") == p_missing["detail"].replace(
            "0" * 32, "X"
        )
        assert "spring_sale" not in other.text
    # The dashboard given a header behaves the same.
    dash = httpx.get(f"{node.http}/dashboard/reports/{acme_report}", headers=globex)
    _assert_problem(dash, 404)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/reports",
        "/v1/reports/{rid}",
        "/v1/reports/{rid}.csv",
        "/v1/reports/{rid}?format=csv",
        "/v1/ledger",
        "/v1/audit",
        "/v1/policy",
        "/dashboard/reports/{rid}",
    ],
)
def test_partner_tokens_are_forbidden(node: Node, reports: dict[str, str], path: str) -> None:
    url = node.http + path.format(rid=reports["acme"])
    resp = httpx.get(url, headers=_auth(node.tokens["acme"][Role.PARTNER]))
    problem = _assert_problem(resp, 403)
    assert "analyst" in problem["detail"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer cr_analyst_not-a-token"}, {"authorization": "Basic abc"}],
)
def test_requests_without_a_valid_token_are_401_problems(
    node: Node, reports: dict[str, str], headers: dict[str, str]
) -> None:
    for path in ("/v1/reports", f"/v1/reports/{reports['acme']}", "/v1/ledger", "/v1/policy"):
        resp = httpx.get(node.http + path, headers=headers)
        _assert_problem(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "spring_sale" not in resp.text
    _assert_problem(httpx.put(f"{node.http}/v1/policy", json={"dp": "off"}, headers=headers), 401)


def test_policy_is_read_by_readers_and_changed_by_admins(node: Node) -> None:
    admin = _auth(node.tokens["acme"][Role.ADMIN])
    analyst = _auth(node.tokens["acme"][Role.ANALYST])
    before = httpx.get(f"{node.http}/v1/policy", headers=analyst).json()
    assert before["min_partner_records"] == 20
    assert {"aggregation_threshold", "dp", "epsilon_budget", "delta"} <= set(before)
    change = {"aggregation_threshold": 80, "dp": "laplace", "epsilon_budget": 4.0}
    resp = httpx.put(f"{node.http}/v1/policy", json=change, headers=admin)
    assert resp.status_code == 200, resp.text
    after = {**before, **change}
    assert resp.json() == after
    assert httpx.get(f"{node.http}/v1/policy", headers=analyst).json() == after
    # Fields left out keep their value.
    resp = httpx.put(f"{node.http}/v1/policy", json={"dp": "gaussian"}, headers=admin)
    assert resp.json() == {**after, "dp": "gaussian"}
    # Analysts and partners cannot change it; other tenants are untouched.
    for role in (Role.ANALYST, Role.PARTNER):
        token = node.tokens["acme"][role]
        _assert_problem(
            httpx.put(f"{node.http}/v1/policy", json={"dp": "off"}, headers=_auth(token)), 403
        )
    globex = httpx.get(f"{node.http}/v1/policy", headers=_auth(node.tokens["globex"][Role.ADMIN]))
    assert globex.json()["dp"] == "off" and globex.json()["aggregation_threshold"] == 50
    audit = httpx.get(f"{node.http}/v1/audit", headers=analyst).json()
    updates = [e for e in audit if e["action"] == "policy.update"]
    assert [u["detail"]["changes"] for u in updates] == [change, {"dp": "gaussian"}]
    assert updates[0]["role"] == "admin" and updates[0]["at"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"dp": "exponential"}',
        b'{"aggregation_threshold": -1}',
        b'{"aggregation_threshold": "many"}',
        b'{"aggregation_threshold": 2.5}',
        b'{"epsilon_budget": -1}',
        b'{"epsilon_budget": NaN}',
        b'{"epsilon_budget": 1e309}',
        b'{"delta": 1.5}',
        b'{"min_partner_records": 0}',
        b'{"surprise": true}',
        b"[]",
        b"not json",
    ],
)
def test_bad_policy_values_are_422_problems(node: Node, body: bytes) -> None:
    admin = _auth(node.tokens["globex"][Role.ADMIN])
    before = httpx.get(f"{node.http}/v1/policy", headers=admin).json()
    resp = httpx.put(
        f"{node.http}/v1/policy",
        content=body,
        headers={**admin, "content-type": "application/json"},
    )
    problem = _assert_problem(resp, 422)
    assert problem["errors"]
    assert httpx.get(f"{node.http}/v1/policy", headers=admin).json() == before


def test_the_ledger_refuses_overspending_and_is_readable(
    node: Node, reports: dict[str, str]
) -> None:
    globex = _tenant_id(node, "globex")
    store = node.store()
    try:
        streamco = store.create_partner(globex, "streamco").partnership
        newsly = store.create_partner(globex, "newsly").partnership
        assert store.charge_epsilon(streamco, "r1", 0.6, budget=1.0) == pytest.approx(0.4)
        with pytest.raises(BudgetExceeded):
            store.charge_epsilon(streamco, "r2", 0.5, budget=1.0)
        store.charge_epsilon(streamco, "r3", 0.4, budget=1.0)
        store.charge_epsilon(newsly, "r4", 0.25, budget=1.0)
    finally:
        store.close()
    headers = _auth(node.tokens["globex"][Role.ANALYST])
    ledger = httpx.get(f"{node.http}/v1/ledger", headers=headers).json()
    budget = ledger["epsilon_budget"]
    assert [(e["partner"], e["report_id"], e["epsilon"]) for e in ledger["entries"]] == [
        ("streamco", "r1", 0.6),
        ("streamco", "r3", 0.4),
        ("newsly", "r4", 0.25),
    ]
    spent = {p["partner"]: (p["spent"], p["remaining"]) for p in ledger["partnerships"]}
    assert spent["newsly"] == (0.25, budget - 0.25)
    assert spent["streamco"][0] == pytest.approx(1.0)
    assert spent["default"] == (0.0, budget)  # every partner is listed, spent or not
    # Another tenant's ledger is its own.
    acme = httpx.get(f"{node.http}/v1/ledger", headers=_auth(node.tokens["acme"][Role.ADMIN]))
    assert acme.json()["entries"] == []


def test_the_audit_log_is_per_tenant(node: Node) -> None:
    store = node.store()
    try:
        store.audit(AuditEntry(_tenant_id(node, "globex"), "partner", "attribution.run", {"n": 7}))
    finally:
        store.close()
    globex = httpx.get(f"{node.http}/v1/audit", headers=_auth(node.tokens["globex"][Role.ADMIN]))
    assert any(e["action"] == "attribution.run" for e in globex.json())
    acme = httpx.get(f"{node.http}/v1/audit", headers=_auth(node.tokens["acme"][Role.ANALYST]))
    assert not any(e["action"] == "attribution.run" for e in acme.json())


def test_the_dashboard_page_is_self_contained(node: Node, reports: dict[str, str]) -> None:
    rid = reports["acme"]
    page = httpx.get(f"{node.http}/dashboard/reports/{rid}?token=whatever")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    # No data without a token check, nothing from another origin, no token echoed.
    assert "spring_sale" not in page.text and "whatever" not in page.text
    without_svg_namespace = page.text.replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_svg_namespace and "https://" not in without_svg_namespace
    assert "<script src" not in page.text and '<link rel="stylesheet"' not in page.text
    assert f'data-report-url="/v1/reports/{rid}"' in page.text
    # With an Authorization header the server checks it and embeds the report.
    embedded = httpx.get(
        f"{node.http}/dashboard/reports/{rid}", headers=_auth(node.tokens["acme"][Role.ANALYST])
    )
    assert embedded.status_code == 200
    assert 'id="report-data"' in embedded.text and "spring_sale" in embedded.text
    bad = httpx.get(f"{node.http}/dashboard/reports/{rid}", headers={"authorization": "Bearer x"})
    _assert_problem(bad, 401)
    _assert_problem(httpx.get(f"{node.http}/dashboard/reports/bad.id"), 404)


def test_embedded_report_json_cannot_close_its_script_element(node: Node) -> None:
    acme = _tenant_id(node, "acme")
    rec = sample_report(acme)
    first = rec.report.campaigns[0].model_copy(update={"campaign_id": "</script><b>x</b>&"})
    rec = ReportRecord(
        tenant_id=acme,
        report=rec.report.model_copy(update={"campaigns": [first]}),
        submission_key=rec.submission_key,
    )
    store = node.store()
    try:
        store.put_report(rec)
    finally:
        store.close()
    page = httpx.get(
        f"{node.http}/dashboard/reports/{rec.report_id}",
        headers=_auth(node.tokens["acme"][Role.ANALYST]),
    ).text
    assert "</script><b>" not in page
    assert "\\u003c/script\\u003e\\u003cb\\u003ex" in page


def test_redaction_removes_tokens_from_log_text() -> None:
    line = '127.0.0.1:5 - "GET /dashboard/reports/r1?token=cr_analyst_Ab-9_x&x=1 HTTP/1.1" 200'
    assert redact(line) == (
        '127.0.0.1:5 - "GET /dashboard/reports/r1?token=<redacted>&x=1 HTTP/1.1" 200'
    )
    assert "s3cr3t" not in redact("/dashboard/reports/r1?a=b&token=s3cr3t")
    assert redact("Bearer cr_admin_abcDEF123") == "Bearer cr_<redacted>"


def test_query_tokens_stay_out_of_the_access_log(node: Node, reports: dict[str, str]) -> None:
    """A real uvicorn at info level (access log on) serving the dashboard."""
    import uvicorn

    store = SqlStore(node.db_url)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    access = logging.getLogger("uvicorn.access")
    keep = Keep()
    uvicorn_loggers = [
        logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error", "uvicorn.asgi")
    ]
    old_levels = [logger.level for logger in uvicorn_loggers]
    access.addHandler(keep)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(store), log_level="info", log_config=None, lifespan="off", access_log=True
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        token = node.tokens["acme"][Role.ANALYST]
        rid = reports["acme"]
        resp = httpx.get(f"http://127.0.0.1:{port}/dashboard/reports/{rid}?token={token}")
        assert resp.status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        access.removeHandler(keep)
        for logger, level in zip(uvicorn_loggers, old_levels, strict=True):
            logger.setLevel(level)
        sock.close()
        store.close()
    assert any(f"/dashboard/reports/{rid}?token=<redacted>" in line for line in lines), lines
    assert not any(token in line for line in lines)
