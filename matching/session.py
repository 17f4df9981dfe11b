"""Shared machinery of the protocol state machines (PSI sessions, attribution runs)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.workers import RunJobs
from cleanroom.proto.errors import ProtocolError

T = TypeVar("T")
R = TypeVar("R", bound=StrEnum)

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


@dataclass
class Progress:
    """Where a run is; every listener sees it at each change (subclasses add the fields)."""

    listeners: list[Callable[[Any], None]] = field(
        default_factory=list, repr=False, compare=False, kw_only=True
    )

    def update(self, **changes: Any) -> None:
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(f"{type(self).__name__} has no field {name!r}")
            setattr(self, name, value)
        for listener in self.listeners:
            listener(self)


async def to_thread_owned(fn: Callable[[], T], close: Callable[[T], None]) -> T:
    """``fn()`` on a thread, for a result that owns resources (files): if the caller is
    cancelled meanwhile, the thread goes on and ``close`` gets its result once it exists."""
    running = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:

        def close_result(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                close(done.result())

        running.add_done_callback(close_result)
        raise


async def in_order(
    jobs: RunJobs, fn: Callable[..., T], argses: Iterable[tuple[Any, ...]], ahead: int = 8
) -> AsyncIterator[T]:
    """``fn`` over ``argses`` in ``jobs``' pool, at most ``ahead`` in flight, results in order.

    Closing the iterator early drops the jobs not yet started."""
    results = OrderedResults[T](limit=ahead)

    async def feed() -> None:
        for args in argses:
            await results.submit(jobs.call(fn, *args))
        results.close()

    feeder = asyncio.ensure_future(feed())
    try:
        async for result in results:
            yield result
        await feeder
    finally:
        feeder.cancel()
        results.cancel()


class RoundMachine(Generic[R]):
    """What a round-by-round state machine shares, whatever its protocol.

    ``round`` is a member of the protocol's round enum, which has ``DONE``
    and ``FAILED``. The first error fails the machine for good: background
    tasks are cancelled, queued jobs dropped, and anyone waiting in
    :meth:`until` (an ``outgoing`` stream) gets the error. :meth:`step` runs a
    ``receive`` so that a message refused in any round fails the run the same
    way.
    """

    def __init__(self, initial: R, jobs: RunJobs | None) -> None:
        rounds = type(initial)
        self._done: R = rounds["DONE"]
        self._failed: R = rounds["FAILED"]
        self.round: R = initial
        self.error: BaseException | None = None
        self._jobs = jobs or RunJobs(None)
        self._signal = Signal()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: list[Any] = []
        self.drained = 0  # messages ``drain`` has handed out

    @property
    def finished(self) -> bool:
        return self.round in (self._done, self._failed)

    @property
    def succeeded(self) -> bool:
        return self.round is self._done

    def fail(self, exc: BaseException) -> None:
        if self.round is self._done:
            return
        self.round = self._failed
        if self.error is None:
            self.error = exc
        self.close()
        self._signal.notify()

    def expect(self, want: R, what: str) -> None:
        """ProtocolError unless the machine is in round ``want`` (``what`` names the message)."""
        if self.round is not want:
            raise ProtocolError(f"{what} arrived in round {self.round}")

    def close(self) -> None:
        """Stop background work: queued jobs are dropped, running tasks cancelled."""
        self._jobs.cancel()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` in the background; its failure fails the machine."""
        self._tasks.append(asyncio.ensure_future(guarded(work, self.fail)))

    async def step(self, handle: Awaitable[None]) -> None:
        """Handle one incoming message; any error fails the machine, then propagates."""
        if self.round is self._failed:
            if isinstance(handle, Coroutine):
                handle.close()
            raise ProtocolError(f"the run has failed: {self.error}") from self.error
        try:
            await handle
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.fail(exc)
            raise

    async def until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``; raises the machine's error if it fails meanwhile."""
        while True:
            if self.error is not None:
                raise self.error
            waiting = self._signal.current()
            if ready():
                return
            await waiting.wait()

    def put(self, msg: Any) -> None:
        """Queue ``msg`` for the peer (``drain`` hands it out in order)."""
        self._outbox.append(msg)
        self._signal.notify()

    async def room(self, ahead: int) -> None:
        """Wait until the peer has taken all but ``ahead`` of the queued messages (with a
        ``drain(..., forget=True)``): a producer runs no further ahead of the network."""
        await self.until(lambda: len(self._outbox) - self.drained < ahead)

    async def drain(self, last: type[Any], *, forget: bool = False) -> AsyncIterator[Any]:
        """Every queued message in order, as they come, ending after one of type ``last``
        (or once the machine is done with nothing left to send); raises the machine's error
        if it fails meanwhile.

        ``forget``: drop each message once handed out, for a run that never resends (its
        memory is what is in flight); producers can wait on ``drained`` for room."""
        sent = 0
        while True:
            if self.error is not None:
                raise self.error
            waiting = self._signal.current()
            while sent < len(self._outbox):
                msg = self._outbox[sent]
                sent += 1
                if forget:
                    self._outbox[sent - 1] = None
                    self.drained = sent
                    self._signal.notify()  # a producer may wait for room
                yield msg
                if isinstance(msg, last):
                    return
            if self.round is self._done:
                return
            await waiting.wait()
