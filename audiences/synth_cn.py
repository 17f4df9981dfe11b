"""Synthetic files as a Chinese brand's CDP and a Chinese media partner hold them.

The brand's 人群包 export carries its customers' mobiles as MD5 (lower or upper hex) or
Tencent's MD5_SHA256, MD5 IMEIs, MD5 OAIDs and WeChat unionids; the partner holds its
users' plaintext mobiles in the spellings CRMs produce (+86, 0086, dashes, spaces,
full-width digits), plaintext IMEIs, raw OAIDs, IDFAs and unionids, plus some junk. The
expected match of every partner row comes from the generator's own bookkeeping (which
person a row is, which ids each side kept), never from the normalization under test.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "BRAND_ID_COLUMNS",
    "PARTNER_ID_COLUMNS",
    "CnSynthResult",
    "spell_mobile",
    "synthesize_cn",
]

# The --id-columns each side declares, in priority order.
BRAND_ID_COLUMNS = (
    "mobile_md5:cn_mobile_md5,mobile_md5_sha256:cn_mobile_md5,imei_md5:imei,"
    "oaid_md5:oaid,unionid:wechat_unionid"
)
PARTNER_ID_COLUMNS = "mobile:cn_mobile,imei:imei,oaid:oaid,idfa:idfa,unionid:wechat_unionid"
# Which type a partner row matches on, when it does, in the partner's priority order
# (the brand holds no IDFA and no SHA-256 mobile: those never match).
_PRIORITY = ("cn_mobile_md5", "imei", "oaid", "wechat_unionid")
_UNIONID_ALPHABET = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", dtype=np.uint8
)
_JUNK_MOBILES = ("n/a", "12345", "1380013800", "+1 201 555 0123", "未知")


@dataclass(frozen=True)
class CnSynthResult:
    brand_path: Path
    partner_path: Path
    brand_rows: int
    partner_rows: int
    # Per partner row, the type it matches on ("" for none), as `partner match` reports.
    expected: tuple[str, ...]

    @property
    def matchable_rows(self) -> int:
        return sum(1 for e in self.expected if e)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def spell_mobile(mobile: str, choice: int) -> str:
    """One of the seven ways CRMs and ops teams write a mainland mobile (``choice`` mod 7)."""
    a, b, c = mobile[:3], mobile[3:7], mobile[7:]
    return (
        mobile,
        f"+86{mobile}",
        f"+86 {a} {b} {c}",
        f"0086-{a}-{b}-{c}",
        f"86{mobile}",
        f"{a}-{b}-{c}",
        "".join(chr(0xFF10 + int(d)) for d in mobile),  # full-width digits
    )[choice % 7]


def synthesize_cn(
    out_dir: Path,
    *,
    brand_rows: int = 10_000,
    partner_rows: int = 10_000,
    overlap: float = 0.3,
    seed: int = 7,
) -> CnSynthResult:
    """Write ``brand.csv`` and ``partner.csv`` under ``out_dir`` (atomically) and return the
    expected match; ``overlap`` is the share of partner rows that are brand customers."""
    if brand_rows < 1 or partner_rows < 1 or not 0.0 <= overlap <= 1.0:
        raise ValueError("rows must be positive and --overlap a fraction between 0 and 1")
    rng = np.random.default_rng(seed)
    shared = min(brand_rows, round(partner_rows * overlap))
    people = brand_rows + partner_rows - shared
    # Distinct ids per person: mobiles 1[3-9]xxxxxxxxx, IMEIs 86 + 13 digits.
    numbers = rng.choice(7 * 10**9, size=people, replace=False)
    mobiles = [f"1{3 + n // 10**9}{n % 10**9:09d}" for n in numbers.tolist()]
    imeis = [f"86{n:013d}" for n in rng.choice(10**13, size=people, replace=False).tolist()]
    device = rng.integers(0, 256, size=(people, 32), dtype=np.uint8)
    oaids = [_uuid(device[p, :16].tobytes()) for p in range(people)]
    idfas = [_uuid(device[p, 16:].tobytes()).upper() for p in range(people)]
    letters = _UNIONID_ALPHABET[rng.integers(0, len(_UNIONID_ALPHABET), size=(people, 27))]
    unionids = ["o" + row.tobytes().decode() for row in letters]

    # The brand's customers are people 0..brand_rows-1; its export keeps each id with
    # these rates, mobiles in one of three hashed spellings.
    keep = {
        "mobile": rng.random(brand_rows) < 0.9,
        "imei": rng.random(brand_rows) < 0.4,
        "oaid": rng.random(brand_rows) < 0.3,
        "wechat_unionid": rng.random(brand_rows) < 0.3,
    }
    form = rng.integers(0, 10, size=brand_rows)  # 0-4 md5, 5 MD5 upper, 6-9 md5_sha256
    brand = pd.DataFrame(
        {
            "customer_id": [f"c{p:07d}" for p in range(brand_rows)],
            "mobile_md5": [
                ""
                if not keep["mobile"][p] or form[p] > 5
                else _md5(mobiles[p]).upper()
                if form[p] == 5
                else _md5(mobiles[p])
                for p in range(brand_rows)
            ],
            "mobile_md5_sha256": [
                hashlib.sha256(_md5(mobiles[p]).encode()).hexdigest()
                if keep["mobile"][p] and form[p] > 5
                else ""
                for p in range(brand_rows)
            ],
            "imei_md5": [_md5(imeis[p]) if keep["imei"][p] else "" for p in range(brand_rows)],
            "oaid_md5": [_md5(oaids[p]) if keep["oaid"][p] else "" for p in range(brand_rows)],
            "unionid": [
                unionids[p] if keep["wechat_unionid"][p] else "" for p in range(brand_rows)
            ],
        }
    )
    # The partner's users: ``shared`` customers and the rest new people, shuffled.
    customers = rng.choice(brand_rows, size=shared, replace=False)
    persons = np.concatenate([customers, np.arange(brand_rows, brand_rows + partner_rows - shared)])
    rng.shuffle(persons)
    has = {
        "mobile": rng.random(partner_rows) < 0.85,
        "imei": rng.random(partner_rows) < 0.5,
        "oaid": rng.random(partner_rows) < 0.4,
        "idfa": rng.random(partner_rows) < 0.3,
        "wechat_unionid": rng.random(partner_rows) < 0.25,
    }
    junk = rng.random(partner_rows) < 0.01  # a mobile cell nobody can read
    spelling = rng.integers(0, 7, size=partner_rows)
    rows = []
    expected = []
    for r, p in enumerate(persons.tolist()):
        mobile = (
            _JUNK_MOBILES[r % len(_JUNK_MOBILES)]
            if junk[r]
            else spell_mobile(mobiles[p], int(spelling[r]))
            if has["mobile"][r]
            else ""
        )
        rows.append(
            {
                "user_id": f"u{r:07d}",
                "mobile": mobile,
                "imei": imeis[p] if has["imei"][r] else "",
                "oaid": oaids[p] if has["oaid"][r] else "",
                "idfa": idfas[p] if has["idfa"][r] else "",
                "unionid": unionids[p] if has["wechat_unionid"][r] else "",
            }
        )
        on = ""
        if p < brand_rows:  # a customer: the first type both sides kept
            both = {
                "cn_mobile_md5": has["mobile"][r] and not junk[r] and keep["mobile"][p],
                "imei": has["imei"][r] and keep["imei"][p],
                "oaid": has["oaid"][r] and keep["oaid"][p],
                "wechat_unionid": has["wechat_unionid"][r] and keep["wechat_unionid"][p],
            }
            on = next((t for t in _PRIORITY if both[t]), "")
        expected.append(on)
    partner = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "brand.csv", out_dir / "partner.csv"
    for frame, path in zip((brand, partner), paths, strict=True):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return CnSynthResult(paths[0], paths[1], brand_rows, partner_rows, tuple(expected))
