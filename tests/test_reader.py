"""Tests for chunked audience reading: chunking, formats, reports and file errors."""

from __future__ import annotations

import gzip
import hashlib
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom.audiences.identifiers import (
    IdColumn,
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
    parse_id_columns,
)
from cleanroom.audiences.reader import (
    AudienceFileError,
    HashedChunk,
    ReadReport,
    iter_frames,
    read_columns,
    read_frame,
    read_hashed_chunks,
)
from tests.helpers import random_nanp_spelling

US = NormalizeOptions(default_region="US")
ID_COLUMNS = parse_id_columns("email,phone,maid,crm_id")
HEADER = ["crm_id", "email", "phone", "maid", "note"]
HASH_A = hashlib.sha256(b"a@example.com").hexdigest()

# Ten rows covering valid, messy, pre-hashed, invalid and empty identifiers.
ROWS: list[list[str]] = [
    ["c1", " A@Example.com ", "(201) 555-0123", "{6D92078A-8246-4BA4-AE5B-76104861E7DC}", "x"],
    ["c2", "nobody@", "12345", "", "y"],
    ["", "", "", "", "only a note"],
    ["c4", HASH_A.upper(), "", "00000000-0000-0000-0000-000000000000", ""],
    ["c5", "b@example.org", "+86 138 0013 8000", "6d92078a82464ba4ae5b76104861e7dc", ""],
    ["", "bad", "555", "nope", ""],
    ["c7", "", "201-555-0124", "", ""],
    ["c8", "jürgen@example.de", "", "", ""],
    [" ", "\u00a0", "", "", ""],
    ["c10", "z@example.com", "abc", "", ""],
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    text = "\n".join(",".join(row) for row in [header, *rows]) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[list[str]], row_group_size: int = 4) -> Path:
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(HEADER)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def expected_digest(id_column: IdColumn, value: str, options: NormalizeOptions) -> bytes | None:
    """What the scalar reference functions say about one cell."""
    if not value.strip():
        return None
    try:
        return identifier_digest(id_column.id_type, value, options)
    except InvalidIdentifier:
        return None


def check_against_scalar(
    chunks: list[HashedChunk],
    rows: list[list[str]],
    header: list[str],
    id_columns: list[IdColumn],
    options: NormalizeOptions,
) -> None:
    assert sum(c.row_count for c in chunks) == len(rows)
    for chunk in chunks:
        assert [c.id_column for c in chunk.columns] == id_columns
        for hashed in chunk.columns:
            index = header.index(hashed.id_column.column)
            cells = [rows[chunk.first_row + i][index] for i in range(chunk.row_count)]
            expected = [expected_digest(hashed.id_column, cell, options) for cell in cells]
            assert hashed.present.dtype == np.bool_
            assert hashed.present.tolist() == [d is not None for d in expected], cells
            assert hashed.digests == b"".join(d for d in expected if d is not None), cells


def chunk_signature(chunks: list[HashedChunk]) -> list[tuple[object, ...]]:
    return [
        (
            c.first_row,
            c.row_count,
            [(h.id_column, h.present.tolist(), h.digests) for h in c.columns],
        )
        for c in chunks
    ]


# --------------------------------------------------------------------------- chunks


def test_chunk_boundaries_and_digests(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    chunks = list(read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=3))
    assert [(c.first_row, c.row_count) for c in chunks] == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert all(len(h.present) == c.row_count for c in chunks for h in c.columns)
    check_against_scalar(chunks, ROWS, HEADER, ID_COLUMNS, US)
    first = chunks[0].columns[0]
    assert first.present.tolist() == [True, False, False]
    assert first.digests == hashlib.sha256(b"a@example.com").digest()


def test_chunk_size_does_not_change_results(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    whole = list(read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=100))
    assert len(whole) == 1
    for size in (1, 3, 7, 10):
        chunks = list(read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=size))
        for i in range(len(ID_COLUMNS)):
            present = np.concatenate([c.columns[i].present for c in chunks])
            assert present.tolist() == whole[0].columns[i].present.tolist()
            assert b"".join(c.columns[i].digests for c in chunks) == whole[0].columns[i].digests


def test_csv_parquet_and_gzip_give_identical_chunks(tmp_path: Path) -> None:
    csv_chunks = list(
        read_hashed_chunks(write_csv(tmp_path / "a.csv", ROWS), ID_COLUMNS, US, chunk_rows=3)
    )
    for path in (
        write_parquet(tmp_path / "a.parquet", ROWS, row_group_size=4),
        write_parquet(tmp_path / "b.pq", ROWS, row_group_size=1),
        write_csv(tmp_path / "a.csv.gz", ROWS),
    ):
        chunks = list(read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=3))
        assert chunk_signature(chunks) == chunk_signature(csv_chunks), path.name


def test_parquet_nulls_and_non_string_columns(tmp_path: Path) -> None:
    table = pa.table(
        {
            "email": pa.array(["a@example.com", None, "b@example.com"]),
            "phone": pa.array([2015550123, None, 2015550124], type=pa.int64()),
            "crm": pa.array(["x", "y", None]).dictionary_encode(),
        }
    )
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    report = ReadReport()
    columns = parse_id_columns("email,phone,crm")
    (chunk,) = read_hashed_chunks(path, columns, US, report=report)
    assert [h.present.tolist() for h in chunk.columns] == [
        [True, False, True],
        [True, False, True],
        [True, True, False],
    ]
    assert chunk.columns[1].digests[:32] == hashlib.sha256(b"+12015550123").digest()
    assert report.rows_accepted == 3
    frame = next(iter_frames(path))
    assert frame.to_dict("list") == {
        "email": ["a@example.com", "", "b@example.com"],
        "phone": ["2015550123", "", "2015550124"],
        "crm": ["x", "y", ""],
    }


def test_unsupported_parquet_column_type(tmp_path: Path) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"email": pa.array([["a@b.com"]])}), path)
    with pytest.raises(AudienceFileError, match=r"column 'email'.*cannot be read as text"):
        list(read_hashed_chunks(path, parse_id_columns("email"), US))


# --------------------------------------------------------------------------- report


def test_report_counts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    report = ReadReport()
    for _ in read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=4, report=report):
        pass
    assert report.to_dict() == {
        "rows_read": 10,
        "rows_accepted": 7,
        # Row 2 has no value at all, row 8 only whitespace; row 5 has only garbage.
        "rows_rejected": {"all_identifiers_invalid": 1, "no_identifier": 2},
        "invalid_identifiers": {
            "invalid_email": 2,
            "invalid_maid": 1,
            "invalid_phone": 3,
            "zero_maid": 1,
        },
        "identifiers": {"custom": 7, "email": 5, "maid": 2, "phone": 3},
        "forms": {
            "custom": {"plaintext": 7},
            "email": {"plaintext": 4, "sha256": 1},
            "maid": {"plaintext": 2},
            "phone": {"plaintext": 3},
        },
        "warnings": [],
    }
    assert report.rows_rejected_total == 3
    assert report.rows_accepted + report.rows_rejected_total == report.rows_read


def test_report_is_updated_per_chunk(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    report = ReadReport()
    seen = [
        report.rows_read
        for _ in read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=4, report=report)
    ]
    assert seen == [4, 8, 10]


def test_phone_needs_region_is_reported(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    report = ReadReport()
    list(read_hashed_chunks(path, parse_id_columns("phone"), NormalizeOptions(), report=report))
    # Four national-format values need a region; "abc" is not a number at all.
    assert report.invalid_identifiers == {"phone_needs_region": 4, "invalid_phone": 1}
    assert report.identifiers == {"phone": 1}  # only the +86 number


def test_report_merge_and_to_dict() -> None:
    a = ReadReport(
        rows_read=3,
        rows_accepted=2,
        rows_rejected={"no_identifier": 1},
        invalid_identifiers={"invalid_email": 1},
        identifiers={"email": 2},
        forms={"email": {"plaintext": 2}},
    )
    b = ReadReport(
        rows_read=2,
        rows_accepted=1,
        rows_rejected={"all_identifiers_invalid": 1},
        invalid_identifiers={"invalid_email": 2, "invalid_phone": 1},
        identifiers={"email": 1, "phone": 1},
        forms={"email": {"sha256": 1}, "phone": {"plaintext": 1}},
    )
    a.merge(b)
    assert a.to_dict() == {
        "rows_read": 5,
        "rows_accepted": 3,
        "rows_rejected": {"all_identifiers_invalid": 1, "no_identifier": 1},
        "invalid_identifiers": {"invalid_email": 3, "invalid_phone": 1},
        "identifiers": {"email": 3, "phone": 1},
        "forms": {"email": {"plaintext": 2, "sha256": 1}, "phone": {"plaintext": 1}},
        "warnings": [],
    }
    assert b.rows_read == 2  # merge does not touch its argument
    assert ReadReport().to_dict()["rows_rejected"] == {}


# --------------------------------------------------------------------------- vectorized path


def random_cell(rng: random.Random) -> str:
    """Messy values exercising both the vectorized and the scalar fallback paths."""
    spaces = ["", " ", "\t", "\u00a0", "\u3000", "\x1c", "\x0b", "\u2003"]
    core = rng.choice(
        [
            "Jane.Doe+News@GMail.com",
            "jane.doe@googlemail.com",
            "x@example.com",
            "ÉLODIE@exemple.fr",
            "İstanbul@example.com",
            "straße@example.de",
            "nobody@",
            "a@b",
            "a@b.c0",
            "(201) 555-0123",
            "+1 201 555 0123",
            "\uff11\uff13\uff18\uff10\uff10\uff11\uff13\uff18\uff10\uff10\uff10",
            "+86 138 0013 8000",
            "555",
            "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "{6d92078a82464ba4ae5b76104861e7dc}",
            "00000000000000000000000000000000",
            "6D92078A-8246-4BA4-AE5B-76104861E7DC}",
            HASH_A,
            HASH_A.upper(),
            HASH_A[:-1] + "Z",
            "crm-1",
            "\uff23\uff52\uff4d",
            "",
        ]
    )
    return rng.choice(spaces) + core + rng.choice(spaces)


@pytest.mark.parametrize("fold_gmail", [False, True])
@pytest.mark.parametrize("region", [None, "US", "CN"])
def test_vectorized_path_matches_scalar_reference(
    tmp_path: Path, fold_gmail: bool, region: str | None
) -> None:
    rng = random.Random(f"{fold_gmail}-{region}")
    header = ["email", "phone", "maid", "crm"]
    rows = [[random_cell(rng) for _ in header] for _ in range(400)]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(header)})
    path = tmp_path / "messy.parquet"  # Parquet keeps every whitespace character verbatim
    pq.write_table(table, path)
    options = NormalizeOptions(default_region=region, fold_gmail=fold_gmail)
    id_columns = parse_id_columns("email,phone,maid,crm:custom")
    chunks = list(read_hashed_chunks(path, id_columns, options, chunk_rows=64))
    check_against_scalar(chunks, rows, header, id_columns, options)


def random_ascii(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, length)))


@pytest.mark.parametrize("fold_gmail", [False, True])
def test_vectorized_regexes_match_python_on_random_ascii(tmp_path: Path, fold_gmail: bool) -> None:
    """Arrow uses RE2, identifiers.py uses Python's re: fuzz their agreement on ASCII input."""
    rng = random.Random(7)
    email_alphabet = "aZ9@.-_+{}|'!~\"[]() \t\x0b\x1f" + "@.."
    maid_alphabet = "0aF-{}"
    rows = []
    for _ in range(3000):
        local = random_ascii(rng, email_alphabet, 6)
        domain = random_ascii(rng, "aZ9.-_", 8)
        tld = rng.choice(["com", "c", "c0", "0c", "co-", "x-y", "", "Io"])
        email = rng.choice([f"{local}@{domain}.{tld}", f"{local}@gmail.com", local])
        maid_core = "".join(rng.choice("0aF") for _ in range(32))
        maid = rng.choice(
            [
                random_ascii(rng, maid_alphabet, 40),
                f"{maid_core[:8]}-{maid_core[8:12]}-{maid_core[12:16]}-{maid_core[16:20]}-"
                f"{maid_core[20:]}",
                "{" + maid_core + "}",
                maid_core,
                maid_core[:-1] + rng.choice("-}{g"),
            ]
        )
        rows.append([email, maid])
    header = ["email", "maid"]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(header)})
    path = tmp_path / "fuzz.parquet"
    pq.write_table(table, path)
    options = NormalizeOptions(fold_gmail=fold_gmail)
    id_columns = parse_id_columns("email,maid")
    chunks = list(read_hashed_chunks(path, id_columns, options, chunk_rows=1000))
    check_against_scalar(chunks, rows, header, id_columns, options)
    # The fuzzing must hit both outcomes to mean anything.
    for i in range(2):
        present = np.concatenate([c.columns[i].present for c in chunks])
        assert 0.05 < present.mean() < 0.95


@pytest.mark.parametrize("region", ["US", "CA", None, "GB"])
def test_north_american_phones_match_the_scalar_reference(
    tmp_path: Path, region: str | None
) -> None:
    """Phones of NANP shape are validated a column at a time; the outcome must not change.

    Area codes cover the US, Canada and the Caribbean, valid or not.
    """
    rng = random.Random(f"phones-{region}")
    rows = []
    for _ in range(2500):
        spelling = random_nanp_spelling(rng)
        rows.append([rng.choice(["", " ", "\t"]) + spelling + rng.choice(["", " "])])
    path = tmp_path / "phones.parquet"
    pq.write_table(pa.table({"phone": [row[0] for row in rows]}), path)
    options = NormalizeOptions(default_region=region)
    id_columns = parse_id_columns("phone")
    chunks = list(read_hashed_chunks(path, id_columns, options, chunk_rows=700))
    check_against_scalar(chunks, rows, ["phone"], id_columns, options)
    present = np.concatenate([c.columns[0].present for c in chunks])
    assert 0.1 < present.mean() < 0.9


def test_same_column_with_two_types(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    columns = [IdColumn("email", IdType.EMAIL), IdColumn("email", IdType.CUSTOM)]
    (chunk,) = read_hashed_chunks(path, columns, US)
    assert chunk.columns[0].present.sum() == 5
    assert chunk.columns[1].present.sum() == 7  # every non-blank value is a valid custom key


# --------------------------------------------------------------------------- frames


def test_iter_frames_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [*ROWS, ["c11", "", "", "", "007"], ["c12", "NA"]])
    frames = list(iter_frames(path, chunk_rows=5))
    assert [len(f) for f in frames] == [5, 5, 2]
    assert [f.index[0] for f in frames] == [0, 5, 10]
    assert all(list(f.columns) == HEADER for f in frames)
    whole = pd.concat(frames)
    assert all(pd.api.types.is_string_dtype(whole[c]) for c in HEADER)
    assert whole.loc[10, "note"] == "007"  # text stays text: no number parsing
    assert whole.loc[11].tolist() == ["c12", "NA", "", "", ""]  # short row, no NaN
    assert whole.loc[0, "email"] == " A@Example.com "  # raw values, not normalized


def test_phones_fall_back_when_re2_cannot_read_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A future phonenumbers pattern RE2 cannot compile must cost speed, not answers."""

    calls = []

    def unreadable(country_code: int, numbers: pa.Array) -> np.ndarray:
        calls.append(country_code)
        raise pa.ArrowInvalid("invalid regex")

    monkeypatch.setattr("cleanroom.audiences.reader.valid_national_numbers", unreadable)
    rng = random.Random("fallback")
    rows = [[random_nanp_spelling(rng)] for _ in range(300)]
    path = tmp_path / "phones.parquet"
    pq.write_table(pa.table({"phone": [row[0] for row in rows]}), path)
    id_columns = parse_id_columns("phone")
    chunks = list(read_hashed_chunks(path, id_columns, US, chunk_rows=100))
    check_against_scalar(chunks, rows, ["phone"], id_columns, US)
    assert np.concatenate([c.columns[0].present for c in chunks]).any()
    assert calls == [1, 1, 1]  # one attempt per chunk


CSV_SHAPES: dict[str, str | bytes] = {
    "plain": 'a,b,c\n1,x,\n2, y ,"q, r"\n',
    "bom_crlf": '\ufeffa,b,c\r\n1,"say ""hi""",z\r\n\r\n2,NA,null\r\n',
    "unicode": "a,b,c\nÉlodie,straße,\u3000x\n007,1e3,-0\n",
    "short_row": "a,b,c\n1,2\n3,4,5\n",  # Arrow refuses; pandas fills ""
    "quoted_newline": 'a,b,c\n1,"two\nlines",3\n',
    "duplicate_names": "a,b,a\n1,2,3\n",
    "one_column_blank_lines": "a\n1\n \n\t\n2\n ",
    "not_utf8": b"a,b,c\n1,2,3\n1,\xff,3\n",
}


@pytest.mark.parametrize("shape", sorted(CSV_SHAPES))
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_read_frame_equals_the_concatenated_frames(tmp_path: Path, shape: str, suffix: str) -> None:
    content = CSV_SHAPES[shape]
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = tmp_path / f"f{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert_read_frame_equals_frames(path, chunk_rows=1)


def assert_read_frame_equals_frames(path: Path, chunk_rows: int) -> None:
    """``read_frame`` (Arrow) reads what ``iter_frames`` (pandas) reads, or fails alike."""
    try:
        expected = pd.concat(list(iter_frames(path, chunk_rows=chunk_rows)), ignore_index=True)
    except AudienceFileError as exc:
        with pytest.raises(AudienceFileError) as caught:
            read_frame(path)
        assert str(caught.value) == str(exc)
        return
    pd.testing.assert_frame_equal(read_frame(path), expected)


def test_read_frame_of_a_large_messy_file(tmp_path: Path) -> None:
    rng = random.Random(11)
    rows = [[random_cell(rng).replace("\t", " ") for _ in HEADER] for _ in range(30_000)]
    for row in rows[::97]:  # quoted line breaks, across Arrow's 1 MB blocks
        row[4] = "two\nlines, quoted"
    frame = pd.DataFrame(rows, columns=HEADER)
    path = tmp_path / "messy.csv"
    frame.to_csv(path, index=False)
    assert path.stat().st_size > 2**21
    expected = pd.concat(list(iter_frames(path, chunk_rows=7000)), ignore_index=True)
    pd.testing.assert_frame_equal(read_frame(path), expected)
    parquet = tmp_path / "messy.parquet"
    frame.to_parquet(parquet)
    assert read_frame(parquet).astype(object).equals(expected.astype(object))


def test_iter_frames_parquet_matches_csv(tmp_path: Path) -> None:
    csv_frames = list(iter_frames(write_csv(tmp_path / "a.csv", ROWS), chunk_rows=4))
    parquet_frames = list(iter_frames(write_parquet(tmp_path / "a.parquet", ROWS), chunk_rows=4))
    assert len(csv_frames) == len(parquet_frames) == 3
    for a, b in zip(csv_frames, parquet_frames, strict=True):
        assert a.to_dict("list") == b.to_dict("list")
        assert a.index.tolist() == b.index.tolist()


def test_utf8_bom_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffemail,phone\nA@B.com,\n".encode())
    assert read_columns(path) == ["email", "phone"]
    (chunk,) = read_hashed_chunks(path, parse_id_columns("email"), US)
    assert chunk.columns[0].digests == hashlib.sha256(b"a@b.com").digest()


# --------------------------------------------------------------------------- file errors


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(AudienceFileError, match=r"audience file not found: .*missing.csv"):
        read_hashed_chunks(tmp_path / "missing.csv", ID_COLUMNS, US)
    with pytest.raises(AudienceFileError, match="not found"):
        iter_frames(tmp_path / "missing.parquet")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(AudienceFileError, match="not a regular file"):
        read_columns(tmp_path / "dir.csv")


@pytest.mark.parametrize("name", ["a.txt", "a.xlsx", "a.json", "a.gz", "a.csv.zip", "noext"])
def test_unsupported_format(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("email\na@b.com\n")
    with pytest.raises(AudienceFileError, match=r"unsupported audience file format.*\.csv\.gz"):
        read_hashed_chunks(path, ID_COLUMNS, US)


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "UPPER.CSV", ROWS)
    assert read_columns(path) == HEADER


@pytest.mark.parametrize("name", ["empty.csv", "empty.csv.gz"])
def test_empty_csv(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
    with pytest.raises(AudienceFileError, match=r"is empty \(no header row\)"):
        read_hashed_chunks(path, ID_COLUMNS, US)
    with pytest.raises(AudienceFileError, match="is empty"):
        iter_frames(path)


@pytest.mark.parametrize("content", ["email,phone\n", "email,phone", "email,phone\n\n\n"])
def test_header_only_csv(tmp_path: Path, content: str) -> None:
    path = tmp_path / "header.csv"
    path.write_text(content)
    with pytest.raises(AudienceFileError, match="has a header but no data rows"):
        read_hashed_chunks(path, parse_id_columns("email"), US)


def test_header_only_parquet(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"email": pa.array([], type=pa.string())}), path)
    with pytest.raises(AudienceFileError, match="has a header but no data rows"):
        read_hashed_chunks(path, parse_id_columns("email"), US)


def test_missing_columns_are_named_before_any_chunk(tmp_path: Path) -> None:
    for path in (write_csv(tmp_path / "a.csv", ROWS), write_parquet(tmp_path / "a.parquet", ROWS)):
        columns = parse_id_columns("email,idfa,mobile")
        with pytest.raises(AudienceFileError) as info:
            read_hashed_chunks(path, columns, US)  # raised at the call, nothing iterated
        message = str(info.value)
        assert "missing id column(s) 'idfa', 'mobile'" in message
        assert "available columns: 'crm_id', 'email', 'phone', 'maid', 'note'" in message


def test_malformed_csv_row_with_too_many_fields(tmp_path: Path) -> None:
    rows = [["c1", "a@b.com", "", "", ""]] * 5 + [["c6", "x@y.com", "", "", "", "extra"]]
    path = write_csv(tmp_path / "bad.csv", rows)
    chunks = read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=2)
    assert next(chunks).row_count == 2  # earlier chunks stream before the bad line is reached
    with pytest.raises(AudienceFileError, match=r"malformed CSV.*line 7") as info:
        list(chunks)
    assert isinstance(info.value.__cause__, pd.errors.ParserError)
    with pytest.raises(AudienceFileError, match=r"malformed CSV.*line 7"):
        list(iter_frames(path, chunk_rows=100))


def test_malformed_csv_first_row_with_extra_field(tmp_path: Path) -> None:
    # pandas would silently use the first column as the index here.
    path = write_csv(tmp_path / "bad.csv", [["c1", "a@b.com", "", "", "", "extra"]])
    with pytest.raises(AudienceFileError, match=r"malformed CSV.*line 2 has more fields"):
        read_hashed_chunks(path, ID_COLUMNS, US)


def test_malformed_csv_unterminated_quote(tmp_path: Path) -> None:
    path = tmp_path / "quote.csv"
    path.write_text('email,phone\na@b.com,1\n"c@d.com,2\ne@f.com,3\n')
    with pytest.raises(AudienceFileError, match=r"malformed CSV.*EOF inside string"):
        list(read_hashed_chunks(path, parse_id_columns("email"), US))


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("email\nj\u00fcrgen@example.de\n".encode("latin-1"))
    with pytest.raises(AudienceFileError, match="not valid UTF-8"):
        list(read_hashed_chunks(path, parse_id_columns("email"), US))


_GZIP = gzip.compress(b"email\n" + "".join(f"u{i}@b.com\n" for i in range(50_000)).encode())
TRUNCATED_GZIP = _GZIP[: len(_GZIP) // 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (TRUNCATED_GZIP, "end-of-stream"),
        (b"not gzip at all", "Not a gzipped file"),
    ],
)
def test_broken_gzip(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(content)
    with pytest.raises(AudienceFileError, match=message):
        list(read_hashed_chunks(path, parse_id_columns("email"), US, chunk_rows=1000))


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("email\na@b.com\n")
    with pytest.raises(AudienceFileError, match="not a readable Parquet file"):
        read_hashed_chunks(path, parse_id_columns("email"), US)


def test_argument_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        read_hashed_chunks(path, ID_COLUMNS, US, chunk_rows=0)
    with pytest.raises(ValueError, match="at least one id column"):
        read_hashed_chunks(path, [], US)
    with pytest.raises(ValueError, match="chunk_rows"):
        iter_frames(path, chunk_rows=-1)
