"""The error vocabulary at both edges: gRPC status codes and HTTP problem responses.

Only the project's errors reach a client with their message; anything else
(a bug's ``ValueError`` included) is an internal error with a reference id,
whose details go to the brand node's log.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import grpc
import httpx
import pytest

from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto import errors as E
from cleanroom.server.grpc_api import STATUS_CODES, status_for
from cleanroom.server.rest import HTTP_STATUSES, http_status_for
from cleanroom.server.store import Role
from tests.conftest import Node

EXPECTED = [
    (E.InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT, 422),
    (E.ProtocolError("bad"), grpc.StatusCode.INVALID_ARGUMENT, 422),
    (E.Unauthenticated("bad"), grpc.StatusCode.UNAUTHENTICATED, 401),
    (E.PermissionDenied("bad"), grpc.StatusCode.PERMISSION_DENIED, 403),
    (E.NotFound("bad"), grpc.StatusCode.NOT_FOUND, 404),
    (E.AlreadyExists("bad"), grpc.StatusCode.ALREADY_EXISTS, 409),
    (E.FailedPrecondition("bad"), grpc.StatusCode.FAILED_PRECONDITION, 409),
    (E.PolicyViolation("bad"), grpc.StatusCode.FAILED_PRECONDITION, 409),
    (E.BudgetExceeded("bad"), grpc.StatusCode.FAILED_PRECONDITION, 409),
    (E.ResourceExhausted("bad"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (E.Aborted("bad"), grpc.StatusCode.ABORTED, 409),
]


@pytest.mark.parametrize(("exc", "code", "http"), EXPECTED, ids=lambda v: type(v).__name__)
def test_each_project_error_has_one_status_per_transport(
    exc: E.CleanroomError, code: grpc.StatusCode, http: int
) -> None:
    assert status_for(exc) == (code, "bad")
    assert http_status_for(exc) == http


def test_every_error_class_is_mapped_by_both_transports() -> None:
    classes = {getattr(E, name) for name in E.__all__} - {E.CleanroomError}
    assert {type(exc) for exc, _, _ in EXPECTED} == classes
    assert set(STATUS_CODES) == set(HTTP_STATUSES)


@pytest.mark.parametrize(
    "exc",
    [ValueError("secret detail"), TypeError("secret detail"), KeyError("secret detail")],
    ids=lambda e: type(e).__name__,
)
def test_anything_else_is_internal_with_a_reference(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cleanroom.server"):
        code, message = status_for(exc)
    assert code is grpc.StatusCode.INTERNAL
    assert "secret detail" not in message
    [ref] = re.findall(r"reference ([0-9a-f]{12})", message)
    [record] = [r for r in caplog.records if ref in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[1] is exc


def _raise(exc: Exception) -> Any:
    def raiser(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return raiser


def _list_audiences(node: Node, token: str) -> pb.ListAudiencesResponse:
    with grpc.insecure_channel(node.target) as channel:
        return pb_grpc.AudienceServiceStub(channel).ListAudiences(
            pb.ListAudiencesRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )


def test_a_bug_over_grpc_is_internal_with_a_reference_and_the_node_keeps_serving(
    node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = node.thread.node.store  # type: ignore[union-attr]
    token = node.tokens["acme"][Role.ADMIN]
    monkeypatch.setattr(store, "list_audiences", _raise(ValueError("secret detail")))
    with (
        caplog.at_level(logging.ERROR, logger="cleanroom.server"),
        pytest.raises(grpc.RpcError) as failed,
    ):
        _list_audiences(node, token)
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    details = failed.value.details() or ""
    assert "secret detail" not in details
    [ref] = re.findall(r"reference ([0-9a-f]{12})", details)
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert isinstance(_list_audiences(node, token), pb.ListAudiencesResponse)


def test_a_project_error_over_grpc_keeps_its_message(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = node.thread.node.store  # type: ignore[union-attr]
    monkeypatch.setattr(store, "list_audiences", _raise(E.NotFound("no such thing; try x")))
    with pytest.raises(grpc.RpcError) as failed:
        _list_audiences(node, node.tokens["acme"][Role.ADMIN])
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such thing; try x"


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (E.NotFound("no such thing; try x"), 404),
        (E.BudgetExceeded("spent 1 of 1"), 409),
        (E.InvalidInput("name is 1 to 200 characters"), 422),
        (E.ResourceExhausted("quota spent; renews at midnight"), 429),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_project_errors_over_rest_are_problem_responses(
    node: Node, monkeypatch: pytest.MonkeyPatch, exc: Exception, status: int
) -> None:
    store = node.thread.node.store  # type: ignore[union-attr]
    monkeypatch.setattr(store, "list_audiences", _raise(exc))
    resp = httpx.get(
        f"{node.http}/v1/audiences",
        headers={"authorization": f"Bearer {node.tokens['acme'][Role.ANALYST]}"},
    )
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["detail"] == str(exc)


def test_a_bug_over_rest_is_a_500_problem_with_a_reference(
    node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = node.thread.node.store  # type: ignore[union-attr]
    monkeypatch.setattr(store, "list_audiences", _raise(ValueError("secret detail")))
    headers = {"authorization": f"Bearer {node.tokens['acme'][Role.ANALYST]}"}
    with caplog.at_level(logging.ERROR, logger="cleanroom.server"):
        resp = httpx.get(f"{node.http}/v1/audiences", headers=headers)
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert "secret detail" not in resp.text
    ref = resp.json()["reference"]
    assert ref in resp.json()["detail"]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert httpx.get(f"{node.http}/v1/audiences", headers=headers).status_code == 200
