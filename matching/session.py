"""Shared machinery of the PSI session state machines."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Generic, TypeVar

from cleanroom.matching.messages import POINT_LEN

T = TypeVar("T")

# Statistical security of truncated comparisons (DESIGN.md §5): the chance
# that any unrelated pair of values collides stays below 2^-40.
FALSE_POSITIVE_BITS = 40


def comparison_length(partner_points: int, brand_points: int) -> int:
    """Bytes per comparison value so that |P|·|S| / 2^(8·len) <= 2^-40."""
    pairs = max(1, partner_points) * max(1, brand_points)
    bits = math.log2(pairs) + FALSE_POSITIVE_BITS
    return min(POINT_LEN, max(8, math.ceil(bits / 8)))


class Round(StrEnum):
    """Where a session is. Messages for any other round are protocol errors."""

    HELLO = "hello"
    EXCHANGE = "exchange"  # points flow both ways
    VALUES = "values"  # CARDINALITY: the brand waits for H(s)^ab
    DONE = "done"
    FAILED = "failed"


async def guarded(
    work: Callable[[], Awaitable[None]], fail: Callable[[BaseException], None]
) -> None:
    """Run a session's background work; any failure fails the whole session."""
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        fail(exc)


class Signal:
    """Wakes every waiter when something new is available.

    A fresh event per generation means a waiter that started waiting before
    ``notify`` is always woken, with no lock and no lost wake-ups.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next ``notify`` sets; take it *before* checking state."""
        return self._event


class OrderedResults(Generic[T]):
    """Results of concurrent jobs, delivered in submission order.

    ``limit`` bounds the jobs in flight: ``submit`` waits when it is reached,
    which back-pressures whoever feeds the session (the gRPC stream reader,
    hence the peer through HTTP/2 flow control). Memory stays bounded.
    """

    def __init__(self, limit: int) -> None:
        self._queue: asyncio.Queue[asyncio.Future[T] | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(limit)

    async def reserve(self) -> None:
        """Wait for room; pair with exactly one ``put``.

        Waiting is split from ``put`` so a caller can reserve first and only
        then change its own state: a cancellation while waiting leaves the
        caller exactly as it was.
        """
        await self._slots.acquire()

    def put(self, job: Awaitable[T]) -> None:
        self._queue.put_nowait(asyncio.ensure_future(job))

    async def submit(self, job: Awaitable[T]) -> None:
        await self.reserve()
        self.put(job)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            fut = await self._queue.get()
            if fut is None:
                return
            try:
                result = await fut
            finally:
                self._slots.release()
            yield result

    def cancel(self) -> None:
        while not self._queue.empty():
            fut = self._queue.get_nowait()
            if fut is not None:
                fut.cancel()
