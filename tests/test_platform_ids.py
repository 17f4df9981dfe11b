"""Chinese platforms' identifier types: known answers from the platforms' own examples and
the normalization rules, and properties (idempotent, no form taken for another)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.audiences.identifiers import (
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    column_options,
    identifier_digest,
    normalize,
    parse_id_columns,
)
from cleanroom.audiences.platform_ids import (
    PLATFORM_TYPES,
    IdForm,
    md5_hex,
    platform_digest,
    platform_normalize,
)

MOBILE = "13800138000"
MOBILE_MD5 = "7945bd83237335e5376ff44d62e4f0ae"
MOBILE_SHA256 = "a6942f9771d67f34034d2f1926988ed3fad3bf1b4e7cedb9a31f31398dea43bc"
MOBILE_MD5_SHA256 = "f058a0a0a30b5371ccce1c532b49c55d819211401002d45e3043bba66add2ca5"
APP = "wx0123456789abcdef"  # a WeChat app id (wx and 16 hex digits)
US = NormalizeOptions()
FULL_WIDTH_MOBILE = "".join(chr(0xFF10 + int(d)) for d in "8613800138000")  # as some CRMs export


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@pytest.mark.parametrize(
    ("id_type", "plaintext", "md5"),
    [
        # Tencent's audience file format: HASH_IDFA, "加密前FF1999CD-7177-4937-A474-
        # 74937A102630, 加密后2c010ed96aef2fc34983e1e7e9176b7e" (uppercase, dashes kept).
        ("idfa", "FF1999CD-7177-4937-A474-74937A102630", "2c010ed96aef2fc34983e1e7e9176b7e"),
        ("idfa", "ff1999cd-7177-4937-a474-74937a102630", "2c010ed96aef2fc34983e1e7e9176b7e"),
        # Tencent HASH_IMEI: "加密前a000002c9060f7, 加密后f2d5a650733ca8c27d502b1c08da14e5".
        ("imei", "A000002C9060F7", "f2d5a650733ca8c27d502b1c08da14e5"),
        # DataNexus: "原始 IMEI 码: 868049039501257 加密之后: 8d3ebd3654fb46a2832296669cf1b536".
        ("imei", "868049039501257", "8d3ebd3654fb46a2832296669cf1b536"),
        # DataNexus OAID test case: the raw value, case and dashes as reported.
        ("oaid", "1fe9a970-efbb-29e0-0bdd-f5dbbf751ab5", "83e9158a4fb54c0e1ef0b238639a23ae"),
        # Android IDs as Android reports them (lowercase hex), QQ numbers as digits.
        ("android_id", "9774D56D682E549C", "cf95dc53f383f9a836fd749f3ef439cd"),
        ("qq", "10001", "d89f3a35931c386956c1a402a8e09941"),
        ("qq", "123 456 789", "25f9e794323b453885f5181f1b624d0b"),
        # Mobiles: the 11 digits, whatever the spelling.
        ("cn_mobile_md5", "+86 138-0013-8000", MOBILE_MD5),
        ("cn_mobile_md5", "0086 13800138000", MOBILE_MD5),
        ("cn_mobile_md5", FULL_WIDTH_MOBILE, MOBILE_MD5),  # full-width digits
        ("cn_mobile_md5", "138 0013 8000", MOBILE_MD5),
    ],
)
def test_md5_based_types_hash_as_the_platforms_do(id_type: str, plaintext: str, md5: str) -> None:
    assert md5_hex(platform_normalize(id_type, plaintext)) == md5
    canonical = sha(md5)  # also Tencent's MD5_SHA256 form
    assert platform_digest(id_type, plaintext) == (canonical, IdForm.PLAINTEXT)
    assert platform_digest(id_type, md5) == (canonical, IdForm.MD5)
    assert platform_digest(id_type, md5.upper()) == (canonical, IdForm.MD5)  # 不计大小写


def test_the_oaid_md5_sha256_known_answer() -> None:
    """DataNexus: md5 83e9158a… then sha256 a58f9fff… of the same OAID."""
    digest, _ = platform_digest("oaid", "1fe9a970-efbb-29e0-0bdd-f5dbbf751ab5")
    assert digest.hex() == "a58f9fffa86c12e6fb43f5232a46d53ef06196f4be138d185a09b1294c736c50"


def test_mobiles_meet_in_each_family_and_not_across() -> None:
    assert platform_digest("cn_mobile_sha256", MOBILE) == (
        bytes.fromhex(MOBILE_SHA256),
        IdForm.PLAINTEXT,
    )
    assert platform_digest("cn_mobile_sha256", MOBILE_SHA256.upper()) == (
        bytes.fromhex(MOBILE_SHA256),
        IdForm.SHA256,
    )
    assert platform_digest("cn_mobile_md5", MOBILE_MD5_SHA256) == (
        bytes.fromhex(MOBILE_MD5_SHA256),
        IdForm.MD5_SHA256,
    )
    assert platform_digest("cn_mobile_md5", MOBILE)[0].hex() == MOBILE_MD5_SHA256
    with pytest.raises(InvalidIdentifier, match="declare the column cn_mobile_md5") as exc:
        platform_digest("cn_mobile_sha256", MOBILE_MD5)
    assert exc.value.reason == "md5_for_sha256_type"
    # E.164 'phone' is untouched: +8613800138000 hashes as it always did.
    cn = NormalizeOptions(default_region="CN")
    assert identifier_digest(IdType.PHONE, MOBILE, cn) == sha("+8613800138000")


@pytest.mark.parametrize(
    ("id_type", "value", "reason"),
    [
        ("cn_mobile_md5", "12800138000", "invalid_cn_mobile"),  # no 12x mobiles
        ("cn_mobile_md5", "1380013800", "invalid_cn_mobile"),
        ("cn_mobile_md5", "+1 201 555 0123", "invalid_cn_mobile"),
        ("imei", "00000000000000", "invalid_imei"),
        ("imei", "86804903950125", "ok"),  # 14 digits, no check digit: hashed as given
        ("imei", "8680490395012", "invalid_imei"),
        ("idfa", "FF1999CD71774937A47474937A102630", "ok"),  # 32 hex: an MD5, never an IDFA
        ("idfa", "00000000-0000-0000-0000-000000000000", "zero_idfa"),
        ("idfa", "not-an-idfa", "invalid_idfa"),
        ("oaid", "00000000-0000-0000-0000-000000000000", "zero_oaid"),
        ("oaid", "0000000000000000", "zero_oaid"),
        ("oaid", "a b", "invalid_oaid"),
        ("android_id", "9774d56d682e549c", "ok"),
        ("android_id", "xyz", "invalid_android_id"),
        ("wechat_unionid", "o6_bmasdasdsad6_2sgVt7hMZOPfL", "ok"),
        ("wechat_unionid", "short", "invalid_wechat_unionid"),
        ("qq", "10001", "ok"),
        ("qq", "01234", "invalid_qq"),
    ],
)
def test_shape_rules(id_type: str, value: str, reason: str) -> None:
    if reason == "ok":
        assert len(platform_digest(id_type, value)[0]) == 32
        return
    with pytest.raises(InvalidIdentifier) as exc:
        platform_digest(id_type, value)
    assert exc.value.reason == reason


def test_a_32_hex_idfa_is_an_md5_and_a_64_hex_oaid_is_raw() -> None:
    bare = "FF1999CD71774937A47474937A102630"
    assert platform_digest("idfa", bare) == (sha(bare.lower()), IdForm.MD5)
    vendor_oaid = "f" * 8 + "0" * 56  # 64 hex digits: some vendors' OAIDs look like this
    assert platform_digest("oaid", vendor_oaid) == (sha(md5_hex(vendor_oaid)), IdForm.PLAINTEXT)
    # OAIDs are hashed raw: case matters, unlike a MAID's.
    assert platform_digest("oaid", "ABC-def1")[0] != platform_digest("oaid", "abc-def1")[0]


def test_unionids_are_case_sensitive_and_plaintext_only() -> None:
    unionid = "o6_bmasdasdsad6_2sgVt7hMZOPfL"
    assert platform_digest("wechat_unionid", unionid) == (sha(unionid), IdForm.PLAINTEXT)
    assert platform_digest("wechat_unionid", unionid.lower())[0] != sha(unionid)


def test_a_cn_mobile_column_yields_both_mobile_types() -> None:
    columns = parse_id_columns("mobile:cn_mobile,imei,device:idfa")
    assert [(c.column, c.id_type.value) for c in columns] == [
        ("mobile", "cn_mobile_md5"),
        ("mobile", "cn_mobile_sha256"),
        ("imei", "imei"),
        ("device", "idfa"),
    ]
    # Old inference is unchanged: an "idfa" or "oaid" column without a type is a MAID.
    assert [c.id_type.value for c in parse_id_columns("idfa,oaid,mobile")] == [
        "maid",
        "maid",
        "phone",
    ]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PLATFORM_TYPES), st.text(max_size=40))
def test_normalization_is_idempotent_and_only_raises_its_error(id_type: str, text: str) -> None:
    try:
        canonical = platform_normalize(id_type, text)
    except InvalidIdentifier:
        return
    assert platform_normalize(id_type, canonical) == canonical
    assert normalize(IdType(id_type), canonical) == canonical


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(PLATFORM_TYPES),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32),
)
def test_an_md5_is_never_read_as_plaintext(id_type: str, hexes: str) -> None:
    """Where a type has an MD5 form, 32 hex digits are that MD5: the digest is the SHA-256 of
    its lowercase hex, whatever else the characters could spell."""
    try:
        digest, form = platform_digest(id_type, hexes, APP)
    except InvalidIdentifier as exc:
        assert id_type in (
            "cn_mobile_sha256",
            "wechat_unionid",
            "wechat_openid",
        ) or exc.reason.startswith("invalid_")
        return
    if form is IdForm.MD5:
        assert digest == sha(hexes.lower())
    else:
        assert id_type in ("wechat_unionid", "wechat_openid"), (id_type, form)


def test_the_upload_report_counts_forms_and_warns_about_look_alikes(tmp_path: Path) -> None:
    from cleanroom.audiences.reader import ReadReport, read_hashed_chunks

    path = tmp_path / "cdp.csv"
    hashed = md5_hex(MOBILE)
    rows = [
        # mobile (cn_mobile_md5), maid (really MD5 IMEIs), tel (E.164 phone, really CN)
        f"{MOBILE},{md5_hex('868049039501257')},+86 139 0013 8000",
        f"{hashed.upper()},{md5_hex('868049039501258')},13900138001",
        f"{hashlib.sha256(hashed.encode()).hexdigest()},{md5_hex('868049039501259')},",
    ]
    path.write_text("mobile,maid,tel\n" + "\n".join(rows) + "\n")
    report = ReadReport()
    columns = parse_id_columns("mobile:cn_mobile_md5,maid:maid,tel:phone")
    list(read_hashed_chunks(path, columns, NormalizeOptions("CN"), report=report))
    out = report.to_dict()
    assert out["forms"]["cn_mobile_md5"] == {"plaintext": 1, "md5": 1, "md5_sha256": 1}
    assert out["forms"]["maid"] == {"plaintext": 3}  # taken for UUIDs without dashes
    assert out["forms"]["phone"] == {"plaintext": 2}
    [maid, tel] = out["warnings"]
    assert "'maid' (maid) looks like MD5 hashes" in maid and "declare imei or idfa" in maid
    assert "'tel' (phone) holds Chinese mobiles" in tel and "tel:cn_mobile" in tel


def test_openids_match_only_within_their_app() -> None:
    openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    [column] = parse_id_columns(f"openid:wechat_openid:{APP}")
    assert (column.column, column.id_type, column.app_id) == ("openid", IdType.WECHAT_OPENID, APP)
    mine = identifier_digest(IdType.WECHAT_OPENID, openid, column_options(US, column))
    assert mine == sha(f"{APP}:{openid}")
    other = parse_id_columns("openid:wechat_openid:wxfedcba9876543210")[0]
    assert identifier_digest(IdType.WECHAT_OPENID, openid, column_options(US, other)) != mine
    with pytest.raises(ValueError, match="names its app"):
        parse_id_columns("openid:wechat_openid")
    with pytest.raises(ValueError, match="not a WeChat app id"):
        parse_id_columns("openid:wechat_openid:myapp")


_HEX = "0123456789abcdefABCDEF"
_platform_values = st.one_of(
    st.text(alphabet=_HEX, min_size=32, max_size=32),
    st.text(alphabet=_HEX, min_size=64, max_size=64),
    st.builds(
        lambda prefix, first, rest, sep: prefix + sep.join([first + rest[:1], rest[1:5], rest[5:]]),
        st.sampled_from(["", "+86", "0086", "86", "+86 ", "0086-", "+1 "]),
        st.sampled_from(["13", "15", "19", "12", "86"]),
        st.text(alphabet="0123456789", min_size=9, max_size=10),
        st.sampled_from(["", " ", "-", ".", "\t", "\x0b", "\x1c", "()"]),
    ),
    st.builds(
        lambda digits, upper: digits.upper() if upper else digits,
        st.text(alphabet="0123456789abcdef", min_size=13, max_size=16),
        st.booleans(),
    ),
    st.text(alphabet="0123456789-  ", min_size=0, max_size=18),
    st.builds(  # UUIDs (IDFAs, OAIDs) in any case, braced or not, all-zero among them
        lambda h, upper, left, right: (
            left + "-".join([h[:8], h[8:12], h[12:16], h[16:20], h[20:]]) + right
            if not upper
            else (left + "-".join([h[:8], h[8:12], h[12:16], h[16:20], h[20:]]) + right).upper()
        ),
        st.one_of(
            st.just("0" * 32), st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
        ),
        st.booleans(),
        st.sampled_from(["", "{"]),
        st.sampled_from(["", "}"]),
    ),
    st.text(alphabet="abcXYZ019_- \t", min_size=10, max_size=70),  # unionid-like
    st.text(max_size=20),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(*[_platform_values] * len(PLATFORM_TYPES)), min_size=1, max_size=12))
def test_the_vectorized_reader_hashes_as_the_scalar_rules(rows: list[tuple[str, ...]]) -> None:
    """The reader's column-at-a-time path for the platforms' forms gives exactly the digests
    (and rejections) of ``identifier_digest``, value by value."""
    from cleanroom.audiences.identifiers import IdColumn
    from cleanroom.audiences.reader import hash_frame

    columns = [
        IdColumn(f"c_{t}", IdType(t), app_id=APP if t == "wechat_openid" else "")
        for t in PLATFORM_TYPES
    ]
    frame = pd.DataFrame(rows, columns=[c.column for c in columns])
    chunk = hash_frame(frame, columns, US)
    for i, hashed in enumerate(chunk.columns):
        want: list[bytes | None] = []
        for row in rows:
            try:
                opts = column_options(US, columns[i])
                want.append(identifier_digest(columns[i].id_type, row[i], opts))
            except InvalidIdentifier:
                want.append(None)
        assert hashed.present.tolist() == [d is not None for d in want], [r[i] for r in rows]
        assert hashed.digests == b"".join(d for d in want if d is not None)
