"""The crypto work on a Dask cluster: an ``Executor`` that a ``CryptoPool`` can hold.

``--dask-scheduler ADDRESS`` on ``serve`` and the partner commands puts blinding,
hash-to-curve, Paillier and aggregation jobs on a ``dask.distributed`` cluster instead of
local worker processes; ``local:N`` starts a ``LocalCluster`` of N worker processes.

Two rules keep the cluster from weakening what a party keeps to itself:

- **Session keys are never Dask data.** Dask spills task results and scattered data to
  disk under memory pressure. A secret therefore never travels as a task argument or
  result: ``DaskExecutor.install_key`` hands it to every worker as a worker plugin
  (worker-local state, held in memory only), the jobs get a ``SecretRef`` naming it, and
  ``remove_key`` tears the plugin down when the session ends. Jobs whose *result* is secret
  (Paillier key generation, the base OTs' keys) do not go to the cluster at all: they
  run in one local process beside it (``DaskExecutor.private_executor``,
  ``CryptoPool.run_private``).
- **What a task carries is scattered bytes.** Large byte arguments are scattered to the
  workers first and tasks are submitted non-pure, so the graph holds references, never
  the chunks themselves, and two equal chunks are never merged into one task.

The cluster connection uses TLS (``distributed.Security``) whenever the party's own
connection does: a temporary CA and certificate for ``local:N``; for a remote scheduler
(whose address must then be ``tls://``) Dask's own TLS settings, with a CA of the
cluster's own (``cleanroom certs --cluster``), never the gRPC CA that also signed the
other party's certificate: that party must not reach the workers holding the keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

import dask
from distributed import Client, LocalCluster, Security
from distributed.diagnostics.plugin import WorkerPlugin

from cleanroom.matching.workers import WORKER_NICENESS, WORKER_SECRETS, CryptoPool, SecretRef
from cleanroom.proto.errors import InvalidInput

log = logging.getLogger("cleanroom.cluster")

T = TypeVar("T")

LOCAL_PREFIX = "local:"
MAX_LOCAL_WORKERS = 64

# Byte arguments at least this long are scattered ahead of their task (smaller ones,
# tags and lengths, ride in the task).
SCATTER_MIN_BYTES = 4096

PLUGIN_PREFIX = "cleanroom-key-"

# A local cluster's workers run one CPU-bound job at a time that holds the GIL; every
# wake-up of a worker's other threads takes it away (the sampling profiler every 10 ms,
# the event-loop tick every 20 ms): about 10 % of each job's time here. These settings
# (passed to the workers by their nannies) make the wake-ups rare.
QUIET_WORKERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


class SessionKey(WorkerPlugin):
    """One session's secret in worker memory, from setup until teardown."""

    idempotent = True

    def __init__(self, handle: str, secret: Any) -> None:
        self.handle = handle
        self.secret = secret

    def setup(self, worker: Any) -> None:
        WORKER_SECRETS[self.handle] = self.secret

    def teardown(self, worker: Any) -> None:
        WORKER_SECRETS.pop(self.handle, None)


class LowerPriority(WorkerPlugin):
    """A local cluster's workers run below the party's own process (as local crypto
    workers do, ``workers.WORKER_NICENESS``): the party serves gRPC and REST and must not
    wait behind the jobs it queued. Linux keeps a priority per thread, so every thread
    of the worker is lowered, and the threads it starts later inherit it."""

    idempotent = True

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness

    def setup(self, worker: Any) -> None:
        tasks = Path("/proc/self/task")
        threads = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
        for tid in threads:
            with contextlib.suppress(OSError):  # not allowed here: keep the priority
                current = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, current + self.niceness))


def parse_workers(address: str) -> int | None:
    """N for ``local:N``; None for a scheduler address. Bad input is an InvalidInput."""
    if not address.startswith(LOCAL_PREFIX):
        if "://" not in address and ":" not in address:
            raise InvalidInput(
                f"--dask-scheduler {address!r}: give a scheduler address (tls://host:port)"
                " or local:N"
            )
        return None
    text = address[len(LOCAL_PREFIX) :]
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOCAL_WORKERS:
        raise InvalidInput(
            f"--dask-scheduler {address!r}: local:N needs N from 1 to {MAX_LOCAL_WORKERS}"
        )
    return int(text)


class DaskExecutor(Executor):
    """``concurrent.futures.Executor`` over a ``distributed.Client``.

    ``submit`` never blocks its caller (an event loop, usually): scattering and
    submitting happen on the client's own loop, and the returned future completes when
    the task's result is back. Cancelling that future cancels the Dask task.
    """

    def __init__(self, client: Client, cluster: Any = None) -> None:
        self.client = client
        self._cluster = cluster
        self._lock = threading.Lock()
        self._running: set[Any] = set()
        self._keys: set[str] = set()
        self._closed = False
        self._private: Executor | None = None

    @classmethod
    def start(
        cls,
        address: str,
        *,
        tls: bool,
        memory_limit: str | int | None = None,
        local_directory: Path | None = None,
        connect_seconds: float = 30.0,
    ) -> DaskExecutor:
        """Connect to ``address``, or start ``local:N``; TLS whenever ``tls`` is set."""
        workers = parse_workers(address)
        if workers is not None:
            security = _temporary_security() if tls else None
            with dask.config.set(QUIET_WORKERS):
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    protocol="tls://" if tls else "tcp://",
                    host="127.0.0.1",
                    security=security,
                    dashboard_address=None,
                    # Its HTTP server (health, metrics) on a free loopback port, not 8787.
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.ERROR,
                    memory_limit=memory_limit or "auto",
                    local_directory=str(local_directory) if local_directory else None,
                )
            client = Client(cluster, security=security, set_as_default=False)
            client.register_plugin(LowerPriority(WORKER_NICENESS), name="cleanroom-priority")
            return cls(client, cluster)
        if tls and not address.startswith("tls://"):
            raise InvalidInput(
                f"--dask-scheduler {address}: this party uses TLS, so its cluster must too"
                " (a tls:// address)"
            )
        security = None
        if address.startswith("tls://"):
            # Dask's own TLS settings (distributed.comm.tls.*), as for any Dask client.
            security = Security(require_encryption=True)
            if not getattr(security, "tls_ca_file", None):  # set from the config
                raise InvalidInput(
                    f"--dask-scheduler {address}: set Dask's TLS settings"
                    " (distributed.comm.tls.ca-file, .client.cert, .client.key; e.g."
                    " DASK_DISTRIBUTED__COMM__TLS__CA_FILE) to a certificate of the cluster's"
                    " own CA, from `cleanroom certs --cluster`. Not --tls-dir: its CA also"
                    " signed the other party's certificate"
                )
        try:
            client = Client(
                address, security=security, set_as_default=False, timeout=connect_seconds
            )
        except (OSError, TimeoutError) as exc:
            raise InvalidInput(f"--dask-scheduler {address}: cannot connect ({exc})") from exc
        return cls(client)

    @property
    def _loop(self) -> Any:
        loop = self.client.loop
        if loop is None:
            raise RuntimeError("the Dask client is closed")
        return loop

    @property
    def workers(self) -> int:
        """Threads across the cluster's workers now (at least 1)."""
        info = self.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info["workers"].values()))

    # ---------------------------------------------------------------- secrets

    @property
    def private_executor(self) -> Executor:
        """One local worker process for the jobs whose *results* are secret (key
        generation, base OTs): a cluster's results are Dask data, which may spill."""
        with self._lock:
            if self._private is None:
                self._private = CryptoPool.processes(1).executor
            return self._private

    def install_key(self, secret: Any) -> SecretRef:
        """Put ``secret`` in every worker's memory (and any worker that joins later) for
        one session; jobs get the returned ``SecretRef``."""
        handle = secrets.token_hex(16)
        self.client.register_plugin(SessionKey(handle, secret), name=PLUGIN_PREFIX + handle)
        with self._lock:
            self._keys.add(handle)
        return SecretRef(handle)

    def remove_key(self, ref: SecretRef) -> None:
        """Tear the session's secret down on every worker (idempotent)."""
        with self._lock:
            if ref.handle not in self._keys:
                return
            self._keys.discard(ref.handle)
        try:
            self.client.unregister_worker_plugin(PLUGIN_PREFIX + ref.handle)
        except Exception:  # the cluster is gone: so is its memory
            log.warning("could not remove a session key from the Dask workers", exc_info=True)

    # ----------------------------------------------------------------- Executor

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if kwargs:
            raise TypeError("DaskExecutor.submit takes positional arguments only")
        if self._closed:
            raise RuntimeError("cannot submit to a closed Dask executor")
        outer: Future[T] = Future()
        self._loop.add_callback(self._start, outer, fn, args)
        return outer

    async def _start(
        self, outer: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        if outer.cancelled():
            return
        try:
            sent: list[Any] = []
            for arg in args:
                if (
                    isinstance(arg, bytes | bytearray | memoryview)
                    and len(arg) >= SCATTER_MIN_BYTES
                ):
                    sent.append(
                        await self.client.scatter(bytes(arg), hash=False, asynchronous=True)
                    )
                else:
                    sent.append(arg)
            task = self.client.submit(fn, *sent, pure=False)
        except BaseException as exc:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(exc)
            return
        del sent  # the task holds the scattered chunks now, until it is released
        with self._lock:
            self._running.add(task)
        # The task is released (and with it its result and inputs on the worker) as soon as
        # nothing refers to it: the callbacks take it as an argument or from ``held``, never
        # by closure, since a reference cycle would keep it until the garbage collector ran
        # (a 10M match held 1.6 GB on a worker that way).
        held = [task]

        def cancel_task(done: Future[Any]) -> None:
            if done.cancelled() and held:
                self._loop.add_callback(held[0].cancel)

        outer.add_done_callback(cancel_task)

        def finish(done: Any) -> None:
            with self._lock:
                self._running.discard(done)
            held.clear()
            if not outer.set_running_or_notify_cancel():
                return
            try:
                outer.set_result(done.result())
            except BaseException as exc:
                outer.set_exception(exc)

        task.add_done_callback(finish)
        del task

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            running = list(self._running)
            keys = list(self._keys)
        if cancel_futures and running:
            self.client.cancel(running)
        for handle in keys:
            self.remove_key(SecretRef(handle))
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._private is not None:
            self._private.shutdown(wait=True, cancel_futures=True)


def _temporary_security() -> Security:
    return Security.temporary()
