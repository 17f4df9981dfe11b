"""Token rotation: the new token works at once, the old one fails on every transport."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cleanroom.client.scoring import list_models
from cleanroom.client.sdk import ClientError, Connection
from cleanroom.proto.errors import InvalidInput
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.store import Principal, Role, SqlStore
from cleanroom.server.tenants import rotate_token
from tests.conftest import provisioned

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


def rotate(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "token", "rotate", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_rotated_token_is_revoked_everywhere_at_once(tmp_path: Path) -> None:
    settings, tokens = provisioned(tmp_path / "node")
    with BrandNodeThread(settings) as node:
        assert node.ports is not None
        http = f"http://127.0.0.1:{node.ports.http}"

        def rest(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.get(f"{http}/v1/sessions", headers=headers).status_code

        def grpc_ok(token: str) -> bool:
            try:
                list_models(Connection(node.target, token))
                return True
            except ClientError as exc:
                assert exc.code == "UNAUTHENTICATED", exc
                return False

        old = tokens[Role.PARTNER]
        assert rest(old) == 200 and grpc_ok(old)
        done = rotate(settings.data_dir, "--role", "partner", "--partner", "default", "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["revoked"] == 1 and result["token"] != old
        assert rest(old) == 401 and not grpc_ok(old)
        assert rest(result["token"]) == 200 and grpc_ok(result["token"])
        # The other roles' tokens are untouched; an analyst token rotates the same way.
        assert rest(tokens[Role.ANALYST]) == 200 and grpc_ok(tokens[Role.ADMIN])
        done = rotate(settings.data_dir, "--role", "analyst", "--json")
        assert done.returncode == 0, done.stderr
        assert rest(tokens[Role.ANALYST]) == 401
        assert rest(json.loads(done.stdout)["token"]) == 200
        bad = rotate(settings.data_dir, "--role", "partner")
        assert bad.returncode != 0 and "name it with --partner" in bad.stderr
        bad = rotate(settings.data_dir, "--role", "owner")
        assert bad.returncode != 0 and "--role is admin, partner or analyst" in bad.stderr
    store = SqlStore(settings.resolved_database_url())
    try:
        tenant = store.find_tenant("acme")
        assert tenant is not None
        rotations = [e for e in store.audit_log(tenant.tenant_id) if e.action == "token.rotate"]
        assert [e.detail["role"] for e in rotations] == ["partner", "analyst"]
        assert old not in json.dumps([e.detail for e in rotations])
    finally:
        store.close()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.ANALYST])
def test_a_partner_name_only_goes_with_a_partner_token(tmp_path: Path, role: Role) -> None:
    data_dir = tmp_path / "node"
    subprocess.run(
        [*CLI, "tenant", "create", "acme", "--data-dir", str(data_dir), "--json"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    done = rotate(data_dir, "--role", role.value, "--partner", "default")
    assert done.returncode != 0 and "names a partner's token" in done.stderr


def test_a_grace_period_keeps_the_old_token_working_until_it_ends(tmp_path: Path) -> None:
    now = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    store = SqlStore(f"sqlite:///{tmp_path / 'node.db'}", clock=lambda: now[0])
    try:
        tenant, tokens = store.provision_tenant("acme")
        admin = Principal(tenant.tenant_id, Role.ADMIN)
        old = tokens[Role.PARTNER]
        new, revoked = rotate_token(store, admin, Role.PARTNER, "default", timedelta(hours=1))
        assert revoked == 1
        assert store.authenticate(old) == store.authenticate(new) is not None
        # A second rotation inside the grace period cannot extend the first one's.
        newer, _ = rotate_token(store, admin, Role.PARTNER, "default", timedelta(hours=5))
        now[0] += timedelta(minutes=59)
        assert store.authenticate(old) is not None
        now[0] += timedelta(minutes=2)
        assert store.authenticate(old) is None  # over: refused, like any revoked token
        assert store.authenticate(new) is not None  # its own grace runs to 5 h
        assert store.authenticate(newer) is not None
        rotate_token(store, admin, Role.PARTNER, "default")  # no grace: all old ones go now
        assert store.authenticate(new) is None and store.authenticate(newer) is None
        with pytest.raises(InvalidInput, match="grace period"):
            rotate_token(store, admin, Role.PARTNER, "default", timedelta(days=31))
        grace = [e.detail["grace_seconds"] for e in store.audit_log(tenant.tenant_id)
                 if e.action == "token.rotate"]  # fmt: skip
        assert grace == [3600.0, 18000.0, 0.0]
    finally:
        store.close()


def test_the_cli_rotates_with_a_grace_period(tmp_path: Path) -> None:
    settings, tokens = provisioned(tmp_path / "node")
    done = rotate(settings.data_dir, "--role", "analyst", "--grace-seconds", "600", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["grace_seconds"] == 600 and result["revoked"] == 1
    store = SqlStore(settings.resolved_database_url())
    try:
        assert store.authenticate(tokens[Role.ANALYST]) is not None  # still inside its grace
        assert store.authenticate(result["token"]) is not None
    finally:
        store.close()
