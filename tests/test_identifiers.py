"""Known-answer tests for identifier normalization and hashing (DESIGN.md §4)."""

from __future__ import annotations

import hashlib
import random

import phonenumbers
import pytest

from cleanroom.audiences.identifiers import (
    IdColumn,
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
    is_prehashed,
    normalize,
    normalize_custom,
    normalize_email,
    normalize_maid,
    normalize_phone,
    parse_id_columns,
    sha256_hex,
)
from tests.helpers import random_nanp_spelling

# Digests computed independently with hashlib.sha256(<value>.encode()).hexdigest().
SHA_TEST_EXAMPLE_COM = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
SHA_US_PHONE = "e7e096141fe6290f8c04e20b51a686070a9c40f7f304667849b430645aaaf07d"  # +12015550123
SHA_CN_PHONE = "ec61f3c620a98bdead8c1f1f0ae747abd1b62a0c2dba4fd4bc22cf0d1d8653e5"  # +8613800138000
SHA_MAID = "31b806b4deec8c4cb1ffb18b9ab4ee1fa82a2b30e1f47902f04d03f5db023376"
SHA_CRM = "35bed454e0b6c6932c2254201e5923a3f0c21a9278e9a7f546bd748c7ffa7742"  # crm-00042

# 13800138000 written with full-width digits, as some East Asian input methods produce.
FULLWIDTH_CN_MOBILE = "".join(chr(0xFF10 + int(d)) for d in "13800138000")

US = NormalizeOptions(default_region="US")
CN = NormalizeOptions(default_region="CN")


def reason_of(func: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidIdentifier) as info:
        func(*args, **kwargs)  # type: ignore[operator]
    assert str(info.value) == info.value.message
    return info.value.reason


# --------------------------------------------------------------------------- id column spec


def test_id_type_values() -> None:
    assert [t.value for t in IdType][:4] == ["email", "phone", "maid", "custom"]
    assert IdType("maid") is IdType.MAID
    assert f"{IdType.EMAIL}" == "email"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("email", IdType.EMAIL),
        ("Email_Address", IdType.EMAIL),
        ("contact_mail", IdType.EMAIL),
        ("phone", IdType.PHONE),
        ("MobileNumber", IdType.PHONE),
        ("tel", IdType.PHONE),
        ("msisdn", IdType.PHONE),
        ("maid", IdType.MAID),
        ("IDFA", IdType.MAID),
        ("gaid", IdType.MAID),
        ("oaid", IdType.MAID),
        ("device_adid", IdType.MAID),
        ("customer_id", IdType.CUSTOM),
        ("crm", IdType.CUSTOM),
    ],
)
def test_parse_id_columns_infers_type_from_name(name: str, expected: IdType) -> None:
    assert parse_id_columns(name) == [IdColumn(name, expected)]


def test_parse_id_columns_keeps_priority_order_and_explicit_types() -> None:
    spec = " crm_id:custom , email ,cell:PHONE, device : maid,phone_hash:custom"
    assert parse_id_columns(spec) == [
        IdColumn("crm_id", IdType.CUSTOM),
        IdColumn("email", IdType.EMAIL),
        IdColumn("cell", IdType.PHONE),
        IdColumn("device", IdType.MAID),
        IdColumn("phone_hash", IdType.CUSTOM),  # explicit type beats the name
    ]


def test_parse_id_columns_splits_type_at_last_colon() -> None:
    assert parse_id_columns("a:b:email") == [IdColumn("a:b", IdType.EMAIL)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty id column spec"),
        ("   ", "empty id column spec"),
        ("email,,phone", "empty item #2"),
        ("email,", "empty item #2"),
        (":email", "missing column name"),
        ("email:mail", "unknown identifier type 'mail' for column 'email'"),
        ("x:idfv", "valid types: email, phone, maid, custom, cn_mobile_md5"),
        ("email,phone,email", "duplicate column 'email'"),
        ("email:custom,email:email", "duplicate column 'email'"),
    ],
)
def test_parse_id_columns_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_id_columns(spec)


# --------------------------------------------------------------------------- options


def test_normalize_options_defaults_and_region_canonicalization() -> None:
    assert NormalizeOptions() == NormalizeOptions(default_region=None, fold_gmail=False)
    assert NormalizeOptions(default_region=" us ").default_region == "US"
    assert NormalizeOptions(default_region="cn") == CN


@pytest.mark.parametrize("region", ["XX", "USA", "", "001"])
def test_normalize_options_rejects_unknown_region(region: str) -> None:
    with pytest.raises(ValueError, match="unsupported phone region"):
        NormalizeOptions(default_region=region)


# --------------------------------------------------------------------------- email


@pytest.mark.parametrize(
    "raw",
    ["test@example.com", "  Test@Example.COM ", "\tTEST@EXAMPLE.COM\n", "\u00a0test@example.com"],
)
def test_normalize_email_trims_and_lowercases(raw: str) -> None:
    assert normalize_email(raw) == "test@example.com"
    assert sha256_hex(normalize_email(raw)) == SHA_TEST_EXAMPLE_COM
    assert identifier_digest(IdType.EMAIL, raw) == bytes.fromhex(SHA_TEST_EXAMPLE_COM)


def test_sha256_hex_known_answer() -> None:
    assert sha256_hex("test@example.com") == SHA_TEST_EXAMPLE_COM
    assert sha256_hex("test@example.com") == hashlib.sha256(b"test@example.com").hexdigest()


@pytest.mark.parametrize(
    "raw",
    [
        "first.last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "user_1@xn--p1ai.xn--p1ai",
        "jürgen.müller@example.de",
        "x@a-b.io",
    ],
)
def test_normalize_email_accepts_real_addresses(raw: str) -> None:
    assert normalize_email(raw) == raw.lower()


@pytest.mark.parametrize(
    "raw",
    [
        "nobody@",
        "@example.com",
        "john.smith",
        "jane@doe",
        "a@@b.com",
        "first last@example.com",
        "a@b.c",
        "a@-example.com",
        "a@example..com",
        "a@example.com.",
        "a@exa_mple.com",
        "user@123.456",
        "x" * 250 + "@example.com",
    ],
)
def test_normalize_email_rejects_garbage(raw: str) -> None:
    assert reason_of(normalize_email, raw) == "invalid_email"


def test_gmail_folding_only_when_asked() -> None:
    raw = " First.Last+Promo@GoogleMail.com "
    assert normalize_email(raw) == "first.last+promo@googlemail.com"
    assert normalize_email(raw, fold_gmail=True) == "firstlast@gmail.com"
    assert normalize_email("f.l+x@gmail.com", fold_gmail=True) == "fl@gmail.com"
    # Other domains are never folded: dots and +suffix may be significant there.
    assert normalize_email("f.l+x@example.com", fold_gmail=True) == "f.l+x@example.com"
    assert normalize_email("f.l@gmail.com.evil.com", fold_gmail=True) == "f.l@gmail.com.evil.com"
    assert reason_of(normalize_email, "+tag@gmail.com", fold_gmail=True) == "invalid_email"
    folded = NormalizeOptions(fold_gmail=True)
    assert normalize(IdType.EMAIL, raw, folded) == "firstlast@gmail.com"
    assert (
        identifier_digest(IdType.EMAIL, "te.st+x@gmail.com", folded)
        == hashlib.sha256(b"test@gmail.com").digest()
    )


# --------------------------------------------------------------------------- phone


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(201) 555-0123", "US", "+12015550123"),
        ("201-555-0123", "US", "+12015550123"),
        ("201.555.0123", "US", "+12015550123"),
        ("+1 201 555 0123", "US", "+12015550123"),
        ("1-201-555-0123", "US", "+12015550123"),
        ("+1 201 555 0123", None, "+12015550123"),
        ("138 0013 8000", "CN", "+8613800138000"),
        ("13800138000", "CN", "+8613800138000"),
        ("+86 138-0013-8000", "US", "+8613800138000"),  # explicit country code wins
        ("(010) 6552-9988", "CN", "+861065529988"),
        (
            "\uff11\uff13\uff18\uff10\uff10\uff11\uff13\uff18\uff10\uff10\uff10",
            "CN",
            "+8613800138000",
        ),
        ("020 7946 0958", "GB", "+442079460958"),
        ("tel:+1-201-555-0123", None, "+12015550123"),
    ],
)
def test_normalize_phone_e164(raw: str, region: str | None, e164: str) -> None:
    assert normalize_phone(raw, region) == e164


def test_phone_digests_known_answers() -> None:
    assert identifier_digest(IdType.PHONE, "(201) 555-0123", US).hex() == SHA_US_PHONE
    assert identifier_digest(IdType.PHONE, "138 0013 8000", CN).hex() == SHA_CN_PHONE
    assert identifier_digest(IdType.PHONE, "+86 13800138000").hex() == SHA_CN_PHONE


@pytest.mark.parametrize("raw", ["2015550123", "(201) 555-0123", "00 1 201 555 0123"])
def test_phone_without_country_code_needs_region(raw: str) -> None:
    with pytest.raises(InvalidIdentifier, match="no default region") as info:
        normalize_phone(raw)
    assert info.value.reason == "phone_needs_region"
    assert reason_of(normalize, IdType.PHONE, raw, NormalizeOptions()) == "phone_needs_region"


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("12345", "US"),
        ("555-0123", "US"),
        ("+1 555", None),
        ("+1 555", "US"),
        ("abc", "US"),
        ("+999 1234 5678", None),
        ("123 4567 8901", "CN"),
    ],
)
def test_invalid_phones_are_reported_not_guessed(raw: str, region: str | None) -> None:
    assert reason_of(normalize_phone, raw, region) == "invalid_phone"


def _parsed_e164(raw: str, region: str | None) -> str | None:
    """The full phonenumbers path (parse, validate, format), or None when it rejects."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@pytest.mark.parametrize("region", ["US", "CA", None, "GB", "CN"])
def test_north_american_shortcut_agrees_with_the_full_parse(region: str | None) -> None:
    """Common NANP spellings skip phonenumbers.parse; the outcome must not change."""
    rng = random.Random(f"nanp-{region}")
    checked = valid = 0
    for _ in range(1500):
        raw = random_nanp_spelling(rng)
        want = _parsed_e164(raw, region)
        try:
            got: str | None = normalize_phone(raw, region)
        except InvalidIdentifier as exc:
            assert exc.reason in {"invalid_phone", "phone_needs_region"}
            got = None
        assert got == want, raw
        checked += 1
        valid += got is not None
    assert checked == 1500 and 0 < valid < checked


def test_normalize_phone_validates_region_argument() -> None:
    assert normalize_phone("2015550123", "us") == "+12015550123"
    with pytest.raises(ValueError, match="unsupported phone region 'ZZ'"):
        normalize_phone("2015550123", "ZZ")


# --------------------------------------------------------------------------- maid


@pytest.mark.parametrize(
    "raw",
    [
        "6d92078a-8246-4ba4-ae5b-76104861e7dc",
        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        "{6D92078A-8246-4BA4-AE5B-76104861E7DC}",
        "6d92078a82464ba4ae5b76104861e7dc",
        "{6D92078A82464BA4AE5B76104861E7DC}",
        "  6d92078a-8246-4ba4-ae5b-76104861e7dc\t",
    ],
)
def test_normalize_maid_canonical_form(raw: str) -> None:
    assert normalize_maid(raw) == "6d92078a-8246-4ba4-ae5b-76104861e7dc"
    assert identifier_digest(IdType.MAID, raw).hex() == SHA_MAID


@pytest.mark.parametrize(
    "raw",
    [
        "6d92078a-8246-4ba4-ae5b",
        "6d92078a-8246-4ba4-ae5b-76104861e7dc0",
        "6d92078a82464ba4ae5b76104861e7d",
        "6d92078a-82464ba4-ae5b-76104861e7dc",  # dashes must be all or nothing
        "{6d92078a-8246-4ba4-ae5b-76104861e7dc",
        "6d92078a-8246-4ba4-ae5b-76104861e7dc}",
        "6g92078a-8246-4ba4-ae5b-76104861e7dc",
        "6d92078a_8246_4ba4_ae5b_76104861e7dc",
        "not-a-maid",
    ],
)
def test_normalize_maid_rejects_malformed(raw: str) -> None:
    assert reason_of(normalize_maid, raw) == "invalid_maid"


@pytest.mark.parametrize(
    "raw",
    ["00000000-0000-0000-0000-000000000000", "0" * 32, "{00000000-0000-0000-0000-000000000000}"],
)
def test_normalize_maid_rejects_limit_ad_tracking_zero_id(raw: str) -> None:
    assert reason_of(normalize_maid, raw) == "zero_maid"


# --------------------------------------------------------------------------- custom, dispatch


def test_normalize_custom_is_opaque_but_trimmed() -> None:
    assert normalize_custom("  CRM-00042 ") == "CRM-00042"  # case is significant
    assert identifier_digest(IdType.CUSTOM, " crm-00042 ").hex() == SHA_CRM
    assert reason_of(normalize_custom, "   ") == "empty"


@pytest.mark.parametrize("id_type", list(IdType))
def test_empty_values_are_reported_as_empty(id_type: IdType) -> None:
    assert reason_of(normalize, id_type, " \t ", US) == "empty"
    assert reason_of(identifier_digest, id_type, "", US) == "empty"


def test_normalize_dispatch() -> None:
    assert normalize(IdType.EMAIL, " A@B.io ") == "a@b.io"
    assert normalize(IdType.PHONE, "(201) 555-0123", US) == "+12015550123"
    assert normalize(IdType.MAID, "6D92078A82464BA4AE5B76104861E7DC") == (
        "6d92078a-8246-4ba4-ae5b-76104861e7dc"
    )
    assert normalize(IdType.CUSTOM, " x ") == "x"


def test_invalid_identifier_is_a_value_error_with_reason() -> None:
    error = InvalidIdentifier("invalid_email", "bad")
    assert issubclass(InvalidIdentifier, ValueError)
    assert (error.reason, error.message, str(error)) == ("invalid_email", "bad", "bad")


# --------------------------------------------------------------------------- digests


def test_digest_is_sha256_of_utf8_normalized_value() -> None:
    digest = identifier_digest(IdType.EMAIL, "Jürgen@Example.de")
    assert len(digest) == 32
    assert digest == hashlib.sha256("jürgen@example.de".encode()).digest()


# Types whose 64-hex form is their canonical digest (a raw OAID may be 64 hex digits; an
# Android ID, a unionid or a QQ number has no SHA-256 form: tests/test_platform_ids.py).
SHA256_FORM = [
    t
    for t in IdType
    if t.value not in {"oaid", "android_id", "wechat_unionid", "wechat_openid", "qq"}
]


@pytest.mark.parametrize("id_type", SHA256_FORM)
def test_prehashed_values_pass_through(id_type: IdType) -> None:
    for raw in (SHA_TEST_EXAMPLE_COM, SHA_TEST_EXAMPLE_COM.upper(), f"  {SHA_TEST_EXAMPLE_COM} "):
        assert is_prehashed(raw)
        assert identifier_digest(id_type, raw, US) == bytes.fromhex(SHA_TEST_EXAMPLE_COM)
    # Uploaded hashes of the normalized email equal our digest of the plaintext.
    assert identifier_digest(id_type, SHA_TEST_EXAMPLE_COM.upper(), US) == identifier_digest(
        IdType.EMAIL, " TEST@example.com"
    )


@pytest.mark.parametrize(
    "raw", [SHA_TEST_EXAMPLE_COM[:-1], SHA_TEST_EXAMPLE_COM + "0", "g" + SHA_TEST_EXAMPLE_COM[1:]]
)
def test_almost_hashes_are_not_prehashed(raw: str) -> None:
    assert not is_prehashed(raw)
    assert reason_of(identifier_digest, IdType.EMAIL, raw) == "invalid_email"
    # As an opaque custom key the value is simply hashed.
    assert identifier_digest(IdType.CUSTOM, raw) == hashlib.sha256(raw.encode()).digest()


def test_unencodable_value_is_invalid_not_a_crash() -> None:
    assert reason_of(identifier_digest, IdType.CUSTOM, "bad\ud800") == "invalid_custom"
