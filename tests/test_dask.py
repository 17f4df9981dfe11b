"""The crypto on real Dask ``LocalCluster``s, for both parties, over real gRPC.

Match (ECDH and KKRT), overlap and attribution on ``local:1``, ``local:2`` and ``local:3``
give exactly what local worker processes give, and the plaintext join; session keys live
in worker memory for the session only and never reach a worker's spill directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import httpx
import pandas as pd
import pytest
from distributed import Client, LocalCluster, Security
from distributed.diagnostics.plugin import WorkerPlugin

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.synth import synthesize
from cleanroom.client.attribution import (
    AttributionRequest,
    prepare_attribution,
    run_attribution,
)
from cleanroom.client.sdk import Connection, load_partner_set, run_psi, upload_audience
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.cluster import DaskExecutor, parse_workers
from cleanroom.matching.messages import Protocol, PsiMethod
from cleanroom.matching.partner import PartnerSession
from cleanroom.matching.workers import (
    CryptoPool,
    dst_for,
    hash_and_blind,
    installed_handles,
)
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import InvalidInput
from cleanroom.proto.transport import CA_CERT
from cleanroom.server.node import BrandNodeThread
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import Policy, Role, SqlStore
from cleanroom.server.tls import (
    CLUSTER_CERT,
    CLUSTER_KEY,
    make_certificates,
    make_cluster_certificates,
)
from tests.conftest import provisioned
from tests.helpers import assert_reports_equal, plaintext_match
from tests.test_attribution_e2e import plaintext as attribution_plaintext
from tests.test_attribution_e2e import upload as upload_sales

OPTIONS = NormalizeOptions(default_region="US")
COLUMNS = parse_id_columns("email,phone,maid")

pytestmark = pytest.mark.timeout(600)


@dataclasses.dataclass(frozen=True)
class Data:
    brand: Path
    partner: Path
    attribution: Any  # the attribution synth: conversions, exposures, spend


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("dask-data")
    match = synthesize(
        root / "match", brand_rows=300, partner_rows=260, overlap=0.4, seed=5, default_region="US"
    )
    attribution = synthesize_attribution(
        root / "attr",
        customers=150,
        conversions=240,
        partner_users=200,
        exposure_rows=700,
        campaigns=3,
        seed=4,
        days=15,
    )
    return Data(match.brand_path, match.partner_path, attribution)


@contextlib.contextmanager
def brand_node(root: Path, data: Data, dask_scheduler: str | None) -> Iterator[Any]:
    """A node (its crypto on ``dask_scheduler``, else local processes) holding the audience
    and the conversion set; yields (node thread, tokens)."""
    settings = ServerSettings(
        data_dir=root,
        grpc_port=0,
        http_port=0,
        workers=1,
        chunk_size=512,
        dask_scheduler=dask_scheduler,
    )
    root.mkdir(parents=True)
    store = SqlStore(settings.resolved_database_url())
    _, tokens = store.provision_tenant(
        "acme", Policy(min_partner_records=10, aggregation_threshold=0, sessions_per_day=1000)
    )
    store.close()
    with BrandNodeThread(settings) as node:
        admin = Connection(node.target, tokens[Role.ADMIN])
        asyncio.run(
            upload_audience(admin, name="crm", path=data.brand, id_columns=COLUMNS, options=OPTIONS)
        )
        upload_sales(admin, data.attribution)
        yield node, tokens


def answers(node: Any, tokens: dict[Role, str], pool: CryptoPool, data: Data) -> dict[str, Any]:
    """Every job's result, as the partner and the brand's report see them."""
    conn = Connection(node.target, tokens[Role.PARTNER])
    partner_set, _ = load_partner_set(data.partner, COLUMNS, OPTIONS)
    out: dict[str, Any] = {}
    for method in (PsiMethod.ECDH, PsiMethod.KKRT):
        run = asyncio.run(
            run_psi(conn, "crm", Protocol.MATCH, partner_set, pool=pool, method=method)
        )
        assert run.session.outcome is not None
        out[f"match_{method.value}"] = list(whole_array(run.session.outcome.matched_on))
    run = asyncio.run(run_psi(conn, "crm", Protocol.CARDINALITY, partner_set, pool=pool))
    assert run.result is not None
    out["overlap"] = run.result.intersection
    synth = data.attribution
    request = AttributionRequest(
        conversions="sales",
        exposures=synth.exposures_path,
        id_columns=COLUMNS,
        options=OPTIONS,
        spend=synth.spend_path,
    )
    report_id = asyncio.run(run_attribution(conn, prepare_attribution(request, pool.executor)))
    resp = httpx.get(
        f"http://127.0.0.1:{node.ports.http}/v1/reports/{report_id}",
        headers={"authorization": f"Bearer {tokens[Role.ANALYST]}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    out["report"] = resp.json()
    return out


def plaintext(data: Data) -> dict[str, Any]:
    brand = pd.read_csv(data.brand, dtype=str, keep_default_na=False)
    partner = pd.read_csv(data.partner, dtype=str, keep_default_na=False)
    matched = plaintext_match(brand, partner, COLUMNS, OPTIONS)
    report = attribution_plaintext(data.attribution, data.attribution.exposures_path)
    return {"matched": matched, "overlap": sum(1 for m in matched if m), "report": report}


def matched_types(matched_on: list[int]) -> list[str]:
    return [COLUMNS[i].id_type if i >= 0 else "" for i in matched_on]


@pytest.fixture(scope="module")
def with_processes(
    tmp_path_factory: pytest.TempPathFactory, data: Data, process_pool: CryptoPool
) -> dict[str, Any]:
    with brand_node(tmp_path_factory.mktemp("proc") / "node", data, None) as (node, tokens):
        return answers(node, tokens, process_pool, data)


def cluster_handles(executor: Any) -> dict[str, list[str]]:
    assert isinstance(executor, DaskExecutor)
    handles: dict[str, list[str]] = executor.client.run(installed_handles)
    return handles


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_both_parties_on_dask_give_the_process_pool_answers_and_the_plaintext_join(
    workers: int, data: Data, with_processes: dict[str, Any], tmp_path: Path
) -> None:
    address = f"local:{workers}"
    with (
        brand_node(tmp_path / "node", data, address) as (node, tokens),
        CryptoPool.dask(address) as pool,
    ):
        node_pool = node.node._pool
        assert node_pool is not None and node_pool.kind == "dask"
        assert node_pool.workers == workers and pool.workers == workers
        got = answers(node, tokens, pool, data)
        # Every session's keys went with it, on both clusters.
        for executor in (pool.executor, node_pool.executor):
            handles = cluster_handles(executor)
            assert len(handles) == workers
            assert all(h == [] for h in handles.values()), handles
    want = plaintext(data)
    for method in ("ecdh", "kkrt"):
        assert got[f"match_{method}"] == with_processes[f"match_{method}"]
        assert matched_types(got[f"match_{method}"]) == want["matched"]
    assert got["overlap"] == with_processes["overlap"] == want["overlap"] > 20
    assert_reports_equal(got["report"], with_processes["report"])
    assert_reports_equal(got["report"], want["report"])


class ArchiveSpills(WorkerPlugin):
    """Keeps a copy of every file a worker spills (Dask deletes them once read back), so a
    test can scan all that ever reached the spill directory."""

    def __init__(self, archive: str) -> None:
        self.archive = archive

    def setup(self, worker: Any) -> None:
        from distributed import spill

        archive = self.archive
        original = spill.AnyKeyFile.__setitem__
        if getattr(original, "archived", False):
            return

        def setitem(file: Any, key: Any, value: Any) -> None:
            original(file, key, value)
            frames = value if isinstance(value, list | tuple) else [value]
            blob = b"".join(bytes(memoryview(f)) for f in frames)
            with open(os.path.join(archive, f"{os.getpid()}-{os.urandom(8).hex()}"), "wb") as fh:
                fh.write(blob)

        setitem.archived = True  # type: ignore[attr-defined]
        spill.AnyKeyFile.__setitem__ = setitem  # type: ignore[method-assign]


def test_a_spilling_worker_never_writes_the_session_key(
    node_with_audience: Any, data: Data, tmp_path: Path
) -> None:
    node, tokens = node_with_audience
    archive = tmp_path / "spilled"
    archive.mkdir()
    # Spill everything a worker stores: every scattered chunk and every result.
    config = {
        "distributed.worker.memory.target": 1e-6,
        "distributed.worker.memory.spill": 1e-6,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    key = BlindingKey.generate()
    secret = key.secret_bytes()
    partner_set, _ = load_partner_set(data.partner, COLUMNS, OPTIONS)
    with dask.config.set(config), CryptoPool.dask("local:1") as pool:
        executor = pool.executor
        assert isinstance(executor, DaskExecutor)
        executor.client.register_plugin(ArchiveSpills(str(archive)), name="archive-spills")
        session = PartnerSession(
            audience="crm", protocol=Protocol.MATCH, data=partner_set, pool=pool, key=key
        )
        conn = Connection(node.target, tokens[Role.PARTNER])
        run = asyncio.run(
            run_psi(conn, "crm", Protocol.MATCH, partner_set, pool=pool, session=session)
        )
        assert run.session.outcome is not None
        assert cluster_handles(executor) and all(
            h == [] for h in cluster_handles(executor).values()
        )
    spilled = b"".join(p.read_bytes() for p in archive.iterdir())
    # The worker did spill: the partner's own digests (its scattered job inputs) are there.
    digests = partner_set.columns[0].digests
    assert digests[:32] in spilled and digests[-32:] in spilled
    assert secret not in spilled
    assert secret[::-1] not in spilled  # nor little-endian as an integer's bytes


@pytest.fixture(scope="module")
def node_with_audience(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Iterator[Any]:
    with brand_node(tmp_path_factory.mktemp("spill") / "node", data, None) as found:
        yield found


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("local:0", "N from 1"),
        ("local:x", "N from 1"),
        ("nowhere", "scheduler address"),
    ],
)
def test_bad_scheduler_addresses_are_clear_errors(address: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_workers(address)


def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InvalidInput, match="cannot connect"):
        DaskExecutor.start(f"tcp://127.0.0.1:{port}", tls=False, connect_seconds=2)


def test_a_tls_party_refuses_a_plaintext_scheduler() -> None:
    with pytest.raises(InvalidInput, match="its cluster must too"):
        DaskExecutor.start("tcp://127.0.0.1:1", tls=True)


def test_a_tls_scheduler_is_reached_with_the_clusters_own_certificate(tmp_path: Path) -> None:
    """A remote scheduler over TLS, with a CA of the cluster's own set in Dask's TLS
    settings; without them the party refuses to connect."""
    certs = tmp_path / "cluster-certs"
    make_cluster_certificates(certs, hosts=("localhost", "127.0.0.1"))
    ca, cert, key = (str(certs / n) for n in (CA_CERT, CLUSTER_CERT, CLUSTER_KEY))
    roles = ("scheduler", "worker", "client")
    security = Security(
        tls_ca_file=ca,
        **{f"tls_{role}_cert": cert for role in roles},
        **{f"tls_{role}_key": key for role in roles},
        require_encryption=True,
    )
    digests = os.urandom(32 * 300)
    secret = BlindingKey.generate().secret_bytes()
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with pytest.raises(InvalidInput, match="cleanroom certs --cluster"):
            CryptoPool.open(address, tls=True)  # no TLS settings: no certificate to show
        tls = {
            "distributed.comm.tls.ca-file": ca,
            "distributed.comm.tls.client.cert": cert,
            "distributed.comm.tls.client.key": key,
        }
        with dask.config.set(tls), CryptoPool.open(address, tls=True) as pool:
            assert pool.kind == "dask"

            async def blind() -> bytes:
                key = pool.key(secret)
                try:
                    return await pool.run(hash_and_blind, key, digests, dst_for("email"))
                finally:
                    pool.forget(key)

            assert asyncio.run(blind()) == hash_and_blind(secret, digests, dst_for("email"))


def test_a_tls_node_runs_its_local_cluster_over_tls(tmp_path: Path, data: Data) -> None:
    certs = tmp_path / "certs"
    make_certificates(certs, hosts=("localhost", "127.0.0.1"))
    settings, tokens = provisioned(tmp_path / "node", tls_dir=certs)
    settings = settings.model_copy(update={"dask_scheduler": "local:1", "workers": None})
    with BrandNodeThread(settings) as node:
        pool = node.node._pool if node.node else None
        assert pool is not None and isinstance(pool.executor, DaskExecutor)
        assert pool.executor.client.scheduler.address.startswith("tls://")
        assert node.ports is not None
        admin = Connection(f"localhost:{node.ports.grpc}", tokens[Role.ADMIN], certs)
        asyncio.run(
            upload_audience(admin, name="crm", path=data.brand, id_columns=COLUMNS, options=OPTIONS)
        )
        conn = Connection(f"localhost:{node.ports.grpc}", tokens[Role.PARTNER], certs)
        partner_set, _ = load_partner_set(data.partner, COLUMNS, OPTIONS)
        with CryptoPool.open("local:1", tls=True) as partner_pool:
            run = asyncio.run(run_psi(conn, "crm", Protocol.MATCH, partner_set, pool=partner_pool))
    assert run.session.outcome is not None
    assert (
        matched_types(list(whole_array(run.session.outcome.matched_on)))
        == plaintext(data)["matched"]
    )


def test_close_works_with_dasks_own_executor() -> None:
    """``Client.get_executor()`` takes no ``cancel_futures``; closing a pool on it works."""
    with (
        LocalCluster(
            n_workers=1,
            processes=False,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        pool = CryptoPool(client.get_executor(), 1)
        assert pool.executor.submit(sum, [1, 2]).result() == 3
        assert pool.key(b"k" * 32) == b"k" * 32  # no install_key: the secret itself
        pool.close()
