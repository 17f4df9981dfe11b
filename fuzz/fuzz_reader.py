"""Coverage-guided fuzzing of the audience reader (atheris): arbitrary bytes as a file.

    python fuzz/fuzz_reader.py -atheris_runs=100000 [corpus_dir ...]

The first input byte picks how the rest is presented: as a .csv, as a .csv.gz (raw,
or gzip-compressed first, so the fuzzer reaches the CSV parser through the
decompressor too), or as a .parquet file. Every reader entry point then runs on it
(``read_columns``, ``iter_frames``, ``read_frame``, ``read_hashed_chunks``) with a report.
``AudienceFileError`` is the documented answer to a bad file; any other exception is a
crash (the input is saved as ``crash-<sha1>``), and so is a report that does not add up.
"""

from __future__ import annotations

import atexit
import gzip
import io
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

# Instrument only the project: the reader's own branches are what the fuzzer should
# learn to steer; instrumenting pandas and pyarrow would make every run far slower.
with atheris.instrument_imports(include=["cleanroom.audiences"]):
    from cleanroom.audiences.identifiers import IdColumn, IdType, NormalizeOptions
    from cleanroom.audiences.reader import (
        AudienceFileError,
        ReadReport,
        iter_frames,
        read_columns,
        read_frame,
        read_hashed_chunks,
    )

SUFFIXES = (".csv", ".csv.gz", ".csv.gz", ".parquet")
OPTIONS = (NormalizeOptions(), NormalizeOptions(default_region="US", fold_gmail=True))
# A RAM-backed directory where there is one: the target writes a file per input.
_SHM = Path("/dev/shm")
WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-reader-", dir=_SHM if _SHM.is_dir() else None))
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)


def _file(data: bytes) -> Path:
    choice, body = (data[0] % len(SUFFIXES), data[1:]) if data else (0, b"")
    if choice == 2:  # compress it ourselves: valid gzip around fuzzed CSV
        body = gzip.compress(body, mtime=0)
    path = WORKDIR / f"input{SUFFIXES[choice]}"
    path.write_bytes(body)
    return path


def _parquet_seed() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    table = pa.table({"email": ["a@b.com", None], "phone": ["+1 201 555 0123", "x"]})
    pq.write_table(table, buffer, row_group_size=1)
    return bytes([3]) + buffer.getvalue()


def TestOneInput(data: bytes) -> None:
    path = _file(data)
    try:
        columns = read_columns(path)
        frames = list(iter_frames(path, chunk_rows=2))
        whole = read_frame(path)
        types = list(IdType)
        id_columns = [
            IdColumn(name, types[i % len(types)]) for i, name in enumerate(dict.fromkeys(columns))
        ]
        report = ReadReport()
        chunks = list(
            read_hashed_chunks(
                path, id_columns, OPTIONS[len(data) % 2], chunk_rows=3, report=report
            )
        )
    except AudienceFileError:
        return
    rows = sum(len(f) for f in frames)
    if not (rows > 0 and len(whole) == rows == report.rows_read):
        raise AssertionError(
            f"row counts disagree: frames {rows}, read_frame {len(whole)}, "
            f"report {report.rows_read}"
        )
    if report.rows_accepted + report.rows_rejected_total != report.rows_read:
        raise AssertionError(f"report does not add up: {report.to_dict()}")
    for chunk in chunks:
        for hashed in chunk.columns:
            if len(hashed.digests) != 32 * int(hashed.present.sum()):
                raise AssertionError("digests do not match the presence mask")


def main() -> None:
    # A few well-formed files to start from, read after any corpus directory given (the
    # first directory named is where libFuzzer saves what it finds).
    seeds = WORKDIR / "seeds"
    seeds.mkdir(exist_ok=True)
    (seeds / "csv").write_bytes(b"\x00email,phone,maid\nA@B.com,(201) 555-0123,\n")
    (seeds / "gz").write_bytes(b'\x02email,crm\n\xef\xbb\xbfx@y.io,"a,b"\n')
    (seeds / "parquet").write_bytes(_parquet_seed())
    sys.argv.append(str(seeds))
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
