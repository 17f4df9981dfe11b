"""Shared fixtures: real brand nodes on loopback, real worker pools."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleanroom.matching.workers import CryptoPool
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Policy, Role, SqlStore


@pytest.fixture(scope="session")
def process_pool() -> Iterator[CryptoPool]:
    with CryptoPool.processes(2) as pool:
        yield pool


@pytest.fixture
def thread_pool() -> Iterator[CryptoPool]:
    with ThreadPoolExecutor(2) as ex:
        yield CryptoPool(ex, 2)


@dataclass
class Node:
    thread: BrandNodeThread
    data_dir: Path
    db_url: str
    tokens: dict[str, dict[Role, str]]

    @property
    def target(self) -> str:
        return self.thread.target

    @property
    def http(self) -> str:
        assert self.thread.ports is not None
        return f"http://127.0.0.1:{self.thread.ports.http}"

    def store(self) -> SqlStore:
        return SqlStore(self.db_url)


def provisioned(
    data_dir: Path, tenant: str = "acme", tls_dir: Path | None = None
) -> tuple[ServerSettings, dict[Role, str]]:
    """Settings for a node on loopback over ``data_dir``, with one tenant provisioned."""
    config = ServerSettings(data_dir=data_dir, grpc_port=0, http_port=0, workers=1, tls_dir=tls_dir)
    config.data_dir.mkdir(parents=True)
    store = SqlStore(config.resolved_database_url())
    try:
        return config, store.provision_tenant(tenant)[1]
    finally:
        store.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A brand node with two tenants, 'acme' and 'globex', on loopback."""
    data_dir = tmp_path_factory.mktemp("node")
    settings = ServerSettings(
        data_dir=data_dir, grpc_port=0, http_port=0, workers=2, chunk_size=512
    )
    store = SqlStore(settings.resolved_database_url())
    tokens: dict[str, dict[Role, str]] = {}
    for name, minimum in (("acme", 20), ("globex", 20)):
        _, tokens[name] = store.provision_tenant(
            name, Policy(min_partner_records=minimum, sessions_per_day=1000)
        )
    store.close()
    with BrandNodeThread(settings) as thread:
        yield Node(thread, data_dir, settings.resolved_database_url(), tokens)
