"""The report dashboard in a real headless Chromium against a real brand node.

Chromium is the Debian package (``/usr/bin/chromium``); ``.ci/run`` installs
it when it is missing. Nothing is downloaded: the browser renders the page,
which fetches the report from the node with the token from the URL and draws
inline SVG; we read the rendered DOM (``--dump-dom``) and a screenshot.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cleanroom.server.store import Role
from tests.conftest import Node
from tests.reports import sample_body, sample_lookalike, sample_report, sample_scored

CHROMIUM = os.environ.get("CLEANROOM_CHROMIUM", "/usr/bin/chromium")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM}: the dashboard tests need the Debian"
            " package `chromium` (.ci/run installs it: apt-get install -y chromium)"
        )
    return CHROMIUM


def run_chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class Elements(HTMLParser):
    """Every element with its attributes and the nearest enclosing data-campaign."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], str | None]] = []
        self._stack: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        campaign = a.get("data-campaign") or (self._stack[-1][1] if self._stack else None)
        self.found.append((tag, a, campaign))
        if tag not in VOID:
            self._stack.append((tag, campaign))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def having(self, cls: str) -> list[tuple[dict[str, str], str | None]]:
        return [(a, c) for _, a, c in self.found if cls in a.get("class", "").split()]


@pytest.fixture(scope="module")
def report_id(node: Node) -> Iterator[str]:
    store = node.store()
    tenant = store.find_tenant("acme")
    assert tenant is not None
    rid = store.put_report(sample_report(tenant.tenant_id)).report_id
    store.close()
    yield rid


def _url(node: Node, rid: str, token: str) -> str:
    return f"{node.http}/dashboard/reports/{rid}?token={token}"


def test_the_dashboard_draws_lift_funnel_and_revenue(
    node: Node, report_id: str, tmp_path: Path
) -> None:
    token = node.tokens["acme"][Role.ANALYST]
    dom = run_chromium(tmp_path, _url(node, report_id, token), "--dump-dom").stdout
    assert 'data-state="ready"' in dom, dom[-3000:]
    assert token not in dom
    parsed = Elements()
    parsed.feed(dom)
    campaigns = {c["campaign_id"]: c for c in sample_body(report_id)["campaigns"]}
    shown = [cid for cid, c in campaigns.items() if not c["suppressed"]]
    assert shown == ["spring_sale", "retargeting_q2"]

    # Lift: one row per campaign; a bar and an error bar per reported campaign.
    rows = {a["data-campaign"]: a for a, _ in parsed.having("lift-row")}
    assert list(rows) == list(campaigns)
    bars = {c: a for a, c in parsed.having("lift-bar")}
    errors = {c: a for a, c in parsed.having("error-bar")}
    assert list(bars) == list(errors) == shown
    for cid in shown:
        lo, hi = campaigns[cid]["lift_ci95"]
        assert float(rows[cid]["data-lift"]) == float(bars[cid]["data-lift"])
        assert float(bars[cid]["data-lift"]) == campaigns[cid]["lift"]
        assert (float(errors[cid]["data-ci-lo"]), float(errors[cid]["data-ci-hi"])) == (lo, hi)
        # The whisker spans the interval around the bar's end.
        assert float(errors[cid]["x1"]) < float(errors[cid]["x2"])
    assert rows["podcast_test"]["data-suppressed"] == "true"
    assert rows["podcast_test"]["data-lift"] == ""
    assert "+18.7%" in dom and "[+2.1%, +35.3%]" in dom

    # Funnel: users -> converters -> conversions for both groups of each campaign.
    funnel = {(c, a["data-group"], a["data-stage"]): a for a, c in parsed.having("funnel-bar")}
    for cid in shown:
        for group in ("exposed", "holdout"):
            for stage in ("users", "converters", "conversions"):
                want = campaigns[cid][group][stage]
                assert float(funnel[(cid, group, stage)]["data-value"]) == want
                assert f"{want:,}" in dom
    assert not [k for k in funnel if k[0] == "podcast_test"]

    # Attributed revenue per campaign.
    revenue = {c: a for a, c in parsed.having("revenue-bar")}
    assert list(revenue) == shown
    for cid in shown:
        want = campaigns[cid]["attributed_revenue"]
        assert float(revenue[cid]["data-revenue"]) == want
        assert f"{want:,.2f}" in dom
    # The suppressed campaign is said to be suppressed in every chart and the table.
    assert dom.count("suppressed (below threshold)") >= 4
    suppressed_rows = [a for a, c in parsed.having("revenue-row") if c == "podcast_test"]
    assert suppressed_rows and suppressed_rows[0]["data-suppressed"] == "true"


def test_the_dashboard_screenshot_is_not_blank(node: Node, report_id: str, tmp_path: Path) -> None:
    png = tmp_path / "dashboard.png"
    token = node.tokens["acme"][Role.ANALYST]
    run_chromium(
        tmp_path, _url(node, report_id, token), "--window-size=1100,1500", f"--screenshot={png}"
    )
    assert png.exists()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 1500)
    # Non-trivial: the decoded image has many distinct byte values (a blank
    # or single-colour page has a handful).
    idat = b""
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    assert len(set(pixels)) > 64
    assert len(data) > 30_000


@pytest.mark.parametrize(
    ("tenant", "role", "status"),
    [("globex", Role.ANALYST, "404"), ("acme", Role.PARTNER, "403"), (None, None, "401")],
)
def test_the_dashboard_says_why_it_cannot_show_a_report(
    node: Node,
    report_id: str,
    tmp_path: Path,
    tenant: str | None,
    role: Role | None,
    status: str,
) -> None:
    token = node.tokens[tenant][role] if tenant and role else "cr_analyst_wrong"
    dom = run_chromium(tmp_path, _url(node, report_id, token), "--dump-dom").stdout
    assert 'data-state="error"' in dom, dom[-3000:]
    assert f"({status})" in dom
    assert "spring_sale" not in dom
    parsed = Elements()
    parsed.feed(dom)
    assert not parsed.having("lift-bar") and not parsed.having("funnel-bar")


@pytest.fixture(scope="module")
def package_id(node: Node) -> Iterator[str]:
    store = node.store()
    tenant = store.find_tenant("acme")
    assert tenant is not None
    pid = store.put_report(sample_lookalike(tenant.tenant_id)).report_id
    store.close()
    yield pid


def test_the_lookalike_dashboard_draws_the_tier_curve(
    node: Node, package_id: str, tmp_path: Path
) -> None:
    token = node.tokens["acme"][Role.ANALYST]
    url = f"{node.http}/dashboard/lookalikes/{package_id}#token={token}"
    dom = run_chromium(tmp_path, url, "--dump-dom").stdout
    assert 'data-state="ready"' in dom, dom[-3000:]
    assert token not in dom
    parsed = Elements()
    parsed.feed(dom)
    want = sample_lookalike("x").report.tiers
    tiers = [a for a, _ in parsed.having("tier")]
    assert [float(a["data-percent"]) for a in tiers] == [t.percent for t in want]
    assert [int(a["data-size"]) for a in tiers] == [t.size for t in want]
    assert [float(a["data-lift"]) for a in tiers] == [t.lift for t in want]
    assert [float(a["data-recall"]) for a in tiers] == [t.recall for t in want]
    recall = [a for a, _ in parsed.having("recall-point")]
    lift = [a for a, _ in parsed.having("lift-point")]
    assert len(recall) == len(lift) == len(want) + 1  # one each in the legend
    # Further reach, higher recall: the points climb left to right (SVG y grows down).
    ys = [float(a["cy"]) for a in recall[:-1]]
    xs = [float(a["cx"]) for a in recall[:-1]]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)
    assert parsed.having("recall-line") and parsed.having("lift-line")
    assert parsed.having("random")
    for text in ("0.812", "vip_customers", "hidden-seed", "5.20\u00d7", "top 10%", "100,000"):
        assert text in dom, text


def test_an_he_scoring_package_shows_its_model_and_tiers(node: Node, tmp_path: Path) -> None:
    store = node.store()
    tenant = store.find_tenant("acme")
    assert tenant is not None
    pid = store.put_report(sample_scored(tenant.tenant_id)).report_id
    store.close()
    token = node.tokens["acme"][Role.ANALYST]
    dom = run_chromium(
        tmp_path, f"{node.http}/dashboard/lookalikes/{pid}#token={token}", "--dump-dom"
    ).stdout
    assert 'data-state="ready"' in dom, dom[-3000:]
    parsed = Elements()
    parsed.feed(dom)
    tiers = [a for a, _ in parsed.having("tier")]
    assert [int(a["data-size"]) for a in tiers] == [4_000, 20_000]
    for text in ("Model: ", "ltv_model", "he-score", "weights never left the brand node"):
        assert text in dom, text
    # No seed or holdout card: those words appear only in the page's script.
    assert dom.count("Matched seeds") == 1 and dom.count("Holdout AUC") == 1


def test_the_lookalike_dashboard_refuses_another_tenant(
    node: Node, package_id: str, tmp_path: Path
) -> None:
    token = node.tokens["globex"][Role.ANALYST]
    url = f"{node.http}/dashboard/lookalikes/{package_id}#token={token}"
    dom = run_chromium(tmp_path, url, "--dump-dom").stdout
    assert 'data-state="error"' in dom and "(404)" in dom
    assert "vip_customers" not in dom


def test_the_api_docs_render_without_internet(node: Node, tmp_path: Path) -> None:
    """/docs loads Swagger UI from the node itself (no CDN): in a browser that can reach
    only the node, the page lists the API's operations."""
    import httpx

    page = httpx.get(f"{node.http}/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    for asset in sources:
        assert httpx.get(node.http + asset).status_code == 200, asset
    dom = run_chromium(
        tmp_path,
        f"{node.http}/docs",
        "--dump-dom",
        # Everything but the node is unreachable, as on an offline machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ).stdout
    assert "opblock" in dom, dom[-2000:]
    for path in ("/v1/reports/{report_id}", "/v1/partners", "/v1/policy"):
        assert path in dom
