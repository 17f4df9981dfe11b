"""A Chinese brand's 人群包 against a partner's plaintext ids, through the real CLI and a real
node: MD5 and MD5_SHA256 mobiles and MD5 IMEIs meet plaintext mobiles in mixed spellings
and plaintext IMEIs; the private match equals a plaintext join on the canonical numbers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.synth_cn import spell_mobile
from cleanroom.client.sdk import Connection, load_partner_set, run_psi, upload_audience
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.messages import Protocol
from cleanroom.matching.workers import CryptoPool
from cleanroom.server.store import Role
from tests.conftest import Node

CLI = [sys.executable, "-m", "cleanroom.client.cli"]


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def spelled(mobile: str, rng: random.Random) -> str:
    return spell_mobile(mobile, rng.randrange(7))


def imei(i: int) -> str:
    return f"86{i:013d}"


def test_md5_and_md5_sha256_files_meet_plaintext_ids(node: Node, tmp_path: Path) -> None:
    rng = random.Random(13)
    mobiles = [f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}" for _ in range(300)]
    mobiles = list(dict.fromkeys(mobiles))
    # The brand's CDP export: per customer an MD5 mobile or its Tencent MD5_SHA256 form, and
    # for some an MD5 IMEI (uppercase hex for a few: platforms ignore the case).
    brand_rows = []
    for i, mobile in enumerate(mobiles[:200]):
        hashed = md5(mobile)
        brand_rows.append(
            {
                "mobile_md5": hashed.upper() if i % 7 == 0 else hashed if i % 2 else "",
                "mobile_md5_sha256": "" if i % 2 else hashlib.sha256(hashed.encode()).hexdigest(),
                "imei_md5": md5(imei(i)) if i % 3 == 0 else "",
            }
        )
    brand = pd.DataFrame(brand_rows)
    brand.to_csv(tmp_path / "crm.csv", index=False)
    # The partner: plaintext mobiles in mixed spellings, plaintext IMEIs, for users some of
    # whom are the brand's customers.
    partner_rows = []
    for j in range(250):
        i = j + 100  # customers 100..199 and 150 who are not
        mobile = mobiles[i] if i < len(mobiles) else ""
        partner_rows.append(
            {
                "user_id": f"u{j}",
                "mobile": spelled(mobile, rng) if mobile and j % 5 else "",
                "imei": imei(i) if j % 2 == 0 else "",
            }
        )
    partner = pd.DataFrame(partner_rows)
    partner.to_csv(tmp_path / "users.csv", index=False)

    admin = node.tokens["acme"][Role.ADMIN]
    upload = subprocess.run(
        [*CLI, "audience", "upload", "--server", node.target, "--token", admin,
         "--name", "cn-crm", "--file", str(tmp_path / "crm.csv"),
         "--id-columns", "mobile_md5:cn_mobile_md5,mobile_md5_sha256:cn_mobile_md5,imei_md5:imei",
         "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert upload.returncode == 0, upload.stderr
    report = json.loads(upload.stdout)
    cells = int((brand[["mobile_md5", "mobile_md5_sha256"]] != "").to_numpy().sum())
    assert report["identifiers"] == {"cn_mobile_md5": cells, "imei": 67}
    assert report["rows_accepted"] == 200
    out = tmp_path / "matched.csv"
    match = subprocess.run(
        [*CLI, "partner", "match", "--server", node.target,
         "--token", node.tokens["acme"][Role.PARTNER], "--audience", "cn-crm",
         "--file", str(tmp_path / "users.csv"), "--id-columns", "mobile:cn_mobile,imei",
         "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert match.returncode == 0, match.stderr
    got = pd.read_csv(out, dtype=str, keep_default_na=False)

    # The plaintext join on canonical numbers (index i = customer i), in priority order.
    customer_mobiles = set(mobiles[:200])
    customer_imeis = {imei(i) for i in range(200) if i % 3 == 0}
    expected = []
    for j, row in partner.iterrows():
        i = int(j) + 100  # type: ignore[call-overload]
        on_mobile = bool(row["mobile"]) and i < 200 and mobiles[i] in customer_mobiles
        on_imei = bool(row["imei"]) and row["imei"] in customer_imeis
        expected.append("cn_mobile_md5" if on_mobile else "imei" if on_imei else "")
    assert got["matched_on"].tolist() == expected
    assert (got["matched"] == "true").tolist() == [bool(e) for e in expected]
    summary = json.loads(match.stdout)
    assert summary["matched"] == sum(bool(e) for e in expected) > 50


def test_md5_and_sha256_mobile_files_are_told_they_cannot_meet(node: Node, tmp_path: Path) -> None:
    mobiles = [f"13{i:09d}" for i in range(60)]
    (tmp_path / "sha.csv").write_text(
        "mobile\n" + "".join(hashlib.sha256(m.encode()).hexdigest() + "\n" for m in mobiles)
    )
    (tmp_path / "md5.csv").write_text("mobile\n" + "".join(md5(m) + "\n" for m in mobiles))
    admin = node.tokens["acme"][Role.ADMIN]
    upload = subprocess.run(
        [*CLI, "audience", "upload", "--server", node.target, "--token", admin,
         "--name", "cn-sha", "--file", str(tmp_path / "sha.csv"),
         "--id-columns", "mobile:cn_mobile_sha256", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert upload.returncode == 0, upload.stderr
    match = subprocess.run(
        [*CLI, "partner", "overlap", "--server", node.target,
         "--token", node.tokens["acme"][Role.PARTNER], "--audience", "cn-sha",
         "--file", str(tmp_path / "md5.csv"), "--id-columns", "mobile:cn_mobile_md5",
         "--retry-seconds", "0", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert match.returncode == 1
    said = " ".join(match.stderr.split())  # the console wraps long lines
    assert "FAILED_PRECONDITION: no identifier type in common" in said
    assert "an MD5 and a SHA-256 of a mobile number cannot be converted" in said


def test_openids_meet_within_one_app_only(node: Node, tmp_path: Path) -> None:
    app, other = "wx00112233445566ff", "wxffeeddccbbaa9988"
    openids = [f"oUpF8uMuAJO_M2pxb1Q9zN{i:06d}" for i in range(80)]
    (tmp_path / "fans.csv").write_text("openid\n" + "\n".join(openids[:60]) + "\n")
    (tmp_path / "users.csv").write_text("openid\n" + "\n".join(openids[30:]) + "\n")
    admin = node.tokens["acme"][Role.ADMIN]
    upload = subprocess.run(
        [*CLI, "audience", "upload", "--server", node.target, "--token", admin,
         "--name", "fans", "--file", str(tmp_path / "fans.csv"),
         "--id-columns", f"openid:wechat_openid:{app}", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert upload.returncode == 0, upload.stderr

    def overlap(app_id: str) -> int:
        done = subprocess.run(
            [*CLI, "partner", "overlap", "--server", node.target,
             "--token", node.tokens["acme"][Role.PARTNER], "--audience", "fans",
             "--file", str(tmp_path / "users.csv"),
             "--id-columns", f"openid:wechat_openid:{app_id}", "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["intersection"])

    assert overlap(app) == 30
    assert overlap(other) == 0  # the same openid strings, another app: nobody in common


def test_a_partner_offers_only_the_types_the_audience_holds(
    node: Node, tmp_path: Path, process_pool: CryptoPool
) -> None:
    """A plaintext cn_mobile column is two types; against an MD5-only audience only the
    MD5 family is sent (the SHA-256 points could never match), and matched_on still names
    the caller's columns."""
    mobiles = [f"139{i:08d}" for i in range(120)]
    (tmp_path / "crm.csv").write_text("m\n" + "".join(md5(m) + "\n" for m in mobiles[:80]))
    admin = Connection(node.target, node.tokens["acme"][Role.ADMIN])
    asyncio.run(
        upload_audience(
            admin,
            name="cn-md5",
            path=tmp_path / "crm.csv",
            id_columns=parse_id_columns("m:cn_mobile_md5"),
            options=NormalizeOptions(),
        )
    )
    (tmp_path / "users.csv").write_text("mobile\n" + "\n".join(mobiles[40:]) + "\n")
    columns = parse_id_columns("mobile:cn_mobile")
    data, _ = load_partner_set(tmp_path / "users.csv", columns, NormalizeOptions())
    assert data.points == 160  # both mobile types
    partner = Connection(node.target, node.tokens["acme"][Role.PARTNER])
    for protocol in (Protocol.MATCH, Protocol.CARDINALITY):
        run = asyncio.run(run_psi(partner, "cn-md5", protocol, data, pool=process_pool))
        hello = run.session.hello()
        assert hello.declared_points == 80 and hello.id_types == ("cn_mobile_md5",)
        assert run.result is not None and run.result.intersection == 40
    assert [c.id_type for c in run.session.data.columns] == ["cn_mobile_md5"]  # overlap: dropped
    match = asyncio.run(run_psi(partner, "cn-md5", Protocol.MATCH, data, pool=process_pool))
    assert whole_array(match.outcome.matched_on).tolist() == [0] * 40 + [-1] * 40
