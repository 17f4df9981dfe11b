"""What a repr shows of the bulk and secret bytes: nothing. ``asyncio.run`` takes the repr
of its finished main task (CPython's runner, checking its SIGINT handler), and a task's
repr includes its result's: a prepared partner set's repr once cost five times its size."""

from __future__ import annotations

import asyncio
import os
import tracemalloc

import numpy as np

from cleanroom.federated.attribution.messages import EventValues
from cleanroom.federated.lookalike.messages import EncryptedLabels
from cleanroom.matching.messages import PointChunk, ValueChunk
from cleanroom.matching.partner import PartnerColumn, PartnerSet
from cleanroom.proto.transport import TlsFiles

ROWS = 100_000


def a_prepared_set() -> PartnerSet:
    digests, points = os.urandom(32 * ROWS), os.urandom(32 * ROWS)
    column = PartnerColumn("email", np.arange(ROWS), digests, points=points)
    return PartnerSet(row_count=ROWS, columns=[column])


def test_a_partner_set_repr_is_short_and_shows_no_digest() -> None:
    data = a_prepared_set()
    text = repr(data)
    assert len(text) < 1000
    assert "email" in text and repr(data.columns[0].digests[:4])[2:-1] not in text
    assert data == PartnerSet(row_count=ROWS, columns=list(data.columns))  # still compared


def test_a_finished_tasks_repr_stays_short() -> None:
    async def prepare() -> PartnerSet:
        return a_prepared_set()

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(prepare())
        loop.run_until_complete(task)
        tracemalloc.start()
        try:
            text = repr(task)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(text) < 2000
        assert peak < 1 << 20  # the old repr allocated 4x the set's 6.4 MB, then cut it
    finally:
        loop.close()


def test_wire_messages_and_keys_show_no_payload() -> None:
    blob = os.urandom(1 << 20)
    for message in (
        PointChunk(seq=3, points=blob),
        ValueChunk(seq=3, values=blob),
        EncryptedLabels(seq=3, start=0, ciphertexts=blob),
        EventValues(seq=3, start=0, customers=blob, ciphertexts=blob),
    ):
        assert len(repr(message)) < 200 and "seq=3" in repr(message)
    key = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n"
    assert b"PRIVATE" not in repr(TlsFiles(ca=b"ca", cert=b"cert", key=key)).encode()
