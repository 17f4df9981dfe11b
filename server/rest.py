"""The brand node's REST API (FastAPI): thin routes over the store.

Every route authenticates the bearer token and only ever reads the token's
own tenant; another tenant's object is indistinguishable from a missing one.
"""

from __future__ import annotations

from typing import Annotated, Any

from cleanroom.server.store import AudienceRecord, Principal, SessionRecord, SqlStore
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def _audience_json(a: AudienceRecord) -> dict[str, Any]:
    return {
        "audience_id": a.audience_id,
        "name": a.name,
        "records": a.records,
        "elements": a.elements,
        "duplicates": a.duplicates,
        "elements_by_type": a.elements_by_type,
        "created_at": a.created_at.isoformat(),
    }


def _session_json(s: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
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


def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    store: SqlStore = request.app.state.store
    found = store.authenticate(header.removeprefix("Bearer ").strip())
    if found is None:
        raise HTTPException(401, "invalid bearer token")
    return found


Auth = Annotated[Principal, Depends(_principal)]


def create_app(store: SqlStore) -> FastAPI:
    app = FastAPI(title="cleanroom brand node", version="0.1.0")
    app.state.store = store

    @app.exception_handler(HTTPException)
    async def http_problem(_request: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, "request failed", str(exc.detail))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/audiences")
    def list_audiences(who: Auth) -> list[dict[str, Any]]:
        return [_audience_json(a) for a in store.list_audiences(who.tenant_id)]

    @app.get("/v1/audiences/{name}")
    def get_audience(name: str, who: Auth) -> dict[str, Any]:
        found = store.get_audience(who.tenant_id, name)
        if found is None:
            raise HTTPException(404, f"no audience named {name!r}")
        return _audience_json(found)

    @app.get("/v1/sessions")
    def list_sessions(who: Auth) -> list[dict[str, Any]]:
        return [_session_json(s) for s in store.list_sessions(who.tenant_id)]

    return app
