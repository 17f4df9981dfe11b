"""The journal of sent chunks: the same messages back, from memory or from its file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cleanroom.matching import journal
from cleanroom.matching.journal import Journal, point_chunk, points_of
from cleanroom.matching.messages import PointChunk


@pytest.mark.parametrize("memory_bytes", [1 << 30, 0, 5 * 32 * 7])
def test_every_message_comes_back_as_sent(
    memory_bytes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "RECENT", 3)
    sent: Journal[PointChunk] = Journal(
        point_chunk, points_of, spill_dir=tmp_path, memory_bytes=memory_bytes
    )
    payloads = [os.urandom(32 * (1 + i % 7)) for i in range(40)]
    for data in payloads:
        msg = sent.next_message(data)
        assert msg.seq == len(sent) - 1
    assert len(sent) == 40
    assert sent.on_disk is (memory_bytes < sum(map(len, payloads)))
    for seq in [0, 39, 17, 3, 38, 0]:  # old ones from the file, recent ones from memory
        assert sent[seq] == PointChunk(seq=seq, points=payloads[seq])
    with pytest.raises(IndexError):
        sent[40]
    files = list(tmp_path.rglob("*.bin"))
    if sent.on_disk:
        [file] = files
        assert oct(file.stat().st_mode & 0o777) == "0o600"
        assert file.read_bytes() == b"".join(payloads)  # only the payloads, in order
    else:
        assert files == []
    sent.close()
    assert list(tmp_path.rglob("*.bin")) == []
