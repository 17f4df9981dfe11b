"""The brand node's REST API (FastAPI): thin routes over the store.

Every route authenticates the bearer token and only ever reads the token's
own tenant; another tenant's object is indistinguishable from a missing one
(404). Errors are ``application/problem+json`` (RFC 9457): 401 without a
valid token, 403 for a role that may not do this, 404, 409 for a conflict
with the current state (a name taken, a budget spent), 422 for invalid input
(with an ``errors`` list when the request's shape is wrong), 429 when a quota
is spent, 500 with a ``reference`` id for an internal error (the details are
in the node's log, never in the response). The project's errors
(``cleanroom.proto.errors``) map to these in one table, ``HTTP_STATUSES``.
OpenAPI: ``/openapi.json``, docs at ``/docs``.

Roles: attribution reports, the epsilon ledger, the audit log and the policy
are read with admin or analyst tokens (partner tokens get 403); only admin
tokens change the policy (``PUT /v1/policy``, audited as ``policy.update``).

Report JSON (``GET /v1/reports/{id}``; made by the attribution protocol) is the
typed ``AttributionReport`` (``federated/attribution/report.py``; its schema is
in the OpenAPI document)::

    {"report_id", "conversions_name", "created_at", "windows": {"click_days", "view_days"},
     "dp": {"mechanism", "epsilon", "delta", "value_cap"}, "aggregation_threshold",
     "campaigns": [{"campaign_id", "attributed_conversions", "attributed_revenue",
                    "exposed": {"users", "conversions", "revenue", "converters", "rate"},
                    "holdout": {...the same}, "lift", "lift_ci95": [lo, hi],
                    "incremental_converters", "spend", "iroas", "suppressed"}]}

Suppressed campaigns (below the aggregation threshold) have null numbers;
lift, its interval, incremental converters and iROAS may be null. The CSV
form (``GET /v1/reports/{id}.csv`` or ``?format=csv``) has one row per
campaign with the nested fields flattened (``exposed_users``,
``lift_ci95_lo``...), null as an empty cell.

Dashboard authentication (``GET /dashboard/reports/{id}``). A browser cannot
put a header on a link, so the page accepts the token in the URL:

- ``#token=...`` (preferred): the fragment never leaves the browser, so no
  server, proxy or access log sees it.
- ``?token=...``: works everywhere, but the query string travels with the
  request, so the token can land in proxy and access logs. This server
  redacts ``token=`` (and anything shaped like a cleanroom token) from the
  uvicorn loggers, sets ``Referrer-Policy: no-referrer`` and loads nothing
  from other origins so no Referer carries it; the page removes it from the
  address bar and history as soon as it has read it. Proxies in front of the
  node still see it: prefer the fragment or a short-lived analyst token.
- ``Authorization: Bearer`` header (an authenticating proxy, curl): the
  server checks it like any API route and embeds the report JSON in the
  page; no token reaches the URL at all.

In the first two cases the page itself is served without data; its script
fetches ``/v1/reports/{id}`` with the token in an ``Authorization`` header,
so the report API's checks (role, tenant, 404) apply unchanged. The page is
self-contained (inline SVG, no external scripts, a nonce-based
Content-Security-Policy), see ``server/dashboard.py``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cleanroom.federated.attribution.report import REPORT_ID, AttributionReport, ReportSummary
from cleanroom.federated.lookalike.report import LookalikeReport
from cleanroom.proto.errors import (
    Aborted,
    AlreadyExists,
    CleanroomError,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from cleanroom.server.dashboard import ATTRIBUTION, LOOKALIKE, PageKind, render_page
from cleanroom.server.errors import internal_message, internal_reference, nearest
from cleanroom.server.lifecycle import delete_audience, delete_conversions, delete_report
from cleanroom.server.lookalike import register_model
from cleanroom.server.policy import MinPartnerRecords, PolicyChanges, SessionsPerDay, describe
from cleanroom.server.store import (
    AudienceRecord,
    LookalikeRecord,
    Principal,
    ReportRecord,
    Role,
    SessionRecord,
    SqlStore,
)
from cleanroom.server.tenants import change_policy, create_partner, partner_view, partner_views

_TITLES = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    422: "invalid request",
    429: "too many requests",
    500: "internal error",
}

# The project's error vocabulary as HTTP statuses (the gRPC edge has its twin,
# grpc_api.STATUS_CODES); a subclass maps like its nearest listed ancestor.
HTTP_STATUSES: dict[type[CleanroomError], int] = {
    InvalidInput: 422,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    AlreadyExists: 409,
    FailedPrecondition: 409,
    ResourceExhausted: 429,
    Aborted: 409,
}


def http_status_for(exc: CleanroomError) -> int:
    return nearest(HTTP_STATUSES, exc) or 500


def _problem(
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


# ------------------------------------------------------------ token redaction

_QUERY_TOKEN = re.compile(r"(?i)((?:^|[?&;])(?:access_)?token=)[^&;#\s\"']*")
_BARE_TOKEN = re.compile(r"\bcr_(?:admin|partner|analyst)_[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """``text`` without bearer tokens (``token=`` query values, ``cr_<role>_...``)."""
    return _BARE_TOKEN.sub("cr_<redacted>", _QUERY_TOKEN.sub(r"\1<redacted>", text))


class RedactTokens(logging.Filter):
    """Removes tokens from a log record's message and arguments (uvicorn's
    access log formats the request path, query string included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


def install_log_redaction() -> None:
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


# ------------------------------------------------------------------ JSON views


def _audience_json(a: AudienceRecord) -> dict[str, Any]:
    return {
        "audience_id": a.audience_id,
        "name": a.name,
        "records": a.records,
        "elements": a.elements,
        "duplicates": a.duplicates,
        "elements_by_type": a.elements_by_type,
        "seeds": a.seeds,
        "created_at": a.created_at.isoformat(),
    }


def _session_json(s: SessionRecord, partners: dict[str, str]) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "partner": partners.get(s.partner_id or ""),
        "audience_id": s.audience_id,
        "protocol": s.protocol,
        "status": s.status,
        "declared_records": s.declared_records,
        "brand_points": s.brand_points,
        "intersection": s.intersection,
        "error": s.error,
        "created_at": s.created_at.isoformat(),
        "finished_at": s.finished_at.isoformat() if s.finished_at else None,
    }


def report_json(r: ReportRecord) -> dict[str, Any]:
    """The report as the API serves it (the ``AttributionReport`` schema)."""
    return r.report.model_dump(mode="json")


def _partner_names(store: SqlStore, tenant_id: str) -> dict[str, str]:
    return {p.partner_id: p.name for p in store.list_partners(tenant_id)}


GROUP_FIELDS = ("users", "converters", "conversions", "revenue", "rate")
CSV_COLUMNS = (
    "report_id",
    "campaign_id",
    "suppressed",
    "attributed_conversions",
    "attributed_revenue",
    *(f"exposed_{f}" for f in GROUP_FIELDS),
    *(f"holdout_{f}" for f in GROUP_FIELDS),
    "lift",
    "lift_ci95_lo",
    "lift_ci95_hi",
    "incremental_converters",
    "spend",
    "iroas",
    "click_days",
    "view_days",
    "dp_mechanism",
    "dp_epsilon",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return str(value)


def _text_cell(value: Any) -> str:
    # A spreadsheet runs a cell starting with = + - @ as a formula.
    text = _cell(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(r: ReportRecord) -> str:
    """One row per campaign, nested fields flattened (``CSV_COLUMNS``)."""
    report = r.report
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for c in report.campaigns:
        lo, hi = c.lift_ci95 if c.lift_ci95 is not None else (None, None)
        row: dict[str, Any] = {
            "report_id": report.report_id,
            "campaign_id": c.campaign_id,
            "suppressed": c.suppressed,
            "attributed_conversions": c.attributed_conversions,
            "attributed_revenue": c.attributed_revenue,
            "lift": c.lift,
            "lift_ci95_lo": lo,
            "lift_ci95_hi": hi,
            "incremental_converters": c.incremental_converters,
            "spend": c.spend,
            "iroas": c.iroas,
            "click_days": report.windows.click_days,
            "view_days": report.windows.view_days,
            "dp_mechanism": report.dp.mechanism,
            "dp_epsilon": report.dp.epsilon,
        }
        for g, values in (("exposed", c.exposed), ("holdout", c.holdout)):
            for f in GROUP_FIELDS:
                row[f"{g}_{f}"] = getattr(values, f)
        writer.writerow(
            [_text_cell(row[k]) if k == "campaign_id" else _cell(row[k]) for k in CSV_COLUMNS]
        )
    return out.getvalue()


# ------------------------------------------------------------------------ auth

_bearer = HTTPBearer(
    auto_error=False, description="A tenant token (admin, partner or analyst role)."
)


def _principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None or not creds.credentials:
        raise HTTPException(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    store: SqlStore = request.app.state.store
    found = store.authenticate(creds.credentials.strip())
    if found is None:
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return found


Auth = Annotated[Principal, Depends(_principal)]

READ_ROLES = (Role.ADMIN, Role.ANALYST)


def _reader(who: Auth) -> Principal:
    if who.role not in READ_ROLES:
        raise HTTPException(
            403, f"a {who.role} token cannot read this; use an analyst or admin token"
        )
    return who


def _admin(who: Auth) -> Principal:
    if who.role is not Role.ADMIN:
        raise HTTPException(403, f"only an admin token can change this, not {who.role}")
    return who


Reader = Annotated[Principal, Depends(_reader)]
Admin = Annotated[Principal, Depends(_admin)]


class NewPartner(BaseModel):
    """A media partner to add: its name and, optionally, its own policy overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1 to 100 letters, digits, '.', '_' or '-'")
    sessions_per_day: SessionsPerDay | None = None
    min_partner_records: MinPartnerRecords | None = None


class NewModel(BaseModel):
    """A brand model to register: ``model`` is the model file's JSON object."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1 to 100 letters, digits, '.', '_' or '-'")
    model: dict[str, Any] = Field(description="features (name, min, max, levels), weights")
    replace: bool = False


def _find_report(store: SqlStore, who: Principal, report_id: str) -> ReportRecord:
    found = store.get_report(who.tenant_id, report_id) if REPORT_ID.fullmatch(report_id) else None
    if found is None:
        raise HTTPException(404, f"no report {report_id!r}")
    return found


# The token a dashboard URL may carry: read by the page's script, never by the server.
DashboardToken = Annotated[
    str | None, Query(description="read by the page's script, never by the server")
]


def _find_lookalike(store: SqlStore, who: Principal, package_id: str) -> LookalikeRecord:
    found = (
        store.get_lookalike(who.tenant_id, package_id) if REPORT_ID.fullmatch(package_id) else None
    )
    if found is None:
        raise HTTPException(404, f"no lookalike package {package_id!r}")
    return found


def _csv_response(r: ReportRecord) -> Response:
    return Response(
        report_csv(r),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="report-{r.report_id}.csv"'},
    )


# ------------------------------------------------------------------------- app


def create_app(store: SqlStore, *, https: bool = False, data_dir: Path | None = None) -> FastAPI:
    """The REST API and dashboard over ``store``; ``https``: served over TLS, so every
    answer tells browsers to keep to HTTPS (HSTS). ``data_dir`` holds the files that
    deleting an audience or conversion set removes (without it those deletions are
    refused)."""
    # Swagger UI and ReDoc from files installed with fastapi-offline: /docs
    # works on a node without internet access (FastAPI's own pages use a CDN).
    app = FastAPIOffline(
        title="cleanroom brand node",
        version="0.1.0",
        description="Audiences, PSI sessions, attribution reports, the epsilon ledger, "
        "the audit log and the tenant policy. Authenticate with `Authorization: Bearer`.",
    )
    app.state.store = store
    install_log_redaction()

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(
            exc.status_code,
            _TITLES.get(exc.status_code, "request failed"),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        # The same wording the other transports use for the same fields.
        detail = describe(exc.errors()) or "invalid request"
        return _problem(422, _TITLES[422], detail, errors=errors)

    @app.exception_handler(CleanroomError)
    async def project_problem(_request: Request, exc: CleanroomError) -> JSONResponse:
        status = http_status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return _problem(status, _TITLES.get(status, "request failed"), str(exc), headers=headers)

    @app.middleware("http")
    async def internal_problem(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Whatever escapes a route and its exception handlers (a bug) is a 500
        # with a reference id; its text and traceback go to the log only.
        try:
            return await call_next(request)
        except Exception as exc:
            ref = internal_reference(exc)
            return _problem(500, _TITLES[500], internal_message(ref), reference=ref)

    @app.middleware("http")
    async def no_store(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(("/v1/", "/dashboard/")):
            response.headers["Cache-Control"] = "no-store"
        if https:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # ------------------------------------------------------ audiences, sessions

    @app.get("/v1/audiences")
    def list_audiences(who: Auth) -> list[dict[str, Any]]:
        return [_audience_json(a) for a in store.list_audiences(who.tenant_id)]

    @app.get("/v1/audiences/{name}")
    def get_audience(name: str, who: Auth) -> dict[str, Any]:
        found = store.get_audience(who.tenant_id, name)
        if found is None:
            raise HTTPException(404, f"no audience named {name!r}")
        return _audience_json(found)

    @app.get(
        "/v1/sessions",
        summary="PSI and attribution sessions (a partner token sees its own only)",
    )
    def list_sessions(who: Auth) -> list[dict[str, Any]]:
        names = _partner_names(store, who.tenant_id)
        own = who.partner_id if who.role is Role.PARTNER else None
        return [_session_json(s, names) for s in store.list_sessions(who.tenant_id, own)]

    # ------------------------------------------------------------------ reports

    @app.get("/v1/reports", summary="List the tenant's attribution reports")
    def list_reports(who: Reader) -> list[ReportSummary]:
        return [ReportSummary.of(r.report) for r in store.list_reports(who.tenant_id)]

    @app.get(
        "/v1/reports/{report_id}.csv",
        summary="An attribution report as CSV (one row per campaign)",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}}},
    )
    def get_report_csv(report_id: str, who: Reader) -> Response:
        return _csv_response(_find_report(store, who, report_id))

    @app.get(
        "/v1/reports/{report_id}",
        summary="An attribution report (JSON, or CSV with ?format=csv)",
        response_model=AttributionReport,
        responses={200: {"content": {"text/csv": {}}}},
    )
    def get_report(
        report_id: str, who: Reader, format: Literal["json", "csv"] = "json"
    ) -> AttributionReport | Response:
        found = _find_report(store, who, report_id)
        return _csv_response(found) if format == "csv" else found.report

    # --------------------------------------------------------------- lookalikes

    @app.get(
        "/v1/lookalikes",
        summary="The tenant's lookalike packages (metadata: sizes, quality, privacy)",
        response_model=list[LookalikeReport],
    )
    def list_lookalikes(who: Reader) -> list[LookalikeReport]:
        return [r.report for r in store.list_lookalikes(who.tenant_id)]

    @app.get(
        "/v1/lookalikes/{package_id}",
        summary="One lookalike package's metadata (its members stay with the partner)",
        response_model=LookalikeReport,
    )
    def get_lookalike(package_id: str, who: Reader) -> LookalikeReport:
        return _find_lookalike(store, who, package_id).report

    # ------------------------------------------------------------------ deletion

    def _files() -> Path:
        if data_dir is None:
            raise FailedPrecondition("this API serves no data directory; delete over gRPC")
        return data_dir

    @app.delete("/v1/audiences/{name}", summary="Delete an audience and its files (admin)")
    def remove_audience(name: str, who: Admin) -> dict[str, str]:
        return delete_audience(store, _files(), who, name)

    @app.delete("/v1/conversions/{name}", summary="Delete a conversion set and its files (admin)")
    def remove_conversions(name: str, who: Admin) -> dict[str, str]:
        return delete_conversions(store, _files(), who, name)

    @app.delete("/v1/reports/{report_id}", summary="Delete an attribution report (admin)")
    def remove_report(report_id: str, who: Admin) -> dict[str, str]:
        return delete_report(store, who, report_id)

    @app.delete(
        "/v1/lookalikes/{package_id}", summary="Delete a lookalike package's metadata (admin)"
    )
    def remove_lookalike(package_id: str, who: Admin) -> dict[str, str]:
        return delete_report(store, who, package_id)

    # ------------------------------------------------------------ brand models

    @app.get(
        "/v1/models",
        summary="The brand's models for HE scoring: features and quantization, no weights",
    )
    def list_models(who: Reader) -> list[dict[str, Any]]:
        return [m.public_json() for m in store.list_models(who.tenant_id)]

    @app.get("/v1/models/{name}", summary="One brand model's public part (no weights)")
    def get_model(name: str, who: Reader) -> dict[str, Any]:
        found = store.get_model(who.tenant_id, name)
        if found is None:
            raise NotFound(f"this brand has no model {name!r}")
        return found.public_json()

    @app.post(
        "/v1/models",
        status_code=201,
        summary="Register a brand model (admin only; audited); the answer has no weights",
    )
    def add_model(new: NewModel, who: Admin) -> dict[str, Any]:
        record, replaced = register_model(
            store, who, new.name, json.dumps(new.model), replace=new.replace
        )
        return record.public_json(replaced=replaced)

    # ------------------------------------------------- ledger, audit, policy

    @app.get("/v1/ledger", summary="Epsilon spent per partnership, and every charge")
    def get_ledger(who: Reader) -> dict[str, Any]:
        tenant = store.get_tenant(who.tenant_id)
        assert tenant is not None
        names = _partner_names(store, who.tenant_id)
        return {
            "dp": tenant.policy.dp,
            "epsilon_budget": tenant.policy.epsilon_budget,
            "lookalike_dp": tenant.policy.lookalike_dp,
            "lookalike_epsilon_budget": tenant.policy.lookalike_epsilon_budget,
            "partnerships": [
                {
                    "partner": v.partner.name,
                    "partner_id": v.partner.partner_id,
                    "spent": v.epsilon_spent,
                    "remaining": v.epsilon_remaining,
                    "lookalike_spent": v.lookalike_epsilon_spent,
                    "lookalike_remaining": v.lookalike_epsilon_remaining,
                }
                for v in partner_views(store, who.tenant_id)
            ],
            "entries": [
                {
                    "partner": names.get(e.partnership.partner_id),
                    "partner_id": e.partnership.partner_id,
                    "purpose": e.purpose,
                    "report_id": e.report_id,
                    "epsilon": e.epsilon,
                    "at": e.at.isoformat(),
                }
                for e in store.ledger(who.tenant_id)
            ],
        }

    @app.get("/v1/audit", summary="The tenant's audit log, oldest first (or one partner's)")
    def get_audit(
        who: Reader,
        partner: Annotated[str | None, Query(description="only this partner's entries")] = None,
    ) -> list[dict[str, Any]]:
        names = _partner_names(store, who.tenant_id)
        only = None
        if partner is not None:
            only = next((pid for pid, name in names.items() if name == partner), None)
            if only is None:
                raise NotFound(f"this tenant has no partner named {partner!r}")
        return [
            {
                "role": e.role,
                "partner": names.get(e.partner_id or ""),
                "action": e.action,
                "detail": e.detail,
                "at": e.at.isoformat() if e.at else None,
            }
            for e in store.audit_log(who.tenant_id, only)
        ]

    @app.get("/v1/policy", summary="The tenant's privacy policy")
    def get_policy(who: Reader) -> dict[str, Any]:
        tenant = store.get_tenant(who.tenant_id)
        assert tenant is not None
        return tenant.policy.as_dict()

    @app.put("/v1/policy", summary="Change the tenant's policy (admin only; audited)")
    def put_policy(changes: PolicyChanges, who: Admin) -> dict[str, Any]:
        return change_policy(store, who, changes).as_dict()

    # ------------------------------------------------------------------ partners

    @app.get("/v1/partners", summary="The tenant's media partners, their policy and budget")
    def list_partners(who: Reader) -> list[dict[str, Any]]:
        return [v.as_dict() for v in partner_views(store, who.tenant_id)]

    @app.post(
        "/v1/partners",
        status_code=201,
        summary="Add a media partner (admin only): its token is in the answer, once",
    )
    def add_partner(new: NewPartner, who: Admin) -> dict[str, Any]:
        overrides = PolicyChanges(
            sessions_per_day=new.sessions_per_day, min_partner_records=new.min_partner_records
        )
        view, token = create_partner(store, who, new.name, overrides)
        return {"partner": view.as_dict(), "token": token}

    @app.get("/v1/partners/{name}", summary="One media partner, its policy and budget")
    def get_partner(name: str, who: Reader) -> dict[str, Any]:
        found = store.find_partner(who.tenant_id, name)
        if found is None:
            raise NotFound(f"this tenant has no partner named {name!r}")
        return partner_view(store, who.tenant_id, found).as_dict()

    @app.put(
        "/v1/partners/{name}/policy",
        summary="Change a partner's overrides: sessions_per_day, min_partner_records (admin)",
    )
    def put_partner_policy(name: str, changes: PolicyChanges, who: Admin) -> dict[str, Any]:
        change_policy(store, who, changes, partner=name)
        found = store.find_partner(who.tenant_id, name)
        assert found is not None
        return partner_view(store, who.tenant_id, found).as_dict()

    # ---------------------------------------------------------------- dashboard

    def dashboard_page(
        request: Request,
        report_id: str,
        api_path: str,
        kind: PageKind,
        embed: Callable[[Principal], dict[str, Any]],
    ) -> HTMLResponse:
        if not REPORT_ID.fullmatch(report_id):
            raise HTTPException(404, f"no {kind.noun} {report_id!r}")
        embedded = None
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "bearer":
                raise HTTPException(
                    401, "send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
                )
            who = _reader(
                _principal(
                    request, HTTPAuthorizationCredentials(scheme="Bearer", credentials=credentials)
                )
            )
            embedded = embed(who)
        nonce = secrets.token_urlsafe(16)
        page = render_page(
            report_id=report_id,
            report_url=f"{api_path}/{report_id}",
            nonce=nonce,
            embedded=embedded,
            kind=kind,
        )
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": (
                    f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}';"
                    " connect-src 'self'; img-src 'self' data:; base-uri 'none';"
                    " form-action 'none'; frame-ancestors 'none'"
                ),
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    page_auth = (
        "Open with `#token=<analyst token>` (preferred: never sent to the server),"
        " `?token=` (the page strips it; this server keeps it out of its logs, proxies may"
        " not) or an `Authorization: Bearer` header (the server embeds the data)."
    )

    @app.get(
        "/dashboard/reports/{report_id}",
        response_class=HTMLResponse,
        summary="Report dashboard (HTML)",
        description=page_auth,
    )
    def dashboard(report_id: str, request: Request, token: DashboardToken = None) -> HTMLResponse:
        del token  # the page's script reads it and fetches the report with it
        return dashboard_page(
            request,
            report_id,
            "/v1/reports",
            ATTRIBUTION,
            lambda who: report_json(_find_report(store, who, report_id)),
        )

    @app.get(
        "/dashboard/lookalikes/{package_id}",
        response_class=HTMLResponse,
        summary="Lookalike package dashboard: the tier curve (HTML)",
        description=page_auth,
    )
    def lookalike_dashboard(
        package_id: str, request: Request, token: DashboardToken = None
    ) -> HTMLResponse:
        del token
        return dashboard_page(
            request,
            package_id,
            "/v1/lookalikes",
            LOOKALIKE,
            lambda who: _find_lookalike(store, who, package_id).report.model_dump(mode="json"),
        )

    return app
