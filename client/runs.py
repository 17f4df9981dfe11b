"""The partner's side of a bidirectional run, driven over one gRPC stream.

Attribution and lookalike jobs share the shape: the partner's state machine
says ``hello()`` first, its ``outgoing()`` messages follow as it produces
them, and every message of the brand node goes to its ``receive``. The
stream ends when both sides are done; a failure of the machine itself says
more than the gRPC status it caused, so that is what the caller sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc

from cleanroom.client.sdk import ClientError, Connection, retrying
from cleanroom.federated.lookalike.package import read_manifest
from cleanroom.federated.paillier import PaillierPublicKey

log = logging.getLogger("cleanroom.client")
R = TypeVar("R")


class PartnerMachine(Protocol):
    public_key: PaillierPublicKey | None
    error: BaseException | None

    def hello(self) -> Any: ...

    def outgoing(self) -> AsyncIterator[Any]: ...

    async def receive(self, msg: Any) -> None: ...

    def close(self) -> None: ...


async def drive_partner(
    conn: Connection,
    open_call: Callable[[grpc.aio.Channel, AsyncIterator[Any]], Any],
    machine: PartnerMachine,
    to_pb: Callable[..., Any],
    from_pb: Callable[..., Any],
) -> None:
    """Run ``machine`` to its end over the stream ``open_call(channel, requests)`` opens."""

    failures: list[Exception] = []

    async def requests() -> AsyncIterator[Any]:
        try:
            yield to_pb(machine.hello())
            async for msg in machine.outgoing():
                yield to_pb(msg, machine.public_key)
        except Exception as exc:
            failures.append(exc)  # gRPC only cancels the call: keep the reason
            raise

    async with conn.channel() as channel:
        call = open_call(channel, requests())
        try:
            async for response in call:
                await machine.receive(from_pb(response, machine.public_key))
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            # A failure of our own (gRPC cancels the call when the request
            # stream raises) says more than the status it caused.
            if machine.error is not None:
                raise machine.error from None
            if failures:
                raise failures[0] from None
            if isinstance(exc, grpc.aio.AioRpcError):
                raise ClientError.from_rpc(exc) from exc
            raise
        finally:
            machine.close()


class _Closable(Protocol):
    def close(self) -> None: ...


M = TypeVar("M", bound=_Closable)


class Restartable(Generic[M]):
    """A prepared job (a dataclass with these two fields): its current state machine
    ``partner``, and ``new_partner`` to make a fresh one for a new attempt."""

    partner: M
    new_partner: Callable[[], M]

    def restart(self) -> M:
        """A fresh state machine for a new attempt (fresh keys, masks and randomness)."""
        self.partner.close()
        self.partner = self.new_partner()
        return self.partner


async def with_restarts(
    conn: Connection,
    prepared: Restartable[Any],
    attempt: Callable[[Any], Awaitable[R]],
    what: str,
    on_progress: Callable[[Any], None] | None = None,
) -> R:
    """``attempt(machine)`` until it succeeds, starting over with a fresh machine after a
    transient failure (the node unreachable, the stream dropped, the node busy), with
    backoff up to ``conn.retry_seconds``. Jobs other than PSI cannot resume: the node
    keeps a run's state only while its stream lasts, so a new attempt is a new run (a
    completed one is found again by its submission key, so nothing is done twice)."""

    async def once() -> R:
        machine = prepared.partner
        if on_progress is not None:
            machine.progress.listeners.append(on_progress)
            on_progress(machine.progress)
        return await attempt(machine)

    def start_over(error: ClientError) -> None:
        log.warning("%s: starting over (%s: %s)", what, error.code, error.message)
        prepared.restart()

    return await retrying(conn, once, start_over)


def submission_digest(paths: Sequence[Path], params: dict[str, Any], domain: bytes = b"") -> str:
    """The idempotency key of a job: same files, same parameters, same key (hex SHA-256
    over ``domain``, each file's bytes, then the parameters as sorted JSON)."""
    digest = hashlib.sha256(domain)
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    digest.update(json.dumps(params, sort_keys=True).encode())
    return digest.hexdigest()


class PackageFiles(Protocol):
    """Where a package job's files are staged and then committed (or dropped)."""

    def commit(self, package_id: str, count: int) -> dict[str, Any]: ...

    def abort(self) -> None: ...


async def run_package_job(
    conn: Connection,
    open_call: Callable[[grpc.aio.Channel, AsyncIterator[Any]], Any],
    prepared: Restartable[Any],
    to_pb: Callable[..., Any],
    from_pb: Callable[..., Any],
    *,
    files: PackageFiles,
    out_dir: Path,
    wrote: Callable[[Any], bool],
    count: int,
    summary: dict[str, Any],
    on_progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Drive a lookalike or scoring job (see ``with_restarts``) and commit its files once
    the node confirmed the package; returns the manifest. A repeated submission runs
    nothing: the manifest is read back from ``out_dir`` when the package is there, else
    ``summary`` says where it is not. ``wrote(machine)`` says whether the run wrote a
    package."""

    async def attempt(machine: Any) -> dict[str, Any]:
        try:
            await drive_partner(conn, open_call, machine, to_pb, from_pb)
            package_id = machine.package_id
            if not package_id:
                raise ClientError("PROTOCOL", "the brand node ended the job without a package")
            if not wrote(machine):  # a repeated submission: the package exists already
                return read_manifest(out_dir, package_id) or {
                    "package_id": package_id,
                    **summary,
                    "repeated": True,
                    "note": (
                        f"this submission already made package {package_id};"
                        f" its files are not in {out_dir}"
                    ),
                }
            return files.commit(package_id, count)
        finally:
            files.abort()

    return await with_restarts(conn, prepared, attempt, "package job", on_progress)
