"""Identifier types, normalization and hashing.

Normalization has to reproduce what marketers do before uploading hashed audiences to ad
platforms (DESIGN.md §4): if our canonical form differs from theirs by a single character, the
SHA-256 digests differ and a real match is silently lost. The scalar functions in this module are
the single source of truth; the vectorized reader (``reader.py``) is tested against them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers

from cleanroom.audiences.errors import InvalidIdentifier
from cleanroom.audiences.platform_ids import PLATFORM_TYPES, platform_digest, platform_normalize

__all__ = [
    "ID_TYPES",
    "SPEC_ALIASES",
    "IdColumn",
    "IdType",
    "InvalidIdentifier",
    "NormalizeOptions",
    "column_options",
    "identifier_digest",
    "is_prehashed",
    "normalize",
    "normalize_custom",
    "normalize_email",
    "normalize_maid",
    "normalize_phone",
    "parse_id_columns",
    "sha256_hex",
]


class IdType(StrEnum):
    """Kinds of identifier a column can hold; each kind has its own normalization (the
    Chinese platforms' types in ``platform_ids``)."""

    EMAIL = "email"
    PHONE = "phone"
    MAID = "maid"
    CUSTOM = "custom"
    CN_MOBILE_MD5 = "cn_mobile_md5"
    CN_MOBILE_SHA256 = "cn_mobile_sha256"
    IMEI = "imei"
    IDFA = "idfa"
    OAID = "oaid"
    ANDROID_ID = "android_id"
    WECHAT_UNIONID = "wechat_unionid"
    QQ = "qq"
    WECHAT_OPENID = "wechat_openid"  # within one app: the column names it (IdColumn.app_id)


# A column spec type that stands for several: a plaintext Chinese mobile meets both the
# MD5-based and the SHA-256 files of the platforms, which cannot meet each other.
SPEC_ALIASES: dict[str, tuple[IdType, ...]] = {
    "cn_mobile": (IdType.CN_MOBILE_MD5, IdType.CN_MOBILE_SHA256),
}


ID_TYPES: tuple[str, ...] = tuple(t.value for t in IdType)


@dataclass(frozen=True)
class IdColumn:
    """One identifier column of an audience file and how to interpret it. A
    ``wechat_openid`` column names the WeChat app its openids belong to (``app_id``):
    openids are per app, so the app id goes into the digest and two apps never match."""

    column: str
    id_type: IdType
    app_id: str = ""

    def __post_init__(self) -> None:
        if (self.id_type is IdType.WECHAT_OPENID) != bool(self.app_id):
            raise ValueError(
                f"column {self.column!r}: a wechat_openid column, and only one, names its app:"
                " --id-columns COLUMN:wechat_openid:APPID"
            )
        if self.app_id and _APP_ID_RE.fullmatch(self.app_id) is None:
            raise ValueError(f"not a WeChat app id (wx and 16 hex digits): {self.app_id!r}")


_APP_ID_RE = re.compile("wx[0-9a-f]{16}")


# Substrings used to guess a column's type from its name. Checked in this order, so a name such
# as "email_adid" counts as email; anything surprising can be overridden with "name:type".
_TYPE_HINTS: tuple[tuple[IdType, tuple[str, ...]], ...] = (
    (IdType.EMAIL, ("email", "mail")),
    (IdType.IMEI, ("imei", "meid")),
    (IdType.ANDROID_ID, ("android_id", "androidid")),
    (IdType.WECHAT_UNIONID, ("unionid",)),
    (IdType.MAID, ("maid", "idfa", "gaid", "oaid", "adid")),
    (IdType.PHONE, ("phone", "mobile", "tel", "msisdn")),
)


def _infer_type(column: str) -> IdType:
    lowered = column.lower()
    for id_type, hints in _TYPE_HINTS:
        if any(hint in lowered for hint in hints):
            return id_type
    return IdType.CUSTOM


def parse_id_columns(spec: str) -> list[IdColumn]:
    """Parse ``"email,phone:phone,crm_id:custom"`` into identifier columns.

    The order of the result is the matching priority. Items are ``name`` (type inferred from the
    name) or ``name:type``; the type is split off at the last colon so column names may contain
    colons as long as the type is given explicitly.
    """
    if not spec or not spec.strip():
        raise ValueError(
            "empty id column spec: expected a comma-separated list such as 'email,phone'"
        )
    valid_types = ", ".join([*(t.value for t in IdType), *SPEC_ALIASES])
    columns: list[IdColumn] = []
    seen: set[str] = set()
    for position, raw_item in enumerate(spec.split(","), start=1):
        item = raw_item.strip()
        app_id = ""
        id_types: tuple[IdType, ...]
        if not item:
            raise ValueError(f"empty item #{position} in id column spec {spec!r}")
        openid = re.fullmatch(r"(?P<name>.+):wechat_openid:(?P<app>[^:]*)", item)
        if openid is not None:
            name, app_id = openid["name"].strip(), openid["app"].strip()
            id_types = (IdType.WECHAT_OPENID,)
        elif ":" in item:
            raw_name, _, raw_type = item.rpartition(":")
            name = raw_name.strip()
            type_name = raw_type.strip().lower()
            try:
                id_types = SPEC_ALIASES.get(type_name) or (IdType(type_name),)
            except ValueError:
                raise ValueError(
                    f"unknown identifier type {raw_type.strip()!r} for column {name!r} in id "
                    f"column spec (valid types: {valid_types})"
                ) from None
        else:
            name = item
            id_types = (_infer_type(name),)
        if not name:
            raise ValueError(f"missing column name in item {item!r} of id column spec {spec!r}")
        if name in seen:
            raise ValueError(f"duplicate column {name!r} in id column spec {spec!r}")
        seen.add(name)
        columns.extend(IdColumn(column=name, id_type=t, app_id=app_id) for t in id_types)
    return columns


def column_options(options: NormalizeOptions, column: IdColumn) -> NormalizeOptions:
    """``options`` for hashing ``column``'s values (a wechat_openid column's app id)."""
    if not column.app_id:
        return options
    return dataclasses.replace(options, wechat_app_id=column.app_id)


def _check_region(region: str | None) -> str | None:
    """Return the canonical (upper-case) region code, or raise for an unknown one."""
    if region is None:
        return None
    canonical = region.strip().upper()
    if canonical not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"unsupported phone region {region!r}: expected an ISO 3166-1 alpha-2 code known to "
            "phonenumbers, such as 'US' or 'CN'"
        )
    return canonical


@dataclass(frozen=True)
class NormalizeOptions:
    """Knobs that change canonical forms; both parties of a match must use the same values.

    ``default_region`` is used for phone numbers written without a country code. ``fold_gmail``
    removes dots and "+suffix" from Gmail local parts; it is off by default because ad platforms
    do not do it, so folded digests would not match hashes uploaded elsewhere.
    """

    default_region: str | None = None
    fold_gmail: bool = False
    # The app of the wechat_openid values being hashed (set per column: column_options).
    wechat_app_id: str = ""

    def __post_init__(self) -> None:
        # Canonicalize so that "us" and "US" produce identical options (and equal dataclasses).
        object.__setattr__(self, "default_region", _check_region(self.default_region))


# Python's str.strip() removes exactly these ASCII characters (plus non-ASCII whitespace). The
# vectorized reader trims with this explicit set so that ASCII values come out identical.
ASCII_WHITESPACE = "".join(chr(c) for c in range(128) if chr(c).isspace())

# The email grammar is written twice from one template: the Python variant additionally accepts
# non-ASCII characters (internationalized addresses), the RE2 variant is only ever applied to
# ASCII values by the reader. On ASCII input both accept exactly the same strings.
_EMAIL_TEMPLATE = (
    r"[a-z0-9!#$%&'*+/=?^_`{{|}}~.{x}-]+"  # local part: RFC 5322 atext plus dots
    r"@(?:[a-z0-9{x}](?:[a-z0-9{x}-]{{0,61}}[a-z0-9{x}])?\.)+"  # domain labels
    r"[a-z{x}](?:[a-z0-9{x}-]{{0,61}}[a-z0-9{x}])"  # TLD: at least two chars, starts with a letter
)
EMAIL_PATTERN_ASCII = "^" + _EMAIL_TEMPLATE.format(x="") + "$"
_EMAIL_RE = re.compile(_EMAIL_TEMPLATE.format(x="\\u0080-\\U0010ffff"))
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit; longer values are garbage, not addresses
GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})

_HEX = "[0-9a-f]"
MAID_PATTERN = (
    f"^(?:\\{{{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}\\}}"
    f"|\\{{{_HEX}{{32}}\\}}"
    f"|{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
    f"|{_HEX}{{32}})$"
)
_MAID_RE = re.compile(MAID_PATTERN)
ZERO_MAID = "00000000-0000-0000-0000-000000000000"

PREHASHED_PATTERN = "^[0-9a-fA-F]{64}$"
_PREHASHED_RE = re.compile("[0-9a-fA-F]{64}")
# Ten-digit North American numbers in their common spellings, optionally after +1:
# 2015550123, 201-555-0123, 201.555.0123, 201 555 0123, (201) 555-0123, +1 201 555 0123.
# phonenumbers.parse turns each into (country code 1, those ten digits) when the number
# carries +1 or the default region is US or CA (national prefix "1", no transform rule);
# skipping the parse halves the cost of a phone, and is_valid_number still decides.
# The pattern is written for both Python's re and Arrow's RE2 (audiences.phones).
NANP_PATTERN = (
    r"(?P<plus>\+1[ .-]?)?"
    r"(?:\((?P<area>[2-9][0-9]{2})\) ?|(?P<area_plain>[2-9][0-9]{2})[ .-]?)"
    r"(?P<exchange>[0-9]{3})[ .-]?(?P<line>[0-9]{4})"
)
_NANP_RE = re.compile(NANP_PATTERN)
NANP_REGIONS = frozenset({"US", "CA"})
# phonenumbers finds a +1 number's region by trying country code 1's regions in
# this order and keeping the first whose patterns know the number; is_valid_number
# then validates against that region. With the US first, a number valid for the
# US is valid, and the check costs one region's patterns instead of two passes.
_US_FIRST = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(1, ("",))[0] == "US"


def _require_value(value: str, id_type: IdType) -> str:
    stripped = value.strip()
    if not stripped:
        raise InvalidIdentifier("empty", f"empty {id_type.value} value")
    return stripped


def normalize_email(value: str, *, fold_gmail: bool = False) -> str:
    """Trim and lowercase an email address (the ad-platform convention) and check its shape."""
    email = _require_value(value, IdType.EMAIL).lower()
    if len(email) > MAX_EMAIL_LENGTH or _EMAIL_RE.fullmatch(email) is None:
        raise InvalidIdentifier("invalid_email", f"not a valid email address: {value!r}")
    if fold_gmail:
        local, _, domain = email.rpartition("@")
        if domain in GMAIL_DOMAINS:
            local = local.split("+", 1)[0].replace(".", "")
            if not local:
                raise InvalidIdentifier(
                    "invalid_email", f"gmail address with an empty local part: {value!r}"
                )
            email = f"{local}@gmail.com"
    return email


def normalize_phone(value: str, default_region: str | None = None) -> str:
    """Return the E.164 form of a phone number, validated by ``phonenumbers``.

    ``default_region`` is the country assumed for numbers without an international prefix.
    Numbers that phonenumbers cannot parse or considers invalid are rejected, never repaired.
    """
    region = _check_region(default_region)
    text = _require_value(value, IdType.PHONE)
    nanp = _NANP_RE.fullmatch(text)
    if nanp is not None and (nanp["plus"] or region in NANP_REGIONS):
        digits = (nanp["area"] or nanp["area_plain"]) + nanp["exchange"] + nanp["line"]
        number = phonenumbers.PhoneNumber(country_code=1, national_number=int(digits))
        if _US_FIRST and phonenumbers.is_valid_number_for_region(number, "US"):
            return "+1" + digits
        return _valid_e164(number, value, region)
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        no_country_code = "+" not in text and "\uff0b" not in text  # ASCII or full-width plus
        if (
            region is None
            and no_country_code
            and exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
        ):
            raise InvalidIdentifier(
                "phone_needs_region",
                f"phone number {value!r} has no country code and no default region is "
                "configured (set a default region such as 'US' or write it as +<country code>)",
            ) from None
        raise InvalidIdentifier(
            "invalid_phone", f"cannot parse phone number {value!r}: {exc}"
        ) from None
    return _valid_e164(number, value, region)


def _valid_e164(number: phonenumbers.PhoneNumber, value: str, region: str | None) -> str:
    if not phonenumbers.is_valid_number(number):
        where = f" (default region {region})" if region else ""
        raise InvalidIdentifier("invalid_phone", f"not a valid phone number{where}: {value!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_maid(value: str) -> str:
    """Return a mobile advertising id (IDFA/GAID/OAID) as a lower-case 8-4-4-4-12 UUID."""
    lowered = _require_value(value, IdType.MAID).lower()
    if _MAID_RE.fullmatch(lowered) is None:
        raise InvalidIdentifier(
            "invalid_maid",
            f"not a mobile ad id (expected a UUID or 32 hex digits): {value!r}",
        )
    digits = lowered.strip("{}").replace("-", "")
    canonical = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    if canonical == ZERO_MAID:
        # Devices with "limit ad tracking" report this id; it identifies nobody.
        raise InvalidIdentifier(
            "zero_maid", "all-zero mobile ad id (ad tracking disabled on the device)"
        )
    return canonical


def normalize_custom(value: str) -> str:
    """Custom keys (CRM ids) are opaque: only surrounding whitespace is removed."""
    return _require_value(value, IdType.CUSTOM)


def normalize(id_type: IdType, value: str, options: NormalizeOptions | None = None) -> str:
    """Normalize ``value`` as an identifier of ``id_type``; raises InvalidIdentifier.

    Pre-hashed values are not special-cased here (see :func:`identifier_digest`).
    """
    opts = options if options is not None else NormalizeOptions()
    if id_type is IdType.EMAIL:
        return normalize_email(value, fold_gmail=opts.fold_gmail)
    if id_type is IdType.PHONE:
        return normalize_phone(value, opts.default_region)
    if id_type is IdType.MAID:
        return normalize_maid(value)
    if id_type is IdType.CUSTOM:
        return normalize_custom(value)
    if id_type.value in PLATFORM_TYPES:
        return platform_normalize(id_type.value, value)
    raise ValueError(f"unknown identifier type {id_type!r}")


def is_prehashed(value: str) -> bool:
    """True if ``value`` is already a SHA-256 hex digest (64 hex digits, any case, trimmed)."""
    return _PREHASHED_RE.fullmatch(value.strip()) is not None


def sha256_hex(normalized: str) -> str:
    """Hex SHA-256 of the UTF-8 encoding of an already normalized identifier."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def identifier_digest(
    id_type: IdType, value: str, options: NormalizeOptions | None = None
) -> bytes:
    """32-byte SHA-256 digest of the normalized identifier.

    Values that are already SHA-256 hex digests are passed through (decoded), because marketers
    often upload audiences they hashed themselves; the digests of plaintext and pre-hashed forms
    of the same normalized identifier are therefore equal. The Chinese platforms' types
    have their own hashed forms (``platform_ids.platform_digest``).
    """
    if id_type.value in PLATFORM_TYPES:
        app = options.wechat_app_id if options is not None else ""
        return platform_digest(id_type.value, value, app)[0]
    stripped = value.strip()
    if _PREHASHED_RE.fullmatch(stripped) is not None:
        return bytes.fromhex(stripped)
    normalized = normalize(id_type, stripped, options)
    try:
        encoded = normalized.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot come from a decoded file, only from code
        raise InvalidIdentifier(
            f"invalid_{id_type.value}", f"value is not encodable as UTF-8: {value!r}"
        ) from None
    return hashlib.sha256(encoded).digest()
