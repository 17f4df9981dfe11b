"""The brand node: wires storage, crypto workers, gRPC and HTTP together.

Nothing starts at import time. ``BrandNode.start`` builds everything for one
event loop; ``BrandNodeThread`` runs a node on a background thread for the
demo and the end-to-end tests (real sockets, real processes).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cleanroom.matching.workers import CryptoPool, default_workers
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc
from cleanroom.proto.errors import InvalidInput
from cleanroom.proto.transport import SERVER_CERT, SERVER_KEY, is_local, load_tls, server_options
from cleanroom.server.admission import Admission, default_max_sessions
from cleanroom.server.attribution import AttributionService
from cleanroom.server.audiences import AudienceService
from cleanroom.server.files import WORK_DIR, remove_stale_temporaries
from cleanroom.server.grpc_api import (
    AttributionServicer,
    AudienceServicer,
    DecodeErrors,
    LookalikeServicer,
    MatchingServicer,
)
from cleanroom.server.lifecycle import purge_expired
from cleanroom.server.lookalike import LookalikeService, ScoringService
from cleanroom.server.matching import MatchingService
from cleanroom.server.settings import ServerSettings
from cleanroom.server.store import SqlStore
from cleanroom.server.tenants import interrupt_unfinished

log = logging.getLogger("cleanroom.server")

RETENTION_SWEEP_SECONDS = 24 * 3600.0  # retention is in days: one sweep a day suffices


@dataclass
class Ports:
    grpc: int
    http: int | None


class BrandNode:
    def __init__(self, settings: ServerSettings, *, pool: CryptoPool | None = None) -> None:
        self.settings = settings
        self._own_pool = pool is None
        self._pool = pool
        self.store: SqlStore | None = None
        self._server: grpc.aio.Server | None = None
        self._http: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.matching: MatchingService | None = None
        self.admission: Admission | None = None
        self.ports: Ports | None = None

    async def start(self) -> Ports:
        s = self.settings
        if s.tls_dir is None and not is_local(s.host):
            raise InvalidInput(
                f"refusing to serve plaintext on {s.host}: pass --tls-dir (see `cleanroom certs`)"
                " or bind to 127.0.0.1"
            )
        if s.tls_dir is None:
            log.warning("serving gRPC WITHOUT TLS on %s (localhost only)", s.host)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("audiences", "conversions"):  # uploads a dead node left half-written
            remove_stale_temporaries(s.data_dir / kind)
        shutil.rmtree(s.data_dir / WORK_DIR, ignore_errors=True)  # sessions a dead node left
        self.store = SqlStore(s.resolved_database_url())
        interrupted = interrupt_unfinished(self.store, datetime.now(UTC))
        if interrupted:
            log.warning("%d session(s) the last node left running: interrupted", len(interrupted))
        await self._purge_expired()
        if self._pool is None:
            self._pool = await asyncio.to_thread(
                CryptoPool.open, s.dask_scheduler, s.workers, tls=s.tls_dir is not None
            )
            log.info("crypto on %s (%d workers)", self._pool.kind, self._pool.workers)
        audiences = AudienceService(self.store, s.data_dir, self._pool)
        total = s.max_sessions or default_max_sessions(default_workers())
        self.admission = Admission(
            max_sessions=total,
            max_partner_sessions=min(total, s.max_partner_sessions or max(1, total // 2)),
        )
        self.matching = MatchingService(
            self.store,
            audiences,
            chunk_size=s.chunk_size,
            resume_seconds=s.resume_seconds,
            admission=self.admission,
        )
        assert self._pool is not None
        attribution = AttributionService(self.store, s.data_dir, executor=self._pool.executor)
        lookalike = LookalikeService(
            self.store, audiences, executor=self._pool.executor, chunk_size=s.chunk_size
        )
        server = grpc.aio.server(
            options=server_options(s.max_message_bytes), interceptors=[DecodeErrors()]
        )
        pb_grpc.add_AudienceServiceServicer_to_server(
            AudienceServicer(self.store, audiences), server
        )
        pb_grpc.add_MatchingServiceServicer_to_server(
            MatchingServicer(self.store, self.matching), server
        )
        pb_grpc.add_AttributionServiceServicer_to_server(
            AttributionServicer(self.store, attribution, self.admission), server
        )
        scoring = ScoringService(self.store, executor=self._pool.executor)
        pb_grpc.add_LookalikeServiceServicer_to_server(
            LookalikeServicer(self.store, lookalike, scoring, self.admission), server
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        names = (
            pb.DESCRIPTOR.services_by_name["AudienceService"].full_name,
            pb.DESCRIPTOR.services_by_name["MatchingService"].full_name,
            pb.DESCRIPTOR.services_by_name["AttributionService"].full_name,
            pb.DESCRIPTOR.services_by_name["LookalikeService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_dir is not None:
            files = load_tls(s.tls_dir, server=True)
            creds = grpc.ssl_server_credentials(
                [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        await server.start()
        for name in (*names[:4], ""):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self._tasks.append(asyncio.ensure_future(self.matching.reap_forever()))
        self._tasks.append(asyncio.ensure_future(self._purge_daily()))
        http_port = None
        if s.serve_http:
            http_port = await self._start_http()
        self.ports = Ports(grpc=port, http=http_port)
        log.info("brand node serving gRPC on %s:%d", s.host, port)
        return self.ports

    async def _purge_expired(self) -> None:
        """Every tenant's retention policy, applied now (server/lifecycle.py)."""
        assert self.store is not None
        await asyncio.to_thread(
            purge_expired, self.store, self.settings.data_dir, datetime.now(UTC)
        )

    async def _purge_daily(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_SWEEP_SECONDS)
            try:
                await self._purge_expired()
            except Exception:  # the next sweep tries again; serving goes on
                log.exception("retention purge failed")

    async def _start_http(self) -> int:
        import socket

        import uvicorn

        from cleanroom.server.rest import create_app

        assert self.store is not None
        tls_dir = self.settings.tls_dir
        app = create_app(self.store, https=tls_dir is not None, data_dir=self.settings.data_dir)
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host.strip("[]"), self.settings.http_port))
        # With a TLS dir the REST API and dashboard are HTTPS with the node's certificate
        # (server-authenticated: callers hold bearer tokens, not client certificates).
        certfile = keyfile = None
        if tls_dir is not None:
            load_tls(tls_dir, server=True)  # the files exist, or a precise error
            certfile, keyfile = str(tls_dir / SERVER_CERT), str(tls_dir / SERVER_KEY)
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", ssl_certfile=certfile, ssl_keyfile=keyfile
        )
        self._http = uvicorn.Server(config)
        self._tasks.append(asyncio.ensure_future(self._http.serve(sockets=[sock])))
        port: int = sock.getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
        if self._server is not None:
            await self._server.stop(grace=2)
        if self.matching is not None:
            self.matching.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._own_pool and self._pool is not None:
            await asyncio.to_thread(self._pool.close)
        if self.store is not None:
            self.store.close()

    async def serve_forever(self, stop_signals: Sequence[int] = ()) -> None:
        """Serve until the server ends or one of ``stop_signals`` arrives, then stop
        cleanly: worker processes too (a default SIGTERM would orphan them)."""
        await self.start()
        assert self._server is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in stop_signals:
            loop.add_signal_handler(sig, stop.set)
        ended = asyncio.ensure_future(self._server.wait_for_termination())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in stop_signals:
                loop.remove_signal_handler(sig)
            stopped.cancel()
            # Stopping the server ends wait_for_termination; cancelling that wait
            # first would cancel grpc's own shutdown.
            await self.stop()
            await asyncio.wait({ended}, timeout=10)
            ended.cancel()


class BrandNodeThread:
    """A brand node on its own thread and event loop (demo, tests)."""

    def __init__(
        self, settings: ServerSettings, *, pool_factory: Callable[[], CryptoPool] | None = None
    ) -> None:
        self.settings = settings
        self._pool_factory = pool_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="brand-node", daemon=True
        )
        self.node: BrandNode | None = None
        self.ports: Ports | None = None

    def __enter__(self) -> BrandNodeThread:
        self._thread.start()
        pool = self._pool_factory() if self._pool_factory else None
        self.node = BrandNode(self.settings, pool=pool)
        fut = asyncio.run_coroutine_threadsafe(self.node.start(), self._loop)
        self.ports = fut.result(timeout=120)
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the node's loop thread (for tests that inspect state)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=60)

    @property
    def target(self) -> str:
        assert self.ports is not None
        return f"{self.settings.host}:{self.ports.grpc}"

    def __exit__(self, *exc: object) -> None:
        if self.node is not None:
            asyncio.run_coroutine_threadsafe(self.node.stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
