"""Identifiers as Chinese ad platforms and CDPs hold them (人群包 / 号码包 conventions).

Tencent Ads (广点通), Ocean Engine (巨量引擎), Alibaba and JD take audience files of
11-digit mobiles, device ids and WeChat/QQ ids, plaintext or hashed. Each hashed form
fixes what was hashed, so the canonical digest of every type here is the SHA-256 of
a string either party can compute from any accepted form:

==================  =====================================  ==============================
type                accepted forms                          canonical digest
==================  =====================================  ==============================
cn_mobile_md5       11 digits, MD5, MD5_SHA256              SHA-256(md5hex(11 digits))
cn_mobile_sha256    11 digits, SHA-256                      SHA-256(11 digits)
imei                IMEI / MEID, MD5, MD5_SHA256            SHA-256(md5hex(lowercase id))
idfa                UUID, MD5, MD5_SHA256                   SHA-256(md5hex(UPPERCASE UUID))
oaid                the raw value, MD5                      SHA-256(md5hex(raw value))
android_id          13-16 hex digits, MD5                   SHA-256(md5hex(lowercase id))
wechat_unionid      the raw value                           SHA-256(raw value)
wechat_openid       the raw value, for one app              SHA-256(app id ":" raw value)
qq                  5-12 digits, MD5                        SHA-256(md5hex(digits))
==================  =====================================  ==============================

``md5hex`` is the lowercase hex MD5, and SHA-256(md5hex(x)) is also Tencent's
``MD5_SHA256`` form, so an MD5_SHA256 value is the canonical digest itself. Hashes
are hex of either case (Tencent: "不计大小写"). The rules follow the platforms' own
documentation and examples (tests/test_platform_ids.py has them as known answers):
Tencent's audience file format (developers.e.qq.com/docs/audience_management/file:
mobiles as the 11 digits, IMEI as 14/15 digits or lowercase letters, IDFA uppercase),
its conversion API (OAID "原值", not case-changed, dashes kept) and DataNexus
(``md5(imei.toLowerCase())``). An MD5 and a SHA-256 of the same mobile can never be
turned into each other, hence two mobile types; a plaintext column declared
``cn_mobile`` yields both (``parse_id_columns``).

Nothing is guessed across forms beyond the shape rules each type states: a 32-hex
value is an MD5 where the type has one (an IDFA must carry its dashes to be read as
plaintext), a 64-hex value an MD5_SHA256 or SHA-256 where the type has one; for
``oaid`` a 64-hex value is a raw OAID (several vendors issue them), never a hash.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from enum import StrEnum

from cleanroom.audiences.errors import InvalidIdentifier


class IdForm(StrEnum):
    """How a value was given: what the upload report counts per type."""

    PLAINTEXT = "plaintext"
    MD5 = "md5"
    SHA256 = "sha256"
    MD5_SHA256 = "md5_sha256"


_MD5_RE = re.compile("[0-9a-fA-F]{32}")
_SHA256_RE = re.compile("[0-9a-fA-F]{64}")
_CN_MOBILE_RE = re.compile("1[3-9][0-9]{9}")
_IMEI_RE = re.compile("[0-9]{14,15}|[0-9a-f]{14}")
_UUID_RE = re.compile(
    "\\{?([0-9A-F]{8})-([0-9A-F]{4})-([0-9A-F]{4})-([0-9A-F]{4})-([0-9A-F]{12})\\}?"
)
_ANDROID_ID_RE = re.compile("[0-9a-f]{13,16}")
_UNIONID_RE = re.compile("[A-Za-z0-9_-]{16,64}")
_QQ_RE = re.compile("[1-9][0-9]{4,11}")
# Separators people and CDPs put into numbers: spaces (ASCII and ideographic), dashes,
# dots, parentheses. NFKC first turns full-width digits and signs into ASCII.
_NUMBER_NOISE = re.compile("[\\s\\-.()\u3000]")
ZERO_IDFA = "00000000-0000-0000-0000-000000000000"


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _empty(value: str, id_type: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise InvalidIdentifier("empty", f"empty {id_type} value")
    return stripped


def normalize_cn_mobile(value: str) -> str:
    """The 11 digits of a mainland mobile (``1[3-9]`` and nine more), as the platforms hash
    it: full-width digits, spaces, dashes and a +86 / 0086 / 86 prefix removed."""
    text = _NUMBER_NOISE.sub("", unicodedata.normalize("NFKC", _empty(value, "cn_mobile")))
    for prefix in ("+86", "0086", "86"):
        if text.startswith(prefix) and len(text) == len(prefix) + 11:
            text = text[len(prefix) :]
            break
    if _CN_MOBILE_RE.fullmatch(text) is None:
        raise InvalidIdentifier(
            "invalid_cn_mobile", f"not an 11-digit mainland mobile number: {value!r}"
        )
    return text


def normalize_imei(value: str) -> str:
    """An IMEI (14 or 15 digits) or MEID (14 hex digits), lowercase, separators removed; the
    check digit is kept or left out as given (platforms hash the id as the device reports
    it)."""
    text = _NUMBER_NOISE.sub("", _empty(value, "imei")).lower()
    if _IMEI_RE.fullmatch(text) is None or set(text) == {"0"}:
        raise InvalidIdentifier(
            "invalid_imei", f"not an IMEI (14-15 digits) or MEID (14 hex digits): {value!r}"
        )
    return text


def normalize_idfa(value: str) -> str:
    """An IDFA as the uppercase 8-4-4-4-12 UUID (dashes required: 32 bare hex digits are an
    MD5 in this type). The all-zero IDFA (tracking limited) identifies nobody."""
    match = _UUID_RE.fullmatch(_empty(value, "idfa").upper())
    if match is None:
        raise InvalidIdentifier("invalid_idfa", f"not an IDFA (an 8-4-4-4-12 UUID): {value!r}")
    canonical = "-".join(match.groups())
    if canonical == ZERO_IDFA:
        raise InvalidIdentifier("zero_idfa", "all-zero IDFA (ad tracking limited on the device)")
    return canonical


def normalize_oaid(value: str) -> str:
    """An OAID exactly as the device reported it (only surrounding whitespace removed: the
    platforms hash the raw value, case and dashes included). An all-zero OAID (tracking
    off) is rejected."""
    text = _empty(value, "oaid")
    if set(text.replace("-", "")) == {"0"}:
        raise InvalidIdentifier("zero_oaid", "all-zero OAID (ad tracking off on the device)")
    if any(c.isspace() for c in text) or not text.isascii() or len(text) > 128:
        raise InvalidIdentifier("invalid_oaid", f"not an OAID: {value!r}")
    return text


def normalize_android_id(value: str) -> str:
    """An Android ID: 13 to 16 hex digits (64 bits; leading zeros may be dropped), lowercase
    as Android reports it."""
    text = _empty(value, "android_id").lower()
    if _ANDROID_ID_RE.fullmatch(text) is None:
        raise InvalidIdentifier(
            "invalid_android_id", f"not an Android ID (13-16 hex digits): {value!r}"
        )
    return text


def normalize_wechat_unionid(value: str) -> str:
    """A WeChat unionid, case-sensitive, as WeChat issues it ("保持原值")."""
    text = _empty(value, "wechat_unionid")
    if _UNIONID_RE.fullmatch(text) is None:
        raise InvalidIdentifier("invalid_wechat_unionid", f"not a WeChat unionid: {value!r}")
    return text


def normalize_wechat_openid(value: str) -> str:
    """A WeChat openid, case-sensitive, as WeChat issues it for one app."""
    text = _empty(value, "wechat_openid")
    if _UNIONID_RE.fullmatch(text) is None:
        raise InvalidIdentifier("invalid_wechat_openid", f"not a WeChat openid: {value!r}")
    return text


def normalize_qq(value: str) -> str:
    """A QQ number: 5 to 12 digits, no leading zero."""
    text = _NUMBER_NOISE.sub("", unicodedata.normalize("NFKC", _empty(value, "qq")))
    if _QQ_RE.fullmatch(text) is None:
        raise InvalidIdentifier("invalid_qq", f"not a QQ number (5-12 digits): {value!r}")
    return text


# type -> (normalizer of its plaintext, whether its canonical digest is MD5-based,
#          the hashed forms it accepts)
_Rule = tuple[Callable[[str], str], bool, frozenset[IdForm]]
_RULES: dict[str, _Rule] = {
    "cn_mobile_md5": (normalize_cn_mobile, True, frozenset({IdForm.MD5, IdForm.MD5_SHA256})),
    "cn_mobile_sha256": (normalize_cn_mobile, False, frozenset({IdForm.SHA256})),
    "imei": (normalize_imei, True, frozenset({IdForm.MD5, IdForm.MD5_SHA256})),
    "idfa": (normalize_idfa, True, frozenset({IdForm.MD5, IdForm.MD5_SHA256})),
    "oaid": (normalize_oaid, True, frozenset({IdForm.MD5})),
    "android_id": (normalize_android_id, True, frozenset({IdForm.MD5})),
    "wechat_unionid": (normalize_wechat_unionid, False, frozenset()),
    "wechat_openid": (normalize_wechat_openid, False, frozenset()),
    "qq": (normalize_qq, True, frozenset({IdForm.MD5})),
}
PLATFORM_TYPES: tuple[str, ...] = tuple(_RULES)


def hashed_forms(id_type: str) -> frozenset[IdForm]:
    """The hashed forms ``id_type`` accepts (what a 32- or 64-hex value of it is)."""
    return _RULES[id_type][2]


# What a column's values look like, for the upload report's hints: bare 32 hex digits (an
# MD5), and a mainland mobile however it is spelled (an RE2 pattern: the reader runs it).
MD5_PATTERN = "^[0-9a-fA-F]{32}$"
CN_MOBILE_PATTERN = "^(?:\\+?86|0086)?[ -]?1[3-9][0-9][ -]?[0-9]{4}[ -]?[0-9]{4}$"


def platform_normalize(id_type: str, value: str) -> str:
    """The canonical plaintext of ``value`` (what the platforms hash)."""
    return _RULES[id_type][0](value)


def platform_digest(id_type: str, value: str, app_id: str = "") -> tuple[bytes, IdForm]:
    """The canonical 32-byte digest of ``value`` as an identifier of ``id_type`` (one of
    ``PLATFORM_TYPES``) and the form it was given in; ``InvalidIdentifier`` otherwise. A
    ``wechat_openid`` needs the ``app_id`` it belongs to: its digest is that of
    ``app_id:openid``, so the same openid string of two apps never matches."""
    normalize, md5_based, hashed = _RULES[id_type]
    if id_type == "wechat_openid":
        openid = normalize(value)
        if not app_id:
            raise ValueError("a wechat_openid digest needs the openid's app id")
        return _sha256(f"{app_id}:{openid}"), IdForm.PLAINTEXT
    text = value.strip()
    is_md5 = _MD5_RE.fullmatch(text) is not None
    if is_md5 and IdForm.MD5 in hashed:
        return _sha256(text.lower()), IdForm.MD5
    if _SHA256_RE.fullmatch(text):
        if IdForm.MD5_SHA256 in hashed:
            return bytes.fromhex(text), IdForm.MD5_SHA256
        if IdForm.SHA256 in hashed:
            return bytes.fromhex(text), IdForm.SHA256
    if is_md5 and id_type == "cn_mobile_sha256":
        raise InvalidIdentifier(
            "md5_for_sha256_type",
            "an MD5 cannot be turned into a SHA-256 of the number: declare the column"
            " cn_mobile_md5",
        )
    canonical = normalize(text)
    return _sha256(md5_hex(canonical) if md5_based else canonical), IdForm.PLAINTEXT
