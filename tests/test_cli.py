"""The command line as a user runs it: real processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from tests.helpers import eventually, plaintext_match

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


def cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"cleanroom {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("cli")
    data_dir = root / "node"
    created = json.loads(
        cli("tenant", "create", "acme", "--data-dir", str(data_dir), "--json").stdout
    )
    assert set(created) >= {"tenant", "tokens"}
    assert set(created["tokens"]) == {"admin", "partner", "analyst"}
    grpc_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--data-dir",
            str(data_dir),
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    eventually(up, timeout=60, what="cleanroom serve to come up")
    cli(
        "synth",
        "--out",
        str(root / "synth"),
        "--brand-rows",
        "300",
        "--partner-rows",
        "250",
        "--overlap",
        "0.4",
        "--seed",
        "3",
    )
    try:
        yield {
            "root": root,
            "server": f"127.0.0.1:{grpc_port}",
            "api": f"http://127.0.0.1:{http_port}",
            "tokens": created["tokens"],
            "brand": root / "synth" / "brand.csv",
            "partner": root / "synth" / "partner.csv",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_stops_its_worker_processes_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    cli("tenant", "create", "acme", "--data-dir", str(data_dir), "--json")
    http_port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--data-dir",
            str(data_dir),
            "--grpc-port",
            "0",
            "--http-port",
            str(http_port),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def workers() -> list[psutil.Process]:
            try:
                return psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return []

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        eventually(up, timeout=60, what="cleanroom serve to come up")
        children = workers()
        assert len(children) >= 2  # the crypto worker processes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        eventually(
            lambda: not [c for c in children if c.is_running() and c.status() != "zombie"],
            timeout=30,
            what="the worker processes to exit with the node",
        )
    finally:
        if proc.poll() is None:
            proc.kill()


def test_upload_match_overlap_through_the_cli(served: dict[str, object], tmp_path: Path) -> None:
    tokens = served["tokens"]
    assert isinstance(tokens, dict)
    server = str(served["server"])
    common = ["--id-columns", "email,phone,maid", "--default-region", "US"]
    upload = json.loads(
        cli(
            "audience",
            "upload",
            "--server",
            server,
            "--token",
            tokens["admin"],
            "--name",
            "crm",
            "--file",
            str(served["brand"]),
            *common,
            "--json",
        ).stdout
    )
    assert upload["rows_read"] == 300
    assert upload["audience"]["elements"] > 0
    assert {
        "rows_accepted",
        "rows_rejected",
        "invalid_identifiers",
        "identifiers",
        "duplicates",
    } <= set(upload)

    def match_into(out: Path, *extra: str) -> dict[str, Any]:
        command = ["partner", "match", "--server", server, "--token", tokens["partner"]]
        command += ["--audience", "crm", "--file", str(served["partner"]), *common]
        return json.loads(cli(*command, "--out", str(out), *extra, "--json").stdout)  # type: ignore[no-any-return]

    out = tmp_path / "matched.csv"
    match = match_into(out)
    result = pd.read_csv(out, dtype=str, keep_default_na=False)
    brand = pd.read_csv(served["brand"], dtype=str, keep_default_na=False)
    partner = pd.read_csv(served["partner"], dtype=str, keep_default_na=False)
    expected = plaintext_match(
        brand, partner, parse_id_columns("email,phone,maid"), NormalizeOptions("US")
    )
    assert result["matched_on"].tolist() == expected
    assert list(result.columns) == [*partner.columns, "matched", "matched_on"]
    assert match["matched"] == sum(1 for e in expected if e)
    assert match["protocol"] == "kkrt"  # the default
    # The same file matched by ECDH: the same output, byte for byte.
    ecdh_out = tmp_path / "matched-ecdh.csv"
    ecdh = match_into(ecdh_out, "--protocol", "ecdh")
    assert ecdh["protocol"] == "ecdh"
    assert ecdh_out.read_bytes() == out.read_bytes()
    assert ecdh["matched_on"] == match["matched_on"]
    # And with the partner's crypto on a Dask cluster of its own.
    dask_out = tmp_path / "matched-dask.csv"
    on_dask = match_into(dask_out, "--protocol", "ecdh", "--dask-scheduler", "local:1")
    assert dask_out.read_bytes() == out.read_bytes()
    assert on_dask["matched_on"] == match["matched_on"]
    # With everything past 0 MiB in files under --work-dir: created for them (nothing
    # else makes it), empty afterwards, and the same output.
    for protocol in ("ecdh", "kkrt"):
        work, spilled_out = tmp_path / f"work-{protocol}" / "nested", tmp_path / f"{protocol}.csv"
        spilled = match_into(
            spilled_out, "--protocol", protocol, "--work-dir", str(work), "--spill-mb", "0"
        )
        assert work.is_dir() and list(work.iterdir()) == []
        assert spilled_out.read_bytes() == out.read_bytes()
        assert spilled["matched_on"] == match["matched_on"]

    overlap = json.loads(
        cli(
            "partner",
            "overlap",
            "--server",
            server,
            "--token",
            tokens["partner"],
            "--audience",
            "crm",
            "--file",
            str(served["partner"]),
            *common,
            "--json",
        ).stdout
    )
    assert overlap["intersection"] == match["matched"]

    # The analyst reads through the REST API; only its own tenant.
    api = str(served["api"])
    listed = httpx.get(
        f"{api}/v1/audiences", headers={"authorization": f"Bearer {tokens['analyst']}"}
    ).json()
    assert [a["name"] for a in listed] == ["crm"]
    sessions = httpx.get(
        f"{api}/v1/sessions", headers={"authorization": f"Bearer {tokens['analyst']}"}
    ).json()
    assert {s["protocol"] for s in sessions} == {"match", "cardinality"}
    missing = httpx.get(f"{api}/v1/audiences")
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_cli_errors_are_one_clear_line(served: dict[str, object], tmp_path: Path) -> None:
    tokens = served["tokens"]
    assert isinstance(tokens, dict)
    server = str(served["server"])
    bad = cli(
        "audience",
        "upload",
        "--server",
        server,
        "--token",
        tokens["admin"],
        "--name",
        "x",
        "--file",
        str(served["brand"]),
        "--id-columns",
        "email,fax_number:phone",
        check=False,
    )
    assert bad.returncode == 1
    assert "fax_number" in bad.stderr and "Traceback" not in bad.stderr
    unlabelled = cli(
        "audience",
        "upload",
        "--server",
        server,
        "--token",
        tokens["admin"],
        "--name",
        "x",
        "--file",
        str(served["brand"]),
        "--id-columns",
        "email",
        "--label-column",
        "tier",
        check=False,
    )
    assert unlabelled.returncode == 1
    assert "--label-column and --positive go together" in unlabelled.stderr

    denied = cli(
        "partner",
        "overlap",
        "--server",
        server,
        "--token",
        "nope",
        "--audience",
        "crm",
        "--file",
        str(served["partner"]),
        "--id-columns",
        "email",
        check=False,
    )
    assert denied.returncode == 1
    assert "UNAUTHENTICATED" in denied.stderr and "Traceback" not in denied.stderr

    missing = cli(
        "partner",
        "match",
        "--server",
        server,
        "--token",
        tokens["partner"],
        "--audience",
        "crm",
        "--file",
        str(tmp_path / "none.csv"),
        "--id-columns",
        "email",
        "--out",
        str(tmp_path / "o.csv"),
        check=False,
    )
    assert missing.returncode == 1 and "none.csv" in missing.stderr


def test_certs_command_writes_the_files(tmp_path: Path) -> None:
    cli("certs", "--out", str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    }


def test_attribution_through_the_cli(served: dict[str, object], tmp_path: Path) -> None:
    from cleanroom.federated.attribution.synth import synthesize_attribution

    tokens = served["tokens"]
    assert isinstance(tokens, dict)
    server = str(served["server"])
    synth = synthesize_attribution(
        tmp_path,
        customers=200,
        conversions=300,
        partner_users=250,
        exposure_rows=900,
        campaigns=2,
        seed=5,
        days=15,
    )
    policy = json.loads(
        cli(
            "policy",
            "set",
            "--server",
            server,
            "--token",
            tokens["admin"],
            "--aggregation-threshold",
            "0",
        ).stdout
    )
    assert policy["aggregation_threshold"] == 0 and policy["dp"] == "off"
    denied = cli(
        "policy",
        "set",
        "--server",
        server,
        "--token",
        tokens["analyst"],
        "--dp",
        "laplace",
        check=False,
    )
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    bad = cli(
        "policy",
        "set",
        "--server",
        server,
        "--token",
        tokens["admin"],
        "--dp",
        "fuzzy",
        check=False,
    )
    assert bad.returncode == 1 and "dp must be one of" in bad.stderr

    uploaded = json.loads(
        cli(
            "conversions",
            "upload",
            "--server",
            server,
            "--token",
            tokens["admin"],
            "--name",
            "sales",
            "--file",
            str(synth.conversions_path),
            "--id-columns",
            "email,phone",
            "--customer-column",
            "customer_id",
            "--time-column",
            "ts",
            "--value-column",
            "value",
            "--default-region",
            "US",
            "--json",
        ).stdout
    )
    assert uploaded["events"] == 300
    attribute = [
        *("partner", "attribute", "--server", server, "--token", tokens["partner"]),
        *("--conversions", "sales", "--exposures", str(synth.exposures_path)),
        *("--id-columns", "email,phone,maid", "--default-region", "US"),
    ]
    attributed = json.loads(
        cli(
            *attribute,
            *("--user-column", "user_id", "--spend", str(synth.spend_path)),
            *("--click-window", "7", "--view-window", "1", "--json"),
        ).stdout
    )
    report_id = attributed["report_id"]
    api = str(served["api"])
    shown = json.loads(
        cli(
            "report",
            "show",
            report_id,
            "--api",
            api,
            "--token",
            tokens["analyst"],
            "--format",
            "json",
        ).stdout
    )
    assert shown["report_id"] == report_id
    assert set(shown) >= {"report_id", "windows", "campaigns"}
    assert shown["windows"] == {"click_days": 7, "view_days": 1}
    keys = {
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
    assert all(keys <= set(c) for c in shown["campaigns"])
    csv_text = cli(
        "report", "show", report_id, "--api", api, "--token", tokens["analyst"], "--format", "csv"
    ).stdout
    assert "campaign_id" in csv_text.splitlines()[0] and len(csv_text.splitlines()) == 1 + len(
        shown["campaigns"]
    )
    show = ("report", "show", report_id, "--api", api, "--token", tokens["analyst"])
    table = cli(*show, env={"COLUMNS": "80"}).stdout
    assert report_id in table
    # Readable at 80 columns: no line wider, every campaign id whole, the numbers there.
    assert max(len(line) for line in table.splitlines()) <= 80
    for c in shown["campaigns"]:
        assert c["campaign_id"] in table
        assert f"{c['exposed']['users']:,}" in table
    assert "…" not in table
    wide = cli(*show, "--wide", env={"COLUMNS": "200"}).stdout
    assert all(c["campaign_id"] in wide for c in shown["campaigns"]) and "…" not in wide
    missing = cli("report", "show", "nope", "--api", api, "--token", tokens["analyst"], check=False)
    assert missing.returncode == 1 and "404" in missing.stderr
    # Without --json: progress on stderr, the report id on stdout. Its files (everything
    # past 0 MiB) under --work-dir, which is created for them and left empty.
    work = tmp_path / "attribution-work"
    plain = cli(*attribute, "--view-window", "2", "--work-dir", str(work), "--spill-mb", "0")
    [second] = re.findall(r"report ([0-9a-f]{32})", plain.stdout)
    assert second != report_id
    assert work.is_dir() and list(work.iterdir()) == []


def _healthy(http_port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).is_success
    except httpx.HTTPError:
        return False


def _grpc_serving(grpc_port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_serve_takes_its_settings_from_the_environment_unless_a_flag_says_otherwise(
    tmp_path: Path,
) -> None:
    """CLEANROOM_* variables configure `cleanroom serve`; a flag given wins over its variable;
    flags not given do not override anything (their defaults live in ServerSettings)."""
    data_dir = tmp_path / "from-env"
    grpc_port, env_http, flag_http = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "CLEANROOM_DATA_DIR": str(data_dir),
        "CLEANROOM_GRPC_PORT": str(grpc_port),
        "CLEANROOM_HTTP_PORT": str(env_http),
        "CLEANROOM_WORKERS": "1",
    }
    created = subprocess.run(
        [*CLI, "tenant", "create", "acme", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    assert json.loads(created.stdout)["name"] == "acme"
    assert (data_dir / "cleanroom.db").is_file()  # tenant create honours the variable too
    proc = subprocess.Popen(
        [*CLI, "--log-format", "text", "serve", "--http-port", str(flag_http)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
            return _healthy(flag_http)

        eventually(up, timeout=60, what="cleanroom serve to come up on the flag's port")
        assert _grpc_serving(grpc_port)  # the variable's gRPC port, not the default 50051
        assert not _healthy(env_http)  # the flag won over CLEANROOM_HTTP_PORT
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    logged = proc.stderr.read() if proc.stderr else ""
    warning = next(line for line in logged.splitlines() if "WITHOUT TLS" in line)
    assert "WARNING" in warning and not warning.lstrip().startswith("{")  # text, not JSON
    bad = subprocess.run(
        [*CLI, "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "CLEANROOM_GRPC_PORT": "not-a-port"},
    )
    assert bad.returncode == 1
    assert "grpc_port" in bad.stderr and "Traceback" not in bad.stderr


def test_a_bad_dask_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    cli("tenant", "create", "acme", "--data-dir", str(data_dir), "--json")
    result = cli(
        "serve", "--data-dir", str(data_dir), "--grpc-port", "0", "--http-port", "0",
        "--dask-scheduler", "local:0", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "local:N needs N from 1" in result.stderr
