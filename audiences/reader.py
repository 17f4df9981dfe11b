"""Chunked reading of audience files into SHA-256 identifier digests.

Audience files can have tens of millions of rows, so nothing here holds a whole file: CSV is read
with pandas' chunked parser and Parquet batch by batch. Normalization is vectorized with Arrow
compute kernels for the common (ASCII) case; everything else falls back to the scalar functions
of :mod:`identifiers`, which define the canonical forms. Bad values are counted, never fatal.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cleanroom.proto.errors import InvalidInput

from .identifiers import (
    ASCII_WHITESPACE,
    EMAIL_PATTERN_ASCII,
    MAID_PATTERN,
    MAX_EMAIL_LENGTH,
    PREHASHED_PATTERN,
    ZERO_MAID,
    IdColumn,
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    column_options,
    identifier_digest,
)
from .phones import nanp_national_numbers, valid_national_numbers
from .platform_ids import (
    CN_MOBILE_PATTERN,
    MD5_PATTERN,
    PLATFORM_TYPES,
    ZERO_IDFA,
    IdForm,
    hashed_forms,
)

__all__ = [
    "AudienceFileError",
    "HashedChunk",
    "HashedColumn",
    "ReadReport",
    "iter_frames",
    "read_columns",
    "read_frame",
    "read_hashed_chunks",
]

DIGEST_SIZE = 32
_Format = Literal["csv", "parquet"]
BoolArray = npt.NDArray[np.bool_]


class AudienceFileError(InvalidInput):
    """The audience file as a whole is unusable (as opposed to individual bad values).

    The caller's input, so the project's ``InvalidInput`` (still a ``ValueError``): a
    transport that meets it shows its message instead of an internal error.
    """


@dataclass
class ReadReport:
    """Counters describing what happened to the rows and identifiers of a file."""

    rows_read: int = 0
    rows_accepted: int = 0
    # Row-level rejection reasons: "no_identifier", "all_identifiers_invalid".
    rows_rejected: dict[str, int] = field(default_factory=dict)
    # Per-cell invalid values by InvalidIdentifier.reason, including cells of accepted rows.
    invalid_identifiers: dict[str, int] = field(default_factory=dict)
    # Valid identifiers per IdType value.
    identifiers: dict[str, int] = field(default_factory=dict)
    # Valid identifiers per IdType value and the form they came in (plaintext, md5, ...).
    forms: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per column: its non-empty values, and how many look like something else
    # ("md5": 32 bare hex digits, "cn_mobile": a mainland mobile); see ``warnings``.
    looks: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows_rejected_total(self) -> int:
        return sum(self.rows_rejected.values())

    @property
    def warnings(self) -> list[str]:
        """Columns whose values look like another type than the one declared (most of the
        non-empty values): the likeliest reason a match with a platform's file is lost."""
        out = []
        for key, seen in sorted(self.looks.items()):
            column, _, declared = key.rpartition(":")
            total = seen.get("values", 0)
            if not total:
                continue
            if declared == "maid" and seen.get("md5", 0) * 2 > total:
                out.append(
                    f"column {column!r} (maid) looks like MD5 hashes, not ad ids:"
                    f" declare imei or idfa (e.g. --id-columns {column}:imei)"
                )
            elif declared == "phone" and seen.get("cn_mobile", 0) * 2 > total:
                out.append(
                    f"column {column!r} (phone) holds Chinese mobiles: platforms hash these"
                    f" without +86, declare cn_mobile to match their files"
                    f" (--id-columns {column}:cn_mobile)"
                )
            elif declared == "custom" and seen.get("md5", 0) * 2 > total:
                out.append(
                    f"column {column!r} (custom) looks like MD5 hashes: declare its type"
                    " (cn_mobile_md5, imei, idfa, oaid, ...) to match platform files"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy with sorted keys (stable output for logs and tests)."""
        return {
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "rows_rejected": dict(sorted(self.rows_rejected.items())),
            "invalid_identifiers": dict(sorted(self.invalid_identifiers.items())),
            "identifiers": dict(sorted(self.identifiers.items())),
            "forms": {t: dict(sorted(f.items())) for t, f in sorted(self.forms.items())},
            "warnings": self.warnings,
        }

    def merge(self, other: ReadReport) -> None:
        """Add ``other``'s counters to this report (e.g. to combine per-file reports)."""
        self.rows_read += other.rows_read
        self.rows_accepted += other.rows_accepted
        for mine, theirs in (
            (self.rows_rejected, other.rows_rejected),
            (self.invalid_identifiers, other.invalid_identifiers),
            (self.identifiers, other.identifiers),
        ):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        for nested, other_nested in ((self.forms, other.forms), (self.looks, other.looks)):
            for key, counts in other_nested.items():
                into = nested.setdefault(key, {})
                for name, count in counts.items():
                    into[name] = into.get(name, 0) + count


@dataclass
class HashedColumn:
    """Digests of one identifier column for the rows of a chunk.

    ``digests`` concatenates the 32-byte digests of the rows where ``present`` is true, in row
    order, so the i-th digest belongs to the i-th true entry of ``present``.
    """

    id_column: IdColumn
    present: BoolArray
    digests: bytes


@dataclass
class HashedChunk:
    """Hashed identifiers of ``row_count`` consecutive data rows starting at ``first_row``."""

    first_row: int  # 0-based index of the chunk's first data row in the file (header excluded)
    row_count: int
    columns: list[HashedColumn]
    # Other columns asked for (``read_hashed_chunks(keep=...)``), as text per row ("" missing).
    kept: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- file access


def _detect_format(path: Path) -> _Format:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise AudienceFileError(
        f"unsupported audience file format: {path} (expected .csv, .csv.gz, .parquet or .pq)"
    )


def _csv_options() -> dict[str, Any]:
    # Everything is read as text: "00123" must stay "00123" and "NA" is a valid CRM id.
    # index_col=False stops pandas from silently turning the first column into an index when
    # rows are longer than the header (a longer *first* row is caught by _inspect_csv).
    return {
        "dtype": str,
        "keep_default_na": False,
        "encoding": "utf-8-sig",  # tolerate the BOM that spreadsheet exports put in front
        "index_col": False,
    }


def _csv_error(path: Path, exc: Exception) -> AudienceFileError:
    if isinstance(exc, UnicodeDecodeError):
        return AudienceFileError(f"audience file {path} is not valid UTF-8 text: {exc}")
    if isinstance(exc, zlib.error):
        return AudienceFileError(f"audience file {path} is corrupt gzip data: {exc}")
    if isinstance(exc, pd.errors.EmptyDataError):
        return AudienceFileError(f"audience file {path} is empty (no header row)")
    if isinstance(exc, pd.errors.ParserError):
        return AudienceFileError(f"malformed CSV in audience file {path}: {exc}".rstrip())
    return AudienceFileError(f"cannot read audience file {path}: {exc}")


_CSV_READ_ERRORS = (
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    UnicodeDecodeError,
    OSError,
    EOFError,
    zlib.error,  # what gzip raises (not OSError) for a damaged deflate stream
)


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    format: _Format
    columns: list[str]


def _inspect_csv(path: Path) -> list[str]:
    if path.stat().st_size == 0:
        raise AudienceFileError(f"audience file {path} is empty (no header row)")
    try:
        probe = pd.read_csv(path, nrows=1, **{**_csv_options(), "index_col": None})
    except _CSV_READ_ERRORS as exc:
        raise _csv_error(path, exc) from exc
    if not isinstance(probe.index, pd.RangeIndex):
        # pandas treats a first row with one field too many as "index + data"; refuse instead.
        raise AudienceFileError(
            f"malformed CSV in audience file {path}: line 2 has more fields than the header "
            f"({len(probe.columns)} columns)"
        )
    if len(probe) == 0:
        raise AudienceFileError(f"audience file {path} has a header but no data rows")
    return [str(c) for c in probe.columns]


def _inspect_parquet(path: Path) -> list[str]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        # UnicodeDecodeError: a column name that is not UTF-8 (Arrow decodes names itself).
        raise AudienceFileError(
            f"audience file {path} is not a readable Parquet file: {exc}"
        ) from exc
    columns = list(parquet.schema_arrow.names)
    if not columns:
        raise AudienceFileError(f"audience file {path} is empty (no columns)")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        # Arrow selects every column of a repeated name and cannot tell them apart.
        raise AudienceFileError(
            f"audience file {path} has more than one column named "
            f"{', '.join(repr(c) for c in repeated)}; Parquet column names must be unique"
        )
    if parquet.metadata.num_rows == 0:
        raise AudienceFileError(f"audience file {path} has a header but no data rows")
    return columns


def _inspect(path: str | Path) -> _FileInfo:
    """Check everything that can be checked without reading the data: fail before any chunk."""
    file_path = Path(path)
    if not file_path.exists():
        raise AudienceFileError(f"audience file not found: {file_path}")
    if not file_path.is_file():
        raise AudienceFileError(f"audience file is not a regular file: {file_path}")
    file_format = _detect_format(file_path)
    columns = _inspect_csv(file_path) if file_format == "csv" else _inspect_parquet(file_path)
    return _FileInfo(path=file_path, format=file_format, columns=columns)


def read_columns(path: str | Path) -> list[str]:
    """Column names of an audience file (validates that the file is readable and non-empty)."""
    return _inspect(path).columns


def _check_chunk_rows(chunk_rows: int) -> None:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")


def _iter_csv_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        reader = pd.read_csv(path, chunksize=chunk_rows, **_csv_options())
    except _CSV_READ_ERRORS as exc:
        raise _csv_error(path, exc) from exc
    first_row = 0
    with reader:
        while True:
            try:
                frame = next(reader)
            except StopIteration:
                return
            except _CSV_READ_ERRORS as exc:
                raise _csv_error(path, exc) from exc
            # Rows shorter than the header get missing values; treat them as empty cells.
            frame = frame.fillna("")
            frame.index = pd.RangeIndex(first_row, first_row + len(frame))
            first_row += len(frame)
            yield frame


def _to_text(column: pa.ChunkedArray | pa.Array, name: str, path: Path) -> pa.Array:
    """Arrow column as a null-free large_string array, so every file format looks like CSV."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    try:
        text = pc.cast(column, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise AudienceFileError(
            f"column {name!r} of audience file {path} has type {column.type}, which cannot be "
            f"read as text: {exc}"
        ) from exc
    return pc.fill_null(text, "")


def _iter_parquet_tables(
    path: Path, chunk_rows: int, columns: list[str] | None
) -> Iterator[pa.Table]:
    """Yield tables of exactly ``chunk_rows`` rows (the last may be shorter).

    Parquet batches stop at row-group boundaries; re-slicing makes chunk boundaries independent
    of how the file was written, so CSV and Parquet copies of a file give identical chunks.
    """
    try:
        parquet = pq.ParquetFile(path)
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= chunk_rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, chunk_rows)
                rest = table.slice(chunk_rows)
                pending = rest.to_batches()
                pending_rows = rest.num_rows
        if pending_rows:
            yield pa.Table.from_batches(pending)
    except (pa.ArrowException, OSError) as exc:
        raise AudienceFileError(f"cannot read Parquet audience file {path}: {exc}") from exc


def _text_table(table: pa.Table, path: Path) -> dict[str, pa.Array]:
    return {name: _to_text(table.column(name), name, path) for name in table.column_names}


def iter_frames(path: str | Path, chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """Yield the file as DataFrames of at most ``chunk_rows`` rows, every column as text.

    Empty cells are "" (never NaN) and each frame's index is the 0-based data-row number in the
    file, so results can be aligned with :class:`HashedChunk` rows. The file is validated before
    this returns, so errors such as a missing file surface at the call, not at the first chunk.
    """
    _check_chunk_rows(chunk_rows)
    info = _inspect(path)
    if info.format == "csv":
        return _iter_csv_frames(info.path, chunk_rows)
    return _iter_parquet_frames(info.path, chunk_rows)


def read_frame(path: str | Path) -> pd.DataFrame:
    """The whole file as one DataFrame: the frames of :func:`iter_frames`, concatenated.

    For inputs that are read whole anyway (an exposure log). CSV goes through
    Arrow's multithreaded reader, ~2x faster than pandas' parser, configured to
    read what pandas reads (every cell as text, no missing values, quoted line
    breaks allowed; tests compare the two on messy files). Files Arrow refuses
    (rows shorter or longer than the header, bad UTF-8), would name
    differently (duplicate column names) or would read differently (a single
    column, where pandas skips whitespace-only lines) take the pandas path,
    which gives the frame or the precise error.
    """
    info = _inspect(path)
    if info.format == "csv":
        frame = _arrow_csv_frame(info)
        if frame is not None:
            return frame
    frames = (
        _iter_csv_frames(info.path, 200_000)
        if info.format == "csv"
        else _iter_parquet_frames(info.path, 200_000)
    )
    return pd.concat(list(frames), ignore_index=True)


def _arrow_csv_frame(info: _FileInfo) -> pd.DataFrame | None:
    if len(set(info.columns)) != len(info.columns):  # pandas renames duplicates
        return None
    if len(info.columns) < 2:  # pandas skips whitespace-only lines as blank; Arrow keeps them
        return None
    try:
        table = pa_csv.read_csv(
            info.path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(info.columns, pa.string()),
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, OSError):
        return None
    if table.column_names != info.columns:
        return None
    # The dtype pandas' read_csv(dtype=str) gives: "str" (Arrow-backed) since
    # pandas 3, object before.
    text = pd.Series([], dtype=str).dtype
    mapper = {pa.string(): text}.get if isinstance(text, pd.StringDtype) else None
    return table.to_pandas(types_mapper=mapper)


def _iter_parquet_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    first_row = 0
    for table in _iter_parquet_tables(path, chunk_rows, None):
        text = pa.table(_text_table(table, path))
        frame = text.to_pandas(types_mapper={pa.large_string(): pd.StringDtype()}.get)
        frame.index = pd.RangeIndex(first_row, first_row + len(frame))
        first_row += len(frame)
        yield frame


# --------------------------------------------------------------------------- hashing

_MISSING, _VALID, _INVALID = 0, 1, 2


@dataclass
class _ColumnResult:
    status: npt.NDArray[np.int8]
    digests: npt.NDArray[np.uint8]  # (rows, 32); only rows with status _VALID are meaningful
    reasons: Counter[str]
    forms: Counter[str] = field(default_factory=Counter)  # valid values per IdForm
    looks: Counter[str] = field(default_factory=Counter)  # see ReadReport.looks


def _bool(array: pa.Array | pa.ChunkedArray) -> BoolArray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _digest_matrix(blobs: list[bytes]) -> npt.NDArray[np.uint8]:
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(-1, DIGEST_SIZE)


def _sha256_rows(values: pa.Array, mask: BoolArray) -> npt.NDArray[np.uint8]:
    """SHA-256 of the selected values; hashing is the one unavoidable per-row Python call."""
    selected = pc.cast(values.filter(pa.array(mask)), pa.large_binary()).to_pylist()
    sha256 = hashlib.sha256
    return _digest_matrix([sha256(blob).digest() for blob in selected])


def _md5_sha256_rows(values: pa.Array, mask: BoolArray) -> npt.NDArray[np.uint8]:
    """SHA-256 of the lowercase MD5 hex of the selected values (the MD5-based types'
    canonical digest)."""
    selected = pc.cast(values.filter(pa.array(mask)), pa.large_binary()).to_pylist()
    md5, sha256 = hashlib.md5, hashlib.sha256
    return _digest_matrix(
        [sha256(md5(b, usedforsecurity=False).hexdigest().encode()).digest() for b in selected]
    )


# The separators platform_ids strips from numbers, for ASCII values (Python's \s there is
# str.isspace, which on ASCII is ASCII_WHITESPACE; RE2's \s is narrower).
_WHITESPACE_CHARS = "".join(f"\\x{ord(c):02x}" for c in ASCII_WHITESPACE)
_WHITESPACE_CLASS = f"[{_WHITESPACE_CHARS}]"
_NOISE_CLASS = f"[{_WHITESPACE_CHARS}\\-.()]"
_CN_MOBILE_DIGITS = "^(?:\\+86|0086|86)?(?P<digits>1[3-9][0-9]{9})$"
_IMEI_SHAPE = "^(?:[0-9]{14,15}|[0-9a-f]{14})$"
_IDFA_SHAPE = "^[{]?[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}[}]?$"


def _hash_platform_rows(
    trimmed: pa.Array,
    todo: BoolArray,
    id_type: IdType,
    status: npt.NDArray[np.int8],
    digests: npt.NDArray[np.uint8],
) -> BoolArray:
    """Hash the rows of ``todo`` that are in a platform type's common ASCII forms (hex MD5,
    hex SHA-256 / MD5_SHA256, plaintext mobiles and IMEIs) exactly as
    ``platform_ids.platform_digest`` does; returns the rows left for the scalar rules."""
    accepted = hashed_forms(id_type.value)
    left = todo.copy()
    if IdForm.MD5 in accepted:
        md5 = left & _bool(pc.match_substring_regex(trimmed, MD5_PATTERN))
        digests[md5] = _sha256_rows(pc.ascii_lower(trimmed), md5)
        status[md5] = _VALID
        left &= ~md5
    if accepted & {IdForm.SHA256, IdForm.MD5_SHA256}:
        long = left & _bool(pc.match_substring_regex(trimmed, PREHASHED_PATTERN))
        if long.any():
            hexes = trimmed.filter(pa.array(long)).to_pylist()
            digests[long] = _digest_matrix([bytes.fromhex("".join(hexes))])
            status[long] = _VALID
        left &= ~long
    if id_type in (IdType.CN_MOBILE_MD5, IdType.CN_MOBILE_SHA256):
        cleaned = pc.replace_substring_regex(trimmed, pattern=_NOISE_CLASS, replacement="")
        found = pc.extract_regex(cleaned, _CN_MOBILE_DIGITS)
        plain = left & _bool(pc.is_valid(found))
        numbers = pc.fill_null(pc.struct_field(found, "digits"), "")
        if id_type is IdType.CN_MOBILE_MD5:
            digests[plain] = _md5_sha256_rows(numbers, plain)
        else:
            digests[plain] = _sha256_rows(numbers, plain)
        status[plain] = _VALID
        left &= ~plain
    else:
        canonical, plain = _platform_plaintext(trimmed, id_type)
        plain &= left
        if id_type is IdType.WECHAT_UNIONID:
            digests[plain] = _sha256_rows(canonical, plain)
        elif id_type is not IdType.WECHAT_OPENID:  # (its digest needs the app id: scalar)
            digests[plain] = _md5_sha256_rows(canonical, plain)
        else:
            plain[:] = False
        status[plain] = _VALID
        left &= ~plain
    return left


def _platform_plaintext(trimmed: pa.Array, id_type: IdType) -> tuple[pa.Array, BoolArray]:
    """The canonical plaintext of each ASCII value of a non-mobile platform type, and which
    values are valid (``platform_ids``' normalizers, a column at a time)."""

    def matches(values: pa.Array, pattern: str) -> BoolArray:
        return _bool(pc.match_substring_regex(values, pattern))

    if id_type is IdType.IMEI:
        cleaned = pc.ascii_lower(
            pc.replace_substring_regex(trimmed, pattern=_NOISE_CLASS, replacement="")
        )
        return cleaned, matches(cleaned, _IMEI_SHAPE) & ~matches(cleaned, "^0+$")
    if id_type is IdType.IDFA:
        upper = pc.ascii_upper(trimmed)
        canonical = pc.replace_substring_regex(upper, pattern="[{}]", replacement="")
        return canonical, matches(upper, _IDFA_SHAPE) & ~_bool(pc.equal(canonical, ZERO_IDFA))
    if id_type is IdType.OAID:
        undashed = pc.replace_substring(trimmed, pattern="-", replacement="")
        lengths = np.asarray(pc.utf8_length(trimmed).to_numpy(zero_copy_only=False))
        spaced = matches(trimmed, _WHITESPACE_CLASS)
        return trimmed, ~spaced & (lengths <= 128) & ~matches(undashed, "^0+$")
    if id_type is IdType.ANDROID_ID:
        lowered = pc.ascii_lower(trimmed)
        return lowered, matches(lowered, "^[0-9a-f]{13,16}$")
    if id_type is IdType.QQ:
        cleaned = pc.replace_substring_regex(trimmed, pattern=_NOISE_CLASS, replacement="")
        return cleaned, matches(cleaned, "^[1-9][0-9]{4,11}$")
    # wechat ids: as issued
    return trimmed, matches(trimmed, "^[A-Za-z0-9_-]{16,64}$")


def _canonical_maids(lowered: pa.Array) -> pa.Array:
    digits = pc.replace_substring_regex(lowered, pattern="[{}-]", replacement="")
    parts = [
        pc.utf8_slice_codeunits(digits, start, stop)
        for start, stop in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))
    ]
    return pc.binary_join_element_wise(*parts, pa.scalar("-", type=lowered.type))


def _hash_column(values: pa.Array, id_type: IdType, options: NormalizeOptions) -> _ColumnResult:
    rows = len(values)
    status = np.zeros(rows, dtype=np.int8)
    digests = np.zeros((rows, DIGEST_SIZE), dtype=np.uint8)
    reasons: Counter[str] = Counter()

    # Arrow kernels and Python string methods agree on ASCII text (trim set, case mapping, regex
    # classes) but not necessarily beyond it, so non-ASCII values take the scalar path.
    ascii_rows = _bool(pc.string_is_ascii(values))
    trimmed = pc.utf8_trim(values, characters=ASCII_WHITESPACE)
    lengths = np.asarray(pc.utf8_length(trimmed).to_numpy(zero_copy_only=False))
    candidates = ascii_rows & (lengths > 0)
    scalar_rows = ~ascii_rows

    if id_type.value in PLATFORM_TYPES:
        # Each has its own hashed forms and rules (platform_ids): the common ASCII forms are
        # hashed here a column at a time, the rest by the scalar rules.
        scalar_rows |= _hash_platform_rows(trimmed, candidates, id_type, status, digests)
        candidates = np.zeros(rows, dtype=np.bool_)
    prehashed = candidates & _bool(pc.match_substring_regex(trimmed, PREHASHED_PATTERN))
    if prehashed.any():
        hex_digests = trimmed.filter(pa.array(prehashed)).to_pylist()
        digests[prehashed] = _digest_matrix([bytes.fromhex("".join(hex_digests))])
        status[prehashed] = _VALID
    todo = candidates & ~prehashed

    if id_type is IdType.EMAIL:
        lowered = pc.ascii_lower(trimmed)
        ok = _bool(pc.match_substring_regex(lowered, EMAIL_PATTERN_ASCII)) & (
            lengths <= MAX_EMAIL_LENGTH
        )
        valid = todo & ok
        if options.fold_gmail:
            gmail = _bool(
                pc.or_(
                    pc.ends_with(lowered, "@gmail.com"), pc.ends_with(lowered, "@googlemail.com")
                )
            )
            scalar_rows |= valid & gmail  # folding is rare enough to do one by one
            valid &= ~gmail
        invalid = todo & ~ok
        reasons["invalid_email"] += int(invalid.sum())
        status[invalid] = _INVALID
        digests[valid] = _sha256_rows(lowered, valid)
        status[valid] = _VALID
    elif id_type is IdType.MAID:
        lowered = pc.ascii_lower(trimmed)
        ok = todo & _bool(pc.match_substring_regex(lowered, MAID_PATTERN))
        canonical = _canonical_maids(lowered)
        zero = ok & _bool(pc.equal(canonical, ZERO_MAID))
        valid = ok & ~zero
        bad = todo & ~ok
        reasons["invalid_maid"] += int(bad.sum())
        reasons["zero_maid"] += int(zero.sum())
        status[bad | zero] = _INVALID
        digests[valid] = _sha256_rows(canonical, valid)
        status[valid] = _VALID
    elif id_type is IdType.CUSTOM:
        digests[todo] = _sha256_rows(trimmed, todo)
        status[todo] = _VALID
    elif id_type is IdType.PHONE:
        # North American spellings are validated here a column at a time; other
        # numbers need phonenumbers' full parse, one call per distinct value.
        shaped, national = nanp_national_numbers(trimmed, options.default_region)
        nanp = todo & shaped
        nanp_rows = np.flatnonzero(nanp)
        valid = np.zeros(len(nanp), dtype=np.bool_)
        try:
            valid[nanp_rows] = valid_national_numbers(1, national.take(pa.array(nanp_rows)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # A phonenumbers release whose patterns RE2 cannot compile: every
            # number takes the scalar path, slower but the same answers.
            nanp[:] = False
        invalid = nanp & ~valid
        reasons["invalid_phone"] += int(invalid.sum())
        status[invalid] = _INVALID
        e164 = pc.binary_join_element_wise(
            pa.scalar("+1", type=national.type), national, pa.scalar("", type=national.type)
        )
        digests[valid] = _sha256_rows(e164, valid)
        status[valid] = _VALID
        scalar_rows |= todo & ~nanp

    if scalar_rows.any():
        # Trimmed ASCII values give the same results (the scalar functions trim identically)
        # and make the cache hit for " 201-555-0123" as well as "201-555-0123".
        source = pc.if_else(pa.array(ascii_rows), trimmed, values)
        _hash_scalar_rows(
            source, np.flatnonzero(scalar_rows), id_type, options, status, digests, reasons
        )
    forms, looks = _forms_and_looks(trimmed, id_type, status == _VALID, lengths > 0)
    return _ColumnResult(status=status, digests=digests, reasons=+reasons, forms=forms, looks=looks)


def _forms_and_looks(
    trimmed: pa.Array, id_type: IdType, valid: BoolArray, present: BoolArray
) -> tuple[Counter[str], Counter[str]]:
    """How the valid values were given (the forms ``identifier_digest`` read them as), and
    what the column's values look like (for ``ReadReport.warnings``)."""

    def matches(pattern: str) -> BoolArray:
        return _bool(pc.match_substring_regex(trimmed, pattern))

    none = np.zeros_like(valid)
    accepted = hashed_forms(id_type.value) if id_type.value in PLATFORM_TYPES else {IdForm.SHA256}
    # Only the columns whose warnings ask about MD5s look for them beyond their own forms.
    hints_md5 = id_type in (IdType.MAID, IdType.CUSTOM)
    hex32 = matches(MD5_PATTERN) if IdForm.MD5 in accepted or hints_md5 else none
    long_form = next((f for f in (IdForm.MD5_SHA256, IdForm.SHA256) if f in accepted), None)
    as_md5 = valid & hex32 if IdForm.MD5 in accepted else none
    as_long = valid & matches(PREHASHED_PATTERN) if long_form is not None else none
    counts = {IdForm.MD5.value: as_md5, (long_form or IdForm.SHA256).value: as_long}
    counts[IdForm.PLAINTEXT.value] = valid & ~as_md5 & ~as_long
    forms = Counter({name: int(rows.sum()) for name, rows in counts.items() if rows.any()})
    looks = Counter({"values": int(present.sum())})
    if hints_md5:
        looks["md5"] = int((present & hex32).sum())
    if id_type is IdType.PHONE:
        looks["cn_mobile"] = int((present & matches(CN_MOBILE_PATTERN)).sum())
    return forms, looks


def _hash_scalar_rows(
    values: pa.Array,
    indices: npt.NDArray[np.intp],
    id_type: IdType,
    options: NormalizeOptions,
    status: npt.NDArray[np.int8],
    digests: npt.NDArray[np.uint8],
    reasons: Counter[str],
) -> None:
    """Run the reference scalar normalization on selected rows, caching repeated values.

    The cache lives for one chunk so memory stays bounded however large the file is.
    """
    cache: dict[str, bytes | str | None] = {}
    valid_rows: list[int] = []
    valid_digests: list[bytes] = []
    selected = values.take(pa.array(indices)).to_pylist()
    for row, value in zip(indices.tolist(), selected, strict=True):
        if value in cache:
            outcome = cache[value]
        else:
            outcome = cache[value] = _scalar_outcome(id_type, value, options)
        if outcome is None:
            continue
        if isinstance(outcome, bytes):
            valid_rows.append(row)
            valid_digests.append(outcome)
        else:
            status[row] = _INVALID
            reasons[outcome] += 1
    if valid_rows:
        digests[valid_rows] = _digest_matrix(valid_digests)
        status[valid_rows] = _VALID


def _scalar_outcome(id_type: IdType, value: str, options: NormalizeOptions) -> bytes | str | None:
    """Digest for a valid value, the reason key for an invalid one, None for an empty cell."""
    if not value.strip():
        return None
    try:
        return identifier_digest(id_type, value, options)
    except InvalidIdentifier as exc:
        return exc.reason


def _hash_chunk(
    first_row: int,
    row_count: int,
    columns: dict[str, pa.Array],
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    report: ReadReport | None,
) -> HashedChunk:
    any_valid = np.zeros(row_count, dtype=np.bool_)
    any_value = np.zeros(row_count, dtype=np.bool_)
    hashed: list[HashedColumn] = []
    reasons: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
    forms: dict[str, Counter[str]] = {}
    looks: dict[str, Counter[str]] = {}
    for id_column in id_columns:
        result = _hash_column(
            columns[id_column.column], id_column.id_type, column_options(options, id_column)
        )
        forms.setdefault(id_column.id_type.value, Counter()).update(result.forms)
        looks[f"{id_column.column}:{id_column.id_type.value}"] = result.looks
        present = result.status == _VALID
        any_valid |= present
        any_value |= result.status != _MISSING
        reasons.update(result.reasons)
        per_type[id_column.id_type.value] += int(present.sum())
        hashed.append(
            HashedColumn(
                id_column=id_column, present=present, digests=result.digests[present].tobytes()
            )
        )
    if report is not None:
        report.rows_read += row_count
        report.rows_accepted += int(any_valid.sum())
        rejected = Counter(
            {
                "no_identifier": int((~any_value).sum()),
                "all_identifiers_invalid": int((any_value & ~any_valid).sum()),
            }
        )
        report.merge(
            ReadReport(
                rows_rejected=dict(+rejected),
                invalid_identifiers=dict(reasons),
                identifiers=dict(per_type),
                forms={t: dict(f) for t, f in forms.items() if f},
                looks={c: dict(seen) for c, seen in looks.items()},
            )
        )
    return HashedChunk(first_row=first_row, row_count=row_count, columns=hashed)


def hash_frame(
    frame: pd.DataFrame, id_columns: Sequence[IdColumn], options: NormalizeOptions
) -> HashedChunk:
    """Normalize and hash the identifier columns of an in-memory frame.

    The same vectorized path as ``read_hashed_chunks``; module-level so it can
    run in a worker process on one slice of a large frame.
    """
    columns = {
        c.column: pa.array(frame[c.column].fillna("").astype(str).tolist(), pa.string())
        for c in id_columns
    }
    return _hash_chunk(0, len(frame), columns, id_columns, options, None)


def read_hashed_chunks(
    path: str | Path,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    *,
    chunk_rows: int = 50_000,
    report: ReadReport | None = None,
    keep: Sequence[str] = (),
) -> Iterator[HashedChunk]:
    """Stream an audience file as chunks of identifier digests, updating ``report`` as it goes.

    The file and the presence of every id column (and of every ``keep`` column, whose text
    each chunk carries in ``kept``) are checked when this is called, before any chunk is
    produced. Invalid identifier values are counted in ``report`` and skipped; a row is
    accepted if at least one of its identifiers is valid.
    """
    _check_chunk_rows(chunk_rows)
    if not id_columns:
        raise ValueError("at least one id column is required")
    info = _inspect(path)
    missing_ids = [c.column for c in id_columns if c.column not in info.columns]
    missing_other = [c for c in keep if c not in info.columns]
    if missing_ids or missing_other:
        parts = [
            f"{what} {', '.join(repr(m) for m in names)}"
            for what, names in (("id column(s)", missing_ids), ("column(s)", missing_other))
            if names
        ]
        raise AudienceFileError(
            f"audience file {info.path} is missing {' and '.join(parts)}; available columns: "
            f"{', '.join(repr(c) for c in info.columns)}"
        )
    return _iter_hashed(info, list(id_columns), options, chunk_rows, report, list(keep))


def _iter_hashed(
    info: _FileInfo,
    id_columns: list[IdColumn],
    options: NormalizeOptions,
    chunk_rows: int,
    report: ReadReport | None,
    keep: list[str] | None = None,
) -> Iterator[HashedChunk]:
    kept_names = list(dict.fromkeys(keep or ()))
    names = list(dict.fromkeys([*(c.column for c in id_columns), *kept_names]))
    first_row = 0
    if info.format == "csv":
        # All columns are parsed (no usecols) because pandas only detects rows with too many
        # fields when it tokenizes every column.
        for frame in _iter_csv_frames(info.path, chunk_rows):
            arrays = {
                name: _to_text(pa.array(frame[name], from_pandas=True), name, info.path)
                for name in names
            }
            chunk = _hash_chunk(first_row, len(frame), arrays, id_columns, options, report)
            chunk.kept = _kept_text(arrays, kept_names)
            yield chunk
            first_row += len(frame)
    else:
        for table in _iter_parquet_tables(info.path, chunk_rows, names):
            arrays = _text_table(table, info.path)
            chunk = _hash_chunk(first_row, table.num_rows, arrays, id_columns, options, report)
            chunk.kept = _kept_text(arrays, kept_names)
            yield chunk
            first_row += table.num_rows


def _kept_text(arrays: dict[str, pa.Array], names: list[str]) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(arrays[name].fill_null("").to_pylist(), dtype=object) for name in names
    }
