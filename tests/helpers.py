"""Reference (plaintext) computations and small test utilities."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleanroom.audiences.reference import plaintext_match, row_digests
from cleanroom.server.files import WORK_DIR

__all__ = [
    "Transcript",
    "assert_reports_equal",
    "converse",
    "eventually",
    "plaintext_match",
    "row_digests",
    "sha",
]


Transcript = list[tuple[str, Any]]


async def converse(
    brand: Any,
    partner: Any,
    stop: Callable[[Any], bool] = lambda _msg: False,
) -> Transcript:
    """Wire two protocol state machines (``start``/``hello``, ``receive``, ``outgoing``,
    ``end_of_input``) in-process: carry messages both ways until both sides are done, or
    until ``stop(msg)`` holds for a message about to be delivered (it is not). Returns the
    transcript."""
    transcript: Transcript = [("partner", partner.hello())]
    stopped = asyncio.Event()
    accepted = brand.start()
    transcript.append(("brand", accepted))
    await partner.receive(accepted)

    async def pump(source: Any, deliver: Callable[[Any], Any], side: str) -> None:
        async for msg in source:
            if stop(msg):
                stopped.set()
                return
            transcript.append((side, msg))
            await deliver(msg)

    async def to_brand() -> None:
        await pump(partner.outgoing(), brand.receive, "partner")
        if not stopped.is_set():
            brand.end_of_input()

    both: asyncio.Future[Any] = asyncio.gather(
        to_brand(), pump(brand.outgoing(), partner.receive, "brand")
    )
    halt: asyncio.Future[Any] = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait_for(asyncio.wait({both, halt}, return_when="FIRST_COMPLETED"), 120)
        if both.done():
            both.result()
    finally:
        halt.cancel()
        if not both.done():
            both.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await both
    return transcript


def eventually(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait until ``predicate`` holds (a bounded poll on observable state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sha(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def assert_reports_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["windows"] == want["windows"]
    assert [c["campaign_id"] for c in got["campaigns"]] == [
        c["campaign_id"] for c in want["campaigns"]
    ]
    for g, w in zip(got["campaigns"], want["campaigns"], strict=True):
        for key in w:
            assert_close(g[key], w[key], f"{w['campaign_id']}.{key}")


def assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal structure; floats equal to 1e-9 relative (they went through fixed point)."""
    if isinstance(b, dict):
        assert isinstance(a, dict), where
        for k in b:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(b, float):
        assert a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), (
            f"{where}: {a} != {b}"
        )
    else:
        assert a == b, f"{where}: {a} != {b}"


NANP_SPELLINGS = (
    "{a}{e}{s}",
    "{a}-{e}-{s}",
    "{a}.{e}.{s}",
    "{a} {e} {s}",
    "({a}) {e}-{s}",
    "({a}){e}-{s}",
    "+1 {a} {e} {s}",
    "+1-{a}-{e}-{s}",
    "+1-{a}.{e}.{s}",
    "+1{a}{e}{s}",
    "+1 ({a}) {e}-{s}",
    "+1 ({a}){e}{s}",
    " {a}-{e}-{s} ",
    "({a} {e}-{s}",  # unbalanced: not a North American shortcut spelling
    "1 {a} {e} {s}",  # trunk prefix without +: not a shortcut spelling
    "{a}  {e} {s}",  # two spaces: not a shortcut spelling
    "+44 {a} {e} {s}",
    "{a}-{e}-{s}x",
)


def random_nanp_spelling(rng: random.Random) -> str:
    """A ten-digit number (US, Canadian, Caribbean or no area code) in a random spelling."""
    area = f"{rng.randrange(100, 1000)}"
    exchange = f"{rng.randrange(0, 1000):03d}"
    line = f"{rng.randrange(0, 10000):04d}"
    return rng.choice(NANP_SPELLINGS).format(a=area, e=exchange, s=line)


def temporaries(data_dir: Path) -> list[str]:
    """What unfinished writes leave: ``*.tmp`` files and directories, staging files, and
    an upload's directory under ``work/`` (an audience's or a conversion set's).
    ``os.walk``, not ``rglob``: a directory the node removes mid-walk is skipped, not an
    error."""
    found = []
    for root, dirs, files in os.walk(data_dir):
        in_work = Path(root).name == WORK_DIR
        for name in (*dirs, *files):
            upload = in_work and name.startswith(("upload-", "conversions-"))
            if name.endswith(".tmp") or "staging" in name or upload:
                found.append(os.path.join(root, name))
    return found
