"""CPU-bound PSI work, run in worker processes.

Blinding and hash-to-curve hold the GIL, so threads would serialize them; the
functions here are module-level (picklable) and take and return packed bytes
so that moving a chunk between processes costs one buffer copy.
``CryptoPool`` is the async face the protocol sessions use; any
``concurrent.futures.Executor`` can sit behind it (a process pool by default,
a thread pool in tests that want one process, a Dask cluster: ``cluster.DaskExecutor``).

Jobs that take a session secret take it as ``bytes | SecretRef`` and read it through
``resolve_secret``: a local pool passes the secret itself (it crosses a pipe, never a
disk), a Dask cluster a reference to worker-local state (``install_key``), because Dask
may spill task arguments' data to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from cleanroom.audiences.upload import DIGEST_LEN
from cleanroom.matching.hash_to_curve import hash_to_curve_batch
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.x25519 import blind_batch

T = TypeVar("T")

# Worker-local secrets of the sessions running on this (Dask worker) process, by handle.
# Only ``cluster.SessionKey`` plugins write here; jobs read through ``resolve_secret``.
WORKER_SECRETS: dict[str, Any] = {}


@dataclass(frozen=True)
class SecretRef:
    """Names a session secret installed on a cluster's workers; carries nothing of it."""

    handle: str


def resolve_secret(secret: T | SecretRef) -> T:
    """The secret itself: as passed (a local pool), or from this worker's state."""
    if not isinstance(secret, SecretRef):
        return secret
    try:
        value: T = WORKER_SECRETS[secret.handle]
    except KeyError:
        raise RuntimeError(
            "the session's key is not on this Dask worker (the session ended, or the worker"
            " restarted without it)"
        ) from None
    return value


def installed_handles() -> list[str]:
    """Handles of the secrets this worker process holds (they must go with the session)."""
    return sorted(WORKER_SECRETS)


def install_key(executor: Executor | None, secret: T) -> T | SecretRef:
    """``secret`` made ready for ``executor``'s jobs: itself for local processes, a
    worker-local ``SecretRef`` on an executor that offers ``install_key`` (Dask)."""
    install = getattr(executor, "install_key", None)
    return secret if install is None else install(secret)  # type: ignore[no-any-return]


def remove_key(executor: Executor | None, secret: object) -> None:
    """End what ``install_key`` began (a no-op for a local pool or a plain secret)."""
    remove = getattr(executor, "remove_key", None)
    if remove is not None and isinstance(secret, SecretRef):
        remove(secret)


DST_PREFIX = b"CLEANROOM-PSI-V01-CS01-with-curve25519_XMD:SHA-512_ELL2_RO_-"
DUMMY_DST = DST_PREFIX + b"dummy"


def dst_for(id_type: str) -> bytes:
    """Domain-separation tag per identifier type (RFC 9380 §3.1).

    The type is part of the tag so an email digest and a phone digest that
    happened to collide could never match each other.
    """
    return DST_PREFIX + id_type.encode("ascii")


def truncate(packed_points: bytes, value_len: int) -> bytes:
    """Keep the first ``value_len`` bytes of every 32-byte point."""
    if value_len == POINT_LEN:
        return packed_points
    arr = np.frombuffer(packed_points, dtype=np.uint8).reshape(-1, POINT_LEN)
    return arr[:, :value_len].tobytes()


def hash_and_blind(secret: bytes | SecretRef, packed_digests: bytes, dst: bytes) -> bytes:
    """H(x)^k for a batch of digests of one identifier type."""
    return blind_batch(
        resolve_secret(secret), hash_to_curve_batch(packed_digests, DIGEST_LEN, dst), validate=False
    )


def hash_mixed(
    packed_msgs: bytes,
    type_codes: bytes,
    dsts: Sequence[bytes | None],
    msg_len: int = DIGEST_LEN,
) -> bytes:
    """H_t(x) for a batch of ``msg_len``-byte messages whose elements have different types.

    ``type_codes[i]`` indexes ``dsts`` for element ``i``; elements are hashed
    per type and put back in their original order. A ``None`` tag marks
    elements that are already curve points (hashed ahead of time).
    """
    msgs = np.frombuffer(packed_msgs, dtype=np.uint8).reshape(-1, msg_len)
    codes = np.frombuffer(type_codes, dtype=np.uint8)
    if len(codes) != len(msgs):
        raise ValueError("one type code per message is required")
    points = np.empty((len(msgs), POINT_LEN), dtype=np.uint8)
    for code in np.unique(codes):
        idx = np.flatnonzero(codes == code)
        dst = dsts[int(code)]
        if dst is None:
            if msg_len != POINT_LEN:
                raise ValueError("pre-hashed elements must be points")
            points[idx] = msgs[idx]
            continue
        hashed = hash_to_curve_batch(msgs[idx].tobytes(), msg_len, dst)
        points[idx] = np.frombuffer(hashed, dtype=np.uint8).reshape(-1, POINT_LEN)
    return points.tobytes()


def hash_and_blind_mixed(
    secret: bytes | SecretRef,
    packed_msgs: bytes,
    type_codes: bytes,
    dsts: Sequence[bytes | None],
    msg_len: int = DIGEST_LEN,
) -> bytes:
    """H_t(x)^k for a batch whose elements have different types (see ``hash_mixed``)."""
    return blind_batch(
        resolve_secret(secret), hash_mixed(packed_msgs, type_codes, dsts, msg_len), validate=False
    )


def blind_and_truncate(secret: bytes | SecretRef, packed_points: bytes, value_len: int) -> bytes:
    """Re-blind a peer's points (validating them) and keep comparison bytes."""
    return truncate(blind_batch(resolve_secret(secret), packed_points, validate=True), value_len)


def blind_points(secret: bytes | SecretRef, packed_points: bytes, validate: bool) -> bytes:
    return blind_batch(resolve_secret(secret), packed_points, validate=validate)


def hash_points(packed_digests: bytes, dst: bytes) -> bytes:
    """H(x) for a batch of 32-byte digests of one identifier type."""
    return hash_to_curve_batch(packed_digests, DIGEST_LEN, dst)


def default_workers() -> int:
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


def _warm(_: int) -> int:
    return os.getpid()


PARENT_POLL_SECONDS = 1.0


# How much lower than its parent's a crypto worker's CPU priority is: the parent serves
# (gRPC, REST, health checks) and must not wait behind the batches it queued.
WORKER_NICENESS = 5


def _start_worker(parent: int, niceness: int) -> None:
    """Worker initializer: a lower CPU priority than the parent, and an end with it."""
    if niceness:
        with contextlib.suppress(OSError):  # not allowed, or not a Unix: keep the priority
            os.nice(niceness)
    _end_with_parent(parent)


def _end_with_parent(parent: int) -> None:
    """The worker ends once the process that started it is gone, however it died (SIGKILL
    and OOM kills included, which no handler in the parent can see).

    An orphan is re-parented, so ``getppid()`` changes; a daemon thread polls for that.
    (Linux's parent-death signal would be immediate, but it fires when the parent
    *thread* that spawned the worker ends, and pools are started from short-lived
    threads.)"""
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class CryptoPool:
    """Async access to an executor for the CPU-bound crypto."""

    def __init__(self, executor: Executor, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._executor = executor
        self.workers = workers

    @classmethod
    def processes(cls, workers: int | None = None) -> CryptoPool:
        """A pool of ``workers`` processes (default: all cores).

        ``spawn`` rather than ``fork``: the parent runs gRPC threads, and
        forking a process with live gRPC threads is unsupported.
        """
        n = workers or default_workers()
        ctx = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            max_workers=n,
            mp_context=ctx,
            initializer=_start_worker,
            initargs=(os.getpid(), WORKER_NICENESS),
        )
        # Start every worker now so the first session does not pay for it.
        list(executor.map(_warm, range(n)))
        return cls(executor, n)

    @classmethod
    def dask(cls, address: str, *, tls: bool = False, **options: Any) -> CryptoPool:
        """A pool on the Dask cluster at ``address`` (``local:N`` starts one here); see
        ``cluster.DaskExecutor.start`` for the options."""
        from cleanroom.matching.cluster import DaskExecutor

        executor = DaskExecutor.start(address, tls=tls, **options)
        try:
            return cls(executor, executor.workers)
        except BaseException:
            executor.shutdown()
            raise

    @classmethod
    def open(
        cls,
        dask_scheduler: str | None,
        workers: int | None = None,
        *,
        tls: bool = False,
    ) -> CryptoPool:
        """Local processes, or a Dask cluster when ``dask_scheduler`` is given (over TLS
        when ``tls``: whenever the party's own connection is)."""
        if not dask_scheduler:
            return cls.processes(workers)
        return cls.dask(dask_scheduler, tls=tls)

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def distributed(self) -> bool:
        """Whether the jobs run on a cluster (whose workers may spill data to disk)."""
        return hasattr(self._executor, "install_key")

    @property
    def kind(self) -> str:
        """``dask`` or ``processes`` (what benchmarks and logs report)."""
        return "dask" if self.distributed else "processes"

    async def run_private(self, fn: Callable[..., T], *args: Any) -> T:
        """``run`` for a job whose result is secret: never on a cluster, whose results are
        Dask data that may spill to disk, but in a local process beside it."""
        loop = asyncio.get_running_loop()
        executor = getattr(self._executor, "private_executor", self._executor)
        return await loop.run_in_executor(executor, fn, *args)

    def key(self, secret: T) -> T | SecretRef:
        """``secret`` ready for this pool's jobs (``install_key``); ``forget`` ends it."""
        return install_key(self._executor, secret)

    def forget(self, secret: object) -> None:
        remove_key(self._executor, secret)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        try:
            self._executor.shutdown(wait=True, cancel_futures=True)
        except TypeError:  # an executor without cancel_futures (Dask's own ClientExecutor)
            self._executor.shutdown(wait=True)

    def __enter__(self) -> CryptoPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Jobs one run keeps queued or running in the shared pool (``RunJobs.run_many``): enough to
# keep every worker of a large pool busy, few enough that runs interleave.
RUN_WINDOW = 32


class RunJobs:
    """One run's jobs in a shared pool (or here, without one), cancellable as a whole.

    ``cancel`` drops the jobs not yet started and refuses new ones: a peer
    that goes away must not leave minutes of its run queued in the pool the
    other runs share. Blocking (``run``, ``run_many``), future (``submit``) and
    awaitable (``call``) forms share that one switch.
    """

    def __init__(self, executor: Executor | None) -> None:
        self._executor = executor
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()
        self._cancelled = False
        self._keys: list[object] = []

    @property
    def parallel(self) -> bool:
        """Whether jobs run in a pool (else here, one after the other)."""
        return self._executor is not None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return self.run_many(fn, [args])[0]

    def run_many(self, fn: Callable[..., T], jobs: Sequence[tuple[Any, ...]]) -> list[T]:
        """``fn`` over ``jobs``, at most ``RUN_WINDOW`` of them queued or running at once (so
        one run's backlog never fills the shared pool's queue); results in order."""
        if self._executor is None:
            out = []
            for args in jobs:
                self._check()
                out.append(fn(*args))
            return out
        results: list[T] = []
        window: deque[Future[T]] = deque()
        for args in jobs:
            if len(window) >= RUN_WINDOW:
                results.append(window.popleft().result())
            window.append(self.submit(fn, *args))
        results.extend(f.result() for f in window)
        return results

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start one job; without a pool it runs here, now."""
        if self._executor is None:
            self._check()
            done: Future[T] = Future()
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)
            return done
        with self._lock:
            self._check()
            future = self._executor.submit(fn, *args)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Await one job: in the pool, or on a thread without one (the loop keeps running)."""
        if self._executor is None:
            self._check()
            return await asyncio.to_thread(fn, *args)
        return await asyncio.wrap_future(self.submit(fn, *args))

    def key(self, secret: T) -> T | SecretRef:
        """``secret`` ready for this run's jobs; ``cancel`` (or ``release_keys``) ends it."""
        ref = install_key(self._executor, secret)
        if ref is not secret:
            with self._lock:
                self._keys.append(ref)
        return ref

    def release_keys(self) -> None:
        """Remove the run's secrets from the cluster's workers (idempotent)."""
        with self._lock:
            keys, self._keys = self._keys, []
        for ref in keys:
            remove_key(self._executor, ref)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            pending = list(self._pending)
        for future in pending:
            future.cancel()
        self.release_keys()

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _check(self) -> None:
        if self._cancelled:
            raise CancelledError("the run was cancelled")
