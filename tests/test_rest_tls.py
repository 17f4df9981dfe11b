"""With a TLS directory the REST API and dashboard are HTTPS (the node's certificate,
HSTS), over real sockets; marketers verify it against the node's CA."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cleanroom.server.node import BrandNodeThread
from cleanroom.server.store import Role
from cleanroom.server.tls import make_certificates
from tests.conftest import provisioned

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("rest-tls")
    certs = root / "certs"
    make_certificates(certs)
    settings, tokens = provisioned(root / "node", tls_dir=certs)
    with BrandNodeThread(settings) as node:
        assert node.ports is not None
        yield {"port": node.ports.http, "certs": certs, "analyst": tokens[Role.ANALYST]}


def test_rest_is_https_with_hsts(tls_node: dict[str, object]) -> None:
    certs = tls_node["certs"]
    assert isinstance(certs, Path)
    verify = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    base = f"https://127.0.0.1:{tls_node['port']}"
    resp = httpx.get(f"{base}/healthz", verify=verify)
    assert resp.status_code == 200
    assert resp.headers["strict-transport-security"] == "max-age=31536000"
    listed = httpx.get(
        f"{base}/v1/reports", headers={"Authorization": f"Bearer {tls_node['analyst']}"},
        verify=verify,
    )  # fmt: skip
    assert listed.status_code == 200 and listed.json() == []
    # Not plaintext, and not to a client that does not trust the node's CA.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_node['port']}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{base}/healthz", timeout=5)


def test_report_show_verifies_the_node_against_its_ca(tls_node: dict[str, object]) -> None:
    api = f"https://127.0.0.1:{tls_node['port']}"
    base = [*CLI, "report", "show", "0" * 32, "--api", api, "--token", str(tls_node["analyst"])]
    with_ca = subprocess.run(
        [*base, "--tls-dir", str(tls_node["certs"])], capture_output=True, text=True, timeout=120
    )
    assert with_ca.returncode != 0 and "HTTP 404" in with_ca.stderr  # verified, then refused
    without = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert without.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in without.stderr
