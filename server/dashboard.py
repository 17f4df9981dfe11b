"""The report dashboards (attribution reports, lookalike packages): self-contained HTML.

The page carries no report data unless the server was given the token in an
``Authorization`` header (then the report JSON is embedded); otherwise its
script reads the token from the URL (``#token=`` or ``?token=``), removes it
from the address bar and fetches ``/v1/reports/{id}`` with it. Charts are
inline SVG drawn by the vanilla script below: nothing is loaded from another
origin, and the Content-Security-Policy set by ``server/rest.py`` forbids it.

Chart elements carry their numbers as data attributes (``data-lift``,
``data-ci-lo``, ``data-value``, ``data-revenue``...) so tests and tools can
read what is drawn; ``<body data-state>`` is ``ready`` or ``error`` once done.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PageKind:
    """One kind of dashboard page: its title, its sections and the script that draws them."""

    title: str
    eyebrow: str
    noun: str  # what the status line says it is loading
    sections: str
    script: str


def render_page(
    *,
    report_id: str,
    report_url: str,
    nonce: str,
    embedded: dict[str, Any] | None,
    kind: PageKind | None = None,
) -> str:
    """The dashboard HTML for one report (``embedded``: its JSON, if already read)."""
    page = kind or ATTRIBUTION
    data = ""
    if embedded is not None:
        # JSON inside <script> must not close the element: escape <, > and &.
        raw = json.dumps(embedded, allow_nan=False)
        raw = raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        data = f'<script type="application/json" id="report-data">{raw}</script>'
    script = (
        '"use strict";\n(function () {\n'
        + _COMMON_SCRIPT
        + page.script
        + "  load().then(render).catch(fail);\n})();\n"
    )
    return (
        _PAGE.replace("{{SECTIONS}}", page.sections)
        .replace("{{TITLE}}", html.escape(page.title))
        .replace("{{EYEBROW}}", html.escape(page.eyebrow))
        .replace("{{NOUN}}", html.escape(page.noun))
        .replace("{{NONCE}}", html.escape(nonce, quote=True))
        .replace("{{REPORT_URL}}", html.escape(report_url, quote=True))
        .replace("{{REPORT_ID}}", html.escape(report_id, quote=True))
        .replace("{{DATA}}", data)
        .replace("{{STYLE}}", _STYLE)
        .replace("{{SCRIPT}}", script)
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{{TITLE}} {{REPORT_ID}} · cleanroom</title>
<style nonce="{{NONCE}}">{{STYLE}}</style>
</head>
<body data-state="loading">
<main id="app" data-report-url="{{REPORT_URL}}" data-report-id="{{REPORT_ID}}">
  <header>
    <p class="eyebrow">cleanroom · {{EYEBROW}}</p>
    <h1>{{TITLE}}</h1>
    <p id="meta" class="meta">{{REPORT_ID}}</p>
  </header>
  <p id="status" class="status" role="status">Loading the {{NOUN}}…</p>
  <section id="summary" class="cards" hidden></section>
{{SECTIONS}}
</main>
{{DATA}}
<script nonce="{{NONCE}}">{{SCRIPT}}</script>
</body>
</html>
"""

_ATTRIBUTION_SECTIONS = """  <section class="panel" id="lift-panel" hidden>
    <h2>Lift per campaign</h2>
    <p class="hint">Relative lift of the exposed group's conversion rate over the holdout's,
      with its 95% interval (error bars). Green: the interval is above zero.</p>
    <div id="lift-chart"></div>
  </section>
  <section class="panel" id="funnel-panel" hidden>
    <h2>Match funnel</h2>
    <p class="hint">Per campaign and group: matched users exposed (or held out),
      those who converted, and their conversions. Bars compare the two groups within a stage.</p>
    <div id="funnel-chart"></div>
  </section>
  <section class="panel" id="revenue-panel" hidden>
    <h2>Attributed revenue per campaign</h2>
    <p class="hint">Revenue of the conversions credited to each campaign (last touch within
      the windows), with spend and incremental ROAS where known.</p>
    <div id="revenue-chart"></div>
  </section>
  <section class="panel" id="table-panel" hidden>
    <h2>All numbers</h2>
    <div class="table-wrap"><table id="numbers"></table></div>
  </section>"""

_LOOKALIKE_SECTIONS = """  <section class="panel" id="tier-panel" hidden>
    <h2>Tier curve</h2>
    <p class="hint">For each nested tier (the top k% of the partner's scored users): the
      share of the holdout's seeds it reaches (recall) and how many times the random rate
      that is (lift). The dashed line is a random ranking.</p>
    <div id="tier-chart"></div>
  </section>
  <section class="panel" id="table-panel" hidden>
    <h2>Tiers</h2>
    <div class="table-wrap"><table id="numbers"></table></div>
  </section>"""

_STYLE = """
:root { --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --bg: #f8fafc;
  --exposed: #2563eb; --holdout: #94a3b8; --up: #16a34a; --down: #dc2626; --flat: #64748b; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "DejaVu Sans", sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 4px; }
.eyebrow { margin: 0; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .06em; }
.meta { margin: 0 0 16px; color: var(--muted); }
.meta b { color: var(--ink); font-weight: 600; white-space: nowrap; }
.status { padding: 10px 12px; border-radius: 8px; background: #e0f2fe; }
.status.error { background: #fee2e2; color: #7f1d1d; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin-bottom: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 20px; font-weight: 650; }
.card .sub { color: var(--muted); font-size: 12px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 16px; margin-bottom: 16px; }
.hint { margin: 0 0 10px; color: var(--muted); font-size: 12.5px; }
svg { display: block; width: 100%; height: auto; font-family: inherit; }
svg text { fill: var(--ink); font-size: 12px; }
svg .muted, svg .axis text { fill: var(--muted); }
svg .grid { stroke: var(--line); }
svg .zero { stroke: #334155; stroke-width: 1.2; }
svg .lift-bar.up { fill: var(--up); fill-opacity: .35; }
svg .lift-bar.down { fill: var(--down); fill-opacity: .35; }
svg .lift-bar.flat { fill: var(--flat); fill-opacity: .3; }
svg .error-bar, svg .error-cap { stroke: var(--ink); stroke-width: 1.6; }
svg .lift-point { fill: var(--ink); }
svg .suppressed { fill: var(--muted); font-style: italic; }
svg .funnel-bar.exposed { fill: var(--exposed); }
svg .funnel-bar.holdout { fill: var(--holdout); }
svg .stage { font-weight: 600; }
svg .arrow { fill: var(--muted); font-size: 16px; }
svg .revenue-bar { fill: #0d9488; }
svg .campaign { font-weight: 600; }
svg .random { stroke: var(--muted); stroke-dasharray: 4 4; }
svg .recall-line { fill: none; stroke: var(--exposed); stroke-width: 2; }
svg .lift-line { fill: none; stroke: var(--up); stroke-width: 2; }
svg .recall-point { fill: var(--exposed); }
svg .lift-point { fill: var(--up); }
.funnel { margin: 8px 0 14px; }
.funnel h3 { font-size: 13px; margin: 0 0 2px; }
.funnel .rates { margin: 2px 0 0; color: var(--muted); font-size: 12.5px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 12px; }
th, td { padding: 6px 6px; border-bottom: 1px solid var(--line); text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { color: var(--muted); font-weight: 600; white-space: normal; vertical-align: bottom; }
td.suppressed { color: var(--muted); font-style: italic; text-align: left; }
@media (max-width: 640px) { .cards { grid-template-columns: repeat(2, 1fr); } }
"""

_COMMON_SCRIPT = r"""

  const SVG = "http://www.w3.org/2000/svg";
  const root = document.getElementById("app");
  const statusBox = document.getElementById("status");
  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const moneyFmt = new Intl.NumberFormat("en-US", {
    minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const count = (v) => (isNum(v) ? intFmt.format(v) : "—");
  const money = (v) => (isNum(v) ? moneyFmt.format(v) : "—");
  const pct = (v) => (isNum(v) ? (v * 100).toFixed(2) + "%" : "—");
  const signed = (v) =>
    isNum(v) ? (v >= 0 ? "+" : "\u2212") + Math.abs(v * 100).toFixed(1) + "%" : "—";
  const SUPPRESSED = "suppressed (below threshold)";

  function svg(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function tag(name, attrs, text) {
    const e = document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function dataAttr(v) { return v === null || v === undefined ? "" : String(v); }

  function takeToken() {
    const query = new URLSearchParams(location.search);
    const frag = new URLSearchParams(location.hash.slice(1));
    const token = frag.get("token") || query.get("token");
    if (query.has("token") || frag.has("token")) {
      // Out of the address bar, history and bookmarks as soon as it is read.
      query.delete("token");
      const rest = query.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
    }
    return token;
  }

  async function load() {
    const embedded = document.getElementById("report-data");
    if (embedded) return JSON.parse(embedded.textContent);
    const token = takeToken();
    if (!token) {
      throw new Error("No token. Open this page as " + location.pathname +
        "#token=<analyst token> (or ?token=…), or send an Authorization: Bearer header.");
    }
    const resp = await fetch(root.dataset.reportUrl, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error("The report could not be read (" + resp.status + "): " + detail);
    }
    return resp.json();
  }

  function group(c, name) { return (c && c[name]) || {}; }
  function ticks(lo, hi, n) {
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const r = raw / mag;
    const step = (r >= 7.5 ? 10 : r >= 3.5 ? 5 : r >= 1.5 ? 2 : 1) * mag;
    const out = [];
    for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.round(v / step) * step);
    }
    return out;
  }

  function fail(err) {
    statusBox.textContent = err && err.message ? err.message : String(err);
    statusBox.classList.add("error");
    statusBox.setAttribute("role", "alert");
    document.body.dataset.state = "error";
  }

"""

_ATTRIBUTION_SCRIPT = r"""
  function renderMeta(report, campaigns) {
    const meta = document.getElementById("meta");
    meta.textContent = "";
    const parts = [["Report", report.report_id]];
    if (report.conversions_name) parts.push(["Conversions", report.conversions_name]);
    if (report.created_at) {
      parts.push(["Created", String(report.created_at).replace("T", " ").slice(0, 16) + " UTC"]);
    }
    const w = report.windows || {};
    parts.push(["Windows",
      (w.click_days ?? "?") + "-day click / " + (w.view_days ?? "?") + "-day view"]);
    const dp = report.dp;
    parts.push(["Differential privacy", dp && dp.mechanism && dp.mechanism !== "off"
      ? dp.mechanism + (isNum(dp.epsilon) ? ", ε = " + dp.epsilon : "") +
        (isNum(dp.delta) && dp.delta > 0 ? ", δ = " + dp.delta : "") : "off"]);
    if (isNum(report.aggregation_threshold)) {
      parts.push(["Aggregation threshold", intFmt.format(report.aggregation_threshold) + " users"]);
    }
    parts.forEach(([k, v], i) => {
      if (i) meta.append(" · ");
      meta.append(k + ": ");
      meta.append(tag("b", {}, String(v)));
    });
    const shown = campaigns.filter((c) => !c.suppressed);
    const sum = (f) => shown.reduce((a, c) => a + (isNum(f(c)) ? f(c) : 0), 0);
    const cards = [
      ["Campaigns", String(campaigns.length), (campaigns.length - shown.length) + " suppressed"],
      ["Attributed conversions", count(sum((c) => c.attributed_conversions)), "reported campaigns"],
      ["Attributed revenue", money(sum((c) => c.attributed_revenue)), "reported campaigns"],
      ["Incremental converters", count(sum((c) => c.incremental_converters)), "exposed vs holdout"],
    ];
    const box = document.getElementById("summary");
    for (const [label, value, sub] of cards) {
      const card = tag("div", { class: "card" });
      card.append(tag("div", { class: "label" }, label), tag("div", { class: "value" }, value),
        tag("div", { class: "sub" }, sub));
      box.append(card);
    }
    box.hidden = false;
  }

  function renderLift(campaigns) {
    const W = 800, L = 150, R = 190, top = 30, rowH = 40;
    const H = top + rowH * campaigns.length + 10;
    const vals = [0];
    for (const c of campaigns) {
      if (c.suppressed || !isNum(c.lift)) continue;
      vals.push(c.lift);
      if (Array.isArray(c.lift_ci95)) c.lift_ci95.filter(isNum).forEach((v) => vals.push(v));
    }
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi - lo < 1e-9) { lo -= 0.1; hi += 0.1; }
    const pad = (hi - lo) * 0.08;
    const tk = ticks(lo - pad, hi + pad, 5);
    lo = Math.min(lo - pad, tk[0]); hi = Math.max(hi + pad, tk[tk.length - 1]);
    const x = (v) => L + ((v - lo) / (hi - lo)) * (W - L - R);
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "lift-chart",
      "aria-label": "Lift per campaign with 95% intervals" });
    const axis = svg("g", { class: "axis" });
    for (const t of tk) {
      if (t < lo - 1e-12 || t > hi + 1e-12) continue;
      axis.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: top - 6, y2: H - 10 }));
      const label = Math.abs(t) < 1e-12 ? "0%" : signed(t);
      axis.append(svg("text", { x: x(t), y: top - 12, "text-anchor": "middle" }, label));
    }
    s.append(axis);
    s.append(svg("line", { class: "zero", x1: x(0), x2: x(0), y1: top - 6, y2: H - 10 }));
    campaigns.forEach((c, i) => {
      const cy = top + rowH * i + rowH / 2;
      const ci = Array.isArray(c.lift_ci95) ? c.lift_ci95 : [null, null];
      const shown = (v) => dataAttr(c.suppressed ? null : v);
      const g = svg("g", { class: "lift-row", "data-campaign": c.campaign_id,
        "data-suppressed": c.suppressed ? "true" : "false", "data-lift": shown(c.lift),
        "data-ci-lo": shown(ci[0]), "data-ci-hi": shown(ci[1]) });
      g.append(svg("text", { class: "campaign", x: L - 12, y: cy + 4, "text-anchor": "end" },
        c.campaign_id));
      if (c.suppressed) {
        g.append(svg("text", { class: "suppressed", x: L + 8, y: cy + 4 }, SUPPRESSED));
      } else if (!isNum(c.lift)) {
        g.append(svg("text", { class: "suppressed", x: L + 8, y: cy + 4 }, "lift not available"));
      } else {
        const hasCi = isNum(ci[0]) && isNum(ci[1]);
        const sig = hasCi ? (ci[0] > 0 ? "up" : ci[1] < 0 ? "down" : "flat") : "flat";
        const x0 = x(0), x1 = x(c.lift);
        g.append(svg("rect", { class: "lift-bar " + sig, x: Math.min(x0, x1), y: cy - 9,
          width: Math.max(Math.abs(x1 - x0), 1), height: 18, rx: 2, "data-lift": c.lift }));
        if (hasCi) {
          g.append(svg("line", { class: "error-bar", x1: x(ci[0]), x2: x(ci[1]), y1: cy, y2: cy,
            "data-ci-lo": ci[0], "data-ci-hi": ci[1] }));
          for (const v of ci) {
            g.append(svg("line",
              { class: "error-cap", x1: x(v), x2: x(v), y1: cy - 6, y2: cy + 6 }));
          }
        }
        g.append(svg("circle", { class: "lift-point", cx: x1, cy: cy, r: 3.2 }));
        const label = signed(c.lift) +
          (hasCi ? "  [" + signed(ci[0]) + ", " + signed(ci[1]) + "]" : "");
        g.append(svg("text", { class: "lift-value", x: W - R + 12, y: cy + 4 }, label));
      }
      s.append(g);
    });
    document.getElementById("lift-chart").append(s);
    document.getElementById("lift-panel").hidden = false;
  }

  function renderFunnels(campaigns) {
    const box = document.getElementById("funnel-chart");
    const stages = [
      ["users", "Users"], ["converters", "Converters"], ["conversions", "Conversions"]];
    const groups = ["exposed", "holdout"];
    for (const c of campaigns) {
      const fig = tag("figure", { class: "funnel", "data-campaign": c.campaign_id,
        "data-suppressed": c.suppressed ? "true" : "false" });
      fig.append(tag("h3", {}, c.campaign_id));
      if (c.suppressed) {
        const s = svg("svg", { viewBox: "0 0 800 30", role: "img" });
        s.append(svg("text", { class: "suppressed", x: 0, y: 19 }, SUPPRESSED));
        fig.append(s);
        box.append(fig);
        continue;
      }
      const W = 800, L = 80, top = 26, rowH = 28;
      const colW = (W - L) / stages.length, barMax = colW - 96;
      const s = svg("svg", { viewBox: `0 0 ${W} ${top + rowH * groups.length + 4}`, role: "img",
        "aria-label": "Match funnel for " + c.campaign_id });
      stages.forEach(([key, title], j) => {
        const cx = L + colW * j;
        s.append(svg("text", { class: "stage", x: cx, y: 14 }, title));
        if (j) s.append(svg("text", { class: "arrow", x: cx - 22, y: top + rowH + 4 }, "→"));
        const maxV = Math.max(1, ...groups.map((gname) => group(c, gname)[key]).filter(isNum));
        groups.forEach((gname, k) => {
          const v = group(c, gname)[key];
          const y = top + rowH * k;
          if (j === 0) s.append(svg("text", { class: "muted", x: 0, y: y + 14 }, gname));
          if (!isNum(v)) {
            s.append(svg("text", { class: "suppressed", x: cx, y: y + 14,
              "data-group": gname, "data-stage": key }, "suppressed"));
            return;
          }
          const w = Math.max((v / maxV) * barMax, 2);
          s.append(svg("rect", { class: "funnel-bar " + gname, x: cx, y: y + 2, width: w,
            height: 16, rx: 2, "data-group": gname, "data-stage": key, "data-value": v }));
          s.append(svg("text", { class: "funnel-value", x: cx + w + 6, y: y + 14,
            "data-group": gname, "data-stage": key }, count(v)));
        });
      });
      fig.append(s);
      const e = group(c, "exposed"), h = group(c, "holdout");
      fig.append(tag("p", { class: "rates" }, "Conversion rate: exposed " + pct(e.rate) +
        " · holdout " + pct(h.rate) +
        " · incremental converters " + count(c.incremental_converters)));
      box.append(fig);
    }
    document.getElementById("funnel-panel").hidden = false;
  }

  function renderRevenue(campaigns) {
    const W = 800, L = 150, R = 200, labelW = 90, rowH = 34, top = 6;
    const H = top + rowH * campaigns.length + 6;
    const maxV = Math.max(1, ...campaigns.filter((c) => !c.suppressed)
      .map((c) => c.attributed_revenue).filter(isNum));
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "revenue-chart",
      "aria-label": "Attributed revenue per campaign" });
    campaigns.forEach((c, i) => {
      const cy = top + rowH * i + rowH / 2;
      const rev = c.suppressed ? null : c.attributed_revenue;
      const g = svg("g", { class: "revenue-row", "data-campaign": c.campaign_id,
        "data-suppressed": c.suppressed ? "true" : "false", "data-revenue": dataAttr(rev) });
      g.append(svg("text", { class: "campaign", x: L - 12, y: cy + 4, "text-anchor": "end" },
        c.campaign_id));
      if (c.suppressed) {
        g.append(svg("text", { class: "suppressed", x: L, y: cy + 4 }, SUPPRESSED));
      } else if (!isNum(rev)) {
        g.append(svg("text", { class: "suppressed", x: L, y: cy + 4 }, "not available"));
      } else {
        const w = Math.max((rev / maxV) * (W - L - R - labelW), 2);
        g.append(svg("rect", { class: "revenue-bar", x: L, y: cy - 9, width: w, height: 18, rx: 2,
          "data-revenue": rev }));
        g.append(svg("text", { class: "revenue-value", x: L + w + 6, y: cy + 4 }, money(rev)));
        const extra = [];
        if (isNum(c.spend)) extra.push("spend " + money(c.spend));
        if (isNum(c.iroas)) extra.push("iROAS " + c.iroas.toFixed(2));
        g.append(svg("text", { class: "muted revenue-extra", x: W - R + 10, y: cy + 4 },
          extra.join(" · ")));
      }
      s.append(g);
    });
    document.getElementById("revenue-chart").append(s);
    document.getElementById("revenue-panel").hidden = false;
  }

  function renderTable(campaigns) {
    const t = document.getElementById("numbers");
    const cols = ["Campaign", "Attr. conv.", "Attr. revenue", "Exposed users", "Exposed rate",
      "Holdout users", "Holdout rate", "Lift", "95% interval", "Incr. converters", "Spend",
      "iROAS"];
    const head = tag("tr");
    cols.forEach((c) => head.append(tag("th", {}, c)));
    t.append(head);
    for (const c of campaigns) {
      const tr = tag("tr", { "data-campaign": c.campaign_id });
      tr.append(tag("td", {}, c.campaign_id));
      if (c.suppressed) {
        tr.append(tag("td", { class: "suppressed", colspan: cols.length - 1 }, SUPPRESSED));
      } else {
        const e = group(c, "exposed"), h = group(c, "holdout");
        const ci = Array.isArray(c.lift_ci95) && c.lift_ci95.every(isNum)
          ? "[" + signed(c.lift_ci95[0]) + ", " + signed(c.lift_ci95[1]) + "]" : "—";
        [count(c.attributed_conversions), money(c.attributed_revenue), count(e.users), pct(e.rate),
          count(h.users), pct(h.rate), signed(c.lift), ci, count(c.incremental_converters),
          money(c.spend), isNum(c.iroas) ? c.iroas.toFixed(2) : "—"]
          .forEach((v) => tr.append(tag("td", {}, v)));
      }
      t.append(tr);
    }
    document.getElementById("table-panel").hidden = false;
  }

  function render(report) {
    const campaigns = (Array.isArray(report.campaigns) ? report.campaigns : [])
      .filter((c) => c && typeof c === "object")
      .map((c) => ({ ...c, campaign_id: String(c.campaign_id ?? "?") }));
    renderMeta(report, campaigns);
    renderLift(campaigns);
    renderFunnels(campaigns);
    renderRevenue(campaigns);
    renderTable(campaigns);
    statusBox.hidden = true;
    document.body.dataset.state = "ready";
  }

"""

_LOOKALIKE_SCRIPT = r"""
  function renderMeta(report) {
    const meta = document.getElementById("meta");
    meta.textContent = "";
    const privacy = report.privacy || {};
    const scored = report.mode === "he-score";  // a brand model scored: no seed, no holdout
    const parts = [["Package", report.report_id], [scored ? "Model" : "Audience", report.audience],
      ["Partner", report.partner], ["Mode", report.mode]];
    if (report.created_at) {
      parts.push(["Created", String(report.created_at).replace("T", " ").slice(0, 16) + " UTC"]);
    }
    parts.push(["Label-DP", isNum(privacy.epsilon) && privacy.epsilon > 0
      ? "ε = " + privacy.epsilon + (isNum(privacy.delta) ? ", δ = " + privacy.delta : "")
      : "off"]);
    parts.forEach(([k, v], i) => {
      if (i) meta.append(" · ");
      meta.append(k + ": ");
      meta.append(tag("b", {}, String(v ?? "?")));
    });
    const cards = scored ? [
      ["Scored users", count(report.scored), "ranked under encryption into the tiers"],
      ["Model features", count(report.features), "weights never left the brand node"],
    ] : [
      ["Offered rows", count(report.offered), "partner users with an identifier"],
      ["Matched seeds", count(report.seeds), count(report.intersection) + " matched in all"],
      ["Holdout AUC", isNum(report.auc) ? report.auc.toFixed(3) : "—",
        count(report.holdout_rows) + " rows held out"],
      ["Scored users", count(report.scored), "ranked into the tiers"],
    ];
    const box = document.getElementById("summary");
    for (const [label, value, sub] of cards) {
      const card = tag("div", { class: "card" });
      card.append(tag("div", { class: "label" }, label), tag("div", { class: "value" }, value),
        tag("div", { class: "sub" }, sub));
      box.append(card);
    }
    box.hidden = false;
  }

  function renderCurve(tiers) {
    const W = 800, H = 320, L = 56, R = 56, top = 20, bottom = 40;
    const reachMax = Math.max(10, ...tiers.map((t) => t.percent));
    const lifts = tiers.map((t) => t.lift).filter(isNum);
    const liftMax = Math.max(2, ...lifts) * 1.1;
    const x = (p) => L + (p / reachMax) * (W - L - R);
    const yRecall = (r) => top + (1 - r) * (H - top - bottom);
    const yLift = (v) => top + (1 - v / liftMax) * (H - top - bottom);
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "tier-chart",
      "aria-label": "Recall and lift versus reach per tier" });
    const axis = svg("g", { class: "axis" });
    for (const t of ticks(0, reachMax, 5)) {
      if (t > reachMax + 1e-9) continue;
      axis.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: top, y2: H - bottom }));
      axis.append(svg("text", { x: x(t), y: H - bottom + 16, "text-anchor": "middle" }, t + "%"));
    }
    for (const r of [0, 0.25, 0.5, 0.75, 1]) {
      axis.append(svg("text", { x: L - 8, y: yRecall(r) + 4, "text-anchor": "end" },
        Math.round(r * 100) + "%"));
    }
    for (const v of ticks(0, liftMax, 4)) {
      if (v > liftMax) continue;
      axis.append(svg("text", { x: W - R + 8, y: yLift(v) + 4 }, v + "\u00d7"));
    }
    axis.append(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" },
      "reach: top % of the scored base"));
    s.append(axis);
    s.append(svg("line", { class: "random", x1: x(0), y1: yRecall(0), x2: x(reachMax),
      y2: yRecall(reachMax / 100) }));
    const known = tiers.filter((t) => isNum(t.recall) && isNum(t.lift));
    const path = (f) => known.map((t, i) => (i ? "L" : "M") + x(t.percent) + " " + f(t)).join(" ");
    if (known.length) {
      s.append(svg("path", { class: "recall-line", d: "M" + x(0) + " " + yRecall(0) + " " +
        path((t) => yRecall(t.recall)).replace(/^M/, "L") }));
      s.append(svg("path", { class: "lift-line", d: path((t) => yLift(t.lift)) }));
    }
    for (const t of tiers) {
      const g = svg("g", { class: "tier", "data-percent": t.percent, "data-size": t.size,
        "data-recall": dataAttr(t.recall), "data-lift": dataAttr(t.lift) });
      if (isNum(t.recall) && isNum(t.lift)) {
        g.append(svg("circle", { class: "recall-point", cx: x(t.percent), cy: yRecall(t.recall),
          r: 4 }));
        g.append(svg("circle", { class: "lift-point", cx: x(t.percent), cy: yLift(t.lift), r: 4 }));
        g.append(svg("text", { class: "muted", x: x(t.percent) + 6, y: yLift(t.lift) - 6 },
          t.lift.toFixed(1) + "\u00d7"));
      }
      s.append(g);
    }
    if (!known.length) {
      s.append(svg("text", { class: "suppressed", x: L + 10, y: top + 20 },
        "no holdout metrics (none held out, or withheld under label-DP)"));
    }
    const legend = svg("g", { class: "legend" });
    legend.append(svg("circle", { class: "recall-point", cx: L + 10, cy: top + 6, r: 4 }));
    legend.append(svg("text", { x: L + 20, y: top + 10 }, "recall (left axis)"));
    legend.append(svg("circle", { class: "lift-point", cx: L + 150, cy: top + 6, r: 4 }));
    legend.append(svg("text", { x: L + 160, y: top + 10 }, "lift vs random (right axis)"));
    s.append(legend);
    document.getElementById("tier-chart").append(s);
    document.getElementById("tier-panel").hidden = false;
  }

  function renderTable(tiers) {
    const t = document.getElementById("numbers");
    const head = tag("tr");
    ["Tier", "Users", "Recall", "Lift"].forEach((c) => head.append(tag("th", {}, c)));
    t.append(head);
    for (const tier of tiers) {
      const tr = tag("tr", { "data-percent": tier.percent });
      [ "top " + tier.percent + "%", count(tier.size), pct(tier.recall),
        isNum(tier.lift) ? tier.lift.toFixed(2) + "\u00d7" : "—"]
        .forEach((v) => tr.append(tag("td", {}, v)));
      t.append(tr);
    }
    document.getElementById("table-panel").hidden = false;
  }

  function render(report) {
    const tiers = (Array.isArray(report.tiers) ? report.tiers : [])
      .filter((t) => t && isNum(t.percent));
    renderMeta(report);
    renderCurve(tiers);
    renderTable(tiers);
    statusBox.hidden = true;
    document.body.dataset.state = "ready";
  }
"""

ATTRIBUTION = PageKind(
    title="Attribution report",
    eyebrow="closed-loop attribution",
    noun="report",
    sections=_ATTRIBUTION_SECTIONS,
    script=_ATTRIBUTION_SCRIPT,
)
LOOKALIKE = PageKind(
    title="Lookalike package",
    eyebrow="lookalike expansion",
    noun="package",
    sections=_LOOKALIKE_SECTIONS,
    script=_LOOKALIKE_SCRIPT,
)
