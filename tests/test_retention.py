"""Retention: a tenant's ``retention_days`` purges its audiences, conversion sets, reports,
packages and session records older than that, with every file, at start-up and on the
node's daily sweep (``purge_expired``, here called with a chosen "now"); audited; other
tenants and newer data are untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from cleanroom.server.datasets import open_dataset
from cleanroom.server.lifecycle import RETENTION_ACTOR, purge_expired
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.store import Role, SessionRecord, SqlStore
from tests.conftest import provisioned
from tests.reports import sample_lookalike, sample_report
from tests.test_lifecycle import files_holding, upload_audience_and_conversions

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


def test_data_older_than_the_retention_is_purged_with_its_files(tmp_path: Path) -> None:
    settings, tokens = provisioned(tmp_path / "node")
    store = SqlStore(settings.resolved_database_url())
    other, _ = store.provision_tenant("globex")  # no retention policy: keeps everything
    with BrandNodeThread(settings) as node:
        assert node.ports is not None
        upload_audience_and_conversions(node.target, tokens[Role.ADMIN], tmp_path, "crm", "sales")
        done = subprocess.run(
            [*CLI, "policy", "set", "--server", node.target, "--token", tokens[Role.ADMIN],
             "--retention-days", "30"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["retention_days"] == 30
        policy = httpx.get(
            f"http://127.0.0.1:{node.ports.http}/v1/policy",
            headers={"Authorization": f"Bearer {tokens[Role.ANALYST]}"},
        ).json()
        assert policy["retention_days"] == 30
    tenant = store.find_tenant("acme")
    assert tenant is not None
    tid = tenant.tenant_id
    report = store.put_report(sample_report(tid)).report_id
    package = store.put_report(sample_lookalike(tid)).report_id
    kept_elsewhere = store.put_report(sample_report(other.tenant_id)).report_id
    now = datetime.now(UTC)
    store.create_session(SessionRecord("d" * 32, tid, "x" * 32, "match", "done", 9, 9, 9, now))
    store.create_session(SessionRecord("r" * 32, tid, "x" * 32, "match", "running", 9, 9, 9, now))
    audience = store.get_audience(tid, "crm")
    conversions = store.get_conversion_set(tid, "sales")
    assert audience is not None and conversions is not None
    stored = settings.data_dir / audience.path
    point = open_dataset(stored).read_all(["point"]).column("point")[0].as_py()
    conversion_set = settings.data_dir / conversions.path
    assert open_dataset(conversion_set).parts  # one partitioned set: identifiers and events

    # 29 days on, only the sample report and package (made days before "now") are old enough.
    early = purge_expired(store, settings.data_dir, now + timedelta(days=29))
    assert sorted(early[tid]["reports"]) == sorted([report, package])
    assert early[tid]["audiences"] == [] and early[tid]["sessions"] == 0
    assert store.get_audience(tid, "crm") is not None and stored.exists()

    later = purge_expired(store, settings.data_dir, now + timedelta(days=31))
    assert other.tenant_id not in later
    gone = later[tid]
    assert gone["audiences"] == ["crm"] and gone["conversions"] == ["sales"]
    assert gone["reports"] == []  # already gone
    assert gone["sessions"] == 1 and gone["files_left"] == []
    assert store.get_audience(tid, "crm") is None
    assert store.get_conversion_set(tid, "sales") is None
    assert store.get_report(tid, report) is None and store.get_lookalike(tid, package) is None
    assert [s.session_id for s in store.list_sessions(tid)] == ["r" * 32]  # running stays
    assert store.get_report(other.tenant_id, kept_elsewhere) is not None
    assert not stored.exists() and not conversion_set.exists()
    assert files_holding(settings.data_dir, point) == []
    assert (
        point not in Path(settings.resolved_database_url().removeprefix("sqlite:///")).read_bytes()
    )
    purges = [e for e in store.audit_log(tid) if e.action == "retention.purge"]
    assert len(purges) == 2
    assert {e.role for e in purges} == {RETENTION_ACTOR}
    assert all(e.detail["retention_days"] == 30 for e in purges)
    store.close()


def test_the_node_purges_at_start_up(tmp_path: Path) -> None:
    settings, _ = provisioned(tmp_path / "node")
    store = SqlStore(settings.resolved_database_url())
    tenant = store.find_tenant("acme")
    assert tenant is not None
    from cleanroom.server.policy import PolicyChanges
    from cleanroom.server.store import Principal
    from cleanroom.server.tenants import change_policy

    change_policy(
        store, Principal(tenant.tenant_id, Role.ADMIN), PolicyChanges(retention_days=7), None
    )
    old = datetime(2026, 1, 1, tzinfo=UTC)
    store.create_session(
        SessionRecord("o" * 32, tenant.tenant_id, "x" * 32, "match", "done", 9, 9, 9, old)
    )
    store.close()
    with BrandNodeThread(settings):
        pass
    store = SqlStore(settings.resolved_database_url())
    try:
        assert store.list_sessions(tenant.tenant_id) == []
        purges = [e for e in store.audit_log(tenant.tenant_id) if e.action == "retention.purge"]
        assert [e.detail["sessions"] for e in purges] == [1]
    finally:
        store.close()
