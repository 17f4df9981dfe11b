"""What every ``cleanroom`` command shares: option types, consoles, errors, progress."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions, parse_id_columns

if TYPE_CHECKING:
    from cleanroom.client.sdk import Connection
    from cleanroom.matching.workers import CryptoPool

err = Console(stderr=True)
out = Console()

Server = Annotated[str, typer.Option("--server", help="Brand node gRPC address, HOST:PORT.")]
Token = Annotated[str, typer.Option("--token", envvar="CLEANROOM_TOKEN", help="Bearer token.")]
IdColumns = Annotated[
    str,
    typer.Option(
        "--id-columns", help="Identifier columns in priority order, e.g. email,phone,maid."
    ),
]
Region = Annotated[
    str | None,
    typer.Option("--default-region", help="Region for phones without +country, e.g. US, CN."),
]
TlsDir = Annotated[
    Path | None, typer.Option("--tls-dir", help="Directory from `cleanroom certs` (mTLS).")
]
DaskScheduler = Annotated[
    str | None,
    typer.Option(
        "--dask-scheduler",
        help="Run the crypto on a Dask cluster: a scheduler address (tls:// when --tls-dir"
        " is given) or local:N for N worker processes here. Default: local processes.",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
WorkDir = Annotated[
    Path | None,
    typer.Option(
        "--work-dir",
        help="Where the run keeps its temporary files (large columns, comparison buckets,"
        " what it sent), created if missing and left empty when the run ends."
        " Default: the system's temporary directory (TMPDIR).",
    ),
]
SpillMb = Annotated[
    int | None,
    typer.Option(
        "--spill-mb",
        min=0,
        help="Hold at most this many MiB of any one column or buffer in memory; the rest"
        " goes to --work-dir. Default: 64 for a column, 256 for a comparison side.",
    ),
]


def spill_bytes(spill_mb: int | None) -> int | None:
    return None if spill_mb is None else spill_mb << 20


RetrySeconds = Annotated[
    float,
    typer.Option(
        "--retry-seconds",
        min=0,
        help="How long to wait out an unreachable or busy node, retrying with backoff"
        " (0: fail at once).",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every cleanup runs (staged
    package files, half-written outputs, the worker pool) before the command exits."""


# Set when SIGTERM arrives. The exception it raises can land inside gRPC's own machinery,
# which turns it into a cancelled call: the command then sees CancelledError instead.
_termination = threading.Event()


def _terminated(signum: int, frame: object) -> None:
    _termination.set()
    raise Terminated()


@contextmanager
def errors() -> Iterator[None]:
    """Turn the project's error vocabulary into one clear line and exit 1; SIGTERM and
    Ctrl-C unwind (cleaning up) and exit 130."""
    from cleanroom.client.sdk import ClientError
    from cleanroom.proto.errors import CleanroomError

    previous = None
    if threading.current_thread() is threading.main_thread():
        _termination.clear()
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except ClientError as exc:
        raise fail(f"{exc.code}: {exc.message}") from exc
    except (CleanroomError, ValueError, FileNotFoundError, PermissionError) as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        raise fail(f"{what} before the command finished", 130) from exc
    except asyncio.CancelledError as exc:
        if not _termination.is_set():
            raise
        raise fail("terminated before the command finished", 130) from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def parse_columns(spec: str) -> list[IdColumn]:
    return parse_id_columns(spec)


def normalize_options(region: str | None) -> NormalizeOptions:
    return NormalizeOptions(default_region=region)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )
    with progress:
        yield progress


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def connection(
    server: str, token: str, tls_dir: Path | None, retry_seconds: float = 60.0
) -> Connection:
    from cleanroom.client.sdk import Connection

    return Connection(server, token, tls_dir, retry_seconds=retry_seconds)


def crypto_pool(
    dask_scheduler: str | None, workers: int | None, tls_dir: Path | None
) -> CryptoPool:
    """The partner's crypto workers: local processes, or the Dask cluster it named."""
    from cleanroom.matching.workers import CryptoPool

    return CryptoPool.open(dask_scheduler, workers, tls=tls_dir is not None)
