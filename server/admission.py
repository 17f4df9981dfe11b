"""Admission control: how many jobs the node runs at once, in all and per partner.

Every job (a PSI session, an attribution run, a lookalike or scoring job)
takes a slot before any of its work starts and gives it back when it ends;
a PSI session waiting to be resumed gives its slot back (it holds memory,
bounded by the resumption window, but no crypto) and takes one again when
the partner resumes it. Above either limit a new job is refused at once with
``ResourceExhausted`` and a retry hint, rather than queued: a queued session
would hold its partner's stream open and its share of the crypto pool while
doing nothing, and everything behind it, health checks included, would wait.
The crypto work itself stays bounded because every job keeps only a fixed
number of batches queued or running (``matching/session.py``'s slots,
``RunJobs.run_many``'s window, the upload's semaphore), so the shared pool's
queue holds at most ``max_sessions`` times that.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cleanroom.proto.errors import ResourceExhausted
from cleanroom.server.store import PartnershipId


def default_max_sessions(cores: int) -> int:
    """Two jobs per core (one computes while the other waits on its peer), at least 4."""
    return max(4, 2 * cores)


class NodeBusy(ResourceExhausted):
    """A concurrency limit is reached; ``retry_after`` says when a slot is likely free."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


@dataclass
class Slot:
    """One admitted job's place; ``release`` is idempotent."""

    admission: Admission
    partnership: PartnershipId
    started: float
    released: bool = False

    def release(self) -> None:
        self.admission._release(self)


@dataclass
class Admission:
    max_sessions: int
    max_partner_sessions: int
    clock: Callable[[], float] = time.monotonic
    _running: Counter[PartnershipId] = field(default_factory=Counter)
    _total: int = 0
    # A moving average of how long jobs hold their slot: the retry hint.
    _mean_seconds: float = 2.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.max_partner_sessions < 1:
            raise ValueError("session limits must be at least 1")

    def admit(self, partnership: PartnershipId) -> Slot:
        """A slot for a new job of ``partnership``, or ``NodeBusy`` (nothing is held)."""
        with self._lock:
            hint = self.retry_after()
            if self._total >= self.max_sessions:
                raise NodeBusy(
                    f"the brand node runs {_jobs(self._total)}, its limit (--max-sessions);"
                    f" retry in about {hint:.0f} s",
                    hint,
                )
            if self._running[partnership] >= self.max_partner_sessions:
                raise NodeBusy(
                    f"this partner already runs {_jobs(self._running[partnership])} on the"
                    f" node, its limit (--max-partner-sessions); retry in about {hint:.0f} s",
                    hint,
                )
            self._running[partnership] += 1
            self._total += 1
            return Slot(self, partnership, self.clock())

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot.released:
                return
            slot.released = True
            self._running[slot.partnership] -= 1
            if self._running[slot.partnership] <= 0:
                del self._running[slot.partnership]
            self._total -= 1
            held = self.clock() - slot.started
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * held

    def retry_after(self) -> float:
        """Seconds after which a refused job should try again (1 to 60)."""
        return min(60.0, max(1.0, self._mean_seconds))

    @property
    def running(self) -> int:
        return self._total
